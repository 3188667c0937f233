"""The operator's Prometheus metrics.

* ``hone_finetunejobs{namespace,phase}``: FineTuneJobs per phase (gauge).
* ``hone_training_tokens_total{namespace,finetunejob,base_model}``: billable
  tokens trained, as reported by the trainer. Exported as the absolute total
  of each job (not incremented in process memory), so an operator restart
  never makes a job's tokens count twice: the series continues at the same
  value and Prometheus sees no reset.
* ``hone_cost_usd_total{namespace,kind="training",finetunejob}``: the same
  tokens at the training price, less the job's free tokens (the daily allowance
  its TokenBudget reserved for it): what the budget charges when it ends. The
  per-job label keeps the series monotonic when other jobs are deleted; sum by
  namespace to bill.
* ``hone_training_free_tokens_total{namespace,finetunejob}``: of the tokens, free.
* ``hone_budget_training_used_tokens{namespace,budget,window="day|month"}``: a
  TokenBudget's settled plus reserved training tokens in the current window, with
  ``hone_budget_training_limit_tokens`` (where a limit is set) and
  ``hone_budget_training_remaining_tokens``; ``hone_budget_training_cost_usd`` and
  ``hone_budget_training_cost_limit_usd`` for the month;
  ``hone_budget_training_free_tokens{window="day"}`` and
  ``hone_budget_training_free_limit_tokens``: the allowance used and given (gauges).
* ``hone_finetunejob_train_loss{namespace,finetunejob}`` and
  ``hone_finetunejob_validation_loss{namespace,finetunejob}``: the latest losses in
  ``status.progress`` (gauges), so a job's loss curve is in Prometheus whether or not its
  training pod was scraped, and stays after the pod is gone.
* ``hone_evaluation_loss{namespace,finetunejob,model="base|fine-tuned"}`` and
  ``hone_evaluation_mean_token_accuracy{…}``: a succeeded job's ``status.evaluation``, the
  base model and the fine-tune on the validation file (gauges).
* ``hone_evaluation_pass_rate{namespace,finetunejob,grader,model}``,
  ``hone_evaluation_refusal_rate{namespace,finetunejob,model}`` and
  ``hone_evaluation_safety_passed{namespace,finetunejob}``: the evaluation step's graders and
  safety gate (``status.evaluation``; gauges).
* ``hone_reconcile_errors_total{kind}``, ``hone_reconcile_duration_seconds``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hone_operator.api.v1alpha1 import FineTuneJobPhase
from hone_operator.reconcile.budget import charge
from hone_trainer.contract import PriceTable


@dataclass
class JobSample:
    namespace: str
    name: str
    base_model: str
    phase: str | None
    trained_tokens: int
    train_loss: float | None = None
    validation_loss: float | None = None
    #: From status.budget: the free tokens reserved for the job and its price (None: list price, none free).
    free_tokens: int = 0
    price: float | None = None
    #: status.evaluation: {"base": {"loss", "meanTokenAccuracy"}, "fineTuned": {...}}
    evaluation: dict[str, Any] | None = None


class FineTuneJobCollector(Collector):
    """Reads the latest view of every FineTuneJob at scrape time."""

    def __init__(self, prices: PriceTable):
        self.prices = prices
        self._jobs: dict[str, JobSample] = {}
        self._lock = threading.Lock()

    def observe(self, uid: str, sample: JobSample) -> None:
        with self._lock:
            prev = self._jobs.get(uid)
            # Tokens only grow; a stale event must not move the total back.
            if prev is not None and sample.trained_tokens < prev.trained_tokens:
                sample.trained_tokens = prev.trained_tokens
            self._jobs[uid] = sample

    def forget(self, uid: str) -> None:
        with self._lock:
            self._jobs.pop(uid, None)

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            jobs = list(self._jobs.values())
        phases = GaugeMetricFamily("hone_finetunejobs", "FineTuneJobs by phase.", labels=["namespace", "phase"])
        counts: dict[tuple[str, str], int] = {}
        namespaces = {j.namespace for j in jobs}
        for ns in namespaces:
            for phase in FineTuneJobPhase:
                counts[(ns, phase.value)] = 0
        for j in jobs:
            if j.phase:
                counts[(j.namespace, j.phase)] = counts.get((j.namespace, j.phase), 0) + 1
        for (ns, phase), n in sorted(counts.items()):
            phases.add_metric([ns, phase], n)
        yield phases

        tokens = CounterMetricFamily(
            "hone_training_tokens", "Billable training tokens processed.",
            labels=["namespace", "finetunejob", "base_model"],
        )
        cost = CounterMetricFamily(
            "hone_cost_usd", "Cost in US dollars at the configured price table.",
            labels=["namespace", "kind", "finetunejob"],
        )
        free = CounterMetricFamily("hone_training_free_tokens", "Training tokens free under the daily allowance.",
                                   labels=["namespace", "finetunejob"])
        for j in jobs:
            tokens.add_metric([j.namespace, j.name, j.base_model], j.trained_tokens)
            # What its TokenBudget charges when it ends, so far.
            c = charge(j.free_tokens, self.prices.training if j.price is None else j.price, j.trained_tokens)
            cost.add_metric([j.namespace, "training", j.name], c.cost_usd)
            free.add_metric([j.namespace, j.name], c.free_tokens)
        yield tokens
        yield cost
        yield free
        for attr, name, what in (("train_loss", "hone_finetunejob_train_loss", "Latest training loss"),
                                 ("validation_loss", "hone_finetunejob_validation_loss", "Latest validation loss")):
            loss = GaugeMetricFamily(name, f"{what} in status.progress.", labels=["namespace", "finetunejob"])
            for j in jobs:
                if getattr(j, attr) is not None:
                    loss.add_metric([j.namespace, j.name], getattr(j, attr))
            yield loss
        for key, name, what in (("loss", "hone_evaluation_loss", "Loss"),
                                ("meanTokenAccuracy", "hone_evaluation_mean_token_accuracy", "Mean token accuracy")):
            scores = GaugeMetricFamily(name, f"{what} on the validation file of the base model and the fine-tune "
                                             "(status.evaluation).", labels=["namespace", "finetunejob", "model"])
            for j in jobs:
                for model, side in (("base", "base"), ("fine-tuned", "fineTuned")):
                    value = ((j.evaluation or {}).get(side) or {}).get(key)
                    if value is not None:
                        scores.add_metric([j.namespace, j.name, model], value)
            yield scores
        passing = GaugeMetricFamily("hone_evaluation_pass_rate", "Share of the eval file's answers each grader "
                                    "passed, per model (status.evaluation.graders).",
                                    labels=["namespace", "finetunejob", "grader", "model"])
        refusing = GaugeMetricFamily("hone_evaluation_refusal_rate", "Share of the safety suite each model declined "
                                     "(status.evaluation.safety).", labels=["namespace", "finetunejob", "model"])
        gate = GaugeMetricFamily("hone_evaluation_safety_passed", "1 when the fine-tune passed the safety gate, 0 "
                                 "when it failed (status.evaluation.safety.passed).",
                                 labels=["namespace", "finetunejob"])
        for j in jobs:
            for g in (j.evaluation or {}).get("graders") or []:
                passing.add_metric([j.namespace, j.name, g["name"], "base"], g["basePassRate"])
                passing.add_metric([j.namespace, j.name, g["name"], "fine-tuned"], g["fineTunedPassRate"])
            safety = (j.evaluation or {}).get("safety")
            if safety:
                refusing.add_metric([j.namespace, j.name, "base"], safety["baseRefusalRate"])
                refusing.add_metric([j.namespace, j.name, "fine-tuned"], safety["fineTunedRefusalRate"])
                gate.add_metric([j.namespace, j.name], 1.0 if safety["passed"] else 0.0)
        yield passing
        yield refusing
        yield gate


class BudgetCollector(Collector):
    """Each TokenBudget's usage as its status last said (gauges)."""

    def __init__(self) -> None:
        self._budgets: dict[tuple[str, str], dict] = {}
        self._lock = threading.Lock()

    def observe(self, obj: dict) -> None:
        meta = obj.get("metadata") or {}
        with self._lock:
            self._budgets[(meta.get("namespace", ""), meta.get("name", ""))] = obj

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._budgets.pop((namespace, name), None)

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            budgets = sorted(self._budgets.items())

        def gauge(name: str, documentation: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, documentation, labels=["namespace", "budget", "window"])

        used = gauge("hone_budget_training_used_tokens",
                     "Settled plus reserved training tokens in the TokenBudget's current window.")
        limit = gauge("hone_budget_training_limit_tokens", "The TokenBudget's training token limit.")
        remaining = gauge("hone_budget_training_remaining_tokens", "Training tokens left in the window.")
        cost = gauge("hone_budget_training_cost_usd", "Settled plus reserved training cost this month.")
        cost_limit = gauge("hone_budget_training_cost_limit_usd", "The monthly training cost limit.")
        free = gauge("hone_budget_training_free_tokens", "Free training tokens used today.")
        free_limit = gauge("hone_budget_training_free_limit_tokens", "Free training tokens a day.")
        served = gauge("hone_budget_inference_used_tokens",
                       "Inference tokens served today plus those granted to serving pods and not yet served.")
        served_limit = gauge("hone_budget_inference_limit_tokens", "The TokenBudget's inference tokens a day.")
        served_left = gauge("hone_budget_inference_remaining_tokens", "Inference tokens left today.")
        for (ns, name), obj in budgets:
            spec = (obj.get("spec") or {}).get("training") or {}
            status = obj.get("status") or {}
            usage = status.get("training") or {}
            reserved = int(usage.get("reservedTokens") or 0)
            reserved_cost = sum(float(r.get("costUsd") or 0.0) for r in status.get("reservations") or [])
            for window, settled, cap, left in (
                    ("day", usage.get("tokensToday"), spec.get("tokensPerDay"), usage.get("remainingTodayTokens")),
                    ("month", usage.get("tokensThisMonth"), spec.get("tokensPerMonth"),
                     usage.get("remainingThisMonthTokens"))):
                used.add_metric([ns, name, window], int(settled or 0) + reserved)
                if cap is not None:
                    limit.add_metric([ns, name, window], cap)
                    remaining.add_metric([ns, name, window], int(left or 0))
            cost.add_metric([ns, name, "month"], float(usage.get("costThisMonthUsd") or 0.0) + reserved_cost)
            if spec.get("costPerMonthUsd") is not None:
                cost_limit.add_metric([ns, name, "month"], float(spec["costPerMonthUsd"]))
            free.add_metric([ns, name, "day"], int(usage.get("freeTokensToday") or 0))
            free_limit.add_metric([ns, name, "day"], int(spec.get("freeTokensPerDay", 1_000_000)))
            inference = status.get("inference") or {}
            day_limit = ((obj.get("spec") or {}).get("inference") or {}).get("tokensPerDay")
            served.add_metric([ns, name, "day"], int(inference.get("tokensToday") or 0) +
                              int(inference.get("grantedTokens") or 0))
            if day_limit is not None:
                served_limit.add_metric([ns, name, "day"], day_limit)
                served_left.add_metric([ns, name, "day"], int(inference.get("remainingTodayTokens", day_limit) or 0))
        yield from (used, limit, remaining, cost, cost_limit, free, free_limit, served, served_limit, served_left)


class OperatorMetrics:
    def __init__(self, prices: PriceTable):
        self.registry = CollectorRegistry()
        self.jobs = FineTuneJobCollector(prices)
        self.registry.register(self.jobs)
        self.budgets = BudgetCollector()
        self.registry.register(self.budgets)
        self.reconcile_errors = Counter(
            "hone_reconcile_errors", "Reconciles that failed and were retried.", ["kind"], registry=self.registry
        )
        self.reconcile_duration = Histogram(
            "hone_reconcile_duration_seconds", "Time spent in one reconcile.", ["kind"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
