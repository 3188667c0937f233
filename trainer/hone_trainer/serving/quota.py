"""The namespace's inference budget, as one serving pod enforces it.

The pod serves only tokens its namespace's TokenBudget has granted it. The operator's quota endpoint holds
the budget (:mod:`hone_operator.quota`); this side keeps the pod's counts and asks:

* **Admission.** A request is admitted when the pod's grant covers its largest possible usage: its prompt
  tokens plus ``max_tokens`` for every sequence it decodes (what OpenAI counts against a rate limit). That
  much is reserved while it runs; when it ends, what ``usage`` says it used is added to the day's served
  tokens and the reservation is released. A request the grant cannot cover waits for one report (at most
  ``wait_seconds``) that asks for more; if the budget has no more, the answer is HTTP 429
  ``insufficient_quota``.
* **Per minute.** With ``tokensPerMinute``, the pod admits at most its share (the limit divided by the
  serving pods that reported in the last minute) in any 60 seconds, counting each request at its largest
  possible usage until it ends and at its usage afterwards; past it, HTTP 429 ``rate_limit_exceeded`` with
  ``Retry-After``.
* **Reports.** A busy pod reports at most every ``report_seconds``: the tokens it served today, what it
  keeps holding, and what more it wants. An idle pod keeps nothing (its unused grant goes back) and reports
  every 20 seconds to stay counted. While a report is in flight the pod admits no more than it held when it
  sent it, so a grant the operator lowers is never overrun. The report on shutdown flushes the last count.
* **Restarts.** The day's served count is written to ``journal`` (an emptyDir, which outlives the
  container) after every request, and read back at start: a container that crashes and restarts goes on
  from its count, so its pod's record neither loses nor repeats a token.
* **Headers.** Every /v1 response carries OpenAI's ``x-ratelimit-limit-tokens``,
  ``x-ratelimit-remaining-tokens`` and ``x-ratelimit-reset-tokens``: for the per-minute share when there
  is one, else for the day.

The operator unreachable: the pod serves within what it holds; with nothing to hold and a limit to keep,
requests get HTTP 503 ``quota_unavailable`` (``Retry-After``), never unmetered service.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hone_trainer.contract.server import QuotaAnswer, QuotaReport, QuotaSettings
from hone_trainer.serving.protocol import ApiError

log = logging.getLogger("hone.server.quota")
WINDOW_SECONDS = 60.0
#: An idle pod's report interval, which keeps it counted among the pods sharing the per-minute limit.
KEEPALIVE_SECONDS = 20.0
#: A pod that admitted a request this recently keeps its grant in its reports; after that it gives it back.
BUSY_SECONDS = 5.0


@dataclass
class Ticket:
    """One admitted request's reservation."""

    need: int
    entry: list[float]  # [admitted at (monotonic), tokens counted in the per-minute window]
    done: bool = False


@dataclass
class Quota:
    settings: QuotaSettings
    pod: str
    uid: str
    day: str | None = None
    served: int = 0
    reserved: int = 0
    answer: QuotaAnswer | None = None
    #: The most the pod may have served plus reserved now: the grant, or while a report is in flight the
    #: lower of the grant and what the pod said it keeps. None: no daily limit.
    cap: int | None = None
    last_admitted: float = float("-inf")
    window: collections.deque = field(default_factory=collections.deque)
    _waiting: int = 0  # the needs of requests waiting for a report's answer
    _reported: tuple[str | None, int] | None = None
    _wake: asyncio.Event | None = None
    _answered: asyncio.Future | None = None
    _task: asyncio.Task | None = None
    _failures: int = 0
    _error: str = ""

    @classmethod
    def from_env(cls, settings: QuotaSettings) -> "Quota":
        pod, uid = os.environ.get("HONE_POD_NAME", ""), os.environ.get("HONE_POD_UID", "")
        if not pod or not uid:
            raise ValueError("quota: HONE_POD_NAME and HONE_POD_UID must name the serving pod (the downward API)")
        quota = cls(settings, pod, uid)
        quota._read_journal()
        return quota

    # ---- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._answered = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop reporting, after one last report of what was served (its grant goes back)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.last_admitted = float("-inf")
        try:
            await asyncio.wait_for(self._report(), timeout=self.settings.wait_seconds)
        except Exception as exc:  # noqa: BLE001 - the journal keeps the count for whoever comes next
            log.warning("last usage report failed: %s", exc)

    # ---- admission ------------------------------------------------------------------

    async def admit(self, need: int) -> Ticket:
        """Reserve ``need`` tokens (a request's largest possible usage) or raise the 429/503 that says why."""
        if self.answer is None or self._day_over():
            # A new day needs a new grant where the budget limits inference; where it limits nothing (or
            # there is no budget), a pod that cannot reach the operator goes on metering and serving.
            if not await self._sync(need) and (self.answer is None or (self._day_over() and self._limited())):
                raise self._unreachable()
        answer = self.answer
        assert answer is not None
        if answer.retired:
            raise ApiError(503, "this serving pod's budget record was retired; it is being replaced",
                           type="server_error", code="quota_unavailable", headers={"Retry-After": "5"})
        self._minute_check(need)
        for _ in range(3):  # a few reports: others' grants may come back meanwhile
            if self._fits(need):
                break
            if not await self._sync(need):
                raise self._unreachable()
            if not self._fits(need) and (self.answer.remaining_today or 0) < need:
                raise self._exhausted(need)
        else:
            raise self._exhausted(need)
        self._minute_check(need)
        now = time.monotonic()
        self.reserved += need
        self.last_admitted = now
        entry = [now, float(need)]
        self.window.append(entry)
        return Ticket(need, entry)

    def release(self, ticket: Ticket, used: int) -> None:
        """The request ended having used ``used`` tokens (its ``usage``; 0 when nothing was billed)."""
        if ticket.done:
            return
        ticket.done = True
        self.reserved -= ticket.need
        ticket.entry[1] = float(used)
        if used:
            self.served += used
            self._write_journal()
            if self._wake is not None:
                self._wake.set()

    def _limited(self) -> bool:
        a = self.answer
        return a is not None and (a.granted is not None or a.minute_share is not None)

    def _fits(self, need: int) -> bool:
        return self.cap is None or self.served + self.reserved + need <= self.cap

    def _day_over(self) -> bool:
        a = self.answer
        return a is not None and a.resets_at is not None and datetime.now(timezone.utc) >= a.resets_at

    def _minute_used(self, now: float) -> float:
        while self.window and now - self.window[0][0] >= WINDOW_SECONDS:
            self.window.popleft()
        return sum(e[1] for e in self.window)

    def _minute_check(self, need: int) -> None:
        share = self.answer.minute_share if self.answer else None
        if share is None:
            return
        now = time.monotonic()
        used = self._minute_used(now)
        if used + need <= share:
            return
        budget, limit = self.answer.budget, self.answer.tokens_per_minute  # type: ignore[union-attr]
        if need > share:
            raise ApiError(429, f"Request too large: it may use {need:,} tokens (prompt plus max_tokens) and this "
                           f"server's share of TokenBudget {budget!r}'s {limit:,} tokens per minute is {share:,}. "
                           "Lower max_tokens or shorten the prompt.", type="tokens", code="rate_limit_exceeded",
                           headers=self.headers())
        wait = self._minute_reset(now, used + need - share)
        raise ApiError(429, f"Rate limit reached for TokenBudget {budget!r}: {limit:,} tokens per minute (this "
                       f"server's share {share:,}, used {int(used):,}, requested {need:,}). Please try again in "
                       f"{_duration(wait)}.", type="tokens", code="rate_limit_exceeded",
                       headers={**self.headers(), "Retry-After": str(max(1, int(wait + 0.999)))})

    def _minute_reset(self, now: float, excess: float) -> float:
        """Seconds until ``excess`` tokens have left the per-minute window."""
        freed = 0.0
        for at, tokens in self.window:
            freed += tokens
            if freed >= excess:
                return max(0.0, at + WINDOW_SECONDS - now)
        return WINDOW_SECONDS

    def _unreachable(self) -> ApiError:
        return ApiError(503, f"the namespace's token budget cannot be reached ({self._error or 'no answer'}); "
                        "retry shortly", type="server_error", code="quota_unavailable",
                        headers={**self.headers(), "Retry-After": "5"})

    def _exhausted(self, need: int) -> ApiError:
        a = self.answer
        assert a is not None
        resets = f"{a.resets_at:%Y-%m-%dT%H:%M:%SZ}" if a.resets_at else "the next day"
        return ApiError(429, f"You exceeded your current quota: TokenBudget {a.budget!r} allows {a.tokens_per_day:,} "
                        f"inference tokens a day and {a.remaining_today or 0:,} remain for this namespace; this "
                        f"request may use {need:,} (prompt plus max_tokens). It resets at {resets}.",
                        type="insufficient_quota", code="insufficient_quota", headers=self.headers())

    def headers(self) -> dict[str, str]:
        """OpenAI's x-ratelimit-*-tokens headers: for the per-minute share when there is one, else the day."""
        a = self.answer
        if a is None:
            return {}
        if a.minute_share is not None:
            now = time.monotonic()
            used = self._minute_used(now)
            reset = self._minute_reset(now, used) if used else 0.0
            return {"x-ratelimit-limit-tokens": str(a.minute_share),
                    "x-ratelimit-remaining-tokens": str(max(0, int(a.minute_share - used))),
                    "x-ratelimit-reset-tokens": _duration(reset)}
        if a.tokens_per_day is not None and a.granted is not None:
            held = max(0, (self.cap or 0) - self.served - self.reserved)
            left = (a.remaining_today or 0) + held
            reset = (a.resets_at - datetime.now(timezone.utc)).total_seconds() if a.resets_at else 0.0
            return {"x-ratelimit-limit-tokens": str(a.tokens_per_day), "x-ratelimit-remaining-tokens": str(left),
                    "x-ratelimit-reset-tokens": _duration(max(0.0, reset))}
        return {}

    # ---- reports --------------------------------------------------------------------

    async def _sync(self, want: int) -> bool:
        """Wait for the answer to a report that asks for room for ``want`` more tokens (with every other
        waiting request's): whether one came."""
        assert self._wake is not None and self._answered is not None
        self._waiting += want
        answered = self._answered
        self._wake.set()
        try:
            await asyncio.wait({answered}, timeout=self.settings.wait_seconds)
        finally:
            self._waiting -= want
        if not answered.done():
            self._error = f"no answer in {self.settings.wait_seconds:g} s"
            return False
        if answered.exception() is not None:  # unreachable or refused
            self._error = str(answered.exception()) or type(answered.exception()).__name__
            return False
        return True

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            idle = self._reported == (self.day, self.served) and not self._waiting
            timeout = KEEPALIVE_SECONDS if idle and self.answer is not None else self.settings.report_seconds
            if self._failures:
                timeout = min(KEEPALIVE_SECONDS, self.settings.report_seconds * 2 ** min(self._failures, 5))
            # Not asyncio.wait_for: on Python 3.11 it can swallow the cancellation stop() sends.
            timer = asyncio.get_running_loop().call_later(timeout, self._wake.set)
            try:
                await self._wake.wait()
            finally:
                timer.cancel()
            self._wake.clear()
            answered, self._answered = self._answered, asyncio.get_running_loop().create_future()
            try:
                await self._report()
                self._failures = 0
                if answered is not None and not answered.done():
                    answered.set_result(None)
            except Exception as exc:  # noqa: BLE001 - reported to waiters; the loop goes on
                self._failures += 1
                log.warning("usage report failed: %s", exc)
                if answered is not None and not answered.done():
                    answered.set_exception(exc)
                    answered.exception()  # retrieved: no "never retrieved" warning when nobody waits

    async def _report(self) -> None:
        busy = self.reserved > 0 or self._waiting > 0 or time.monotonic() - self.last_admitted < BUSY_SECONDS
        keep = self.reserved
        if busy and self.cap is not None:
            keep = max(self.reserved, self.cap - self.served)
        want = max(0, self.reserved + self._waiting - keep)  # what the requests waiting now need beyond it
        sent = (self.day, self.served)
        body = QuotaReport(pod=self.pod, uid=self.uid, day=self.day, served=self.served, in_flight=keep,
                           want=want).model_dump(mode="json", by_alias=True)
        if self.cap is not None:  # in flight: no more than what the pod said it keeps
            self.cap = min(self.cap, self.served + keep)
        # A failed report leaves the cap there: the operator may have applied it and lowered the grant.
        data = await asyncio.to_thread(self._post, body)
        answer = QuotaAnswer.model_validate(data)
        if self.day is not None and answer.day != self.day:
            log.info("a new budget day %s: served %d tokens on %s", answer.day, self.served, self.day)
            self.served = 0
            self.window.clear()
        self.day = answer.day
        self.answer = answer
        self.cap = answer.granted
        self._reported = sent if sent[0] == answer.day else None
        self._write_journal()

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        token = Path(self.settings.token_file).read_text().strip()
        req = urllib.request.Request(self.settings.url.rstrip("/") + "/quota/v1/report",
                                     data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json",
                                              "Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(req, timeout=self.settings.wait_seconds) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            try:
                detail = json.loads(exc.read()).get("error", {}).get("message", exc.reason)
            except ValueError:
                detail = exc.reason
            raise OSError(f"the quota endpoint answered {exc.code}: {detail}") from None

    # ---- the journal ----------------------------------------------------------------

    def _read_journal(self) -> None:
        path = self.settings.journal
        if not path or not os.path.exists(path):
            return
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            log.warning("usage journal %s unreadable (%s); starting from the budget's record", path, exc)
            return
        if data.get("uid") == self.uid and isinstance(data.get("served"), int):
            self.day, self.served = data.get("day"), data["served"]
            log.info("usage journal: %d tokens served on %s before this start", self.served, self.day)

    def _write_journal(self) -> None:
        path = self.settings.journal
        if not path:
            return
        tmp = f"{path}.tmp"
        try:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            with open(tmp, "w") as f:
                json.dump({"uid": self.uid, "day": self.day, "served": self.served}, f)
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("usage journal %s: %s", path, exc)


def _duration(seconds: float) -> str:
    """OpenAI's reset format: ``1m30s``, ``6s``, ``250ms``."""
    if seconds < 1:
        return f"{int(seconds * 1000)}ms"
    whole = int(seconds + 0.999)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    out = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes or hours else "") + f"{secs}s"
    return out
