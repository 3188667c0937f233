"""Generate ``crds/*.yaml`` from the pydantic models in :mod:`.v1alpha1`.

    python -m hone_operator.api.crdgen            # write crds/
    python -m hone_operator.api.crdgen --check    # exit 1 if crds/ would change

A pydantic JSON schema is not yet a Kubernetes *structural* schema. This
module applies the conversions the API server requires:

* every ``$ref`` is inlined (the API server has no ``$defs``);
* ``anyOf: [X, {type: null}]`` becomes ``X`` with ``nullable: true``;
* ``const`` becomes a one-value ``enum``; numeric ``exclusiveMinimum`` becomes
  OpenAPI v3.0's ``minimum`` + ``exclusiveMinimum: true``;
* ``title``, ``default`` and ``additionalProperties: false`` are dropped
  (defaults are applied by the operator's models and named in the
  description, so ``kubectl explain`` still shows them);
* int-or-string and free-form fields keep the ``x-kubernetes-*`` markers
  their models declare, and nothing else is left untyped.

Every field must have a description: generation fails otherwise.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from hone_operator.api import v1alpha1 as api

_DROP = {"title", "default", "examples"}


class SchemaError(ValueError):
    pass


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    """Inline every $ref (recursively), keeping sibling keys (e.g. description)."""
    if isinstance(node, list):
        return [_resolve(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        target = copy.deepcopy(defs[name])
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        merged = _resolve(target, defs)
        merged.update(_resolve(siblings, defs))
        return merged
    # pydantic < 2.10 wraps a described $ref in allOf: [{$ref}]
    if "allOf" in node and len(node["allOf"]) == 1 and "$ref" in node["allOf"][0]:
        inner = _resolve(node["allOf"][0], defs)
        rest = {k: _resolve(v, defs) for k, v in node.items() if k != "allOf"}
        inner.update(rest)
        return inner
    return {k: _resolve(v, defs) for k, v in node.items()}


def _describe_default(node: dict[str, Any]) -> None:
    if "default" not in node:
        return
    default = node["default"]
    if default is None or default == "" or default == [] or default == {}:
        return
    if isinstance(default, (dict, list)):
        return  # nested defaults are described on their own fields
    text = json.dumps(default) if not isinstance(default, str) else default
    desc = node.get("description", "").rstrip()
    if "Default" not in desc and f"`{text}`" not in desc:
        sep = "" if not desc or desc.endswith(".") else "."
        node["description"] = f"{desc}{sep} Default: {text}.".strip()


def _openapi_v3(node: dict[str, Any]) -> dict[str, Any]:
    """One schema node from JSON Schema (pydantic) to the OpenAPI v3 subset a structural schema allows."""
    # Optional fields: anyOf [X, null] -> X + nullable.
    if "anyOf" in node:
        branches = node["anyOf"]
        non_null = [b for b in branches if b != {"type": "null"}]
        if len(non_null) < len(branches):
            outer = {k: v for k, v in node.items() if k != "anyOf"}
            if len(non_null) == 1:
                merged = dict(non_null[0])
                # The outer description (the field's) wins over the type's docstring.
                merged.update(outer)
                node = merged
            else:
                node = {**outer, "anyOf": non_null}
            node["nullable"] = True

    node = {k: v for k, v in node.items() if k not in _DROP}
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if isinstance(node.get("exclusiveMinimum"), (int, float)) and not isinstance(
        node.get("exclusiveMinimum"), bool
    ):
        node["minimum"] = node.pop("exclusiveMinimum")
        node["exclusiveMinimum"] = True
    if isinstance(node.get("exclusiveMaximum"), (int, float)) and not isinstance(
        node.get("exclusiveMaximum"), bool
    ):
        node["maximum"] = node.pop("exclusiveMaximum")
        node["exclusiveMaximum"] = True
    if node.get("additionalProperties") is False:
        del node["additionalProperties"]
    if node.get("additionalProperties") is True:
        del node["additionalProperties"]
        node["x-kubernetes-preserve-unknown-fields"] = True
    return node


def _structural(node: Any, path: str, in_junctor: bool = False) -> Any:
    """A structural schema (what a CRD requires) from a pydantic JSON Schema, recursively."""
    if isinstance(node, list):
        return [_structural(n, path, in_junctor) for n in node]
    if not isinstance(node, dict):
        return node

    _describe_default(node)
    node = {k: v for k, v in node.items() if k not in _DROP}

    node = _openapi_v3(node)

    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: _structural(sub, f"{path}.{name}") for name, sub in value.items()}
        elif key in ("items", "additionalProperties"):
            out[key] = _structural(value, f"{path}[]")
        elif key in ("anyOf", "allOf", "oneOf"):
            out[key] = [_structural(b, path, in_junctor=True) for b in value]
        else:
            out[key] = value

    # An enum of strings from a str-Enum comes without a type.
    if "enum" in out and "type" not in out and not in_junctor and not _untyped_ok(out):
        kinds = {type(v) for v in out["enum"]}
        if kinds == {str}:
            out["type"] = "string"
        elif kinds == {int}:
            out["type"] = "integer"
    return out


def _untyped_ok(node: dict[str, Any]) -> bool:
    return bool(
        node.get("x-kubernetes-int-or-string") or node.get("x-kubernetes-preserve-unknown-fields")
    )


def _check(node: dict[str, Any], path: str, in_junctor: bool = False) -> None:
    """Enforce what the API server enforces, plus a description on every field."""
    if "$ref" in node or "$defs" in node:
        raise SchemaError(f"{path}: unresolved $ref")
    if not in_junctor:
        if "type" not in node and not _untyped_ok(node):
            raise SchemaError(f"{path}: no type (structural schemas need one)")
        if "properties" in node and "additionalProperties" in node:
            raise SchemaError(f"{path}: properties and additionalProperties together")
    for junctor in ("anyOf", "allOf", "oneOf"):
        for branch in node.get(junctor, []):
            allowed_typed = node.get("x-kubernetes-int-or-string")
            for forbidden in ("description", "default", "nullable", "additionalProperties"):
                if forbidden in branch:
                    raise SchemaError(f"{path}: {forbidden} inside {junctor}")
            if "type" in branch and not allowed_typed:
                raise SchemaError(f"{path}: type inside {junctor}")
            _check(branch, path, in_junctor=True)
    for name, sub in node.get("properties", {}).items():
        if not sub.get("description"):
            raise SchemaError(f"{path}.{name}: no description (kubectl explain needs one)")
        _check(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        _check(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        _check(node["additionalProperties"], f"{path}{{}}")


def structural_schema(model: type[BaseModel], path: str) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    schema = _structural(_resolve(raw, defs), path)
    schema.pop("nullable", None)
    _check(schema, path)
    return schema


_KOPF_FIELD = {
    "type": "object",
    "x-kubernetes-preserve-unknown-fields": True,
    "description": "Bookkeeping of the kopf framework the operator runs on; do not edit.",
}


def _openapi(spec_model: type[BaseModel], status_model: type[BaseModel], kind: str) -> dict[str, Any]:
    spec = structural_schema(spec_model, "spec")
    status = structural_schema(status_model, "status")
    status.setdefault("properties", {})["kopf"] = _KOPF_FIELD
    return {
        "type": "object",
        "description": (spec_model.__doc__ or kind).strip().splitlines()[0],
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "hone.dev/v1alpha1"},
            "kind": {"type": "string", "description": kind},
            "metadata": {"type": "object", "description": "Standard object metadata."},
            "spec": {**spec, "description": (spec_model.__doc__ or "").strip()},
            "status": {**status, "description": (status_model.__doc__ or "").strip()},
        },
    }


def _crd(
    kind: str,
    plural: str,
    short: str,
    schema: dict[str, Any],
    columns: list[dict[str, Any]],
    scale: dict[str, str] | None = None,
) -> dict[str, Any]:
    subresources: dict[str, Any] = {"status": {}}
    if scale:
        subresources["scale"] = scale
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{api.GROUP}",
            "labels": {"app.kubernetes.io/name": "hone", "app.kubernetes.io/part-of": "hone"},
        },
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short],
                "categories": ["hone"],
            },
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": schema},
                    "subresources": subresources,
                    "additionalPrinterColumns": columns,
                }
            ],
        },
    }


def finetunejob_crd() -> dict[str, Any]:
    columns = [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Progress", "type": "integer", "jsonPath": ".status.progress.percent",
         "description": "Percent of training steps done."},
        {"name": "Tokens", "type": "integer", "jsonPath": ".status.progress.trainedTokens",
         "description": "Billable tokens trained so far."},
        {"name": "Loss", "type": "number", "jsonPath": ".status.progress.trainLoss",
         "description": "Latest training loss."},
        {"name": "Model", "type": "string", "jsonPath": ".status.fineTunedModel.name", "priority": 1},
        {"name": "Base", "type": "string", "jsonPath": ".spec.baseModel.uri", "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    schema = _openapi(api.FineTuneJobSpec, api.FineTuneJobStatus, "FineTuneJob")
    return _crd("FineTuneJob", "finetunejobs", "ftj", schema, columns)


def modelserving_crd() -> dict[str, Any]:
    columns = [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas"},
        {"name": "URL", "type": "string", "jsonPath": ".status.url"},
        {"name": "Models", "type": "string", "jsonPath": ".status.servedModels", "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    schema = _openapi(api.ModelServingSpec, api.ModelServingStatus, "ModelServing")
    scale = {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    return _crd("ModelServing", "modelservings", "msv", schema, columns, scale)


def tokenbudget_crd() -> dict[str, Any]:
    columns = [
        {"name": "Used", "type": "integer", "jsonPath": ".status.training.tokensToday",
         "description": "Training tokens settled today."},
        {"name": "Reserved", "type": "integer", "jsonPath": ".status.training.reservedTokens",
         "description": "Training tokens reserved by running jobs."},
        {"name": "Limit", "type": "integer", "jsonPath": ".spec.training.tokensPerDay",
         "description": "Training tokens a day."},
        {"name": "Free", "type": "integer", "jsonPath": ".status.training.freeTokensRemainingToday",
         "description": "Free training tokens left today."},
        {"name": "Resets", "type": "string", "jsonPath": ".status.resetsAt",
         "description": "When the day window ends (a time to come, which a date column would print as <invalid>)."},
        {"name": "Served", "type": "integer", "jsonPath": ".status.inference.tokensToday",
         "description": "Inference tokens served today."},
        {"name": "Serve-Limit", "type": "integer", "jsonPath": ".spec.inference.tokensPerDay",
         "description": "Inference tokens a day.", "priority": 1},
        {"name": "Enforce", "type": "boolean", "jsonPath": ".spec.enforce", "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    schema = _openapi(api.TokenBudgetSpec, api.TokenBudgetStatus, "TokenBudget")
    return _crd("TokenBudget", "tokenbudgets", "tb", schema, columns)


HEADER = "# Generated by `python -m hone_operator.api.crdgen` from hone_operator/api/v1alpha1.py. Do not edit.\n"


def render_all() -> dict[str, str]:
    """File name -> YAML text of every CRD."""
    out = {}
    for crd in (finetunejob_crd(), modelserving_crd(), tokenbudget_crd()):
        name = f"{crd['metadata']['name']}.yaml"
        out[name] = HEADER + yaml.safe_dump(crd, sort_keys=False, width=100, allow_unicode=True)
    return out


def default_dir() -> Path:
    return Path(__file__).resolve().parents[3] / "crds"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=default_dir(), help="target folder (default: crds/)")
    parser.add_argument("--check", action="store_true", help="fail if the files differ instead of writing")
    args = parser.parse_args(argv)
    drift = []
    for name, text in render_all().items():
        target = args.out / name
        if args.check:
            if not target.exists() or target.read_text() != text:
                drift.append(str(target))
        else:
            args.out.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            print(f"wrote {target}")
    if drift:
        print("CRDs out of date (run python -m hone_operator.api.crdgen): " + ", ".join(drift), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
