"""Level-based reconciliation: a cache fed by kopf's watches and a work queue.

kopf streams FineTuneJob, Job, ModelServing and Deployment events; the
handlers in :mod:`.main` only put the object into the cache and queue the key
of the FineTuneJob or ModelServing it belongs to (a FineTuneJob's change also
queues the ModelServings that serve it). Workers take
keys off the queue (each key is processed by one worker at a time, and a key
queued while it is being processed runs once more afterwards), compute a
:func:`~hone_operator.reconcile.finetunejob.plan` from the cached state, and
carry it out. Nothing is written when the plan is empty, so a converged
cluster costs no API writes, and an operator restarted at any point computes
the same plan from the same objects: names are deterministic and a create
that meets an existing object adopts it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import threading
import time
from typing import Any

from hone_operator.api.v1alpha1 import API_VERSION, FineTuneJobPhase
from hone_operator.builders import finetunejob as ftj_build
from hone_operator.builders import modelserving as msv_build
from hone_operator.builders.common import COMPONENT_LABEL, FINETUNEJOB_LABEL, MODELSERVING_LABEL
from hone_operator.cache import ObjectCache
from hone_operator.reconcile import budget as budget_mod
from hone_operator.reconcile import finetunejob as ftj_reconcile
from hone_operator.reconcile import modelserving as msv_reconcile
from hone_operator.reconcile.pods import blocked_pod
from hone_operator.reconcile.status import now
from hone_trainer.contract import QuotaAnswer, QuotaReport
from hone_operator.kube import Conflict, Kube, NotFound
from hone_operator.metrics import JobSample, OperatorMetrics
from hone_operator.settings import OperatorSettings

log = logging.getLogger("hone.controller")

Key = tuple[str, str]  # (namespace, name)
WorkKey = tuple[str, str, str]  # (kind, namespace, name)
FINETUNEJOB, MODELSERVING, TOKENBUDGET = ftj_build.KIND, msv_build.KIND, "TokenBudget"


def _owner(obj: dict[str, Any], kind: str = ftj_build.KIND) -> dict[str, Any]:
    """The FineTuneJob (or ``kind``) ownerReference of a child object ({} when it has none)."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == kind and ref.get("apiVersion", "").startswith("hone.dev/"):
            return ref
    return {}


class Controller:
    def __init__(self, settings: OperatorSettings, kube: Kube, metrics: OperatorMetrics):
        self.settings = settings
        self.kube = kube
        self.metrics = metrics
        self._lock = threading.Lock()
        self._ftjs: ObjectCache[Key] = ObjectCache()
        #: Jobs by (namespace, FineTuneJob, component): the validate and train Jobs of each FineTuneJob.
        self._jobs: ObjectCache[tuple[str, str, str]] = ObjectCache()
        self._msvs: ObjectCache[Key] = ObjectCache()
        self._deployments: ObjectCache[Key] = ObjectCache()
        self._budgets: ObjectCache[Key] = ObjectCache()
        #: FineTuneJobs deleted before they ended: uid -> (namespace, trained tokens of their last status), for
        #: their budget reservation to be charged by the budget's reconcile.
        self._departed: dict[str, tuple[str, int]] = {}
        self._warned_no_budgets = False
        #: When each TokenBudget's reconcile is next due (its day window's end), so it is scheduled once.
        self._budget_timers: dict[Key, Any] = {}
        #: Serving pods deleted (uids) whose budget record is still to be retired, and the budgets whose
        #: records were each looked up since this operator started (pods may have gone while it was away).
        self._gone_servers: set[tuple[str, str]] = set()
        self._checked_servers: set[Key] = set()
        self._queue: asyncio.Queue[WorkKey] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queued: set[WorkKey] = set()
        self._active: set[WorkKey] = set()
        self._dirty: set[WorkKey] = set()
        self._failures: dict[WorkKey, int] = {}
        self._workers: list[asyncio.Task[None]] = []
        self.instance = os.environ.get("HOSTNAME", "hone-operator")

    # ---- cache, fed from kopf's event handlers (event loop thread) --------

    def on_finetunejob(self, event_type: str | None, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        key = (meta.get("namespace"), meta.get("name"))
        if event_type == "DELETED":
            with self._lock:
                self._ftjs.forget(key)
                for component in ftj_build.JOB_COMPONENTS:
                    self._jobs.forget((*key, component))
                use = (obj.get("status") or {}).get("budget")
                if use and not use.get("settledAt"):  # deleted before it ended: charge what it trained
                    self._departed[meta.get("uid", "")] = (key[0], ftj_reconcile.trained_tokens(obj["status"]))
                    budgets = [k for k in self._budgets if k[0] == key[0]]
                else:
                    budgets = []
            self.metrics.jobs.forget(meta.get("uid", ""))
            self._enqueue_servings_of(key)
            for budget_key in budgets:
                self.enqueue((TOKENBUDGET, *budget_key))
            return
        with self._lock:
            if not self._ftjs.observed(key, obj, listing=event_type is None):
                return
        self._observe_metrics(obj)
        self.enqueue((FINETUNEJOB, *key))
        self._enqueue_servings_of(key)

    def _enqueue_servings_of(self, ftj_key: Key) -> None:
        namespace, name = ftj_key
        with self._lock:
            servings = [k for k, body in self._msvs.items() if k[0] == namespace and name in _ftj_refs(body)]
        for key in servings:
            self.enqueue((MODELSERVING, *key))

    def on_budget(self, event_type: str | None, obj: dict[str, Any]) -> None:
        """A TokenBudget changed: its status is brought up to date, and the namespace's jobs waiting for
        budget look again (a limit raised, a job settled, a budget created or deleted)."""
        meta = obj.get("metadata") or {}
        key = (meta.get("namespace"), meta.get("name"))
        with self._lock:
            if event_type == "DELETED":
                self._budgets.forget(key)
            elif not self._budgets.observed(key, obj, listing=event_type is None):
                return
            others = [k for k in self._budgets if k[0] == key[0] and k != key]
        if event_type == "DELETED":
            self.metrics.budgets.forget(*key)
        else:
            self.metrics.budgets.observe(obj)
        for k in ([] if event_type == "DELETED" else [key]) + others:
            self.enqueue((TOKENBUDGET, *k))
        self._enqueue_waiting(key[0])

    def _enqueue_waiting(self, namespace: str) -> None:
        """FineTuneJobs of ``namespace`` not yet admitted by its TokenBudget."""
        with self._lock:
            waiting = [k for k, body in self._ftjs.items() if k[0] == namespace
                       and not (body.get("status") or {}).get("budget")
                       and not FineTuneJobPhase.is_terminal((body.get("status") or {}).get("phase"))]
        for key in waiting:
            self.enqueue((FINETUNEJOB, *key))

    def on_modelserving(self, event_type: str | None, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        key = (meta.get("namespace"), meta.get("name"))
        if event_type == "DELETED":
            with self._lock:
                self._msvs.forget(key)
                self._deployments.forget(key)
            return
        with self._lock:
            if not self._msvs.observed(key, obj, listing=event_type is None):
                return
        self.enqueue((MODELSERVING, *key))

    def on_deployment(self, event_type: str | None, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        owner = _owner(obj, MODELSERVING).get("name")
        if owner is None:
            return
        key = (meta.get("namespace"), owner)
        with self._lock:
            if event_type == "DELETED":
                self._deployments.forget(key, obj)
            elif not self._deployments.observed(key, obj, listing=event_type is None):
                return
        self.enqueue((MODELSERVING, *key))

    def on_job(self, event_type: str | None, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        owner = _owner(obj).get("name")
        component = (meta.get("labels") or {}).get(COMPONENT_LABEL)
        if owner is None or component not in ftj_build.JOB_COMPONENTS:  # only the Jobs Hone creates
            return
        key = (meta.get("namespace"), owner)
        if event_type == "DELETED":
            with self._lock:
                self._jobs.forget((*key, component), obj)
        else:
            with self._lock:
                if not self._jobs.observed((*key, component), obj, listing=event_type is None):
                    return
        self.enqueue((FINETUNEJOB, *key))

    def on_pod(self, event_type: str | None, obj: dict[str, Any]) -> None:
        """A validation, training or server pod that cannot start (unschedulable, image pull, bad config)
        re-plans its FineTuneJob or ModelServing, whose status then says why; a pod that runs shows in
        its Job's or Deployment's status instead."""
        meta = obj.get("metadata") or {}
        labels = meta.get("labels") or {}
        if event_type == "DELETED" and labels.get(MODELSERVING_LABEL) and labels.get(COMPONENT_LABEL) == "server":
            # A serving pod gone: its budget record is retired (its usage stays, its unused grant comes back).
            with self._lock:
                budgets = [k for k in self._budgets if k[0] == meta.get("namespace")]
                if budgets and meta.get("uid"):
                    self._gone_servers.add((meta["namespace"], meta["uid"]))
            for key in budgets:
                self.enqueue((TOKENBUDGET, *key))
            return
        if event_type == "DELETED" or blocked_pod([obj]) is None:
            return
        if labels.get(FINETUNEJOB_LABEL) and labels.get(COMPONENT_LABEL) in ftj_build.JOB_COMPONENTS:
            self.enqueue((FINETUNEJOB, meta.get("namespace"), labels[FINETUNEJOB_LABEL]))
        elif labels.get(MODELSERVING_LABEL) and labels.get(COMPONENT_LABEL) == "server":
            self.enqueue((MODELSERVING, meta.get("namespace"), labels[MODELSERVING_LABEL]))

    def _written_job(self, key: Key, obj: dict[str, Any] | None) -> None:
        """Keep the answer to a create or patch of one of the FineTuneJob's Jobs."""
        component = (((obj or {}).get("metadata") or {}).get("labels") or {}).get(COMPONENT_LABEL)
        if component:
            with self._lock:
                self._jobs.written((*key, component), obj)

    def _written_ftj(self, key: Key, obj: dict[str, Any]) -> None:
        with self._lock:
            self._ftjs.written(key, obj, only_known=True)
        self._observe_metrics(obj)

    def _observe_metrics(self, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        status = obj.get("status") or {}
        progress = status.get("progress") or {}
        tokens = ftj_reconcile.trained_tokens(status)  # what its TokenBudget charges when it ends
        base = ((obj.get("spec") or {}).get("baseModel") or {}).get("uri", "")
        use = status.get("budget") or {}
        self.metrics.jobs.observe(
            meta.get("uid", ""),
            JobSample(meta.get("namespace", ""), meta.get("name", ""), base, status.get("phase"), int(tokens),
                      progress.get("trainLoss"), progress.get("validationLoss"), int(use.get("freeTokens") or 0),
                      use.get("usdPerMillionTokens") if use else self.settings.prices_for(base).training,
                      status.get("evaluation")),
        )

    # ---- the work queue ----------------------------------------------------

    def enqueue(self, key: WorkKey, delay: float = 0.0) -> None:
        if self._loop is None or self._queue is None:
            return
        if delay > 0:
            self._loop.call_later(delay, self.enqueue, key)
            return
        if key in self._active:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        self._workers = [asyncio.create_task(self._worker(i)) for i in range(self.settings.reconcile_workers)]
        with self._lock:
            keys = [(FINETUNEJOB, *k) for k in self._ftjs] + [(MODELSERVING, *k) for k in self._msvs] + \
                [(TOKENBUDGET, *k) for k in self._budgets]
        for key in keys:
            self.enqueue(key)

    async def stop(self) -> None:
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []

    async def _worker(self, index: int) -> None:
        assert self._queue is not None
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            self._active.add(key)
            try:
                ok = await asyncio.to_thread(self._reconcile_safely, key)
            finally:
                self._active.discard(key)
            if not ok:
                n = self._failures.get(key, 0) + 1
                self._failures[key] = n
                self.enqueue(key, delay=min(300.0, self.settings.retry_delay_seconds * 2 ** (n - 1)))
            else:
                self._failures.pop(key, None)
            if key in self._dirty:
                self._dirty.discard(key)
                self.enqueue(key)

    def _reconcile_safely(self, key: WorkKey) -> bool:
        kind, namespace, name = key
        started = time.monotonic()
        try:
            if kind == MODELSERVING:
                self.reconcile_serving((namespace, name))
            elif kind == TOKENBUDGET:
                self.reconcile_budget((namespace, name))
            else:
                self.reconcile((namespace, name))
            return True
        except Exception:
            log.exception("reconcile of %s %s/%s failed; will retry", *key)
            self.metrics.reconcile_errors.labels(kind).inc()
            return False
        finally:
            self.metrics.reconcile_duration.labels(kind).observe(time.monotonic() - started)

    # ---- one reconcile (worker thread) -----------------------------------

    def reconcile(self, key: Key) -> None:
        namespace, name = key
        with self._lock:
            body = self._ftjs.get(key)
            jobs = {component: self._jobs.get((*key, component)) for component in ftj_build.JOB_COMPONENTS}
        if body is None:
            return
        if FineTuneJobPhase.is_terminal((body.get("status") or {}).get("phase")):
            final = ftj_reconcile.Observed()  # final: its status, and its budget charged once
            if ftj_reconcile.needs_budgets(body, final):
                final.budgets = self._read_budgets(namespace)
            plan = ftj_reconcile.plan(body, final, self.settings, now())
            if not plan.empty:
                self._execute(key, body, plan)
            return
        uid = body["metadata"].get("uid")
        owned = lambda j: j is not None and _owner(j).get("uid") == uid  # noqa: E731
        observed = ftj_reconcile.Observed(
            validation_job=jobs.get("validate") if owned(jobs.get("validate")) else None,
            training_job=jobs.get("train") if owned(jobs.get("train")) else None,
            evaluation_job=jobs.get("eval") if owned(jobs.get("eval")) else None,
        )
        # A finished Job's pods hold its result: read them fresh, never from a cache. A Job whose
        # pods are not running yet: they say why (unschedulable, image pull), so the status can.
        if ftj_reconcile.job_finished(observed.validation_job) or ftj_reconcile.pods_pending(observed.validation_job):
            observed.validation_pods = self.kube.list("v1", "Pod", namespace, ftj_build.selector(name, "validate"))
        if ftj_reconcile.job_finished(observed.training_job) or ftj_reconcile.pods_pending(observed.training_job):
            observed.training_pods = self.kube.list("v1", "Pod", namespace, ftj_build.selector(name, "train"))
        if ftj_reconcile.job_finished(observed.evaluation_job) or ftj_reconcile.pods_pending(observed.evaluation_job):
            observed.evaluation_pods = self.kube.list("v1", "Pod", namespace, ftj_build.selector(name, "eval"))

        if observed.validation_job is None:
            observed.missing = self._missing_references(body, namespace)
        if ftj_reconcile.needs_budgets(body, observed):  # fresh: a reservation is written against this version
            observed.budgets = self._read_budgets(namespace)
        plan = ftj_reconcile.plan(body, observed, self.settings, now())
        if plan.empty:
            return
        self._execute(key, body, plan)
        if plan.requeue_after:
            self._loop.call_soon_threadsafe(self.enqueue, (FINETUNEJOB, *key), plan.requeue_after)

    def reconcile_serving(self, key: Key) -> None:
        namespace, name = key
        with self._lock:
            body = self._msvs.get(key)
            if body is None:
                return
            deployment = self._deployments.get(key)
            ftjs = {ref: self._ftjs.get((namespace, ref)) for ref in _ftj_refs(body)}
        uid = body["metadata"].get("uid")
        if deployment is not None and _owner(deployment, MODELSERVING).get("uid") != uid:
            deployment = None  # left over from an earlier ModelServing of the same name
        observed = msv_reconcile.ObservedServing(fine_tune_jobs=ftjs, deployment=deployment)
        dep_status = (deployment or {}).get("status") or {}
        if deployment is not None and int(dep_status.get("readyReplicas") or 0) < int(
                (deployment.get("spec") or {}).get("replicas") or 0):
            observed.pods = self.kube.list("v1", "Pod", namespace, msv_build.server_selector(name))
        plan = msv_reconcile.plan(body, observed, self.settings, now())
        if plan.empty:
            return
        for obj in plan.apply:
            meta = obj["metadata"]
            try:
                created = self.kube.create(obj)
                log.info("created %s %s/%s", obj["kind"], namespace, meta["name"])
            except Conflict:  # it exists: bring it to the desired state
                created = self.kube.patch(obj["apiVersion"], obj["kind"], namespace, meta["name"],
                                          {k: v for k, v in obj.items() if k not in ("apiVersion", "kind")})
                log.info("updated %s %s/%s", obj["kind"], namespace, meta["name"])
            if obj["kind"] == "Deployment" and created:
                with self._lock:
                    self._deployments.written(key, created)
        for ref in plan.deletes:
            self.kube.delete(ref.api_version, ref.kind, namespace, ref.name)
        if plan.status:
            updated = self.kube.patch(API_VERSION, MODELSERVING, namespace, name, {"status": plan.status},
                                      subresource="status")
            with self._lock:
                self._msvs.written(key, updated, only_known=True)
            if "phase" in plan.status:
                log.info("ModelServing %s/%s is %s", namespace, name, plan.status["phase"])
        for event in plan.events:
            self._post_event(body, event, MODELSERVING)

    def reconcile_budget(self, key: Key) -> None:
        """A TokenBudget's status at this moment (windows rolled, conditions), the reservations of jobs
        deleted before they ended charged; looked at again when the day window resets."""
        namespace, name = key
        fresh = self.kube.list(API_VERSION, TOKENBUDGET, namespace)  # the write below needs the latest version
        body = next((b for b in fresh if b["metadata"]["name"] == name), None)
        if body is None:
            return
        ts = now()
        at = budget_mod.parse_time(ts)
        for r in list((body.get("status") or {}).get("reservations") or []):
            gone = self._departed_charge(namespace, r)
            if gone is None:
                continue
            settled = budget_mod.settle(body, r["uid"], gone, at)
            if settled is None:
                continue
            write = budget_mod.status_write(body, settled)
            updated = self._write_budget(namespace, write) if write is not None else body
            if updated is None:
                self._loop.call_soon_threadsafe(self.enqueue, (TOKENBUDGET, *key))
                return
            body = updated  # the next write goes against this version
            self._departed.pop(r["uid"], None)
            self._loop.call_soon_threadsafe(self._enqueue_waiting, namespace)
        retired = self._retire_servers(namespace, body, at)
        if retired is None:
            self._loop.call_soon_threadsafe(self.enqueue, (TOKENBUDGET, *key))
            return
        body = retired
        desired = budget_mod.desired_status(body, fresh, at, ts)
        write = budget_mod.status_write(body, desired)
        if write is not None and self._write_budget(namespace, write) is None:
            self._loop.call_soon_threadsafe(self.enqueue, (TOKENBUDGET, *key))
            return
        if write is None:
            self.metrics.budgets.observe(body)
        held = {r.uid for r in desired.reservations or []}
        with self._lock:  # a departed job whose reservation is gone was charged (or its budget recreated)
            for uid in [u for u, (ns, _) in self._departed.items() if ns == namespace and u not in held]:
                del self._departed[uid]
            # The day window rolls over: usage starts again, waiting jobs may fit. One timer a budget a day.
            due = desired.resetsAt is not None and self._budget_timers.get(key) != desired.resetsAt
            if due:
                self._budget_timers[key] = desired.resetsAt
        if due and desired.resetsAt is not None:
            delay = max(1.0, (desired.resetsAt - at).total_seconds() + 1.0)
            self._loop.call_soon_threadsafe(self.enqueue, (TOKENBUDGET, *key), delay)

    def apply_server_report(self, namespace: str, report: QuotaReport) -> QuotaAnswer:
        """A serving pod's usage report applied to its namespace's governing TokenBudget (a worker thread of
        the quota endpoint; one namespace at a time). Written with the budget's resourceVersion: on a
        conflict the budget is read again and the report applied again."""
        with self._lock:
            budgets = [b for k, b in self._budgets.items() if k[0] == namespace]
        for _ in range(8):
            active = budget_mod.governing(budgets)
            if active is None:  # no budget: metered by /metrics only, nothing to enforce
                return QuotaAnswer()
            status, answer = budget_mod.inference_report(active, report, budget_mod.parse_time(now()))
            write = budget_mod.status_write(active, status) if status is not None else None
            if write is None or self._write_budget(namespace, write) is not None:
                return answer
            budgets = self._read_budgets(namespace) or []
        raise RuntimeError(f"TokenBudget of namespace {namespace} kept changing; try again")

    def _retire_servers(self, namespace: str, body: dict[str, Any], at: Any) -> dict[str, Any] | None:
        """Retire the inference records of serving pods that are gone (their reports stay in the day's usage,
        their unused grants come back); the budget as written, or None on a conflict."""
        records = ((body.get("status") or {}).get("inference") or {}).get("servers") or []
        key = (namespace, body["metadata"]["name"])
        with self._lock:
            seen = {uid for ns, uid in self._gone_servers if ns == namespace}
            gone = {r["uid"] for r in records if r["uid"] in seen}
            checked = key in self._checked_servers
        if not checked:  # pods deleted while no operator watched: look each one up once
            for record in records:
                pod = self.kube.get("v1", "Pod", namespace, record["pod"])
                if pod is None or pod["metadata"].get("uid") != record["uid"]:
                    gone.add(record["uid"])
        retired = budget_mod.retire_servers(body, gone, at) if gone else None
        write = budget_mod.status_write(body, retired) if retired is not None else None
        updated = self._write_budget(namespace, write) if write is not None else body
        if updated is not None:
            with self._lock:
                self._checked_servers.add(key)
                self._gone_servers -= {(namespace, uid) for uid in seen}
        return updated

    def _departed_charge(self, namespace: str, reservation: dict[str, Any]) -> budget_mod.Charge | None:
        """The charge of a reservation whose FineTuneJob no longer exists (None while it does): what its last
        status said it trained, or nothing, said in a Warning, when it went while the operator was away."""
        uid, job = reservation.get("uid", ""), reservation.get("job", "")
        with self._lock:
            cached = self._ftjs.get((namespace, job))
            departed = self._departed.get(uid)
        if departed is None:
            if cached is not None and cached["metadata"].get("uid") == uid:
                return None
            current = self.kube.get(API_VERSION, FINETUNEJOB, namespace, job)  # the cache may not have it yet
            if current is not None and current["metadata"].get("uid") == uid:
                return None
            log.warning("FineTuneJob %s/%s (uid %s) was deleted while the operator was not running: what it "
                        "trained is unknown and its reservation is released uncharged", namespace, job, uid)
        return budget_mod.charge_for(reservation, departed[1] if departed else 0)

    def _missing_references(self, body: dict[str, Any], namespace: str) -> list[tuple[str, str]]:
        """Read the ConfigMaps and PVCs the pods will mount; say which are missing."""
        try:
            ftj = ftj_reconcile.FineTuneJob.model_validate({**body, "status": {}})
        except ValueError:
            return []  # the plan reports the invalid spec
        missing = []
        for ref in ftj_build.references(ftj):
            obj = self.kube.get(ref.api_version, ref.kind, namespace, ref.name)
            if obj is None:
                missing.append((ref.param, f"{ref.kind} {ref.name!r} ({ref.param}) does not exist in namespace "
                                           f"{namespace!r}"))
            elif ref.key is not None and ref.key not in (obj.get("data") or {}) | (obj.get("binaryData") or {}):
                keys = ", ".join(sorted(obj.get("data") or {})) or "none"
                missing.append((ref.param, f"ConfigMap {ref.name!r} has no key {ref.key!r} ({ref.param}.key); "
                                           f"its keys: {keys}"))
        return missing

    def _read_budgets(self, namespace: str) -> list[dict[str, Any]] | None:
        """The namespace's TokenBudgets, read fresh; None when the cluster has no TokenBudget CRD (an upgrade
        whose CRDs were not applied: `helm upgrade` never adds them), so jobs are metered, not held."""
        try:
            return self.kube.list(API_VERSION, TOKENBUDGET, namespace)
        except NotFound:
            if not self._warned_no_budgets:
                self._warned_no_budgets = True
                log.warning("the TokenBudget CRD is not installed: budgets are off until it is "
                            "(kubectl apply --server-side -f charts/hone/crds/)")
            return None

    def _write_budget(self, namespace: str, write: budget_mod.BudgetWrite) -> dict[str, Any] | None:
        """A TokenBudget status write with its resourceVersion: the budget as written, or None when it changed
        meanwhile."""
        try:
            updated = self.kube.patch(API_VERSION, TOKENBUDGET, namespace, write.name, write.body(),
                                      subresource="status")
        except Conflict:
            log.info("TokenBudget %s/%s changed meanwhile; planning again", namespace, write.name)
            return None
        with self._lock:
            self._budgets.written((namespace, write.name), updated, only_known=True)
        self.metrics.budgets.observe(updated)
        return updated

    def _execute(self, key: Key, body: dict[str, Any], plan: ftj_reconcile.Plan) -> None:
        namespace, name = key
        if plan.budget_write is not None:
            if self._write_budget(namespace, plan.budget_write) is None:
                self._loop.call_soon_threadsafe(self.enqueue, (FINETUNEJOB, *key))
                return
            if "settledAt" in ((plan.status or {}).get("budget") or {}):  # tokens came back: others may fit now
                self._loop.call_soon_threadsafe(self._enqueue_waiting, namespace)
        for obj in plan.ensure:
            try:
                created = self.kube.create(obj)
                log.info("created %s %s/%s", obj["kind"], namespace, obj["metadata"]["name"])
            except Conflict:  # made by an earlier run of this reconcile: adopt it
                created = None
                if obj["kind"] in ("ConfigMap", "NetworkPolicy"):  # Hone's own rendering: brought in line
                    key_ = "data" if obj["kind"] == "ConfigMap" else "spec"
                    self.kube.patch(obj["apiVersion"], obj["kind"], namespace, obj["metadata"]["name"],
                                    {key_: obj[key_]})
                elif obj["kind"] == "Job":
                    created = self.kube.get(obj["apiVersion"], obj["kind"], namespace, obj["metadata"]["name"])
            if created and created.get("kind") == "Job":
                self._written_job(key, created)
        for ref, patch in plan.patches:
            updated = self.kube.patch(ref.api_version, ref.kind, namespace, ref.name, patch)
            if ref.kind == "Job":
                self._written_job(key, updated)
        for ref in plan.deletes:
            self.kube.delete(ref.api_version, ref.kind, namespace, ref.name)
            if ref.kind == "Job":
                with self._lock:
                    for component in ftj_build.JOB_COMPONENTS:
                        job = self._jobs.get((*key, component))
                        if job is not None and job["metadata"]["name"] == ref.name:
                            self._jobs.forget((*key, component))
        if plan.status:
            updated = self.kube.patch(API_VERSION, "FineTuneJob", namespace, name, {"status": plan.status},
                                      subresource="status")
            self._written_ftj(key, updated)
            if "phase" in plan.status:
                log.info("FineTuneJob %s/%s is %s", namespace, name, plan.status["phase"])
        for event in plan.events:
            self._post_event(body, event)

    def _post_event(self, body: dict[str, Any], event: ftj_reconcile.Event, kind: str = FINETUNEJOB) -> None:
        meta = body["metadata"]
        ts = now()
        obj = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{meta['name'][:200]}.{secrets.token_hex(8)}", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": API_VERSION, "kind": kind, "name": meta["name"],
                "namespace": meta["namespace"], "uid": meta.get("uid"),
            },
            "type": event.type,
            "reason": event.reason,
            "message": event.message[:1024],
            "source": {"component": "hone-operator"},
            "reportingComponent": "hone.dev/operator",
            "reportingInstance": self.instance[:128],
            "firstTimestamp": ts,
            "lastTimestamp": ts,
            "count": 1,
        }
        try:
            self.kube.create(obj)
        except Exception:  # an Event is best effort; never fail a reconcile over it
            log.warning("could not post Event %s for %s/%s", event.reason, meta["namespace"], meta["name"])


def _ftj_refs(body: dict[str, Any]) -> set[str]:
    """Names of the FineTuneJobs a ModelServing body refers to (parsed loosely: it may be invalid)."""
    spec = body.get("spec") or {}
    refs = [spec.get("fineTuneJobRef")] + [a.get("fineTuneJobRef") for a in spec.get("adapters") or []
                                           if isinstance(a, dict)]
    return {r["name"] for r in refs if isinstance(r, dict) and isinstance(r.get("name"), str)}
