"""Kubernetes protobuf request bodies decoded into the JSON a client would have sent.

Since Kubernetes 1.31 kubectl's typed commands (``create namespace``, ``create secret``,
``auth can-i``, ``create token``, ...) send built-in kinds as
``application/vnd.kubernetes.protobuf``: the bytes ``k8s\\x00`` and a ``runtime.Unknown``
message whose ``raw`` field is the object. The wire schema of each kind comes from
``protobuf_types.json``, generated from the Go types by :mod:`.protobuf_gen`: field numbers,
JSON names, and Go's ``omitempty``/pointer rules, so a zero the client never set is dropped
and a zero it did set (``replicas: 0``) is kept. Responses are always JSON (every client sends
``application/json`` among the types it accepts).
"""

from __future__ import annotations

import base64
import datetime
import functools
import json
import struct
from pathlib import Path
from typing import Any, Iterator

from hone_dev.apiserver.kinds import ApiError

MAGIC = b"k8s\x00"
CONTENT_TYPE = "application/vnd.kubernetes.protobuf"

#: apiVersion -> the Go package of its types.
PACKAGES = {
    "v1": "core/v1", "apps/v1": "apps/v1", "batch/v1": "batch/v1", "rbac.authorization.k8s.io/v1": "rbac/v1",
    "authorization.k8s.io/v1": "authorization/v1", "authentication.k8s.io/v1": "authentication/v1",
    "coordination.k8s.io/v1": "coordination/v1", "policy/v1": "policy/v1", "networking.k8s.io/v1": "networking/v1",
    "autoscaling/v1": "autoscaling/v1", "autoscaling/v2": "autoscaling/v2", "meta.k8s.io/v1": "meta/v1",
}


@functools.cache
def _types() -> dict[str, dict[str, dict[str, Any]]]:
    return json.loads(Path(__file__).with_name("protobuf_types.json").read_text())["types"]


def decode(body: bytes) -> dict[str, Any]:
    """A ``k8s\\x00``-enveloped protobuf body as a JSON object (apiVersion and kind included)."""
    if not body.startswith(MAGIC):
        raise ApiError(400, "BadRequest", "protobuf body without the k8s\\x00 envelope")
    try:
        unknown = {n: v for n, _, v in _fields(body[len(MAGIC):])}
        type_meta = {n: v for n, _, v in _fields(unknown.get(1, b""))}
        api_version = type_meta.get(1, b"").decode()
        kind = type_meta.get(2, b"").decode()
        if unknown.get(3):
            raise ApiError(415, "UnsupportedMediaType", "compressed protobuf bodies are not supported")
        package = PACKAGES.get(api_version)
        name = next((t for t in (f"{package}.{kind}", f"meta/v1.{kind}") if t in _types()), None)
        if package is None or name is None:
            raise ApiError(415, "UnsupportedMediaType",
                           f"protobuf bodies of {api_version} {kind} are not supported by this emulator; send JSON")
        obj = _message(unknown.get(2, b""), name)
    except (IndexError, UnicodeDecodeError, struct.error, ValueError) as exc:
        raise ApiError(400, "BadRequest", f"malformed protobuf body: {exc}") from exc
    return {"apiVersion": api_version, "kind": kind, **obj}


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(data: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) for each field; values are ints or bytes."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = data[pos:pos + 8], pos + 8
        elif wire == 2:
            length, pos = _varint(data, pos)
            value, pos = data[pos:pos + length], pos + length
            if pos > len(data):
                raise ValueError("truncated field")
        elif wire == 5:
            value, pos = data[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield number, wire, value


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _scalar(kind: str, wire: int, value: Any) -> Any:
    if kind == "string":
        return value.decode()
    if kind == "bytes":
        return base64.b64encode(value).decode()
    if kind == "int":
        return _signed(value)
    if kind == "bool":
        return bool(value)
    if kind == "double":
        return struct.unpack("<d", value)[0]
    if kind == "float":
        return struct.unpack("<f", value)[0]
    raise ValueError(kind)


def _time(value: bytes, micro: bool) -> str | None:
    parts = {n: v for n, _, v in _fields(value)}
    seconds, nanos = _signed(parts.get(1, 0)), parts.get(2, 0)
    if not seconds and not nanos:
        return None
    at = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    text = at.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{nanos // 1000:06d}Z" if micro else f"{text}Z"


def _duration(value: bytes) -> str:
    nanos = _signed({n: v for n, _, v in _fields(value)}.get(1, 0))
    hours, rest = divmod(nanos, 3600 * 10**9)
    minutes, rest = divmod(rest, 60 * 10**9)
    seconds = rest / 10**9
    return f"{hours}h{minutes}m{seconds:g}s"


def _value(spec: dict[str, Any], wire: int, value: Any) -> Any:
    kind = spec["kind"]
    if kind == "message":
        return _message(value, spec["type"])
    if kind in ("time", "microtime"):
        return _time(value, kind == "microtime")
    if kind == "duration":
        return _duration(value)
    if kind == "quantity":
        return {n: v for n, _, v in _fields(value)}.get(1, b"").decode()
    if kind == "intorstring":
        parts = {n: v for n, _, v in _fields(value)}
        return parts.get(3, b"").decode() if parts.get(1) == 1 else _signed(parts.get(2, 0))
    if kind in ("rawextension", "fieldsv1"):
        raw = {n: v for n, _, v in _fields(value)}.get(1, b"")
        return json.loads(raw) if raw else None
    if kind == "wrapped":
        return [_value(spec["item"], w, v) for _, w, v in _fields(value)]
    return _scalar(kind, wire, value)


def _zero(value: Any) -> bool:
    return value in ("", 0, False, None) or value == [] or value == {}


def _message(data: bytes, name: str) -> dict[str, Any]:
    schema = _types()[name]
    out: dict[str, Any] = {}
    inline: list[dict[str, Any]] = []
    seen: dict[str, Any] = {}
    for number, wire, value in _fields(data):
        spec = schema.get(str(number))
        if spec is None or spec["kind"] == "skip":
            continue  # a field this schema does not know (newer than it, or alpha): dropped, as pruning would
        key = spec["json"] or f"#{number}"
        if spec["kind"] == "list":
            item = spec["item"]
            if wire == 2 and item["kind"] in ("int", "bool"):  # packed repeated scalars
                pos, items = 0, []
                while pos < len(value):
                    v, pos = _varint(value, pos)
                    items.append(_scalar(item["kind"], 0, v))
                seen.setdefault(key, []).extend(items)
            else:
                seen.setdefault(key, []).append(_value(item, wire, value))
        elif spec["kind"] == "map":
            entry = {n: (w, v) for n, w, v in _fields(value)}
            k = _value(spec["key"], *entry[1]) if 1 in entry else ""
            v = _value(spec["value"], *entry[2]) if 2 in entry else None
            seen.setdefault(key, {})[k] = v
        else:
            seen[key] = _value(spec, wire, value)
    by_key = {(spec["json"] or f"#{n}"): spec for n, spec in schema.items()}
    for key, value in seen.items():
        spec = by_key[key]
        if spec["json"] is None:
            inline.append(value)
        elif value is None or (not spec["pointer"] and spec["omitempty"] and _zero(value)):
            continue
        else:
            out[key] = value
    for part in inline:  # Go's inlined structs (Volume's VolumeSource) are flat in JSON
        out.update(part)
    return out
