"""Reading a spec as a user wrote it: its first validation error, and references that leave its namespace.

Both kinds use these, so a FineTuneJob and a ModelServing word the same mistake the same way.
"""

from __future__ import annotations

from typing import Any, Iterator

from pydantic import BaseModel, ValidationError

from hone_operator.api.v1alpha1 import NamespacedRef


def _field_path(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
            continue
        s = str(item)
        # Union members and validator names are not fields.
        if "[" in s or s in ("int", "float", "str", "bool", "dict", "list", "none"):
            continue
        parts.append(("." if parts else "") + s)
    return "".join(parts)


def spec_error(exc: ValidationError) -> tuple[str, str]:
    """(param, message) for the first problem in a FineTuneJob body."""
    errors = exc.errors()
    first = errors[0]
    path = _field_path(tuple(first["loc"]))
    msg = first["msg"].removeprefix("Value error, ")
    # Unions report one error per member; say what is accepted instead.
    same = [e for e in errors if _field_path(tuple(e["loc"])) == path]
    if len(same) > 1 and all(e["type"] in ("literal_error", "greater_than_equal", "greater_than", "int_parsing",
                                              "float_parsing", "int_type", "float_type", "string_type")
                             for e in same):
        msg = "; or ".join(dict.fromkeys(e["msg"] for e in same))
    if first["type"] == "missing":
        msg = "is required"
    elif first["type"] == "extra_forbidden":
        msg = "is not a known field (check the spelling against `kubectl explain finetunejob.spec`)"
    return path or "spec", f"{path}: {msg}" if path else msg


def cross_namespace_refs(model: BaseModel, own: str, path: str = "spec") -> Iterator[tuple[str, str]]:
    """(field path, namespace) of every reference that points outside ``own``."""
    for name, value in model:
        alias = type(model).model_fields[name].alias or name
        sub = f"{path}.{alias}"
        if isinstance(value, NamespacedRef):
            if value.namespace not in (None, "", own):
                yield sub, value.namespace
        if isinstance(value, BaseModel):
            yield from cross_namespace_refs(value, own, sub)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, BaseModel):
                    yield from cross_namespace_refs(item, own, f"{sub}[{i}]")
