"""The real operator process against the emulated API server.

The tests play the Job controller (they create pods, terminate them with
exit codes and termination messages, and mark Jobs Complete or Failed), and
check what a user sees: phases, conditions, status, children, Events and
metrics.
"""

from __future__ import annotations

import json
import pytest

from hone_operator.kube import Kube
from hone_trainer import contract
from hone_dev.repo import load_sample
from hone_dev.resources import (
    API, NAME, NS, apply, condition, evaluated, finish_training, good_validation, handled, operator_writes, patch_spec,
    published, validate_ok,
)
from hone_dev.apiserver import ApiServerThread
from hone_dev.cluster import (
    OperatorProcess,
    finish_job,
    ftj,
    get_job,
    jobs,
    make_pod,
    phase,
    seed_namespace,
    set_job_status,
    terminate_pod,
    wait_admitted,
    wait_for,
    wait_phase,
)


def test_happy_path_from_apply_to_succeeded(kube: Kube, operator: OperatorProcess, apiserver: ApiServerThread) -> None:
    apply(kube)
    obj = wait_phase(kube, NS, NAME, "ValidatingFiles")
    assert condition(obj, "FilesValidated")["status"] == "Unknown"
    assert obj["status"]["observedGeneration"] == 1
    vjob = get_job(kube, NS, f"{NAME}-validate")
    assert vjob["spec"]["template"]["spec"]["containers"][0]["command"] == [
        "python", "-m", "hone_trainer", "validate", "--config", "/etc/hone/config.json",
        "--result", "/dev/termination-log"]
    assert get_job(kube, NS, f"{NAME}-train") is None  # nothing trains before the data is checked

    finish_job(kube, NS, f"{NAME}-validate", "validator", 0, good_validation())
    obj = wait_admitted(kube, NS, NAME)
    assert obj["status"]["phase"] == "Queued"
    assert obj["status"]["dataset"]["examples"] == 120
    assert obj["status"]["dataset"]["tokensPerEpoch"] == 50_000
    # The namespace had no TokenBudget: the operator made the default one (1M free tokens a day), and the
    # estimate, all of it within the allowance, costs nothing.
    assert obj["status"]["estimate"] == {
        "billableTrainingTokens": 150_000, "costUsd": 0.0, "freeTokens": 150_000, "usdPerMillionTokens": 25.0,
        "hyperparameters": {"epochs": 3, "batchSize": 1, "learningRateMultiplier": 2.0}}
    assert condition(obj, "BudgetAdmitted")["message"] == \
        "reserved 150,000 training tokens (150,000 free, $0.00) in TokenBudget 'default'"
    budget = kube.get(API, "TokenBudget", NS, "default")
    assert [(r["job"], r["tokens"]) for r in budget["status"]["reservations"]] == [(NAME, 150_000)]
    assert condition(obj, "FilesValidated")["status"] == "True"
    assert condition(obj, "Running")["reason"] == "WaitingForPods"

    set_job_status(kube, NS, f"{NAME}-train", active=1, ready=1)
    obj = wait_phase(kube, NS, NAME, "Running")
    assert obj["status"]["startTime"]

    # The trainer reports progress through the status subresource.
    progress = contract.Progress(step=12, total_steps=30, epoch=1.2, train_loss=0.9, trained_tokens=60_000,
                                 tokens_per_second=2500.0)
    kube.patch(API, "FineTuneJob", NS, NAME, {"status": {"progress": progress.to_json_dict()}}, subresource="status")
    wait_for(lambda: 'hone_training_tokens_total{base_model="HuggingFaceTB/SmolLM2-135M-Instruct",'
                     f'finetunejob="{NAME}",namespace="{NS}"}} 60000.0' in operator.metrics(),
             what="training tokens metric")
    assert ftj(kube, NS, NAME)["status"]["progress"]["percent"] == 40

    finish_training(kube)
    obj = wait_phase(kube, NS, NAME, "Succeeded")
    status = obj["status"]
    assert status["fineTunedModel"]["name"].startswith("ft:smollm2-135m-instruct:team-a::")
    assert status["fineTunedModel"]["artifactUri"] == f"pvc://hone-models/adapters/{NS}/{NAME}/model"
    assert status["trainedTokens"] == 150_000
    assert status["checkpoints"][0]["step"] == 30
    assert status["completionTime"]
    assert condition(obj, "Succeeded")["status"] == "True"
    assert status["progress"]["step"] == 12  # the trainer's field is never overwritten

    reasons = wait_for(lambda: {e["reason"] for e in kube.list("v1", "Event", NS)} >= {
        "ValidatingFiles", "Queued", "Running", "Succeeded"} and [e["reason"] for e in kube.list("v1", "Event", NS)])
    assert reasons.count("Succeeded") == 1
    metrics = wait_for(lambda: (m := operator.metrics()) and f'hone_finetunejobs{{namespace="{NS}",phase="Succeeded"}} 1.0' in m and m)
    assert f'hone_training_tokens_total{{base_model="HuggingFaceTB/SmolLM2-135M-Instruct",finetunejob="{NAME}",namespace="{NS}"}} 150000.0' in metrics
    assert f'hone_cost_usd_total{{finetunejob="{NAME}",kind="training",namespace="{NS}"}} 0.0' in metrics
    assert f'hone_training_free_tokens_total{{finetunejob="{NAME}",namespace="{NS}"}} 150000.0' in metrics
    # Its TokenBudget charged what it trained, once; the job's status says so (written right after the budget).
    budget = wait_for(lambda: (b := kube.get(API, "TokenBudget", NS, "default")) and
                      not b["status"].get("reservations") and b)
    assert budget["status"]["training"]["tokensToday"] == budget["status"]["training"]["freeTokensToday"] == 150_000
    use = wait_for(lambda: (u := ftj(kube, NS, NAME)["status"]["budget"]).get("settledAt") and u,
                   what="the charge in the job's status")
    assert use["settledTokens"] == 150_000

    # Converged: the operator writes nothing more, whatever else happens around it. Once it has handled a
    # reconcile request made after the change, its only write since is the answer to that request.
    before = len(operator_writes(apiserver))
    kube.patch(API, "FineTuneJob", NS, NAME, {"metadata": {"labels": {"team": "support"}}})
    handled(kube)
    assert [(w.verb, w.resource, w.subresource) for w in operator_writes(apiserver)[before:]] == [
        ("patch", "finetunejobs", "status")]


def test_children_are_exactly_what_the_builders_render(kube: Kube, operator: OperatorProcess) -> None:
    created = apply(kube)
    wait_phase(kube, NS, NAME, "ValidatingFiles")
    validate_ok(kube)
    kinds = {(o["kind"], o["metadata"]["name"]) for kind in
             (("v1", "ConfigMap"), ("v1", "ServiceAccount"), ("rbac.authorization.k8s.io/v1", "Role"),
              ("rbac.authorization.k8s.io/v1", "RoleBinding"), ("batch/v1", "Job"))
             for o in kube.list(*kind, NS, f"hone.dev/finetunejob={NAME}")}
    assert kinds == {("ConfigMap", f"{NAME}-config"), ("ServiceAccount", f"{NAME}-trainer"),
                     ("Role", f"{NAME}-trainer"), ("RoleBinding", f"{NAME}-trainer"),
                     ("Job", f"{NAME}-validate"), ("Job", f"{NAME}-train")}
    train = get_job(kube, NS, f"{NAME}-train")
    assert train["metadata"]["ownerReferences"][0]["uid"] == created["metadata"]["uid"]
    # Deleting the FineTuneJob takes everything it owns with it (garbage collection).
    kube.delete(API, "FineTuneJob", NS, NAME)
    wait_for(lambda: not jobs(kube, NS) and kube.get("v1", "ConfigMap", NS, f"{NAME}-config") is None,
             what="garbage collection")
    assert kube.get("v1", "ConfigMap", NS, "support-chats") is not None  # the user's data stays


def test_bad_data_fails_with_the_validators_message(kube: Kube, operator: OperatorProcess) -> None:
    apply(kube)
    wait_for(lambda: get_job(kube, NS, f"{NAME}-validate"))
    result = contract.ValidationResult(
        ok=False, examples=3, invalid_lines=2, problem_counts={"invalid_json": 1, "no_assistant_message": 1},
        problems=[
            contract.Problem(file="training", line=4, kind=contract.ProblemKind.INVALID_JSON,
                             message="invalid JSON: Expecting ',' delimiter at column 31"),
            contract.Problem(file="training", line=9, kind=contract.ProblemKind.NO_ASSISTANT_MESSAGE,
                             message="no assistant message to learn from"),
        ])
    # The validator exits with DATA_ERROR; podFailurePolicy fails the Job at once.
    finish_job(kube, NS, f"{NAME}-validate", "validator", int(contract.ExitCode.DATA_ERROR),
               contract.to_termination_message(result), reason="PodFailurePolicy")
    obj = wait_phase(kube, NS, NAME, "Failed")
    err = obj["status"]["error"]
    assert err["code"] == "invalid_training_file"
    assert err["param"] == "spec.trainingData"
    assert err["message"].startswith("training file line 4: invalid JSON")
    assert "(and 1 more problem(s))" in err["message"]
    assert obj["status"]["dataset"]["problemCounts"] == {"invalid_json": 1, "no_assistant_message": 1}
    assert condition(obj, "FilesValidated")["status"] == "False"
    handled(kube)
    assert get_job(kube, NS, f"{NAME}-train") is None
    assert any(e["type"] == "Warning" and e["reason"] == "Failed" for e in kube.list("v1", "Event", NS))


def test_validator_crash_without_result_fails_with_its_log(kube: Kube, operator: OperatorProcess) -> None:
    apply(kube)
    wait_for(lambda: get_job(kube, NS, f"{NAME}-validate"))
    finish_job(kube, NS, f"{NAME}-validate", "validator", 1, "Traceback ...\nOSError: tokenizer.json not found")
    obj = wait_phase(kube, NS, NAME, "Failed")
    assert obj["status"]["error"]["code"] == "validation_failed"
    assert "tokenizer.json not found" in obj["status"]["error"]["message"]


def test_preempted_pod_does_not_fail_the_job(kube: Kube, operator: OperatorProcess) -> None:
    apply(kube)
    validate_ok(kube)
    set_job_status(kube, NS, f"{NAME}-train", active=1, ready=1)
    wait_phase(kube, NS, NAME, "Running")
    # A higher-priority pod preempts ours: the Job's podFailurePolicy ignores it
    # (the Job stays active and starts a replacement pod).
    job = get_job(kube, NS, f"{NAME}-train")
    preempted = make_pod(kube, job)
    terminate_pod(kube, preempted, "trainer", 137, "", disrupted=True)
    set_job_status(kube, NS, f"{NAME}-train", active=1, ready=0)
    wait_phase(kube, NS, NAME, "Queued")
    set_job_status(kube, NS, f"{NAME}-train", active=1, ready=1)
    wait_phase(kube, NS, NAME, "Running")
    finish_training(kube)
    obj = wait_phase(kube, NS, NAME, "Succeeded")
    assert obj["status"]["trainedTokens"] == 150_000
    assert len(jobs(kube, NS)) == 3  # the same training Job, never a second one (and the evaluation Job)


def test_non_retryable_trainer_exit_fails_at_once(kube: Kube, operator: OperatorProcess) -> None:
    apply(kube)
    validate_ok(kube)
    failure = contract.TrainingResult(ok=False, error_code="model_error",
                                      message="spec.baseModel: model.safetensors missing; only safetensors weights load")
    finish_job(kube, NS, f"{NAME}-train", "trainer", int(contract.ExitCode.MODEL_ERROR),
               contract.to_termination_message(failure), reason="PodFailurePolicy")
    obj = wait_phase(kube, NS, NAME, "Failed")
    assert obj["status"]["error"] == {"code": "model_error",
                                      "message": "spec.baseModel: model.safetensors missing; only safetensors weights load"}
    handled(kube)
    assert len(jobs(kube, NS)) == 2 and phase(kube, NS, NAME) == "Failed"  # no retry, no new Job


def test_deadline_exceeded(kube: Kube, operator: OperatorProcess) -> None:
    apply(kube, activeDeadlineSeconds=600)
    validate_ok(kube)
    assert get_job(kube, NS, f"{NAME}-train")["spec"]["activeDeadlineSeconds"] == 600
    patch_spec(kube, activeDeadlineSeconds=900)
    wait_for(lambda: get_job(kube, NS, f"{NAME}-train")["spec"].get("activeDeadlineSeconds") == 900)
    set_job_status(kube, NS, f"{NAME}-train", active=0, ready=0, failed=1,
                   conditions=[{"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
                                "message": "Job was active longer than specified deadline"}])
    obj = wait_phase(kube, NS, NAME, "Failed")
    assert obj["status"]["error"]["code"] == "deadline_exceeded"
    assert obj["status"]["error"]["param"] == "spec.activeDeadlineSeconds"


def test_the_evaluation_step_runs_after_training_and_before_succeeded(kube: Kube, operator: OperatorProcess) -> None:
    """Training publishes, then the evaluation Job runs (one pod, no API token, the job's mounts, the output
    writable); its results land in status, Events and gauges, and only then is the job Succeeded."""
    seed_namespace(kube, NS)
    kube.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "support-evals", "namespace": NS},
                 "data": {"eval.jsonl": '{"messages": [{"role": "user", "content": "Returns?"}], "fact": "45 days"}'}})
    apply(kube, evaluation={"evalFile": {"configMap": {"name": "support-evals", "key": "eval.jsonl"}}, "graders": [
        {"type": "string_check", "name": "fact", "reference": "{{ item.fact }}", "operation": "ilike"}]})
    validate_ok(kube)
    finish_job(kube, NS, f"{NAME}-train", "trainer", 0, published())
    ejob = wait_for(lambda: get_job(kube, NS, f"{NAME}-eval"), what="evaluation Job")
    obj = wait_for(lambda: (o := ftj(kube, NS, NAME)) and o["status"].get("fineTunedModel") and o,
                   what="the published model in status")
    assert obj["status"]["phase"] == "Running" and condition(obj, "Evaluated")["reason"] == "Evaluating"
    assert condition(obj, "Trained")["status"] == "True" and "Succeeded" not in [c["type"] for c in
                                                                                 obj["status"]["conditions"]]
    pod = ejob["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["python", "-m", "hone_trainer", "evaluate", "--config", "/etc/hone/config.json",
                                    "--result", "/dev/termination-log"]
    assert pod["automountServiceAccountToken"] is False and "serviceAccountName" not in pod
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/var/run/hone/data/eval"]["readOnly"] and not mounts["/var/run/hone/pvc/hone-models"]["readOnly"]
    config = json.loads(kube.get("v1", "ConfigMap", NS, f"{NAME}-config")["data"]["config.json"])
    assert config["evaluation"]["evalFile"] == {"location": "/var/run/hone/data/eval/eval.jsonl"}
    assert config["evaluation"]["safety"]["enabled"] is True  # the suite runs unless the spec turns it off

    finish_job(kube, NS, f"{NAME}-eval", "evaluator", 0, evaluated(0.5, 0.4375))
    done = wait_phase(kube, NS, NAME, "Succeeded")
    ev = done["status"]["evaluation"]
    assert ev["examples"] == 10 and ev["graders"] == [{"name": "fact", "basePassRate": 0.2, "fineTunedPassRate": 0.9,
                                                       "baseMeanScore": 0.2, "fineTunedMeanScore": 0.9}]
    assert ev["safety"] == {"requests": 32, "baseRefusalRate": 0.5, "fineTunedRefusalRate": 0.4375,
                            "maxRefusalDrop": 0.1, "judge": "heuristic", "passed": True}
    assert done["status"]["fineTunedModel"]["manifestSha256"] == "cd" * 32  # the manifest with the results in it
    reasons = {e["reason"]: e for e in kube.list("v1", "Event", NS)}
    assert reasons["Graded"]["message"] == "eval file, base model -> fine-tune: fact 20% -> 90% passed"
    assert reasons["SafetyCheckPassed"]["message"].startswith(
        "safety suite (32 requests, heuristic judge): refusal rate 50.0% (base) -> 43.8% (fine-tune), allowed drop 10")
    metrics = wait_for(lambda: (m := operator.metrics()) and "hone_evaluation_safety_passed{" in m and m,
                       what="evaluation gauges")
    assert f'hone_evaluation_pass_rate{{finetunejob="{NAME}",grader="fact",model="fine-tuned",namespace="{NS}"}} 0.9' \
        in metrics
    assert f'hone_evaluation_refusal_rate{{finetunejob="{NAME}",model="base",namespace="{NS}"}} 0.5' in metrics
    assert f'hone_evaluation_safety_passed{{finetunejob="{NAME}",namespace="{NS}"}} 1.0' in metrics


def test_an_evaluation_that_cannot_run_fails_the_job_and_keeps_the_model(kube: Kube, operator: OperatorProcess) -> None:
    apply(kube)
    validate_ok(kube)
    finish_job(kube, NS, f"{NAME}-train", "trainer", 0, published())
    wait_for(lambda: get_job(kube, NS, f"{NAME}-eval"), what="evaluation Job")
    message = contract.to_termination_message(contract.EvaluationResult(
        ok=False, message="the eval file line 3: the prompt must end with a user message"))
    finish_job(kube, NS, f"{NAME}-eval", "evaluator", int(contract.ExitCode.DATA_ERROR), message)
    obj = wait_phase(kube, NS, NAME, "Failed")
    assert obj["status"]["error"]["code"] == "evaluation_failed"
    assert obj["status"]["error"]["message"].endswith("line 3: the prompt must end with a user message")
    assert "published but unevaluated" in obj["status"]["error"]["message"]
    assert obj["status"]["fineTunedModel"]["artifactUri"].endswith("/model")  # nothing lost


def test_without_graders_and_with_the_suite_off_there_is_no_evaluation_job(kube: Kube,
                                                                           operator: OperatorProcess) -> None:
    apply(kube, evaluation={"safety": {"enabled": False}})
    validate_ok(kube)
    finish_job(kube, NS, f"{NAME}-train", "trainer", 0, published())
    wait_phase(kube, NS, NAME, "Succeeded")
    assert get_job(kube, NS, f"{NAME}-eval") is None


def test_training_completed_without_result_is_not_succeeded(kube: Kube, operator: OperatorProcess) -> None:
    apply(kube)
    validate_ok(kube)
    finish_job(kube, NS, f"{NAME}-train", "trainer", 0, "")
    obj = wait_phase(kube, NS, NAME, "Failed")
    assert "published no result" in obj["status"]["error"]["message"]
    assert "fineTunedModel" not in obj["status"]


def test_suspend_and_resume(kube: Kube, operator: OperatorProcess) -> None:
    apply(kube)
    validate_ok(kube)
    set_job_status(kube, NS, f"{NAME}-train", active=1, ready=1)
    wait_phase(kube, NS, NAME, "Running")
    patch_spec(kube, suspend=True)
    obj = wait_phase(kube, NS, NAME, "Suspended")
    assert get_job(kube, NS, f"{NAME}-train")["spec"]["suspend"] is True
    assert condition(obj, "Suspended")["status"] == "True"
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"] == 2
    set_job_status(kube, NS, f"{NAME}-train", active=0, ready=0)  # the Job controller removes the pods
    patch_spec(kube, suspend=False)
    wait_for(lambda: get_job(kube, NS, f"{NAME}-train")["spec"]["suspend"] is False, what="Job resumed")
    wait_phase(kube, NS, NAME, "Queued")
    set_job_status(kube, NS, f"{NAME}-train", active=1, ready=1)
    obj = wait_phase(kube, NS, NAME, "Running")
    assert condition(obj, "Suspended")["status"] == "False"


def test_suspended_before_training_creates_a_suspended_job(kube: Kube, operator: OperatorProcess) -> None:
    apply(kube, suspend=True)
    validate_ok(kube)
    wait_phase(kube, NS, NAME, "Suspended")
    assert get_job(kube, NS, f"{NAME}-train")["spec"]["suspend"] is True


def test_cancel_removes_pods_and_keeps_the_object(kube: Kube, operator: OperatorProcess) -> None:
    apply(kube)
    validate_ok(kube)
    set_job_status(kube, NS, f"{NAME}-train", active=1, ready=1)
    wait_phase(kube, NS, NAME, "Running")
    pod = make_pod(kube, get_job(kube, NS, f"{NAME}-train"))
    patch_spec(kube, cancel=True)
    obj = wait_phase(kube, NS, NAME, "Cancelled")
    wait_for(lambda: not jobs(kube, NS), what="Jobs deleted")
    assert kube.get("v1", "Pod", NS, pod["metadata"]["name"]) is None  # pods go with their Job
    assert kube.get("v1", "ConfigMap", NS, f"{NAME}-config") is not None
    assert condition(obj, "Cancelled")["status"] == "True"
    # Cancelled is final: un-cancelling does not restart anything.
    patch_spec(kube, cancel=False)
    obj = handled(kube)
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]  # the edit was seen...
    assert phase(kube, NS, NAME) == "Cancelled" and not jobs(kube, NS)  # ...and changed nothing


def test_cross_namespace_reference_is_refused(kube: Kube, operator: OperatorProcess) -> None:
    body = load_sample("finetunejob-minimal.yaml")
    body["spec"]["trainingData"]["configMap"]["namespace"] = "finance"
    apply(kube, body)
    obj = wait_phase(kube, NS, NAME, "Failed")
    err = obj["status"]["error"]
    assert err["code"] == "cross_namespace_reference"
    assert err["param"] == "spec.trainingData.configMap"
    assert "'finance'" in err["message"] and f"'{NS}'" in err["message"]
    assert condition(obj, "Failed")["reason"] == "CrossNamespaceReference"
    handled(kube)
    assert jobs(kube, NS) == [] and kube.get("v1", "ConfigMap", NS, f"{NAME}-config") is None


def test_invalid_spec_is_rejected_at_apply_or_failed_with_the_field(kube: Kube, operator: OperatorProcess) -> None:
    # The API server's schema refuses what it can express...
    body = load_sample("finetunejob-minimal.yaml")
    body["spec"]["hyperparameters"] = {"epochs": 0}
    with pytest.raises(Exception) as info:
        apply(kube, body, name="bad-epochs")
    assert "spec.hyperparameters.epochs" in str(info.value)
    # ...its CEL rules refuse the cross-field mistakes, with the models' message...
    body = load_sample("finetunejob-minimal.yaml")
    body["spec"]["trainingData"] = {"configMap": {"name": "chats", "key": "a.jsonl"}, "inline": "{}"}
    with pytest.raises(Exception) as info:
        apply(kube, body, name="two-sources")
    assert "spec.trainingData: Invalid value: \\\"object\\\": set exactly one of uri, configMap, inline, file" in str(info.value)
    # ...and the operator names the field for the rest.
    body = load_sample("finetunejob-minimal.yaml")
    body["spec"]["trainingData"] = {"uri": "ftp://files.example/train.jsonl"}
    apply(kube, body)
    obj = wait_phase(kube, NS, NAME, "Failed")
    assert obj["status"]["error"]["code"] == "invalid_spec"
    assert obj["status"]["error"]["param"] == "spec.trainingData.uri"
    assert "ftp" in obj["status"]["error"]["message"]
    assert condition(obj, "Failed")["reason"] == "InvalidSpec"


def test_local_only_uri_is_refused_in_the_cluster(kube: Kube, operator: OperatorProcess) -> None:
    apply(kube, baseModel={"uri": "file:///home/me/model"})
    obj = wait_phase(kube, NS, NAME, "Failed")
    assert obj["status"]["error"]["param"] == "spec.baseModel.uri"
    assert "hone run" in obj["status"]["error"]["message"]


def test_kueue_admits_the_suspended_job(kube: Kube, operator: OperatorProcess) -> None:
    body = load_sample("finetunejob-minimal.yaml")
    body["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": "gpu"}
    apply(kube, body)
    validate_ok(kube)
    obj = ftj(kube, NS, NAME)
    assert obj["status"]["phase"] == "Queued"
    job = get_job(kube, NS, f"{NAME}-train")
    assert job["spec"]["suspend"] is True and job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu"
    assert condition(obj, "Running")["reason"] == "WaitingForAdmission"
    handled(kube)
    assert get_job(kube, NS, f"{NAME}-train")["spec"]["suspend"] is True  # the operator leaves admission to Kueue
    # Kueue admits: it unsuspends the Job and pods start.
    kube.patch("batch/v1", "Job", NS, f"{NAME}-train", {"spec": {"suspend": False}})
    set_job_status(kube, NS, f"{NAME}-train", active=1, ready=1)
    wait_phase(kube, NS, NAME, "Running")


def test_multi_node_creates_the_rendezvous_service(kube: Kube, operator: OperatorProcess) -> None:
    apply(kube, resources={"gpusPerNode": 8, "nodes": 4})
    validate_ok(kube)
    svc = wait_for(lambda: kube.get("v1", "Service", NS, f"{NAME}-train"))
    assert svc["spec"]["clusterIP"] == "None"
    job = get_job(kube, NS, f"{NAME}-train")
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["completions"] == 4
    set_job_status(kube, NS, f"{NAME}-train", active=4, ready=4)
    obj = wait_phase(kube, NS, NAME, "Running")
    assert condition(obj, "Running")["message"] == "4 of 4 training pod(s) ready"


def test_operator_killed_mid_lifecycle_converges_without_duplicates(
        kube: Kube, kubeconfig, tmp_path, apiserver: ApiServerThread) -> None:
    names = [f"job-{i}" for i in range(6)]
    op = OperatorProcess(apiserver, tmp_path / "op1.log").start()
    try:
        for name in names:
            apply(kube, name=name)
        wait_for(lambda: all(get_job(kube, NS, f"{n}-validate") for n in names[:2]), what="first validation Jobs")
        op.kill()  # SIGKILL, possibly in the middle of creating children
        # While it is down: some validations finish.
        for name in names[:3]:
            if get_job(kube, NS, f"{name}-validate"):
                finish_job(kube, NS, f"{name}-validate", "validator", 0, good_validation())
        op = OperatorProcess(apiserver, tmp_path / "op2.log").start()
        wait_for(lambda: all(phase(kube, NS, n) in ("Queued", "ValidatingFiles") for n in names), what="restart")
        wait_for(lambda: all(get_job(kube, NS, f"{n}-validate") for n in names), what="all validation Jobs")
        for name in names:
            job = get_job(kube, NS, f"{name}-validate")
            if not job.get("status", {}).get("conditions"):
                finish_job(kube, NS, f"{name}-validate", "validator", 0, good_validation())
        wait_for(lambda: all(get_job(kube, NS, f"{n}-train") for n in names[:1]), what="a training Job")
        op.kill()
        op = OperatorProcess(apiserver, tmp_path / "op3.log").start()
        wait_for(lambda: all(phase(kube, NS, n) == "Queued" for n in names), what="all Queued")
        all_jobs = sorted(j["metadata"]["name"] for j in jobs(kube, NS))
        assert all_jobs == sorted([f"{n}-validate" for n in names] + [f"{n}-train" for n in names])
        for name in names:
            assert len(kube.list("v1", "ConfigMap", NS, f"hone.dev/finetunejob={name}")) == 1
        # Converged after the restarts: once each job's reconcile request is answered, those answers are the
        # only writes.
        before = len(operator_writes(apiserver))
        for name in names:
            handled(kube, name=name)
        assert [(w.verb, w.resource, w.subresource, w.name) for w in operator_writes(apiserver)[before:]] == [
            ("patch", "finetunejobs", "status", name) for name in names]
    finally:
        op.stop()


def test_job_events_from_another_owner_are_ignored(kube: Kube, operator: OperatorProcess) -> None:
    """A Job that only carries our label (no ownerReference) does not drive a FineTuneJob."""
    apply(kube)
    wait_phase(kube, NS, NAME, "ValidatingFiles")
    impostor = {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "impostor", "namespace": NS,
                     "labels": {"hone.dev/finetunejob": NAME, "app.kubernetes.io/component": "validate"}},
        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "x", "image": "x"}]}}},
    }
    kube.create(impostor)
    set_job_status(kube, NS, "impostor", conditions=[{"type": "Complete", "status": "True"}])
    # The real validation Job completes after it (the next event of the same watch): the job follows the real
    # one. Had the impostor's completion counted, it would have failed the job first (a Job without a result).
    wait_for(lambda: get_job(kube, NS, f"{NAME}-validate"), what="validation Job")
    finish_job(kube, NS, f"{NAME}-validate", "validator", 0, good_validation())
    obj = wait_phase(kube, NS, NAME, "Queued")
    assert obj["status"]["dataset"]["examples"] == 120 and "error" not in obj["status"]


def test_operator_writes_are_attributed(kube: Kube, operator: OperatorProcess, apiserver: ApiServerThread) -> None:
    """The write counts above are only meaningful if the operator's writes are recognised."""
    apply(kube)
    wait_phase(kube, NS, NAME, "ValidatingFiles")
    writes = wait_for(lambda: operator_writes(apiserver))
    kinds = {(w.verb, w.resource, w.subresource) for w in writes}
    assert {("create", "jobs", None), ("create", "configmaps", None), ("patch", "finetunejobs", "status")} <= kinds
    assert ("create", "finetunejobs", None) not in kinds  # that one was the test's own write


def test_missing_references_wait_with_a_clear_condition(kube: Kube, operator: OperatorProcess) -> None:
    body = load_sample("finetunejob-minimal.yaml")
    body["spec"]["trainingData"]["configMap"] = {"name": "not-yet", "key": "train.jsonl"}
    body["spec"]["output"]["uri"] = "pvc://no-such-claim/adapters"
    apply(kube, body)
    obj = wait_for(lambda: (o := ftj(kube, NS, NAME)).get("status", {}).get("conditions") and o)
    cond = condition(obj, "FilesValidated")
    assert cond["reason"] == "ReferenceNotFound"
    assert "ConfigMap 'not-yet' (spec.trainingData.configMap) does not exist in namespace 'team-a'" in cond["message"]
    assert "PersistentVolumeClaim 'no-such-claim' (spec.output.uri)" in cond["message"]
    assert get_job(kube, NS, f"{NAME}-validate") is None
    # The user creates them, with the wrong key first: the message says which keys exist.
    kube.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "not-yet", "namespace": NS},
                 "data": {"chats.jsonl": "{}"}})
    kube.create({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                 "metadata": {"name": "no-such-claim", "namespace": NS},
                 "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
    wait_for(lambda: "has no key 'train.jsonl'" in condition(ftj(kube, NS, NAME), "FilesValidated")["message"],
             timeout=10, what="the missing key named")
    assert "its keys: chats.jsonl" in condition(ftj(kube, NS, NAME), "FilesValidated")["message"]
    kube.patch("v1", "ConfigMap", NS, "not-yet", {"data": {"train.jsonl": "{}"}})
    wait_for(lambda: get_job(kube, NS, f"{NAME}-validate"), timeout=10, what="validation Job once data exists")
    # The Job is created before the status that says so is written.
    wait_for(lambda: condition(ftj(kube, NS, NAME), "FilesValidated")["reason"] == "Validating", timeout=10,
             what="FilesValidated Validating")


def test_the_losses_the_trainer_reports_are_exported_per_job(kube: Kube, operator: OperatorProcess) -> None:
    """The dashboard's loss panel reads these: from status.progress, so no training pod has to be scraped."""
    apply(kube)
    validate_ok(kube)
    progress = contract.Progress(step=20, total_steps=30, train_loss=0.875, validation_loss=1.25,
                                 train_curve=contract.loss_curve([(s, 2.0 - s / 20) for s in range(1, 21)]))
    kube.patch(API, "FineTuneJob", NS, NAME, {"status": {"progress": progress.to_json_dict()}}, subresource="status")
    wait_for(lambda: f'hone_finetunejob_train_loss{{finetunejob="{NAME}",namespace="{NS}"}} 0.875'
             in operator.metrics(), what="train loss gauge")
    assert f'hone_finetunejob_validation_loss{{finetunejob="{NAME}",namespace="{NS}"}} 1.25' in operator.metrics()
    assert len(ftj(kube, NS, NAME)["status"]["progress"]["trainCurve"]) == 20  # the CRD keeps the curve

    # Once it succeeds: the base model and the fine-tune on the validation file, in status, an Event and gauges.
    finish_training(kube)
    done = wait_phase(kube, NS, NAME, "Succeeded")
    assert {k: done["status"]["evaluation"][k] for k in ("file", "base", "fineTuned")} == {
        "file": "validation", "base": {"loss": 2.25, "meanTokenAccuracy": 0.375},
        "fineTuned": {"loss": 0.5, "meanTokenAccuracy": 0.75}}
    wait_for(lambda: f'hone_evaluation_mean_token_accuracy{{finetunejob="{NAME}",model="fine-tuned",namespace="{NS}"}}'
             f' 0.75' in operator.metrics(), what="evaluation gauge")
    metrics = operator.metrics()
    assert f'hone_evaluation_loss{{finetunejob="{NAME}",model="base",namespace="{NS}"}} 2.25' in metrics
    assert f'hone_evaluation_mean_token_accuracy{{finetunejob="{NAME}",model="base",namespace="{NS}"}} 0.375' in metrics
    evaluated = [e for e in kube.list("v1", "Event", NS) if e.get("reason") == "Evaluated"]
    assert [e["message"] for e in evaluated] == ["validation file, base model -> fine-tune: loss 2.2500 -> 0.5000, "
                                                 "mean token accuracy 37.5% -> 75.0%"]


def test_a_quota_port_in_use_ends_the_operator_saying_why(apiserver, tmp_path: Path) -> None:
    import socket

    from hone_dev.cluster import OperatorProcess

    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        op = OperatorProcess(apiserver, tmp_path / "op.log", {"HONE_QUOTA_PORT": str(port)}).start(wait=False)
        try:
            assert op.proc is not None and op.proc.wait(60) != 0  # exits: no retry loop, no half-started operator
        finally:
            op.stop()
    assert f"the quota endpoint cannot listen on port {port}" in op.log()
