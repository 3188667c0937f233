"""The FineTuneJob lifecycle as a pure function of what is observed.

:func:`plan` takes the FineTuneJob as stored and the children the controller
observed, and returns what to do: objects to create, patches, deletions, the
status patch and the Events to post. It reads no clock (the timestamp is
passed in) and touches no cluster, so every transition is unit-testable and a
restarted operator computes the same plan from the same world (level-based).

Phases: ValidatingFiles -> Queued -> Running -> Succeeded | Failed |
Cancelled, plus Suspended. Final phases are never left.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

from pydantic import BaseModel, ValidationError

from hone_operator.api.v1alpha1 import FineTuneJob, FineTuneJobPhase as Phase, _NamespacedRef
from hone_operator.builders import finetunejob as build
from hone_operator.handlers.conditions import Event, StatusBuilder, get_condition, job_condition
from hone_operator.settings import OperatorSettings
from hone_trainer import contract

#: Status keys the operator owns; ``progress`` (and ``checkpoints`` while
#: running) belong to the trainer and are never overwritten here.
OWNED_STATUS_KEYS = (
    "phase", "observedGeneration", "conditions", "dataset", "estimate", "fineTunedModel",
    "trainedTokens", "error", "startTime", "completionTime", "checkpoints",
)


@dataclass
class ObjectRef:
    api_version: str
    kind: str
    name: str


@dataclass
class Observed:
    """Children of one FineTuneJob as the controller sees them."""

    validation_job: dict[str, Any] | None = None
    training_job: dict[str, Any] | None = None
    #: Pods of a *finished* Job, listed fresh from the API (result files).
    validation_pods: list[dict[str, Any]] = field(default_factory=list)
    training_pods: list[dict[str, Any]] = field(default_factory=list)
    #: (field, message) of referenced objects that do not exist (yet).
    missing: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Plan:
    ensure: list[dict[str, Any]] = field(default_factory=list)
    patches: list[tuple[ObjectRef, dict[str, Any]]] = field(default_factory=list)
    deletes: list[ObjectRef] = field(default_factory=list)
    status: dict[str, Any] | None = None
    events: list[Event] = field(default_factory=list)
    #: Look again after this many seconds (something this plan waits for is not watched).
    requeue_after: float | None = None

    @property
    def empty(self) -> bool:
        return not (self.ensure or self.patches or self.deletes or self.status or self.events
                    or self.requeue_after)


def job_finished(job: dict[str, Any] | None) -> bool:
    return bool(job_condition(job, "Complete") or job_condition(job, "Failed"))


# --------------------------------------------------------------------------
# Reading results back from pods
# --------------------------------------------------------------------------


def _terminated(pod: dict[str, Any], container: str) -> dict[str, Any] | None:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == container:
            return ((cs.get("state") or {}).get("terminated")) or None
    return None


COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"


def _is_rank0_pod(pod: dict[str, Any]) -> bool:
    """Pod of completion index 0 (where rank 0 runs); a single-node Job's pods have no index."""
    return ((pod.get("metadata") or {}).get("annotations") or {}).get(COMPLETION_INDEX, "0") == "0"


def _results(pods: list[dict[str, Any]], container: str) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """Terminated ``container`` states: rank 0's pods first, newest first within each group."""
    newest_first = sorted(pods, key=lambda p: str((p.get("metadata") or {}).get("creationTimestamp") or ""),
                          reverse=True)
    for pod in sorted(newest_first, key=lambda p: not _is_rank0_pod(p)):  # a stable sort keeps newest first
        term = _terminated(pod, container)
        if term is not None:
            yield pod, term


def read_result(pods: list[dict[str, Any]], container: str, model: type[BaseModel], succeeded: bool | None = None):
    """The first parsable result (rank 0 first, newest first), with its pod's exit code."""
    for pod, term in _results(pods, container):
        if succeeded is not None and (term.get("exitCode") == 0) != succeeded:
            continue
        result = contract.parse_result(term.get("message"), model)  # type: ignore[arg-type]
        if result is not None:
            return result, term
    return None, None


def last_failure_message(pods: list[dict[str, Any]], container: str) -> str | None:
    for _, term in _results(pods, container):
        if term.get("exitCode", 0) != 0:
            msg = (term.get("message") or "").strip()
            tail = msg[-600:] if msg else term.get("reason") or ""
            return f"exit code {term.get('exitCode')}: {tail}".strip()
    return None


# --------------------------------------------------------------------------
# Spec errors
# --------------------------------------------------------------------------


def _field_path(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
            continue
        s = str(item)
        # Union members and validator names are not fields.
        if "[" in s or s in ("int", "float", "str", "bool", "dict", "list", "none"):
            continue
        parts.append(("." if parts else "") + s)
    return "".join(parts)


def spec_error(exc: ValidationError) -> tuple[str, str]:
    """(param, message) for the first problem in a FineTuneJob body."""
    errors = exc.errors()
    first = errors[0]
    path = _field_path(tuple(first["loc"]))
    msg = first["msg"].removeprefix("Value error, ")
    # Unions report one error per member; say what is accepted instead.
    same = [e for e in errors if _field_path(tuple(e["loc"])) == path]
    if len(same) > 1 and all(e["type"] in ("literal_error", "greater_than_equal", "greater_than", "int_parsing",
                                              "float_parsing", "int_type", "float_type", "string_type")
                             for e in same):
        msg = "; or ".join(dict.fromkeys(e["msg"] for e in same))
    if first["type"] == "missing":
        msg = "is required"
    elif first["type"] == "extra_forbidden":
        msg = "is not a known field (check the spelling against `kubectl explain finetunejob.spec`)"
    return path or "spec", f"{path}: {msg}" if path else msg


def cross_namespace_refs(model: BaseModel, own: str, path: str = "spec") -> Iterator[tuple[str, str]]:
    """(field path, namespace) of every reference that points outside ``own``."""
    for name, value in model:
        alias = type(model).model_fields[name].alias or name
        sub = f"{path}.{alias}"
        if isinstance(value, _NamespacedRef):
            if value.namespace not in (None, "", own):
                yield sub, value.namespace
        if isinstance(value, BaseModel):
            yield from cross_namespace_refs(value, own, sub)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, BaseModel):
                    yield from cross_namespace_refs(item, own, f"{sub}[{i}]")


# --------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------


class _Status(StatusBuilder):
    """The FineTuneJob's status: a final phase stamps completionTime; failures carry OpenAI's error."""

    def __init__(self, current: dict[str, Any], generation: int | None, timestamp: str):
        super().__init__(current, OWNED_STATUS_KEYS, generation, timestamp)

    def set_phase(self, phase: Phase, message: str, warning: bool = False) -> None:  # type: ignore[override]
        super().set_phase(phase, message, warning)
        if phase.terminal:
            self.desired.setdefault("completionTime", self.ts)

    def fail(self, reason: str, code: str, message: str, param: str | None = None) -> None:
        self.desired["error"] = {k: v for k, v in {"code": code, "message": message, "param": param}.items() if v}
        self.condition("Failed", True, reason, message)
        self.condition("Running", False, reason, "")
        self.set_phase(Phase.FAILED, message, warning=True)


def plan(body: dict[str, Any], observed: Observed, settings: OperatorSettings, timestamp: str) -> Plan:
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    if meta.get("deletionTimestamp"):
        return Plan()
    phase = status.get("phase")
    if phase in (Phase.SUCCEEDED.value, Phase.FAILED.value, Phase.CANCELLED.value):
        return Plan()

    st = _Status(status, meta.get("generation"), timestamp)
    out = Plan()
    try:
        _plan(body, observed, settings, st, out)
    finally:
        out.status = st.patch()
        out.events = st.events
    return out


def _plan(body: dict[str, Any], obs: Observed, settings: OperatorSettings, st: _Status, out: Plan) -> None:
    try:
        ftj = FineTuneJob.model_validate({**body, "status": {}})
    except ValidationError as exc:
        param, message = spec_error(exc)
        st.fail("InvalidSpec", "invalid_spec", f"{message}; fix the FineTuneJob and apply it again", param)
        return

    namespace = ftj.metadata.namespace or "default"
    for param, other in cross_namespace_refs(ftj.spec, namespace):
        st.fail(
            "CrossNamespaceReference",
            "cross_namespace_reference",
            f"{param} points into namespace {other!r}; a FineTuneJob may only use objects in its own "
            f"namespace {namespace!r}. Copy the object into {namespace!r} and drop the namespace field.",
            param,
        )
        return

    try:
        config, storage = build.resolve(ftj, settings)
    except build.SpecError as exc:
        st.fail(exc.reason, "invalid_spec", str(exc), exc.param)
        return

    names = build.Names.of(ftj.metadata.name)

    if ftj.spec.cancel:
        for job in (obs.validation_job, obs.training_job):
            if job is not None:
                out.deletes.append(ObjectRef("batch/v1", "Job", job["metadata"]["name"]))
        st.condition("Cancelled", True, "CancelledByUser", "spec.cancel is true; checkpoints are kept")
        st.condition("Running", False, "Cancelled", "")
        st.set_phase(Phase.CANCELLED, "Cancelled by the user; the object and its checkpoints are kept")
        return

    # ---- ValidatingFiles -------------------------------------------------
    files_ok = (get_condition(st.desired.get("conditions"), "FilesValidated") or {}).get("status") == "True"
    if not files_ok:
        vjob = obs.validation_job
        if vjob is None and obs.missing:
            message = "; ".join(m for _, m in obs.missing) + "; Hone retries until it exists"
            st.condition("FilesValidated", "Unknown", "ReferenceNotFound", message)
            st.set_phase(Phase.VALIDATING_FILES, "Validating the training data")
            out.requeue_after = settings.retry_delay_seconds
            return
        if vjob is None:
            out.ensure += [build.config_map(ftj, config, storage), *build.trainer_rbac(ftj),
                           build.validation_job(ftj, settings, storage)]
            st.condition("FilesValidated", "Unknown", "Validating", f"Job {names.validation_job} checks the data")
            st.set_phase(Phase.VALIDATING_FILES, "Validating the training data")
            return
        if not job_finished(vjob):
            st.condition("FilesValidated", "Unknown", "Validating", f"Job {names.validation_job} checks the data")
            st.set_phase(Phase.VALIDATING_FILES, "Validating the training data")
            return
        result, _ = read_result(obs.validation_pods, build.VALIDATOR_CONTAINER, contract.ValidationResult)
        if isinstance(result, contract.ValidationResult):
            st.desired["dataset"] = dataset_status(result)
            if result.ok:
                st.desired["estimate"] = estimate_status(result, settings)
                st.condition("FilesValidated", True, "Validated", result.summary)
                files_ok = True
            else:
                st.condition("FilesValidated", False, "InvalidTrainingFile", result.summary)
                st.fail("InvalidTrainingFile", "invalid_training_file", result.summary, "spec.trainingData")
                return
        else:
            failed = job_condition(vjob, "Failed")
            detail = last_failure_message(obs.validation_pods, build.VALIDATOR_CONTAINER)
            if failed:
                msg = f"validation Job {names.validation_job} failed ({failed.get('reason')})"
            else:
                msg = f"validation Job {names.validation_job} finished without writing a result"
            msg = f"{msg}: {detail}" if detail else msg
            st.condition("FilesValidated", False, "ValidationFailed", msg)
            st.fail("ValidationFailed", "validation_failed", msg)
            return

    # ---- Queued / Running / Suspended ------------------------------------
    kueue = bool(build.kueue_labels(ftj, settings))
    tjob = obs.training_job
    if tjob is None:
        # The config and RBAC were created before the validation Job (same
        # ensure list, in order), so an existing validation Job proves them.
        if obs.validation_job is None:
            out.ensure += [build.config_map(ftj, config, storage), *build.trainer_rbac(ftj)]
        if ftj.spec.resources.nodes > 1:
            out.ensure.append(build.headless_service(ftj, settings))
        out.ensure.append(build.training_job(ftj, settings, storage, suspend=ftj.spec.suspend or kueue))
        _waiting(st, ftj.spec.suspend, kueue, names.training_job)
        return

    job_spec = tjob.get("spec") or {}
    job_suspended = bool(job_spec.get("suspend"))
    job_patch: dict[str, Any] = {}
    if ftj.spec.suspend and not job_suspended:
        job_patch["suspend"] = True
    elif not ftj.spec.suspend and job_suspended and not kueue:
        job_patch["suspend"] = False
    if ftj.spec.activeDeadlineSeconds != job_spec.get("activeDeadlineSeconds") and not job_finished(tjob):
        job_patch["activeDeadlineSeconds"] = ftj.spec.activeDeadlineSeconds
    if job_patch:
        out.patches.append((ObjectRef("batch/v1", "Job", names.training_job), {"spec": job_patch}))

    if job_condition(tjob, "Complete"):
        result, _ = read_result(obs.training_pods, build.TRAINER_CONTAINER, contract.TrainingResult, succeeded=True)
        if isinstance(result, contract.TrainingResult) and result.ok and result.artifact_uri:
            _succeeded(st, result, config)
        else:
            st.fail("TrainingFailed", "training_failed",
                    f"training Job {names.training_job} completed but published no result; "
                    "the model was not marked as available")
        return
    failed = job_condition(tjob, "Failed")
    if failed:
        result, term = read_result(obs.training_pods, build.TRAINER_CONTAINER, contract.TrainingResult, succeeded=False)
        reason = failed.get("reason") or "Failed"
        if reason == "DeadlineExceeded":
            st.fail("DeadlineExceeded", "deadline_exceeded",
                    f"training ran longer than activeDeadlineSeconds={ftj.spec.activeDeadlineSeconds}; "
                    "checkpoints are kept", "spec.activeDeadlineSeconds")
        elif isinstance(result, contract.TrainingResult) and (result.message or result.error_code):
            st.fail("TrainingFailed", result.error_code or "training_failed",
                    result.message or f"trainer exited with code {term.get('exitCode') if term else '?'}")
        else:
            detail = last_failure_message(obs.training_pods, build.TRAINER_CONTAINER)
            msg = f"training Job {names.training_job} failed ({reason}: {failed.get('message', '')})".rstrip()
            st.fail("TrainingFailed", "training_failed", f"{msg}; last pod: {detail}" if detail else msg)
        return

    if ftj.spec.suspend or job_suspended:
        _waiting(st, ftj.spec.suspend, kueue, names.training_job)
        return
    job_status = tjob.get("status") or {}
    if int(job_status.get("ready") or 0) > 0:
        st.desired.setdefault("startTime", st.ts)
        st.condition("Suspended", False, "Resumed", "")
        st.condition("Running", True, "PodsReady",
                     f"{job_status.get('ready')} of {ftj.spec.resources.nodes} training pod(s) ready")
        st.set_phase(Phase.RUNNING, f"Training with {ftj.spec.resources.nodes} node(s)")
    else:
        _waiting(st, False, False, names.training_job)


def _waiting(st: _Status, suspended: bool, kueue: bool, job: str) -> None:
    if suspended:
        st.condition("Suspended", True, "SuspendedByUser", "spec.suspend is true; set it to false to resume")
        st.condition("Running", False, "Suspended", "")
        st.set_phase(Phase.SUSPENDED, "Suspended; training pods removed, checkpoints kept")
    elif kueue:
        st.condition("Suspended", False, "Resumed", "")
        st.condition("Running", False, "WaitingForAdmission", f"Job {job} waits for Kueue to admit it")
        st.set_phase(Phase.QUEUED, "Queued for admission by Kueue")
    else:
        st.condition("Suspended", False, "Resumed", "")
        st.condition("Running", False, "WaitingForPods", f"Job {job} waits for its pods to start")
        st.set_phase(Phase.QUEUED, "Queued: waiting for training pods to be scheduled and start")


def _succeeded(st: _Status, result: contract.TrainingResult, config: contract.TrainerConfig) -> None:
    st.desired["fineTunedModel"] = {
        k: v for k, v in {
            "name": result.fine_tuned_model or config.job.fine_tuned_model,
            "artifactUri": result.artifact_uri,
            "manifestSha256": result.manifest_sha256,
        }.items() if v
    }
    st.desired["trainedTokens"] = result.trained_tokens
    if result.checkpoints:
        st.desired["checkpoints"] = [c.to_json_dict() for c in result.checkpoints]
    st.condition("Running", False, "Completed", "")
    st.condition("Succeeded", True, "Published", f"published {result.artifact_uri}")
    st.set_phase(Phase.SUCCEEDED, f"Fine-tuned model {st.desired['fineTunedModel']['name']} published")


def dataset_status(r: contract.ValidationResult) -> dict[str, Any]:
    data = r.to_json_dict()
    keys = ("examples", "validationExamples", "invalidLines", "tokensPerEpoch", "trainedTokensPerEpoch",
            "maxExampleTokens", "overLengthExamples", "overLengthAction", "duplicateExamples",
            "validationOverlap", "problemCounts", "problems", "warnings")
    return {k: data[k] for k in keys if k in data and data[k] not in ([], {})}


def estimate_status(r: contract.ValidationResult, settings: OperatorSettings) -> dict[str, Any]:
    price = settings.prices.training
    out: dict[str, Any] = {
        "billableTrainingTokens": r.billable_training_tokens,
        "costUsd": contract.cost_usd(r.billable_training_tokens, price),
        "usdPerMillionTokens": price,
    }
    if r.hyperparameters:
        out["hyperparameters"] = r.hyperparameters.to_json_dict()
    return out

