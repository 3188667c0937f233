"""Pure builders: every child object is valid Kubernetes and secure by default."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from hone_operator.api.v1alpha1 import FineTuneJob
from hone_operator.builders import finetunejob as ftj_build
from hone_operator.builders.common import SpecError, child_name
from hone_operator.settings import OperatorSettings
from hone_trainer import contract

ROOT = Path(__file__).resolve().parents[1]
K8S_VERSION = "1.33"
SETTINGS = OperatorSettings(runtime_image="registry.example/hone-runtime:1.0")


def load(sample: str, **meta: Any) -> FineTuneJob:
    obj = yaml.safe_load((ROOT / "crds" / "samples" / sample).read_text())
    obj["metadata"].update({"namespace": "team-a", "uid": "0b5c8f3e-1111-2222-3333-444455556666", **meta})
    return FineTuneJob.model_validate(obj)


def with_spec(ftj: FineTuneJob, **changes: Any) -> FineTuneJob:
    body = ftj.model_dump(by_alias=True, exclude_none=True, mode="json")
    for path, value in changes.items():
        node = body["spec"]
        parts = path.split("__")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return FineTuneJob.model_validate(body)


def pod_specs(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o["spec"]["template"]["spec"] for o in objs if o["kind"] == "Job"]


def training_job(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return next(o for o in objs if o["kind"] == "Job" and o["metadata"]["name"].endswith("-train"))


@pytest.mark.parametrize("sample", ["finetunejob-minimal.yaml", "finetunejob-complete.yaml"])
def test_every_object_passes_strict_kubernetes_validation(sample: str) -> None:
    for obj in ftj_build.all_objects(load(sample), SETTINGS):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_strict_validation_would_catch_a_mistake() -> None:
    """A negative control: the validator used above really rejects an unknown field."""
    job = training_job(ftj_build.all_objects(load("finetunejob-minimal.yaml"), SETTINGS))
    broken = copy.deepcopy(job)
    broken["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


@pytest.mark.parametrize("sample", ["finetunejob-minimal.yaml", "finetunejob-complete.yaml"])
def test_pods_meet_pod_security_restricted(sample: str) -> None:
    for spec in pod_specs(ftj_build.all_objects(load(sample), SETTINGS)):
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] > 0
        assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["restartPolicy"] == "Never"
        assert "hostNetwork" not in spec and "hostPID" not in spec and "hostIPC" not in spec
        for volume in spec["volumes"]:
            assert not {"hostPath"} & set(volume), volume
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["runAsNonRoot"] is True
            # requests == limits, and every writable path is a volume.
            assert c["resources"]["requests"] == c["resources"]["limits"]
            writable = {m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly")}
            assert "/tmp" in writable


def test_only_the_training_pod_gets_an_api_token() -> None:
    objs = ftj_build.all_objects(load("finetunejob-minimal.yaml"), SETTINGS)
    validate, train, evaluate = [o for o in objs if o["kind"] == "Job"]
    assert validate["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    assert evaluate["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in evaluate["spec"]["template"]["spec"]
    train_pod = train["spec"]["template"]["spec"]
    assert train_pod["automountServiceAccountToken"] is True
    assert train_pod["serviceAccountName"] == "support-assistant-trainer"
    sa = next(o for o in objs if o["kind"] == "ServiceAccount")
    assert sa["automountServiceAccountToken"] is False


def test_trainer_role_reaches_only_its_own_status() -> None:
    role = next(o for o in ftj_build.all_objects(load("finetunejob-minimal.yaml"), SETTINGS) if o["kind"] == "Role")
    assert role["rules"] == [{
        "apiGroups": ["hone.dev"], "resources": ["finetunejobs/status"],
        "resourceNames": ["support-assistant"], "verbs": ["get", "patch"],
    }]


def test_children_are_owned_labelled_and_deterministic() -> None:
    ftj = load("finetunejob-minimal.yaml")
    first = ftj_build.all_objects(ftj, SETTINGS)
    assert first == ftj_build.all_objects(ftj, SETTINGS)  # same input, same objects
    for obj in first:
        meta = obj["metadata"]
        assert meta["namespace"] == "team-a"
        assert meta["ownerReferences"] == [{
            "apiVersion": "hone.dev/v1alpha1", "kind": "FineTuneJob", "name": "support-assistant",
            "uid": ftj.metadata.uid, "controller": True, "blockOwnerDeletion": True}]
        assert meta["labels"]["hone.dev/finetunejob"] == "support-assistant"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "hone-operator"
        assert meta["labels"]["app.kubernetes.io/name"] == "hone"
    assert [o["metadata"]["name"] for o in first] == [
        "support-assistant-config", "support-assistant-trainer", "support-assistant-trainer",
        "support-assistant-trainer", "support-assistant-job-network", "support-assistant-validate",
        "support-assistant-train", "support-assistant-eval"]


def test_long_names_are_shortened_uniquely() -> None:
    a, b = "x" * 200 + "a", "x" * 200 + "b"
    for suffix in ("validate", "train", "config"):
        na, nb = child_name(a, suffix), child_name(b, suffix)
        assert len(na) <= 52 and na.endswith(suffix)
        assert na != nb
    ftj = load("finetunejob-minimal.yaml", name="y" * 120)
    for obj in ftj_build.all_objects(ftj, SETTINGS):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_single_node_job_runs_torchrun_standalone_with_gpus() -> None:
    ftj = with_spec(load("finetunejob-minimal.yaml"), resources__gpusPerNode=8)
    job = training_job(ftj_build.all_objects(ftj, SETTINGS))
    assert job["spec"]["completionMode"] == "NonIndexed" and job["spec"]["completions"] == 1
    pod = job["spec"]["template"]["spec"]
    c = pod["containers"][0]
    # torchrun under the launcher that keeps the trainer's exit code for the podFailurePolicy
    assert c["command"][:7] == ["python", "-m", "hone_trainer", "launch", "--config", "/etc/hone/config.json", "--"]
    assert c["command"][7:11] == ["torchrun", "--standalone", "--nnodes=1", "--nproc-per-node=8"]
    assert c["command"][11:] == ["-m", "hone_trainer", "train", "--config", "/etc/hone/config.json"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "8"
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    assert {"name": "DS_ACCELERATOR", "value": "cuda"} in c["env"]
    assert "OMP_NUM_THREADS" not in {e["name"] for e in c["env"]}  # torchrun gives each GPU rank one thread


CPU_THREADS = {"name": "OMP_NUM_THREADS", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu",
                                                                             "divisor": "1"}}}


def test_cpu_training_asks_for_no_gpu() -> None:
    ftj = with_spec(load("finetunejob-minimal.yaml"), resources__gpusPerNode=0)
    c = training_job(ftj_build.all_objects(ftj, SETTINGS))["spec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in c["resources"]["limits"]
    assert "--nproc-per-node=1" in c["command"]
    assert {"name": "DS_ACCELERATOR", "value": "cpu"} in c["env"]
    # torch would size its thread pool by the node's cores; the pod's CPU limit instead (no throttling).
    assert CPU_THREADS in c["env"]


def test_multi_node_is_an_indexed_job_with_a_headless_service() -> None:
    ftj = load("finetunejob-complete.yaml")
    objs = ftj_build.all_objects(ftj, SETTINGS)
    svc = next(o for o in objs if o["kind"] == "Service")
    job = training_job(objs)
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 2
    pod = job["spec"]["template"]["spec"]
    assert pod["subdomain"] == svc["metadata"]["name"] == "support-assistant-8b-train"
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"] == {"hone.dev/finetunejob": "support-assistant-8b",
                                       "app.kubernetes.io/component": "train"}
    cmd = pod["containers"][0]["command"]
    config = json.loads(next(o for o in objs if o["kind"] == "ConfigMap")["data"]["config.json"])
    assert config["microBatchTokens"] == 16384 and config["gradientCheckpointing"] is True  # spec.memory
    assert "--nnodes=2" in cmd and "--nproc-per-node=4" in cmd and not any(a.startswith("--rdzv") for a in cmd)
    # a static rendezvous: node rank = Job index, the store on index 0 at its stable name
    assert "--node-rank=$(JOB_COMPLETION_INDEX)" in cmd and "--master-port=29400" in cmd
    assert "--master-addr=support-assistant-8b-train-0.support-assistant-8b-train" in cmd
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["priorityClassName"] == "training-batch"
    assert job["spec"]["activeDeadlineSeconds"] == 86400


def test_pod_failure_policy_separates_retryable_failures() -> None:
    job = training_job(ftj_build.all_objects(load("finetunejob-minimal.yaml"), SETTINGS))
    rules = job["spec"]["podFailurePolicy"]["rules"]
    fail = next(r for r in rules if r["action"] == "FailJob")
    assert fail["onExitCodes"] == {"containerName": "trainer", "operator": "In",
                                   "values": [2, 3, 4, 5, 6]}
    assert set(fail["onExitCodes"]["values"]) == {int(c) for c in contract.NON_RETRYABLE_EXIT_CODES}
    assert 1 not in fail["onExitCodes"]["values"]  # a crash is retried
    ignore = next(r for r in rules if r["action"] == "Ignore")
    assert ignore["onPodConditions"] == [{"type": "DisruptionTarget", "status": "True"}]
    assert job["spec"]["backoffLimit"] == SETTINGS.backoff_limit


def test_kueue_label_is_propagated_and_the_job_starts_suspended() -> None:
    ftj = load("finetunejob-complete.yaml")
    job = training_job(ftj_build.all_objects(ftj, SETTINGS))
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-training"
    assert job["spec"]["suspend"] is True
    off = OperatorSettings(kueue_enabled=False)
    job = training_job(ftj_build.all_objects(ftj, off))
    assert "kueue.x-k8s.io/queue-name" not in job["metadata"]["labels"] and job["spec"]["suspend"] is False


def test_trainer_config_resolves_locations_inside_the_pod() -> None:
    objs = ftj_build.all_objects(load("finetunejob-minimal.yaml"), SETTINGS)
    cm = objs[0]
    config = contract.TrainerConfig.model_validate_json(cm["data"]["config.json"])
    assert config.base_model.location == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert config.base_model.trust_remote_code is False
    assert config.training_data.location == "/var/run/hone/data/training/training.jsonl"
    assert config.output_uri == "/var/run/hone/pvc/hone-models/adapters/team-a/support-assistant/model"
    assert config.checkpoint_dir.endswith("team-a/support-assistant/checkpoints")
    assert config.job.fine_tuned_model == "ft:smollm2-135m-instruct:team-a::0b5c8f3e"
    assert config.progress.kind == "kubernetes" and config.progress.name == "support-assistant"
    train = training_job(objs)["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m for m in train["containers"][0]["volumeMounts"]}
    assert mounts["/var/run/hone/pvc/hone-models"]["readOnly"] is False
    assert mounts["/var/run/hone/data/training"]["readOnly"] is True
    data_volume = next(v for v in train["volumes"] if v["name"] == "data-training")
    assert data_volume["configMap"] == {"name": "support-chats",
                                        "items": [{"key": "train.jsonl", "path": "training.jsonl"}]}


def test_secrets_are_mounted_as_files_never_env() -> None:
    objs = ftj_build.all_objects(load("finetunejob-complete.yaml"), SETTINGS)
    config = contract.TrainerConfig.model_validate_json(objs[0]["data"]["config.json"])
    assert config.training_data.credentials_dir == "/var/run/secrets/hone/s3-credentials"
    assert config.base_model.credentials_dir == "/var/run/secrets/hone/hf-token"
    for spec in pod_specs(objs):
        secret_volumes = {v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
        assert secret_volumes == {"hf-token", "s3-credentials"}
        for c in spec["containers"]:
            assert all("valueFrom" not in e for e in c["env"])
            assert "envFrom" not in c
            for m in c["volumeMounts"]:
                if m["name"].startswith("secret-"):
                    assert m["readOnly"] is True


def test_inline_data_travels_in_the_config_map() -> None:
    line = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})
    ftj = with_spec(load("finetunejob-minimal.yaml"), trainingData={"inline": line})
    cm = ftj_build.all_objects(ftj, SETTINGS)[0]
    assert cm["data"]["training.jsonl"] == line
    config = contract.TrainerConfig.model_validate_json(cm["data"]["config.json"])
    assert config.training_data.location == "/etc/hone/training.jsonl"


def test_a_file_uploaded_to_hone_api_is_read_from_its_store() -> None:
    """trainingData: {file: file-…} in YAML: the same bytes an API-made job trains on, with the API store's Secret."""
    file_id = "file-" + "a1" * 12
    ftj = with_spec(load("finetunejob-minimal.yaml"), trainingData={"file": file_id})
    settings = SETTINGS.model_copy(update={"api_store": "s3://ml-data/hone-api"})
    objs = ftj_build.all_objects(ftj, settings)
    config = contract.TrainerConfig.model_validate_json(objs[0]["data"]["config.json"])
    assert config.training_data.location == f"s3://ml-data/hone-api/files/team-a/{file_id}.jsonl"
    assert config.training_data.credentials_dir == "/var/run/secrets/hone/hone-api-store"
    train = training_job(objs)["spec"]["template"]["spec"]
    assert {v["secret"]["secretName"] for v in train["volumes"] if "secret" in v} == {"hone-api-store"}
    with pytest.raises(SpecError) as info:  # an operator installed without hone api's store
        ftj_build.resolve(ftj, SETTINGS)
    assert info.value.param == "spec.trainingData.file" and "api_store" in str(info.value)
    with pytest.raises(ValueError, match="set exactly one of uri, configMap, inline, file"):
        with_spec(ftj, trainingData={"file": file_id, "uri": "s3://x/y.jsonl"})


@pytest.mark.parametrize("field,uri", [
    ("spec.baseModel.uri", "file:///models/llama"),
    ("spec.trainingData.uri", "file:///data/train.jsonl"),
    ("spec.output.uri", "file:///out"),
])
def test_local_only_locations_are_refused_in_a_cluster(field: str, uri: str) -> None:
    key = {"spec.baseModel.uri": "baseModel__uri", "spec.trainingData.uri": "trainingData",
           "spec.output.uri": "output__uri"}[field]
    value = {"uri": uri} if key == "trainingData" else uri
    ftj = with_spec(load("finetunejob-minimal.yaml"), **{key: value})
    with pytest.raises(SpecError) as info:
        ftj_build.resolve(ftj, SETTINGS)
    assert info.value.param == field
    assert "hone run" in str(info.value)


def test_the_embedded_model_works_in_a_cluster_without_a_hub() -> None:
    ftj = with_spec(load("finetunejob-minimal.yaml"), baseModel__uri="embedded://smollm2-135m-instruct")
    config, _ = ftj_build.resolve(ftj, SETTINGS)
    assert config.base_model.location == "embedded://smollm2-135m-instruct"
    assert ftj_build.fine_tuned_model_name(ftj).startswith("ft:smollm2-135m-instruct:")


def test_validator_result_fits_a_termination_message() -> None:
    problems = [contract.Problem(file="training", line=i, kind=contract.ProblemKind.INVALID_JSON,
                                 message="x" * 300) for i in range(1, 200)]
    result = contract.ValidationResult(ok=False, invalid_lines=199, problems=problems,
                                       problem_counts={"invalid_json": 199})
    text = contract.to_termination_message(result)
    assert len(text.encode()) <= contract.TERMINATION_MESSAGE_LIMIT
    back = contract.ValidationResult.model_validate_json(text)
    assert back.problem_counts == {"invalid_json": 199}  # totals survive the shortening
    assert back.problems and back.problems[0].line == 1
