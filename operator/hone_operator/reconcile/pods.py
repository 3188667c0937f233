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
