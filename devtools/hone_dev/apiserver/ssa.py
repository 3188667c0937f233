"""Server-side apply and ``managedFields``, as ``kubectl apply --server-side``, Argo CD, Flux and helm 4 use them.

Every write records who set which fields: an apply (``application/apply-patch+yaml``) makes its
field manager own exactly the fields of its configuration; any other write gives its manager
(``fieldManager``, or the client's name from its User-Agent) the fields it changed and takes them
from everyone else. An apply that would change a field another manager owns fails with 409 and a
message naming the fields and the manager, unless ``force=true`` moves the ownership; fields a
manager applied before and no longer applies are removed, unless someone else also owns them.

Field paths are those of ``fieldsV1``: ``f:<field>`` for object fields, ``k:{...}`` for the
elements of lists of type ``map`` (merged by their keys), ``v:<value>`` for lists of type ``set``;
any other list is atomic, owned and replaced whole. List types come from the official
definitions for built-in kinds and from ``x-kubernetes-list-type`` in CRD schemas.
"""

from __future__ import annotations

import copy
import json
from typing import Any, Iterator

from hone_dev.apiserver import openapi
from hone_dev.apiserver.kinds import ApiError, Kind, now

Path = tuple[str, ...]
APPLY = "application/apply-patch+yaml"
#: The manager of writes the emulator makes for a test, not for a client.
EMULATOR = "hone-dev-emulator"
#: Never owned: identity and server-set metadata (kube-apiserver leaves them out too).
IGNORED_META = ("name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp",
                "deletionTimestamp", "managedFields", "selfLink", "generateName", "deletionGracePeriodSeconds")


class Schema:
    """Walks a kind's schema for the list types field paths depend on."""

    def __init__(self, kind: Kind):
        self.definitions = openapi.builtin_definitions()
        self.root = kind.schema if kind.schema is not None else self.definitions.get(openapi.schema_name(kind), {})

    def resolve(self, node: dict[str, Any] | None) -> dict[str, Any]:
        for _ in range(50):
            if not node:
                return {}
            ref = node.get("$ref") or next((a.get("$ref") for a in node.get("allOf") or [] if "$ref" in a), None)
            if not isinstance(ref, str):
                return node
            node = {**self.definitions.get(ref.rsplit("/", 1)[-1], {}),
                    **{k: v for k, v in node.items() if k.startswith("x-kubernetes-list")}}
        return node or {}

    def child(self, node: dict[str, Any], key: str) -> dict[str, Any]:
        if key == "metadata" and node is self.root:
            return self.resolve({"$ref": openapi.REF + openapi.OBJECT_META})
        props = node.get("properties") or {}
        if key in props:
            return self.resolve(props[key])
        addl = node.get("additionalProperties")
        return self.resolve(addl) if isinstance(addl, dict) else {}

    @staticmethod
    def list_type(node: dict[str, Any]) -> tuple[str, list[str]]:
        kind = node.get("x-kubernetes-list-type")
        keys = node.get("x-kubernetes-list-map-keys") or []
        merge_key = node.get("x-kubernetes-patch-merge-key")
        if kind == "map" and keys:
            return "map", list(keys)
        if kind == "set":
            return "set", []
        if kind is None and merge_key and "merge" in str(node.get("x-kubernetes-patch-strategy", "")):
            return "map", [merge_key]
        if kind is None and "merge" in str(node.get("x-kubernetes-patch-strategy", "")):
            return "set", []
        return "atomic", []


def _element_key(item: Any, keys: list[str]) -> str:
    return "k:" + json.dumps({k: item.get(k) for k in keys if isinstance(item, dict) and k in item},
                             separators=(",", ":"), sort_keys=True)


def _value_key(value: Any) -> str:
    return "v:" + json.dumps(value, separators=(",", ":"), sort_keys=True)


def leaves(obj: dict[str, Any], schema: Schema, subresource: str | None = None) -> dict[Path, Any]:
    """Every owned path of an object (leaves and list elements) with its value."""
    out: dict[Path, Any] = {}
    for key, value in obj.items():
        if key in ("apiVersion", "kind") or (key == "status") != (subresource == "status"):
            continue
        if key == "metadata" and isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in IGNORED_META}
            if not value:
                continue
        _walk(value, schema.child(schema.root, key), schema, (f"f:{key}",), out)
    return out


def _walk(value: Any, node: dict[str, Any], schema: Schema, path: Path, out: dict[Path, Any]) -> None:
    if isinstance(value, dict) and value and node.get("type", "object") == "object" and not node.get(
            "x-kubernetes-map-type") == "atomic":
        for key, child in value.items():
            _walk(child, schema.child(node, key), schema, path + (f"f:{key}",), out)
    elif isinstance(value, list) and value:
        kind, keys = schema.list_type(node)
        items = schema.resolve(node.get("items"))
        if kind == "map":
            for item in value:
                element = path + (_element_key(item, keys),)
                out[element + (".",)] = None
                for key, child in (item.items() if isinstance(item, dict) else ()):
                    _walk(child, schema.child(items, key), schema, element + (f"f:{key}",), out)
        elif kind == "set":
            for item in value:
                out[path + (_value_key(item),)] = item
        else:
            out[path] = value
    else:
        out[path] = value


def to_fields_v1(paths: Iterator[Path] | set[Path]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path in sorted(paths):
        node = tree
        for part in path:
            node = node.setdefault(part, {})
    return tree


def from_fields_v1(tree: dict[str, Any], prefix: Path = ()) -> set[Path]:
    out: set[Path] = set()
    for key, child in tree.items():
        path = prefix + (key,)
        if child:
            out |= from_fields_v1(child, path)
        else:
            out.add(path)
    return out


def _managed(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return list((obj.get("metadata") or {}).get("managedFields") or [])


def _pretty(path: Path) -> str:
    out = ""
    for part in path:
        if part == ".":
            continue
        if part.startswith("f:"):
            out += "." + part[2:]
        elif part.startswith("k:"):
            out += "[" + ",".join(f"{k}={json.dumps(v)}" for k, v in json.loads(part[2:]).items()) + "]"
        else:
            out += "[" + part[2:] + "]"
    return out


def _get(obj: Any, path: Path) -> Any:
    cur = obj
    for part in path:
        if part == ".":
            return cur
        if part.startswith("f:"):
            if not isinstance(cur, dict) or part[2:] not in cur:
                return _MISSING
            cur = cur[part[2:]]
        elif part.startswith("k:"):
            want = json.loads(part[2:])
            cur = next((e for e in cur or [] if isinstance(e, dict) and all(e.get(k) == v for k, v in want.items())),
                       _MISSING) if isinstance(cur, list) else _MISSING
        else:
            value = json.loads(part[2:])
            cur = value if isinstance(cur, list) and value in cur else _MISSING
        if cur is _MISSING:
            return _MISSING
    return cur


_MISSING = object()


def _remove(obj: dict[str, Any], path: Path) -> None:
    """Remove one owned path (a leaf, a set value or a list element) from obj, in place."""
    parent: Any = obj
    for part in path[:-1]:
        if part == ".":
            break
        nxt = _get(parent, (part,))
        if nxt is _MISSING:
            return
        parent = nxt
    last = path[-1]
    if last == ".":
        container_path, element = path[:-2], path[-2]
        container = _get(obj, container_path)
        if isinstance(container, list):
            want = json.loads(element[2:])
            container[:] = [e for e in container if not (isinstance(e, dict) and all(e.get(k) == v
                                                                                         for k, v in want.items()))]
        return
    if last.startswith("f:") and isinstance(parent, dict):
        parent.pop(last[2:], None)
    elif last.startswith("v:") and isinstance(parent, list):
        value = json.loads(last[2:])
        parent[:] = [v for v in parent if v != value]


def _merge(live: Any, applied: Any, node: dict[str, Any], schema: Schema) -> Any:
    if isinstance(applied, dict) and isinstance(live, dict) and node.get("x-kubernetes-map-type") != "atomic":
        out = dict(live)
        for key, value in applied.items():
            out[key] = _merge(live.get(key), value, schema.child(node, key), schema) if key in live else value
        return out
    if isinstance(applied, list) and isinstance(live, list):
        kind, keys = schema.list_type(node)
        items = schema.resolve(node.get("items"))
        if kind == "map":
            out = list(live)
            for item in applied:
                ident = _element_key(item, keys)
                index = next((i for i, e in enumerate(out) if _element_key(e, keys) == ident), None)
                if index is None:
                    out.append(item)
                else:
                    out[index] = _merge(out[index], item, items, schema)
            return out
        if kind == "set":
            return list(live) + [v for v in applied if v not in live]
    return copy.deepcopy(applied)


def _prune_empty(obj: Any, applied_paths: set[Path], path: Path = ()) -> Any:
    """Drop objects left empty by removals (kube-apiserver does not keep an emptied parent)."""
    if isinstance(obj, dict):
        for key in list(obj):
            child = obj[key]
            if isinstance(child, (dict, list)):
                _prune_empty(child, applied_paths, path + (f"f:{key}",))
                if child == {} and path + (f"f:{key}",) not in applied_paths:
                    del obj[key]
    return obj


def manager_of(query: dict[str, str], user_agent: str) -> str:
    """The field manager a write names, or the client's name from its User-Agent (as kube-apiserver derives it)."""
    return query.get("fieldManager") or user_agent.split("/")[0] or "unknown"


def apply(kind: Kind, live: dict[str, Any] | None, applied: Any, manager: str, force: bool,
          subresource: str | None) -> dict[str, Any]:
    """The object after a server-side apply by ``manager`` (managedFields included)."""
    if not isinstance(applied, dict):
        raise ApiError(400, "BadRequest", "the apply configuration must be an object")
    if applied.get("apiVersion") != kind.api_version or applied.get("kind") != kind.kind:
        raise ApiError(400, "BadRequest", f"apply configuration for {kind.api_version}, Kind={kind.kind} has "
                       f"apiVersion {applied.get('apiVersion')!r} and kind {applied.get('kind')!r}")
    if (applied.get("metadata") or {}).get("managedFields"):
        raise ApiError(400, "BadRequest", "metadata.managedFields must be nil in an apply configuration")
    schema = Schema(kind)
    live = copy.deepcopy(live) if live is not None else {"apiVersion": kind.api_version, "kind": kind.kind,
                                                         "metadata": {}}
    entries = _managed(live)
    new_paths = leaves(applied, schema, subresource)
    sub = subresource or ""
    mine = next((e for e in entries if e.get("manager") == manager and e.get("operation") == "Apply"
                 and (e.get("subresource") or "") == sub), None)
    old_paths = from_fields_v1(mine.get("fieldsV1") or {}) if mine else set()
    others = [(e, from_fields_v1(e.get("fieldsV1") or {})) for e in entries if e is not mine
              and (e.get("subresource") or "") == sub]

    conflicts: dict[tuple[str, str], list[Path]] = {}
    for path, value in new_paths.items():
        if path[-1] == ".":
            continue
        current = _get(live, path)
        if current is _MISSING or current == value:
            continue
        for entry, owned in others:
            if path in owned:
                conflicts.setdefault((entry["manager"], entry.get("apiVersion", kind.api_version)), []).append(path)
    if conflicts and not force:
        raise ApiError(409, "Conflict", _conflict_message(conflicts), {"causes": [
            {"reason": "FieldManagerConflict", "message": f'conflict with "{m}"', "field": _pretty(p)}
            for (m, _), paths in conflicts.items() for p in paths]})

    body = {k: v for k, v in applied.items() if k not in ("apiVersion", "kind", "metadata")
            and (k == "status") == (subresource == "status")}
    body["metadata"] = {k: v for k, v in (applied.get("metadata") or {}).items() if k not in IGNORED_META}
    merged = _merge(live, body, schema.root, schema)
    still_owned = set().union(*(owned for _, owned in others)) if others else set()
    for path in sorted(old_paths - set(new_paths) - still_owned, key=len, reverse=True):
        _remove(merged, path)
    _prune_empty(merged, set(new_paths))
    merged.setdefault("metadata", {})

    taken = {p for paths in conflicts.values() for p in paths}
    kept = []
    for entry, owned in others:
        if force and owned & taken:
            owned = owned - taken
            if not owned:
                continue
            entry = {**entry, "fieldsV1": to_fields_v1(owned)}
        kept.append(entry)
    fields = to_fields_v1(set(new_paths))
    same = mine is not None and mine.get("fieldsV1") == fields  # a no-op apply keeps its time (and no write)
    mine = {"manager": manager, "operation": "Apply", "apiVersion": kind.api_version,
            "time": mine["time"] if same and mine else now(), "fieldsType": "FieldsV1", "fieldsV1": fields}
    if subresource:
        mine["subresource"] = subresource
    merged["metadata"]["managedFields"] = _order(kept + [mine], entries)
    return merged


def record_update(kind: Kind, old: dict[str, Any] | None, new: dict[str, Any], manager: str,
                  subresource: str | None) -> None:
    """Give ``manager`` the fields a non-apply write changed, taking them from other managers (in place)."""
    schema = Schema(kind)
    before = leaves(old, schema, subresource) if old else {}
    after = leaves(new, schema, subresource)
    changed = {p for p, v in after.items() if before.get(p, _MISSING) != v or p not in before}
    removed = set(before) - set(after)
    entries = _managed(old) if old else []
    sub = subresource or ""
    if not changed and not removed:
        new.setdefault("metadata", {})["managedFields"] = entries
        return
    out = []
    mine_paths: set[Path] = set()
    for entry in entries:
        owned = from_fields_v1(entry.get("fieldsV1") or {})
        if (entry.get("subresource") or "") == sub:
            if entry.get("manager") == manager and entry.get("operation") == "Update":
                mine_paths = owned - removed
                continue
            owned = owned - changed - removed
            if not owned:
                continue
            entry = {**entry, "fieldsV1": to_fields_v1(owned)}
        out.append(entry)
    mine_paths |= changed
    if mine_paths:
        mine = {"manager": manager, "operation": "Update", "apiVersion": kind.api_version, "time": now(),
                "fieldsType": "FieldsV1", "fieldsV1": to_fields_v1(mine_paths)}
        if subresource:
            mine["subresource"] = subresource
        out.append(mine)
    new.setdefault("metadata", {})["managedFields"] = _order(out, entries)


def _order(entries: list[dict[str, Any]], previous: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep the existing entries' order; new managers go last (as kube-apiserver lists them)."""
    rank = {(e.get("manager"), e.get("operation"), e.get("subresource")): i for i, e in enumerate(previous)}
    return sorted(entries, key=lambda e: rank.get((e.get("manager"), e.get("operation"), e.get("subresource")),
                                                  len(rank)))


def _conflict_message(conflicts: dict[tuple[str, str], list[Path]]) -> str:
    total = sum(len(p) for p in conflicts.values())
    head = f"Apply failed with {total} conflict{'s' if total > 1 else ''}: "
    parts = []
    for (manager, api_version), paths in conflicts.items():
        if len(paths) == 1 and len(conflicts) == 1:
            return head + f'conflict with "{manager}" using {api_version}: {_pretty(paths[0])}'
        parts.append(f'conflicts with "{manager}" using {api_version}:\n'
                     + "\n".join(f"- {_pretty(p)}" for p in sorted(paths)))
    return head + "\n".join(parts)
