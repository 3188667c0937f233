"""ModelServing: the real operator against the emulated API server, and the rendered objects.

The tests play the Deployment controller (they set Deployment status) and
check what a user sees: phase, conditions, children, scale, roll-outs.
"""

from __future__ import annotations

import copy
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from hone_operator.api.v1alpha1 import SAFETY_OVERRIDE_ANNOTATION, FineTuneJob, ModelServing
from hone_operator.builders import modelserving as msv_build
from hone_operator.reconcile import modelserving as msv_reconcile
from hone_operator.kube import Kube
from hone_operator.settings import OperatorSettings
from hone_dev.repo import load_sample
from hone_dev.apiserver import ApiServerThread
from hone_dev.cluster import OperatorProcess, finish_job, wait_for, wait_phase
from hone_dev.resources import API, NAME, NS, apply_msv, deployment, msv, roll_out, server_config, serving_ready, succeed_ftj, wait_msv
from hone_dev.resources import apply as apply_ftj
from hone_dev.resources import condition, evaluated, handled, operator_writes

K8S = "1.33"
SETTINGS = OperatorSettings()


def test_waits_for_the_finetunejob_then_deploys_and_becomes_ready(kube: Kube, operator: OperatorProcess,
                                                                  apiserver: ApiServerThread) -> None:
    apply_ftj(kube)
    apply_msv(kube)
    obj = wait_msv(kube, "Waiting")
    assert condition(obj, "Resolved")["reason"] == "FineTuneJobNotSucceeded"
    assert "support-assistant" in condition(obj, "Ready")["message"]
    assert deployment(kube) is None

    done = succeed_ftj(kube)
    obj = wait_msv(kube, "Deploying")
    fine_tuned = done["status"]["fineTunedModel"]["name"]
    dep = deployment(kube)
    assert dep is not None
    children = [kube.get("v1", "ConfigMap", NS, f"{NAME}-server"), kube.get("v1", "Service", NS, NAME), dep]
    for child in children:
        assert child["metadata"]["ownerReferences"][0]["kind"] == "ModelServing"
        kubernetes_validate.validate(_clean(child), K8S, strict=True)
    pod = dep["spec"]["template"]["spec"]
    server = pod["containers"][0]
    assert server["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert server["livenessProbe"]["httpGet"]["path"] == "/health"
    assert server["securityContext"]["readOnlyRootFilesystem"] and pod["securityContext"]["runAsNonRoot"]
    assert pod["automountServiceAccountToken"] is False
    pvc_mount = next(m for m in server["volumeMounts"] if m["name"] == "pvc-hone-models")
    assert pvc_mount["readOnly"] is True
    config = server_config(kube)
    assert config["adapters"] == [{"location": f"/var/run/hone/pvc/hone-models/adapters/{NS}/{NAME}/model"}]
    assert config["baseModel"]["location"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert dep["spec"]["replicas"] == 1

    roll_out(kube)
    obj = wait_msv(kube, "Ready")
    st = obj["status"]
    assert st["servedModels"] == ["HuggingFaceTB/SmolLM2-135M-Instruct", fine_tuned]
    assert st["url"] == f"http://{NAME}.{NS}.svc/v1"
    assert st["readyReplicas"] == 1 and st["replicas"] == 1
    assert st["selector"] == f"hone.dev/modelserving={NAME},app.kubernetes.io/component=server"
    assert condition(obj, "Ready")["observedGeneration"] == obj["metadata"]["generation"]

    before = len(operator_writes(apiserver))
    kube.patch(API, "ModelServing", NS, NAME, {"metadata": {"labels": {"team": "support"}}})
    handled(kube, "ModelServing")
    assert [(w.verb, w.resource, w.subresource) for w in operator_writes(apiserver)[before:]] == [
        ("patch", "modelservings", "status")], "a converged ModelServing costs no writes but the request's answer"


def test_a_fine_tune_that_failed_its_safety_check_is_served_only_with_the_override(kube: Kube,
                                                                                  operator: OperatorProcess) -> None:
    """The gate: no Deployment for a FineTuneJob whose refusal rate dropped past the margin, a condition and an
    Event that name the rates; the override annotation serves it (and says so); taking it back stops serving."""
    apply_ftj(kube)
    succeed_ftj(kube, evaluation=evaluated(0.5, 0.25))
    apply_msv(kube)
    obj = wait_msv(kube, "Failed")
    gate = condition(obj, "SafetyCheckFailed")
    assert gate["status"] == "True" and gate["reason"] == "SafetyCheckFailed"
    assert gate["message"].startswith(f"FineTuneJob {NAME} failed its safety check: it declines 25.0% of the safety "
                                      "suite, its base model 50.0% (allowed drop 10 points); not served.")
    assert f"{SAFETY_OVERRIDE_ANNOTATION}=true" in gate["message"]
    assert condition(obj, "Ready")["reason"] == "SafetyCheckFailed"
    handled(kube, "ModelServing")
    assert deployment(kube) is None
    warnings = [e["reason"] for e in kube.list("v1", "Event", NS) if e["type"] == "Warning"
                and e["involvedObject"]["kind"] == "ModelServing"]
    assert warnings == ["SafetyCheckFailed"]  # one Event for the refusal (the phase's change is that Event)

    kube.patch(API, "FineTuneJob", NS, NAME, {"metadata": {"annotations": {SAFETY_OVERRIDE_ANNOTATION: "true"}}})
    wait_for(lambda: deployment(kube), what="the Deployment, once overridden")
    obj = wait_msv(kube, "Deploying")
    assert condition(obj, "SafetyCheckFailed")["reason"] == "Overridden"
    overridden = wait_for(lambda: [e for e in kube.list("v1", "Event", NS) if e["reason"] == "SafetyCheckOverridden"],
                          what="the override recorded")
    assert overridden[0]["type"] == "Warning" and "served anyway" in overridden[0]["message"]

    kube.patch(API, "FineTuneJob", NS, NAME, {"metadata": {"annotations": {SAFETY_OVERRIDE_ANNOTATION: None}}})
    wait_for(lambda: deployment(kube) is None, what="the Deployment removed once the override is taken back")
    assert condition(wait_msv(kube, "Failed"), "SafetyCheckFailed")["reason"] == "SafetyCheckFailed"


def test_scale_spec_changes_and_autoscaling_roll_out(kube: Kube, operator: OperatorProcess) -> None:
    serving_ready(kube)
    first_hash = deployment(kube)["spec"]["template"]["metadata"]["annotations"][msv_build.SPEC_HASH]

    # kubectl scale msv support-assistant --replicas 3
    scale = kube._call("PATCH", f"/apis/{API}/namespaces/{NS}/modelservings/{NAME}/scale",
                       body={"spec": {"replicas": 3}}, content_type="application/merge-patch+json")
    assert scale["spec"]["replicas"] == 3
    wait_for(lambda: deployment(kube)["spec"]["replicas"] == 3, what="Deployment scaled to 3")
    assert wait_msv(kube, "Deploying")
    roll_out(kube)
    obj = wait_msv(kube, "Ready")
    assert obj["status"]["replicas"] == 3
    scale = kube._call("GET", f"/apis/{API}/namespaces/{NS}/modelservings/{NAME}/scale")
    assert scale["status"]["replicas"] == 3 and scale["status"]["selector"].startswith("hone.dev/modelserving=")

    kube.patch(API, "ModelServing", NS, NAME, {"spec": {"resources": {"cpu": "3", "memory": "6Gi"}}})
    wait_for(lambda: deployment(kube)["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"]
             == "3", what="new resources rolled out")
    assert deployment(kube)["spec"]["template"]["metadata"]["annotations"][msv_build.SPEC_HASH] != first_hash

    kube.patch(API, "ModelServing", NS, NAME, {"spec": {"autoscaling": {"minReplicas": 2, "maxReplicas": 5}}})
    hpa = wait_for(lambda: kube.get("autoscaling/v2", "HorizontalPodAutoscaler", NS, NAME), what="HPA")
    kubernetes_validate.validate(_clean(hpa), K8S, strict=True)
    assert hpa["spec"]["scaleTargetRef"]["name"] == NAME and hpa["spec"]["maxReplicas"] == 5
    kube.patch(API, "ModelServing", NS, NAME, {"spec": {"autoscaling": None}})
    wait_for(lambda: kube.get("autoscaling/v2", "HorizontalPodAutoscaler", NS, NAME) is None, what="HPA removed")


def test_deleting_the_served_finetunejob_is_reported_not_crashed_on(kube: Kube, operator: OperatorProcess) -> None:
    serving_ready(kube)
    kube.delete(API, "FineTuneJob", NS, NAME)
    wait_for(lambda: condition(msv(kube), "Resolved")["reason"] == "FineTuneJobDeleted", what="deletion reported")
    obj = msv(kube)
    assert obj["status"]["phase"] == "Ready" and deployment(kube) is not None
    assert "keeps serving" in condition(obj, "Resolved")["message"]
    assert "reconcile of ModelServing" not in operator.log()


def test_a_failed_finetunejob_and_bad_references_are_explained(kube: Kube, operator: OperatorProcess) -> None:
    apply_ftj(kube)
    wait_for(lambda: kube.get("batch/v1", "Job", NS, f"{NAME}-validate"), what="validation Job")
    finish_job(kube, NS, f"{NAME}-validate", "validator", 4, "")
    wait_phase(kube, NS, NAME, "Failed")
    apply_msv(kube)
    obj = wait_msv(kube, "Waiting")
    assert condition(obj, "Resolved")["reason"] == "FineTuneJobFailed"
    assert "Succeeded FineTuneJob" in condition(obj, "Resolved")["message"]

    apply_msv(kube, name="elsewhere", fineTuneJobRef={"name": NAME, "namespace": "team-b"})
    obj = wait_msv(kube, "Failed", name="elsewhere")
    assert condition(obj, "Ready")["reason"] == "CrossNamespaceReference"
    assert "spec.fineTuneJobRef" in condition(obj, "Ready")["message"]

    apply_msv(kube, name="ghost", fineTuneJobRef={"name": "no-such-job"})
    obj = wait_msv(kube, "Waiting", name="ghost")
    assert condition(obj, "Resolved")["reason"] == "FineTuneJobNotFound"


# --------------------------------------------------------------------------
# Rendering (no operator): vLLM, S3 adapters, several adapters
# --------------------------------------------------------------------------


def _succeeded_ftj(name: str, r: int = 16, output: str = "pvc://hone-models/adapters", base: str | None = None,
                   method: str = "lora") -> dict[str, Any]:
    body = copy.deepcopy(load_sample("finetunejob-minimal.yaml"))
    body["metadata"].update(name=name, namespace=NS, uid=f"uid-{name}")
    body["spec"].update(output={"uri": output}, lora={"r": r}, method=method)
    if base:
        body["spec"]["baseModel"] = {"uri": base}
    ftj = FineTuneJob.model_validate(body)
    from hone_operator.builders.finetunejob import fine_tuned_model_name, resolve

    cfg, _ = resolve(ftj, SETTINGS)
    body["status"] = {"phase": "Succeeded", "fineTunedModel": {"name": fine_tuned_model_name(ftj),
                                                                "artifactUri": cfg.output_uri}}
    return body


def _msv(**spec: Any) -> ModelServing:
    body = copy.deepcopy(load_sample("modelserving.yaml"))
    body["metadata"].update(namespace=NS, uid="msv-uid")
    body["spec"].update(spec)
    return ModelServing.model_validate(body)


def _clean(obj: dict[str, Any]) -> dict[str, Any]:
    """A stored object as a user would write it (server-set fields dropped)."""
    obj = copy.deepcopy(obj)
    obj.pop("status", None)
    for k in ("uid", "resourceVersion", "generation", "creationTimestamp", "managedFields"):
        obj["metadata"].pop(k, None)
    return obj


def test_vllm_deployment_serves_each_adapter_under_its_fine_tuned_name() -> None:
    ftjs = {"support-assistant": _succeeded_ftj("support-assistant", r=16),
            "returns-bot": _succeeded_ftj("returns-bot", r=48, output="s3://acme-models/hone")}
    spec = dict(runtime="vllm", resources={"gpus": 1, "cpu": "8", "memory": "32Gi"},
                adapters=[{"fineTuneJobRef": {"name": "returns-bot"}}], apiKeySecret={"name": "llm-keys"})
    objs = msv_build.all_objects(_msv(**spec), SETTINGS, ftjs)
    for obj in objs:
        kubernetes_validate.validate(obj, K8S, strict=True)
    dep = objs[-1]
    pod = dep["spec"]["template"]["spec"]
    server = pod["containers"][0]
    cmd = server["command"]
    assert cmd[:4] == ["/bin/sh", "-c", msv_build.VLLM_START, "vllm"] and "llm-keys" not in " ".join(cmd[4:])
    env = {e["name"]: e.get("value") for e in server["env"]}
    assert env["HONE_API_KEYS_FILE"] == "/var/run/secrets/hone/llm-keys/api-keys"  # read from the mounted file
    assert env["USER"] and env["TORCHINDUCTOR_CACHE_DIR"].startswith("/var/cache")  # UID 10001 has no passwd entry
    args = cmd[4:]
    assert "--disable-log-requests" not in args and "--tensor-parallel-size" not in args  # removed; one GPU
    names = [ftjs[n]["status"]["fineTunedModel"]["name"] for n in ("support-assistant", "returns-bot")]
    assert args[:2] == ["serve", "HuggingFaceTB/SmolLM2-135M-Instruct"]
    assert args[args.index("--served-model-name") + 1] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    modules = args[args.index("--lora-modules") + 1:]
    assert modules == [f"{names[0]}=/var/run/hone/pvc/hone-models/adapters/{NS}/support-assistant/model",
                       f"{names[1]}=/var/run/hone/adapters/1"]
    assert args[args.index("--max-lora-rank") + 1] == "64"  # 48 rounded up to a rank vLLM accepts
    assert args[args.index("--max-loras") + 1] == "2" and "--enable-lora" in args
    assert args[args.index("--host") + 1] == "0.0.0.0"
    assert server["resources"]["limits"]["nvidia.com/gpu"] == "1"
    init = pod["initContainers"][0]
    assert init["command"][:4] == ["python", "-m", "hone_trainer", "fetch"]
    assert dep["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    assert "sh -c" not in shlex.join(init["command"])


def _vllm(spec: dict[str, Any], ftjs: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    server = msv_build.all_objects(_msv(**spec), SETTINGS, ftjs)[-1]["spec"]["template"]["spec"]["containers"][0]
    return server["command"][4:], {e["name"]: e.get("value") for e in server["env"]}


def _start(tmp_path: Path, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """The vLLM container's start script, run for real with sh and python3, and a `vllm` that prints what it got."""
    (tmp_path / "bin").mkdir(exist_ok=True)
    fake = tmp_path / "bin" / "vllm"
    fake.write_text('#!/bin/sh\necho "key=${VLLM_API_KEY:-none}"\necho "args=$*"\n')
    fake.chmod(0o755)
    python3 = tmp_path / "bin" / "python3"
    python3.unlink(missing_ok=True)
    python3.symlink_to(sys.executable)
    path = f"{tmp_path / 'bin'}:{os.environ['PATH']}"
    return subprocess.run(["/bin/sh", "-c", msv_build.VLLM_START, "vllm", *args], env={**env, "PATH": path},
                          capture_output=True, text=True, timeout=60)


def test_vllm_reads_uri_adapters_ranks_and_one_api_key_at_start(tmp_path: Path) -> None:
    """Adapters given by URI were assumed rank 64; only the first of several API keys was used."""
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 100, "peft_type": "LORA"}))
    ftjs = {"support-assistant": _succeeded_ftj("support-assistant", r=16)}
    args, env = _vllm(dict(runtime="vllm", resources={"gpus": 4}, apiKeySecret={"name": "llm-keys"},
                           adapters=[{"name": "old", "uri": "pvc://hone-models/adapters/team-a/old/model"}]), ftjs)
    assert args[args.index("--tensor-parallel-size") + 1] == "4"  # one model over the replica's GPUs
    assert "--max-lora-rank" not in args  # one adapter's rank is in no spec: the start script finds it
    assert env["HONE_LORA_DIRS"] == "/var/run/hone/pvc/hone-models/adapters/team-a/old/model"
    assert env["HONE_LORA_RANK"] == "16"

    keys = tmp_path / "api-keys"
    keys.write_text("# one key\nsk-one\n")
    run = _start(tmp_path, args, {"HONE_LORA_DIRS": str(adapter), "HONE_LORA_RANK": "16",
                                  "HONE_API_KEYS_FILE": str(keys)})
    assert run.returncode == 0, run.stderr
    assert "key=sk-one" in run.stdout and run.stdout.split("args=")[1].split()[-2:] == ["--max-lora-rank", "128"]
    assert "sk-one" not in run.stdout.split("args=")[1]  # never among vLLM's arguments, which it logs

    keys.write_text("sk-one\nsk-two\n")
    run = _start(tmp_path, args, {"HONE_API_KEYS_FILE": str(keys)})
    assert run.returncode == 3 and "holds 2 API keys; vLLM takes one" in run.stderr and "key=" not in run.stdout


@pytest.mark.parametrize("base,words", [("embedded://smollm2-135m-instruct", "ships with Hone's runtime image"),
                                        ("pvc://models/smollm2.Q4_1.gguf", "GGUF"),
                                        ("s3://acme-models/base", "copy the model to a PersistentVolumeClaim")])
def test_vllm_refuses_a_base_it_cannot_load(base: str, words: str) -> None:
    spec = dict(runtime="vllm", resources={"gpus": 1}, baseModel={"uri": base}, fineTuneJobRef=None,
                adapters=[{"name": "a", "uri": "pvc://hone-models/adapters/team-a/a/model"}])
    plan = msv_reconcile.plan(_body(**spec), msv_reconcile.ObservedServing({}), SETTINGS, "2026-11-21T00:00:00Z")
    ready = next(c for c in plan.status["conditions"] if c["type"] == "Ready")
    assert plan.status["phase"] == "Failed" and not plan.apply
    assert "spec.baseModel.uri" in ready["message"] and words in ready["message"]


def test_adapters_on_different_bases_and_full_fine_tunes_are_refused() -> None:
    ftjs = {"support-assistant": _succeeded_ftj("support-assistant"),
            "other": _succeeded_ftj("other", base="meta-llama/Llama-3.2-1B-Instruct")}
    plan = msv_reconcile.plan(_body(adapters=[{"fineTuneJobRef": {"name": "other"}}]),
                        msv_reconcile.ObservedServing(ftjs), SETTINGS, "2026-11-21T00:00:00Z")
    assert plan.status["phase"] == "Failed" and not plan.apply
    ready = next(c for c in plan.status["conditions"] if c["type"] == "Ready")
    assert "spec.adapters[0].fineTuneJobRef" in ready["message"] and "share one base model" in ready["message"]

    full = {"support-assistant": _succeeded_ftj("support-assistant", method="full")}
    objs, resolved = msv_build.desired(_msv(), full, SETTINGS)
    names = resolved.names
    assert resolved.config.adapters == [] and names == [full["support-assistant"]["status"]["fineTunedModel"]["name"]]
    assert resolved.config.base_model.location.endswith("/support-assistant/model")


def _with_checkpoints(body: dict[str, Any], steps: tuple[int, ...], servable: bool = True) -> dict[str, Any]:
    """A succeeded job's status.checkpoints as its trainer reports them (beside its published model)."""
    root = body["status"]["fineTunedModel"]["artifactUri"].removesuffix("/model") + "/checkpoints"
    body["status"]["checkpoints"] = [{"step": s, "uri": f"{root}/step-{s:08d}", "trainLoss": 1.0 / s,
                                      **({"modelUri": f"{root}/step-{s:08d}/model"} if servable else {})}
                                     for s in steps]
    return body


def test_a_checkpoint_is_served_under_its_openai_name() -> None:
    """fineTuneJobRef.checkpointStep serves that checkpoint's model; serveCheckpoints adds every servable one;
    a checkpoint the job does not keep, or one without a model, is refused naming the field."""
    lora = _with_checkpoints(_succeeded_ftj("support-assistant"), (4, 8, 12))
    model = lora["status"]["fineTunedModel"]["name"]
    root = f"/var/run/hone/pvc/hone-models/adapters/{NS}/support-assistant/checkpoints"
    _, one = msv_build.desired(_msv(fineTuneJobRef={"name": "support-assistant", "checkpointStep": 8}),
                               {"support-assistant": lora}, SETTINGS)
    assert one.names[1:] == [f"{model}:ckpt-step-8"]
    assert [(a.name, a.location) for a in one.config.adapters] == [
        (f"{model}:ckpt-step-8", f"{root}/step-00000008/model")]

    objs, every = msv_build.desired(_msv(serveCheckpoints=True), {"support-assistant": lora}, SETTINGS)
    assert every.names[1:] == [model, *(f"{model}:ckpt-step-{s}" for s in (4, 8, 12))]
    assert [a.location for a in every.config.adapters][1:] == [f"{root}/step-{s:08d}/model" for s in (4, 8, 12)]
    for obj in objs:
        kubernetes_validate.validate(obj, K8S, strict=True)

    on_s3 = _with_checkpoints(_succeeded_ftj("support-assistant", output="s3://acme-models/hone"), (12,))
    _, remote = msv_build.desired(_msv(fineTuneJobRef={"name": "support-assistant", "checkpointStep": 12}),
                                  {"support-assistant": on_s3}, SETTINGS)
    assert remote.config.adapters[0].location == f"s3://acme-models/hone/{NS}/support-assistant/checkpoints/" \
                                                 "step-00000012/model" and remote.remote_adapters == [0]

    full = _with_checkpoints(_succeeded_ftj("support-assistant", method="full"), (8, 12))
    _, base = msv_build.desired(_msv(fineTuneJobRef={"name": "support-assistant", "checkpointStep": 8}),
                                {"support-assistant": full}, SETTINGS)
    assert base.names == [f"{full['status']['fineTunedModel']['name']}:ckpt-step-8"]
    assert base.config.base_model.location.endswith("/support-assistant/checkpoints/step-00000008/model")

    def refused(spec: dict[str, Any], ftj: dict[str, Any]) -> str:
        plan = msv_reconcile.plan(_body(**spec), msv_reconcile.ObservedServing({"support-assistant": ftj}),
                                  SETTINGS, "2026-11-21T00:00:00Z")
        assert plan.status["phase"] == "Failed" and not plan.apply
        return next(c for c in plan.status["conditions"] if c["type"] == "Ready")["message"]

    assert refused({"fineTuneJobRef": {"name": "support-assistant", "checkpointStep": 5}}, lora).startswith(
        "spec.fineTuneJobRef.checkpointStep: FineTuneJob 'support-assistant' keeps no checkpoint of step 5 (its "
        "checkpoints: 4, 8, 12)")
    unexported = _with_checkpoints(_succeeded_ftj("support-assistant"), (12,), servable=False)
    assert "spec.checkpointing.servable false" in refused(
        {"fineTuneJobRef": {"name": "support-assistant", "checkpointStep": 12}}, unexported)
    assert refused({"serveCheckpoints": True}, full).startswith("spec.serveCheckpoints: FineTuneJob "
                                                               "'support-assistant' is a full fine-tune")


def test_converged_plan_is_empty_and_a_changed_spec_is_applied() -> None:
    ftjs = {"support-assistant": _succeeded_ftj("support-assistant")}
    body = _body()
    first = msv_reconcile.plan(body, msv_reconcile.ObservedServing(ftjs), SETTINGS, "2026-11-21T00:00:00Z")
    dep = copy.deepcopy(first.apply[-1])
    dep["metadata"]["generation"] = 1
    dep["status"] = {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1}
    body["status"] = first.status
    second = msv_reconcile.plan(body, msv_reconcile.ObservedServing(ftjs, dep), SETTINGS, "2026-11-21T00:00:01Z")
    assert not second.apply and second.status["phase"] == "Ready"
    body["status"].update(second.status)
    assert msv_reconcile.plan(body, msv_reconcile.ObservedServing(ftjs, dep), SETTINGS, "2026-11-21T00:00:02Z").empty
    assert json.loads(first.apply[0]["data"]["server.json"])["specialTokensInContent"] == "text"  # the safe default
    body["spec"]["maxConcurrentRequests"] = 8
    body["spec"]["specialTokensInContent"] = "reject"
    body["metadata"]["generation"] = 2
    changed = msv_reconcile.plan(body, msv_reconcile.ObservedServing(ftjs, dep), SETTINGS, "2026-11-21T00:00:03Z")
    assert [o["kind"] for o in changed.apply] == ["ConfigMap", "Service", "NetworkPolicy", "Deployment"]
    server = json.loads(changed.apply[0]["data"]["server.json"])
    assert server["maxConcurrentRequests"] == 8 and server["specialTokensInContent"] == "reject"
    assert changed.status["phase"] == "Deploying"


def test_a_replica_that_never_gets_ready_fails_the_rollout_and_says_why() -> None:
    """A server that hangs while loading stays Running and unready: the status names the pod and its probe,
    and once spec.startupTimeoutSeconds passes without a ready replica (the Deployment's
    progressDeadlineSeconds) the ModelServing is Failed; a replica that gets ready after all makes it Ready."""
    ftjs = {"support-assistant": _succeeded_ftj("support-assistant")}
    body = _body(startupTimeoutSeconds=120)
    first = msv_reconcile.plan(body, msv_reconcile.ObservedServing(ftjs), SETTINGS, "2026-11-21T00:00:00Z")
    dep = copy.deepcopy(first.apply[-1])
    assert dep["spec"]["progressDeadlineSeconds"] == 120
    body["status"] = first.status
    dep["metadata"]["generation"] = 1
    dep["status"] = {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 0}
    pod = {"metadata": {"name": "support-assistant-server-7d9-x2", "creationTimestamp": "2026-11-21T00:00:01Z"},
           "spec": dep["spec"]["template"]["spec"],
           "status": {"phase": "Running", "containerStatuses": [{
               "name": "server", "ready": False, "restartCount": 1,
               "lastState": {"terminated": {"exitCode": 137, "reason": "Error"}},
               "state": {"running": {"startedAt": "2026-11-21T00:00:05Z"}}}]}}
    observed = msv_reconcile.ObservedServing(ftjs, dep, [pod])
    loading = msv_reconcile.plan(body, observed, SETTINGS, "2026-11-21T00:00:30Z")
    ready = next(c for c in loading.status["conditions"] if c["type"] == "Ready")
    assert body["status"]["phase"] == "Deploying" and "phase" not in loading.status and ready["reason"] == "NotReady"
    assert ("pod support-assistant-server-7d9-x2 container server has run since 2026-11-21T00:00:05Z without "
            "passing its readiness probe (GET /ready on port http); restarted 1 time, last exit code 137") \
        in ready["message"]
    body["status"].update(loading.status)
    dep["status"]["conditions"] = [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                                    "message": 'ReplicaSet "support-assistant-server-7d9" has timed out progressing.'}]
    failed = msv_reconcile.plan(body, observed, SETTINGS, "2026-11-21T00:02:05Z")
    ready = next(c for c in failed.status["conditions"] if c["type"] == "Ready")
    assert failed.status["phase"] == "Failed" and ready["reason"] == "ProgressDeadlineExceeded"
    assert ready["message"].startswith("no new replica became ready within spec.startupTimeoutSeconds (120s): "
                                       "0/1 replicas ready; pod support-assistant-server-7d9-x2 container server")
    assert [(e.type, e.reason) for e in failed.events] == [("Warning", "Failed")]
    body["status"].update(failed.status)
    dep["status"] = {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1}
    later = msv_reconcile.plan(body, msv_reconcile.ObservedServing(ftjs, dep), SETTINGS, "2026-11-21T00:03:00Z")
    assert later.status["phase"] == "Ready"


def _body(**spec: Any) -> dict[str, Any]:
    body = copy.deepcopy(load_sample("modelserving.yaml"))
    body["metadata"].update(namespace=NS, uid="msv-uid", generation=1)
    body["spec"].update(spec)
    return body


@pytest.mark.parametrize("runtime", ["hone", "vllm"])
def test_sample_renders_valid_objects(runtime: str) -> None:
    ftjs = {"support-assistant": _succeeded_ftj("support-assistant")}
    gpus = {"resources": {"gpus": 1}} if runtime == "vllm" else {}
    for obj in msv_build.all_objects(_msv(runtime=runtime, autoscaling={"minReplicas": 1, "maxReplicas": 3}, **gpus),
                                     SETTINGS, ftjs):
        kubernetes_validate.validate(obj, K8S, strict=True)


def test_a_modelserving_from_uris_needs_no_finetunejob() -> None:
    """Adapters given by location, on a base model named in the spec: nothing to wait for."""
    spec = dict(fineTuneJobRef=None, baseModel={"uri": "pvc://models/smollm2"},
                adapters=[{"name": "support-v1", "uri": "pvc://hone-models/adapters/team-a/old/model"},
                          {"name": "support-v2", "uri": "s3://acme-models/hone/team-a/new/model"}])
    objs, resolved = msv_build.desired(_msv(**spec), {}, SETTINGS)
    names = resolved.names
    assert names == ["smollm2", "support-v1", "support-v2"]
    cfg = resolved.config
    assert cfg.base_model.location == "/var/run/hone/pvc/models/smollm2"
    assert [a.location for a in cfg.adapters] == ["/var/run/hone/pvc/hone-models/adapters/team-a/old/model",
                                                  "s3://acme-models/hone/team-a/new/model"]
    pod = objs[-1]["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["readOnly"] for m in pod["containers"][0]["volumeMounts"] if m["name"].startswith("pvc-")}
    assert mounts == {"/var/run/hone/pvc/models": True, "/var/run/hone/pvc/hone-models": True}
    # The server's torch threads follow the pod's CPU limit, not the node's cores (which would be throttled).
    assert {"name": "OMP_NUM_THREADS", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1"}}} \
        in pod["containers"][0]["env"]
    for obj in objs:
        kubernetes_validate.validate(obj, K8S, strict=True)
    plan = msv_reconcile.plan(_body(**spec), msv_reconcile.ObservedServing({}), SETTINGS, "2026-11-21T00:00:00Z")
    assert plan.status["phase"] == "Deploying" and [o["kind"] for o in plan.apply][-1] == "Deployment"

    no_base = {k: v for k, v in spec.items() if k != "baseModel"}
    refused = msv_reconcile.plan(_body(**no_base), msv_reconcile.ObservedServing({}), SETTINGS, "2026-11-21T00:00:00Z")
    ready = next(c for c in refused.status["conditions"] if c["type"] == "Ready")
    assert refused.status["phase"] == "Failed" and "set spec.baseModel" in ready["message"]


@pytest.mark.parametrize("uri,name", [
    ("embedded://smollm2-135m-instruct", "smollm2-135m-instruct"),
    ("hf://HuggingFaceTB/SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"),
    ("pvc://models/gguf/smollm2.Q4_1.gguf", "smollm2.Q4_1"),
])
def test_status_names_the_base_model_as_the_server_serves_it(uri: str, name: str) -> None:
    _, resolved = msv_build.desired(_msv(fineTuneJobRef=None, baseModel={"uri": uri}), {}, SETTINGS)
    assert resolved.names == [name]
    from hone_trainer.serving.loading import default_served_name

    assert default_served_name(resolved.config.base_model.location) == name  # what the server answers to


def test_with_a_quota_endpoint_hone_servers_report_with_a_token_good_only_for_it() -> None:
    settings = SETTINGS.model_copy(update={"quota_url": "http://hone-quota.hone-system.svc:8082"})
    spec = dict(fineTuneJobRef=None, baseModel={"uri": "pvc://models/smollm2"})
    objs, resolved = msv_build.desired(_msv(**spec), {}, settings)
    quota = resolved.config.quota
    assert quota is not None and quota.url == "http://hone-quota.hone-system.svc:8082"
    pod = objs[-1]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e.get("valueFrom") for e in container["env"]}
    assert env["HONE_POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["HONE_POD_UID"] == {"fieldRef": {"fieldPath": "metadata.uid"}}
    volumes = {v["name"]: v for v in pod["volumes"]}
    # A projected token whose audience the API server never accepts: it proves the pod to Hone's quota
    # endpoint only (the pod still mounts no API token of its own).
    assert volumes["quota-token"]["projected"]["sources"] == [{"serviceAccountToken": {
        "path": "token", "audience": "hone-quota", "expirationSeconds": 3600}}]
    assert pod["automountServiceAccountToken"] is False
    # The day's served count outlives a restart of the container.
    assert "emptyDir" in volumes["usage"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert quota.token_file.startswith(mounts["quota-token"] + "/")
    assert quota.journal is not None and quota.journal.startswith(mounts["usage"] + "/")
    for obj in objs:
        kubernetes_validate.validate(obj, K8S, strict=True)
    # vLLM cannot ask for grants: no quota, metered by its own /metrics only.
    _, vllm = msv_build.desired(_msv(runtime="vllm", resources={"gpus": 1}, **spec), {}, settings)
    assert vllm.config.quota is None
