"""The ModelServing lifecycle as a pure function of what is observed.

Phases: Pending -> Waiting (a FineTuneJob is not Succeeded yet) ->
Deploying -> Ready, or Failed for a spec that cannot be served or a roll-out
with no replica ready within spec.startupTimeoutSeconds. Nothing is
final: a fixed spec, a FineTuneJob that succeeds later or a replica that
gets ready after all moves it on.

The children are rewritten only when the hash of the desired children
differs from the one the Deployment carries, so a converged ModelServing
costs no writes. A FineTuneJob deleted while it is being served does not
take the endpoint down: the Deployment keeps serving the artifact it
resolved (the artifact lives on until its storage is cleaned) and a
condition says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from hone_operator.api.v1alpha1 import (
    SAFETY_OVERRIDE_ANNOTATION, ModelServing, ModelServingPhase as Phase, ModelServingStatus,
)
from hone_operator.builders import modelserving as msv_build
from hone_operator.builders.common import SpecError
from hone_operator.builders.served import Waiting
from hone_operator.reconcile.spec import cross_namespace_refs, spec_error
from hone_operator.reconcile.pods import blocked_pod, unready_pod
from hone_operator.reconcile.status import Event, ObjectRef, StatusBuilder, get_condition, reconcile_requested
from hone_operator.settings import OperatorSettings
from hone_trainer.contract import SafetyGate


@dataclass
class ObservedServing:
    #: FineTuneJobs of the namespace by name, as cached (None: does not exist)
    fine_tune_jobs: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    deployment: dict[str, Any] | None = None
    #: The server pods, read while the Deployment is not fully ready (they may say why)
    pods: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class ServingPlan:
    apply: list[dict[str, Any]] = field(default_factory=list)  # create, or merge-patch when present
    deletes: list[ObjectRef] = field(default_factory=list)
    status: dict[str, Any] | None = None
    events: list[Event] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.apply or self.deletes or self.status or self.events)


def plan(body: dict[str, Any], observed: ObservedServing, settings: OperatorSettings, ts: str) -> ServingPlan:
    meta = body.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return ServingPlan()
    status = StatusBuilder(body.get("status") or {}, ModelServingStatus, meta.get("generation"), ts,
                           reconcile_requested(body))
    result = ServingPlan()
    _plan(body, observed, settings, status, result)
    result.status = status.patch()
    result.events = status.events
    return result


def _plan(body: dict[str, Any], observed: ObservedServing, settings: OperatorSettings, status: StatusBuilder,
          result: ServingPlan) -> None:
    try:
        msv = ModelServing.model_validate({**body, "status": {}})
    except ValidationError as exc:
        param, message = spec_error(exc, ModelServing)
        _failed(status, "InvalidSpec", f"{message}; fix the ModelServing and apply it again")
        return
    namespace = msv.metadata.namespace or "default"
    for param, other in cross_namespace_refs(msv.spec, namespace):
        _failed(status, "CrossNamespaceReference", f"{param} points into namespace {other!r}; a ModelServing may only "
                f"use objects in its own namespace ({namespace!r})")
        return

    deployment = observed.deployment
    if not _safety_gate(msv, observed.fine_tune_jobs, status):
        if deployment is not None:  # served before (the override was taken back): no longer
            result.deletes.append(ObjectRef("apps/v1", "Deployment", deployment["metadata"]["name"]))
        return
    try:
        objs, resolved = msv_build.desired(msv, observed.fine_tune_jobs, settings)
        names = resolved.names
    except Waiting as wait:
        if deployment is not None and wait.reason == "FineTuneJobNotFound":
            # Deleted after it was deployed: keep serving what was resolved, and say so.
            status.condition("Resolved", False, "FineTuneJobDeleted", f"{wait}; the endpoint keeps serving the "
                         "artifact it loaded before, which stays until its storage is cleaned up")
            _rollout_status(msv, deployment, status, pods=observed.pods)
            return
        status.condition("Resolved", False, wait.reason, str(wait))
        status.condition("Ready", False, "WaitingForFineTuneJob", str(wait))
        status.set_phase(Phase.WAITING, str(wait))
        return
    except SpecError as exc:
        _failed(status, exc.reason, f"{exc.param}: {exc}" if not str(exc).startswith(exc.param) else str(exc))
        return

    status.condition("Resolved", True, "Resolved", f"serving {', '.join(names)}")
    status.desired["servedModels"] = names
    status.desired["url"] = msv_build.url(msv)
    status.desired["selector"] = msv_build.selector(msv)
    digest = objs[-1]["metadata"]["annotations"][msv_build.SPEC_HASH]
    current = ((deployment or {}).get("metadata") or {}).get("annotations", {}).get(msv_build.SPEC_HASH)
    if deployment is None or current != digest:
        result.apply = objs
        if msv.spec.autoscaling is None and deployment is not None:
            result.deletes.append(ObjectRef("autoscaling/v2", "HorizontalPodAutoscaler",
                                         msv_build.Names.of(msv.metadata.name).hpa))
        if deployment is None:
            status.condition("Ready", False, "Deploying", "creating the Deployment")
            status.set_phase(Phase.DEPLOYING, f"Deploying {', '.join(names)} ({msv.spec.runtime})")
            return
        status.events.append(Event("Normal", "Updating", "the spec changed: rolling out the Deployment"))
    _rollout_status(msv, deployment, status, updating=current != digest, pods=observed.pods)


def _safety_gate(msv: ModelServing, jobs: dict[str, dict[str, Any] | None], status: StatusBuilder) -> bool:
    """Whether the FineTuneJobs this ModelServing serves may be served: none failed its safety gate, or each that
    did carries the override annotation (recorded as a Warning Event when it is first used). A refusal sets the
    SafetyCheckFailed condition, naming the job and its measured refusal rates."""
    refs = [msv.spec.fineTuneJobRef] + [a.fineTuneJobRef for a in msv.spec.adapters or []]
    failed, overridden = [], []
    for name in sorted({r.name for r in refs if r is not None}):
        body = jobs.get(name) or {}
        safety = ((body.get("status") or {}).get("evaluation") or {}).get("safety") or {}
        if safety.get("passed") is not False:
            continue
        why = SafetyGate.model_validate(safety).failure(f"FineTuneJob {name}")
        note = ((body.get("metadata") or {}).get("annotations") or {}).get(SAFETY_OVERRIDE_ANNOTATION)
        (overridden if note == "true" else failed).append(why)
    if failed:
        message = "; ".join(failed) + (f"; not served. Fine-tune again with safer data, or annotate the FineTuneJob "
                                       f"{SAFETY_OVERRIDE_ANNOTATION}=true to serve it anyway")
        status.condition("SafetyCheckFailed", True, "SafetyCheckFailed", message)
        status.condition("Ready", False, "SafetyCheckFailed", message)
        status.set_phase(Phase.FAILED, message, warning=True, reason="SafetyCheckFailed")  # its one Event
        return False
    if overridden:
        message = "; ".join(overridden) + f"; served anyway: the FineTuneJob carries {SAFETY_OVERRIDE_ANNOTATION}=true"
        if (get_condition(status.current.get("conditions"), "SafetyCheckFailed") or {}).get("reason") != "Overridden":
            status.events.append(Event("Warning", "SafetyCheckOverridden", message))
        status.condition("SafetyCheckFailed", True, "Overridden", message)
    elif get_condition(status.current.get("conditions"), "SafetyCheckFailed"):
        status.condition("SafetyCheckFailed", False, "Passed", "every FineTuneJob served passed its safety check")
    return True


def _rollout_status(msv: ModelServing, deployment: dict[str, Any], status: StatusBuilder,
                    updating: bool = False, pods: list[dict[str, Any]] | None = None) -> None:
    observed = deployment.get("status") or {}
    dep_spec = deployment.get("spec") or {}
    want = dep_spec.get("replicas", msv.spec.replicas if msv.spec.autoscaling is None else None)
    replicas = int(observed.get("replicas") or 0)
    ready = int(observed.get("readyReplicas") or 0)
    updated = int(observed.get("updatedReplicas") or 0)
    status.desired["replicas"] = replicas
    status.desired["readyReplicas"] = ready
    current_gen = (deployment.get("metadata") or {}).get("generation")
    rolled = (not updating and observed.get("observedGeneration") == current_gen
              and (want is None or updated >= want) and replicas == updated)
    if want == 0:
        status.condition("Ready", False, "ScaledToZero", "spec.replicas is 0: no replica is running")
        status.set_phase(Phase.PENDING, "Scaled to zero replicas")
    elif ready >= 1 and rolled:
        status.condition("Ready", True, "Available", f"{ready}/{want or replicas} replicas ready")
        status.set_phase(Phase.READY, f"Serving {', '.join(status.desired.get('servedModels') or [])} at {status.desired.get('url')}")
    else:
        message = f"{ready}/{want if want is not None else replicas} replicas ready"
        why = blocked_pod(pods or []) or unready_pod(pods or [])
        if why:
            message += f"; {why[1]}"
        stalled = any(c.get("type") == "Progressing" and c.get("status") == "False"
                      and c.get("reason") == "ProgressDeadlineExceeded" for c in observed.get("conditions") or [])
        if stalled:
            # Kubernetes keeps trying; the ModelServing says the roll-out failed, and turns Ready if a
            # replica gets ready after all.
            _failed(status, "ProgressDeadlineExceeded",
                    f"no new replica became ready within spec.startupTimeoutSeconds "
                    f"({dep_spec.get('progressDeadlineSeconds', msv.spec.startupTimeoutSeconds)}s): {message}; "
                    "fix what the pod says, or raise startupTimeoutSeconds if loading the model takes longer")
            return
        status.condition("Ready", False, why[0] if why else "Deploying", message)
        status.set_phase(Phase.DEPLOYING, f"Rolling out: {message}")


def _failed(status: StatusBuilder, reason: str, message: str) -> None:
    status.condition("Ready", False, reason, message)
    status.set_phase(Phase.FAILED, message, warning=True)
