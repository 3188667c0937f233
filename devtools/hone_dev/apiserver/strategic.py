"""Strategic merge patch for built-in kinds, as ``kubectl apply``, ``label`` and ``edit`` send it.

Lists are merged by the ``x-kubernetes-patch-merge-key`` the official OpenAPI definitions give
(containers by ``name``, ports by ``containerPort``, ...), or replaced where the field has no
merge strategy. The directives apimachinery's ``strategicpatch`` writes are honoured:
``$patch: replace|delete|merge``, ``$retainKeys``, ``$setElementOrder/<field>`` and
``$deleteFromPrimitiveList/<field>``. Custom resources have no strategy: they take JSON merge
patch, and a strategic one is refused with 415 as kube-apiserver refuses it.
"""

from __future__ import annotations

import copy
from typing import Any

from hone_dev.apiserver.kinds import ApiError

ORDER = "$setElementOrder/"
DELETE_FROM = "$deleteFromPrimitiveList/"


def _resolve(schema: dict[str, Any] | None, definitions: dict[str, Any]) -> dict[str, Any]:
    while schema:
        ref = schema.get("$ref") or next((a.get("$ref") for a in schema.get("allOf") or [] if "$ref" in a), None)
        if not isinstance(ref, str):
            return schema
        target = definitions.get(ref.rsplit("/", 1)[-1])
        if target is None:
            return {}
        schema = target
    return schema or {}


def _property(schema: dict[str, Any], key: str) -> dict[str, Any]:
    return (schema.get("properties") or {}).get(key) or (
        schema.get("additionalProperties") if isinstance(schema.get("additionalProperties"), dict) else {}) or {}


def _strip(value: Any) -> Any:
    """A patch value with its directives removed (what a new element becomes)."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if not k.startswith("$")}
    if isinstance(value, list):
        return [_strip(v) for v in value if not (isinstance(v, dict) and set(v) == {"$patch"})]
    return value


def apply(original: dict[str, Any], patch: Any, schema: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(patch, dict):
        raise ApiError(422, "Invalid", "a strategic merge patch must be a JSON object")
    merged = _merge_map(copy.deepcopy(original), patch, _resolve(schema, definitions), definitions)
    return merged if merged is not None else {}


def _merge_map(original: dict[str, Any], patch: dict[str, Any], schema: dict[str, Any],
               definitions: dict[str, Any]) -> dict[str, Any] | None:
    patch = dict(patch)
    directive = patch.pop("$patch", None)
    if directive == "delete":
        return None
    if directive == "replace":
        return _strip(patch)
    if directive not in (None, "merge"):
        raise ApiError(422, "Invalid", f"unknown patch directive $patch: {directive}")
    retain = patch.pop("$retainKeys", None)
    orders = {k[len(ORDER):]: patch.pop(k) for k in list(patch) if k.startswith(ORDER)}
    deletes = {k[len(DELETE_FROM):]: patch.pop(k) for k in list(patch) if k.startswith(DELETE_FROM)}
    out = dict(original)
    if retain is not None:
        out = {k: v for k, v in out.items() if k in retain}
    for key, value in patch.items():
        prop = _property(schema, key)
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict):
            base = out.get(key) if isinstance(out.get(key), dict) else {}
            merged = _merge_map(base, value, _resolve(prop, definitions), definitions)
            if merged is None:
                out.pop(key, None)
            else:
                out[key] = merged
        elif isinstance(value, list):
            strategy = str(prop.get("x-kubernetes-patch-strategy", ""))
            if "merge" in strategy.split(","):
                items = _resolve(prop.get("items"), definitions)
                out[key] = _merge_list(out.get(key) if isinstance(out.get(key), list) else [], value, items,
                                       prop.get("x-kubernetes-patch-merge-key"), definitions)
            else:
                out[key] = _strip(value)
        else:
            out[key] = value
    for key, remove in deletes.items():
        if isinstance(out.get(key), list):
            out[key] = [v for v in out[key] if v not in remove]
    for key, order in orders.items():
        if isinstance(out.get(key), list):
            out[key] = _ordered(out[key], order, _property(schema, key).get("x-kubernetes-patch-merge-key"))
    return out


def _merge_list(original: list[Any], patch: list[Any], items: dict[str, Any], merge_key: str | None,
                definitions: dict[str, Any]) -> list[Any]:
    if any(isinstance(p, dict) and p.get("$patch") == "replace" and len(p) == 1 for p in patch):
        return _strip(patch)
    if merge_key is None:  # a list of primitives with the merge strategy: a union in order
        return original + [p for p in patch if p not in original]
    result = list(original)
    for element in patch:
        if not isinstance(element, dict):
            raise ApiError(422, "Invalid", f"list elements merged by {merge_key!r} must be objects")
        key = element.get(merge_key)
        index = next((i for i, e in enumerate(result) if isinstance(e, dict) and e.get(merge_key) == key), None)
        if element.get("$patch") == "delete":
            result = [e for e in result if not (isinstance(e, dict) and e.get(merge_key) == key)]
        elif index is None:
            result.append(_strip(element))
        else:
            merged = _merge_map(result[index], element, items, definitions)
            if merged is None:
                result.pop(index)
            else:
                result[index] = merged
    return result


def _ordered(values: list[Any], order: list[Any], merge_key: str | None) -> list[Any]:
    def key(value: Any) -> Any:
        return value.get(merge_key) if merge_key and isinstance(value, dict) else value
    wanted = [key(o) if isinstance(o, dict) else o for o in order]
    ranked = {k: i for i, k in enumerate(wanted) if isinstance(k, (str, int, float, bool))}
    return sorted(values, key=lambda v: ranked.get(key(v), len(ranked)))
