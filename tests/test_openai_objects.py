"""The API's objects against the ``openai`` client's own models: every declared field, with its declared type."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types import FileObject, Model
from openai.types.fine_tuning import FineTuningJob, FineTuningJobEvent
from openai.types.fine_tuning.jobs import FineTuningJobCheckpoint

from hone_operator.api.v1alpha1 import FineTuneJob
from hone_operator.openai_api import objects
from hone_operator.openai_api.errors import ApiError
from hone_operator.openai_api.requests import JobCreate, parse

CREATED = datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc)
STATUSES: dict[str, dict[str, Any]] = {
    "ValidatingFiles": {},
    "Queued": {"estimate": {"hyperparameters": {"epochs": 3, "batchSize": 1, "learningRateMultiplier": 2.0}}},
    "Running": {"startTime": CREATED.isoformat(),
                "progress": {"step": 4, "totalSteps": 30, "trainLoss": 1.5, "trainedTokens": 1200,
                             "estimatedFinish": "2026-12-01T10:00:00Z"}},
    "Succeeded": {"trainedTokens": 9000, "completionTime": "2026-12-01T10:01:00Z",
                  "fineTunedModel": {"name": "ft:smollm2-135m-instruct:team-a:support:0123abcd"}},
    "Failed": {"completionTime": "2026-12-01T09:05:00Z",
               "error": {"code": "invalid_training_file", "message": "training file line 5: no assistant message",
                         "param": "training_file"}},
    "Cancelled": {"completionTime": "2026-12-01T09:05:00Z"},
}


def job(phase: str) -> FineTuneJob:
    return FineTuneJob.model_validate({
        "metadata": {"name": "ftjob-0123456789abcdef01234567", "namespace": "team-a", "creationTimestamp": CREATED,
                     "annotations": {objects.MODEL: "smollm2-135m-instruct", objects.TRAINING_FILE: "file-abc",
                                     objects.METADATA: '{"team": "support"}', objects.RESULT_FILES: '["file-res"]'}},
        "spec": {"baseModel": {"uri": "embedded://smollm2-135m-instruct"}, "trainingData": {"uri": "file:///t.jsonl"},
                 "output": {"uri": "file:///out"}, "suffix": "support"},
        "status": {"phase": phase, **STATUSES[phase]},
    })


def assert_matches(model: type, obj: dict[str, Any]) -> Any:
    missing = set(model.model_fields) - set(obj)
    assert not missing, f"{model.__name__} fields missing: {missing}"
    return model.model_validate(obj, strict=False)


@pytest.mark.parametrize("phase", list(STATUSES))
def test_a_finetunejob_in_every_phase_is_a_valid_fine_tuning_job(phase: str) -> None:
    out = assert_matches(FineTuningJob, objects.job_object(job(phase), "org-team-a"))
    assert out.status == objects.STATUS[phase] and out.created_at == int(CREATED.timestamp())
    assert out.model == "smollm2-135m-instruct" and out.metadata == {"team": "support"}
    assert (out.fine_tuned_model is not None) == (phase == "Succeeded")
    assert (out.trained_tokens == 9000) == (phase == "Succeeded")
    assert (out.error is not None) == (phase == "Failed")
    assert (out.finished_at is not None) == (phase in ("Succeeded", "Failed", "Cancelled"))
    assert (out.estimated_finish is not None) == (phase == "Running")
    if phase == "Failed":
        assert out.error.code == "invalid_training_file" and out.error.param == "training_file"
    if phase == "Queued":
        assert out.hyperparameters.n_epochs == 3 and out.hyperparameters.learning_rate_multiplier == 2.0


def test_a_suspended_job_is_paused() -> None:
    """The one status outside the client's declared values: OpenAI's pause has no status of its own there."""
    suspended = job("Queued")
    suspended.status = type(suspended.status).model_validate({"phase": "Suspended"})
    obj = objects.job_object(suspended, "org")
    assert obj["status"] == "paused"


def test_files_events_checkpoints_and_models_match_the_client_models() -> None:
    assert_matches(FileObject, objects.file_object({"id": "file-x", "bytes": 10, "created_at": 1,
                                                    "filename": "t.jsonl", "purpose": "fine-tune"}))
    event = assert_matches(FineTuningJobEvent, objects.event_object(
        {"id": "ftevent-1", "created_at": 1, "message": "Step 1/2", "type": "metrics", "data": {"step": 1}}))
    assert event.type == "metrics" and event.level == "info"
    ckpt = assert_matches(FineTuningJobCheckpoint, objects.checkpoint_object(
        job("Succeeded"), 12, 5, {"train_loss": 0.5, "validation_loss": 0.7}))
    assert ckpt.fine_tuned_model_checkpoint == "ft:smollm2-135m-instruct:team-a:support:0123abcd:ckpt-step-12"
    assert ckpt.metrics.full_valid_loss == 0.7 and ckpt.metrics.train_loss == 0.5 and ckpt.step_number == 12
    assert_matches(Model, objects.model_object("tiny", 1, "hone"))


def test_results_csv_has_openais_columns() -> None:
    csv = objects.results_csv([{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}], [{"step": 2, "loss": 1.7}])
    assert csv.splitlines() == ["step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy",
                                "1,2.0,,,", "2,1.5,,1.7,"]


def test_pages_follow_after_cursors() -> None:
    items = [{"id": f"x{i}"} for i in range(5)]
    first = objects.page(items, None, 2)
    assert [i["id"] for i in first["data"]] == ["x0", "x1"] and first["has_more"] and first["last_id"] == "x1"
    last = objects.page(items, "x3", 2)
    assert [i["id"] for i in last["data"]] == ["x4"] and not last["has_more"]
    assert objects.page(items, "gone", 2)["data"] == []


@pytest.mark.parametrize("body, param, words", [
    ({"training_file": "file-x"}, "model", "Missing required parameter"),
    ({"model": "m", "training_file": "f", "n_epochs": 3}, "n_epochs", "Unrecognized request argument"),
    ({"model": "m", "training_file": "f", "hyperparameters": {"batch_size": -1}}, "hyperparameters.batch_size",
     "greater than 0"),
    ({"model": "m", "training_file": "f", "metadata": {f"k{i}": "v" for i in range(17)}}, "metadata", "16 keys"),
])
def test_job_requests_are_checked_as_openai_checks_them(body: dict[str, Any], param: str, words: str) -> None:
    with pytest.raises(ApiError) as err:
        parse(JobCreate, body)
    assert err.value.status == 400 and err.value.param == param and words in err.value.message


def test_hyperparameters_come_from_method_or_the_deprecated_field_not_both() -> None:
    nested = parse(JobCreate, {"model": "m", "training_file": "f", "method": {
        "type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}}})
    assert nested.resolved_hyperparameters().n_epochs == 2
    assert parse(JobCreate, {"model": "m", "training_file": "f", "hyperparameters": {"batch_size": 4}}
                 ).resolved_hyperparameters().batch_size == 4
    both = parse(JobCreate, {"model": "m", "training_file": "f", "hyperparameters": {"n_epochs": 1},
                             "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}}})
    with pytest.raises(ApiError) as err:
        both.resolved_hyperparameters()
    assert err.value.param == "hyperparameters"
    with pytest.raises(ApiError) as err:
        parse(JobCreate, {"model": "m", "training_file": "f", "suffix": "Has Spaces"}).hone_suffix()
    assert err.value.param == "suffix"
    assert parse(JobCreate, {"model": "m", "training_file": "f", "suffix": "Support-Bot"}).hone_suffix() == \
        "support-bot"


def test_a_job_whose_model_is_published_but_still_evaluating_has_no_fine_tuned_model_yet() -> None:
    """Hone publishes before its evaluation step ends; OpenAI's job names its model only once it succeeded."""
    evaluating = job("Running")
    evaluating.status.fineTunedModel = job("Succeeded").status.fineTunedModel
    out = objects.job_object(evaluating, "org-team-a")
    assert out["status"] == "running" and out["fine_tuned_model"] is None
    assert objects.job_object(job("Succeeded"), "org-team-a")["fine_tuned_model"]


class _Pool:
    """Where ``hone api --local`` would start its model server: records what it was asked to serve."""

    def __init__(self) -> None:
        self.targets: list[Any] = []

    def url(self, target: Any) -> str:
        self.targets.append(target)
        raise ApiError(503, "no model server in this test", type="server_error", code="model_unavailable")

    def stop(self) -> None:
        pass


@pytest.mark.parametrize("override", [False, True])
def test_hone_api_local_refuses_a_fine_tune_that_failed_its_safety_check(tmp_path: Path, override: bool) -> None:
    """The status the local worker writes after a failed gate (the gate itself runs for real in
    tests/test_openai_api.py and on the node): the openai client gets a 403 naming the rates and what serves it
    anyway, and the model server is never given the fine-tune; with --serve-despite-failed-safety-check it is."""
    from starlette.testclient import TestClient

    from hone_operator.openai_api.app import Api, create_app
    from hone_operator.openai_api.local import LocalBackend, LocalStore, Worker
    from hone_operator.settings import OperatorSettings

    store = LocalStore(tmp_path, OperatorSettings.model_validate({"catalog": {"tiny": {"uri": "file:///m/tiny"}}}))
    data = store.create_file("default", "t.jsonl", "fine-tune", b'{"messages": []}\n')
    created = store.create_job("default", parse(JobCreate, {"model": "tiny", "training_file": data["id"]}))
    name = f"ft:tiny:default::{created.metadata.uid[:8]}"
    gate = {"requests": 32, "baseRefusalRate": 0.5, "fineTunedRefusalRate": 0.125, "maxRefusalDrop": 0.1,
            "judge": "heuristic", "passed": False}
    store.set_status("default", created.metadata.name, phase="Succeeded", evaluation={"safety": gate},
                     fineTunedModel={"name": name, "artifactUri": str(tmp_path / "model")})
    pool = _Pool()
    app = create_app(Api(LocalBackend(store, Worker(store), pool, None, serve_despite_failed_safety_check=override)))
    client = openai.OpenAI(base_url="http://testserver/v1", api_key="sk-local", max_retries=0,
                           http_client=TestClient(app))
    hi = [{"role": "user", "content": "hi"}]
    if override:
        with pytest.raises(openai.InternalServerError, match="no model server in this test"):
            client.chat.completions.create(model=name, messages=hi)
        assert (name, str(tmp_path / "model")) in pool.targets[-1].adapters
        return
    with pytest.raises(openai.PermissionDeniedError) as refused:
        client.chat.completions.create(model=name, messages=hi)
    assert refused.value.code == "model_failed_safety_check" and refused.value.body["message"] == (
        f"{name} failed its safety check: it declines 12.5% of the safety suite, its base model 50.0% (allowed drop "
        "10 points); it is not served. Fine-tune again with safer data, or start hone api with "
        "--serve-despite-failed-safety-check to serve it anyway.")
    assert pool.targets == []
    with pytest.raises(openai.InternalServerError):  # the base model is served, without the fine-tune
        client.chat.completions.create(model="tiny", messages=hi)
    assert pool.targets[-1].base_name == "tiny" and pool.targets[-1].adapters == ()
