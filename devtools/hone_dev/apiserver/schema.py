"""CRD schemas as JSON Schema: validation messages that name the field, and pruning of unknown fields."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema


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


def _quoted(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


#: JSON Schema type -> the word kube-apiserver uses.
_TYPES = {"integer": "integer", "number": "number", "string": "string", "boolean": "boolean", "object": "object",
          "array": "array"}


def error_message(err: jsonschema.ValidationError) -> tuple[str, str]:
    """(reason, message) for one schema error, worded as kube-apiserver words a cause (the field is apart)."""
    field = error_field(err)
    value, schema = err.instance, err.schema
    if err.validator == "required":
        return "FieldValueRequired", "Required value"
    if err.validator == "type":
        want = schema.get("type")
        want = next((t for t in want if t != "null"), want) if isinstance(want, list) else want
        got = {bool: "boolean", int: "integer", float: "number", str: "string", dict: "object",
               list: "array"}.get(type(value), "null")
        return "FieldValueTypeInvalid", (f'Invalid value: "{got}": {field} in body must be of type '
                                         f'{_TYPES.get(want, want)}: "{got}"')
    if err.validator == "enum":
        allowed = ", ".join(_quoted(v) for v in schema["enum"] if v is not None)
        return "FieldValueNotSupported", f"Unsupported value: {_quoted(value)}: supported values: {allowed}"
    if err.validator in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        bound = schema[err.validator]
        word = {"minimum": "greater than or equal to", "maximum": "less than or equal to",
                "exclusiveMinimum": "greater than", "exclusiveMaximum": "less than"}[err.validator]
        return "FieldValueInvalid", f"Invalid value: {_quoted(value)}: {field} in body should be {word} {bound}"
    if err.validator in ("minLength", "maxLength", "minItems", "maxItems"):
        unit = "chars long" if "Length" in err.validator else "items"
        word = "at least" if err.validator.startswith("min") else "at most"
        return "FieldValueInvalid", (f"Invalid value: {_quoted(value)}: {field} in body should be {word} "
                                     f"{schema[err.validator]} {unit}")
    if err.validator == "pattern":
        return "FieldValueInvalid", (f"Invalid value: {_quoted(value)}: {field} in body should match "
                                     f"'{schema['pattern']}'")
    return "FieldValueInvalid", f"Invalid value: {_quoted(value)}: {err.message}"


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
