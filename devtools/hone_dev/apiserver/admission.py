"""What kube-apiserver's admission and registry add to Pods and Services on create.

Active once a node is attached (:attr:`HoneApiServer.service_range` set), as in a cluster:

* **ServiceAccount admission**: a pod's ``serviceAccountName`` defaults to ``default``, must name
  a ServiceAccount that exists (else 403 ``error looking up service account``, which the Job
  and ReplicaSet controllers report as ``FailedCreate``), and unless ``automountServiceAccountToken``
  is false on the pod (or its ServiceAccount) the pod gets the ``kube-api-access-*`` projected
  volume (token, ``ca.crt`` from ``kube-root-ca.crt``, ``namespace``) mounted read-only at
  ``/var/run/secrets/kubernetes.io/serviceaccount`` in every container;
* pod defaults: ``restartPolicy: Always``, ``terminationGracePeriodSeconds: 30``,
  ``dnsPolicy: ClusterFirst``, ``schedulerName: default-scheduler``, and the status the pod
  registry starts every pod with: ``phase: Pending`` and its ``qosClass``;
* Job defaults (the Job registry's): ``selector`` on the generated ``batch.kubernetes.io/controller-uid``
  label (added to the template with ``job-name``), ``completions``/``parallelism`` 1,
  ``backoffLimit`` 6, ``completionMode`` NonIndexed, ``suspend`` false;
* **Service IPs**: a Service without ``clusterIP`` gets the next free address of the service
  range (``None`` stays headless); a ``clusterIP`` outside the range or taken is refused (422).
"""

from __future__ import annotations

import ipaddress
import secrets
from typing import Any

from hone_dev.apiserver.kinds import JOBS, PODS, SERVICE_ACCOUNTS, SERVICES, ApiError
TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
ROOT_CA = "kube-root-ca.crt"


def admit(server: Any, gvr: tuple[str, str, str], obj: dict[str, Any]) -> None:
    if server.service_range is None:
        return
    if gvr == PODS:
        _admit_pod(server, obj)
    elif gvr == SERVICES:
        _allocate_cluster_ip(server, obj)
    elif gvr == JOBS:
        _default_job(obj)


def _default_job(job: dict[str, Any]) -> None:
    """The selector and defaults kube-apiserver gives a Job; its uid is known here (set before admission)."""
    spec = job.setdefault("spec", {})
    uid, name = job["metadata"]["uid"], job["metadata"]["name"]
    if not spec.get("manualSelector"):
        labels = {"batch.kubernetes.io/controller-uid": uid, "batch.kubernetes.io/job-name": name,
                  "controller-uid": uid, "job-name": name}
        spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
        template_meta = spec.setdefault("template", {}).setdefault("metadata", {})
        template_meta["labels"] = {**(template_meta.get("labels") or {}), **labels}
    for key, value in (("completions", 1), ("parallelism", 1), ("backoffLimit", 6),
                       ("completionMode", "NonIndexed"), ("suspend", False)):
        spec.setdefault(key, value)


def _admit_pod(server: Any, pod: dict[str, Any]) -> None:
    meta, spec = pod["metadata"], pod.setdefault("spec", {})
    ns = meta["namespace"]
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    pod["status"] = {"phase": "Pending", "qosClass": qos_class(spec)}
    name = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
    spec["serviceAccountName"] = spec["serviceAccount"] = name
    account = server.store[SERVICE_ACCOUNTS].get((ns, name))
    if account is None:
        raise ApiError(403, "Forbidden", f'pods "{meta.get("name")}" is forbidden: error looking up service account '
                       f"{ns}/{name}: serviceaccount \"{name}\" not found")
    automount = spec.get("automountServiceAccountToken")
    if automount is None:
        automount = account.get("automountServiceAccountToken", True)
    if not automount:
        return
    volume = f"kube-api-access-{secrets.token_hex(3)[:5]}"
    spec.setdefault("volumes", []).append({"name": volume, "projected": {"defaultMode": 0o644, "sources": [
        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
        {"configMap": {"name": ROOT_CA, "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace",
                                    "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
    ]}})
    for container in [*spec.get("initContainers", []), *spec.get("containers", [])]:
        mounts = container.setdefault("volumeMounts", [])
        if not any(m.get("mountPath") == TOKEN_DIR for m in mounts):
            mounts.append({"name": volume, "mountPath": TOKEN_DIR, "readOnly": True})


def qos_class(spec: dict[str, Any]) -> str:
    """Guaranteed: every container limits CPU and memory, with requests equal (or unset); BestEffort: none
    sets either; else Burstable (init containers count too)."""
    containers = [*spec.get("initContainers", []), *spec.get("containers", [])]
    resources = [c.get("resources") or {} for c in containers]
    if not any((r.get("requests") or {}).get(k) or (r.get("limits") or {}).get(k)
               for r in resources for k in ("cpu", "memory")):
        return "BestEffort"
    for r in resources:
        limits, requests = r.get("limits") or {}, r.get("requests") or {}
        for key in ("cpu", "memory"):
            if key not in limits or str(requests.get(key, limits[key])) != str(limits[key]):
                return "Burstable"
    return "Guaranteed"


def _allocate_cluster_ip(server: Any, svc: dict[str, Any]) -> None:
    spec = svc.setdefault("spec", {})
    spec.setdefault("type", "ClusterIP")
    if spec["type"] == "ExternalName":
        return
    taken = {(s.get("spec") or {}).get("clusterIP") for s in server.store[SERVICES].values()}
    wanted = spec.get("clusterIP")
    if wanted == "None":
        spec["clusterIPs"] = ["None"]
        return
    if wanted:
        try:
            inside = ipaddress.ip_address(wanted) in server.service_range
        except ValueError:
            inside = False
        if not inside or wanted in taken:
            raise ApiError(422, "Invalid", f'Service "{svc["metadata"].get("name")}" is invalid: spec.clusterIP: '
                           f"Invalid value: \"{wanted}\": " + ("provided IP is already allocated" if inside else
                                                              f"provided IP is not in the valid range "
                                                              f"{server.service_range}"))
    else:
        wanted = next((str(a) for a in server.service_range.hosts() if str(a) not in taken), None)
        if wanted is None:
            raise ApiError(500, "InternalError", "Internal error occurred: failed to allocate a serviceIP: range is full")
    spec["clusterIP"] = wanted
    spec["clusterIPs"] = [wanted]
