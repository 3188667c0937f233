"""The write path: create, update, patch (JSON, merge, strategic merge), scale, delete and garbage
collection, with the CRD schema applied and resourceVersion preconditions checked."""

from __future__ import annotations

import copy
import re
import secrets
import uuid
from typing import Any

import jsonpatch

from hone_dev.apiserver import admission, cel, openapi, ssa, strategic
from hone_dev.apiserver.kinds import ApiError, Kind, now
from hone_dev.apiserver.routes import without, merge_patch
from hone_dev.apiserver.schema import error_field, error_message, prune


class WritePath:
    """Mixed into :class:`~hone_dev.apiserver.server.HoneApiServer`; uses its store, kinds and events."""

    def _check_schema(self, kind: Kind, obj: dict[str, Any], strict: bool,
                      old: dict[str, Any] | None = None) -> None:
        if kind.schema is None:
            return
        removed: list[str] = []
        prune(obj, kind.schema, "", removed)
        removed = [r for r in removed if not r.startswith(("apiVersion", "kind", "metadata"))]
        if strict and removed:
            # kube-apiserver refuses unknown fields while decoding the request, before any validation.
            raise ApiError(400, "BadRequest", f'{kind.kind} in version "{kind.version}" cannot be handled as a '
                           f"{kind.kind}: strict decoding error: "
                           + ", ".join(f'unknown field "{r}"' for r in removed))
        errors = sorted(kind.validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
        causes = []
        for err in errors[:10]:
            reason, message = error_message(err)
            causes.append({"field": error_field(err), "message": message, "reason": reason})
        if not causes:  # validation rules run on objects that have the schema's shape
            causes = cel.validate(kind.schema, obj, old)
        if causes:
            name = obj["metadata"].get("name")
            message = ", ".join(f"{c['field']}: {c['message']}" for c in causes)
            raise ApiError(422, "Invalid", f'{kind.kind}.{kind.group} "{name}" is invalid: '
                           + (f"[{message}]" if len(causes) > 1 else message),
                           {"name": name, "group": kind.group, "kind": kind.kind, "causes": causes})

    def create(self, kind: Kind, ns: str | None, body: Any, strict: bool = False,
               manager: str = ssa.EMULATOR) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body must be an object")
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name"):
            if meta.get("generateName"):
                meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
            else:
                raise ApiError(422, "Invalid", f"{kind.kind}: metadata.name: Required value: name or generateName is required")
        if kind.group == "rbac.authorization.k8s.io":  # RBAC names are path segments (system:discovery)
            bad_name = meta["name"] in (".", "..") or any(c in meta["name"] for c in "/%")
        else:
            bad_name = not re.match(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", meta["name"]) or len(meta["name"]) > 253
        if bad_name:
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
            raise ApiError(409, "AlreadyExists", f'{kind.qualified} "{meta["name"]}" already exists',
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
        meta.update(uid=str(uuid.uuid4()), generation=1, creationTimestamp=now())
        admission.admit(self, kind.gvr, obj)
        meta.pop("resourceVersion", None)
        if not any(e.get("operation") == "Apply" for e in meta.get("managedFields") or []):
            meta.pop("managedFields", None)
            ssa.record_update(kind, None, obj, manager, None)
        self._check_grant(kind, obj)
        return self._put(kind.gvr, key[0], obj, "ADDED")

    def write(self, kind: Kind, ns: str | None, name: str, sub: str | None, body: Any, ctype: str,
              replace: bool = False, strict: bool = False, manager: str = ssa.EMULATOR,
              force: bool = False) -> dict[str, Any]:
        key = self._key(kind, ns, name)
        current = self.store[kind.gvr].get(key)
        if current is None and ctype == ssa.APPLY and sub is None:
            # Server-side apply creates what does not exist yet.
            applied = ssa.apply(kind, None, body, manager, force, None)
            applied["metadata"].update(name=name, **({"namespace": ns} if kind.namespaced else {}))
            return self.create(kind, ns, applied, strict=strict, manager=manager)
        if current is None:
            raise ApiError(404, "NotFound", f'{kind.qualified} "{name}" not found',
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
        if ctype == ssa.APPLY:
            new = ssa.apply(kind, current, body, manager, force, sub)
        else:
            new = copy.deepcopy(self._patched(kind, current, body, ctype, replace))
        if sub == "status":
            # Only status changes through /status. A copy: the stored object (and the events that
            # carry it) must never change once stored, and metadata is written below.
            new = {**copy.deepcopy(without(current, "status")), **({"status": new["status"]} if "status" in new else {})}
        else:
            if kind.status:
                new = {**without(new, "status"), **({"status": current["status"]} if "status" in current else {})}
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
        self._check_schema(kind, new, strict, old=current)
        if ctype != ssa.APPLY:
            ssa.record_update(kind, current, new, manager, sub)

        if new == current:
            return current  # a no-op write changes nothing, not even resourceVersion
        self._check_grant(kind, new)
        if without(new, "metadata", "status") != without(current, "metadata", "status"):
            new["metadata"]["generation"] = int(current["metadata"].get("generation", 1)) + 1
        meta = new["metadata"]
        if meta.get("deletionTimestamp") and not meta.get("finalizers") and not (
                kind.gvr == admission.PODS and meta.get("deletionGracePeriodSeconds")):
            # The last finalizer is gone (a pod also needs its kubelet's final delete, grace period 0).
            self._put(kind.gvr, key[0], new, "DELETED")
            self._collect_garbage(new)
            return copy.deepcopy(new)
        return self._put(kind.gvr, key[0], new, "MODIFIED")

    @staticmethod
    def _patched(kind: Kind, current: dict[str, Any], body: Any, ctype: str, replace: bool) -> dict[str, Any]:
        """The object after a PUT (``replace``) or a PATCH of the given content type."""
        try:
            if replace:
                if not isinstance(body, dict):
                    raise ApiError(400, "BadRequest", "PUT needs an object")
                return copy.deepcopy(body)
            if ctype == "application/json-patch+json":
                return jsonpatch.apply_patch(current, body)
            if ctype == "application/strategic-merge-patch+json":
                if kind.schema is not None:
                    raise ApiError(415, "UnsupportedMediaType", "the body of the request was in an unknown format - "
                                   "accepted media types include: application/json-patch+json, "
                                   "application/merge-patch+json, application/apply-patch+yaml")
                definitions = openapi.builtin_definitions()
                return strategic.apply(current, body, definitions.get(openapi.schema_name(kind), {}), definitions)
            if ctype in ("application/merge-patch+json", "application/json"):
                return merge_patch(current, body)
            raise ApiError(415, "UnsupportedMediaType", f"{ctype} is not supported")
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
            raise ApiError(422, "Invalid", f"the JSON patch could not be applied: {exc}") from exc

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
            self._check_schema(kind, new, strict=False, old=current)
            self._put(kind.gvr, key[0], new, "MODIFIED")
        return self._scale_of(kind, self.store[kind.gvr][key])

    def delete(self, kind: Kind, ns: str | None, name: str, options: Any) -> dict[str, Any]:
        key = self._key(kind, ns, name)
        current = self.store[kind.gvr].get(key)
        if current is None:
            raise ApiError(404, "NotFound", f'{kind.qualified} "{name}" not found',
                           {"name": name, "kind": kind.plural})
        policy = (options or {}).get("propagationPolicy") if isinstance(options, dict) else None
        if kind.gvr == admission.PODS:
            if self._graceful(kind, key, current, options):
                return copy.deepcopy(self.store[kind.gvr][key])
            current = self.store[kind.gvr][key]
        if current["metadata"].get("finalizers"):
            if not current["metadata"].get("deletionTimestamp"):
                new = copy.deepcopy(current)
                new["metadata"]["deletionTimestamp"] = now()
                self._put(kind.gvr, key[0], new, "MODIFIED")
            return copy.deepcopy(self.store[kind.gvr][key])
        gone = copy.deepcopy(current)
        self._put(kind.gvr, key[0], gone, "DELETED")
        if policy != "Orphan":
            self._collect_garbage(gone)
        return gone

    def _graceful(self, kind: Kind, key: tuple[str | None, str], pod: dict[str, Any], options: Any) -> bool:
        """Graceful pod deletion: a pod running on a node is marked (deletionTimestamp, and
        deletionGracePeriodSeconds from the options or the pod's terminationGracePeriodSeconds) for its
        kubelet to stop; the kubelet then deletes it with a grace period of 0, which (once no finalizer
        is left) removes it. True when the pod stays, marked."""
        grace = (options or {}).get("gracePeriodSeconds") if isinstance(options, dict) else None
        if grace is None or int(grace) < 0:  # kubectl's --grace-period=-1: the pod's own
            grace = (pod.get("spec") or {}).get("terminationGracePeriodSeconds", 30)
        grace = int(grace)
        meta = pod["metadata"]
        running = (pod.get("spec") or {}).get("nodeName") and (pod.get("status") or {}).get("phase") not in (
            "Succeeded", "Failed")
        if not meta.get("deletionTimestamp") and not running:
            return False
        if grace > 0:
            if not running:
                grace = 0
            else:
                current = meta.get("deletionGracePeriodSeconds")
                if meta.get("deletionTimestamp") and current is not None and current <= grace:
                    return True  # already being deleted, with no longer a grace period than asked
                new = copy.deepcopy(pod)
                new["metadata"].update(deletionTimestamp=meta.get("deletionTimestamp") or now(),
                                       deletionGracePeriodSeconds=grace)
                self._put(kind.gvr, key[0], new, "MODIFIED")
                return True
        if meta.get("deletionTimestamp") and meta.get("deletionGracePeriodSeconds") != 0:
            new = copy.deepcopy(pod)
            new["metadata"]["deletionGracePeriodSeconds"] = 0
            self._put(kind.gvr, key[0], new, "MODIFIED")
        return False

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
