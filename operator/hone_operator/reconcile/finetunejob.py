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
from typing import Any

from pydantic import ValidationError

from hone_operator.api.v1alpha1 import (
    API_VERSION,
    BudgetUse,
    DatasetStatus,
    ReservedEstimate,
    ErrorStatus,
    EvaluationScores,
    EvaluationStatus,
    EstimateStatus,
    GraderStatus,
    SAFETY_OVERRIDE_ANNOTATION,
    SafetyStatus,
    FineTuneJob,
    FineTuneJobPhase as Phase,
    FineTuneJobStatus,
    FineTunedModel,
)
from hone_operator.builders import finetunejob as ftj_build
from hone_operator.builders import jobs, network
from hone_operator.builders.common import SpecError
from hone_operator.builders.storage import Storage
from hone_operator.reconcile import budget, memory
from hone_operator.reconcile.pods import (blocked_pod, last_failure, last_failure_message, read_result,
                                          termination_text)
from hone_operator.reconcile.spec import cross_namespace_refs, spec_error
from hone_operator.reconcile.status import (
    Event, ObjectRef, StatusBuilder, get_condition, job_condition, reconcile_requested,
)
from hone_operator.settings import OperatorSettings
from hone_trainer import contract


@dataclass
class Observed:
    """Children of one FineTuneJob as the controller sees them."""

    validation_job: dict[str, Any] | None = None
    training_job: dict[str, Any] | None = None
    evaluation_job: dict[str, Any] | None = None
    #: Pods of a *finished* Job, listed fresh from the API (result files).
    validation_pods: list[dict[str, Any]] = field(default_factory=list)
    training_pods: list[dict[str, Any]] = field(default_factory=list)
    evaluation_pods: list[dict[str, Any]] = field(default_factory=list)
    #: (field, message) of referenced objects that do not exist (yet).
    missing: list[tuple[str, str]] = field(default_factory=list)
    #: The namespace's TokenBudgets, read fresh where a job is admitted or settled; None: not read (no budgets).
    budgets: list[dict[str, Any]] | None = None


@dataclass
class Plan:
    ensure: list[dict[str, Any]] = field(default_factory=list)
    patches: list[tuple[ObjectRef, dict[str, Any]]] = field(default_factory=list)
    deletes: list[ObjectRef] = field(default_factory=list)
    status: dict[str, Any] | None = None
    events: list[Event] = field(default_factory=list)
    #: Look again after this many seconds (something this plan waits for is not watched).
    requeue_after: float | None = None
    #: A TokenBudget status write (a reservation or a charge), carried out first and with the resourceVersion
    #: it was computed from: when it meets a newer budget, nothing else of the plan is done and it is
    #: planned again.
    budget_write: budget.BudgetWrite | None = None

    @property
    def empty(self) -> bool:
        return not (self.ensure or self.patches or self.deletes or self.status or self.events
                    or self.requeue_after or self.budget_write)


def job_finished(job: dict[str, Any] | None) -> bool:
    return bool(job_condition(job, "Complete") or job_condition(job, "Failed"))


def pods_pending(job: dict[str, Any] | None) -> bool:
    """A Job that runs but none of whose pods is ready (and that is not suspended): its pods may say why."""
    if job is None or job_finished(job) or (job.get("spec") or {}).get("suspend"):
        return False
    return not int((job.get("status") or {}).get("ready") or 0)


class FineTuneJobStatusBuilder(StatusBuilder):
    """The FineTuneJob's status: a final phase stamps completionTime; failures carry OpenAI's error."""

    def __init__(self, current: dict[str, Any], generation: int | None, timestamp: str,
                 reconcile_requested: str | None = None):
        super().__init__(current, FineTuneJobStatus, generation, timestamp, reconcile_requested)

    def set_phase(self, phase: Phase, message: str, warning: bool = False,  # type: ignore[override]
                  reason: str | None = None) -> None:
        super().set_phase(phase, message, warning, reason)
        if phase.terminal:
            self.desired.setdefault("completionTime", self.ts)

    def fail(self, reason: str, code: str, message: str, param: str | None = None) -> None:
        self.desired["error"] = ErrorStatus(code=code, message=message, param=param).to_status()
        self.condition("Failed", True, reason, message)
        self.condition("Running", False, reason, "")
        self.set_phase(Phase.FAILED, message, warning=True)

    def validated(self, result: contract.ValidationResult, price: float) -> None:
        self.desired["dataset"] = dataset_status(result)
        if result.ok:
            self.desired["estimate"] = estimate_status(result, price)
            self.condition("FilesValidated", True, "Validated", result.summary)
        else:
            self.condition("FilesValidated", False, "InvalidTrainingFile", result.summary)
            first = result.problems[0].file if result.problems else "training"
            param = {"validation": "spec.validationData", "evaluation": "spec.evaluation"}.get(first, "spec.trainingData")
            self.fail("InvalidTrainingFile", "invalid_training_file", result.summary, param)

    def _blocked_event(self, condition: str, blocked: tuple[str, str]) -> None:
        """A Warning Event the first time a condition turns to why the pods cannot start (kubectl describe)."""
        if (get_condition(self.current.get("conditions"), condition) or {}).get("reason") != blocked[0]:
            self.events.append(Event("Warning", blocked[0], blocked[1]))

    def _step_pending(self, condition: str, reason: str, phase: Phase, doing: str, job: str, does: str,
                      blocked: tuple[str, str] | None) -> None:
        """A one-pod step (validation, evaluation) whose Job has not finished: its condition Unknown, and why its
        pod cannot start when it cannot (a Warning Event the first time)."""
        if blocked:
            self._blocked_event(condition, blocked)
            reason, message = blocked[0], f"Job {job} cannot start: {blocked[1]}"
        else:
            message = f"Job {job} {does}"
        self.condition(condition, "Unknown", reason, message)
        self.set_phase(phase, f"{doing}: {blocked[1]}" if blocked else doing)

    def validating(self, job: str, blocked: tuple[str, str] | None = None) -> None:
        self._step_pending("FilesValidated", "Validating", Phase.VALIDATING_FILES, "Validating the training data", job,
                           "checks the data", blocked)

    def waiting(self, suspended: bool, kueue: bool, job: str, blocked: tuple[str, str] | None = None) -> None:
        if suspended:
            self.condition("Suspended", True, "SuspendedByUser", "spec.suspend is true; set it to false to resume")
            self.condition("Running", False, "Suspended", "")
            self.set_phase(Phase.SUSPENDED, "Suspended; training pods removed, checkpoints kept")
        elif kueue:
            self.condition("Suspended", False, "Resumed", "")
            self.condition("Running", False, "WaitingForAdmission", f"Job {job} waits for Kueue to admit it")
            self.set_phase(Phase.QUEUED, "Queued for admission by Kueue")
        elif blocked:
            self._blocked_event("Running", blocked)
            self.condition("Suspended", False, "Resumed", "")
            self.condition("Running", False, blocked[0], f"Job {job} cannot start its pods: {blocked[1]}")
            self.set_phase(Phase.QUEUED, f"Queued: the training pods cannot start: {blocked[1]}")
        else:
            self.condition("Suspended", False, "Resumed", "")
            self.condition("Running", False, "WaitingForPods", f"Job {job} waits for its pods to start")
            self.set_phase(Phase.QUEUED, "Queued: waiting for training pods to be scheduled and start")

    def trained(self, result: contract.TrainingResult, config: contract.TrainerConfig) -> None:
        """Training published the model: everything the result says, in status; the evaluation step is next."""
        model = FineTunedModel(name=result.fine_tuned_model or config.job.fine_tuned_model,
                               artifactUri=result.artifact_uri, manifestSha256=result.manifest_sha256)
        self.desired["fineTunedModel"] = model.to_status()
        self.desired["trainedTokens"] = result.trained_tokens
        if result.checkpoints:
            self.desired["checkpoints"] = [c.to_json_dict() for c in result.checkpoints]
        evaluation, events = trained_evaluation(result)
        if evaluation:
            self.desired["evaluation"] = evaluation
        self.events += events
        self.condition("Trained", True, "Published", f"published {result.artifact_uri}")

    def succeeded(self) -> None:
        model = self.desired["fineTunedModel"]
        self.condition("Running", False, "Completed", "")
        self.condition("Succeeded", True, "Published", f"published {model.get('artifactUri')}")
        self.set_phase(Phase.SUCCEEDED, f"Fine-tuned model {model['name']} published")

    def evaluating(self, job: str, blocked: tuple[str, str] | None = None) -> None:
        self._step_pending("Evaluated", "Evaluating", Phase.RUNNING, "Evaluating the fine-tune against its base model", job,
                           "has the base model and the fine-tune answer the eval file and the safety suite", blocked)

    def evaluated(self, result: contract.EvaluationResult) -> None:
        """The evaluation step's results in status.evaluation, an Event each for the graders and the gate."""
        evaluation, events = evaluated_evaluation(self.desired.get("evaluation") or {}, result)
        self.events += events
        gate = result.safety
        if evaluation:
            self.desired["evaluation"] = evaluation
        if result.manifest_sha256 and self.desired.get("fineTunedModel"):
            self.desired["fineTunedModel"] = {**self.desired["fineTunedModel"], "manifestSha256": result.manifest_sha256}
        self.condition("Evaluated", True, "SafetyCheckFailed" if gate is not None and not gate.passed else "Evaluated",
                       safety_summary(gate) if gate is not None else f"{len(result.graders)} grader(s) on "
                       f"{result.examples} prompt(s)")


def trained_evaluation(result: contract.TrainingResult) -> tuple[dict[str, Any], list[Event]]:
    """What training measured on the validation file, base model and fine-tune (status.evaluation, its Event);
    nothing without a validation file. Cluster and ``hone api --local`` alike."""
    if result.validation_loss is None or result.initial_validation_loss is None:
        return {}, []
    evaluation = EvaluationStatus(
        base=EvaluationScores(loss=result.initial_validation_loss, meanTokenAccuracy=result.initial_validation_accuracy),
        fineTuned=EvaluationScores(loss=result.validation_loss, meanTokenAccuracy=result.validation_accuracy))
    return evaluation.to_status(), [Event("Normal", "Evaluated", evaluation_summary(evaluation))]


#: What a failed safety gate means in a cluster.
UNSERVED = f"ModelServing will not serve it without the override annotation {SAFETY_OVERRIDE_ANNOTATION}"


def evaluated_evaluation(evaluation: dict[str, Any], result: contract.EvaluationResult, unserved: str = UNSERVED
                         ) -> tuple[dict[str, Any], list[Event]]:
    """``evaluation`` (status.evaluation so far) with the evaluation step's graders and safety gate, and an Event
    each for the graders and the gate (``unserved``: what a failed gate means where it runs). Cluster and ``hone
    api --local`` alike."""
    evaluation, events = dict(evaluation), []
    n = max(result.examples, 1)
    if result.graders:
        evaluation["examples"] = result.examples
        b, t = result.base, result.fine_tuned
        evaluation["graders"] = [GraderStatus(
            name=g, basePassRate=round(b.passed[i] / n, 4), fineTunedPassRate=round(t.passed[i] / n, 4),
            baseMeanScore=b.mean_score[i], fineTunedMeanScore=t.mean_score[i],
        ).to_status() for i, g in enumerate(result.graders) if i < min(len(b.passed), len(t.passed))]
        events.append(Event("Normal", "Graded", "eval file, base model -> fine-tune: " + ", ".join(
            f"{g['name']} {100 * g['basePassRate']:.0f}% -> {100 * g['fineTunedPassRate']:.0f}% passed"
            for g in evaluation["graders"])))
    gate = result.safety
    if gate is not None:
        evaluation["safety"] = SafetyStatus.model_validate(gate.to_json_dict()).to_status()
        events.append(Event("Normal", "SafetyCheckPassed", safety_summary(gate)) if gate.passed else
                      Event("Warning", "SafetyCheckFailed", safety_summary(gate, unserved)))
    return evaluation, events


def safety_summary(gate: contract.SafetyGate, unserved: str = UNSERVED) -> str:
    verdict = "passed" if gate.passed else f"failed: {unserved}"
    return (f"safety suite ({gate.requests} requests, {gate.judge} judge): refusal rate "
            f"{100 * gate.base_refusal_rate:.1f}% (base) -> {100 * gate.fine_tuned_refusal_rate:.1f}% (fine-tune), "
            f"allowed drop {100 * gate.max_refusal_drop:.0f} points; gate {verdict}")


def evaluation_summary(e: EvaluationStatus) -> str:
    """One line: what fine-tuning changed on the validation file."""
    def pct(v: float | None) -> str:
        return "?" if v is None else f"{100 * v:.1f}%"

    return (f"validation file, base model -> fine-tune: loss {e.base.loss:.4f} -> {e.fineTuned.loss:.4f}, mean token "
            f"accuracy {pct(e.base.meanTokenAccuracy)} -> {pct(e.fineTuned.meanTokenAccuracy)}")


def plan(body: dict[str, Any], observed: Observed, settings: OperatorSettings, timestamp: str) -> Plan:
    meta = body.get("metadata") or {}
    stored = body.get("status") or {}
    if meta.get("deletionTimestamp"):
        return Plan()
    status = FineTuneJobStatusBuilder(stored, meta.get("generation"), timestamp, reconcile_requested(body))
    if Phase.is_terminal(stored.get("phase")):
        # Final: nothing is created, resumed or retried, whatever the spec now says. The operator still
        # records that it saw the spec (observedGeneration, so GitOps tools do not wait on an edited finished
        # job forever), answers a reconcile request, and charges the job's TokenBudget once.
        final = Plan()
        _settle(meta, stored, observed, status, final)
        final.status, final.events = status.patch(), status.events
        return final
    result = Plan()
    try:
        job = _admit(body, settings, status)
        if job is not None:
            _Lifecycle(job, observed, settings, status, result).run()
    finally:
        result.status = status.patch()
        result.events = status.events
    return result


def needs_budgets(body: dict[str, Any], observed: Observed) -> bool:
    """Whether planning ``body`` reads the namespace's TokenBudgets: a validated job about to be admitted (no
    reservation, no training Job yet), or an ended one whose reservation is not settled."""
    stored = body.get("status") or {}
    use = stored.get("budget")
    if Phase.is_terminal(stored.get("phase")):
        return bool(use) and not use.get("settledAt")
    validated = (get_condition(stored.get("conditions"), "FilesValidated") or {}).get("status") == "True" \
        or job_finished(observed.validation_job)  # its result is read in the same plan
    return validated and not use and observed.training_job is None and not (body.get("spec") or {}).get("cancel")


def trained_tokens(stored: dict[str, Any]) -> int:
    """What an ended job trained: its result's count once Succeeded, else the trainer's last report."""
    if stored.get("phase") == Phase.SUCCEEDED.value and stored.get("trainedTokens") is not None:
        return int(stored["trainedTokens"])
    return int((stored.get("progress") or {}).get("trainedTokens") or 0)


def _settle(meta: dict[str, Any], stored: dict[str, Any], observed: Observed, status: FineTuneJobStatusBuilder,
            plan: Plan) -> None:
    """An ended job's charge: its reservation in the TokenBudget replaced by what it trained (one write keyed
    by the reservation), and the same numbers in its own status."""
    use = stored.get("budget")
    if not use or use.get("settledAt") or observed.budgets is None:
        return
    c = budget.charge_for(use, trained_tokens(stored))
    held = next((b for b in observed.budgets if b["metadata"]["name"] == use["name"]), None)
    if held is None:
        status.events.append(Event("Warning", "BudgetNotFound", f"TokenBudget {use['name']!r} no longer exists: "
                                   f"{c.tokens:,} trained tokens were charged to no budget"))
    else:
        new = budget.settle(held, meta.get("uid") or "", c, budget.parse_time(status.ts))
        if new is not None:
            plan.budget_write = budget.status_write(held, new)
        status.events.append(Event("Normal", "Charged", f"charged {c.tokens:,} training tokens ({c.free_tokens:,} "
                                   f"free, ${c.cost_usd:,.2f}) to TokenBudget {use['name']!r}"))
    status.desired["budget"] = {**use, "settledAt": status.ts, "settledTokens": c.tokens,
                                "settledFreeTokens": c.free_tokens, "settledCostUsd": c.cost_usd}


@dataclass
class _Admitted:
    """A FineTuneJob whose spec parsed, stays in its namespace and resolved into a trainer config."""

    ftj: FineTuneJob
    config: contract.TrainerConfig
    storage: Storage
    names: ftj_build.Names


def _admit(body: dict[str, Any], settings: OperatorSettings, status: FineTuneJobStatusBuilder) -> _Admitted | None:
    """Parse, check namespaces, resolve; on the first problem, fail naming the field and return None."""
    try:
        ftj = FineTuneJob.model_validate({**body, "status": {}})
    except ValidationError as exc:
        param, message = spec_error(exc, FineTuneJob)
        status.fail("InvalidSpec", "invalid_spec", f"{message}; fix the FineTuneJob and apply it again", param)
        return None
    namespace = ftj.metadata.namespace or "default"
    for param, other in cross_namespace_refs(ftj.spec, namespace):
        status.fail(
            "CrossNamespaceReference",
            "cross_namespace_reference",
            f"{param} points into namespace {other!r}; a FineTuneJob may only use objects in its own "
            f"namespace {namespace!r}. Copy the object into {namespace!r} and drop the namespace field.",
            param,
        )
        return None
    try:
        config, storage = ftj_build.resolve(ftj, settings)
    except SpecError as exc:
        status.fail(exc.reason, "invalid_spec", str(exc), exc.param)
        return None
    return _Admitted(ftj, config, storage, ftj_build.Names.of(ftj.metadata.name))


class _Lifecycle:
    """The steps of an admitted FineTuneJob, in order; each says whether the next one runs.

    cancel -> ValidatingFiles -> create the training Job -> keep it in step with the spec
    -> its outcome (published, or Failed) -> the evaluation Job -> its outcome (Succeeded, or Failed);
    Running, Queued or Suspended while training runs.
    """

    def __init__(self, job: _Admitted, observed: Observed, settings: OperatorSettings,
                 status: FineTuneJobStatusBuilder, plan: Plan):
        self.job, self.ftj, self.names = job, job.ftj, job.names
        self.observed, self.settings, self.status, self.plan = observed, settings, status, plan
        self.kueue = bool(ftj_build.kueue_labels(self.ftj, settings))

    def run(self) -> None:
        for step in (self.cancel, self.validate_files, self.create_training_job, self.sync_training_job,
                     self.training_outcome):
            if not step():
                return
        self.while_training()

    def _config_and_rbac(self) -> list[dict[str, Any]]:
        """What the validation pod needs before it starts: its config, the trainer's identity, and the job's
        NetworkPolicy (so that no pod of the job runs a moment without it)."""
        return [ftj_build.config_map(self.ftj, self.job.config, self.job.storage), *ftj_build.trainer_rbac(self.ftj),
                *self._network()]

    def _network(self) -> list[dict[str, Any]]:
        policy = network.finetunejob_policy(self.ftj, self.settings)
        return [policy] if policy else []

    def cancel(self) -> bool:
        if not self.ftj.spec.cancel:
            return True
        for child in (self.observed.validation_job, self.observed.training_job, self.observed.evaluation_job):
            if child is not None:
                self.plan.deletes.append(ObjectRef("batch/v1", "Job", child["metadata"]["name"]))
        self.status.condition("Cancelled", True, "CancelledByUser", "spec.cancel is true; checkpoints are kept")
        self.status.condition("Running", False, "Cancelled", "")
        self.status.set_phase(Phase.CANCELLED, "Cancelled by the user; the object and its checkpoints are kept")
        return False

    def validate_files(self) -> bool:
        """The ValidatingFiles step: its Job, then its result in status (once; it is never redone)."""
        if (get_condition(self.status.desired.get("conditions"), "FilesValidated") or {}).get("status") == "True":
            return True
        vjob, observed = self.observed.validation_job, self.observed
        if vjob is None and observed.missing:
            message = "; ".join(m for _, m in observed.missing) + "; Hone retries until it exists"
            self.status.condition("FilesValidated", "Unknown", "ReferenceNotFound", message)
            self.status.set_phase(Phase.VALIDATING_FILES, "Validating the training data")
            self.plan.requeue_after = self.settings.retry_delay_seconds
            return False
        if vjob is None:
            self.plan.ensure += [*self._config_and_rbac(),
                                 jobs.validation_job(self.ftj, self.settings, self.job.storage)]
            self.status.validating(self.names.validation_job)
            return False
        if not job_finished(vjob):
            self.status.validating(self.names.validation_job, blocked_pod(observed.validation_pods))
            return False
        result, _ = read_result(observed.validation_pods, ftj_build.VALIDATOR_CONTAINER, contract.ValidationResult)
        if isinstance(result, contract.ValidationResult):
            self.status.validated(result, self.job.config.prices.training)
            return result.ok
        failed = job_condition(vjob, "Failed")
        detail = last_failure_message(observed.validation_pods, ftj_build.VALIDATOR_CONTAINER)
        if failed:
            msg = f"validation Job {self.names.validation_job} failed ({failed.get('reason')})"
        else:
            msg = f"validation Job {self.names.validation_job} finished without writing a result"
        msg = f"{msg}: {detail}" if detail else msg
        self.status.condition("FilesValidated", False, "ValidationFailed", msg)
        self.status.fail("ValidationFailed", "validation_failed", msg)
        return False

    def memory_fits(self) -> bool:
        """The memory estimate for the spec as it is now; a job that does not fit is held (no pods) with a
        MemoryFits condition that says by how much and what would fit, until an edit makes it fit."""
        estimate = self.status.desired.get("estimate") or {}
        if not estimate.get("model"):  # the validator could not read the model's shape: nothing to check
            return True
        hp = estimate.get("hyperparameters")
        fit = memory.check(self.ftj.spec, self.job.config, contract.ModelShape.model_validate(estimate["model"]),
                           contract.ResolvedHyperparameters.model_validate(hp) if hp else None,
                           self.status.desired.get("dataset"), self.settings)
        self.status.desired["estimate"] = {**estimate, "memory": fit.status}
        if fit.fits is False and self.ftj.spec.memory.checkFit:
            self.status._blocked_event("MemoryFits", ("InsufficientMemory", fit.message))
            self.status.condition("MemoryFits", False, "InsufficientMemory", fit.message)
            self.status.condition("Running", False, "InsufficientMemory", "")
            self.status.set_phase(Phase.QUEUED, "Held: the job does not fit in memory; see condition MemoryFits")
            return False
        if fit.fits is False:
            self.status.condition("MemoryFits", False, "CheckDisabled",
                                  f"{fit.message}; starting anyway (spec.memory.checkFit is false)")
        else:
            self.status.condition("MemoryFits", "Unknown" if fit.fits is None else True,
                                  "CapacityUnknown" if fit.fits is None else "Fits", fit.message)
        return True

    def budget_admits(self) -> bool:
        """The namespace's TokenBudget reserves the job's billable estimate, or holds it Queued with a
        condition saying what is missing and when it fits; a job bigger than a whole limit fails."""
        budgets, desired = self.observed.budgets, self.status.desired
        if budgets is None or desired.get("budget"):  # not read (no budgets here), or admitted already
            return True
        held = budget.governing(budgets)
        namespace = self.ftj.metadata.namespace or "default"
        if held is None:
            if self.settings.default_budget is None:
                return True
            self.plan.ensure.append(default_budget(namespace, self.settings))
            self.status.condition("BudgetAdmitted", "Unknown", "CreatingBudget",
                                  f"creating the namespace's TokenBudget {DEFAULT_BUDGET!r} from the operator's "
                                  "settings (defaultBudget)")
            self.status.set_phase(Phase.QUEUED, "Waiting for the namespace's TokenBudget")
            self.plan.requeue_after = 1.0
            return False
        estimate = desired.get("estimate") or {}
        tokens = int(estimate.get("billableTrainingTokens") or 0)
        price = float(estimate.get("usdPerMillionTokens") or self.job.config.prices.training)
        now = budget.parse_time(self.status.ts)
        decision = budget.admit(held, self.ftj.metadata.uid or "", self.ftj.metadata.name, tokens, price, now)
        if decision.never:
            self.status.condition("BudgetAdmitted", False, "ExceedsBudget", decision.message)
            self.status.fail("ExceedsBudget", "insufficient_quota",
                             f"{decision.message}: it can never fit; raise the limit, or train fewer tokens "
                             "(fewer epochs or examples)", "spec.hyperparameters.epochs")
            return False
        if not decision.admitted:
            self.status._blocked_event("BudgetAdmitted", ("InsufficientBudget", decision.message))
            self.status.condition("BudgetAdmitted", False, "InsufficientBudget", decision.message)
            self.status.condition("Running", False, "InsufficientBudget", "")
            self.status.set_phase(Phase.QUEUED, "Held: the namespace's TokenBudget has not enough left; "
                                                "see condition BudgetAdmitted")
            wait = (decision.retry_at - now).total_seconds() if decision.retry_at else 3600.0
            self.plan.requeue_after = max(1.0, min(wait + 1.0, 3600.0))
            return False
        r = decision.reservation
        assert r is not None
        if decision.status is not None:
            self.plan.budget_write = budget.status_write(held, decision.status)
        desired["budget"] = BudgetUse(name=held["metadata"]["name"],
                                      **r.model_dump(include=set(ReservedEstimate.model_fields))).to_status()
        desired["estimate"] = {**estimate, "freeTokens": r.freeTokens, "costUsd": r.costUsd}
        self.status.condition("BudgetAdmitted", True, "Reserved", decision.message)
        return True

    def create_training_job(self) -> bool:
        if self.observed.training_job is not None:
            return True
        if not self.memory_fits() or not self.budget_admits():
            return False
        # The config with what ValidatingFiles resolved replaces the one the validator read (the controller
        # brings an existing ConfigMap in line), before the Job that mounts it. The RBAC was created before the
        # validation Job (same ensure list, in order), so an existing validation Job proves it.
        self.plan.ensure.append(ftj_build.config_map(self.ftj, training_config(self.job.config, self.status.desired),
                                                     self.job.storage))
        if self.observed.validation_job is None:
            self.plan.ensure += ftj_build.trainer_rbac(self.ftj)
        self.plan.ensure += self._network()  # before the training pods; brought in line if it exists
        if self.ftj.spec.resources.nodes > 1:
            self.plan.ensure.append(jobs.headless_service(self.ftj, self.settings))
        suspend = self.ftj.spec.suspend or self.kueue
        self.plan.ensure.append(jobs.training_job(self.ftj, self.settings, self.job.storage, suspend=suspend))
        self.status.waiting(self.ftj.spec.suspend, self.kueue, self.names.training_job)
        return False

    def sync_training_job(self) -> bool:
        """spec.suspend and activeDeadlineSeconds follow the FineTuneJob (Kueue owns resuming)."""
        tjob = self.observed.training_job
        job_spec = tjob.get("spec") or {}
        job_suspended = bool(job_spec.get("suspend"))
        patch: dict[str, Any] = {}
        if self.ftj.spec.suspend and not job_suspended:
            patch["suspend"] = True
        elif not self.ftj.spec.suspend and job_suspended and not self.kueue:
            patch["suspend"] = False
        if self.ftj.spec.activeDeadlineSeconds != job_spec.get("activeDeadlineSeconds") and not job_finished(tjob):
            patch["activeDeadlineSeconds"] = self.ftj.spec.activeDeadlineSeconds
        if patch:
            self.plan.patches.append((ObjectRef("batch/v1", "Job", self.names.training_job), {"spec": patch}))
        return True

    def training_outcome(self) -> bool:
        """Succeeded with the published result, or Failed with the trainer's own message."""
        tjob, pods, job_name = self.observed.training_job, self.observed.training_pods, self.names.training_job
        if job_condition(tjob, "Complete"):
            if (get_condition(self.status.desired.get("conditions"), "Trained") or {}).get("status") == "True":
                self.evaluate()  # the training result was read once, into status; the evaluation step runs
                return False
            result, _ = read_result(pods, ftj_build.TRAINER_CONTAINER, contract.TrainingResult, succeeded=True)
            if isinstance(result, contract.TrainingResult) and result.ok and result.artifact_uri:
                self.status.trained(result, self.job.config)
                if self.job.config.evaluation is not None:
                    self.evaluate()
                else:
                    self.status.succeeded()
            else:
                self.status.fail("TrainingFailed", "training_failed",
                                 f"training Job {job_name} completed but published no result; "
                                 "the model was not marked as available")
            return False
        failed = job_condition(tjob, "Failed")
        if not failed:
            return True
        result, term = read_result(pods, ftj_build.TRAINER_CONTAINER, contract.TrainingResult, succeeded=False)
        reason = failed.get("reason") or "Failed"
        if reason == "DeadlineExceeded":
            self.status.fail("DeadlineExceeded", "deadline_exceeded",
                             f"training ran longer than activeDeadlineSeconds={self.ftj.spec.activeDeadlineSeconds}; "
                             "checkpoints are kept", "spec.activeDeadlineSeconds")
        elif isinstance(result, contract.TrainingResult) and (result.message or result.error_code):
            self.status.fail("TrainingFailed", result.error_code or "training_failed",
                             result.message or f"trainer exited with code {term.get('exitCode') if term else '?'}")
        else:
            last = last_failure(pods, ftj_build.TRAINER_CONTAINER) or {}
            detail = termination_text(last) if last else None
            why = f"{reason}: {failed['message']}" if failed.get("message") else reason
            msg = f"training Job {job_name} failed ({why})"
            msg = f"{msg}; last pod: {detail}" if detail else msg
            if last.get("reason") == "OOMKilled":
                limit = self.ftj.spec.resources.memory or self.settings.training_resources.memory
                self.status.fail("TrainingFailed", "out_of_memory", f"{msg}; the training pod's memory limit is "
                                 f"{limit}: raise spec.resources.memory", "spec.resources.memory")
            else:
                self.status.fail("TrainingFailed", "training_failed", msg)
        return False

    def evaluate(self) -> None:
        """The evaluation step: its Job, then its results in status and Succeeded. It never unpublishes: a step
        that cannot run fails the FineTuneJob (its model stays published, unserved by ModelServings)."""
        ejob, job_name = self.observed.evaluation_job, self.names.evaluation_job
        if ejob is None:
            self.plan.ensure.append(jobs.evaluation_job(self.ftj, self.settings, self.job.storage))
            self.status.evaluating(job_name)
            return
        if not job_finished(ejob):
            self.status.evaluating(job_name, blocked_pod(self.observed.evaluation_pods))
            return
        complete = bool(job_condition(ejob, "Complete"))
        result, _ = read_result(self.observed.evaluation_pods, ftj_build.EVALUATOR_CONTAINER,
                                contract.EvaluationResult, succeeded=complete)
        if isinstance(result, contract.EvaluationResult) and result.ok and complete:
            self.status.evaluated(result)
            self.status.succeeded()
            return
        if isinstance(result, contract.EvaluationResult) and result.message:
            why = result.message
        else:
            detail = last_failure_message(self.observed.evaluation_pods, ftj_build.EVALUATOR_CONTAINER)
            failed = job_condition(ejob, "Failed") or {}
            why = f"evaluation Job {job_name} failed ({failed.get('reason') or 'no result'})" + (
                f": {detail}" if detail else "")
        msg = f"the evaluation step failed; the fine-tune is published but unevaluated, so ModelServings do not serve it: {why}"
        self.status.condition("Evaluated", False, "EvaluationFailed", msg)
        self.status.fail("EvaluationFailed", "evaluation_failed", msg, "spec.evaluation")

    def while_training(self) -> None:
        tjob = self.observed.training_job
        if self.ftj.spec.suspend or (tjob.get("spec") or {}).get("suspend"):
            self.status.waiting(self.ftj.spec.suspend, self.kueue, self.names.training_job)
            return
        job_status = tjob.get("status") or {}
        if int(job_status.get("ready") or 0) > 0:
            nodes = self.ftj.spec.resources.nodes
            self.status.desired.setdefault("startTime", self.status.ts)
            self.status.condition("Suspended", False, "Resumed", "")
            self.status.condition("Running", True, "PodsReady", f"{job_status.get('ready')} of {nodes} training pod(s) ready")
            self.status.set_phase(Phase.RUNNING, f"Training with {nodes} node(s)")
        else:
            self.status.waiting(False, False, self.names.training_job, blocked_pod(self.observed.training_pods))


#: The name of the TokenBudget the operator creates in a namespace that has none (settings.defaultBudget).
DEFAULT_BUDGET = "default"


def default_budget(namespace: str, settings: OperatorSettings) -> dict[str, Any]:
    assert settings.default_budget is not None
    return {"apiVersion": API_VERSION, "kind": "TokenBudget",
            "metadata": {"name": DEFAULT_BUDGET, "namespace": namespace,
                         "labels": {"app.kubernetes.io/managed-by": "hone-operator"}},
            "spec": settings.default_budget.model_dump(mode="json", by_alias=True, exclude_none=True)}


def training_config(config: contract.TrainerConfig, status: dict[str, Any]) -> contract.TrainerConfig:
    """The trainer's config: ``config`` with the hyperparameters and counts ValidatingFiles wrote into
    ``status`` (a FineTuneJob's), so the run is the one its estimate describes."""
    estimate, dataset = status.get("estimate") or {}, status.get("dataset") or {}
    hp = contract.ResolvedHyperparameters.model_validate(estimate["hyperparameters"])
    return config.resolved(hp, int(dataset["examples"]), int(dataset["tokensPerEpoch"]))


def dataset_status(r: contract.ValidationResult) -> dict[str, Any]:
    """``status.dataset`` from a validation result (the fields :class:`DatasetStatus` defines)."""
    return DatasetStatus.model_validate(r.to_json_dict()).to_status()


def estimate_status(r: contract.ValidationResult, price: float) -> dict[str, Any]:
    """``status.estimate`` at ``price`` (USD per 1M training tokens: the base model's, ``settings.prices_for``)."""
    return EstimateStatus(billableTrainingTokens=r.billable_training_tokens,
                          costUsd=contract.cost_usd(r.billable_training_tokens, price),
                          usdPerMillionTokens=price, hyperparameters=r.hyperparameters, model=r.model).to_status()
