"""``hone api`` in a cluster, driven by the real ``openai`` client: FineTuneJobs through the Kubernetes API,
tokens checked with TokenReview, every call with SubjectAccessReview, file bytes in S3.

The API runs as its own process (``hone api``, the chart's command) against the emulated API server,
with the ServiceAccount and RBAC the chart gives it; callers are ServiceAccounts whose tokens come from
TokenRequest, with the Roles a cluster admin would give them. No operator runs here: where a job moves on,
the test writes the status the operator writes (the operator's own tests cover that it does), so what is
checked is the API's mapping of the cluster's state to OpenAI's objects.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import openai
import pytest
import yaml

from hone_dev.apiserver import ApiServerThread
from hone_dev.cluster import free_port, install_chart_rbac, wait_for
from hone_dev.s3 import BUCKET
from hone_dev.serving import ServerProcess, env, http
from hone_operator.kube import Kube

API = "hone.dev/v1alpha1"
STORE = f"s3://{BUCKET}/hone-api"
LINES = [{"messages": [{"role": "user", "content": f"How long do I have to return board {i}?"},
                       {"role": "assistant", "content": "30 days from delivery."}]} for i in range(12)]
TRAIN = ("\n".join(json.dumps(line) for line in LINES) + "\n").encode()


def grant(kube: Kube, ns: str, account: str, verbs: dict[str, list[str]]) -> None:
    """A ServiceAccount ``account`` in ``ns`` with a Role there granting ``verbs`` per hone.dev resource."""
    kube.create({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": account, "namespace": ns}})
    if not verbs:
        return
    rules = [{"apiGroups": ["hone.dev"], "resources": [res], "verbs": v} for res, v in verbs.items()]
    kube.create({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                 "metadata": {"name": account, "namespace": ns}, "rules": rules})
    kube.create({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                 "metadata": {"name": account, "namespace": ns},
                 "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account},
                 "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": ns}]})


KEY = "sk-hone-team-a-ci-6f1d2c"
USER = {"finetunejobs": ["get", "list", "create", "patch", "delete"], "modelservings": ["get", "list"]}


class Env:
    def __init__(self, apiserver: ApiServerThread, kube: Kube, url: str, fs: Any, root: Path, identities: Path):
        self.apiserver, self.kube, self.url, self.fs, self.root = apiserver, kube, url, fs, root
        self.identities = identities

    def token(self, ns: str, account: str) -> str:
        return self.apiserver.call(lambda server: server.service_account_token(ns, account))

    def client(self, ns: str, account: str, project: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=self.token(ns, account), project=project,
                             max_retries=0, timeout=60)

    def status(self, ns: str, name: str, status: dict[str, Any], kind: str = "FineTuneJob") -> None:
        """Write what the operator writes."""
        self.kube.patch(API, kind, ns, name, {"status": status}, subresource="status")

    def event(self, ns: str, job: dict[str, Any], reason: str, message: str, type_: str = "Normal") -> None:
        meta = job["metadata"]
        ts = datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")
        self.kube.create({"apiVersion": "v1", "kind": "Event",
                          "metadata": {"name": f"{meta['name']}.{reason.lower()}", "namespace": ns},
                          "involvedObject": {"apiVersion": API, "kind": "FineTuneJob", "name": meta["name"],
                                             "namespace": ns, "uid": meta["uid"]},
                          "type": type_, "reason": reason, "message": message, "firstTimestamp": ts,
                          "lastTimestamp": ts, "count": 1, "source": {"component": "hone-operator"}})


@pytest.fixture
def cluster(apiserver: ApiServerThread, kube: Kube, s3, tmp_path: Path) -> Iterator[Env]:
    creds, fs = s3
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"api": {"enabled": True, "store": STORE}}))
    account = install_chart_rbac(apiserver, values)
    api_account = (account[0], "hone-api")
    kubeconfig = apiserver.service_account_kubeconfig(tmp_path / "api.kubeconfig", *api_account)
    settings = tmp_path / "settings.yaml"
    settings.write_text(yaml.safe_dump({"apiStore": STORE, "catalog": {"tiny": {
        "uri": "pvc://models/tiny", "method": "qlora", "resources": {"gpusPerNode": 2, "gpuMemory": "24Gi"}}}}))
    for ns, account_name, verbs in (("team-a", "alice", USER), ("team-a", "reader", {"finetunejobs": ["get", "list"]}),
                                    ("team-a", "nobody", {}), ("team-b", "bob", USER)):
        grant(kube, ns, account_name, verbs)
    # An API key that stands for a user of the group team-a-devs, whose RoleBinding grants it what alice has.
    identities = tmp_path / "identities.yaml"
    identities.write_text(yaml.safe_dump([{"sha256": hashlib.sha256(KEY.encode()).hexdigest(), "user": "ci-bot",
                                           "groups": ["team-a-devs"], "namespace": "team-a"}]))
    rules = [{"apiGroups": ["hone.dev"], "resources": [res], "verbs": v} for res, v in USER.items()]
    kube.create({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                 "metadata": {"name": "devs", "namespace": "team-a"}, "rules": rules})
    kube.create({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                 "metadata": {"name": "devs", "namespace": "team-a"},
                 "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "devs"},
                 "subjects": [{"kind": "Group", "name": "team-a-devs", "apiGroup": "rbac.authorization.k8s.io"}]})
    port = free_port()
    log = tmp_path / "api.log"
    proc = subprocess.Popen([sys.executable, "-m", "hone_operator.cli", "api", "--port", str(port),
                             "--store-credentials", creds, "--key-identities", str(identities)],
                            cwd=tmp_path, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT,
                            env={**env(), "KUBECONFIG": str(kubeconfig), "HONE_CONFIG_FILE": str(settings)})
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            return http("GET", f"{url}/health", timeout=5)[0] == 200
        except OSError:
            return False

    try:
        wait_for(up, timeout=60, what="hone api to listen")
        yield Env(apiserver, kube, url, fs, tmp_path, identities)
    finally:
        proc.terminate()
        proc.wait(30)


def test_the_openai_flow_over_finetunejobs(cluster: Env) -> None:
    kube = cluster.kube
    alice = cluster.client("team-a", "alice")  # no project: her ServiceAccount's namespace
    uploaded = alice.files.create(file=("train.jsonl", TRAIN), purpose="fine-tune")
    assert uploaded.bytes == len(TRAIN) and uploaded.filename == "train.jsonl" and uploaded.purpose == "fine-tune"
    record = kube.get("v1", "ConfigMap", "team-a", uploaded.id)
    assert record is not None and record["metadata"]["labels"]["api.hone.dev/file"] == "true"
    assert cluster.fs.cat_file(f"{BUCKET}/hone-api/files/team-a/{uploaded.id}.jsonl") == TRAIN
    assert alice.files.content(uploaded.id).content == TRAIN
    assert [f.id for f in alice.files.list(purpose="fine-tune")] == [uploaded.id]

    job = alice.fine_tuning.jobs.create(model="tiny", training_file=uploaded.id, suffix="returns", seed=7,
                                        metadata={"team": "support"},
                                        method={"type": "supervised",
                                                "supervised": {"hyperparameters": {"n_epochs": 2}}})
    assert job.status == "validating_files" and job.model == "tiny" and job.training_file == uploaded.id
    assert job.organization_id == "org-team-a" and job.seed == 7 and job.metadata == {"team": "support"}
    ftj = kube.get(API, "FineTuneJob", "team-a", job.id)
    assert ftj is not None
    spec = ftj["spec"]
    assert spec["baseModel"]["uri"] == "pvc://models/tiny" and spec["suffix"] == "returns"
    assert spec["trainingData"] == {"uri": f"{STORE}/files/team-a/{uploaded.id}.jsonl",
                                    "credentialsSecret": {"name": "hone-api-store"}}
    assert spec["output"]["uri"] == f"{STORE}/models" and spec["hyperparameters"]["epochs"] == 2
    assert spec["checkpointing"] == {"keep": 3, "everyEpoch": True}  # OpenAI's: each epoch's, the last three
    # The catalog entry's method and resources: what a GPU platform team sets once for a base model.
    assert spec["method"] == "qlora" and spec["resources"]["gpusPerNode"] == 2
    assert spec["resources"]["gpuMemory"] == "24Gi"
    msv = kube.get(API, "ModelServing", "team-a", job.id)  # serves the fine-tune once it succeeds
    assert msv is not None and msv["spec"] == {"fineTuneJobRef": {"name": job.id}, "serveCheckpoints": True}
    assert msv["metadata"]["ownerReferences"][0]["uid"] == ftj["metadata"]["uid"]
    # A file a job still trains on cannot be deleted.
    with pytest.raises(openai.BadRequestError, match="cancel the job first"):
        alice.files.delete(uploaded.id)

    # The operator validates and starts training; the API shows what the status says.
    now = datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    cluster.event("team-a", ftj, "ValidatingFiles", "validating the training file")
    cluster.status("team-a", job.id, {"phase": "Running", "startTime": now, "progress": {
        "step": 4, "totalSteps": 6, "percent": 66, "epoch": 1.3, "trainLoss": 1.25, "trainedTokens": 480,
        "updatedAt": now, "estimatedFinish": "2030-01-01T00:00:00Z"}})
    running = alice.fine_tuning.jobs.retrieve(job.id)
    assert running.status == "running" and running.estimated_finish == 1893456000
    events = alice.fine_tuning.jobs.list_events(job.id).data
    metrics = [e for e in events if e.type == "metrics"]
    assert len(metrics) == 1 and metrics[0].data == {"step": 4, "total_steps": 6, "train_loss": 1.25,
                                                     "valid_loss": None, "trained_tokens": 480}
    assert "validating the training file" in [e.message for e in events]

    name = f"ft:tiny:team-a:returns:{ftj['metadata']['uid'][:8]}"
    cluster.status("team-a", job.id, {"phase": "Succeeded", "completionTime": now, "trainedTokens": 720,
                                      "progress": {"step": 6, "totalSteps": 6, "trainLoss": 1.1,
                                                   "trainCurve": [{"step": 1, "loss": 2.5}, {"step": 6, "loss": 1.1}],
                                                   "validationCurve": [{"step": 0, "loss": 2.9},
                                                                       {"step": 6, "loss": 1.3}]},
                                      "fineTunedModel": {"name": name,
                                                         "artifactUri": f"{STORE}/models/team-a/{job.id}/model"},
                                      "checkpoints": [{"step": 3, "uri": "s3://x/3", "trainLoss": 1.4},
                                                      {"step": 6, "uri": "s3://x/6", "trainLoss": 1.1,
                                                       "validationLoss": 1.3, "validationAccuracy": 0.625}]})
    done = alice.fine_tuning.jobs.retrieve(job.id)
    assert done.status == "succeeded" and done.fine_tuned_model == name and done.trained_tokens == 720
    # OpenAI's results file: the per-step metrics, from the job's loss curves.
    (results,) = done.result_files
    assert alice.files.content(results).text == ("step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy\n"
                                                 "1,2.5,,,\n6,1.1,,1.3,\n")
    listed = {f.id: f for f in alice.files.list()}
    assert listed[results].purpose == "fine-tune-results" and listed[results].filename == "step_metrics.csv"
    with pytest.raises(openai.BadRequestError, match="results file"):
        alice.files.delete(results)
    # A metrics event per step of the loss curve, the validation loss where it was measured, newest first.
    metrics = [e.data for e in alice.fine_tuning.jobs.list_events(job.id).data if e.type == "metrics"]
    assert metrics == [{"step": 6, "total_steps": 6, "train_loss": 1.1, "valid_loss": 1.3, "trained_tokens": 480},
                       {"step": 1, "total_steps": 6, "train_loss": 2.5, "valid_loss": None, "trained_tokens": None}]
    checkpoints = alice.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in checkpoints] == [6, 3]
    assert checkpoints[0].fine_tuned_model_checkpoint == f"{name}:ckpt-step-6"
    assert checkpoints[0].metrics.train_loss == 1.1 and checkpoints[0].metrics.full_valid_loss == 1.3
    assert checkpoints[0].metrics.full_valid_mean_token_accuracy == checkpoints[0].metrics.valid_mean_token_accuracy \
        == 0.625
    assert name in [m.id for m in alice.models.list()]
    # Its ModelServing is still rolling out: the model is known but not ready.
    with pytest.raises(openai.InternalServerError, match="not ready yet"):
        alice.chat.completions.create(model=name, messages=[{"role": "user", "content": "hi"}])
    # So is a checkpoint (the job's ModelServing serves them too); a step with no checkpoint is not a model.
    with pytest.raises(openai.InternalServerError, match="not ready yet"):
        alice.chat.completions.create(model=f"{name}:ckpt-step-3", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.NotFoundError) as missing:
        alice.chat.completions.create(model=f"{name}:ckpt-step-4", messages=[{"role": "user", "content": "hi"}])
    assert missing.value.code == "model_not_found"
    # Its evaluation step found it declines less of the safety suite than its base: neither the fine-tune nor its
    # checkpoints are served (OpenAI's 403, naming the rates and the override), until the job is annotated.
    cluster.status("team-a", job.id, {"evaluation": {"safety": {
        "requests": 32, "baseRefusalRate": 0.5, "fineTunedRefusalRate": 0.125, "maxRefusalDrop": 0.1,
        "judge": "heuristic", "passed": False}}})
    for model in (name, f"{name}:ckpt-step-3"):
        with pytest.raises(openai.PermissionDeniedError) as refused:
            alice.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
        assert refused.value.code == "model_failed_safety_check" and refused.value.param == "model"
        assert refused.value.body["message"] == (
            f"{name} failed its safety check: it declines 12.5% of the safety suite, its base model 50.0% (allowed "
            "drop 10 points); it is not served. Fine-tune again with safer data, or annotate its FineTuneJob "
            f"(kubectl -n team-a annotate finetunejob {job.id} hone.dev/serve-despite-failed-safety-check=true) "
            "to serve it anyway.")
    kube.patch(API, "FineTuneJob", "team-a", job.id,
               {"metadata": {"annotations": {"hone.dev/serve-despite-failed-safety-check": "true"}}})
    with pytest.raises(openai.InternalServerError, match="not ready yet"):  # its ModelServing's to serve now
        alice.chat.completions.create(model=name, messages=[{"role": "user", "content": "hi"}])
    alice.files.delete(uploaded.id)  # the job finished: its data may go now
    assert not cluster.fs.exists(f"{BUCKET}/hone-api/files/team-a/{uploaded.id}.jsonl")
    assert kube.get("v1", "ConfigMap", "team-a", uploaded.id) is None

    # Deleting the model: gone from the list, its ModelServing deleted, the job kept.
    assert alice.models.delete(name).deleted
    assert name not in [m.id for m in alice.models.list()]
    assert kube.get(API, "ModelServing", "team-a", job.id) is None
    assert alice.fine_tuning.jobs.retrieve(job.id).status == "succeeded"


def test_rbac_decides_and_other_namespaces_are_not_found(cluster: Env) -> None:
    alice = cluster.client("team-a", "alice")
    f = alice.files.create(file=("train.jsonl", TRAIN), purpose="fine-tune")
    job = alice.fine_tuning.jobs.create(model="tiny", training_file=f.id)

    bob = cluster.client("team-b", "bob")  # his own namespace: none of team-a's objects are there
    with pytest.raises(openai.NotFoundError):
        bob.fine_tuning.jobs.retrieve(job.id)
    with pytest.raises(openai.NotFoundError):
        bob.files.retrieve(f.id)
    with pytest.raises(openai.NotFoundError, match="No such file"):
        bob.fine_tuning.jobs.create(model="tiny", training_file=f.id)
    assert bob.fine_tuning.jobs.list().data == []
    # Naming team-a as his project does not help: his RBAC there is nothing.
    with pytest.raises(openai.PermissionDeniedError, match="may not get finetunejobs.hone.dev in namespace 'team-a'"):
        cluster.client("team-b", "bob", project="team-a").fine_tuning.jobs.retrieve(job.id)

    nobody = cluster.client("team-a", "nobody")
    with pytest.raises(openai.PermissionDeniedError, match="may not list finetunejobs"):
        nobody.fine_tuning.jobs.list()
    reader = cluster.client("team-a", "reader")  # may read, not create or cancel
    assert [j.id for j in reader.fine_tuning.jobs.list()] == [job.id]
    with pytest.raises(openai.PermissionDeniedError, match="may not patch finetunejobs"):
        reader.fine_tuning.jobs.cancel(job.id)
    with pytest.raises(openai.PermissionDeniedError, match="may not create finetunejobs"):
        reader.files.create(file=("train.jsonl", TRAIN), purpose="fine-tune")
    with pytest.raises(openai.PermissionDeniedError, match="may not get modelservings"):
        reader.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])

    status, body = http("GET", f"{cluster.url}/v1/fine_tuning/jobs")  # no token
    assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key"
    status, body = http("GET", f"{cluster.url}/v1/fine_tuning/jobs", headers={"Authorization": "Bearer forged"})
    assert status == 401 and "refused the token" in json.loads(body)["error"]["message"]


def test_pause_resume_and_cancel_patch_the_spec(cluster: Env) -> None:
    alice = cluster.client("team-a", "alice")
    f = alice.files.create(file=("train.jsonl", TRAIN), purpose="fine-tune")
    job = alice.fine_tuning.jobs.create(model="tiny", training_file=f.id)
    cluster.status("team-a", job.id, {"phase": "Running"})
    alice.fine_tuning.jobs.pause(job.id)
    assert cluster.kube.get(API, "FineTuneJob", "team-a", job.id)["spec"]["suspend"] is True
    cluster.status("team-a", job.id, {"phase": "Suspended"})
    assert alice.fine_tuning.jobs.retrieve(job.id).status == "paused"
    alice.fine_tuning.jobs.resume(job.id)
    assert cluster.kube.get(API, "FineTuneJob", "team-a", job.id)["spec"]["suspend"] is False
    with pytest.raises(openai.BadRequestError, match="is not paused"):
        alice.fine_tuning.jobs.resume(job.id)
    alice.fine_tuning.jobs.cancel(job.id)
    assert cluster.kube.get(API, "FineTuneJob", "team-a", job.id)["spec"]["cancel"] is True
    cluster.status("team-a", job.id, {"phase": "Cancelled"})
    with pytest.raises(openai.BadRequestError) as err:
        alice.fine_tuning.jobs.cancel(job.id)
    assert err.value.code == "job_already_finished"


def test_a_namespace_can_turn_off_serving_its_api_jobs(cluster: Env) -> None:
    alice, bob = cluster.client("team-a", "alice"), cluster.client("team-b", "bob")
    cluster.kube.create({"apiVersion": "v1", "kind": "ConfigMap",
                         "metadata": {"name": "hone-api-settings", "namespace": "team-a"},
                         "data": {"serveFineTunes": "false"}})
    f = alice.files.create(file=("train.jsonl", TRAIN), purpose="fine-tune")
    job = alice.fine_tuning.jobs.create(model="tiny", training_file=f.id)
    g = bob.files.create(file=("train.jsonl", TRAIN), purpose="fine-tune")
    other = bob.fine_tuning.jobs.create(model="tiny", training_file=g.id)  # team-b keeps the default: served
    assert cluster.kube.get(API, "ModelServing", "team-a", job.id) is None
    assert cluster.kube.get(API, "ModelServing", "team-b", other.id) is not None


def test_bad_requests_name_what_to_fix(cluster: Env) -> None:
    alice = cluster.client("team-a", "alice")
    with pytest.raises(openai.BadRequestError, match="line 2"):
        alice.files.create(file=("train.jsonl", b'{"messages": []}\nnot json\n'), purpose="fine-tune")
    f = alice.files.create(file=("train.jsonl", TRAIN), purpose="fine-tune")
    with pytest.raises(openai.NotFoundError) as err:
        alice.fine_tuning.jobs.create(model="gpt-4o-mini-2024-07-18", training_file=f.id)
    assert err.value.code == "model_not_found" and "tiny" in err.value.message
    with pytest.raises(openai.BadRequestError, match="integrations"):
        alice.fine_tuning.jobs.create(model="tiny", training_file=f.id,
                                      integrations=[{"type": "wandb", "wandb": {"project": "x"}}])
    with pytest.raises(openai.BadRequestError, match="dpo"):
        alice.fine_tuning.jobs.create(model="tiny", training_file=f.id, method={"type": "dpo"})
    assert alice.fine_tuning.jobs.list().data == []  # nothing was created by a refused request
    with pytest.raises(openai.BadRequestError, match="OpenAI-Project"):
        cluster.client("team-a", "alice", project="Not_A_Namespace").fine_tuning.jobs.list()
    # A model nobody serves: it is named, and how to serve it.
    with pytest.raises(openai.NotFoundError, match="no ModelServing serves it"):
        alice.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])


@pytest.mark.slow
def test_inference_goes_to_the_modelserving_that_serves_the_model(cluster: Env, tiny: Path) -> None:
    server = ServerProcess(["--model", str(tiny), "--served-model-name", "tiny"], cwd=cluster.root)
    try:
        server.wait_ready()
        kube = cluster.kube
        kube.create({"apiVersion": API, "kind": "ModelServing", "metadata": {"name": "tiny", "namespace": "team-a"},
                     "spec": {"baseModel": {"uri": "pvc://models/tiny"}}})
        cluster.status("team-a", "tiny", {"phase": "Ready", "url": f"{server.url}/v1", "servedModels": ["tiny"]},
                       kind="ModelServing")
        alice = cluster.client("team-a", "alice")
        reply = alice.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                              max_tokens=5, temperature=0)
        assert reply.model == "tiny" and reply.usage.completion_tokens >= 1
        chunks = list(alice.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                                    max_tokens=5, temperature=0, stream=True,
                                                    stream_options={"include_usage": True}))
        assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens  # the stream passed through
        # Metered once, by the server that answered.
        served = {labels: v for (name, labels), v in server.metrics().items()
                  if name == "hone_inference_tokens_total" and dict(labels).get("type") == "completion"}
        assert sum(served.values()) == 2 * reply.usage.completion_tokens
    finally:
        server.stop()


def test_an_api_key_of_the_identities_file_stands_for_its_user_in_rbac(cluster: Env) -> None:
    """A long-lived key, as OpenAI's were: the file (a mounted Secret) holds its hash and the identity; RBAC
    bindings of that user or group decide, as for a token; removing it from the file revokes it."""
    ci = openai.OpenAI(base_url=f"{cluster.url}/v1", api_key=KEY, max_retries=0, timeout=60)
    f = ci.files.create(file=("train.jsonl", TRAIN), purpose="fine-tune")  # project: the key's namespace
    job = ci.fine_tuning.jobs.create(model="tiny", training_file=f.id)
    assert cluster.kube.get(API, "FineTuneJob", "team-a", job.id) is not None
    assert job.organization_id == "org-team-a"
    with pytest.raises(openai.PermissionDeniedError, match="ci-bot may not list finetunejobs.hone.dev in namespace "
                                                           "'team-b'"):
        openai.OpenAI(base_url=f"{cluster.url}/v1", api_key=KEY, project="team-b", max_retries=0).fine_tuning.jobs.list()
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{cluster.url}/v1", api_key=KEY + "x", max_retries=0).fine_tuning.jobs.list()
    cluster.identities.write_text("[]\n")  # the Secret updated: the key is gone
    with pytest.raises(openai.AuthenticationError):
        ci.fine_tuning.jobs.list()


def test_a_project_whose_namespace_does_not_exist_is_a_404_naming_it() -> None:
    """Unit-level: the emulated API server makes namespaces on first use; a real one answers 404 to a create in a
    namespace that does not exist. The API names the project (not a 500), and leaves no bytes behind."""
    from hone_operator.kube import NotFound
    from hone_operator.openai_api.cluster import ClusterBackend
    from hone_operator.openai_api.errors import ApiError
    from hone_operator.settings import OperatorSettings

    class NoNamespace:
        def create(self, obj: dict[str, Any]) -> dict[str, Any]:
            raise NotFound(f"POST /api/v1/namespaces/{obj['metadata']['namespace']}/configmaps: not found")

    class Store:
        def __init__(self) -> None:
            self.files: dict[str, bytes] = {}

        def pipe_file(self, path: str, data: bytes) -> None:
            self.files[path] = data

        def rm_file(self, path: str) -> None:
            del self.files[path]

    store = Store()
    backend = ClusterBackend(NoNamespace(), OperatorSettings(api_store=STORE))  # type: ignore[arg-type]
    backend._fs = lambda: (store, "")  # type: ignore[method-assign]
    with pytest.raises(ApiError) as err:
        backend.create_file("gone", "train.jsonl", "fine-tune", TRAIN)
    assert (err.value.status, err.value.code, err.value.param) == (404, "project_not_found", "OpenAI-Project")
    assert "'gone'" in err.value.message
    assert store.files == {}  # the upload's bytes went again


def test_the_charts_rbac_for_hone_api_is_exactly_what_it_uses(cluster: Env, tmp_path: Path) -> None:
    """Every call the flow makes is one the chart grants hone api, and every verb the chart grants is used."""
    from hone_dev.cluster import chart_rbac

    alice = cluster.client("team-a", "alice")
    f = alice.files.create(file=("train.jsonl", TRAIN), purpose="fine-tune")
    alice.files.list()
    alice.files.content(f.id)
    job = alice.fine_tuning.jobs.create(model="tiny", training_file=f.id)
    alice.fine_tuning.jobs.list()
    alice.fine_tuning.jobs.list_events(job.id)
    alice.fine_tuning.jobs.pause(job.id)
    now = datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    name = "ft:tiny:team-a::1234abcd"
    cluster.status("team-a", job.id, {"phase": "Succeeded", "completionTime": now,
                                      "fineTunedModel": {"name": name, "artifactUri": f"{STORE}/models/x"}})
    with pytest.raises(openai.InternalServerError):  # its ModelServing is not Ready
        alice.chat.completions.create(model=name, messages=[{"role": "user", "content": "hi"}])
    alice.models.delete(name)
    alice.files.delete(f.id)

    api_user = "system:serviceaccount:hone-system:hone-api"
    calls = cluster.apiserver.call(lambda server: [a for a in server.audit if a.user == api_user])
    assert calls and not [a for a in calls if a.status == 403]
    assert {a.user_agent.split("/")[0] for a in calls} == {"hone-api"}
    used = {(a.group, a.resource, a.verb) for a in calls}
    values = tmp_path / "values.yaml"  # as the fixture installed it
    values.write_text(yaml.safe_dump({"api": {"enabled": True, "store": STORE}}))
    granted = {(g, r, v) for obj in chart_rbac(values) if obj["kind"] in ("ClusterRole", "Role")
               and obj["metadata"]["name"].startswith("hone-api") for rule in obj["rules"]
               for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    assert used == granted, (sorted(used - granted), sorted(granted - used))


def test_reviews_and_reads_survive_a_connection_the_api_server_dropped() -> None:
    """A pooled keep-alive connection closed by the API server as a request goes out fails that request; the
    API makes reviews and reads (which change nothing) again, and answers other failures at once."""
    import urllib3
    from kubernetes.client.exceptions import ApiException

    from hone_operator.openai_api.cluster import _again

    calls: list[int] = []

    def dropped_twice() -> str:
        calls.append(1)
        if len(calls) <= 2:
            raise urllib3.exceptions.ProtocolError("Connection aborted.", ConnectionResetError(104, "reset"))
        return "answer"

    assert _again(dropped_twice) == "answer" and len(calls) == 3
    denied: list[int] = []

    def forbidden() -> None:
        denied.append(1)
        raise ApiException(status=403, reason="Forbidden")

    with pytest.raises(ApiException):
        _again(forbidden)
    assert denied == [1]  # an answer, not a failure: asked once
