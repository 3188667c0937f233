"""``/openapi/v2``: the Swagger 2.0 document, as client-go asks for it: gnostic protobuf only.

client-go's ``OpenAPISchema()`` requests ``application/com.github.proto-openapi.spec.v2@v1.0+protobuf``
and unmarshals a gnostic ``openapi_v2.Document`` (google/gnostic-models ``OpenAPIv2.proto``);
kubectl and helm fall back to it where OpenAPI v3 is not served, and ``kubectl explain
--output=plaintext-openapiv2`` reads it. This writes the definitions (built-in kinds and the
installed CRDs, with their ``x-kubernetes-*`` extensions) and no paths; the field numbers below
are those of ``OpenAPIv2.proto``.
"""

from __future__ import annotations

import struct
from typing import Any, Iterable

import yaml

from hone_dev.apiserver import openapi
from hone_dev.apiserver.kinds import Kind

#: What kube-openapi answers with (clients ask for ``...spec.v2@v1.0+protobuf``; Go's mime parser refuses the ``@``).
CONTENT_TYPE = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"
V3_REF, V2_REF = openapi.REF, "#/definitions/"


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _len(number: int, data: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _str(number: int, text: str) -> bytes:
    return _len(number, text.encode()) if text else b""


def _bool(number: int, value: bool) -> bytes:
    return _varint(number << 3) + _varint(1) if value else b""


def _int(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(int(value))


def _double(number: int, value: float) -> bytes:
    return _varint(number << 3 | 1) + struct.pack("<d", float(value))


def _any(value: Any) -> bytes:
    """gnostic Any: the value as YAML text (field 2)."""
    return _str(2, yaml.safe_dump(value, default_flow_style=True).strip())


def _named_any(name: str, value: Any) -> bytes:
    return _str(1, name) + _len(2, _any(value))


def _schema(node: dict[str, Any]) -> bytes:
    if not isinstance(node, dict):
        return b""
    out = bytearray()
    ref = node.get("$ref")
    if isinstance(ref, str):
        out += _str(1, ref.replace(V3_REF, V2_REF))
    if node.get("allOf") and len(node["allOf"]) == 1 and isinstance(node["allOf"][0].get("$ref"), str):
        out += _str(1, node["allOf"][0]["$ref"].replace(V3_REF, V2_REF))  # v2 has no described $ref: flatten
    out += _str(2, node.get("format") or "")
    out += _str(3, node.get("title") or "")
    out += _str(4, node.get("description") or "")
    if "default" in node:
        out += _len(5, _any(node["default"]))
    for number, key in ((6, "multipleOf"), (7, "maximum"), (9, "minimum")):
        if isinstance(node.get(key), (int, float)) and not isinstance(node.get(key), bool):
            out += _double(number, node[key])
    out += _bool(8, node.get("exclusiveMaximum") is True) + _bool(10, node.get("exclusiveMinimum") is True)
    for number, key in ((11, "maxLength"), (12, "minLength"), (14, "maxItems"), (15, "minItems"),
                        (17, "maxProperties"), (18, "minProperties")):
        if isinstance(node.get(key), int):
            out += _int(number, node[key])
    out += _str(13, node.get("pattern") or "")
    out += _bool(16, bool(node.get("uniqueItems")))
    for name in node.get("required") or []:
        out += _str(19, name)
    for value in node.get("enum") or []:
        out += _len(20, _any(value))
    addl = node.get("additionalProperties")
    if isinstance(addl, dict):
        out += _len(21, _len(1, _schema(addl)))
    elif isinstance(addl, bool):
        out += _len(21, _bool(2, addl) or _varint(2 << 3) + _varint(0))
    kinds = node.get("type")
    if kinds:
        out += _len(22, b"".join(_str(1, t) for t in ([kinds] if isinstance(kinds, str) else kinds)))
    if isinstance(node.get("items"), dict):
        out += _len(23, _len(1, _schema(node["items"])))
    for branch in node.get("allOf") or [] if not (len(node.get("allOf") or []) == 1) else []:
        out += _len(24, _schema(branch))
    if node.get("properties"):
        out += _len(25, b"".join(_len(1, _str(1, name) + _len(2, _schema(sub)))
                                 for name, sub in node["properties"].items()))
    out += _bool(27, bool(node.get("readOnly")))
    for key, value in node.items():
        if key.startswith("x-"):
            out += _len(31, _named_any(key, value))
    return bytes(out)


def document(kinds: Iterable[Kind]) -> bytes:
    """The whole document: the definitions of every kind served (their closure), as gnostic protobuf."""
    definitions = dict(openapi.builtin_definitions())
    for kind in kinds:
        if kind.schema is not None:
            definitions[openapi.schema_name(kind)] = openapi._crd_schema(kind)
    info = _str(1, "Kubernetes (Hone's emulated API server)") + _str(2, "v1.32.0")
    body = b"".join(_len(1, _str(1, name) + _len(2, _schema(schema))) for name, schema in sorted(definitions.items()))
    return _str(1, "2.0") + _len(2, info) + _len(8, b"") + _len(9, body)
