"""The FineTuneJob lifecycle as a pure function: same world in, same plan out."""

from __future__ import annotations

import copy
from typing import Any

from hone_operator.api.v1alpha1 import RECONCILE_REQUESTED_AT
from hone_operator.reconcile.finetunejob import Observed, plan
from hone_operator.settings import OperatorSettings
from hone_trainer import contract
from hone_dev.repo import load_sample

SETTINGS = OperatorSettings()
TS = "2026-11-21T10:00:00Z"


def body(**spec: Any) -> dict[str, Any]:
    obj = load_sample("finetunejob-minimal.yaml")
    obj["metadata"].update(namespace="ns", uid="u-1", generation=1, resourceVersion="7")
    obj["spec"].update(spec)
    return obj


def job(name: str, *conditions: str, **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "uid": "j"}, "spec": {"suspend": False},
            "status": {"conditions": [{"type": c, "status": "True", "reason": "X"} for c in conditions], **status}}


def pod(container: str, exit_code: int, message: str, created: str = "2026-11-21T09:00:00Z") -> dict[str, Any]:
    return {"metadata": {"name": f"p-{created}", "creationTimestamp": created},
            "status": {"containerStatuses": [{"name": container, "state": {
                "terminated": {"exitCode": exit_code, "message": message}}}]}}


def converge(b: dict[str, Any], obs: Observed) -> dict[str, Any]:
    """Apply the plan's status patch to the body, as the API server would."""
    p = plan(b, obs, SETTINGS, TS)
    out = copy.deepcopy(b)
    out["status"] = {**(out.get("status") or {}), **(p.status or {})}
    return out


def test_new_job_creates_config_rbac_and_validation_job() -> None:
    p = plan(body(), Observed(), SETTINGS, TS)
    assert [o["kind"] for o in p.ensure] == ["ConfigMap", "ServiceAccount", "Role", "RoleBinding", "NetworkPolicy",
                                             "Job"]
    assert p.status["phase"] == "ValidatingFiles"
    assert [e.reason for e in p.events] == ["ValidatingFiles"]


def test_a_converged_world_plans_nothing() -> None:
    """Level-based: replanning from the state the last plan produced writes nothing."""
    obs = Observed(validation_job=job("support-assistant-validate"))
    b = converge(body(), Observed())
    assert plan(b, obs, SETTINGS, "2026-11-21T11:00:00Z").empty
    good = contract.to_termination_message(contract.ValidationResult(
        ok=True, examples=50, tokens_per_epoch=1000, hyperparameters=contract.resolve_hyperparameters(50),
        billable_training_tokens=3000))
    obs = Observed(validation_job=job("v", "Complete"), validation_pods=[pod("validator", 0, good)])
    b = converge(b, obs)
    assert b["status"]["phase"] == "Queued"
    obs.training_job = job("support-assistant-train")
    assert plan(b, obs, SETTINGS, "2026-11-21T12:00:00Z").empty


def test_the_training_job_runs_the_config_validation_resolved() -> None:
    """The ConfigMap the validator read says auto; before the training Job that mounts it, it is brought in
    line with the values and counts ValidatingFiles put in the status (the estimate)."""
    import json

    b = converge(body(), Observed())
    hp = contract.resolve_hyperparameters(50)
    good = contract.to_termination_message(contract.ValidationResult(
        ok=True, examples=50, tokens_per_epoch=1000, hyperparameters=hp, billable_training_tokens=1000 * hp.epochs))
    obs = Observed(validation_job=job("v", "Complete"), validation_pods=[pod("validator", 0, good)])
    b = converge(b, obs)
    p = plan(b, obs, SETTINGS, TS)
    assert [o["kind"] for o in p.ensure] == ["ConfigMap", "NetworkPolicy", "Job"]
    config = contract.TrainerConfig.model_validate(json.loads(p.ensure[0]["data"][contract.CONFIG_FILE]))
    assert not config.unresolved() and (config.epochs, config.batch_size) == (hp.epochs, hp.batch_size)
    assert config.learning_rate_multiplier == hp.learning_rate_multiplier
    assert config.validated == contract.ValidatedData(examples=50, tokens_per_epoch=1000)
    validator = plan(body(), Observed(), SETTINGS, TS).ensure[0]
    assert validator["metadata"]["name"] == p.ensure[0]["metadata"]["name"]
    assert json.loads(validator["data"][contract.CONFIG_FILE])["epochs"] == "auto"


def test_final_phases_are_never_left() -> None:
    """A final job creates, resumes and retries nothing, whatever its spec now says. It records the generation
    it saw (Argo CD showed an edited finished job as Progressing forever) and answers a reconcile request."""
    for phase in ("Succeeded", "Failed", "Cancelled"):
        b = body(cancel=False)
        b["status"] = {"phase": phase, "observedGeneration": 1}
        assert plan(b, Observed(), SETTINGS, TS).empty
        b["metadata"]["generation"] = 2
        b["metadata"]["annotations"] = {RECONCILE_REQUESTED_AT: "2026-12-03T10:00:00Z"}
        p = plan(b, Observed(), SETTINGS, TS)
        assert p.status == {"observedGeneration": 2, "lastHandledReconcileAt": "2026-12-03T10:00:00Z"}
        assert not (p.ensure or p.patches or p.deletes or p.events)


def test_a_reconcile_request_is_answered_in_the_status() -> None:
    b = converge(body(), Observed())
    b["metadata"]["annotations"] = {RECONCILE_REQUESTED_AT: "r1"}
    p = plan(b, Observed(validation_job=job("support-assistant-validate")), SETTINGS, TS)
    assert p.status == {"lastHandledReconcileAt": "r1"} and not (p.ensure or p.patches or p.events)
    b["status"].update(p.status)
    assert plan(b, Observed(validation_job=job("support-assistant-validate")), SETTINGS, TS).empty


def test_generation_change_updates_observed_generation_only() -> None:
    b = converge(body(), Observed())
    b["metadata"]["generation"] = 2
    p = plan(b, Observed(validation_job=job("v")), SETTINGS, TS)
    assert p.status["observedGeneration"] == 2
    assert not p.ensure and not p.events
    assert all(c["observedGeneration"] == 2 for c in p.status["conditions"])


def test_result_is_read_from_the_successful_pod_not_a_preempted_one() -> None:
    b = converge(body(), Observed())
    b["status"]["conditions"] = [{"type": "FilesValidated", "status": "True", "reason": "Validated"}]
    ok = contract.to_termination_message(contract.TrainingResult(ok=True, artifact_uri="s3://b/m", trained_tokens=9))
    pods = [pod("trainer", 137, "", "2026-11-21T09:00:00Z"), pod("trainer", 0, ok, "2026-11-21T09:30:00Z")]
    p = plan(b, Observed(validation_job=job("v", "Complete"), training_job=job("t", "Complete"),
                         training_pods=pods), SETTINGS, TS)
    assert p.status["fineTunedModel"] == {"name": "ft:smollm2-135m-instruct:ns::u1", "artifactUri": "s3://b/m"}
    assert p.status["trainedTokens"] == 9
    # Published: the evaluation step is next, and only its result makes the job Succeeded.
    assert p.status["phase"] == "Running" and [o["metadata"]["name"] for o in p.ensure] == ["support-assistant-eval"]
    b["status"].update(p.status)
    gate = contract.SafetyGate(requests=32, base_refusal_rate=0.5, fine_tuned_refusal_rate=0.5, max_refusal_drop=0.1,
                               judge="heuristic", passed=True)
    done = contract.to_termination_message(contract.EvaluationResult(ok=True, safety=gate))
    p = plan(b, Observed(validation_job=job("v", "Complete"), training_job=job("t", "Complete"),
                         evaluation_job=job("e", "Complete"), evaluation_pods=[pod("evaluator", 0, done)]),
             SETTINGS, TS)
    assert p.status["phase"] == "Succeeded" and p.status["evaluation"]["safety"]["passed"] is True


def test_training_job_failure_reports_the_last_pods_output() -> None:
    b = converge(body(), Observed())
    b["status"]["conditions"] = [{"type": "FilesValidated", "status": "True", "reason": "Validated"}]
    pods = [pod("trainer", 1, "RuntimeError: CUDA error: an illegal memory access was encountered")]
    p = plan(b, Observed(training_job=job("t", "Failed"), training_pods=pods), SETTINGS, TS)
    assert p.status["phase"] == "Failed"
    assert p.status["error"]["code"] == "training_failed"
    assert "illegal memory access" in p.status["error"]["message"]
    assert "exit code 1" in p.status["error"]["message"]
    # Killed for memory (torchrun's worker: torchrun itself exits 1): the field to change is named.
    oom = pod("trainer", 1, "[rank0]: loading the model")
    oom["status"]["containerStatuses"][0]["state"]["terminated"]["reason"] = "OOMKilled"
    p = plan(b, Observed(training_job=job("t", "Failed"), training_pods=[oom]), SETTINGS, TS)
    assert p.status["error"] == {
        "code": "out_of_memory", "param": "spec.resources.memory",
        "message": "training Job support-assistant-train failed (X); last pod: exit code 1 (OOMKilled: it used "
                   "more memory than its limit): [rank0]: loading the model; the training pod's memory limit is "
                   f"{SETTINGS.training_resources.memory}: raise spec.resources.memory"}


def test_lost_condition_history_is_rebuilt_not_duplicated() -> None:
    """Conditions keep their lastTransitionTime while their status holds."""
    b = converge(body(), Observed())
    first = {c["type"]: c for c in b["status"]["conditions"]}
    p = plan(b, Observed(validation_job=job("v")), SETTINGS, "2026-11-21T13:00:00Z")
    assert p.empty
    b["metadata"]["generation"] = 3
    p = plan(b, Observed(validation_job=job("v")), SETTINGS, "2026-11-21T13:00:00Z")
    again = {c["type"]: c for c in p.status["conditions"]}
    assert again["FilesValidated"]["lastTransitionTime"] == first["FilesValidated"]["lastTransitionTime"]
