"""Server-side Tables (``Accept: application/json;as=Table;v=v1;g=meta.k8s.io``), what ``kubectl get`` prints.

Custom resources get the CRD's ``additionalPrinterColumns`` (values found by their JSON path and
typed as the apiextensions server types them: dates as ages); a few built-in kinds get the
columns kube-apiserver prints for them; every other kind gets NAME and AGE.
"""

from __future__ import annotations

import datetime
import json
import re
from typing import Any, Callable

from hone_dev.apiserver.kinds import Kind

TABLE_ACCEPT = re.compile(r"as=Table;v=v1(beta1)?;g=meta\.k8s\.io")
NAME_COLUMN = {"name": "Name", "type": "string", "format": "name", "priority": 0,
               "description": "Name must be unique within a namespace."}
AGE_COLUMN = {"name": "Age", "type": "string", "format": "", "priority": 0,
              "description": "CreationTimestamp is a timestamp representing the server time when this object was "
                             "created."}


def wants_table(accept: str) -> bool:
    first = accept.split(",")[0]
    return bool(TABLE_ACCEPT.search(first.replace(" ", "")))


def human_duration(seconds: float) -> str:
    """k8s.io/apimachinery's HumanDuration: 45s, 3m20s, 15m, 5h30m, 3d, 2y10d."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d{hours % 24}h" if hours % 24 else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y{days}d" if days else f"{hours // 24 // 365}y"
    return f"{hours // 24 // 365}y"


def age(timestamp: str | None) -> str:
    if not timestamp:
        return "<unknown>"
    at = datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    return human_duration((datetime.datetime.now(datetime.timezone.utc) - at).total_seconds())


def json_path(obj: Any, path: str) -> Any:
    """The simple JSON paths CRD printer columns allow: ``.status.phase``, ``.spec.items[0].name``."""
    cur = obj
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path.strip().lstrip(".")):
        if part.startswith("["):
            index = int(part[1:-1])
            cur = cur[index] if isinstance(cur, list) and index < len(cur) else None
        else:
            cur = cur.get(part) if isinstance(cur, dict) else None
        if cur is None:
            return None
    return cur


def _typed(column: dict[str, Any], value: Any) -> Any:
    kind = column.get("type")
    if value is None:
        return None
    if kind == "date":
        return age(value) if isinstance(value, str) else None
    if kind == "integer" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    if kind == "number" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    if kind == "boolean" and isinstance(value, bool):
        return value
    if kind == "string":
        return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return None


def _ready(status: dict[str, Any], want: Any) -> str:
    return f"{status.get('readyReplicas', 0) or 0}/{want or 0}"


#: kind -> (extra columns, cells of an object), as kube-apiserver's printers show them.
BUILTIN: dict[str, tuple[list[tuple[str, str]], Callable[[dict[str, Any]], list[Any]]]] = {
    "Namespace": ([("Status", "string")], lambda o: [(o.get("status") or {}).get("phase", "Active")]),
    "ConfigMap": ([("Data", "integer")], lambda o: [len(o.get("data") or {}) + len(o.get("binaryData") or {})]),
    "Secret": ([("Type", "string"), ("Data", "integer")],
               lambda o: [o.get("type", "Opaque"), len(o.get("data") or {})]),
    "ServiceAccount": ([("Secrets", "integer")], lambda o: [len(o.get("secrets") or [])]),
    "Deployment": ([("Ready", "string"), ("Up-to-date", "integer"), ("Available", "integer")],
                   lambda o: [_ready(o.get("status") or {}, (o.get("spec") or {}).get("replicas", 1)),
                              (o.get("status") or {}).get("updatedReplicas", 0),
                              (o.get("status") or {}).get("availableReplicas", 0)]),
    "Job": ([("Status", "string"), ("Completions", "string")],
            lambda o: [_job_status(o), f"{(o.get('status') or {}).get('succeeded', 0)}/"
                                       f"{(o.get('spec') or {}).get('completions', 1)}"]),
    "Pod": ([("Ready", "string"), ("Status", "string"), ("Restarts", "integer")],
            lambda o: [_pod_ready(o), _pod_status(o), _restarts(o)]),
    "ReplicaSet": ([("Desired", "integer"), ("Current", "integer"), ("Ready", "integer")],
                   lambda o: [(o.get("spec") or {}).get("replicas", 1), (o.get("status") or {}).get("replicas", 0),
                              (o.get("status") or {}).get("readyReplicas", 0)]),
    "Node": ([("Status", "string"), ("Roles", "string"), ("Version", "string")],
             lambda o: [next((("Ready" if c.get("status") == "True" else "NotReady")
                              for c in (o.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"),
                             "Unknown"), "<none>",
                        ((o.get("status") or {}).get("nodeInfo") or {}).get("kubeletVersion", "")]),
    "Service": ([("Type", "string"), ("Cluster-IP", "string"), ("Ports", "string")],
                lambda o: [(o.get("spec") or {}).get("type", "ClusterIP"), (o.get("spec") or {}).get("clusterIP", ""),
                           ",".join(f"{p.get('port')}/{p.get('protocol', 'TCP')}"
                                    for p in (o.get("spec") or {}).get("ports") or []) or "<none>"]),
    "PersistentVolumeClaim": ([("Status", "string"), ("Capacity", "string")],
                              lambda o: [(o.get("status") or {}).get("phase", "Pending"),
                                         ((o.get("status") or {}).get("capacity") or {}).get("storage", "")]),
}


def _pod_status(pod: dict[str, Any]) -> str:
    """The STATUS column as kubectl prints it: a waiting or terminated reason over the phase."""
    status = pod.get("status") or {}
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return "Terminating"
    reason = status.get("reason") or status.get("phase", "Pending")
    inits = status.get("initContainerStatuses") or []
    for i, cs in enumerate(inits):
        state = cs.get("state") or {}
        if "terminated" in state and state["terminated"].get("exitCode") == 0:
            continue
        if "terminated" in state:
            return f"Init:{state['terminated'].get('reason') or 'Error'}"
        if "waiting" in state and state["waiting"].get("reason") not in (None, "PodInitializing"):
            return f"Init:{state['waiting']['reason']}"
        return f"Init:{i}/{len(inits)}"
    running = False
    for cs in reversed(status.get("containerStatuses") or []):
        state = cs.get("state") or {}
        if (state.get("waiting") or {}).get("reason"):
            reason = state["waiting"]["reason"]
        elif "terminated" in state:
            reason = state["terminated"].get("reason") or ("Completed" if state["terminated"].get("exitCode") == 0
                                                           else "Error")
        elif "running" in state and cs.get("ready"):
            running = True
    if running and reason in ("Completed", "Error"):
        return "Running"
    return reason


def _job_status(job: dict[str, Any]) -> str:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("status") == "True" and cond.get("type") in ("Complete", "Failed", "Suspended"):
            return cond["type"]
    return "Running"


def _pod_ready(pod: dict[str, Any]) -> str:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return f"{sum(1 for s in statuses if s.get('ready'))}/{len((pod.get('spec') or {}).get('containers') or [])}"


def _restarts(pod: dict[str, Any]) -> int:
    return sum(s.get("restartCount", 0) for s in (pod.get("status") or {}).get("containerStatuses") or [])


def columns(kind: Kind) -> list[dict[str, Any]]:
    if kind.columns:
        return [NAME_COLUMN] + [{"name": c["name"], "type": c.get("type", "string"), "format": c.get("format", ""),
                                 "description": c.get("description", ""), "priority": c.get("priority", 0)}
                                for c in kind.columns]
    extra = BUILTIN.get(kind.kind, ([], None))[0] if kind.schema is None else []
    return [NAME_COLUMN] + [{"name": n, "type": t, "format": "", "description": "", "priority": 0}
                            for n, t in extra] + [AGE_COLUMN]


def cells(kind: Kind, obj: dict[str, Any]) -> list[Any]:
    meta = obj.get("metadata") or {}
    if kind.columns:
        return [meta.get("name")] + [_typed(c, json_path(obj, c["jsonPath"])) for c in kind.columns]
    builtin = BUILTIN.get(kind.kind) if kind.schema is None else None
    return [meta.get("name")] + (builtin[1](obj) if builtin else []) + [age(meta.get("creationTimestamp"))]


def row(kind: Kind, obj: dict[str, Any], include: str) -> dict[str, Any]:
    out: dict[str, Any] = {"cells": cells(kind, obj)}
    if include == "Object":
        out["object"] = obj
    elif include != "None":
        out["object"] = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                         "metadata": obj.get("metadata") or {}}
    return out


def table(kind: Kind, objs: list[dict[str, Any]], resource_version: str, include: str = "Metadata",
          headers: bool = True) -> dict[str, Any]:
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": resource_version},
            "columnDefinitions": columns(kind) if headers else [],
            "rows": [row(kind, o, include) for o in objs]}
