"""What a plan says besides objects: Kubernetes conditions, the status patch, Events, and child references."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from hone_operator.api.v1alpha1 import RECONCILE_REQUESTED_AT, StatusModel


@dataclass
class ObjectRef:
    """A child object a plan patches or deletes (in the parent's namespace)."""

    api_version: str
    kind: str
    name: str


@dataclass
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


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


class StatusBuilder:
    """Accumulates the desired operator-owned status keys, then diffs against the stored status.

    Every condition set carries the spec generation being acted on; a phase change posts an
    Event (reason: the phase).
    """

    def __init__(self, current: dict[str, Any], model: type[StatusModel], generation: int | None, timestamp: str,
                 reconcile_requested: str | None = None):
        self.current = current
        self.model = model
        self.desired = {k: current[k] for k in model.operator_keys() if k in current}
        self.generation = generation
        self.ts = timestamp
        self.desired["observedGeneration"] = generation
        if reconcile_requested is not None:  # the hone.dev/reconcile-requested-at annotation, answered
            self.desired["lastHandledReconcileAt"] = reconcile_requested
        self.events: list[Event] = []

    @property
    def phase(self) -> str | None:
        return self.desired.get("phase")

    def condition(self, type_: str, status: bool | str, reason: str, message: str = "") -> None:
        self.desired["conditions"] = set_condition(
            list(self.desired.get("conditions") or []), type_, status, reason, message, self.generation, self.ts
        )

    def set_phase(self, phase: enum.Enum, message: str, warning: bool = False, reason: str | None = None) -> None:
        """The phase; a change is an Event, whose reason is the phase's name unless ``reason`` names the cause."""
        if self.desired.get("phase") != phase.value:
            self.events.append(Event("Warning" if warning else "Normal", reason or phase.value, message))
        self.desired["phase"] = phase.value

    def patch(self) -> dict[str, Any] | None:
        """The changed keys; a key the status type (and so the CRD's schema) does not define, or one
        the operator does not own, is a bug."""
        changed = {k: v for k, v in self.desired.items() if self.current.get(k) != v}
        unknown = set(changed) - set(self.model.operator_keys())
        if unknown:
            raise ValueError(f"{self.model.__name__} has no field(s) {sorted(unknown)}")
        return changed or None


def reconcile_requested(body: dict[str, Any]) -> str | None:
    """The object's hone.dev/reconcile-requested-at annotation, if set."""
    return ((body.get("metadata") or {}).get("annotations") or {}).get(RECONCILE_REQUESTED_AT)
