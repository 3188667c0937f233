"""API types, generated CRDs and samples: what `kubectl apply` and `kubectl explain` users see."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from hone_operator.api import crdgen
from hone_operator.api.v1alpha1 import FineTuneJob, ModelServing, TokenBudget
from hone_operator.reconcile.spec import spec_error
from hone_dev.apiserver import error_field
from hone_dev.repo import crd, schema_of, validator

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = sorted((ROOT / "crds" / "samples").glob("*.yaml"))


def test_generated_crds_match_the_models() -> None:
    """crds/ is generated; editing the models without regenerating fails here."""
    rendered = crdgen.render_all()
    assert set(rendered) == {"finetunejobs.hone.dev.yaml", "modelservings.hone.dev.yaml", "tokenbudgets.hone.dev.yaml"}
    for name, text in rendered.items():
        on_disk = (ROOT / "crds" / name).read_text()
        assert on_disk == text, f"crds/{name} is stale: run python -m hone_operator.api.crdgen"


def test_the_crd_reference_is_generated_from_the_models() -> None:
    from hone_operator.api import docgen

    text = (ROOT / "docs" / "crd-reference.md").read_text()
    assert text == docgen.render(), "docs/crd-reference.md is stale: run python -m hone_operator.api.docgen"
    assert "| `spec.fineTuneJobRef.name` | string |" in text and "| `status.servedModels` | []string |" in text


def test_crdgen_check_mode_reports_drift(tmp_path: Path) -> None:
    assert crdgen.main(["--out", str(tmp_path)]) == 0
    assert crdgen.main(["--check", "--out", str(tmp_path)]) == 0
    (tmp_path / "finetunejobs.hone.dev.yaml").write_text("# edited by hand\n")
    assert crdgen.main(["--check", "--out", str(tmp_path)]) == 1


def _walk(node: dict[str, Any], path: str = ""):
    yield path, node
    for key, sub in (node.get("properties") or {}).items():
        yield from _walk(sub, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("name", ["finetunejobs", "modelservings", "tokenbudgets"])
def test_crd_schemas_are_structural_and_described(name: str) -> None:
    for path, node in _walk(schema_of(name)):
        assert "$ref" not in node and "$defs" not in node, path
        typed = "type" in node or node.get("x-kubernetes-int-or-string") or node.get(
            "x-kubernetes-preserve-unknown-fields")
        assert typed, f"{path} has no type"
        if not path.endswith(("[]", "}")):
            assert node.get("description"), f"{path} has no description (kubectl explain shows nothing)"
        assert not ("properties" in node and "additionalProperties" in node), path
        for branch in node.get("anyOf", []):
            assert "description" not in branch and "nullable" not in branch, path
            if "type" in branch:
                assert node.get("x-kubernetes-int-or-string"), f"{path}: typed anyOf outside int-or-string"
    # Optional fields are nullable rather than anyOf-null.
    text = (ROOT / "crds" / f"{name}.hone.dev.yaml").read_text()
    assert "type: 'null'" not in text and "type: null" not in text


def test_finetunejob_crd_shape() -> None:
    c = crd("finetunejobs")
    assert c["spec"]["names"]["shortNames"] == ["ftj"]
    version = c["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = {col["name"]: col["jsonPath"] for col in version["additionalPrinterColumns"]}
    assert columns["Phase"] == ".status.phase"
    assert columns["Progress"] == ".status.progress.percent"
    assert columns["Tokens"] == ".status.progress.trainedTokens"
    assert columns["Loss"] == ".status.progress.trainLoss"
    assert columns["Age"] == ".metadata.creationTimestamp"
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    # kopf's own bookkeeping survives pruning.
    assert status["kopf"]["x-kubernetes-preserve-unknown-fields"] is True
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert set(spec["required"]) == {"baseModel", "trainingData", "output"}
    epochs = spec["properties"]["hyperparameters"]["properties"]["epochs"]
    assert epochs["x-kubernetes-int-or-string"] is True


def test_modelserving_crd_has_scale_subresource() -> None:
    c = crd("modelservings")
    assert c["spec"]["names"]["shortNames"] == ["msv"]
    version = c["spec"]["versions"][0]
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    columns = [col["name"] for col in version["additionalPrinterColumns"]]
    assert columns[:3] == ["Phase", "Ready", "URL"] and columns[-1] == "Age"


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_samples_are_valid(path: Path) -> None:
    obj = yaml.safe_load(path.read_text())
    plural = {"FineTuneJob": "finetunejobs", "ModelServing": "modelservings", "TokenBudget": "tokenbudgets"}[obj["kind"]]
    errors = list(validator(plural).iter_errors(obj))
    assert not errors, [e.message for e in errors]
    model = {"FineTuneJob": FineTuneJob, "ModelServing": ModelServing, "TokenBudget": TokenBudget}[obj["kind"]]
    model.model_validate({**obj, "metadata": {**obj["metadata"], "namespace": "default"}})


MINIMAL = yaml.safe_load((ROOT / "crds" / "samples" / "finetunejob-minimal.yaml").read_text())


def mutate(path: str, value: Any) -> dict[str, Any]:
    obj = copy.deepcopy(MINIMAL)
    node = obj
    parts = path.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    if value is DELETE:
        node.pop(parts[-1], None)
    else:
        node[parts[-1]] = value
    return obj


DELETE = object()

# (change, the field the error must name). Each is refused either by the API
# server (CRD schema) at `kubectl apply`, or by the operator with a condition.
BROKEN = [
    ("spec.hyperparameters.epochs", 0, "spec.hyperparameters.epochs"),
    ("spec.hyperparameters.epochs", "many", "spec.hyperparameters.epochs"),
    ("spec.hyperparameters.batchSize", -4, "spec.hyperparameters.batchSize"),
    ("spec.hyperparameters.learningRateMultiplier", "fast", "spec.hyperparameters.learningRateMultiplier"),
    ("spec.hyperparameters.learningRateMultiplier", 0, "spec.hyperparameters.learningRateMultiplier"),
    ("spec.lora.r", 0, "spec.lora.r"),
    ("spec.resources.gpusPerNode", -1, "spec.resources.gpusPerNode"),
    ("spec.resources.nodes", 0, "spec.resources.nodes"),
    ("spec.resources.memory", "lots", "spec.resources.memory"),
    ("spec.method", "adapter", "spec.method"),
    ("spec.baseModel", DELETE, "spec.baseModel"),
    ("spec.output.uri", "ftp://host/models", "spec.output.uri"),
    ("spec.suffix", "Not A Suffix!", "spec.suffix"),
    ("spec.deepspeed.zeroStage", 4, "spec.deepspeed.zeroStage"),
]


@pytest.mark.parametrize("path,value,field", BROKEN,
                         ids=[f"{p} deleted" if v is DELETE else f"{p}={v!r}" for p, v, _ in BROKEN])
def test_broken_specs_are_rejected_naming_the_field(path: str, value: Any, field: str) -> None:
    obj = mutate(path, value)
    schema_errors = list(validator("finetunejobs").iter_errors(obj))
    model_error = None
    try:
        FineTuneJob.model_validate({**obj, "metadata": {**obj["metadata"], "namespace": "default"}})
    except ValidationError as exc:
        model_error = spec_error(exc)
    assert schema_errors or model_error, f"{path}={value!r} was accepted"
    if model_error:
        param, message = model_error
        assert param == field and message.startswith(field), model_error
    if schema_errors:
        paths = {error_field(e) for e in schema_errors}
        assert field in paths or any(p.startswith(field) for p in paths), paths


# Cross-field rules: refused by the models (the operator) and, before any object exists, by the
# CRDs' CEL rules in the API server, at the same field and with the same message.
CROSS_FIELD = [
    ({"trainingData": {"uri": "pvc://data/train.jsonl", "inline": "{}"}}, "spec.trainingData",
     "set exactly one of uri, configMap, inline, file (got uri, inline)"),
    ({"trainingData": {}}, "spec.trainingData", "set exactly one of uri, configMap, inline, file (got none)"),
    ({"validationData": {"uri": "pvc://d/v.jsonl", "configMap": {"name": "c", "key": "k"}, "inline": "{}"}},
     "spec.validationData", "set exactly one of uri, configMap, inline, file (got uri, configMap, inline)"),
    ({"method": "qlora", "resources": {"gpusPerNode": 0}}, "spec",
     "method qlora needs GPUs (4-bit bitsandbytes kernels): set resources.gpusPerNode >= 1 or use method lora"),
    ({"deepspeed": {"zeroStage": 2, "offloadParams": True}}, "spec.deepspeed",
     "offloadParams needs zeroStage 3 (or auto)"),
]
MSV_CROSS_FIELD = [
    ({"fineTuneJobRef": None}, "spec", "set fineTuneJobRef, adapters or baseModel: there is nothing to serve"),
    ({"adapters": [{"name": "a"}]}, "spec.adapters[0]", "set exactly one of fineTuneJobRef, uri"),
    ({"autoscaling": {"minReplicas": 3, "maxReplicas": 2}}, "spec.autoscaling", "maxReplicas must be >= minReplicas"),
    ({"runtime": "vllm"}, "spec", "runtime vllm needs GPUs: set resources.gpus >= 1, or use runtime hone (CPU or GPU)"),
    ({"runtime": "vllm", "resources": {"gpus": 0}}, "spec",
     "runtime vllm needs GPUs: set resources.gpus >= 1, or use runtime hone (CPU or GPU)"),
]
# What each rule allows, it allows in both places too.
CROSS_FIELD_OK = [
    {"method": "qlora", "resources": {"gpusPerNode": 1}}, {"method": "qlora"},
    {"deepspeed": {"zeroStage": 3, "offloadParams": True}}, {"deepspeed": {"offloadParams": True}},
    {"deepspeed": {"zeroStage": 1}}, {"trainingData": {"inline": "{}"}},
]


def _cel_causes(name: str, obj: dict[str, Any], old: dict[str, Any] | None = None) -> list[dict[str, str]]:
    from hone_dev.apiserver import cel

    return cel.validate(schema_of(name), obj, old)


@pytest.mark.parametrize("patch,field,text", CROSS_FIELD, ids=[f for _, f, _ in CROSS_FIELD])
def test_cross_field_rules_agree_in_the_model_and_the_crd(patch: dict[str, Any], field: str, text: str) -> None:
    obj = copy.deepcopy(MINIMAL)
    obj["spec"].update(patch)
    with pytest.raises(ValidationError) as info:
        FineTuneJob.model_validate({**obj, "metadata": {**obj["metadata"], "namespace": "default"}})
    param, message = spec_error(info.value)
    assert param == field
    assert text in message
    assert validator("finetunejobs").is_valid(obj)  # the OpenAPI schema alone cannot express the rule...
    causes = _cel_causes("finetunejobs", obj)  # ...its CEL rule does, with the model's words
    assert [(c["field"], c["message"]) for c in causes] == [(field, f'Invalid value: "object": {text}')]


@pytest.mark.parametrize("patch", CROSS_FIELD_OK)
def test_what_the_model_allows_the_crd_rules_allow(patch: dict[str, Any]) -> None:
    obj = copy.deepcopy(MINIMAL)
    obj["spec"].update(patch)
    if "inline" in patch.get("trainingData", {}):
        obj["spec"]["trainingData"] = patch["trainingData"]
    FineTuneJob.model_validate({**obj, "metadata": {**obj["metadata"], "namespace": "default"}})
    assert _cel_causes("finetunejobs", obj) == []


@pytest.mark.parametrize("patch,field,text", MSV_CROSS_FIELD, ids=[f for _, f, _ in MSV_CROSS_FIELD])
def test_modelserving_cross_field_rules_agree(patch: dict[str, Any], field: str, text: str) -> None:
    obj = yaml.safe_load((ROOT / "crds" / "samples" / "modelserving.yaml").read_text())
    obj["spec"].update(patch)
    obj["spec"] = {k: v for k, v in obj["spec"].items() if v is not None}
    with pytest.raises(ValidationError) as info:
        ModelServing.model_validate({**obj, "metadata": {**obj["metadata"], "namespace": "default"}})
    assert text in str(info.value)
    causes = _cel_causes("modelservings", obj)
    assert [(c["field"], c["message"]) for c in causes] == [(field, f'Invalid value: "object": {text}')]


def test_the_base_model_of_an_existing_job_cannot_change() -> None:
    old = copy.deepcopy(MINIMAL)
    new = copy.deepcopy(MINIMAL)
    new["spec"]["baseModel"] = {"uri": "org/another-model"}
    assert _cel_causes("finetunejobs", new) == []  # a transition rule: a create has no old object
    causes = _cel_causes("finetunejobs", new, old)
    assert [c["field"] for c in causes] == ["spec.baseModel"]
    assert "baseModel cannot change once a FineTuneJob exists" in causes[0]["message"]
    new["spec"]["baseModel"], new["spec"]["suffix"] = old["spec"]["baseModel"], "other"
    assert _cel_causes("finetunejobs", new, old) == []  # other fields may change


def test_unknown_fields_are_named() -> None:
    obj = copy.deepcopy(MINIMAL)
    obj["spec"]["hyperparameter"] = {"epochs": 3}
    with pytest.raises(ValidationError) as info:
        FineTuneJob.model_validate({**obj, "metadata": {**obj["metadata"], "namespace": "default"}})
    param, message = spec_error(info.value)
    assert param == "spec.hyperparameter" and "not a known field" in message


def test_auto_and_numbers_are_both_accepted() -> None:
    for value in ("auto", 0.5, 2, 1e-1):
        obj = mutate("spec.hyperparameters.learningRateMultiplier", value)
        assert not list(validator("finetunejobs").iter_errors(obj)), value
        FineTuneJob.model_validate({**obj, "metadata": {**obj["metadata"], "namespace": "d"}})


@pytest.mark.parametrize("path,value,field", [
    ("spec.trainingData.uri", "pvc://data/../../../../etc/passwd", "spec.trainingData.uri"),
    ("spec.output.uri", "pvc://models/../../../tmp", "spec.output.uri"),
    ("spec.baseModel.uri", "pvc://models/./base", "spec.baseModel.uri"),
    ("metadata.name", "../../escape", "metadata.name"),
    ("metadata.namespace", "../x", "metadata.namespace"),
], ids=["data", "output", "model", "name", "namespace"])
def test_paths_that_would_leave_their_root_are_refused_naming_the_field(path: str, value: str, field: str) -> None:
    """A pvc:// path stays inside its claim; names (from which hone run builds paths) are Kubernetes names."""
    obj = mutate(path, value)
    obj["metadata"].setdefault("namespace", "default")
    with pytest.raises(ValidationError) as info:
        FineTuneJob.model_validate(obj)
    param, message = spec_error(info.value, FineTuneJob)
    assert param == field and value in message, message
    assert "pvc://" in message or "Kubernetes" in message
