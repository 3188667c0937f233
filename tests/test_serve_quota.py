"""The serving pod's side of the namespace's inference budget (:mod:`hone_trainer.serving.quota`), against a
quota endpoint the test scripts: admission against the grant and the per-minute share, OpenAI's errors and
headers, the journal across a restart, and what happens when the endpoint cannot be reached."""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from hone_dev.cluster import free_port
from hone_trainer.contract import QuotaSettings
from hone_trainer.serving.protocol import ApiError
from hone_trainer.serving.quota import Quota

DAY = {"budget": "team", "enforce": True, "day": "2026-12-03", "resetsAt": "2999-01-01T00:00:00Z",
       "tokensPerDay": 1000, "remainingTodayTokens": 500, "tokensPerMinute": None, "minuteShareTokens": None}


class Endpoint:
    """A quota endpoint that answers with ``answer`` (called with each report) and keeps the reports."""

    def __init__(self, answer: Any):
        self.answer, self.reports = answer, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                assert self.headers["Authorization"] == "Bearer pod-token"
                outer.reports.append(body)
                data = json.dumps(outer.answer(body)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def settings(tmp_path: Path, monkeypatch) -> Iterator[Any]:
    (tmp_path / "token").write_text("pod-token\n")
    monkeypatch.setenv("HONE_POD_NAME", "chat-0")
    monkeypatch.setenv("HONE_POD_UID", "uid-0")

    def make(url: str) -> QuotaSettings:
        return QuotaSettings(url=url, token_file=str(tmp_path / "token"), journal=str(tmp_path / "usage" / "u.json"),
                             report_seconds=0.05, wait_seconds=2)
    yield make


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_the_day_grant_admits_each_request_at_its_largest_usage(settings) -> None:
    endpoint = Endpoint(lambda r: {**DAY, "servedTokens": r["servedTokens"], "grantedTokens": 100})

    async def scenario() -> None:
        quota = Quota.from_env(settings(endpoint.url))
        quota.start()
        first = await quota.admit(60)  # 60 of the 100 granted, held while it runs
        with pytest.raises(ApiError) as refused:
            await quota.admit(60)  # asks once more; the budget grants no more
        err = refused.value
        assert (err.status, err.type, err.code) == (429, "insufficient_quota", "insufficient_quota")
        assert "TokenBudget 'team' allows 1,000 inference tokens a day" in err.message and "60" in err.message
        quota.release(first, 25)  # it used 25: the other 35 come back
        second = await quota.admit(60)
        assert quota.headers() == {"x-ratelimit-limit-tokens": "1000",
                                   "x-ratelimit-remaining-tokens": str(500 + 100 - 25 - 60),
                                   "x-ratelimit-reset-tokens": quota.headers()["x-ratelimit-reset-tokens"]}
        quota.release(second, 40)
        await quota.stop()  # the last report: everything served, nothing kept

    run(scenario())
    assert endpoint.reports[0] == {"pod": "chat-0", "uid": "uid-0", "day": None, "servedTokens": 0,
                                   "inFlightTokens": 0, "wantTokens": 60}
    asked = [r for r in endpoint.reports if r["wantTokens"]]
    assert asked[1]["inFlightTokens"] == 100 and asked[1]["wantTokens"] == 20  # beyond what it holds
    assert endpoint.reports[-1] == {"pod": "chat-0", "uid": "uid-0", "day": "2026-12-03", "servedTokens": 65,
                                    "inFlightTokens": 0, "wantTokens": 0}


def test_the_per_minute_share_refuses_with_retry_after(settings) -> None:
    endpoint = Endpoint(lambda r: {**DAY, "tokensPerDay": None, "grantedTokens": None, "tokensPerMinute": 300,
                                   "minuteShareTokens": 100, "servedTokens": r["servedTokens"]})

    async def scenario() -> None:
        quota = Quota.from_env(settings(endpoint.url))
        quota.start()
        ticket = await quota.admit(60)
        with pytest.raises(ApiError) as limited:
            await quota.admit(60)
        err = limited.value
        assert (err.status, err.type, err.code) == (429, "tokens", "rate_limit_exceeded")
        assert "300 tokens per minute (this server's share 100, used 60, requested 60)" in err.message
        assert 55 <= int(err.headers["Retry-After"]) <= 60
        assert err.headers["x-ratelimit-limit-tokens"] == "100" and err.headers["x-ratelimit-remaining-tokens"] == "40"
        quota.release(ticket, 30)  # the window counts what it used once it ended
        await quota.admit(60)
        with pytest.raises(ApiError, match="Request too large"):
            await quota.admit(150)
        await quota.stop()

    run(scenario())


def test_the_days_count_survives_a_restart_of_the_container(settings) -> None:
    endpoint = Endpoint(lambda r: {**DAY, "servedTokens": r["servedTokens"], "grantedTokens": 400})

    async def serve(used: int) -> None:
        quota = Quota.from_env(settings(endpoint.url))
        quota.start()
        quota.release(await quota.admit(50), used)
        quota._task.cancel()  # killed: no last report

    run(serve(37))
    before = len(endpoint.reports)
    run(serve(5))  # the next container goes on from the journal
    assert endpoint.reports[before] == {"pod": "chat-0", "uid": "uid-0", "day": "2026-12-03", "servedTokens": 37,
                                        "inFlightTokens": 0, "wantTokens": 50}
    data = json.loads(Path(settings(endpoint.url).journal).read_text())
    assert data == {"uid": "uid-0", "day": "2026-12-03", "served": 42}


def test_an_unreachable_budget_means_503_never_unmetered_service(settings) -> None:
    async def scenario() -> None:
        quota = Quota.from_env(settings(f"http://127.0.0.1:{free_port()}"))
        quota.start()
        with pytest.raises(ApiError) as unavailable:
            await quota.admit(10)
        err = unavailable.value
        assert (err.status, err.code, err.headers["Retry-After"]) == (503, "quota_unavailable", "5")
        assert "cannot be reached" in err.message
        await quota.stop()

    run(scenario())


def test_a_new_day_without_the_operator_stops_only_what_a_limit_governs(settings) -> None:
    """At midnight a pod needs a new grant where the budget limits inference; where the budget limits nothing,
    an operator that cannot be reached does not stop serving."""
    answers = {"limit": None}
    endpoint = Endpoint(lambda r: {**DAY, "resetsAt": "2026-12-03T00:00:00Z", "tokensPerDay": answers["limit"],
                                   "grantedTokens": answers["limit"], "servedTokens": r["servedTokens"]})

    async def scenario() -> None:
        quota = Quota.from_env(settings(endpoint.url))
        quota.start()
        quota.release(await quota.admit(10), 10)  # the answer's day is already over: resetsAt is past
        endpoint.server.shutdown()
        endpoint.server.server_close()
        quota.release(await quota.admit(10), 10)  # no limit: served, and metered for the next report
        quota.answer.granted = quota.cap = 1000  # had the budget limited the day...
        with pytest.raises(ApiError) as unavailable:
            await quota.admit(10)
        assert unavailable.value.code == "quota_unavailable"
        quota._task.cancel()

    run(scenario())
