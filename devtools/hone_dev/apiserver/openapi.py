"""OpenAPI v3 documents, as ``/openapi/v3`` serves them: an index, then one document per group-version.

Built-in kinds take their schemas from the official Kubernetes 1.32 definitions that the
``kubernetes-validate`` package carries (field docs, ``x-kubernetes-patch-merge-key`` and list
types included); custom resources take theirs from the installed CRDs, rebuilt whenever a CRD
changes. Each kind gets the paths kubectl looks for: a PATCH operation tagged with its
``x-kubernetes-group-version-kind`` that takes ``fieldValidation`` (which is how kubectl decides
to let the server validate), so ``kubectl apply`` validates and ``kubectl explain`` prints docs.
"""

from __future__ import annotations

import functools
import hashlib
import json
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Iterable

from hone_dev.apiserver.kinds import Kind

SCHEMAS_VERSION = "v1.32.0-local"
REF = "#/components/schemas/"
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"


@functools.cache
def builtin_definitions() -> dict[str, Any]:
    """The official definitions, turned from the package's JSON Schema back into OpenAPI v3."""
    spec = find_spec("kubernetes_validate")
    assert spec is not None and spec.origin is not None, "kubernetes-validate is not installed"
    path = Path(spec.origin).parent / "kubernetes-json-schema" / SCHEMAS_VERSION / "_definitions.json"
    return {name: _openapi(node) for name, node in json.loads(path.read_text())["$defs"].items()}


def _openapi(node: Any) -> Any:
    if isinstance(node, list):
        return [_openapi(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "$ref" and isinstance(value, str):
            out[key] = REF + value.rsplit("/", 1)[-1]
        elif key == "type" and isinstance(value, list):
            kept = [t for t in value if t != "null"]
            out[key] = kept[0] if len(kept) == 1 else kept
        elif key == "enum" and isinstance(value, list):
            out[key] = [v for v in value if v is not None]
        else:
            out[key] = _openapi(value)
    if isinstance(out.get("$ref"), str) and len(out) > 1:  # as kube-openapi writes a described reference
        out = {**{k: v for k, v in out.items() if k != "$ref"}, "allOf": [{"$ref": out["$ref"]}]}
    return out


def _refs(node: Any, found: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(REF):
            found.add(ref[len(REF):])
        for value in node.values():
            _refs(value, found)
    elif isinstance(node, list):
        for value in node:
            _refs(value, found)


def _closure(names: Iterable[str], definitions: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in out or name not in definitions:
            continue
        out[name] = definitions[name]
        found: set[str] = set()
        _refs(out[name], found)
        todo.extend(found - set(out))
    return out


def schema_name(kind: Kind) -> str:
    """``io.k8s.api.apps.v1.Deployment`` for built-ins; reversed group for custom resources."""
    if kind.schema is None:
        group = {"": "core"}.get(kind.group, kind.group.replace(".k8s.io", "").replace(".authorization", ""))
        prefix = "io.k8s.apiextensions-apiserver.pkg.apis" if kind.group == "apiextensions.k8s.io" else "io.k8s.api"
        return f"{prefix}.{group.split('.')[0]}.{kind.version}.{kind.kind}"
    return ".".join(reversed(kind.group.split("."))) + f".{kind.version}.{kind.kind}"


def _crd_schema(kind: Kind) -> dict[str, Any]:
    schema = json.loads(json.dumps(kind.schema))
    props = schema.setdefault("properties", {})
    props["metadata"] = {"description": "Standard object's metadata.", "allOf": [{"$ref": REF + OBJECT_META}]}
    for field, text in (("apiVersion", "APIVersion defines the versioned schema of this representation of an object."),
                        ("kind", "Kind is a string value representing the REST resource this object represents.")):
        props.setdefault(field, {"type": "string", "description": text})
    schema["x-kubernetes-group-version-kind"] = [{"group": kind.group, "version": kind.version, "kind": kind.kind}]
    return schema


def _parameter(name: str, where: str = "query", required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required, "schema": {"type": "string", "uniqueItems": True}}


def _paths(kind: Kind, ref: str) -> dict[str, Any]:
    base = f"/api/{kind.version}" if not kind.group else f"/apis/{kind.group}/{kind.version}"
    scope = f"{base}/namespaces/{{namespace}}/{kind.plural}" if kind.namespaced else f"{base}/{kind.plural}"
    gvk = {"group": kind.group, "version": kind.version, "kind": kind.kind}
    body = {"content": {"application/json": {"schema": {"$ref": ref}}}}
    ok = {"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": ref}}}}}
    writes = [_parameter("dryRun"), _parameter("fieldManager"), _parameter("fieldValidation")]

    def op(action: str, **extra: Any) -> dict[str, Any]:
        return {"operationId": f"{action}{kind.kind}", "responses": ok, "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": gvk, **extra}

    # Custom resources take no strategic merge patch; kubectl reads that from here and sends JSON merge.
    patch_types = ["application/apply-patch+yaml", "application/json-patch+json", "application/merge-patch+json"]
    if kind.schema is None:
        patch_types.append("application/strategic-merge-patch+json")
    patch_body = {"content": {t: {"schema": {"type": "object"}} for t in patch_types}}
    item = {"get": op("get"), "put": op("put", parameters=writes, requestBody=body),
            "patch": op("patch", parameters=[*writes, _parameter("force")], requestBody=patch_body),
            "delete": op("delete"),
            "parameters": [_parameter("name", "path", True)] + ([_parameter("namespace", "path", True)]
                                                                if kind.namespaced else [])}
    collection = {"get": op("list"), "post": op("post", parameters=writes, requestBody=body)}
    return {scope: collection, f"{scope}/{{name}}": item}


def documents(kinds: Iterable[Kind]) -> dict[str, dict[str, Any]]:
    """``api/v1`` or ``apis/<group>/<version>`` -> its OpenAPI v3 document."""
    definitions = builtin_definitions()
    by_gv: dict[str, list[Kind]] = {}
    for kind in kinds:
        key = f"api/{kind.version}" if not kind.group else f"apis/{kind.group}/{kind.version}"
        by_gv.setdefault(key, []).append(kind)
    docs = {}
    for gv, members in sorted(by_gv.items()):
        schemas: dict[str, Any] = {}
        paths: dict[str, Any] = {}
        for kind in members:
            name = schema_name(kind)
            if kind.schema is not None:
                schemas[name] = _crd_schema(kind)
            elif name not in definitions:
                continue
            paths.update(_paths(kind, REF + name))
        roots = [schema_name(k) for k in members if k.schema is None] + [OBJECT_META]
        if any(k.scale for k in members):
            roots.append("io.k8s.api.autoscaling.v1.Scale")
        schemas.update(_closure(roots, definitions))
        docs[gv] = {"openapi": "3.0.0", "info": {"title": "Kubernetes (Hone's emulated API server)",
                                                  "version": "v1.32.0"},
                    "paths": paths, "components": {"schemas": dict(sorted(schemas.items()))}}
    return docs


def index(docs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``/openapi/v3``: each document's URL, with a hash that changes when the document does."""
    paths = {}
    for gv, doc in docs.items():
        digest = hashlib.sha512(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32].upper()
        paths[gv] = {"serverRelativeURL": f"/openapi/v3/{gv}?hash={digest}"}
    return {"paths": paths}
