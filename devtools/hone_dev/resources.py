"""FineTuneJobs and ModelServings as the operator tests apply them, and their controllers played by hand:
the results a Job's pods would report, a Deployment that rolls out."""

from __future__ import annotations

import copy
import json
import uuid
from typing import Any

from hone_dev.apiserver import ApiServerThread
from hone_dev.cluster import finish_job, get_job, seed_namespace, wait_admitted, wait_for, wait_phase
from hone_dev.repo import load_sample
from hone_operator.api.v1alpha1 import RECONCILE_REQUESTED_AT
from hone_operator.kube import USER_AGENT, Kube
from hone_trainer import contract


NS = "team-a"
NAME = "support-assistant"
API = "hone.dev/v1alpha1"


def apply(kube: Kube, body: dict[str, Any] | None = None, name: str = NAME, namespace: str = NS,
          **spec: Any) -> dict[str, Any]:
    seed_namespace(kube, namespace)
    obj = copy.deepcopy(body or load_sample("finetunejob-minimal.yaml"))
    obj["metadata"].update(name=name, namespace=namespace)
    obj["spec"].update(spec)
    return kube.create(obj)


def patch_spec(kube: Kube, name: str = NAME, **spec: Any) -> None:
    kube.patch(API, "FineTuneJob", NS, name, {"spec": spec})


def good_validation(examples: int = 120, tokens: int = 50_000) -> str:
    hp = contract.resolve_hyperparameters(examples)
    return contract.to_termination_message(contract.ValidationResult(
        ok=True, examples=examples, tokens_per_epoch=tokens, trained_tokens_per_epoch=tokens // 2,
        hyperparameters=hp, billable_training_tokens=tokens * hp.epochs,
        estimated_cost_usd=contract.cost_usd(tokens * hp.epochs, 25.0)))


def published(tokens: int = 150_000, name: str = NAME) -> str:
    return contract.to_termination_message(contract.TrainingResult(
        ok=True, artifact_uri=f"pvc://hone-models/adapters/{NS}/{name}/model",
        manifest_sha256="ab" * 32, trained_tokens=tokens, steps=30, train_loss=0.42, validation_loss=0.5,
        initial_validation_loss=2.25, validation_accuracy=0.75, initial_validation_accuracy=0.375,
        checkpoints=[contract.CheckpointInfo(step=30, uri=f"pvc://hone-models/{name}/ckpt-30", train_loss=0.42)]))


def evaluated(base_refusal: float = 0.5, fine_tuned_refusal: float = 0.5, max_drop: float = 0.1) -> str:
    """What the evaluation pod reports: the safety suite's rates (and the gate they make), one grader."""
    return contract.to_termination_message(contract.EvaluationResult(
        ok=True, examples=10, graders=["fact"], base=contract.Scores(passed=[2], mean_score=[0.2]),
        fine_tuned=contract.Scores(passed=[9], mean_score=[0.9]), manifest_sha256="cd" * 32,
        safety=contract.SafetyGate(requests=32, base_refusal_rate=base_refusal,
                                   fine_tuned_refusal_rate=fine_tuned_refusal, max_refusal_drop=max_drop,
                                   judge="heuristic", passed=base_refusal - fine_tuned_refusal <= max_drop + 1e-9)))


def finish_training(kube: Kube, name: str = NAME, trained: str | None = None, evaluation: str | None = None,
                    namespace: str = NS) -> None:
    """The training Job completes with ``trained`` (default: :func:`published`), then the evaluation Job the
    operator creates for it with ``evaluation`` (default: :func:`evaluated`, a passed gate)."""
    finish_job(kube, namespace, f"{name}-train", "trainer", 0, published(name=name) if trained is None else trained)
    wait_for(lambda: get_job(kube, namespace, f"{name}-eval"), what="evaluation Job")
    finish_job(kube, namespace, f"{name}-eval", "evaluator", 0, evaluated() if evaluation is None else evaluation)


def validate_ok(kube: Kube, name: str = NAME) -> None:
    wait_for(lambda: get_job(kube, NS, f"{name}-validate"), what="validation Job")
    finish_job(kube, NS, f"{name}-validate", "validator", 0, good_validation())
    wait_for(lambda: get_job(kube, NS, f"{name}-train"), what="training Job")
    wait_admitted(kube, NS, name)  # and the status written after it, which says so


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in obj["status"]["conditions"] if c["type"] == type_)


def operator_writes(apiserver: ApiServerThread) -> list[Any]:
    return apiserver.call(lambda s: s.writes(USER_AGENT))


def apply_msv(kube: Kube, name: str = NAME, **spec: Any) -> dict[str, Any]:
    seed_namespace(kube, NS)
    obj = copy.deepcopy(load_sample("modelserving.yaml"))
    obj["metadata"].update(name=name, namespace=NS)
    obj["spec"].update(spec)
    return kube.create(obj)


def msv(kube: Kube, name: str = NAME) -> dict[str, Any]:
    obj = kube.get(API, "ModelServing", NS, name)
    assert obj is not None
    return obj


def wait_msv(kube: Kube, phase: str, name: str = NAME, timeout: float = 30) -> dict[str, Any]:
    wait_for(lambda: (msv(kube, name).get("status") or {}).get("phase") == phase, timeout,
             what=f"ModelServing {name} phase {phase}")
    return msv(kube, name)


def deployment(kube: Kube, name: str = NAME) -> dict[str, Any] | None:
    return kube.get("apps/v1", "Deployment", NS, name)


def roll_out(kube: Kube, name: str = NAME, ready: int | None = None) -> None:
    """Play the Deployment controller: every replica updated and ready."""
    dep = deployment(kube, name)
    assert dep is not None
    want = dep["spec"].get("replicas", 1)
    kube.patch("apps/v1", "Deployment", NS, name, {"status": {
        "observedGeneration": dep["metadata"]["generation"], "replicas": want, "updatedReplicas": want,
        "readyReplicas": want if ready is None else ready, "availableReplicas": want if ready is None else ready,
    }}, subresource="status")


def succeed_ftj(kube: Kube, name: str = NAME, evaluation: str | None = None) -> dict[str, Any]:
    validate_ok(kube, name)
    finish_training(kube, name, evaluation=evaluation)
    return wait_phase(kube, NS, name, "Succeeded")


def serving_ready(kube: Kube) -> None:
    """A Succeeded FineTuneJob served by a ModelServing whose Deployment has rolled out."""
    apply(kube)
    succeed_ftj(kube)
    apply_msv(kube)
    wait_for(lambda: deployment(kube), what="Deployment")
    roll_out(kube)
    wait_msv(kube, "Ready")


def server_config(kube: Kube, name: str = NAME) -> dict[str, Any]:
    cm = kube.get("v1", "ConfigMap", NS, f"{name}-server")
    assert cm is not None
    return json.loads(cm["data"]["server.json"])


def handled(kube: Kube, kind: str = "FineTuneJob", name: str = NAME, namespace: str = NS) -> dict[str, Any]:
    """Ask the operator to look at the object now (the hone.dev/reconcile-requested-at annotation) and wait
    for its answer in status.lastHandledReconcileAt: the positive signal that every change made before has
    been acted on, to be had before asserting that one of them made nothing happen."""
    token = uuid.uuid4().hex
    kube.patch(API, kind, namespace, name, {"metadata": {"annotations": {RECONCILE_REQUESTED_AT: token}}})

    def answered() -> dict[str, Any] | None:
        obj = kube.get(API, kind, namespace, name)
        return obj if obj and (obj.get("status") or {}).get("lastHandledReconcileAt") == token else None
    return wait_for(answered, what=f"the operator to handle {kind} {namespace}/{name}")
