"""Reading a spec as a user wrote it: its first validation error, and references that leave its namespace.

Both kinds use these, so a FineTuneJob and a ModelServing word the same mistake the same way.
"""

from __future__ import annotations

import difflib
import typing
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
        # Union members ("literal['auto']", "constrained-float") and validator names are not fields.
        if "[" in s or "-" in s or s in ("int", "float", "str", "bool", "dict", "list", "none"):
            continue
        parts.append(("." if parts else "") + s)
    return "".join(parts)


#: What a union member's error says is accepted, for "should be X or Y".
_ACCEPTS = {"int_parsing": "a whole number", "int_type": "a whole number", "int_from_float": "a whole number",
            "float_parsing": "a number", "float_type": "a number", "string_type": "a string",
            "bool_parsing": "true or false", "bool_type": "true or false"}
_UNION_MEMBER_ERRORS = {"literal_error", "greater_than_equal", "greater_than", *_ACCEPTS}


def _accepted(error: dict[str, Any]) -> str:
    if error["type"] in _ACCEPTS:
        return _ACCEPTS[error["type"]]
    return error["msg"].removeprefix("Input should be ")


def _known_fields(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> list[str]:
    """The field names (as written in YAML) of the object at ``loc`` inside ``model``."""
    for item in loc:
        if model is None:
            return []
        if isinstance(item, int):
            continue
        field = next((f for name, f in model.model_fields.items() if (f.alias or name) == item), None)
        if field is None:
            return []
        model = _model_of(field.annotation)
    return [f.alias or name for name, f in model.model_fields.items()] if model is not None else []


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation (``X | None``, ``list[X]``), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def spec_error(exc: ValidationError, model: type[BaseModel] | None = None) -> tuple[str, str]:
    """(param, message) for the first problem in a FineTuneJob or ModelServing body.

    An unknown field is reported first (a misspelt field also makes the real one look
    missing), with the known name it most resembles when ``model`` (the kind's type) is given.
    """
    errors = exc.errors()
    unknown = [e for e in errors if e["type"] == "extra_forbidden"]
    first = unknown[0] if unknown else errors[0]
    path = _field_path(tuple(first["loc"]))
    msg = first["msg"].removeprefix("Value error, ")
    # Unions report one error per member; say what is accepted instead.
    same = [e for e in errors if _field_path(tuple(e["loc"])) == path]
    if len(same) > 1 and all(e["type"] in _UNION_MEMBER_ERRORS for e in same):
        accepted = list(dict.fromkeys(_accepted(e) for e in same))
        msg = f"should be {' or '.join(accepted)}, not {first.get('input')!r}"
    if first["type"] == "missing":
        msg = "is required"
    elif first["type"] == "extra_forbidden":
        name = str(first["loc"][-1])
        near = difflib.get_close_matches(name, _known_fields(model, tuple(first["loc"][:-1])), n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        kind = (model.__name__.lower() if model is not None else "finetunejob")
        parent = ".".join(str(p) for p in first["loc"][:-1] if not isinstance(p, int)) or "spec"
        msg = f"is not a known field; {hint}check the spelling against `kubectl explain {kind}.{parent}`"
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
