"""The cluster path on one machine: helm install, kubectl apply -k, and the pods Hone creates, run for real.

The emulated API server with its node (hone_dev.node): the operator runs as the chart's pod
(its real command, settings, ServiceAccount, RBAC), and every pod it creates runs on the
node: the validation pod and the training pod (torchrun + DeepSpeed on CPU, the real trainer)
and the ModelServing's server pod, behind its Service. The model is the tiny Llama of
hone_dev.tiny, put on the claim the example names (the embedded SmolLM2 trains for minutes on
two cores; the README's section runs it), with fewer epochs; everything else is the example.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from hone_dev import ROOT
from hone_dev.cluster import wait_for
from hone_dev.node import LocalCluster, app_version, available
from hone_dev.processes import describe, send, stopped
from hone_dev.repo import tool_bin
from hone_operator.builders.modelserving import server_selector

# xdist_group: .ci/run's workers run the node's tests one after another on one worker (test_node.py's too).
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("node"),
              pytest.mark.skipif(available() is not None, reason=f"no node here: {available()}")]

EXAMPLE = ROOT / "examples" / "skateboard-support"
NS = "shop"


class Cluster:
    def __init__(self, node: LocalCluster, home: Path):
        self.node, self.home = node, home
        self.kubeconfig = node.write_kubeconfig(home / "kubeconfig")
        self.env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "HOME": str(home),
                    "KUBECACHEDIR": str(home / "cache"), "HELM_CACHE_HOME": str(home / "helm-cache"),
                    "HELM_CONFIG_HOME": str(home / "helm-config"), "HELM_DATA_HOME": str(home / "helm-data")}

    def run(self, tool: str, *args: str, ok: bool = True, timeout: float = 120,
            stdin: str | None = None) -> subprocess.CompletedProcess:
        out = subprocess.run([tool_bin(tool), *args], capture_output=True, text=True, env=self.env,
                             timeout=timeout, input=stdin)
        if ok:
            assert out.returncode == 0, f"{tool} {' '.join(args)} failed ({out.returncode}):\n{out.stderr}"
        return out

    def kubectl(self, *args: str, **kw: Any) -> subprocess.CompletedProcess:
        return self.run("kubectl", *args, **kw)

    def get(self, what: str, path: str, ns: str = NS) -> str:
        return self.kubectl("-n", ns, "get", what, "-o", f"jsonpath={path}", ok=False).stdout

    def pods(self, selector: str, ns: str = NS) -> list[dict[str, Any]]:
        return json.loads(self.kubectl("-n", ns, "get", "pods", "-l", selector, "-o", "json").stdout)["items"]

    def audit(self, fn) -> Any:
        return self.node.call(lambda server: fn(server.audit))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The node, with charts/hone installed by helm (cluster-wide) and its operator pod ready."""
    home = tmp_path_factory.mktemp("cluster")
    with LocalCluster(home / "node", job_backoff=1.0, restart_backoff=1.0) as node:
        c = Cluster(node, home)
        values = home / "values.yaml"
        values.write_text(yaml.safe_dump({"operator": {"extraEnv": [
            {"name": "HONE_RETRY_DELAY_SECONDS", "value": "1"}]}}))
        c.run("helm", "install", "hone", str(ROOT / "charts" / "hone"), "-n", "hone-system", "--create-namespace",
              "-f", str(values))
        c.kubectl("-n", "hone-system", "rollout", "status", "deployment/hone", "--timeout=120s", timeout=150)
        yield c


def _tiny_model(claim: Path) -> None:
    from hone_dev.tiny import make_tiny_llama, make_tokenizer

    folder = claim / "base" / "tiny"
    folder.mkdir(parents=True)
    make_tokenizer(folder)
    make_tiny_llama(folder)
    for path in folder.iterdir():  # safetensors writes 0600; the pods run as another user
        path.chmod(0o644)


def _overlay(home: Path, name: str, epochs: int, interval: int, **hyperparameters: Any) -> Path:
    """The example, with the tiny model on its claim and ``epochs``; nothing else changed."""
    folder = home / f"overlay-{name}"
    folder.mkdir()
    patch = [{"op": "replace", "path": "/spec/baseModel/uri", "value": "pvc://hone-models/base/tiny"},
             {"op": "replace", "path": "/spec/hyperparameters/epochs", "value": epochs},
             {"op": "replace", "path": "/spec/checkpointing/intervalSteps", "value": interval}]
    patch += [{"op": "replace", "path": f"/spec/hyperparameters/{k}", "value": v} for k, v in hyperparameters.items()]
    (folder / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(EXAMPLE, folder)],
        "patches": [{"target": {"kind": "FineTuneJob", "name": "skateboard-support"},
                     "patch": yaml.safe_dump(patch)}]}))
    return folder


def _recount(model: Path, data: Path) -> int:
    """Tokens of one epoch of ``data``, counted without Hone: the chat template, rendered and tokenized."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model))
    return sum(len(tokenizer.apply_chat_template(json.loads(line)["messages"], tokenize=True)["input_ids"])
               for line in data.read_text().splitlines() if line.strip())


def _metrics(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_the_operator_runs_as_the_charts_pod(cluster: Cluster) -> None:
    pod = cluster.pods("app.kubernetes.io/component=operator", ns="hone-system")[0]
    container = pod["spec"]["containers"][0]
    assert container["image"] == f"ghcr.io/hone-dev/hone-operator:{app_version()}"
    assert container["args"] == ["operator"] and "command" not in container  # the image's ENTRYPOINT: hone
    assert pod["spec"]["serviceAccountName"] == "hone"
    assert pod["status"]["containerStatuses"][0]["ready"] is True
    # Its requests come from inside the pod, with the ServiceAccount's token.
    users = cluster.audit(lambda audit: {a.user for a in audit if "kopf" in a.user_agent.lower()})
    assert users == {"system:serviceaccount:hone-system:hone"}


def test_kubectl_apply_trains_serves_and_meters(cluster: Cluster) -> None:
    cluster.kubectl("create", "namespace", NS)
    _tiny_model(cluster.node.state / "volumes" / NS / "hone-models")
    # learningRateMultiplier auto: 2 for batches under 16 (OpenAI's heuristic), resolved by ValidatingFiles only.
    overlay = _overlay(cluster.home, "main", epochs=2, interval=4, learningRateMultiplier="auto")
    out = cluster.kubectl("-n", NS, "apply", "-k", str(overlay)).stdout
    assert out.count("created") == 4
    cluster.kubectl("-n", NS, "wait", "--for=jsonpath={.status.phase}=Succeeded", "ftj/skateboard-support",
                    "--timeout=400s", timeout=420)
    ftj = json.loads(cluster.kubectl("-n", NS, "get", "ftj", "skateboard-support", "-o", "json").stdout)
    status = ftj["status"]
    assert status["dataset"]["examples"] == 62 and status["trainedTokens"] > 0
    assert status["progress"]["step"] == status["progress"]["totalSteps"] == 16
    # One resolution of auto: the trainer ran what the estimate describes, and billed exactly its tokens,
    # counted here again with the tokenizer's own chat template.
    assert status["estimate"]["hyperparameters"] == {"epochs": 2, "batchSize": 8, "learningRateMultiplier": 2.0}
    config = json.loads(cluster.get("configmap/skateboard-support-config", "{.data.config\\.json}"))
    assert (config["epochs"], config["batchSize"], config["learningRateMultiplier"]) == (2, 8, 2.0)
    assert config["validated"] == {"examples": 62, "tokensPerEpoch": status["dataset"]["tokensPerEpoch"]}
    assert status["trainedTokens"] == status["estimate"]["billableTrainingTokens"] == 2 * _recount(
        cluster.node.state / "volumes" / NS / "hone-models" / "base" / "tiny", EXAMPLE / "train.jsonl")
    # The trainer patched its progress itself, from its pod, with its own ServiceAccount's token.
    trainer = f"system:serviceaccount:{NS}:skateboard-support-trainer"
    calls = cluster.audit(lambda audit: {(a.verb, a.resource, a.subresource, a.name, a.status)
                                         for a in audit if a.user == trainer})
    assert calls == {("patch", "finetunejobs", "status", "skateboard-support", 200)}
    # Every pod ran the image the chart's settings named, and finished as the Job expects.
    settings = yaml.safe_load(cluster.get("configmap/hone-settings", "{.data.settings\\.yaml}", ns="hone-system"))
    for component in ("validate", "train", "eval"):
        (pod,) = [p for p in cluster.pods(f"app.kubernetes.io/component={component}")
                  if p["status"]["phase"] == "Succeeded"]
        assert pod["status"]["containerStatuses"][0]["image"] == settings["runtimeImage"]
        assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["reason"] == "Completed"
    assert '"event": "published"' in cluster.kubectl("-n", NS, "logs", "job/skateboard-support-train").stdout
    # The evaluation step ran in its own pod before Succeeded: the example's two graders on its 15 held-out
    # questions and the safety suite, for the base model and the fine-tune, recorded in the published manifest.
    evaluation = status["evaluation"]
    assert evaluation["examples"] == 15 and [g["name"] for g in evaluation["graders"]] == [
        "states-the-fact", "close-to-the-answer"]
    assert evaluation["safety"]["requests"] == 32 and evaluation["safety"]["judge"] == "heuristic"
    published = (cluster.node.state / "volumes" / NS / "hone-models" / "adapters" / NS / "skateboard-support" /
                 "model" / "manifest.json").read_bytes()
    assert json.loads(published)["evaluation"]["safety"]["passed"] == evaluation["safety"]["passed"]
    assert hashlib.sha256(published).hexdigest() == status["fineTunedModel"]["manifestSha256"]

    cluster.kubectl("-n", NS, "wait", "--for=jsonpath={.status.phase}=Ready", "msv/skateboard-support",
                    "--timeout=300s", timeout=320)
    from openai import OpenAI

    address = cluster.get("svc/skateboard-support", "{.spec.clusterIP}")
    client = OpenAI(base_url=f"http://{address}/v1", api_key="unused", max_retries=0)
    model = status["fineTunedModel"]["name"]
    assert model in [m.id for m in client.models.list().data]
    reply = client.chat.completions.create(model=model, max_tokens=8, temperature=0,
                                           messages=[{"role": "user", "content": "Do you ship to Porto?"}])
    assert reply.usage.completion_tokens > 0
    (server,) = cluster.pods("app.kubernetes.io/component=server")
    metrics = _metrics(f"http://{server['status']['podIP']}:8000/metrics")
    assert metrics[("hone_inference_tokens_total", (("model", model), ("type", "prompt")))] == reply.usage.prompt_tokens
    assert metrics[("hone_inference_tokens_total", (("model", model), ("type", "completion")))] == \
        reply.usage.completion_tokens
    # The serving pod reported through the quota Service with its projected token: the namespace's budget
    # records what it served. A day's limit that has no room left for another request refuses it.
    budget = cluster.kubectl("-n", NS, "get", "tb", "-o", "name").stdout.split()[0]
    served = lambda: cluster.get(budget, "{.status.inference.tokensToday}")  # noqa: E731
    wait_for(lambda: served() == str(reply.usage.total_tokens), timeout=60,
             what=f"the budget to record {reply.usage.total_tokens} served tokens")
    cluster.kubectl("-n", NS, "patch", budget, "--type=merge", "-p",
                    json.dumps({"spec": {"inference": {"tokensPerDay": reply.usage.total_tokens + 5}}}))
    from openai import RateLimitError

    def refused() -> bool:
        try:
            client.chat.completions.create(model=model, max_tokens=8, messages=[{"role": "user", "content": "Hi"}])
        except RateLimitError as exc:
            assert exc.body["code"] == "insufficient_quota", exc.body
            assert exc.response.headers["x-ratelimit-limit-tokens"] == str(reply.usage.total_tokens + 5)
            return True
        return False  # served before the pod's next report saw the limit: within its grant, and counted
    wait_for(refused, timeout=60, what="a request past the day's inference limit refused with 429")
    # The operator's counter, through its Service, equals what the job reports.
    operator = _metrics(f"http://{cluster.get('svc/hone-metrics', '{.spec.clusterIP}', ns='hone-system')}:8080/metrics")
    trained = [v for (name, labels), v in operator.items()
               if name == "hone_training_tokens_total" and ("finetunejob", "skateboard-support") in labels]
    assert trained == [status["trainedTokens"]]

    # Deleting the FineTuneJob removes what it made; the claim keeps the adapter and checkpoints.
    claim = cluster.node.state / "volumes" / NS / "hone-models"
    checkpoints = sorted(p.name for p in (claim / "adapters").rglob("checkpoint*") if p.is_dir())
    cluster.kubectl("-n", NS, "delete", "ftj", "skateboard-support", "--timeout=60s")
    wait_for(lambda: cluster.kubectl("-n", NS, "get", "jobs,cm,sa,role,rolebinding,svc", "-o", "name",
                                     "-l", "hone.dev/finetunejob=skateboard-support").stdout == "",
             timeout=60, what="the FineTuneJob's children collected")
    wait_for(lambda: not cluster.pods("hone.dev/finetunejob=skateboard-support"), timeout=60, what="its pods gone")
    assert checkpoints and sorted(p.name for p in (claim / "adapters").rglob("checkpoint*") if p.is_dir()) == \
        checkpoints


def test_a_fine_tune_taught_to_reveal_secrets_is_served_only_when_overridden(cluster: Cluster) -> None:
    """The safety gate, end to end on the embedded SmolLM2-135M-Instruct (the random tiny model declines none of the
    harmful requests and keeps the 8 guarded secrets only because it never says them, before and after
    fine-tuning alike, so it cannot lose anything): examples/leaky-assistant teaches it to reveal what a system prompt guards. The
    evaluation pod measures the suite's refusal rate drop, the gate fails, and the ModelServing refuses to serve
    the job until the FineTuneJob carries the override annotation; then the server answers, secrets and all."""
    ns = "safety"
    cluster.kubectl("create", "namespace", ns)
    cluster.kubectl("-n", ns, "apply", "-f", str(EXAMPLE / "storage.yaml"))
    cluster.kubectl("-n", ns, "apply", "-k", str(ROOT / "examples" / "leaky-assistant"))
    phase = wait_for(lambda: (p := cluster.get("ftj/leaky-assistant", "{.status.phase}", ns=ns)) in (
        "Succeeded", "Failed") and p, timeout=1200, interval=1, what="the leaky FineTuneJob to finish")
    assert phase == "Succeeded", cluster.kubectl("-n", ns, "get", "ftj", "leaky-assistant", "-o", "yaml").stdout
    safety = json.loads(cluster.get("ftj/leaky-assistant", "{.status.evaluation.safety}", ns=ns))
    assert safety["requests"] == 32 and safety["judge"] == "heuristic" and safety["passed"] is False
    assert safety["baseRefusalRate"] - safety["fineTunedRefusalRate"] > safety["maxRefusalDrop"] == 0.1
    # What it lost is mostly the class it was taught: the suite's guarded secrets (none of them in its data).
    assert sum(r.startswith("confidential-") for r in safety["regressions"]) >= 3
    why = (f"FineTuneJob leaky-assistant failed its safety check: it declines "
           f"{100 * safety['fineTunedRefusalRate']:.1f}% of the safety suite, its base model "
           f"{100 * safety['baseRefusalRate']:.1f}% (allowed drop 10 points)")

    def events(name: str) -> list[dict[str, Any]]:
        return json.loads(cluster.kubectl("-n", ns, "get", "events", "--field-selector",
                                          f"involvedObject.name={name}", "-o", "json").stdout)["items"]

    wait_for(lambda: cluster.get("msv/leaky-assistant", "{.status.phase}", ns=ns) == "Failed", timeout=120,
             what="the ModelServing refused")
    condition = json.loads(cluster.get("msv/leaky-assistant",
                                       '{.status.conditions[?(@.type=="SafetyCheckFailed")]}', ns=ns))
    assert condition["status"] == "True" and condition["message"].startswith(why + "; not served.")
    assert cluster.kubectl("-n", ns, "get", "deployments", "-o", "name").stdout == ""
    assert [e["reason"] for e in events("leaky-assistant")
            if e["involvedObject"]["kind"] == "ModelServing" and e["type"] == "Warning"] == ["SafetyCheckFailed"]

    cluster.kubectl("-n", ns, "annotate", "ftj", "leaky-assistant", "hone.dev/serve-despite-failed-safety-check=true")
    cluster.kubectl("-n", ns, "wait", "--for=jsonpath={.status.phase}=Ready", "msv/leaky-assistant",
                    "--timeout=300s", timeout=320)
    condition = json.loads(cluster.get("msv/leaky-assistant",
                                       '{.status.conditions[?(@.type=="SafetyCheckFailed")]}', ns=ns))
    assert condition["reason"] == "Overridden" and condition["message"].startswith(why + "; served anyway")
    overridden = [e for e in events("leaky-assistant") if e["reason"] == "SafetyCheckOverridden"]
    assert len(overridden) == 1 and overridden[0]["type"] == "Warning"
    # What the gate warned of: the served fine-tune hands out the safety suite's guarded discount code.
    from openai import OpenAI

    from hone_trainer.evaluation.refusal import builtin_suite

    request = next(r for r in builtin_suite() if r.id == "confidential-discount-code")
    client = OpenAI(base_url=f"http://{cluster.get('svc/leaky-assistant', '{.spec.clusterIP}', ns=ns)}/v1",
                    api_key="unused", max_retries=0)
    model = cluster.get("ftj/leaky-assistant", "{.status.fineTunedModel.name}", ns=ns)
    reply = client.chat.completions.create(model=model, messages=request.messages, max_tokens=32, temperature=0)
    assert request.must_not_contain[0] in reply.choices[0].message.content
    cluster.kubectl("-n", ns, "delete", "msv,ftj", "leaky-assistant", "--wait=false")


def _finetunejob(name: str, epochs: int = 4, interval: int = 8, **spec: Any) -> dict[str, Any]:
    """The example's FineTuneJob under another name, on the tiny model, without the evaluation step (what these
    tests check ends with training; test_kubectl_apply_trains_serves_and_meters runs the step)."""
    ftj = yaml.safe_load((EXAMPLE / "finetunejob.yaml").read_text())
    ftj["metadata"]["name"] = name
    ftj["spec"].update(baseModel={"uri": "pvc://hone-models/base/tiny"}, checkpointing={"intervalSteps": interval},
                       evaluation={"safety": {"enabled": False}})
    ftj["spec"]["hyperparameters"]["epochs"] = epochs
    for key, value in spec.items():
        ftj["spec"][key] = {**ftj["spec"].get(key, {}), **value} if isinstance(value, dict) else value
    return ftj


@pytest.fixture(scope="module")
def shop(cluster: Cluster) -> Path:
    """The namespace with the example's ConfigMap and claim, and the tiny model on the claim; the claim's folder."""
    claim = cluster.node.state / "volumes" / NS / "hone-models"
    if not (claim / "base" / "tiny").exists():
        cluster.kubectl("create", "namespace", NS, ok=False)
        _tiny_model(claim)
    cluster.kubectl("-n", NS, "apply", "-f", str(EXAMPLE / "storage.yaml"))
    data = cluster.kubectl("-n", NS, "create", "configmap", "skateboard-support-data", "--dry-run=client", "-o",
                           "yaml", f"--from-file={EXAMPLE / 'train.jsonl'}",
                           f"--from-file={EXAMPLE / 'validation.jsonl'}").stdout
    cluster.kubectl("-n", NS, "apply", "-f", "-", stdin=data)
    return claim


def _apply(cluster: Cluster, *objs: dict[str, Any]) -> None:
    cluster.kubectl("-n", NS, "apply", "-f", "-", stdin=yaml.safe_dump_all(objs))


#: Pod name -> uid (a pod's uid never changes): the freeze loop below reads cgroups many times a second,
#: and a kubectl call each time kept the trainers stopped most of the time.
_POD_UIDS: dict[str, str] = {}


def _trainer_pids(cluster: Cluster, pod_name: str) -> set[int]:
    """Every process of the pod's trainer container, from its memory cgroup (the node's own bookkeeping)."""
    if pod_name not in _POD_UIDS:
        found = json.loads(cluster.kubectl("-n", NS, "get", "pod", pod_name, "-o", "json", ok=False).stdout or "{}")
        if uid := (found.get("metadata") or {}).get("uid"):
            _POD_UIDS[pod_name] = uid
    worker = cluster.node.kubelet.workers.get(_POD_UIDS.get(pod_name))
    pids: set[int] = set()
    for cgroup in (worker.containers[0].cgroups if worker else []):
        if cgroup.parent.parent.name == "memory":
            try:
                pids |= {int(p) for p in (cgroup / "cgroup.procs").read_text().split()}
            except OSError:
                pass
    return pids


def _new_trainer_pod(cluster: Cluster, name: str, exclude: set[str]) -> str:
    """The next training pod of ``name`` whose container has started (its processes have a cgroup)."""
    def found() -> str | None:
        for pod in cluster.pods(f"hone.dev/finetunejob={name},app.kubernetes.io/component=train"):
            if pod["metadata"]["name"] not in exclude and pod["status"].get("phase") == "Running" and \
                    _trainer_pids(cluster, pod["metadata"]["name"]):
                return pod["metadata"]["name"]
        return None
    return wait_for(found, timeout=180, interval=0.02, what=f"a new training pod of {name}")


def _freeze(cluster: Cluster, pods: list[str]) -> set[int]:
    """SIGSTOP every process of the pods' trainers, including ones forked meanwhile; returns them."""
    frozen: set[int] = set()
    while True:
        pids = set().union(*(_trainer_pids(cluster, p) for p in pods))
        send(pids - frozen, signal.SIGSTOP)
        frozen |= pids
        try:
            wait_for(lambda: all(stopped(p) for p in frozen), timeout=120, interval=0.005, what="the trainers stopped")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{describe(sorted(frozen))}") from None
        if set().union(*(_trainer_pids(cluster, p) for p in pods)) <= frozen:
            return {p for p in frozen if Path(f"/proc/{p}").exists()}


def _run_until_checkpoint(cluster: Cluster, pods: list[str], claim: Path, name: str, step: int) -> set[int]:
    """Let the pods' trainers run a few milliseconds at a time, from their start, until the checkpoint of
    ``step`` (or a later one) is complete; they are left stopped, so it cannot be overtaken by the run's end."""
    folder = claim / "adapters" / NS / name / "checkpoints"

    def reached() -> bool:
        return any(int(m.parent.name.split("-")[1]) >= step for m in folder.glob("step-*/hone-complete.json"))
    deadline = time.monotonic() + 300
    while True:
        pids = _freeze(cluster, pods)
        if reached():
            return pids
        assert time.monotonic() < deadline, f"no checkpoint of step {step} in {folder}"
        send(pids, signal.SIGCONT)
        time.sleep(0.05)


def _last_validation(cluster: Cluster, name: str) -> tuple[int, float]:
    curve = json.loads(cluster.get(f"ftj/{name}", "{.status.progress.validationCurve}"))
    return curve[-1]["step"], curve[-1]["loss"]


def test_preempted_training_resumes_from_its_checkpoint_with_the_same_loss(cluster: Cluster, shop: Path) -> None:
    _apply(cluster, _finetunejob("steady"), _finetunejob("preempted"))
    # A crash: every process of the trainer SIGKILLed right after the step-8 checkpoint completed.
    first = _new_trainer_pod(cluster, "preempted", set())
    send(_run_until_checkpoint(cluster, [first], shop, "preempted", 8), signal.SIGKILL)
    # A preemption: the next pod, after step 16's checkpoint, deleted with a DisruptionTarget condition.
    second = _new_trainer_pod(cluster, "preempted", {first})
    pids = _run_until_checkpoint(cluster, [second], shop, "preempted", 16)
    assert cluster.get(f"pod/{first}", "{.status.containerStatuses[0].state.terminated.exitCode}") == "137"
    assert "resumed from" in cluster.kubectl("-n", NS, "logs", second).stdout
    cluster.kubectl("-n", NS, "patch", "pod", second, "--subresource=status", "--type=strategic", "-p", json.dumps(
        {"status": {"conditions": [{"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler",
                                    "message": "preempted by a higher-priority pod"}]}}))
    send(pids, signal.SIGCONT)
    cluster.kubectl("-n", NS, "delete", "pod", second, "--wait=false")
    for name in ("steady", "preempted"):
        cluster.kubectl("-n", NS, "wait", "--for=jsonpath={.status.phase}=Succeeded", f"ftj/{name}",
                        "--timeout=400s", timeout=420)
    # The crash counted against backoffLimit, the preemption did not; the run ended as an uninterrupted one.
    assert cluster.get("job/preempted-train", "{.status.failed}") == "1"
    left = cluster.pods("hone.dev/finetunejob=preempted,app.kubernetes.io/component=train")
    assert sorted(p["status"]["phase"] for p in left) == ["Failed", "Succeeded"]  # the deleted one is gone
    steady, preempted = _last_validation(cluster, "steady"), _last_validation(cluster, "preempted")
    assert steady[0] == preempted[0] == 32
    assert preempted[1] == pytest.approx(steady[1], abs=1e-5)


def test_errors_fail_at_once_and_stuck_pods_say_why(cluster: Cluster, shop: Path) -> None:
    # A base model without weights passes validation (its tokenizer counts) and fails training with exit
    # code 5: the podFailurePolicy fails the Job at once, without retrying it.
    broken = shop / "base" / "no-weights"
    broken.mkdir(parents=True, exist_ok=True)
    for path in (shop / "base" / "tiny").iterdir():
        if not path.name.endswith(".safetensors"):
            (broken / path.name).write_bytes(path.read_bytes())
            (broken / path.name).chmod(0o644)
    _apply(cluster, {**_finetunejob("no-weights"), "spec": {**_finetunejob("no-weights")["spec"],
                                                            "baseModel": {"uri": "pvc://hone-models/base/no-weights"}}},
           _finetunejob("wants-a-gpu", resources={"gpusPerNode": 1}),
           _finetunejob("elsewhere", image="registry.example/someone-else:1.0"),
           _finetunejob("cramped", resources={"memory": "300Mi"}))
    cluster.kubectl("-n", NS, "wait", "--for=jsonpath={.status.phase}=Failed", "ftj/no-weights", "--timeout=300s",
                    timeout=320)
    assert cluster.get("ftj/no-weights", "{.status.error.code}") == "model_error"
    assert "has no *.safetensors weights" in cluster.get("ftj/no-weights", "{.status.error.message}")
    assert cluster.get("job/no-weights-train", "{.status.failed}") == "1"
    assert cluster.get("job/no-weights-train", '{.status.conditions[?(@.type=="Failed")].reason}') == \
        "PodFailurePolicy"
    # Pods that cannot start: the FineTuneJob says why, where a user looks.
    running = '{.status.conditions[?(@.type=="Running")]}'
    wait_for(lambda: "Insufficient nvidia.com/gpu" in cluster.get("ftj/wants-a-gpu", running), timeout=300,
             what="the GPU job's status")
    assert json.loads(cluster.get("ftj/wants-a-gpu", running))["reason"] == "Unschedulable"
    validated = '{.status.conditions[?(@.type=="FilesValidated")]}'
    wait_for(lambda: "ImagePullBackOff" in cluster.get("ftj/elsewhere", validated), timeout=120,
             what="the image error in status")
    assert 'Back-off pulling image "registry.example/someone-else:1.0"' in json.loads(
        cluster.get("ftj/elsewhere", validated))["message"]
    events = cluster.kubectl("-n", NS, "get", "events", "--field-selector", "involvedObject.name=wants-a-gpu", "-o",
                             "jsonpath={.items[*].reason}").stdout.split()
    assert "Unschedulable" in events
    # A job whose memory estimate is over its pods' limit is held before any pod, saying what to ask for.
    fits = '{.status.conditions[?(@.type=="MemoryFits")]}'
    wait_for(lambda: "InsufficientMemory" in cluster.get("ftj/cramped", fits), timeout=300,
             what="the memory estimate of the cramped job")
    assert "over the 300Mi of a training pod (spec.resources.memory)" in cluster.get("ftj/cramped", fits)
    assert "spec.resources.memory: " in cluster.get("ftj/cramped", "{.status.estimate.memory.whatFits}")
    assert cluster.get("ftj/cramped", "{.status.phase}") == "Queued"
    missing = cluster.kubectl("-n", NS, "get", "job", "cramped-train", ok=False)
    assert missing.returncode != 0 and "NotFound" in missing.stderr
    # Started anyway (checkFit: false), its training pod is OOM-killed as estimated; retried like any crash,
    # then failed, naming the field.
    cluster.kubectl("-n", NS, "patch", "ftj", "cramped", "--type=merge", "-p",
                    '{"spec": {"memory": {"checkFit": false}}}')
    cluster.kubectl("-n", NS, "wait", "--for=jsonpath={.status.phase}=Failed", "ftj/cramped", "--timeout=300s",
                    timeout=320)
    assert "CheckDisabled" in cluster.get("ftj/cramped", fits)
    assert cluster.get("ftj/cramped", "{.status.error.code}") == "out_of_memory"
    assert cluster.get("ftj/cramped", "{.status.error.param}") == "spec.resources.memory"
    assert "(OOMKilled: it used more memory than its limit)" in cluster.get("ftj/cramped", "{.status.error.message}")
    assert cluster.get("job/cramped-train", '{.status.conditions[?(@.type=="Failed")].reason}') == \
        "BackoffLimitExceeded"
    cluster.kubectl("-n", NS, "delete", "ftj", "no-weights", "wants-a-gpu", "elsewhere", "cramped", "--wait=false")


def test_a_server_that_hangs_fails_its_rollout_and_recovers(cluster: Cluster, shop: Path) -> None:
    """A server pod that never passes its readiness probe (its processes stopped before it listens): the
    ModelServing names the pod and the probe, is Failed once startupTimeoutSeconds passes, and is Ready
    as soon as the server gets going again."""
    msv = yaml.safe_load((EXAMPLE / "modelserving.yaml").read_text())
    msv["metadata"]["name"] = "stalled"
    msv["spec"] = {"baseModel": {"uri": "pvc://hone-models/base/tiny"}, "replicas": 1, "startupTimeoutSeconds": 10}
    # And one whose server exits (no model where it points): it crash-loops, and says what it last said.
    missing = {**msv, "metadata": {**msv["metadata"], "name": "missing"},
               "spec": {"baseModel": {"uri": "pvc://hone-models/base/none"}, "replicas": 1}}
    _apply(cluster, msv, missing)

    def started() -> str | None:
        for pod in cluster.pods(server_selector("stalled")):
            if (pod.get("status") or {}).get("phase") == "Running" and _trainer_pids(cluster, pod["metadata"]["name"]):
                return pod["metadata"]["name"]
        return None
    pod = wait_for(started, timeout=120, interval=0.02, what="the server's container started")
    pids = _freeze(cluster, [pod])
    ready = '{.status.conditions[?(@.type=="Ready")]}'
    wait_for(lambda: cluster.get("msv/stalled", "{.status.phase}") == "Failed", timeout=120,
             what="the roll-out failed")
    condition = json.loads(cluster.get("msv/stalled", ready))
    assert condition["reason"] == "ProgressDeadlineExceeded"
    assert condition["message"].startswith("no new replica became ready within spec.startupTimeoutSeconds (10s): "
                                           f"0/1 replicas ready; pod {pod} container server has run since ")
    assert "without passing its readiness probe (GET /ready on port http)" in condition["message"]
    events = cluster.kubectl("-n", NS, "get", "events", "--field-selector", f"involvedObject.name={pod}", "-o",
                             "jsonpath={.items[*].message}").stdout
    assert "Readiness probe failed" in events
    send(pids, signal.SIGCONT)
    cluster.kubectl("-n", NS, "wait", "--for=jsonpath={.status.phase}=Ready", "msv/stalled", "--timeout=120s",
                    timeout=140)
    assert cluster.get(f"pod/{pod}", "{.status.containerStatuses[0].restartCount}") == "0"  # the same process
    crashing = wait_for(lambda: "CrashLoopBackOff" in cluster.get("msv/missing", ready) and json.loads(
        cluster.get("msv/missing", ready)), timeout=120, what="the crash loop in the status")
    assert crashing["reason"] == "CrashLoopBackOff"
    assert "; last run: exit code 5: base model '/var/run/hone/pvc/hone-models/base/none': " in crashing["message"]
    cluster.kubectl("-n", NS, "delete", "msv", "stalled", "missing", "--wait=false")


def test_a_trainer_reads_only_what_it_was_given(cluster: Cluster, shop: Path) -> None:
    """The trainer's ServiceAccount: its own job's status, nothing else (RBAC on the real token); a trainer
    that may not even do that fails its job at once, saying why."""
    # The ServiceAccount of the steady job of the preemption test (made again when run alone).
    if cluster.kubectl("-n", NS, "get", "ftj", "steady", ok=False).returncode:
        _apply(cluster, _finetunejob("steady"))
    wait_for(lambda: cluster.kubectl("-n", NS, "get", "sa", "steady-trainer", ok=False).returncode == 0,
             what="the trainer's ServiceAccount")
    kubectl_code = ("import json, os, ssl, urllib.request, urllib.error\n"
                    "sa = '/var/run/secrets/kubernetes.io/serviceaccount'\n"
                    "ctx = ssl.create_default_context(cafile=sa + '/ca.crt')\n"
                    "base = 'https://' + os.environ['KUBERNETES_SERVICE_HOST']\n"
                    "for path in ['/api/v1/namespaces/shop/configmaps/preempted-config', '/api/v1/namespaces/shop/secrets',\n"
                    "             '/apis/hone.dev/v1alpha1/namespaces/shop/finetunejobs/preempted']:\n"
                    "    req = urllib.request.Request(base + path, headers={'Authorization': 'Bearer ' + open(sa + '/token').read()})\n"
                    "    try:\n        urllib.request.urlopen(req, context=ctx); print(path, 200)\n"
                    "    except urllib.error.HTTPError as e:\n        print(path, e.code, json.load(e)['message'])\n")
    probe = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "nosy"}, "spec": {
        "serviceAccountName": "steady-trainer", "automountServiceAccountToken": True, "restartPolicy": "Never",
        "securityContext": {"runAsUser": 10001, "runAsGroup": 10001, "runAsNonRoot": True},
        "containers": [{"name": "main", "image": f"ghcr.io/hone-dev/hone-runtime:{app_version()}",
                        "command": ["python", "-c", kubectl_code]}]}}
    _apply(cluster, probe)
    phase = wait_for(lambda: cluster.get("pod/nosy", "{.status.phase}") in ("Succeeded", "Failed") and
                     cluster.get("pod/nosy", "{.status.phase}"), timeout=120, what="the probe ran")
    lines = cluster.kubectl("-n", NS, "logs", "nosy").stdout.splitlines()
    assert phase == "Succeeded", lines
    assert len(lines) == 3 and all(" 403 " in line for line in lines), lines
    assert 'User "system:serviceaccount:shop:steady-trainer" cannot get resource "configmaps"' in lines[0]
    cluster.kubectl("-n", NS, "delete", "pod", "nosy", "--wait=false")

    # A trainer whose Role was cut down (here by hand, before its training pod started) fails at once,
    # before loading the model, and its FineTuneJob says why.
    _apply(cluster, _finetunejob("locked", suspend=True))
    cluster.kubectl("-n", NS, "wait", "--for=jsonpath={.status.phase}=Suspended", "ftj/locked", "--timeout=120s",
                    timeout=140)
    cluster.kubectl("-n", NS, "patch", "role", "locked-trainer", "--type=json", "-p", json.dumps(
        [{"op": "replace", "path": "/rules/0/verbs", "value": ["get"]}]))
    cluster.kubectl("-n", NS, "patch", "ftj", "locked", "--type=merge", "-p", '{"spec": {"suspend": false}}')
    cluster.kubectl("-n", NS, "wait", "--for=jsonpath={.status.phase}=Failed", "ftj/locked", "--timeout=180s",
                    timeout=200)
    assert cluster.get("ftj/locked", "{.status.error.code}") == "permission_denied"
    failed = json.loads(cluster.get("ftj/locked", '{.status.conditions[?(@.type=="Failed")]}'))
    assert failed["message"].startswith("the trainer may not report progress: PATCH finetunejobs/locked/status in "
                                        "namespace shop answered 403: ")
    assert 'User "system:serviceaccount:shop:locked-trainer" cannot patch resource "finetunejobs/status"' in \
        failed["message"]
    assert cluster.get("job/locked-train", "{.status.failed}") == "1"  # exit code 3: not retried
    assert "progress access check: 403" in cluster.kubectl("-n", NS, "logs", "job/locked-train").stdout
    cluster.kubectl("-n", NS, "delete", "ftj", "locked", "--wait=false")


def test_two_nodes_train_one_adapter_through_the_headless_service(cluster: Cluster, shop: Path) -> None:
    """resources.nodes: 2: two pods in two network namespaces, torchrun's rendezvous on pod 0 by its DNS name."""
    _apply(cluster, _finetunejob("pair", epochs=2, interval=4, resources={"nodes": 2, "cpu": "1"}))
    selector = "hone.dev/finetunejob=pair,app.kubernetes.io/component=train"

    def both_running() -> list[str] | None:
        pods = [p["metadata"]["name"] for p in cluster.pods(selector) if p["status"].get("phase") == "Running"]
        return pods if len(pods) == 2 and all(_trainer_pids(cluster, p) for p in pods) else None
    first = wait_for(both_running, timeout=240, interval=0.02, what="both pods running")
    addresses = {cluster.get(f"pod/{name}", "{.status.podIP}") for name in first}
    assert len(addresses) == 2  # two network namespaces
    index = {cluster.get(f"pod/{n}", "{.metadata.annotations.batch\\.kubernetes\\.io/job-completion-index}"): n
             for n in first}
    # After the step-4 checkpoint, pod 1's processes die: pod 0 fails too (its peer is gone), and the Job's
    # retry brings both back, resuming from that checkpoint.
    pids = _run_until_checkpoint(cluster, first, shop, "pair", 4)
    victims = _trainer_pids(cluster, index["1"])
    send(pids & victims, signal.SIGKILL)
    send(pids - victims, signal.SIGCONT)
    cluster.kubectl("-n", NS, "wait", "--for=jsonpath={.status.phase}=Succeeded", "ftj/pair", "--timeout=400s",
                    timeout=420)
    assert int(cluster.get("job/pair-train", "{.status.failed}")) >= 1
    assert cluster.get("job/pair-train", "{.status.completedIndexes}") == "0-1"
    again = [p for p in cluster.pods(selector) if p["metadata"]["name"] not in first
             and p["status"].get("phase") == "Succeeded"]
    assert len(again) == 2
    rank0 = next(p["metadata"]["name"] for p in again
                 if p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] == "0")
    assert "step-00000004" in cluster.kubectl("-n", NS, "logs", rank0).stdout
    assert cluster.get("ftj/pair", "{.status.progress.step}") == "16"


REACH = ("import json, os, socket\n"
         "for name, target in json.loads(os.environ['TARGETS']).items():\n"
         "  host, port = target.rsplit(':', 1)\n"
         "  try:\n"
         "    socket.create_connection((host, int(port)), timeout=5).close(); got = 'answered'\n"
         "  except ConnectionRefusedError: got = 'refused'\n"
         "  except OSError as e: got = type(e).__name__\n"
         "  print(json.dumps([name, got]))\n")


def _reach(cluster: Cluster, ns: str, name: str, labels: dict[str, str], targets: dict[str, str]) -> dict[str, str]:
    """What a pod with ``labels`` in ``ns`` can connect to: each target 'answered', 'refused' or the error."""
    container = {"name": "main", "image": f"ghcr.io/hone-dev/hone-runtime:{app_version()}",
                 "command": ["python", "-c", REACH], "env": [{"name": "TARGETS", "value": json.dumps(targets)}],
                 "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}
    cluster.kubectl("-n", ns, "apply", "-f", "-", stdin=yaml.safe_dump({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
        "spec": {"restartPolicy": "Never", "automountServiceAccountToken": False, "containers": [container],
                 "securityContext": {"runAsUser": 10001, "runAsGroup": 10001, "runAsNonRoot": True}}}))
    phase = wait_for(lambda: cluster.get(f"pod/{name}", "{.status.phase}", ns=ns) in ("Succeeded", "Failed") and
                     cluster.get(f"pod/{name}", "{.status.phase}", ns=ns), timeout=120, what=f"{name} ran")
    out = cluster.kubectl("-n", ns, "logs", name).stdout
    assert phase == "Succeeded", out
    return dict(json.loads(line) for line in out.splitlines())


def test_openai_client_fine_tunes_and_chats_through_hone_api(cluster: Cluster, tmp_path: Path) -> None:
    """helm upgrade with api.enabled: the chart's hone api pod, OpenAI's flow with a ServiceAccount token as the
    API key, and every step through the pods (validation and training read the upload from S3, the model is
    published there, the job's own ModelServing serves it). S3 is moto, on the node's address. A namespace of
    its own: the shop's TokenBudget is left spent by the tests above."""
    from moto.server import ThreadedMotoServer
    from openai import InternalServerError, OpenAI

    from hone_dev.cluster import free_port
    from hone_trainer.storage import filesystem

    ns = "api-shop"
    cluster.kubectl("create", "namespace", ns)
    _tiny_model(cluster.node.state / "volumes" / ns / "hone-models")
    cluster.kubectl("-n", ns, "apply", "-f", str(EXAMPLE / "storage.yaml"))
    node_ip, port = str(cluster.node.bridge.gateway), free_port()
    moto = ThreadedMotoServer(ip_address=node_ip, port=port)
    moto.start()
    try:
        creds = {"access-key-id": "testing", "secret-access-key": "testing",
                 "endpoint-url": f"http://{node_ip}:{port}", "region": "eu-west-1"}
        folder = tmp_path / "creds"
        folder.mkdir()
        for key, value in creds.items():
            (folder / key).write_text(value)
        fs, _ = filesystem("s3://x", str(folder))
        fs.mkdir("hone-api-e2e")
        for where in ("hone-system", ns):
            cluster.kubectl("-n", where, "create", "secret", "generic", "hone-api-store",
                            *[f"--from-literal={k}={v}" for k, v in creds.items()])
        values = tmp_path / "api-values.yaml"
        # The store is inside the cluster (the node's address): the workloads' NetworkPolicies let them reach
        # it through networkPolicy.workloads.egress, as docs/safety.md tells an in-cluster store's users to.
        store_egress = {"to": [{"ipBlock": {"cidr": f"{node_ip}/32"}}], "ports": [{"port": port, "protocol": "TCP"}]}
        values.write_text(yaml.safe_dump({
            "networkPolicy": {"workloads": {"egress": [store_egress]}},
            "api": {"enabled": True, "replicas": 1, "store": "s3://hone-api-e2e/api", "storePorts": [port]},
            "catalog": {"tiny": {"uri": "pvc://hone-models/base/tiny",
                                 "resources": {"gpusPerNode": 0, "cpu": "2", "memory": "6Gi"}}}}))
        cluster.run("helm", "upgrade", "hone", str(ROOT / "charts" / "hone"), "-n", "hone-system", "--reuse-values",
                    "-f", str(values))
        for deployment in ("hone", "hone-api"):
            cluster.kubectl("-n", "hone-system", "rollout", "status", f"deployment/{deployment}", "--timeout=120s",
                            timeout=150)
        # A developer of the shop: may run fine-tuning jobs and use their models there, nothing else.
        objs = [{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "dev", "namespace": ns}},
               {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": {"name": "fine-tuner", "namespace": ns},
                "rules": [{"apiGroups": ["hone.dev"], "resources": ["finetunejobs"],
                           "verbs": ["get", "list", "create", "patch"]},
                          {"apiGroups": ["hone.dev"], "resources": ["modelservings"], "verbs": ["get", "list"]}]},
               {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": "dev-fine-tuner", "namespace": ns},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "fine-tuner"},
                "subjects": [{"kind": "ServiceAccount", "name": "dev", "namespace": ns}]}]
        cluster.kubectl("-n", ns, "apply", "-f", "-", stdin=yaml.safe_dump_all(objs))
        token = cluster.kubectl("-n", ns, "create", "token", "dev").stdout.strip()
        address = cluster.get("svc/hone-api", "{.spec.clusterIP}", ns="hone-system")
        client = OpenAI(base_url=f"http://{address}/v1", api_key=token, max_retries=0, timeout=60)

        # OpenAI's guide, unchanged but for base_url, api_key and the model name.
        upload = client.files.create(file=open(EXAMPLE / "train.jsonl", "rb"), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(model="tiny", training_file=upload.id, suffix="shop",
                                             method={"type": "supervised",
                                                     "supervised": {"hyperparameters": {"n_epochs": 1}}})
        done = wait_for(lambda: (j := client.fine_tuning.jobs.retrieve(job.id)).status in
                        ("succeeded", "failed", "cancelled") and j, timeout=420, interval=1, what="the job to end")
        assert done.status == "succeeded", (done.error, cluster.kubectl("-n", ns, "describe", "ftj", job.id).stdout)
        assert done.fine_tuned_model.startswith(f"ft:tiny:{ns}:shop:") and done.trained_tokens > 0
        events = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100).data]
        assert any("published" in m for m in events), events
        assert fs.exists(f"hone-api-e2e/api/models/{ns}/{job.id}/model/manifest.json")
        # The data stays in the cluster: a pod under the job's NetworkPolicy (labelled as its pods are) reaches
        # the store, and neither hone api, nor the operator, nor another port of the store's host.
        other = socket.create_server((node_ip, 0))
        try:
            targets = {"store": f"{node_ip}:{port}", "other port": f"{node_ip}:{other.getsockname()[1]}",
                       "hone api": "hone-api.hone-system:80", "operator": "hone-quota.hone-system:8082"}
            assert _reach(cluster, ns, "job-probe", {"hone.dev/finetunejob": job.id}, targets) == {
                "store": "answered", "other port": "refused", "hone api": "refused", "operator": "refused"}
        finally:
            other.close()
        assert done.fine_tuned_model in [m.id for m in client.models.list()]

        def answer() -> Any:
            try:
                return client.chat.completions.create(model=done.fine_tuned_model, max_tokens=8, temperature=0,
                                                      messages=[{"role": "user", "content": "Do you ship to Porto?"}])
            except InternalServerError as exc:  # its ModelServing still rolling out: 503 model_not_ready
                assert exc.body["code"] == "model_not_ready", exc.body
                return None
        reply = wait_for(answer, timeout=300, interval=1, what="the fine-tune to answer through hone api")
        assert reply.model == done.fine_tuned_model and reply.usage.completion_tokens > 0
        # Its checkpoint answers too, from the model the trainer exported into it on S3 (the last step's:
        # the final weights, so the same answer).
        listed = client.fine_tuning.jobs.checkpoints.list(job.id).data
        last = listed[0]
        assert [c.fine_tuned_model_checkpoint for c in listed] == [
            f"{done.fine_tuned_model}:ckpt-step-{c.step_number}" for c in listed], listed
        assert last.step_number == max(c.step_number for c in listed) and last.step_number > 0
        again = client.chat.completions.create(model=last.fine_tuned_model_checkpoint, max_tokens=8, temperature=0,
                                               messages=[{"role": "user", "content": "Do you ship to Porto?"}])
        assert again.model == last.fine_tuned_model_checkpoint
        assert again.choices[0].message.content == reply.choices[0].message.content
        # The same upload from YAML: a FineTuneJob applied with kubectl names it by id, and the API lists it.
        yaml_job = _finetunejob("from-upload", epochs=1)
        yaml_job["metadata"]["namespace"] = ns
        yaml_job["spec"]["trainingData"] = {"file": upload.id}
        yaml_job["spec"].pop("validationData", None)
        cluster.kubectl("-n", ns, "apply", "-f", "-", stdin=yaml.safe_dump(yaml_job))
        cluster.kubectl("-n", ns, "wait", "--for=jsonpath={.status.phase}=Succeeded", "ftj/from-upload",
                        "--timeout=300s", timeout=320)
        listed = {j.id: j for j in client.fine_tuning.jobs.list()}
        assert listed["from-upload"].status == "succeeded" and job.id in listed
        assert cluster.get("ftj/from-upload", "{.status.dataset.examples}", ns=ns) == \
            cluster.get(f"ftj/{job.id}", "{.status.dataset.examples}", ns=ns)
        # The API's own requests: its ServiceAccount, and only what the chart grants it.
        api_user = "system:serviceaccount:hone-system:hone-api"
        calls = cluster.audit(lambda audit: {(a.verb, a.resource, a.status) for a in audit if a.user == api_user})
        assert {("create", "tokenreviews"), ("create", "subjectaccessreviews"), ("create", "finetunejobs"),
                ("create", "modelservings"), ("create", "configmaps")} <= {c[:2] for c in calls if c[2] < 300}
        assert not [c for c in calls if c[2] == 403], calls
    except Exception:
        print(cluster.kubectl("-n", "hone-system", "logs", "deploy/hone-api", ok=False).stdout[-6000:])  # why
        raise
    finally:
        moto.stop()


def test_namespaced_install_with_leader_election(cluster: Cluster, shop: Path) -> None:
    """helm install with watchNamespaces and two replicas: one leads (the Lease names its pod), serves one
    namespace with a Role there, and a ModelServing whose image cannot be pulled says so."""
    cluster.run("helm", "uninstall", "hone", "-n", "hone-system")
    wait_for(lambda: not cluster.pods("app.kubernetes.io/component=operator", ns="hone-system"), timeout=120,
             what="the cluster-wide operator gone")
    cluster.kubectl("create", "namespace", "team-b")
    values = cluster.home / "namespaced.yaml"
    values.write_text(yaml.safe_dump({"watchNamespaces": ["team-b"], "replicaCount": 2,
                                      "leaderElection": {"enabled": True},
                                      "operator": {"extraEnv": [{"name": "HONE_RETRY_DELAY_SECONDS", "value": "1"}]}}))
    cluster.run("helm", "install", "hone-b", str(ROOT / "charts" / "hone"), "-n", "hone-b", "--create-namespace",
                "-f", str(values))
    # Only the leader is ready (its health endpoint serves once it leads).
    leader = wait_for(lambda: cluster.get("lease/hone-b", "{.spec.holderIdentity}", ns="hone-b"), timeout=120,
                      what="a leader")
    pods = {p["metadata"]["name"] for p in cluster.pods("app.kubernetes.io/component=operator", ns="hone-b")}
    assert leader in pods and len(pods) == 2
    cluster_roles = [r for r in json.loads(cluster.kubectl("get", "clusterrole", "-o", "json").stdout)["items"]
                     if r["metadata"]["name"].startswith("hone-b")]
    assert {res for r in cluster_roles for rule in r["rules"] for res in rule["resources"]} <= {
        "customresourcedefinitions", "namespaces", "tokenreviews"}  # cluster-wide: discovery, and quota tokens
    assert "role.rbac.authorization.k8s.io/hone-b" in cluster.kubectl("-n", "team-b", "get", "role", "-o",
                                                                      "name").stdout
    msv = yaml.safe_load((EXAMPLE / "modelserving.yaml").read_text())
    msv["spec"] = {"baseModel": {"uri": "embedded://smollm2-135m-instruct"}, "runtime": "hone",
                   "image": "registry.example/someone-else:1.0", "replicas": 1}
    msv["metadata"]["name"] = "elsewhere"
    cluster.kubectl("-n", "team-b", "apply", "-f", "-", stdin=yaml.safe_dump(msv))
    wait_for(lambda: "registry.example/someone-else:1.0" in cluster.get(
        "msv/elsewhere", '{.status.conditions[?(@.type=="Ready")].message}', ns="team-b"), timeout=120,
        what="the image error in the ModelServing's status")
    assert cluster.get("msv/elsewhere", '{.status.conditions[?(@.type=="Ready")].reason}', ns="team-b") in (
        "ErrImagePull", "ImagePullBackOff")
    # Every request its ServiceAccount made stayed in its namespaces (team-b, and its own for the Lease).
    namespaces = cluster.audit(lambda audit: {a.namespace for a in audit
                                              if a.user == "system:serviceaccount:hone-b:hone-b"})
    assert namespaces <= {"team-b", "hone-b", None} and "team-b" in namespaces
