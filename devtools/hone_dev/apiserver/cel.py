"""CRD validation rules (``x-kubernetes-validations``), evaluated as kube-apiserver evaluates them.

Each rule runs with ``self`` bound to the value at its schema node (only where the object has
one); a rule that mentions ``oldSelf`` is a transition rule and runs only on updates, with
``oldSelf`` the old object's value at the same place. A rule that is false (or fails to
evaluate) refuses the write with a cause at the node's field path (plus the rule's
``fieldPath``), its ``message`` or ``messageExpression``, and its ``reason``. The expressions run
on the ``common-expression-language`` package (a CEL implementation in Rust).
"""

from __future__ import annotations

import functools
from typing import Any, Iterator

import cel

_MISSING = object()


@functools.cache
def _program(expression: str) -> Any:
    return cel.compile(expression)


def _type_name(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer",
            float: "number"}.get(type(value), "null")


def _nodes(schema: dict[str, Any], value: Any, old: Any, path: str) -> Iterator[tuple[dict[str, Any], Any, Any, str]]:
    """(schema node, value, old value or _MISSING, field path) wherever the object has a value."""
    if value is None:
        return
    yield schema, value, old, path
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        addl = schema.get("additionalProperties") if isinstance(schema.get("additionalProperties"), dict) else None
        for key, child in value.items():
            sub = props.get(key) or addl
            if sub is None:
                continue
            old_child = old.get(key, _MISSING) if isinstance(old, dict) else _MISSING
            yield from _nodes(sub, child, old_child, f"{path}.{key}" if path else key)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            # Items of atomic lists have no old counterpart (kube-apiserver correlates only
            # list-map items by key and leaves the others without oldSelf).
            yield from _nodes(schema["items"], item, _MISSING, f"{path}[{i}]")


def validate(schema: dict[str, Any], obj: dict[str, Any], old: dict[str, Any] | None) -> list[dict[str, str]]:
    """The causes (field, message, reason) of every rule the object breaks; empty if none."""
    causes = []
    for node, value, old_value, path in _nodes(schema, obj, old if old is not None else _MISSING, ""):
        for rule in node.get("x-kubernetes-validations") or []:
            transition = "oldSelf" in rule["rule"]
            if transition and old_value is _MISSING:
                continue
            context = {"self": value, **({"oldSelf": old_value} if transition else {})}
            field = path + rule.get("fieldPath", "")
            try:
                ok = _program(rule["rule"]).execute(context)
            except Exception as exc:  # noqa: BLE001 - an evaluation error refuses the write, as on a real server
                causes.append({"field": field, "reason": "FieldValueInvalid",
                               "message": f'Invalid value: "{_type_name(value)}": {rule["rule"]}: evaluation error: '
                                          f"{exc}"})
                continue
            if ok is True:
                continue
            message = rule.get("message")
            if rule.get("messageExpression"):
                try:
                    message = str(_program(rule["messageExpression"]).execute(context))
                except Exception:  # noqa: BLE001 - kube-apiserver falls back to the message (or the rule)
                    pass
            message = message or f"failed rule: {rule['rule']}"
            reason = rule.get("reason", "FieldValueInvalid")
            word = {"FieldValueForbidden": "Forbidden", "FieldValueRequired": "Required value",
                    "FieldValueDuplicate": "Duplicate value"}.get(reason)
            text = f"{word}: {message}" if word else f'Invalid value: "{_type_name(value)}": {message}'
            causes.append({"field": field, "reason": reason, "message": text})
    return causes
