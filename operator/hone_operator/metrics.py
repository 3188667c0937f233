"""The operator's Prometheus metrics.

* ``hone_finetunejobs{namespace,phase}``: FineTuneJobs per phase (gauge).
* ``hone_training_tokens_total{namespace,finetunejob,base_model}``: billable
  tokens trained, as reported by the trainer. Exported as the absolute total
  of each job (not incremented in process memory), so an operator restart
  never makes a job's tokens count twice: the series continues at the same
  value and Prometheus sees no reset.
* ``hone_cost_usd_total{namespace,kind="training",finetunejob}``: the same
  tokens at the price table's training price. The per-job label keeps the
  series monotonic when other jobs are deleted; sum by namespace to bill.
* ``hone_finetunejob_train_loss{namespace,finetunejob}`` and
  ``hone_finetunejob_validation_loss{namespace,finetunejob}``: the latest losses in
  ``status.progress`` (gauges), so a job's loss curve is in Prometheus whether or not its
  training pod was scraped, and stays after the pod is gone.
* ``hone_reconcile_errors_total{kind}``, ``hone_reconcile_duration_seconds``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hone_operator.api.v1alpha1 import FineTuneJobPhase
from hone_trainer.contract import PriceTable, cost_usd


@dataclass
class JobSample:
    namespace: str
    name: str
    base_model: str
    phase: str | None
    trained_tokens: int
    train_loss: float | None = None
    validation_loss: float | None = None


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
        for j in jobs:
            tokens.add_metric([j.namespace, j.name, j.base_model], j.trained_tokens)
            cost.add_metric([j.namespace, "training", j.name], cost_usd(j.trained_tokens, self.prices.training))
        yield tokens
        yield cost
        for attr, name, what in (("train_loss", "hone_finetunejob_train_loss", "Latest training loss"),
                                 ("validation_loss", "hone_finetunejob_validation_loss", "Latest validation loss")):
            loss = GaugeMetricFamily(name, f"{what} in status.progress.", labels=["namespace", "finetunejob"])
            for j in jobs:
                if getattr(j, attr) is not None:
                    loss.add_metric([j.namespace, j.name], getattr(j, attr))
            yield loss


class OperatorMetrics:
    def __init__(self, prices: PriceTable):
        self.registry = CollectorRegistry()
        self.jobs = FineTuneJobCollector(prices)
        self.registry.register(self.jobs)
        self.reconcile_errors = Counter(
            "hone_reconcile_errors", "Reconciles that failed and were retried.", ["kind"], registry=self.registry
        )
        self.reconcile_duration = Histogram(
            "hone_reconcile_duration_seconds", "Time spent in one reconcile.", ["kind"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
