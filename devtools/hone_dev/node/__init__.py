"""A one-machine Kubernetes node for the emulated API server: pods run for real, as processes in namespaces.

:class:`LocalCluster` is the emulated API server (:mod:`hone_dev.apiserver`) plus:

* :mod:`.kubelet`: the scheduler and kubelet of one node, ``hone-node``, running every pod's
  containers with :mod:`.sandbox` (mount, PID, UTS, IPC and network namespaces, cgroups);
* :mod:`.controllers`: the Job, ReplicaSet and Deployment controllers, and each namespace's
  ``default`` ServiceAccount and ``kube-root-ca.crt``;
* :mod:`.network`: the bridge, pod addresses, cluster DNS and the Services' proxy;
* :mod:`.policy`: NetworkPolicy enforcement;
* :mod:`.images`: what stands in for Hone's images.

What it substitutes for a real cluster, and what it does not do:

* The images: the host's filesystem and the project's installed environment, with the
  Dockerfile's ENTRYPOINT/CMD/ENV/USER/WORKDIR (no container runtime starts on these
  machines). Only Hone's own images exist; any other image fails to pull.
* One node; pods' CPU and memory requests are not counted (limits are enforced with cgroups
  v1 where writable). No GPUs: a pod that asks for one is Unschedulable.
* Services are ClusterIP or headless with a userspace proxy on the node; no NodePort,
  LoadBalancer, Ingress or Endpoints/EndpointSlice objects (DNS and the proxy read the pods
  directly).
* :mod:`.policy` enforces NetworkPolicies with iptables rules in each pod's network namespace
  (where an ``iptables-restore`` is found; ``.ci/tools.sh`` fetches one). ``kubectl port-forward`` and ``exec`` are not served: the
  host is on the pods' bridge and reaches every pod and Service address directly.
* No HPA actions, PodDisruptionBudgets, evictions, taints or affinity beyond ``nodeSelector``,
  exec or gRPC probes, image pulls, persistent volumes beyond one host folder per claim.

Needs root (namespaces, bridges, mounts), iproute2 and util-linux' ``mount``; these machines
run sessions and CI as root. :func:`available` says whether this machine can run it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from hone_dev import ROOT
from hone_dev.apiserver import ApiServerThread
from hone_dev.node import network, policy
from hone_dev.node.controllers import (DeploymentController, JobController, NamespaceDefaultsController,
                                       ReplicaSetController, resync_on_changes)
from hone_dev.node.images import hone_images
from hone_dev.apiserver.kinds import PODS, SERVICES
from hone_dev.node.controllers import is_ready
from hone_dev.node.kubelet import Kubelet

log = logging.getLogger("hone.node")

__all__ = ["LocalCluster", "available"]


def available() -> str | None:
    """None when this machine can run the node; else why not."""
    if os.geteuid() != 0:
        return "the node needs root (network namespaces, bridges, mounts)"
    for tool in ("ip", "mount", "umount"):
        if shutil.which(tool) is None:
            return f"the node needs {tool!r} on PATH"
    return None


def app_version() -> str:
    import yaml

    return str(yaml.safe_load((ROOT / "charts" / "hone" / "Chart.yaml").read_text())["appVersion"])


class ServiceRouting:
    """kube-proxy and CoreDNS for the node: the ClusterIPs' proxies and DNS answers, from the store."""

    def __init__(self, server: Any, bridge: network.Bridge, api_port: int):
        self.server, self.bridge, self.api_port = server, bridge, api_port
        self.proxies: dict[tuple[str, int], network.ServiceProxy] = {}
        self._rr = itertools.count()
        self._task: asyncio.Task[None] | None = None
        self._dns: Any = None
        self.firewall: policy.Firewall | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._dns, _ = await loop.create_datagram_endpoint(lambda: network.ClusterDNS(self.lookup),
                                                            local_addr=(str(self.bridge.gateway), 53))
        await self.sync()
        self._task = loop.create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        for proxy in self.proxies.values():
            await proxy.stop()
        if self._dns:
            self._dns.close()

    async def _run(self) -> None:
        await resync_on_changes(self.server, (SERVICES,), self.sync)

    async def sync(self) -> None:
        wanted: dict[tuple[str, int], tuple[str, str, dict[str, Any]]] = {}
        for (ns, name), svc in list(self.server.store[SERVICES].items()):
            ip = (svc.get("spec") or {}).get("clusterIP")
            if not ip or ip == "None":
                continue
            for port in svc["spec"].get("ports") or []:
                if port.get("protocol", "TCP") == "TCP":
                    wanted[(ip, int(port["port"]))] = (ns, name, port)
        for key in list(self.proxies):
            if key not in wanted:
                await self.proxies.pop(key).stop()
                if not any(k[0] == key[0] for k in wanted):
                    await self.bridge.remove_service_address(key[0])
        for key, (ns, name, port) in wanted.items():
            if key in self.proxies:
                continue
            await self.bridge.add_service_address(key[0])
            proxy = network.ServiceProxy(key[0], key[1],
                                         lambda client, ns=ns, name=name, port=port: self.pick(ns, name, port, client))
            try:
                await proxy.start()
            except OSError as exc:
                log.warning("cannot proxy %s/%s at %s:%s: %s", ns, name, *key, exc)
                continue
            self.proxies[key] = proxy

    def endpoints(self, ns: str, svc: dict[str, Any]) -> list[dict[str, Any]]:
        selector = (svc.get("spec") or {}).get("selector")
        if not selector:
            return []
        unready = svc["spec"].get("publishNotReadyAddresses", False)
        found = []
        for (pns, _), pod in self.server.store[PODS].items():
            labels = pod["metadata"].get("labels") or {}
            if pns != ns or any(labels.get(k) != v for k, v in selector.items()):
                continue
            ip = (pod.get("status") or {}).get("podIP")
            if ip and (unready or is_ready(pod)) and not pod["metadata"].get("deletionTimestamp") and \
                    pod["status"].get("phase") not in ("Succeeded", "Failed"):
                found.append(pod)
        return sorted(found, key=lambda p: p["metadata"]["name"])

    @staticmethod
    def target_port(pod: dict[str, Any], port: dict[str, Any]) -> int | None:
        """A Service port's target on one endpoint pod (a named target is the pod's container port)."""
        target = port.get("targetPort", port["port"])
        if isinstance(target, int) or str(target).isdigit():
            return int(target)
        named = [p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports") or []
                 if p.get("name") == target]
        return int(named[0]) if named else None

    def pick(self, ns: str, name: str, port: dict[str, Any], client: str) -> tuple[str, int] | None:
        """The endpoint for a connection from ``client``: round robin over the ready endpoints that the
        NetworkPolicies let it reach (all of them without enforcement)."""
        if (ns, name) == ("default", "kubernetes"):
            return ("127.0.0.1", self.api_port)
        svc = self.server.store[SERVICES].get((ns, name))
        if svc is None:
            return None
        choices = [(pod, target) for pod in self.endpoints(ns, svc)
                   if (target := self.target_port(pod, port)) is not None]
        if self.firewall is not None:
            choices = self.firewall.reachable(client, choices)
        if not choices:
            return None
        pod, target = choices[next(self._rr) % len(choices)]
        return (pod["status"]["podIP"], target)

    def lookup(self, name: str) -> list[str] | None:
        suffix = f".svc.{network.CLUSTER_DOMAIN}"
        if not name.endswith(suffix):
            return None
        parts = name[: -len(suffix)].split(".")
        if len(parts) == 2:
            svc_name, ns = parts
            svc = self.server.store[SERVICES].get((ns, svc_name))
            if svc is None:
                return None
            ip = svc["spec"].get("clusterIP")
            if ip and ip != "None":
                return [ip]
            return [p["status"]["podIP"] for p in self.endpoints(ns, svc)]
        if len(parts) == 3:
            host, subdomain, ns = parts
            if (ns, subdomain) not in self.server.store[SERVICES]:
                return None
            found: list[str] | None = None
            for (pns, _), pod in self.server.store[PODS].items():
                spec, status = pod.get("spec") or {}, pod.get("status") or {}
                if pns == ns and spec.get("hostname") == host and spec.get("subdomain") == subdomain:
                    found = found or []
                    # As the headless Service's endpoints: a finished or deleted pod's address is gone
                    # (an Indexed Job's replacement has the same hostname).
                    if status.get("podIP") and status.get("phase") not in ("Succeeded", "Failed") and \
                            not pod["metadata"].get("deletionTimestamp"):
                        found.append(status["podIP"])
            return found
        return None


class LocalCluster:
    """The emulated API server with one node that runs its pods; a context manager.

    ``state`` holds the node's folders (pods, claims). ``job_backoff`` is the Job controller's
    back-off before replacing a failed pod (Kubernetes' 10 s by default), ``restart_backoff``
    the kubelet's before restarting a container.
    """

    def __init__(self, state: Path, job_backoff: float = 10.0, restart_backoff: float = 10.0,
                 environment: str | None = None, host: str = "127.0.0.1", port: int = 0):
        reason = available()
        if reason:
            raise RuntimeError(f"cannot run a node here: {reason}")
        self.state = Path(state).resolve()
        self.job_backoff, self.restart_backoff = job_backoff, restart_backoff
        self.environment = environment or sys.prefix
        self.bridge = network.Bridge.create()
        self.api_address = str(self.bridge.service_range.network_address + 1)
        self.apiserver = ApiServerThread(host=host, port=port, san_addresses=(self.api_address,),
                                         san_names=("kubernetes", "kubernetes.default", "kubernetes.default.svc",
                                                    f"kubernetes.default.svc.{network.CLUSTER_DOMAIN}"))
        self.images = hone_images(app_version())
        self.kubelet: Kubelet | None = None
        #: Enforces NetworkPolicies (None where no iptables-restore was found).
        self.firewall: policy.Firewall | None = None
        self._parts: list[Any] = []

    def __enter__(self) -> "LocalCluster":
        try:
            self.apiserver.__enter__()
            self.apiserver.call_async(self._start)
        except BaseException:
            self.__exit__()
            raise
        return self

    async def _start(self) -> None:
        server = self.apiserver.server
        server.service_range = self.bridge.service_range
        server.create(server.kinds[SERVICES], "default", {
            "metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"clusterIP": self.api_address, "ports": [{"name": "https", "port": 443, "protocol": "TCP",
                                                                "targetPort": self.apiserver.port}]}})
        defaults = NamespaceDefaultsController(server, self.apiserver.ca_pem)
        defaults.start()
        self.kubelet = Kubelet(server, self.state, self.images, self.bridge, (self.api_address, 443),
                               self.environment, restart_backoff=self.restart_backoff)
        server.pod_logs = self.kubelet.logs
        routing = ServiceRouting(server, self.bridge, self.apiserver.port)
        await routing.start()
        binary = policy.iptables()
        firewall = None
        if binary is None:
            log.warning("no iptables-restore here (bash .ci/tools.sh fetches one): the node enforces no NetworkPolicy")
        else:
            kubelet = self.kubelet
            firewall = policy.Firewall(server, str(self.bridge.gateway), routing, lambda: {
                w.pod_ip: w.net.netns for w in list(kubelet.workers.values()) if w.net is not None}, binary)
            routing.firewall = self.kubelet.firewall = firewall
            await firewall.start()
        self.firewall = firewall
        self.kubelet.start()
        self._parts = [defaults, JobController(server, self.job_backoff), ReplicaSetController(server),
                       DeploymentController(server), routing, *([firewall] if firewall else [])]
        for part in self._parts[1:4]:
            part.start()

    async def _stop(self) -> None:
        if self.kubelet is not None:
            await self.kubelet.stop()
        for part in self._parts:
            await part.stop()

    def __exit__(self, *exc: object) -> None:
        try:
            if self.apiserver.loop is not None and self.apiserver.server is not None:
                self.apiserver.call_async(self._stop, timeout=120)
        finally:
            self.apiserver.__exit__(*exc)
            self.bridge.remove()

    # conveniences for tests and ``hone dev-cluster``
    def call(self, fn: Any, *args: Any) -> Any:
        return self.apiserver.call(fn, *args)

    def write_kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        return self.apiserver.write_kubeconfig(path, namespace)
