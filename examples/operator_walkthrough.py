"""Walk one FineTuneJob and its ModelServing through the Hone operator, with no cluster.

    python examples/operator_walkthrough.py

What is real: Hone's CRDs served by an emulated Kubernetes API server, the
operator process (`python -m hone_operator`) reconciling them, every object
it creates, its status, Events and Prometheus metrics.

What is simulated, and says so: the Kubernetes Job and Deployment controllers and the pods.
Their results (the validator's token counts, the trainer's published
adapter) are stand-ins written by this script: there is no cluster to run
pods here. The real trainer and server run in the README's demo
(examples/skateboard-support/demo.py).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "operator"), str(ROOT / "trainer"), str(ROOT / "devtools")]

import yaml  # noqa: E402
from kubernetes import client, config  # noqa: E402

from hone_operator.kube import Kube  # noqa: E402
from hone_trainer import contract  # noqa: E402
from hone_dev.apiserver import ApiServerThread  # noqa: E402
from hone_dev.cluster import (  # noqa: E402
    OperatorProcess,
    finish_job,
    get_job,
    seed_namespace,
    set_job_status,
    wait_admitted,
    wait_for,
    wait_phase,
)

NS, NAME = "team-a", "support-assistant"


def show(kube: Kube) -> None:
    obj = kube.get("hone.dev/v1alpha1", "FineTuneJob", NS, NAME)
    st = obj.get("status") or {}
    prog = st.get("progress") or {}
    print(f"  kubectl get ftj   PHASE={st.get('phase'):<16} PROGRESS={prog.get('percent', '')!s:<4} "
          f"TOKENS={prog.get('trainedTokens', '')!s:<8} LOSS={round(prog['trainLoss'], 3) if 'trainLoss' in prog else ''}")


def main() -> int:
    """The walkthrough, step by step (one function on purpose: it reads top to bottom as the story)."""
    with ApiServerThread() as srv, tempfile.TemporaryDirectory() as tmp:
        print(f"emulated API server at {srv.url} with CRDs from crds/")
        kubeconfig = srv.write_kubeconfig(Path(tmp) / "kubeconfig")
        cfg = client.Configuration()
        config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
        kube = Kube(client.ApiClient(cfg))
        op = OperatorProcess(srv, Path(tmp) / "operator.log").start()
        try:
            ftj = yaml.safe_load((ROOT / "crds" / "samples" / "finetunejob-minimal.yaml").read_text())
            ftj["metadata"]["namespace"] = NS
            print(f"\n$ kubectl -n {NS} create configmap support-chats --from-file=train.jsonl  # + PVC hone-models")
            seed_namespace(kube, NS)
            print(f"$ kubectl apply -f crds/samples/finetunejob-minimal.yaml -n {NS}")
            kube.create(ftj)
            wait_phase(kube, NS, NAME, "ValidatingFiles")
            show(kube)
            job = get_job(kube, NS, f"{NAME}-validate")
            print(f"  the operator created Job {job['metadata']['name']}: "
                  f"{' '.join(job['spec']['template']['spec']['containers'][0]['command'])}")

            print("\n[simulated validator pod] 120 examples, 48,000 tokens per epoch")
            hp = contract.resolve_hyperparameters(120)
            result = contract.ValidationResult(
                ok=True, examples=120, tokens_per_epoch=48_000, trained_tokens_per_epoch=21_000,
                hyperparameters=hp, billable_training_tokens=48_000 * hp.epochs,
                estimated_cost_usd=contract.cost_usd(48_000 * hp.epochs, 25.0))
            finish_job(kube, NS, f"{NAME}-validate", "validator", 0, contract.to_termination_message(result))
            obj = wait_admitted(kube, NS, NAME)
            show(kube)
            est = obj["status"]["estimate"]
            print(f"  estimate: {est['billableTrainingTokens']:,} billable tokens, {est['freeTokens']:,} of them free "
                  f"(TokenBudget {obj['status']['budget']['name']!r}: 1M free a day) = ${est['costUsd']:.2f} at "
                  f"${est['usdPerMillionTokens']:g}/1M; resolved {est['hyperparameters']}")
            train = get_job(kube, NS, f"{NAME}-train")
            print(f"  training Job {train['metadata']['name']}: "
                  f"{' '.join(train['spec']['template']['spec']['containers'][0]['command'][:4])} ...")

            print("\n[simulated Job controller] training pod ready; trainer reports progress")
            set_job_status(kube, NS, f"{NAME}-train", active=1, ready=1)
            wait_phase(kube, NS, NAME, "Running")
            for step in (10, 20, 30):
                progress = contract.Progress(step=step, total_steps=30, epoch=step / 10, train_loss=2.0 - step / 30,
                                             trained_tokens=step * 4_800)
                kube.patch("hone.dev/v1alpha1", "FineTuneJob", NS, NAME, {"status": {"progress": progress.to_json_dict()}},
                           subresource="status")
                time.sleep(0.2)
                show(kube)

            print("\n[simulated trainer] adapter published")
            published = contract.TrainingResult(ok=True, artifact_uri=f"pvc://hone-models/adapters/{NS}/{NAME}/model",
                                                trained_tokens=144_000, steps=30, train_loss=1.0)
            finish_job(kube, NS, f"{NAME}-train", "trainer", 0, contract.to_termination_message(published))
            evaluation = wait_for(lambda: get_job(kube, NS, f"{NAME}-eval"), what="evaluation Job")
            print(f"  evaluation Job {evaluation['metadata']['name']}: "
                  f"{' '.join(evaluation['spec']['template']['spec']['containers'][0]['command'][:4])} ...")

            print("\n[simulated evaluation] the base model and the fine-tune answer Hone's safety suite")
            gate = contract.SafetyGate(requests=32, base_refusal_rate=0.4375, fine_tuned_refusal_rate=0.40625,
                                       max_refusal_drop=0.1, judge="heuristic", passed=True)
            finish_job(kube, NS, f"{NAME}-eval", "evaluator", 0,
                       contract.to_termination_message(contract.EvaluationResult(ok=True, safety=gate)))
            obj = wait_phase(kube, NS, NAME, "Succeeded")
            show(kube)
            print(f"  fineTunedModel: {obj['status']['fineTunedModel']['name']}")
            print(f"  artifact:       {obj['status']['fineTunedModel']['artifactUri']}")

            print(f"\n$ kubectl apply -f crds/samples/modelserving.yaml -n {NS}")
            msv = yaml.safe_load((ROOT / "crds" / "samples" / "modelserving.yaml").read_text())
            msv["metadata"]["namespace"] = NS
            kube.create(msv)
            dep = wait_for(lambda: kube.get("apps/v1", "Deployment", NS, NAME), what="Deployment")
            container = dep["spec"]["template"]["spec"]["containers"][0]
            print(f"  the operator created Deployment {NAME}: {' '.join(container['command'][:6])} "
                  f"(readiness {container['readinessProbe']['httpGet']['path']}), Service {NAME}, "
                  f"ConfigMap {NAME}-server")
            print("\n[simulated Deployment controller] 1/1 replicas ready")
            kube.patch("apps/v1", "Deployment", NS, NAME, {"status": {
                "observedGeneration": dep["metadata"]["generation"], "replicas": 1, "updatedReplicas": 1,
                "readyReplicas": 1, "availableReplicas": 1}}, subresource="status")
            served = wait_for(lambda: (m := kube.get("hone.dev/v1alpha1", "ModelServing", NS, NAME))
                              and (m.get("status") or {}).get("phase") == "Ready" and m, what="ModelServing Ready")
            st = served["status"]
            print(f"  kubectl get msv   PHASE={st['phase']} URL={st['url']} MODELS={', '.join(st['servedModels'])}")

            events = wait_for(lambda: [e for e in kube.list("v1", "Event", NS) if e["reason"] == "Succeeded"]
                              and kube.list("v1", "Event", NS))
            print("\n$ kubectl get events")
            for e in events:
                print(f"  {e['type']:<8} {e['reason']:<16} {e['message']}")
            print("\n$ curl operator:8080/metrics | grep hone_")
            for line in op.metrics().splitlines():
                if line.startswith("hone_") and NS in line and not line.endswith(" 0.0"):
                    print(f"  {line}")
        finally:
            op.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
