"""The controllers of kube-controller-manager that Hone relies on, on the emulated API server's loop.

Level-triggered like the real ones: an event on an object (or on a pod it owns) queues its
key, and a reconcile reads the store and writes what it must, in one step on the loop (so two
reconciles never interleave).

* **Job** (``batch/v1``): ``parallelism``/``completions``, NonIndexed and Indexed completion
  (pods ``<job>-<index>-<random>`` with the completion-index annotation and label, hostname
  ``<job>-<index>``, ``JOB_COMPLETION_INDEX``), the ``batch.kubernetes.io/job-tracking``
  finalizer so every finished pod is counted once, ``backoffLimit`` with the real back-off
  before a replacement (``backoff_seconds`` doubling, 6 min cap), ``podFailurePolicy`` (``FailJob``,
  ``Ignore``, ``Count``; ``onExitCodes`` and ``onPodConditions``; a terminating pod is
  replaced only once it has failed, as with ``podReplacementPolicy: Failed``), ``suspend``,
  ``activeDeadlineSeconds``, and the ``Complete``/``Failed`` conditions (after
  ``SuccessCriteriaMet``/``FailureTarget``) with the real reasons and messages;
* **ReplicaSet** (``apps/v1``): keeps ``replicas`` pods of its template (deleting a failed pod
  and replacing it), status counts;
* **Deployment**: a ReplicaSet per template (``pod-template-hash``), ``RollingUpdate`` (the new
  ReplicaSet scaled up at once, old ones down as new pods become available: maxSurge 100%,
  maxUnavailable 0, whatever the spec says) and ``Recreate`` (old pods gone first),
  ``revisionHistoryLimit``, status with ``Available``/``Progressing`` conditions; the scale
  subresource is the API server's;
* **ServiceAccount** and root CA publisher: a ``default`` ServiceAccount and the
  ``kube-root-ca.crt`` ConfigMap in every namespace.

Garbage collection by ownerReferences is the API server's own. HorizontalPodAutoscalers are
stored but not acted on: replicas stay what the spec says.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import hashlib
import json
import logging
import secrets
from typing import Any, Callable

from hone_dev.apiserver.kinds import (CONFIGMAPS, DEPLOYMENTS, JOBS, MERGE, NAMESPACES, PODS, REPLICASETS,
                                      SERVICE_ACCOUNTS, ApiError, now)
from hone_dev.node.kubelet import emit_event

log = logging.getLogger("hone.node")

TRACKING = "batch.kubernetes.io/job-tracking"
INDEX = "batch.kubernetes.io/job-completion-index"


def _parse_time(stamp: str) -> float:
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _controller_of(obj: dict[str, Any]) -> str | None:
    for ref in obj["metadata"].get("ownerReferences") or []:
        if ref.get("controller"):
            return ref.get("uid")
    return None


def _terminal(pod: dict[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def is_ready(pod: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def _owner_ref(owner: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["metadata"]["name"],
            "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}


async def resync_on_changes(server: Any, kinds: tuple[tuple[str, str, str], ...],
                            sync: Callable[[], Any]) -> None:
    """Await ``sync()`` after each burst of changes to ``kinds`` (events that arrive meanwhile make one call),
    until cancelled: for parts of the node that rebuild from the whole store (Service proxies, NetworkPolicy
    rules) rather than reconcile object by object."""
    queue: asyncio.Queue = asyncio.Queue()
    for kind in kinds:
        server.watchers[kind].add(queue)
    try:
        while True:
            await queue.get()
            while not queue.empty():
                queue.get_nowait()
            await sync()
    finally:
        for kind in kinds:
            server.watchers[kind].discard(queue)


class Controller:
    """Watches ``gvrs``; ``keys(gvr, obj)`` maps an event to the keys to reconcile."""

    watches: tuple[tuple[str, str, str], ...] = ()
    #: The kind of owner whose key an event on a dependent (the second watch) queues.
    owner_kind = ""

    def __init__(self, server: Any):
        self.server = server
        self.queue: asyncio.Queue = asyncio.Queue()
        self._queued: set[Any] = set()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        for gvr in self.watches:
            events: asyncio.Queue = asyncio.Queue()
            self.server.watchers[gvr].add(events)
            self._tasks.append(loop.create_task(self._pump(gvr, events)))
            for obj in list(self.server.store[gvr].values()):
                for key in self.keys(gvr, obj):
                    self.enqueue(key)
        self._tasks.append(loop.create_task(self._work()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _pump(self, gvr: tuple[str, str, str], events: asyncio.Queue) -> None:
        try:
            while True:
                _, item = await events.get()
                for key in self.keys(gvr, item["object"]):
                    self.enqueue(key)
        finally:
            self.server.watchers[gvr].discard(events)

    def enqueue(self, key: Any) -> None:
        if key not in self._queued:
            self._queued.add(key)
            self.queue.put_nowait(key)

    def enqueue_after(self, key: Any, seconds: float) -> None:
        asyncio.get_running_loop().call_later(max(0.0, seconds), self.enqueue, key)

    async def _work(self) -> None:
        while True:
            key = await self.queue.get()
            self._queued.discard(key)
            try:
                self.reconcile(key)
            except ApiError as exc:
                log.info("%s %s: %s; retrying", type(self).__name__, key, exc.message)
                self.enqueue_after(key, 1.0)
            except Exception:  # noqa: BLE001 - a controller bug must not stop the controller
                log.exception("%s %s", type(self).__name__, key)
                self.enqueue_after(key, 5.0)

    def keys(self, gvr: tuple[str, str, str], obj: dict[str, Any]) -> list[Any]:
        """The object's own key for the first watch, its controlling owner's for the others."""
        if gvr == self.watches[0]:
            return [(obj["metadata"]["namespace"], obj["metadata"]["name"])]
        return self.owner_keys(obj, self.owner_kind)

    def reconcile(self, key: Any) -> None:
        raise NotImplementedError

    # ---- helpers -------------------------------------------------------------

    def owned_pods(self, owner: dict[str, Any]) -> list[dict[str, Any]]:
        ns, uid = owner["metadata"]["namespace"], owner["metadata"]["uid"]
        return [p for (pns, _), p in self.server.store[PODS].items() if pns == ns and _controller_of(p) == uid]

    def owner_keys(self, obj: dict[str, Any], kind: str) -> list[Any]:
        ns = obj["metadata"].get("namespace")
        return [(ns, ref["name"]) for ref in obj["metadata"].get("ownerReferences") or []
                if ref.get("kind") == kind and ref.get("controller")]

    def write_status(self, gvr: tuple[str, str, str], obj: dict[str, Any], status: dict[str, Any]) -> None:
        current = obj.get("status") or {}
        if all(current.get(k) == v for k, v in status.items()) and not set(current) - set(status):
            return
        meta = obj["metadata"]
        self.server.write(self.server.kinds[gvr], meta["namespace"], meta["name"], "status",
                          {"status": status}, MERGE)

    def create_pod(self, owner: dict[str, Any], template: dict[str, Any], name: str,
                   extra_labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None,
                   spec_changes: Callable[[dict[str, Any]], None] | None = None,
                   finalizers: list[str] | None = None) -> dict[str, Any] | None:
        meta = template.get("metadata") or {}
        spec = copy.deepcopy(template["spec"])
        if spec_changes:
            spec_changes(spec)
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": name, "namespace": owner["metadata"]["namespace"],
            "labels": {**(meta.get("labels") or {}), **(extra_labels or {})},
            "annotations": {**(meta.get("annotations") or {}), **(annotations or {})},
            "ownerReferences": [_owner_ref(owner)], **({"finalizers": finalizers} if finalizers else {})},
            "spec": spec}
        try:
            made = self.server.create(self.server.kinds[PODS], owner["metadata"]["namespace"], pod)
        except ApiError as exc:
            emit_event(self.server, owner, "FailedCreate", f"Error creating: {exc.message}", self.component, True)
            return None
        emit_event(self.server, owner, "SuccessfulCreate", f"Created pod: {name}", self.component)
        return made

    def delete_pod(self, pod: dict[str, Any]) -> None:
        if pod["metadata"].get("deletionTimestamp"):
            return
        try:
            self.server.delete(self.server.kinds[PODS], pod["metadata"]["namespace"], pod["metadata"]["name"], None)
        except ApiError:
            pass

    component = "controller-manager"


# --------------------------------------------------------------------------
# Job
# --------------------------------------------------------------------------

class JobController(Controller):
    watches = (JOBS, PODS)
    component = "job-controller"

    def __init__(self, server: Any, backoff_seconds: float = 10.0):
        super().__init__(server)
        self.backoff_seconds = backoff_seconds
        #: (namespace, job) -> when the last counted failure happened, for the replacement back-off.
        self._last_failure: dict[tuple[str, str], float] = {}

    def keys(self, gvr: tuple[str, str, str], obj: dict[str, Any]) -> list[Any]:
        if gvr == JOBS:
            return [(obj["metadata"]["namespace"], obj["metadata"]["name"])]
        keys = self.owner_keys(obj, "Job")
        owner = self.server.store[JOBS].get(keys[0]) if keys else None
        if owner is None or owner["metadata"]["uid"] != _controller_of(obj):
            if TRACKING in (obj["metadata"].get("finalizers") or []):
                self._release(obj)  # its Job is gone (another of the same name may exist)
            return []
        return keys

    def _release(self, pod: dict[str, Any]) -> None:
        current = self.server.store[PODS].get((pod["metadata"]["namespace"], pod["metadata"]["name"]))
        if current is None or TRACKING not in (current["metadata"].get("finalizers") or []):
            return
        finalizers = [f for f in current["metadata"]["finalizers"] if f != TRACKING]
        self.server.write(self.server.kinds[PODS], current["metadata"]["namespace"], current["metadata"]["name"],
                          None, {"metadata": {"finalizers": finalizers or None,
                                              "resourceVersion": current["metadata"]["resourceVersion"]}}, MERGE)

    def reconcile(self, key: tuple[str, str]) -> None:
        ns, name = key
        job = self.server.store[JOBS].get(key)
        if job is None:
            self._last_failure.pop(key, None)
            return
        spec, status = job["spec"], copy.deepcopy(job.get("status") or {})
        pods = self.owned_pods(job)
        conditions = status.setdefault("conditions", [])
        finished = next((c["type"] for c in conditions if c["type"] in ("Complete", "Failed")
                         and c["status"] == "True"), None)
        indexed = spec.get("completionMode") == "Indexed"
        completions = spec.get("completions")

        # Count every finished pod once, then let it go (the tracking finalizer).
        succeeded_indexes = set(_parse_indexes(status.get("completedIndexes", "")))
        fail_job: str | None = None
        for pod in sorted(pods, key=lambda p: p["metadata"]["creationTimestamp"]):
            if not _terminal(pod) or TRACKING not in (pod["metadata"].get("finalizers") or []):
                continue
            if pod["status"]["phase"] == "Succeeded":
                status["succeeded"] = status.get("succeeded", 0) + 1
                if indexed:
                    succeeded_indexes.add(int(pod["metadata"]["annotations"][INDEX]))
            else:
                action, message = self._failure_action(spec, pod)
                if action == "FailJob" and fail_job is None:
                    fail_job = message
                if action != "Ignore":
                    status["failed"] = status.get("failed", 0) + 1
                    self._last_failure[key] = asyncio.get_running_loop().time()
            self._release(pod)
        if indexed:
            status["completedIndexes"] = _format_indexes(succeeded_indexes)

        live = [p for p in pods if not _terminal(p) and not p["metadata"].get("deletionTimestamp")]
        terminating = [p for p in pods if not _terminal(p) and p["metadata"].get("deletionTimestamp")]
        if finished is None:
            failure = None
            if fail_job is not None:
                failure = ("PodFailurePolicy", fail_job)
            elif status.get("failed", 0) > spec.get("backoffLimit", 6):
                failure = ("BackoffLimitExceeded", "Job has reached the specified backoff limit")
            elif spec.get("activeDeadlineSeconds") and status.get("startTime") and not spec.get("suspend"):
                left = _parse_time(status["startTime"]) + spec["activeDeadlineSeconds"] - _now()
                if left <= 0:
                    failure = ("DeadlineExceeded", "Job was active longer than specified deadline")
                else:
                    self.enqueue_after(key, left + 0.05)
            done = (len(succeeded_indexes) >= (completions or 1)) if indexed else (
                status.get("succeeded", 0) >= (completions or 1) if completions is not None
                else status.get("succeeded", 0) > 0 and not live)
            if failure is not None:
                for pod in live:
                    self.delete_pod(pod)
                for kind in ("FailureTarget", "Failed"):
                    conditions.append({"type": kind, "status": "True", "reason": failure[0], "message": failure[1],
                                       "lastProbeTime": now(), "lastTransitionTime": now()})
                status["completionTime"] = None
                emit_event(self.server, job, failure[0], failure[1], self.component, True)
                finished = "Failed"
            elif done:
                for kind in ("SuccessCriteriaMet", "Complete"):
                    conditions.append({"type": kind, "status": "True", "reason": "CompletionsReached",
                                       "message": "Reached expected number of succeeded pods",
                                       "lastProbeTime": now(), "lastTransitionTime": now()})
                status["completionTime"] = now()
                emit_event(self.server, job, "Completed", "Job completed", self.component)
                finished = "Complete"
            elif spec.get("suspend"):
                for pod in live:
                    self.delete_pod(pod)
                live = []
                if not any(c["type"] == "Suspended" and c["status"] == "True" for c in conditions):
                    conditions[:] = [c for c in conditions if c["type"] != "Suspended"]
                    conditions.append({"type": "Suspended", "status": "True", "reason": "JobSuspended",
                                       "message": "Job suspended", "lastProbeTime": now(),
                                       "lastTransitionTime": now()})
                    emit_event(self.server, job, "Suspended", "Job suspended", self.component)
                status.pop("startTime", None)
            else:
                if any(c["type"] == "Suspended" and c["status"] == "True" for c in conditions):
                    conditions[:] = [c for c in conditions if c["type"] != "Suspended"]
                    conditions.append({"type": "Suspended", "status": "False", "reason": "JobResumed",
                                       "message": "Job resumed", "lastProbeTime": now(),
                                       "lastTransitionTime": now()})
                    emit_event(self.server, job, "Resumed", "Job resumed", self.component)
                if not status.get("startTime"):
                    status["startTime"] = now()
                    if spec.get("activeDeadlineSeconds"):
                        self.enqueue_after(key, spec["activeDeadlineSeconds"] + 0.05)
                live += self._create_pods(job, key, live, terminating, succeeded_indexes, status)
        else:
            for pod in live:
                self.delete_pod(pod)
        if status.get("completionTime") is None:
            status.pop("completionTime", None)
        status["active"] = len([p for p in live if not _terminal(p)])
        status["ready"] = len([p for p in live if is_ready(p)])
        status["terminating"] = len(terminating)
        status.setdefault("succeeded", 0)
        status.setdefault("failed", 0)
        if not conditions:
            status.pop("conditions")
        self.write_status(JOBS, job, status)

    def _create_pods(self, job: dict[str, Any], key: tuple[str, str], live: list[dict[str, Any]],
                     terminating: list[dict[str, Any]], succeeded_indexes: set[int],
                     status: dict[str, Any]) -> list[dict[str, Any]]:
        spec = job["spec"]
        # The back-off after a counted failure: 10 s, 20 s, 40 s ... (6 min at most).
        failed = status.get("failed", 0)
        if failed and key in self._last_failure:
            wait = min(360.0, self.backoff_seconds * 2 ** (failed - 1))
            left = self._last_failure[key] + wait - asyncio.get_running_loop().time()
            if left > 0:
                self.enqueue_after(key, left + 0.01)
                return []
        replace_when_failed = bool(spec.get("podFailurePolicy")) or spec.get("podReplacementPolicy") == "Failed"
        busy = live + (terminating if replace_when_failed else [])
        name = job["metadata"]["name"]
        made = []
        if spec.get("completionMode") == "Indexed":
            taken = {int(p["metadata"]["annotations"][INDEX]) for p in busy}
            for index in range(spec.get("completions") or 1):
                if index in succeeded_indexes or index in taken or len(busy) + len(made) >= spec.get("parallelism", 1):
                    continue
                pod = self._make(job, f"{name}-{index}-{secrets.token_hex(3)[:5]}", index)
                if pod:
                    made.append(pod)
            return made
        completions = spec.get("completions")
        want = spec.get("parallelism", 1)
        if completions is not None:
            want = min(want, completions - status.get("succeeded", 0))
        for _ in range(max(0, want - len(busy))):
            pod = self._make(job, f"{name}-{secrets.token_hex(3)[:5]}", None)
            if pod:
                made.append(pod)
        return made

    def _make(self, job: dict[str, Any], pod_name: str, index: int | None) -> dict[str, Any] | None:
        name = job["metadata"]["name"]
        labels = {"batch.kubernetes.io/controller-uid": job["metadata"]["uid"], "batch.kubernetes.io/job-name": name,
                  "controller-uid": job["metadata"]["uid"], "job-name": name}
        annotations = {}
        if index is not None:
            labels[INDEX] = annotations[INDEX] = str(index)

        def indexed(spec: dict[str, Any]) -> None:
            spec["hostname"] = f"{name}-{index}"
            for container in spec.get("initContainers", []) + spec["containers"]:
                container.setdefault("env", []).append({"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef": {
                    "fieldPath": f"metadata.annotations['{INDEX}']"}}})
        return self.create_pod(job, job["spec"]["template"], pod_name, labels, annotations,
                               indexed if index is not None else None, [TRACKING])

    @staticmethod
    def _failure_action(spec: dict[str, Any], pod: dict[str, Any]) -> tuple[str, str]:
        """The podFailurePolicy rule a failed pod matches: (action, message)."""
        statuses = pod["status"].get("containerStatuses") or []
        conditions = pod["status"].get("conditions") or []
        for i, rule in enumerate((spec.get("podFailurePolicy") or {}).get("rules") or []):
            codes = rule.get("onExitCodes")
            if codes:
                for cs in statuses:
                    if codes.get("containerName") and cs["name"] != codes["containerName"]:
                        continue
                    code = (cs.get("state") or {}).get("terminated", {}).get("exitCode")
                    if code is None or code == 0:
                        continue
                    inside = code in codes["values"]
                    if inside == (codes["operator"] == "In"):
                        return rule["action"], (f"Container {cs['name']} for pod {pod['metadata']['namespace']}/"
                                                f"{pod['metadata']['name']} failed with exit code {code} matching "
                                                f"{rule['action']} rule at index {i}")
            for want in rule.get("onPodConditions") or []:
                if any(c.get("type") == want["type"] and c.get("status") == want.get("status", "True")
                       for c in conditions):
                    return rule["action"], (f"Pod {pod['metadata']['namespace']}/{pod['metadata']['name']} has "
                                            f"condition {want['type']} matching {rule['action']} rule at index {i}")
        return "Count", ""


def _now() -> float:
    return datetime.datetime.now(datetime.timezone.utc).timestamp()


def _parse_indexes(text: str) -> list[int]:
    out: list[int] = []
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def _format_indexes(indexes: set[int]) -> str:
    parts, run = [], []
    for i in sorted(indexes):
        if run and i != run[-1] + 1:
            parts.append(run)
            run = []
        run.append(i)
    if run:
        parts.append(run)
    return ",".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in parts)


# --------------------------------------------------------------------------
# ReplicaSet and Deployment
# --------------------------------------------------------------------------

class ReplicaSetController(Controller):
    watches = (REPLICASETS, PODS)
    owner_kind = "ReplicaSet"
    component = "replicaset-controller"

    def reconcile(self, key: tuple[str, str]) -> None:
        rs = self.server.store[REPLICASETS].get(key)
        if rs is None:
            return
        pods = self.owned_pods(rs)
        for pod in pods:
            if _terminal(pod):  # a ReplicaSet's pods restart in place; a failed one (evicted) is replaced
                self.delete_pod(pod)
        live = [p for p in pods if not _terminal(p) and not p["metadata"].get("deletionTimestamp")]
        want = rs["spec"].get("replicas", 1)
        name = rs["metadata"]["name"]
        for _ in range(want - len(live)):
            pod = self.create_pod(rs, rs["spec"]["template"], f"{name}-{secrets.token_hex(3)[:5]}")
            if pod:
                live.append(pod)
        if len(live) > want:
            # Not ready first, then the newest.
            for pod in sorted(live, key=lambda p: (is_ready(p), p["metadata"]["creationTimestamp"]))[: len(live) - want]:
                self.delete_pod(pod)
                live.remove(pod)
        ready = [p for p in live if is_ready(p)]
        self.write_status(REPLICASETS, rs, {
            "replicas": len(live), "fullyLabeledReplicas": len(live), "readyReplicas": len(ready),
            "availableReplicas": len(ready), "observedGeneration": rs["metadata"].get("generation", 1)})


def template_hash(template: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    value = int(digest[:16], 16)
    return "".join(alphabet[(value >> (5 * i)) % len(alphabet)] for i in range(10))


class DeploymentController(Controller):
    watches = (DEPLOYMENTS, REPLICASETS)
    owner_kind = "Deployment"
    component = "deployment-controller"

    def reconcile(self, key: tuple[str, str]) -> None:
        deploy = self.server.store[DEPLOYMENTS].get(key)
        if deploy is None:
            return
        ns, name = key
        spec = deploy["spec"]
        want = spec.get("replicas", 1)
        template_key = template_hash(spec["template"])
        owned = [rs for (rns, _), rs in self.server.store[REPLICASETS].items()
                 if rns == ns and _controller_of(rs) == deploy["metadata"]["uid"]]
        current = next((rs for rs in owned if rs["metadata"]["labels"].get("pod-template-hash") == template_key), None)
        old = [rs for rs in owned if rs is not current]
        revisions = [int(rs["metadata"].get("annotations", {}).get("deployment.kubernetes.io/revision", "0"))
                     for rs in owned]
        kinds = self.server.kinds
        if current is None:
            revision = max(revisions, default=0) + 1
            template = copy.deepcopy(spec["template"])
            template.setdefault("metadata", {}).setdefault("labels", {})["pod-template-hash"] = template_key
            selector = copy.deepcopy(spec["selector"])
            selector.setdefault("matchLabels", {})["pod-template-hash"] = template_key
            recreate = (spec.get("strategy") or {}).get("type") == "Recreate"
            old_pods = sum((rs.get("status") or {}).get("replicas", 0) for rs in old)
            current = self.server.create(kinds[REPLICASETS], ns, {
                "apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {"name": f"{name}-{template_key}", "namespace": ns,
                             "labels": {**(spec["template"].get("metadata", {}).get("labels") or {}),
                                        "pod-template-hash": template_key},
                             "annotations": {"deployment.kubernetes.io/revision": str(revision),
                                             "deployment.kubernetes.io/desired-replicas": str(want)},
                             "ownerReferences": [_owner_ref(deploy)]},
                "spec": {"replicas": 0 if recreate and old_pods else want, "selector": selector,
                         "template": template, "minReadySeconds": spec.get("minReadySeconds", 0)}})
            emit_event(self.server, deploy, "ScalingReplicaSet",
                       f"Scaled up replica set {current['metadata']['name']} from 0 to {want}", self.component)
        recreate = (spec.get("strategy") or {}).get("type") == "Recreate"
        new_available = (current.get("status") or {}).get("availableReplicas", 0)
        old_left = 0
        for rs in old:
            target = 0 if recreate else max(0, min(rs["spec"].get("replicas", 0), want - new_available))
            if rs["spec"].get("replicas", 0) != target:
                self.server.write(kinds[REPLICASETS], ns, rs["metadata"]["name"], None, {"spec": {"replicas": target}},
                                  MERGE)
            old_left += max(target, (rs.get("status") or {}).get("replicas", 0))
        if current["spec"].get("replicas") != want and not (recreate and old_left):
            current = self.server.write(kinds[REPLICASETS], ns, current["metadata"]["name"], None,
                                        {"spec": {"replicas": want}}, MERGE)
        history = spec.get("revisionHistoryLimit", 10)
        idle = sorted((rs for rs in old if rs["spec"].get("replicas", 0) == 0 and not (rs.get("status") or {}).get(
            "replicas")), key=lambda rs: int(rs["metadata"].get("annotations", {}).get(
                "deployment.kubernetes.io/revision", "0")))
        for rs in idle[: max(0, len(idle) - history)]:
            self.server.delete(kinds[REPLICASETS], ns, rs["metadata"]["name"], None)
        cur = current.get("status") or {}
        total = cur.get("replicas", 0) + sum((rs.get("status") or {}).get("replicas", 0) for rs in old)
        ready = cur.get("readyReplicas", 0) + sum((rs.get("status") or {}).get("readyReplicas", 0) for rs in old)
        available = cur.get("availableReplicas", 0) + sum((rs.get("status") or {}).get("availableReplicas", 0)
                                                          for rs in old)
        complete = cur.get("availableReplicas", 0) >= want and not old_left
        prior = {c["type"]: c for c in (deploy.get("status") or {}).get("conditions") or []}

        def condition(kind: str, ok: bool, reason: str, message: str) -> dict[str, Any]:
            value = "True" if ok else "False"
            was = prior.get(kind)
            if was and was["status"] == value and was.get("reason") == reason:
                return was
            return {"type": kind, "status": value, "reason": reason, "message": message,
                    "lastUpdateTime": now(), "lastTransitionTime": now()}
        rs_name = current["metadata"]["name"]
        counts = {"observedGeneration": deploy["metadata"].get("generation", 1),
                  "replicas": total, "updatedReplicas": cur.get("replicas", 0), "readyReplicas": ready,
                  "availableReplicas": available, "unavailableReplicas": max(0, want - available)}
        previous = deploy.get("status") or {}
        if complete:
            progressing = condition("Progressing", True, "NewReplicaSetAvailable",
                                    f'ReplicaSet "{rs_name}" has successfully progressed.')
        else:
            # As kube-controller-manager: progress is a new spec, more updated, ready or available
            # replicas, or fewer old ones. None for progressDeadlineSeconds fails the roll-out, and it
            # stays failed until there is progress again.
            was = prior.get("Progressing")

            def grew(key: str) -> bool:
                return int(counts[key]) > int(previous.get(key) or 0)
            moved = was is None or was.get("reason") == "NewReplicaSetAvailable" or any(map(grew, (
                "observedGeneration", "updatedReplicas", "readyReplicas", "availableReplicas"))) or \
                counts["replicas"] - counts["updatedReplicas"] < \
                int(previous.get("replicas") or 0) - int(previous.get("updatedReplicas") or 0)
            deadline = spec.get("progressDeadlineSeconds", 600)
            since = _parse_time(was["lastUpdateTime"]) if was and not moved else _now()
            if not moved and was.get("reason") == "ProgressDeadlineExceeded":
                progressing = was
            elif _now() - since >= deadline:
                progressing = condition("Progressing", False, "ProgressDeadlineExceeded",
                                        f'ReplicaSet "{rs_name}" has timed out progressing.')
            else:
                progressing = condition("Progressing", True, "ReplicaSetUpdated",
                                        f'ReplicaSet "{rs_name}" is progressing.')
                if moved:
                    progressing = {**progressing, "lastUpdateTime": now()}
                self.enqueue_after(key, since + deadline - _now() + 0.05)
        self.write_status(DEPLOYMENTS, deploy, {**counts, "conditions": [
            condition("Available", available >= want,
                      "MinimumReplicasAvailable" if available >= want else "MinimumReplicasUnavailable",
                      "Deployment has minimum availability." if available >= want
                      else "Deployment does not have minimum availability."),
            progressing]})


# --------------------------------------------------------------------------
# Per-namespace defaults
# --------------------------------------------------------------------------

class NamespaceDefaultsController(Controller):
    """The ``default`` ServiceAccount and the ``kube-root-ca.crt`` ConfigMap in every namespace."""
    watches = (NAMESPACES,)

    def __init__(self, server: Any, ca_pem: bytes):
        super().__init__(server)
        self.ca_pem = ca_pem

    def keys(self, gvr: tuple[str, str, str], obj: dict[str, Any]) -> list[Any]:
        return [] if obj["metadata"].get("deletionTimestamp") else [obj["metadata"]["name"]]

    def reconcile(self, ns: str) -> None:
        if (None, ns) not in self.server.store[NAMESPACES]:
            return
        if (ns, "default") not in self.server.store[SERVICE_ACCOUNTS]:
            self.server.create(self.server.kinds[SERVICE_ACCOUNTS], ns, {"metadata": {"name": "default"}})
        if (ns, "kube-root-ca.crt") not in self.server.store[CONFIGMAPS]:
            self.server.create(self.server.kinds[CONFIGMAPS], ns, {
                "metadata": {"name": "kube-root-ca.crt",
                             "annotations": {"kubernetes.io/description": "Contains a CA bundle that can be used to "
                                             "verify the kube-apiserver when using internal endpoints such as the "
                                             "internal service IP or kubernetes.default.svc."}},
                "data": {"ca.crt": self.ca_pem.decode()}})
