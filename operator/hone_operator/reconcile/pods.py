"""Reading results back from a finished Job's pods: termination messages, rank 0 first."""

from __future__ import annotations

from typing import Any, Iterator

from pydantic import BaseModel

from hone_trainer import contract


def _terminated(pod: dict[str, Any], container: str) -> dict[str, Any] | None:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == container:
            return ((cs.get("state") or {}).get("terminated")) or None
    return None


#: The annotation an Indexed Job puts on each pod.
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"


def _is_rank0_pod(pod: dict[str, Any]) -> bool:
    """Pod of completion index 0 (where rank 0 runs); a single-node Job's pods have no index."""
    return ((pod.get("metadata") or {}).get("annotations") or {}).get(COMPLETION_INDEX, "0") == "0"


def _newest_first(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(pods, key=lambda p: str((p.get("metadata") or {}).get("creationTimestamp") or ""), reverse=True)


def _live(pods: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Pods newest first, without those being deleted or already finished."""
    for pod in _newest_first(pods):
        if not (pod.get("metadata") or {}).get("deletionTimestamp") and \
                (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
            yield pod


def _results(pods: list[dict[str, Any]], container: str) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """Terminated ``container`` states: rank 0's pods first, newest first within each group."""
    for pod in sorted(_newest_first(pods), key=lambda p: not _is_rank0_pod(p)):  # a stable sort keeps newest first
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


#: What a container's termination reason means, where its exit code alone does not say.
REASON_TEXT = {"OOMKilled": "OOMKilled: it used more memory than its limit",
               "StartError": "StartError: its command could not be started"}


def termination_text(term: dict[str, Any]) -> str:
    """``exit code N (reason): message tail``, the reason only where it says more than the code."""
    msg = (term.get("message") or "").strip()
    reason = REASON_TEXT.get(term.get("reason") or "")
    head = f"exit code {term.get('exitCode')}" + (f" ({reason})" if reason else "")
    tail = msg[-600:] if msg else ("" if reason else term.get("reason") or "")
    return f"{head}: {tail}" if tail else head


def last_failure(pods: list[dict[str, Any]], container: str) -> dict[str, Any] | None:
    """The terminated state of ``container``'s newest failed run (rank 0 first)."""
    return next((term for _, term in _results(pods, container) if term.get("exitCode", 0) != 0), None)


def last_failure_message(pods: list[dict[str, Any]], container: str) -> str | None:
    term = last_failure(pods, container)
    return termination_text(term) if term else None


#: Waiting reasons of a container that will not start by itself: the user has something to fix.
STUCK_REASONS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError",
                 "CreateContainerError", "CrashLoopBackOff", "RunContainerError")


def blocked_pod(pods: list[dict[str, Any]]) -> tuple[str, str] | None:
    """Why a Job's or Deployment's pods do not run, as (reason, message), when one says so.

    The scheduler's ``Unschedulable`` (no node has the GPUs, or matches the nodeSelector) and
    container waiting reasons such as ``ImagePullBackOff``: without these a job waits for pods
    that will never start, and its status says nothing.
    """
    for pod in _live(pods):
        meta, status = pod.get("metadata") or {}, pod.get("status") or {}
        name = meta.get("name", "?")
        for cond in status.get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and cond.get("reason"):
                return "Unschedulable", f"pod {name} cannot be scheduled: {cond.get('message') or cond['reason']}"
        for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in STUCK_REASONS:
                detail = waiting.get("message") or ""
                last = (cs.get("lastState") or {}).get("terminated")
                if last and waiting["reason"] == "CrashLoopBackOff":  # why it keeps exiting
                    detail += f"; last run: {termination_text(last)}"
                return waiting["reason"], (f"pod {name} container {cs.get('name')}: {waiting['reason']}"
                                           + (f": {detail}" if detail else ""))
    return None


def _probe_text(probe: dict[str, Any]) -> str:
    if "httpGet" in probe:
        get = probe["httpGet"]
        return f"GET {get.get('path', '/')} on port {get.get('port')}"
    if "tcpSocket" in probe:
        return f"a TCP connection to port {probe['tcpSocket'].get('port')}"
    return "its probe"


def unready_pod(pods: list[dict[str, Any]]) -> tuple[str, str] | None:
    """A pod that runs but whose container has not passed its readiness probe, as (reason, message).

    A server that hangs while loading, or answers its readiness probe with an error, stays Running
    and unready: without this its ModelServing only says "0/1 replicas ready". The message names
    the pod, the probe and since when it has run, and how often the container restarted (a liveness
    probe that fails restarts it: kubelet's events say so, ``kubectl describe pod``).
    """
    for pod in _live(pods):
        meta, status = pod.get("metadata") or {}, pod.get("status") or {}
        if status.get("phase") != "Running":
            continue
        specs = {c.get("name"): c for c in (pod.get("spec") or {}).get("containers") or []}
        for cs in status.get("containerStatuses") or []:
            running = (cs.get("state") or {}).get("running")
            if cs.get("ready") or running is None:
                continue
            probe = (specs.get(cs.get("name")) or {}).get("readinessProbe")
            what = f"its readiness probe ({_probe_text(probe)})" if probe else "readiness"
            message = (f"pod {meta.get('name', '?')} container {cs.get('name')} has run since "
                       f"{running.get('startedAt', '?')} without passing {what}")
            restarts = int(cs.get("restartCount") or 0)
            last = (cs.get("lastState") or {}).get("terminated") or {}
            if restarts:
                message += (f"; restarted {restarts} time{'s' if restarts > 1 else ''}"
                            + (f", last exit code {last['exitCode']}" if "exitCode" in last else ""))
            return "NotReady", message + f"; kubectl describe pod {meta.get('name', '?')} shows the probe's events"
    return None
