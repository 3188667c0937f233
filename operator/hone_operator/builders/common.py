"""Pieces every builder shares: names, labels, owner references, pod security."""

from __future__ import annotations

import hashlib
from typing import Any

from hone_operator.api.v1alpha1 import API_VERSION

MANAGED_BY = "hone-operator"
#: Label on every child object: the FineTuneJob it belongs to.
FINETUNEJOB_LABEL = "hone.dev/finetunejob"
MODELSERVING_LABEL = "hone.dev/modelserving"
COMPONENT_LABEL = "app.kubernetes.io/component"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
KUEUE_PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"

# Job names become label values and pod hostnames (<job>-<index>): keep them
# well under 63 characters, with a hash to stay unique when shortened.
_MAX_CHILD_NAME = 52


def child_name(owner: str, suffix: str) -> str:
    """A deterministic child name: ``<owner>-<suffix>``, shortened with a hash if needed."""
    name = f"{owner}-{suffix}"
    if len(name) <= _MAX_CHILD_NAME:
        return name
    digest = hashlib.sha256(owner.encode()).hexdigest()[:8]
    keep = _MAX_CHILD_NAME - len(suffix) - len(digest) - 2
    return f"{owner[:keep].rstrip('-.')}-{digest}-{suffix}"


def labels(owner_label: str, owner: str, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "hone",
        "app.kubernetes.io/instance": owner[:63].rstrip("-."),
        COMPONENT_LABEL: component,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/part-of": "hone",
        owner_label: owner[:63].rstrip("-."),
    }


def owner_reference(kind: str, name: str, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": kind,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def metadata(
    name: str, namespace: str, lbls: dict[str, str], owner: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": lbls,
        "ownerReferences": [owner],
    }
    meta.update({k: v for k, v in extra.items() if v})
    return meta


def pod_security_context(uid: int) -> dict[str, Any]:
    """Pod Security Standard "restricted" at pod level."""
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    """Pod Security Standard "restricted" at container level, plus a read-only root."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def resources(cpu: str | int, memory: str | int, extended: dict[str, int] | None = None) -> dict[str, Any]:
    """Requests equal to limits (Guaranteed QoS), plus extended resources such as GPUs."""
    amounts: dict[str, Any] = {"cpu": str(cpu), "memory": str(memory)}
    for name, count in (extended or {}).items():
        if count:
            amounts[name] = str(count)
    return {"requests": dict(amounts), "limits": dict(amounts)}


def scheduling(resources: Any) -> dict[str, Any]:
    """nodeSelector, tolerations and priorityClassName of a spec's ``resources``, when set."""
    out: dict[str, Any] = {}
    if resources.nodeSelector:
        out["nodeSelector"] = dict(resources.nodeSelector)
    if resources.tolerations:
        out["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True) for t in resources.tolerations]
    if resources.priorityClassName:
        out["priorityClassName"] = resources.priorityClassName
    return out


class SpecError(ValueError):
    """The spec cannot be turned into objects; ``param`` names the field."""

    def __init__(self, param: str, message: str, reason: str = "InvalidSpec"):
        super().__init__(message)
        self.param = param
        self.reason = reason


#: Where the runtime pods keep caches (Hugging Face, torch extensions, Triton); an emptyDir.
CACHE_DIR = "/var/cache/hone"


#: torch sizes its thread pools by the node's cores, not the container's CPU limit: on a 64-core node a pod
#: limited to 2 CPUs would run 64 threads and spend its quota being throttled. The limit, rounded up, instead
#: (the downward API; the limit is always set).
CPU_THREADS = {"name": "OMP_NUM_THREADS",
               "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1"}}}


def env(extra: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The environment every runtime container gets: caches under CACHE_DIR, HOME in /tmp."""
    env = {
        "HOME": "/tmp",
        "TMPDIR": "/tmp",
        "HF_HOME": f"{CACHE_DIR}/huggingface",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "TORCH_EXTENSIONS_DIR": f"{CACHE_DIR}/torch_extensions",
        "TRITON_CACHE_DIR": f"{CACHE_DIR}/triton",
        "PYTHONUNBUFFERED": "1",
    }
    env.update(extra or {})
    return [{"name": k, "value": v} for k, v in env.items()]
