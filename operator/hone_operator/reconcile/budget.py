"""A namespace's TokenBudget as pure functions: windows, admission, settlement, conditions.

The budget's status is the durable record of the namespace's training usage. Every change to it is one
write with the ``resourceVersion`` it was computed from (the API server refuses a stale one with 409 and the
reconcile runs again on the fresh object), so two jobs can never both be admitted on the same remainder and
no update is lost between operator replicas or restarts.

* **Admission** (a validated job, before its training Job exists) reserves the job's billable estimate:
  its free part under the day's allowance (what is left after earlier reservations) and the cost of the
  rest. A job that does not fit waits ``Queued``; one bigger than a whole limit fails at once.
* **Settlement** (the job ended: Succeeded, Failed or Cancelled) removes the reservation and charges what
  the job trained, to the windows current at that moment. The free tokens charged are the reservation's
  free tokens, at most what it trained; the cost is the rest at the reserved price, so a job that runs to
  the end costs exactly its estimate. The charge is keyed by the reservation: it is written once, in the
  same write that removes the reservation, and the job's own status records the numbers (computed from
  its reservation and its trained tokens alone, so a settlement interrupted between the two writes is
  finished with the same numbers).
* **Windows** roll at midnight (days) and on the 1st (months) in ``spec.timeZone``: the settled counters of
  a past window start again at 0. Reservations carry over: a running job holds its estimate until it ends.
* **Inference** (:func:`inference_report`): each serving pod reports the tokens it served today (a count it
  keeps across restarts of its container) and asks for tokens to hold; the budget records both per pod in one
  write before the pod may serve them. A pod admits a request only when its grant covers the request's
  largest possible usage (prompt plus ``max_tokens`` for every sequence), so the namespace's tokens served in
  a day never exceed ``tokensPerDay``. A pod's record is retired when it is gone (its last report's tokens
  stay in the day's usage, and its unused grant comes back); a report from a retired pod is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

from hone_operator.api.v1alpha1 import Condition
from hone_operator.reconcile.status import set_condition
from hone_operator.api.v1alpha1.tokenbudget import (
    InferenceUsage,
    Reservation,
    ServerGrant,
    TokenBudget,
    TokenBudgetSpec,
    TokenBudgetStatus,
    TrainingUsage,
)
from hone_trainer.contract import QuotaAnswer, QuotaReport, cost_usd

#: NearLimit from this share of a limit on.
NEAR = 0.8


@dataclass(frozen=True)
class Windows:
    day: str  # YYYY-MM-DD in the budget's time zone
    month: str  # YYYY-MM
    resets_at: datetime  # the next day window's start, in UTC


def windows(now: datetime, zone: str) -> Windows:
    local = now.astimezone(ZoneInfo(zone))
    midnight = datetime(local.year, local.month, local.day, tzinfo=local.tzinfo)
    # Wall-clock arithmetic: the next local midnight, 23 or 25 hours later on DST days.
    tomorrow = midnight + timedelta(days=1)
    return Windows(local.strftime("%Y-%m-%d"), local.strftime("%Y-%m"), tomorrow.astimezone(timezone.utc))


def governing(budgets: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The TokenBudget that governs a namespace: the oldest (then by name); the others are inactive."""
    live = [b for b in budgets if not (b.get("metadata") or {}).get("deletionTimestamp")]
    return min(live, key=lambda b: (b["metadata"].get("creationTimestamp") or "", b["metadata"]["name"]),
               default=None)


def ledger(budget: dict[str, Any], now: datetime) -> tuple[TokenBudgetSpec, TokenBudgetStatus]:
    """The budget's spec and its status brought to ``now``: past windows rolled over, totals recomputed."""
    tb = TokenBudget.model_validate({**budget, "status": budget.get("status") or {}})
    spec, status = tb.spec, tb.status  # parsed afresh from ``budget``: changing it changes no caller's dict
    w = windows(now, spec.timeZone)
    usage = status.training or TrainingUsage()
    if usage.day != w.day:
        usage.day, usage.tokensToday, usage.freeTokensToday = w.day, 0, 0
    if usage.month != w.month:
        usage.month, usage.tokensThisMonth, usage.costThisMonthUsd = w.month, 0, 0.0
    status.training, status.resetsAt = usage, w.resets_at
    if status.inference is not None and status.inference.day != w.day:
        status.inference = InferenceUsage(day=w.day)  # a new day: every pod starts again from 0
    _totals(spec, status)
    return spec, status


def _totals(spec: TokenBudgetSpec, status: TokenBudgetStatus) -> None:
    """Recompute what ``status`` derives from its counters and reservations (reserved, remaining, free left)."""
    usage, limits = status.training, spec.training
    assert usage is not None
    reservations = status.reservations = status.reservations or []
    usage.reservedTokens = sum(r.tokens for r in reservations)
    usage.remainingTodayTokens = None if limits.tokensPerDay is None else max(
        0, limits.tokensPerDay - usage.tokensToday - usage.reservedTokens)
    usage.remainingThisMonthTokens = None if limits.tokensPerMonth is None else max(
        0, limits.tokensPerMonth - usage.tokensThisMonth - usage.reservedTokens)
    usage.freeTokensRemainingToday = max(
        0, limits.freeTokensPerDay - usage.freeTokensToday - sum(r.freeTokens for r in reservations))
    inference = status.inference
    if inference is not None:
        servers = inference.servers or []
        inference.tokensToday = inference.retiredTokensToday + sum(g.servedTokens for g in servers)
        inference.grantedTokens = sum(max(0, g.grantedTokens - g.servedTokens) for g in servers)
        limit = spec.inference.tokensPerDay
        inference.remainingTodayTokens = None if limit is None else max(
            0, limit - inference.tokensToday - inference.grantedTokens)
        inference.servers = servers or None


@dataclass
class Admission:
    admitted: bool
    #: The job is bigger than a whole limit: it can never fit.
    never: bool
    message: str
    reservation: Reservation | None = None
    #: The budget's new status (with the reservation), to write; None: nothing to write.
    status: TokenBudgetStatus | None = None
    #: When waiting: when the day window resets (the latest it can fit, if the month allows).
    retry_at: datetime | None = None


def admit(budget: dict[str, Any], uid: str, job: str, tokens: int, price: float, now: datetime) -> Admission:
    """Reserve ``tokens`` (a job's billable estimate) for job ``uid`` in ``budget``, if they fit."""
    name = budget["metadata"]["name"]
    spec, status = ledger(budget, now)
    held = next((r for r in status.reservations or [] if r.uid == uid), None)
    if held is not None:  # reserved by an earlier reconcile whose status write did not land
        return Admission(True, False, _reserved_message(name, held), held)
    limits, usage = spec.training, status.training
    assert usage is not None
    free = min(tokens, usage.freeTokensRemainingToday)
    cost = cost_usd(tokens - free, price)
    never = _never(name, limits, tokens, price)
    if never and spec.enforce:
        return Admission(False, True, never)
    reserved_cost = sum(r.costUsd for r in status.reservations or [])
    short = []
    if limits.tokensPerDay is not None and usage.tokensToday + usage.reservedTokens + tokens > limits.tokensPerDay:
        short.append(f"{usage.remainingTodayTokens:,} of its {limits.tokensPerDay:,} tokens a day remain")
    if limits.tokensPerMonth is not None and \
            usage.tokensThisMonth + usage.reservedTokens + tokens > limits.tokensPerMonth:
        short.append(f"{usage.remainingThisMonthTokens:,} of its {limits.tokensPerMonth:,} tokens this month remain")
    if limits.costPerMonthUsd is not None and \
            usage.costThisMonthUsd + reserved_cost + cost > limits.costPerMonthUsd + 1e-9:
        left = max(0.0, limits.costPerMonthUsd - usage.costThisMonthUsd - reserved_cost)
        short.append(f"${left:,.2f} of its ${limits.costPerMonthUsd:,.2f} a month remain")
    if short and spec.enforce:
        running = len(status.reservations or [])
        when = (f"when the {running} running job(s) holding {usage.reservedTokens:,} tokens end, or "
                if running else "")
        month_bound = any("month" in s for s in short)
        reset = "next month" if month_bound else f"at {status.resetsAt:%Y-%m-%dT%H:%M:%SZ} when the day resets"
        return Admission(False, False,
                         f"needs {tokens:,} training tokens (${cost:,.2f} after {free:,} free) and TokenBudget "
                         f"{name!r} has not enough: {'; '.join(short)}. It starts by itself {when}{reset}",
                         retry_at=None if month_bound and not running else status.resetsAt)
    reservation = Reservation(uid=uid, job=job, tokens=tokens, freeTokens=free, costUsd=cost,
                              usdPerMillionTokens=price, admittedAt=now)
    status.reservations = [*(status.reservations or []), reservation]
    _totals(spec, status)
    message = _reserved_message(name, reservation)
    if short or never:
        message += f"; over the budget ({never or '; '.join(short)}), admitted because spec.enforce is false"
    return Admission(True, False, message, reservation, status)


def _never(name: str, limits: Any, tokens: int, price: float) -> str:
    """Why ``tokens`` can never fit in a budget with ``limits`` (an empty string when they can)."""
    if limits.tokensPerDay is not None and tokens > limits.tokensPerDay:
        return (f"needs {tokens:,} training tokens and TokenBudget {name!r} allows {limits.tokensPerDay:,} a day "
                "(spec.training.tokensPerDay)")
    if limits.tokensPerMonth is not None and tokens > limits.tokensPerMonth:
        return (f"needs {tokens:,} training tokens and TokenBudget {name!r} allows {limits.tokensPerMonth:,} a "
                "month (spec.training.tokensPerMonth)")
    cheapest = cost_usd(max(0, tokens - limits.freeTokensPerDay), price)
    if limits.costPerMonthUsd is not None and cheapest > limits.costPerMonthUsd + 1e-9:
        return (f"costs at least ${cheapest:,.2f} after a whole day's free tokens and TokenBudget {name!r} allows "
                f"${limits.costPerMonthUsd:,.2f} a month (spec.training.costPerMonthUsd)")
    return ""


def _reserved_message(name: str, r: Reservation) -> str:
    return f"reserved {r.tokens:,} training tokens ({r.freeTokens:,} free, ${r.costUsd:,.2f}) in TokenBudget {name!r}"


@dataclass(frozen=True)
class Charge:
    tokens: int
    free_tokens: int
    cost_usd: float


def charge(reserved_free: int, price: float, trained: int) -> Charge:
    """What a job that trained ``trained`` tokens is charged: free up to its reservation's free tokens, the
    rest at the reserved price. Depends on the job's own record only, so it is the same however often it
    is computed."""
    free = min(trained, reserved_free)
    return Charge(trained, free, cost_usd(trained - free, price))


def charge_for(reserved: dict[str, Any], trained: int) -> Charge:
    """:func:`charge` for a reservation as written, the budget's (``status.reservations[]``) or the job's
    (``status.budget``): both carry ``freeTokens`` and ``usdPerMillionTokens``."""
    return charge(int(reserved.get("freeTokens") or 0), float(reserved.get("usdPerMillionTokens") or 0.0), trained)


def settle(budget: dict[str, Any], uid: str, c: Charge, now: datetime) -> TokenBudgetStatus | None:
    """The budget's status with job ``uid``'s reservation replaced by its charge ``c``; None when it holds no
    reservation for it (settled already, or the budget was recreated since): nothing to write."""
    spec, status = ledger(budget, now)
    if not any(r.uid == uid for r in status.reservations or []):
        return None
    status.reservations = [r for r in status.reservations or [] if r.uid != uid]
    usage = status.training
    assert usage is not None
    usage.tokensToday += c.tokens
    usage.freeTokensToday += c.free_tokens
    usage.tokensThisMonth += c.tokens
    usage.costThisMonthUsd = round(usage.costThisMonthUsd + c.cost_usd, 6)
    _totals(spec, status)
    return status


def usage_ratio(spec: TokenBudgetSpec, status: TokenBudgetStatus) -> tuple[float, str]:
    """The largest share of a limit in use (settled and reserved), and which limit."""
    usage, limits = status.training or TrainingUsage(), spec.training
    reserved_cost = sum(r.costUsd for r in status.reservations or [])
    shares = [(0.0, "")]
    if limits.tokensPerDay:
        shares.append(((usage.tokensToday + usage.reservedTokens) / limits.tokensPerDay, "training tokens today"))
    if limits.tokensPerMonth:
        shares.append(((usage.tokensThisMonth + usage.reservedTokens) / limits.tokensPerMonth,
                       "training tokens this month"))
    if limits.costPerMonthUsd:
        shares.append(((usage.costThisMonthUsd + reserved_cost) / limits.costPerMonthUsd,
                       "training cost this month"))
    served = status.inference or InferenceUsage()
    if spec.inference.tokensPerDay:
        shares.append(((served.tokensToday + served.grantedTokens) / spec.inference.tokensPerDay,
                       "inference tokens today"))
    return max(shares)


def conditions(spec: TokenBudgetSpec, status: TokenBudgetStatus, active: str | None, name: str) -> list[Condition]:
    """Active (whether this budget governs its namespace; ``active`` names the one that does), NearLimit and
    Exhausted (the largest share of a limit in use at 80% and 100%)."""
    share, which = usage_ratio(spec, status)
    out = [Condition(type="Active", status="True", reason="Governs", message="the namespace's budget")
           if active == name else
           Condition(type="Active", status="False", reason="Duplicate",
                     message=f"TokenBudget {active!r} (the oldest) governs this namespace; delete one of them")]
    held = "served and granted" if which.startswith("inference") else "settled and reserved"
    pct = f"{share:.0%} of the {which} limit in use ({held})" if which else "no limit set"
    out.append(Condition(type="NearLimit", status="True" if share >= NEAR else "False",
                         reason="AboveEightyPercent" if share >= NEAR else "BelowEightyPercent", message=pct))
    out.append(Condition(type="Exhausted", status="True" if share >= 1.0 else "False",
                         reason="LimitReached" if share >= 1.0 else "WithinLimits", message=pct))
    return out


@dataclass
class BudgetWrite:
    """A TokenBudget status write, refused by the API server (409) if the budget changed since it was read."""

    name: str
    resource_version: str
    patch: dict[str, Any]  # the merge patch of ``status``

    def body(self) -> dict[str, Any]:
        return {"metadata": {"resourceVersion": self.resource_version}, "status": self.patch}


def status_write(budget: dict[str, Any], desired: TokenBudgetStatus) -> BudgetWrite | None:
    """The write that makes the budget's status ``desired`` (None when it already is)."""
    current = budget.get("status") or {}
    want = desired.to_status()
    patch = merge_patch({k: current.get(k) for k in TokenBudgetStatus.operator_keys() if k in current}, want)
    if not patch:
        return None
    return BudgetWrite(budget["metadata"]["name"], budget["metadata"].get("resourceVersion", ""), patch)


def merge_patch(current: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) from ``current`` to ``desired``: changed keys, null for removed ones."""
    out: dict[str, Any] = {k: None for k in current if k not in desired}
    for k, v in desired.items():
        old = current.get(k)
        if isinstance(v, dict) and isinstance(old, dict):
            sub = merge_patch(old, v)
            if sub:
                out[k] = sub
        elif old != v:
            out[k] = v
    return out


def desired_status(budget: dict[str, Any], budgets: list[dict[str, Any]], now: datetime,
                   timestamp: str) -> TokenBudgetStatus:
    """The budget's whole status at ``now``: windows rolled, totals, conditions (transition times kept)."""
    spec, status = ledger(budget, now)
    meta = budget["metadata"]
    active = governing(budgets)
    conds = list((budget.get("status") or {}).get("conditions") or [])
    for c in conditions(spec, status, active["metadata"]["name"] if active else None, meta["name"]):
        conds = set_condition(conds, c.type, c.status, c.reason, c.message, meta.get("generation"), timestamp)
    status.conditions = [Condition.model_validate(c) for c in conds]
    status.observedGeneration = meta.get("generation")
    return status


def parse_time(timestamp: str) -> datetime:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00"))


# --------------------------------------------------------------------------
# Inference: grants to serving pods
# --------------------------------------------------------------------------

#: A serving pod that has not reported for this long no longer counts in the per-minute share.
LIVE_SECONDS = 60.0
#: A report that changes nothing is still written when the pod's last recorded report is this old (it keeps
#: the pod counted as live for the per-minute share).
KEEPALIVE_SECONDS = 20.0


def grant_chunk(limit: int) -> int:
    """Tokens granted beyond what a pod asks for, so that it need not ask before every request: 1% of the
    daily limit."""
    return limit // 100


def inference_report(budget: dict[str, Any], report: QuotaReport,
                     now: datetime) -> tuple[TokenBudgetStatus | None, QuotaAnswer]:
    """A serving pod's report applied to ``budget``: the budget's new status (None: nothing to write) and
    the pod's answer. The served count only grows (a report repeated or delayed changes nothing); the grant
    is what the pod asked to hold, when the day's remainder has it."""
    name = budget["metadata"]["name"]
    spec, status = ledger(budget, now)
    assert status.training is not None
    day = status.training.day  # the windows ledger() rolled to
    inference = status.inference or InferenceUsage(day=day)
    status.inference = inference
    limits = spec.inference
    answer = QuotaAnswer(budget=name, enforce=spec.enforce, day=day, resets_at=status.resetsAt,
                         tokens_per_day=limits.tokensPerDay, tokens_per_minute=limits.tokensPerMinute)
    if report.uid in (inference.retiredPods or []):
        answer.retired = True
        return None, answer
    servers = inference.servers = list(inference.servers or [])
    record = next((g for g in servers if g.uid == report.uid), None)
    before = record.model_copy() if record is not None else None
    if record is None:
        record = ServerGrant(pod=report.pod, uid=report.uid)
        servers.append(record)
    # A count for a past day says nothing of today's: today the pod has served what its record says.
    if report.day == day:
        record.servedTokens = max(record.servedTokens, report.served)
    limit = limits.tokensPerDay
    if limit is None or not spec.enforce:
        record.grantedTokens = record.servedTokens  # nothing to hold: every request is admitted
    else:
        held = max(0, record.grantedTokens - record.servedTokens)
        base = min(report.in_flight, held)  # what requests running now were admitted against
        _totals(spec, status)  # the day's served and held tokens, this pod's hold included
        free = max(0, limit - inference.tokensToday - inference.grantedTokens + held - base)
        extra = 0
        if 0 < report.want <= free:
            extra = min(report.want + grant_chunk(limit), free)
        record.grantedTokens = record.servedTokens + base + extra
    stale = before is None or before.reportedAt is None or \
        (now - before.reportedAt).total_seconds() >= KEEPALIVE_SECONDS
    changed = before is None or (before.servedTokens, before.grantedTokens) != \
        (record.servedTokens, record.grantedTokens)
    if changed or stale:
        record.reportedAt = now
    _totals(spec, status)
    answer.served = record.servedTokens
    answer.granted = record.grantedTokens if limit is not None and spec.enforce else None
    answer.remaining_today = inference.remainingTodayTokens
    if limits.tokensPerMinute is not None and spec.enforce:
        live = [g for g in servers if g.reportedAt is not None and
                (now - g.reportedAt).total_seconds() < LIVE_SECONDS]
        answer.minute_share = limits.tokensPerMinute // max(1, len(live))
    return (status if changed or stale else None), answer


def retire_servers(budget: dict[str, Any], gone: set[str], now: datetime) -> TokenBudgetStatus | None:
    """The budget's status with the records of the serving pods ``gone`` (uids) retired: what they last
    reported stays in the day's usage, their unused grants come back. None: none of them has a record."""
    spec, status = ledger(budget, now)
    inference = status.inference
    if inference is None or not any(g.uid in gone for g in inference.servers or []):
        return None
    leaving = [g for g in inference.servers or [] if g.uid in gone]
    inference.retiredTokensToday += sum(g.servedTokens for g in leaving)
    inference.retiredPods = [*(inference.retiredPods or []), *(g.uid for g in leaving)]
    inference.servers = [g for g in inference.servers or [] if g.uid not in gone]
    _totals(spec, status)
    return status
