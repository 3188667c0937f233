"""Kubernetes conditions (metav1.Condition) as plain dicts."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any


def now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def set_condition(
    conditions: list[dict[str, Any]],
    type_: str,
    status: bool | str,
    reason: str,
    message: str,
    generation: int | None,
    timestamp: str,
) -> list[dict[str, Any]]:
    """Return a new list with the condition set; lastTransitionTime moves only when status does."""
    value = status if isinstance(status, str) else ("True" if status else "False")
    out = []
    found = False
    for c in conditions:
        if c.get("type") != type_:
            out.append(c)
            continue
        found = True
        ltt = c.get("lastTransitionTime") if c.get("status") == value else timestamp
        out.append(
            {
                "type": type_,
                "status": value,
                "reason": reason,
                "message": message,
                "lastTransitionTime": ltt or timestamp,
                "observedGeneration": generation,
            }
        )
    if not found:
        out.append(
            {
                "type": type_,
                "status": value,
                "reason": reason,
                "message": message,
                "lastTransitionTime": timestamp,
                "observedGeneration": generation,
            }
        )
    return out


def get_condition(conditions: list[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    for c in conditions or []:
        if c.get("type") == type_:
            return c
    return None


def job_condition(job: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    """A batch/v1 Job condition of this type whose status is True."""
    if not job:
        return None
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_ and c.get("status") == "True":
            return c
    return None
