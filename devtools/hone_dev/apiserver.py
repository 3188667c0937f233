"""An emulated Kubernetes API server for Hone's tests and benchmarks.

Built on kmock's :class:`~kmock.KubernetesEmulator` (HTTP server, discovery
endpoints, Kubernetes-style error bodies), it adds what stock kmock 0.8 lacks
and a real API server does:

* CRDs from ``crds/`` served as resources, with the CRD's OpenAPI schema
  applied: unknown fields pruned (or rejected with ``fieldValidation=Strict``)
  and invalid objects refused with 422 naming the field;
* ``uid``, ``resourceVersion`` (a global counter), ``generation`` (bumped on
  spec changes only), ``creationTimestamp``, ``generateName``;
* 409 on a create of an existing name and on a write with a stale
  ``resourceVersion``; PUT; JSON, merge and strategic-merge PATCH;
* the status subresource kept apart: writes to the main resource leave status
  alone, writes to ``/status`` change nothing else; the scale subresource;
* Namespaces, created on first use of a namespace (as if an admin had made
  them; kopf's namespaced mode watches Namespace objects);
* finalizers and ``deletionTimestamp``; garbage collection of dependents by
  ``ownerReferences`` (cascading, unless ``propagationPolicy=Orphan``);
* label and field selectors on list and watch; watches that resume from a
  ``resourceVersion`` (410 Gone when it is too old) and honour
  ``timeoutSeconds``;
* constant-time reads (kmock's own store replays every object's history on
  each read and slows to a crawl after a few hundred requests);
* an audit log of every resource request (verb, resource, namespace, name),
  used to count API writes and to derive the RBAC the operator really needs.

Nothing here runs controllers: tests play the Job controller by creating pods
and patching Job status, as a real cluster's controllers would.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import dataclasses
import datetime
import json
import re
import secrets
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterable

import aiohttp.web
import attrs
import jsonpatch
import jsonschema
import kmock
import yaml

from hone_dev import ROOT

GVR = tuple[str, str, str]  # (group, version, plural)


@dataclasses.dataclass
class Kind:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    status: bool = False  # has the status subresource
    scale: dict[str, str] | None = None
    schema: dict[str, Any] | None = None
    validator: Any = None
    short_names: tuple[str, ...] = ()

    @property
    def gvr(self) -> GVR:
        return (self.group, self.version, self.plural)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


BUILTINS = [
    Kind("", "v1", "namespaces", "Namespace", namespaced=False, status=True),
    Kind("", "v1", "configmaps", "ConfigMap"),
    Kind("", "v1", "secrets", "Secret"),
    Kind("", "v1", "serviceaccounts", "ServiceAccount"),
    Kind("", "v1", "services", "Service", status=True),
    Kind("", "v1", "pods", "Pod", status=True),
    Kind("", "v1", "events", "Event"),
    Kind("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", status=True),
    Kind("batch", "v1", "jobs", "Job", status=True),
    Kind("apps", "v1", "deployments", "Deployment", status=True,
         scale={"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"}),
    Kind("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler", status=True),
    Kind("rbac.authorization.k8s.io", "v1", "roles", "Role"),
    Kind("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
    Kind("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy"),
    Kind("coordination.k8s.io", "v1", "leases", "Lease"),
    Kind("events.k8s.io", "v1", "events", "Event"),
    Kind("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", namespaced=False,
         status=True),
]

WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})


@dataclasses.dataclass(frozen=True)
class Audit:
    verb: str
    group: str
    resource: str
    subresource: str | None
    namespace: str | None
    name: str | None
    status: int
    user_agent: str = ""
    at: float = 0.0  # time.monotonic() when served


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details or {}

    def body(self) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                "code": self.code, "reason": self.reason, "message": self.message, "details": self.details}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


# --------------------------------------------------------------------------
# Schema handling: defaults are not applied (Hone's CRDs carry none)
# --------------------------------------------------------------------------


def to_jsonschema(node: Any) -> Any:
    """OpenAPI v3.0 (Kubernetes flavour) -> JSON Schema draft 4."""
    if isinstance(node, list):
        return [to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: to_jsonschema(v) for k, v in node.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if node.get("nullable"):
        if "type" in out:
            out["type"] = [out["type"], "null"]
        else:
            out = {"anyOf": [out, {"type": "null"}]}
    return out


def error_field(err: jsonschema.ValidationError) -> str:
    """The field an error is about, as the API server names it (required -> the missing child)."""
    path = ".".join(str(p) for p in err.absolute_path)
    if err.validator == "required":
        missing = re.search(r"'([^']+)' is a required property", err.message)
        if missing:
            path = f"{path}.{missing.group(1)}" if path else missing.group(1)
    return path


def prune(obj: Any, schema: dict[str, Any], path: str, removed: list[str]) -> Any:
    """Drop fields the schema does not declare (the API server's pruning)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return obj
    if isinstance(obj, dict):
        props = schema.get("properties")
        addl = schema.get("additionalProperties")
        if props is not None:
            for key in list(obj):
                if key not in props:
                    removed.append(f"{path}.{key}".lstrip("."))
                    del obj[key]
                else:
                    obj[key] = prune(obj[key], props[key], f"{path}.{key}", removed)
        elif isinstance(addl, dict):
            for key in list(obj):
                obj[key] = prune(obj[key], addl, f"{path}.{key}", removed)
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        return [prune(item, schema["items"], f"{path}[{i}]", removed) for i, item in enumerate(obj)]
    return obj


# --------------------------------------------------------------------------
# Selectors
# --------------------------------------------------------------------------

_SET_RE = re.compile(r"^\s*([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split_selector(sel: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in sel:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def label_match(labels: dict[str, str], selector: str | None) -> bool:
    if not selector:
        return True
    for term in _split_selector(selector):
        m = _SET_RE.match(term)
        if m:
            key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",")}
            if op == "in" and labels.get(key) not in values:
                return False
            if op == "notin" and key in labels and labels[key] in values:
                return False
            continue
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k.strip()) == v.strip():
                return False
        elif "==" in term or "=" in term:
            k, v = re.split("==|=", term, maxsplit=1)
            if labels.get(k.strip()) != v.strip():
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


def field_match(obj: dict[str, Any], selector: str | None) -> bool:
    if not selector:
        return True
    for term in _split_selector(selector):
        neg = "!=" in term
        k, v = re.split("!=|==|=", term, maxsplit=1)
        cur: Any = obj
        for part in k.strip().split("."):
            cur = cur.get(part) if isinstance(cur, dict) else None
        if (str(cur) == v.strip()) == neg:
            return False
    return True


# --------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------


@dataclasses.dataclass
class Route:
    group: str
    version: str
    plural: str
    namespace: str | None
    name: str | None
    subresource: str | None


def parse_route(path: str) -> Route | None:
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 2 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    if not rest:
        return None
    namespace = None
    if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] not in ("status", "finalize"):
        namespace, rest = rest[1], rest[2:]
    plural = rest[0]
    name = rest[1] if len(rest) > 1 else None
    sub = "/".join(rest[2:]) or None
    return Route(group, version, plural, namespace, name, sub)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _without(obj: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in keys}


@attrs.define(kw_only=True)
class HoneApiServer(kmock.KubernetesEmulator):
    kinds: dict[GVR, Kind] = attrs.field(factory=dict)
    store: dict[GVR, dict[tuple[str | None, str], dict[str, Any]]] = attrs.field(
        factory=lambda: collections.defaultdict(dict))
    rv: int = 0
    history: dict[GVR, collections.deque] = attrs.field(
        factory=lambda: collections.defaultdict(lambda: collections.deque(maxlen=20000)))
    watchers: dict[GVR, set[asyncio.Queue]] = attrs.field(factory=lambda: collections.defaultdict(set))
    audit: list[Audit] = attrs.field(factory=list)
    _encodings: dict[int, bytes] = attrs.field(factory=dict)
    #: Seconds added to every resource request, to model a real API server's latency.
    latency: float = 0.0

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for kind in BUILTINS:
            self.register(dataclasses.replace(kind))

    # ---- registration ------------------------------------------------------

    def register(self, kind: Kind) -> None:
        self.kinds[kind.gvr] = kind
        subresources = (["status"] if kind.status else []) + (["scale"] if kind.scale else [])
        self.resources[f"{kind.api_version}/{kind.plural}"] = kmock.ResourceInfo(
            kind=kind.kind, namespaced=kind.namespaced, singular=kind.kind.lower(),
            shortnames=set(kind.short_names), subresources=set(subresources),
            verbs={"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"},
        )

    def install_crd(self, crd: dict[str, Any]) -> None:
        spec = crd["spec"]
        for version in spec["versions"]:
            schema = version["schema"]["openAPIV3Schema"]
            kind = Kind(
                group=spec["group"], version=version["name"], plural=spec["names"]["plural"],
                kind=spec["names"]["kind"], namespaced=spec["scope"] == "Namespaced",
                status="status" in (version.get("subresources") or {}),
                scale=(version.get("subresources") or {}).get("scale"),
                schema=schema, validator=jsonschema.Draft4Validator(to_jsonschema(schema)),
                short_names=tuple(spec["names"].get("shortNames", ())),
            )
            self.register(kind)
        self._put(("apiextensions.k8s.io", "v1", "customresourcedefinitions"), None, copy.deepcopy(crd))

    def install_crds(self, folder: Path = ROOT / "crds") -> None:
        for path in sorted(folder.glob("*.yaml")):
            self.install_crd(yaml.safe_load(path.read_text()))

    # ---- HTTP entry --------------------------------------------------------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        route = parse_route(raw_request.path)
        if route is None or (route.group, route.version, route.plural) not in self.kinds:
            if len(raw_request.path) > 1 and raw_request.path.endswith("/"):
                raw_request = raw_request.clone(rel_url=raw_request.rel_url.with_path(raw_request.path.rstrip("/")))
            return await super().__call__(raw_request)
        kind = self.kinds[(route.group, route.version, route.plural)]
        query = dict(raw_request.query)
        if self.latency and str(query.get("watch", "")).lower() not in ("true", "1"):
            await asyncio.sleep(self.latency)
        method = raw_request.method.upper()
        verb = self._verb(method, route, query)
        body_bytes = await raw_request.read()
        status = 200
        try:
            body = json.loads(body_bytes) if body_bytes else None
            if verb == "watch":
                self._audit(verb, kind, route, 200, raw_request)
                return await self._watch(raw_request, kind, route, query)
            payload, status = self._dispatch(verb, kind, route, query, body, raw_request.headers)
        except ApiError as exc:
            self._audit(verb, kind, route, exc.code, raw_request)
            return aiohttp.web.json_response(exc.body(), status=exc.code)
        except json.JSONDecodeError as exc:
            return aiohttp.web.json_response(ApiError(400, "BadRequest", f"invalid JSON: {exc}").body(), status=400)
        if verb == "create":  # a create names its object in the body, not the path
            route = dataclasses.replace(route, name=payload["metadata"]["name"])
        self._audit(verb, kind, route, status, raw_request)
        return aiohttp.web.json_response(payload, status=status)

    def _verb(self, method: str, route: Route, query: dict[str, str]) -> str:
        if method == "GET":
            if str(query.get("watch", "")).lower() in ("true", "1"):
                return "watch"
            return "get" if route.name else "list"
        if method == "POST":
            return "create"
        if method == "PUT":
            return "update"
        if method == "PATCH":
            return "patch"
        if method == "DELETE":
            return "delete" if route.name else "deletecollection"
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported")

    def _audit(self, verb: str, kind: Kind, route: Route, status: int, raw: aiohttp.web.BaseRequest) -> None:
        self.audit.append(Audit(verb, kind.group, kind.plural, route.subresource, route.namespace, route.name,
                                status, raw.headers.get("User-Agent", ""), time.monotonic()))

    def _dispatch(self, verb: str, kind: Kind, route: Route, query: dict[str, str], body: Any,
                  headers: Any) -> tuple[Any, int]:
        ns = route.namespace if kind.namespaced else None
        if kind.namespaced and route.namespace is None and verb not in ("list",):
            raise ApiError(404, "NotFound", f"{kind.plural} is namespaced; use /namespaces/<ns>/{kind.plural}")
        if verb == "list":
            return self.list(kind, ns, query.get("labelSelector"), query.get("fieldSelector")), 200
        if verb == "deletecollection":
            for obj in self._select(kind, ns, query.get("labelSelector"), query.get("fieldSelector")):
                self.delete(kind, ns, obj["metadata"]["name"], None)
            return {"kind": "Status", "apiVersion": "v1", "status": "Success"}, 200
        if verb == "create":
            if route.name:
                raise ApiError(405, "MethodNotAllowed", "POST to a named object")
            return self.create(kind, ns, body, strict=query.get("fieldValidation") == "Strict"), 201
        assert route.name is not None
        if verb == "get":
            obj = self.get(kind, ns, route.name)
            return (self._scale_of(kind, obj) if route.subresource == "scale" else obj), 200
        if verb == "delete":
            return self.delete(kind, ns, route.name, body), 200
        ctype = (headers.get("Content-Type") or "application/json").split(";")[0].strip()
        return self.write(kind, ns, route.name, route.subresource, body, ctype, replace=(verb == "update"),
                          strict=query.get("fieldValidation") == "Strict"), 200

    # ---- storage operations -------------------------------------------------

    def _key(self, kind: Kind, ns: str | None, name: str) -> tuple[str | None, str]:
        return (ns if kind.namespaced else None, name)

    def _put(self, gvr: GVR, ns: str | None, obj: dict[str, Any], event: str = "ADDED") -> dict[str, Any]:
        self.rv += 1
        meta = obj.setdefault("metadata", {})
        meta["resourceVersion"] = str(self.rv)
        key = (ns, meta["name"])
        if event == "DELETED":
            self.store[gvr].pop(key, None)
        else:
            self.store[gvr][key] = obj
        self._emit(gvr, event, obj)
        return obj

    def _emit(self, gvr: GVR, event: str, obj: dict[str, Any]) -> None:
        # Stored objects are never mutated once stored (every write stores a
        # new dict), so events can share them instead of copying.
        item = (self.rv, {"type": event, "object": obj})
        self.history[gvr].append(item)
        for queue in list(self.watchers[gvr]):
            queue.put_nowait(item)

    def get(self, kind: Kind, ns: str | None, name: str) -> dict[str, Any]:
        obj = self.store[kind.gvr].get(self._key(kind, ns, name))
        if obj is None:
            raise ApiError(404, "NotFound", f'{kind.plural}.{kind.group or "core"} "{name}" not found',
                           {"name": name, "kind": kind.plural})
        return copy.deepcopy(obj)

    def _select(self, kind: Kind, ns: str | None, labels: str | None, fields: str | None) -> list[dict[str, Any]]:
        out = []
        for (ons, _), obj in self.store[kind.gvr].items():
            if ns is not None and ons != ns:
                continue
            if label_match(obj.get("metadata", {}).get("labels") or {}, labels) and field_match(obj, fields):
                out.append(obj)
        return out

    def list(self, kind: Kind, ns: str | None, labels: str | None = None, fields: str | None = None) -> dict[str, Any]:
        items = self._select(kind, ns, labels, fields)  # serialised at once, never mutated
        return {"apiVersion": kind.api_version, "kind": f"{kind.kind}List",
                "metadata": {"resourceVersion": str(self.rv)}, "items": items}

    def _check_schema(self, kind: Kind, obj: dict[str, Any], strict: bool) -> None:
        if kind.schema is None:
            return
        removed: list[str] = []
        prune(obj, kind.schema, "", removed)
        removed = [r for r in removed if not r.startswith(("apiVersion", "kind", "metadata"))]
        if strict and removed:
            raise ApiError(422, "Invalid", f'{kind.kind}.{kind.group} "{obj["metadata"].get("name")}" is invalid: '
                           + ", ".join(f"{r}: unknown field" for r in removed))
        errors = sorted(kind.validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
        if errors:
            causes = []
            for err in errors[:10]:
                field = error_field(err)
                causes.append({"field": field, "message": err.message, "reason": "FieldValueInvalid"})
            message = "; ".join(f"{c['field']}: Invalid value: {c['message']}" for c in causes)
            raise ApiError(422, "Invalid", f'{kind.kind}.{kind.group} "{obj["metadata"].get("name")}" is invalid: '
                           f"{message}", {"name": obj["metadata"].get("name"), "kind": kind.kind, "causes": causes})

    def create(self, kind: Kind, ns: str | None, body: Any, strict: bool = False) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body must be an object")
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name"):
            if meta.get("generateName"):
                meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
            else:
                raise ApiError(422, "Invalid", f"{kind.kind}: metadata.name: Required value: name or generateName is required")
        if not re.match(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", meta["name"]) or len(meta["name"]) > 253:
            raise ApiError(422, "Invalid", f'{kind.kind} "{meta["name"]}" is invalid: metadata.name: Invalid value: '
                           "must be a lowercase RFC 1123 subdomain")
        if kind.namespaced:
            if meta.get("namespace") not in (None, ns):
                raise ApiError(400, "BadRequest", "the namespace of the object does not match the namespace on the request")
            meta["namespace"] = ns
        else:
            meta.pop("namespace", None)
        key = self._key(kind, ns, meta["name"])
        if key in self.store[kind.gvr]:
            raise ApiError(409, "AlreadyExists", f'{kind.plural}.{kind.group or "core"} "{meta["name"]}" already exists',
                           {"name": meta["name"], "kind": kind.plural})
        obj["apiVersion"], obj["kind"] = kind.api_version, kind.kind
        if kind.status:
            obj.pop("status", None)
        self._check_schema(kind, obj, strict)
        namespaces = ("", "v1", "namespaces")
        if kind.namespaced and (None, ns) not in self.store[namespaces]:
            # Namespaces exist before anything is created in them (an admin made
            # them); kopf's namespaced mode only watches namespaces that exist.
            self.create(self.kinds[namespaces], None, {"metadata": {"name": ns}})
        meta.update(uid=str(uuid.uuid4()), generation=1, creationTimestamp=_now())
        meta.pop("resourceVersion", None)
        return self._put(kind.gvr, key[0], obj, "ADDED")

    def write(self, kind: Kind, ns: str | None, name: str, sub: str | None, body: Any, ctype: str,
              replace: bool = False, strict: bool = False) -> dict[str, Any]:
        key = self._key(kind, ns, name)
        current = self.store[kind.gvr].get(key)
        if current is None:
            raise ApiError(404, "NotFound", f'{kind.plural}.{kind.group or "core"} "{name}" not found',
                           {"name": name, "kind": kind.plural})
        if sub not in (None, "status", "scale") or (sub == "status" and not kind.status) or (sub == "scale" and not kind.scale):
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({sub})")

        if sub == "scale":
            return self._write_scale(kind, key, current, body, ctype, replace)

        # The write's own preconditions.
        if isinstance(body, dict):
            want_rv = (body.get("metadata") or {}).get("resourceVersion")
            if want_rv is not None and want_rv != current["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {kind.plural}.{kind.group} "{name}": '
                               "the object has been modified; please apply your changes to the latest version and try again")
        try:
            if replace:
                if not isinstance(body, dict):
                    raise ApiError(400, "BadRequest", "PUT needs an object")
                new = copy.deepcopy(body)
            elif ctype == "application/json-patch+json":
                new = jsonpatch.apply_patch(current, body)
            elif ctype in ("application/merge-patch+json", "application/strategic-merge-patch+json",
                           "application/json"):
                new = merge_patch(current, body)
            else:
                raise ApiError(415, "UnsupportedMediaType", f"{ctype} is not supported")
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
            raise ApiError(422, "Invalid", f"the JSON patch could not be applied: {exc}") from exc

        new = copy.deepcopy(new)
        if sub == "status":
            # Only status changes through /status.
            new = {**_without(current, "status"), **({"status": new["status"]} if "status" in new else {})}
        else:
            if kind.status:
                new = {**_without(new, "status"), **({"status": current["status"]} if "status" in current else {})}
            meta = new.setdefault("metadata", {})
            for immutable in ("name", "namespace", "uid", "creationTimestamp", "generation", "deletionTimestamp"):
                if immutable in current["metadata"]:
                    meta[immutable] = current["metadata"][immutable]
                else:
                    meta.pop(immutable, None)
            if current["metadata"].get("deletionTimestamp") and set(meta.get("finalizers") or []) - set(
                    current["metadata"].get("finalizers") or []):
                raise ApiError(422, "Forbidden", "no new finalizers can be added if the object is being deleted")
        new["apiVersion"], new["kind"] = kind.api_version, kind.kind
        new["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        self._check_schema(kind, new, strict)

        if new == current:
            return current  # a no-op write changes nothing, not even resourceVersion
        if _without(new, "metadata", "status") != _without(current, "metadata", "status"):
            new["metadata"]["generation"] = int(current["metadata"].get("generation", 1)) + 1
        meta = new["metadata"]
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self._put(kind.gvr, key[0], new, "DELETED")
            self._collect_garbage(new)
            return copy.deepcopy(new)
        return self._put(kind.gvr, key[0], new, "MODIFIED")

    def _scale_of(self, kind: Kind, obj: dict[str, Any]) -> dict[str, Any]:
        if not kind.scale:
            raise ApiError(404, "NotFound", "no scale subresource")
        def at(path: str | None) -> Any:
            cur: Any = obj
            for part in (path or "").strip(".").split("."):
                cur = cur.get(part) if isinstance(cur, dict) else None
            return cur
        status: dict[str, Any] = {"replicas": at(kind.scale.get("statusReplicasPath")) or 0}
        if kind.scale.get("labelSelectorPath") and at(kind.scale["labelSelectorPath"]):
            status["selector"] = at(kind.scale["labelSelectorPath"])
        return {"apiVersion": "autoscaling/v1", "kind": "Scale",
                "metadata": {k: obj["metadata"][k] for k in ("name", "namespace", "uid", "resourceVersion",
                                                            "creationTimestamp") if k in obj["metadata"]},
                "spec": {"replicas": at(kind.scale["specReplicasPath"]) or 0}, "status": status}

    def _write_scale(self, kind: Kind, key: tuple[str | None, str], current: dict[str, Any], body: Any,
                     ctype: str, replace: bool) -> dict[str, Any]:
        scale = self._scale_of(kind, current)
        new_scale = copy.deepcopy(body) if replace else (
            jsonpatch.apply_patch(scale, body) if ctype == "application/json-patch+json" else merge_patch(scale, body))
        replicas = (new_scale.get("spec") or {}).get("replicas")
        if not isinstance(replicas, int) or replicas < 0:
            raise ApiError(422, "Invalid", "spec.replicas: Invalid value: must be a non-negative integer")
        path = kind.scale["specReplicasPath"].strip(".").split(".")
        new = copy.deepcopy(current)
        cur = new
        for part in path[:-1]:
            cur = cur.setdefault(part, {})
        if cur.get(path[-1]) != replicas:
            cur[path[-1]] = replicas
            new["metadata"]["generation"] = int(current["metadata"].get("generation", 1)) + 1
            self._check_schema(kind, new, strict=False)
            self._put(kind.gvr, key[0], new, "MODIFIED")
        return self._scale_of(kind, self.store[kind.gvr][key])

    def delete(self, kind: Kind, ns: str | None, name: str, options: Any) -> dict[str, Any]:
        key = self._key(kind, ns, name)
        current = self.store[kind.gvr].get(key)
        if current is None:
            raise ApiError(404, "NotFound", f'{kind.plural}.{kind.group or "core"} "{name}" not found',
                           {"name": name, "kind": kind.plural})
        policy = (options or {}).get("propagationPolicy") if isinstance(options, dict) else None
        if current["metadata"].get("finalizers"):
            if not current["metadata"].get("deletionTimestamp"):
                new = copy.deepcopy(current)
                new["metadata"]["deletionTimestamp"] = _now()
                self._put(kind.gvr, key[0], new, "MODIFIED")
            return copy.deepcopy(self.store[kind.gvr][key])
        gone = copy.deepcopy(current)
        self._put(kind.gvr, key[0], gone, "DELETED")
        if policy != "Orphan":
            self._collect_garbage(gone)
        return gone

    def _collect_garbage(self, owner: dict[str, Any]) -> None:
        uid = owner["metadata"].get("uid")
        for gvr, objs in list(self.store.items()):
            kind = self.kinds.get(gvr)
            if kind is None:
                continue
            for (ns, name), obj in list(objs.items()):
                refs = obj.get("metadata", {}).get("ownerReferences") or []
                if any(r.get("uid") == uid for r in refs):
                    if (ns, name) in objs:
                        self.delete(kind, ns, name, None)

    # ---- watch -----------------------------------------------------------

    async def _watch(self, raw: aiohttp.web.BaseRequest, kind: Kind, route: Route,
                     query: dict[str, str]) -> aiohttp.web.StreamResponse:
        ns = route.namespace if kind.namespaced else None
        labels, fields = query.get("labelSelector"), query.get("fieldSelector")
        if route.name:
            fields = ",".join(f for f in (fields, f"metadata.name={route.name}") if f)
        timeout = float(query.get("timeoutSeconds") or 3600)
        since = query.get("resourceVersion")

        def matches(obj: dict[str, Any]) -> bool:
            meta = obj.get("metadata", {})
            if ns is not None and meta.get("namespace") != ns:
                return False
            return label_match(meta.get("labels") or {}, labels) and field_match(obj, fields)

        queue: asyncio.Queue = asyncio.Queue()
        self.watchers[kind.gvr].add(queue)
        response = aiohttp.web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        try:
            await response.prepare(raw)
            # Everything up to this revision is sent from the snapshot below;
            # the queue (registered first) carries everything after it.
            sent = self.rv
            if since in (None, "", "0"):
                snapshot = self._select(kind, ns, labels, fields)
                for obj in sorted(snapshot, key=lambda o: int(o["metadata"]["resourceVersion"])):
                    await response.write(json.dumps({"type": "ADDED", "object": obj}).encode() + b"\n")
            else:
                since_rv = int(since)
                history = self.history[kind.gvr]
                if history and history[0][0] > since_rv + 1 and len(history) == history.maxlen:
                    gone = ApiError(410, "Expired", f"too old resource version: {since_rv} ({history[0][0]})").body()
                    await response.write(json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n")
                    return response
                for rv, item in list(history):
                    if since_rv < rv <= sent and matches(item["object"]):
                        await response.write(self._encoded(rv, item))
            deadline = asyncio.get_running_loop().time() + timeout
            while True:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                try:
                    rv, item = await asyncio.wait_for(queue.get(), timeout=remaining)
                except asyncio.TimeoutError:
                    break
                if rv <= sent or not matches(item["object"]):
                    continue
                await response.write(self._encoded(rv, item))
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.watchers[kind.gvr].discard(queue)
        return response

    def _encoded(self, rv: int, item: dict[str, Any]) -> bytes:
        """One JSON encoding per event, shared by every watcher."""
        cached = self._encodings.get(rv)
        if cached is None:
            cached = json.dumps(item).encode() + b"\n"
            self._encodings[rv] = cached
            while len(self._encodings) > 4096:
                self._encodings.pop(next(iter(self._encodings)))
        return cached

    # ---- helpers for tests (call from the server's own thread) ------------

    def writes(self, user_agent: str | None = None) -> list[Audit]:
        return [a for a in self.audit if a.verb in WRITE_VERBS and a.status < 400
                and (user_agent is None or user_agent in a.user_agent)]


class ApiServerThread:
    """Runs a :class:`HoneApiServer` on loopback in a thread of its own.

    Tests and benchmarks talk to it over HTTP with the real Kubernetes client
    (through :attr:`kubeconfig`), exactly like they would to a cluster.
    """

    def __init__(self, crds: Iterable[Path] | None = None, host: str = "127.0.0.1", latency: float = 0.0):
        self._crds = list(crds) if crds is not None else None
        self._latency = latency
        self._host = host
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.server: HoneApiServer | None = None
        self.url = ""
        self._thread = threading.Thread(target=self._run, name="hone-apiserver", daemon=True)
        self._error: BaseException | None = None

    def __enter__(self) -> "ApiServerThread":
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("emulated API server did not start")
        if self._error:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self.loop and self._stop:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001 - surfaced in __enter__
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with HoneApiServer(latency=self._latency) as server, kmock.Server(server, host=self._host) as srv:
            if self._crds is None:
                server.install_crds()
            else:
                for path in self._crds:
                    server.install_crd(yaml.safe_load(Path(path).read_text()))
            self.server = server
            self.url = str(srv.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def call(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(server, *args)`` on the server's loop (thread-safe access to its state)."""
        async def _call() -> Any:
            return fn(self.server, *args)
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(_call(), self.loop).result(30)

    def write_kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "emulated", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {"token": "emulated"}}],
            "contexts": [{"name": "emulated", "context": {"cluster": "emulated", "user": "tester",
                                                           "namespace": namespace}}],
            "current-context": "emulated",
        }
        path.write_text(yaml.safe_dump(cfg))
        return path
