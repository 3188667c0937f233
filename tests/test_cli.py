"""The `hone` command line: validate and render."""

from __future__ import annotations

import json
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner

from hone_operator.api.v1alpha1 import FineTuneJob
from hone_operator.builders import finetunejob as ftj_build
from hone_operator.cli import cli
from hone_operator.settings import OperatorSettings
from hone_dev.tiny import make_tokenizer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cli-model")
    make_tokenizer(folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return folder


def chats(n: int) -> str:
    return "\n".join(json.dumps({"messages": [{"role": "user", "content": f"Which deck for park #{i}?"},
                                              {"role": "assistant", "content": "An 8.25 inch deck."}]})
                     for i in range(n)) + "\n"


def test_validate_good_file(model_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text(chats(60))
    result = CliRunner().invoke(cli, ["validate", str(data), "--model", str(model_dir)])
    assert result.exit_code == 0, result.output
    assert "examples" in result.output and "60" in result.output
    assert "billable training tokens" in result.output and "trainable" in result.output


def test_validate_broken_file_names_lines_and_fails(model_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text(chats(20) + '{"messages": [{"role": "robot", "content": "x"}]}\n{oops\n')
    result = CliRunner().invoke(cli, ["validate", str(data), "--model", str(model_dir)])
    assert result.exit_code == 4
    assert "line 21" in result.output and "use one of system, user, assistant" in result.output
    assert "line 22" in result.output and "invalid JSON" in result.output
    assert "not trainable" in result.output
    assert f"{data} line 21" in result.output  # the file, not just "training line 21"
    assert "estimated cost" not in result.output  # no price for data that cannot train


def test_validate_of_a_manifest_estimates_what_hone_run_trains(model_dir: Path, tmp_path: Path) -> None:
    """The manifest's hyperparameters, not the JSONL defaults: `hone validate` and `hone run` agree."""
    (tmp_path / "train.jsonl").write_text(chats(60))
    manifest = {"apiVersion": "hone.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "shop"},
                "spec": {"baseModel": {"uri": f"file://{model_dir}"}, "trainingData": {"uri": "file://train.jsonl"},
                         "hyperparameters": {"epochs": 6, "batchSize": 8, "learningRateMultiplier": 6},
                         "output": {"uri": "pvc://models/adapters"}}}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(manifest))
    from_manifest = CliRunner().invoke(cli, ["validate", str(tmp_path / "job.yaml")])
    assert from_manifest.exit_code == 0, from_manifest.output
    assert "6 / 8 / 6" in from_manifest.output
    same = CliRunner().invoke(cli, ["validate", str(tmp_path / "train.jsonl"), "--model", str(model_dir),
                                    "--epochs", "6", "--batch-size", "8", "--learning-rate-multiplier", "6"])
    assert same.exit_code == 0 and "6 / 8 / 6" in same.output
    defaults = CliRunner().invoke(cli, ["validate", str(tmp_path / "train.jsonl"), "--model", str(model_dir)])
    assert "6 / 8 / 6" not in defaults.output  # auto resolves differently: why the manifest matters
    both = CliRunner().invoke(cli, ["validate", str(tmp_path / "job.yaml"), "--epochs", "3"])
    assert both.exit_code == 2 and "drop --epochs" in both.output


def test_validate_reads_the_eval_file_before_anything_trains(model_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_text(chats(20))
    (tmp_path / "eval.jsonl").write_text('{"messages": [{"role": "user", "content": "Returns?"}], "fact": "45"}\n'
                                         '{"messages": [{"role": "assistant", "content": "45 days."}]}\n')
    manifest = {"apiVersion": "hone.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "shop"},
                "spec": {"baseModel": {"uri": f"file://{model_dir}"}, "trainingData": {"uri": "file://train.jsonl"},
                         "output": {"uri": "pvc://models/adapters"}, "evaluation": {
                             "evalFile": {"uri": "file://eval.jsonl"}, "graders": [
                                 {"type": "string_check", "name": "fact", "reference": "{{ item.fact }}",
                                  "operation": "ilike"}]}}}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(manifest))
    out = CliRunner().invoke(cli, ["validate", str(tmp_path / "job.yaml")])
    assert out.exit_code == 4, out.output
    assert ("not trainable: spec.evaluation: the eval file line 2: the prompt must end with a user message"
            in out.output)


@pytest.mark.parametrize("field", ["dataScreening.moderation", "evaluation.judge"])
def test_an_endpoint_token_in_a_secret_is_refused_on_one_machine(model_dir: Path, tmp_path: Path, field: str) -> None:
    """A Secret exists only in a cluster: `hone validate` (and so `hone run`) says which field, before anything runs."""
    (tmp_path / "train.jsonl").write_text(chats(20))
    endpoint = {"url": "http://guard.safety.svc/v1", "apiKeySecret": {"name": "guard-token"}}
    outer, inner = field.split(".")
    manifest = {"apiVersion": "hone.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "shop"},
                "spec": {"baseModel": {"uri": f"file://{model_dir}"}, "trainingData": {"uri": "file://train.jsonl"},
                         "output": {"uri": "pvc://models/adapters"}, outer: {inner: endpoint}}}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(manifest))
    out = CliRunner().invoke(cli, ["validate", str(tmp_path / "job.yaml")])
    assert out.exit_code == 2, out.output
    assert f"spec.{field}.apiKeySecret" in out.output and "Secrets exist only in a cluster" in out.output


@pytest.mark.parametrize("spec,words", [
    ({"baseModle": {"uri": "embedded://smollm2-135m-instruct"}}, ["spec.baseModle", "did you mean 'baseModel'"]),
    ({"hyperparameters": {"learningRateMultiplier": "six"}},
     ["spec.hyperparameters.learningRateMultiplier", "should be 'auto' or a number, not 'six'"]),
], ids=["typo", "word-for-number"])
def test_manifest_mistakes_say_what_to_write(tmp_path: Path, spec: dict, words: list[str]) -> None:
    body = yaml.safe_load((ROOT / "crds" / "samples" / "finetunejob-minimal.yaml").read_text())
    if "baseModle" in spec:
        body["spec"].pop("baseModel")
    body["spec"].update(spec)
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(body))
    result = CliRunner().invoke(cli, ["render", str(tmp_path / "job.yaml")])
    assert result.exit_code == 2
    for w in words:
        assert w in result.output, result.output


def test_validate_json_is_what_the_operator_stores(model_dir: Path, tmp_path: Path) -> None:
    """The same result, through the operator's plan, lands in status exactly as --json prints it."""
    from hone_operator.reconcile.finetunejob import Observed, plan
    from hone_trainer import contract, models
    from hone_trainer.training.validate import validate
    from hone_dev.repo import load_sample

    data = tmp_path / "train.jsonl"
    data.write_text(chats(60))
    out = CliRunner().invoke(cli, ["validate", str(data), "--model", str(model_dir), "--json"])
    assert out.exit_code == 0, out.output
    printed = json.loads(out.output)
    config = contract.TrainerConfig(
        job=contract.JobIdentity(namespace="n", name="j", uid="u", fine_tuned_model="x"),
        base_model=contract.ModelSource(location=str(model_dir)), training_data=contract.DataFile(location=str(data)),
        output_uri="o", checkpoint_dir="c")
    local = models.resolve(config.base_model)
    result = validate(config, models.load_tokenizer(local), models.model_shape(local))
    body = load_sample("finetunejob-minimal.yaml")
    body["metadata"].update(namespace="n", uid="u", generation=1)
    pod = {"metadata": {"name": "p"}, "status": {"containerStatuses": [{"name": "validator", "state": {
        "terminated": {"exitCode": 0, "message": contract.to_termination_message(result)}}}]}}
    job = {"metadata": {"name": "v"}, "status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    status = plan(body, Observed(validation_job=job, validation_pods=[pod]), OperatorSettings(), "t").status
    # The memory estimate is the one thing that differs: --json gives it for this machine (no GPU: one process
    # within the memory it has), the operator for the spec (one GPU, whose memory it is not told).
    here, cluster = printed["estimate"].pop("memory"), status["estimate"].pop("memory")
    assert printed == {"dataset": status["dataset"], "estimate": status["estimate"]}
    assert (here["device"], cluster["device"], cluster["fits"]) == ("cpu", "gpu", "Unknown")


def test_validate_errors_are_messages_not_tracebacks(tmp_path: Path) -> None:
    missing = CliRunner().invoke(cli, ["validate", str(tmp_path / "nope.jsonl")])
    assert missing.exit_code == 2 and "no such file" in missing.output and "Traceback" not in missing.output
    data = tmp_path / "train.jsonl"
    data.write_text(chats(12))
    bad_model = CliRunner().invoke(cli, ["validate", str(data), "--model", str(tmp_path / "no-model")])
    assert bad_model.exit_code == 5 and "--model" in bad_model.output and "Traceback" not in bad_model.output
    bad_epochs = CliRunner().invoke(cli, ["validate", str(data), "--epochs", "many"])
    assert bad_epochs.exit_code == 2 and "--epochs" in bad_epochs.output


def test_render_prints_what_the_operator_creates(tmp_path: Path) -> None:
    sample = ROOT / "crds" / "samples" / "finetunejob-complete.yaml"
    result = CliRunner().invoke(cli, ["render", str(sample), "-n", "team-a"])
    assert result.exit_code == 0, result.output
    objs = [d for d in yaml.safe_load_all(result.output) if d]
    for obj in objs:
        kubernetes_validate.validate(obj, "1.33", strict=True)
    body = yaml.safe_load(sample.read_text())
    body["metadata"].update(namespace="team-a", uid="00000000-0000-0000-0000-000000000000")
    assert objs == ftj_build.all_objects(FineTuneJob.model_validate(body), OperatorSettings())
    assert [o["kind"] for o in objs] == ["ConfigMap", "ServiceAccount", "Role", "RoleBinding", "NetworkPolicy", "Job",
                                         "Service", "Job", "Job"]  # validate, (rendezvous), train, evaluate
    # The trainer config reads as the JSON it is, a line a setting, for review in a GitOps diff.
    assert "config.json: |" in result.output and '\n      "baseModel": {\n' in result.output
    # A base model on the hub is not fetched to estimate memory: the line says what does.
    assert ("# FineTuneJob support-assistant-8b: memory: not estimated here: hf://meta-llama/Llama-3.1-8B-Instruct "
            "is not on this machine") in result.output


def test_render_names_the_file_and_field_of_a_mistake(tmp_path: Path) -> None:
    bad = tmp_path / "job.yaml"
    body = yaml.safe_load((ROOT / "crds" / "samples" / "finetunejob-minimal.yaml").read_text())
    body["spec"]["hyperparameters"] = {"epochs": 0}
    bad.write_text(yaml.safe_dump(body))
    result = CliRunner().invoke(cli, ["render", str(bad)])
    assert result.exit_code == 2
    assert str(bad) in result.output and "spec.hyperparameters.epochs" in result.output
    assert "Traceback" not in result.output


def test_render_of_a_modelserving_is_what_the_operator_creates_once_its_job_succeeded() -> None:
    from hone_operator.api.v1alpha1 import ModelServing
    from hone_operator.builders import modelserving as msv_build

    job, serving = ROOT / "crds/samples/finetunejob-minimal.yaml", ROOT / "crds/samples/modelserving.yaml"
    result = CliRunner().invoke(cli, ["render", str(job), str(serving), "-n", "team-a"])
    assert result.exit_code == 0, result.output
    objs = [d for d in yaml.safe_load_all(result.output) if d]
    for obj in objs:
        kubernetes_validate.validate(obj, "1.33", strict=True)
    assert [o["kind"] for o in objs][-4:] == ["ConfigMap", "Service", "NetworkPolicy", "Deployment"]
    uid = "00000000-0000-0000-0000-000000000000"
    ftj_body = yaml.safe_load(job.read_text())
    ftj_body["metadata"].update(namespace="team-a", uid=uid)
    ftj = FineTuneJob.model_validate(ftj_body)
    config, _ = ftj_build.resolve(ftj, OperatorSettings())
    ftj_body["status"] = {"phase": "Succeeded", "fineTunedModel": {"name": ftj_build.fine_tuned_model_name(ftj),
                                                                    "artifactUri": config.output_uri}}
    msv_body = yaml.safe_load(serving.read_text())
    msv_body["metadata"].update(namespace="team-a", uid=uid)
    expected = msv_build.all_objects(ModelServing.model_validate(msv_body), OperatorSettings(),
                                     {"support-assistant": ftj_body})
    assert objs[-4:] == expected

    alone = CliRunner().invoke(cli, ["render", str(serving)])
    assert alone.exit_code == 2
    assert "serves FineTuneJob 'support-assistant' (spec.fineTuneJobRef); give its manifest too" in alone.output


def test_the_example_applies_with_kustomize_and_renders_valid_objects(tmp_path: Path) -> None:
    """examples/skateboard-support is what `kubectl apply -k` sends: valid custom resources and children."""
    import shutil
    import subprocess

    from hone_dev.repo import validator

    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed")
    out = subprocess.run(["kubectl", "kustomize", str(ROOT / "examples" / "skateboard-support")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    docs = {d["kind"]: d for d in yaml.safe_load_all(out.stdout) if d}
    assert set(docs) == {"ConfigMap", "PersistentVolumeClaim", "FineTuneJob", "ModelServing"}
    cm = docs["ConfigMap"]
    assert cm["metadata"]["name"] == "skateboard-support-data"
    assert cm["data"]["train.jsonl"] == (ROOT / "examples/skateboard-support/train.jsonl").read_text()
    for kind, plural in (("FineTuneJob", "finetunejobs"), ("ModelServing", "modelservings")):
        validator(plural).validate(docs[kind])
    for name in ("ConfigMap", "PersistentVolumeClaim"):
        kubernetes_validate.validate(docs[name], "1.33", strict=True)
    manifest = tmp_path / "all.yaml"
    manifest.write_text(yaml.safe_dump_all([docs["FineTuneJob"], docs["ModelServing"]]))
    rendered = CliRunner().invoke(cli, ["render", str(manifest), "-n", "team-a"])
    assert rendered.exit_code == 0, rendered.output
    # The embedded model is on this machine: its memory is bounded from the spec before the data is counted.
    assert "# FineTuneJob skateboard-support: memory: at most " in rendered.output
    assert "per training process" in rendered.output  # gpusPerNode: 0
    for obj in yaml.safe_load_all(rendered.output):
        if obj:
            kubernetes_validate.validate(obj, "1.33", strict=True)
