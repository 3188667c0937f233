"""A namespace's inference budget, end to end: three real server processes (replicas of two ModelServings)
report to the real operator's quota endpoint, against the emulated API server, with the chart's RBAC.

The day's limit is never overrun, whatever the concurrency; a request is refused only when what is left
cannot hold it; a replica killed with SIGKILL (its container restarted) and the operator killed mid-window
lose and repeat nothing: the budget's record equals the sum of the ``usage`` the clients were sent."""

from __future__ import annotations

import json
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from hone_dev.cluster import OperatorProcess, free_port, wait_for
from hone_dev.serving import ServerProcess, http

pytestmark = pytest.mark.slow
NS = "shop"
LIMIT = 1500
MAX_TOKENS = 8
MESSAGES = [{"role": "user", "content": "Where is my parcel?"}]


def _server(root: Path, tiny: Path, config: Path, pod: dict[str, Any]) -> ServerProcess:
    env = {"HONE_POD_NAME": pod["metadata"]["name"], "HONE_POD_UID": pod["metadata"]["uid"]}
    return ServerProcess(["--config", str(config), "--model", str(tiny), "--served-model-name", "tiny"], cwd=root,
                         extra_env=env)


def _ask(server: ServerProcess) -> tuple[int, dict[str, Any], dict[str, str]]:
    import urllib.error
    import urllib.request

    body = json.dumps({"model": "tiny", "messages": MESSAGES, "max_tokens": MAX_TOKENS}).encode()
    req = urllib.request.Request(f"{server.url}/v1/chat/completions", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read()), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


def _inference(kube: Any) -> dict[str, Any]:
    tb = kube.get("hone.dev/v1alpha1", "TokenBudget", NS, "default") or {}
    return (tb.get("status") or {}).get("inference") or {}


def test_three_replicas_never_serve_past_the_day_and_the_record_is_exact(apiserver, kube, tiny, tmp_path) -> None:
    quota_port = free_port()
    env = {"HONE_QUOTA_PORT": str(quota_port)}
    op = OperatorProcess(apiserver, tmp_path / "op1.log", env=env).start()
    kube.create({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": NS}})
    kube.create({"apiVersion": "hone.dev/v1alpha1", "kind": "TokenBudget",
                 "metadata": {"name": "default", "namespace": NS},
                 "spec": {"inference": {"tokensPerDay": LIMIT}}})
    # Two replicas of one ModelServing and one of another: the namespace's budget binds them together.
    pods = [kube.create({"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": f"chat-{i}", "namespace": NS,
        "labels": {"hone.dev/modelserving": "chat" if i < 2 else "support", "app.kubernetes.io/component": "server"}},
        "spec": {"containers": [{"name": "server", "image": "hone-runtime"}]}}) for i in range(3)]
    token = tmp_path / "token"
    token.write_text(apiserver.call(lambda s: s.service_account_token(NS, "default")))
    servers = []
    for i, pod in enumerate(pods):
        config = tmp_path / f"server-{i}.json"
        config.write_text(json.dumps({"baseModel": {"location": str(tiny)}, "maxBatchSize": 4, "quota": {
            "url": f"http://127.0.0.1:{quota_port}", "tokenFile": str(token),
            "journal": str(tmp_path / f"usage-{i}" / "usage.json"), "reportSeconds": 0.2}}))
        servers.append((config, _server(tmp_path, tiny, config, pod)))
    for _, s in servers:
        s.wait_ready()
    sent: list[int] = []  # the usage of every 200 the clients were sent

    def round_of(n: int) -> list[tuple[int, dict[str, Any], dict[str, str]]]:
        with ThreadPoolExecutor(6) as pool:
            out = list(pool.map(lambda k: _ask(servers[k % 3][1]), range(n)))
        sent.extend(r[1]["usage"]["total_tokens"] for r in out if r[0] == 200)
        return out

    try:
        first = round_of(12)
        assert all(code == 200 for code, _, _ in first), json.dumps([(c, b.get("error")) for c, b, _ in first])
        assert all(h.get("x-ratelimit-limit-tokens") == str(LIMIT) for _, _, h in first), json.dumps([h for _, _, h in first])[:3000]
        need = first[0][1]["usage"]["prompt_tokens"] + MAX_TOKENS
        # A replica's container crashes and restarts; the operator is killed and comes back.
        config, crashed = servers[1]
        crashed.stop(signal.SIGKILL)
        servers[1] = (config, _server(tmp_path, tiny, config, pods[1]))
        servers[1][1].wait_ready()
        op.kill()
        op = OperatorProcess(apiserver, tmp_path / "op2.log", env=env).start()
        # Concurrent load until every replica refuses: the day is never overrun.
        for _ in range(40):
            answers = round_of(12)
            assert sum(sent) <= LIMIT
            refused = [b for code, b, _ in answers if code == 429]
            assert all(b["error"]["code"] == "insufficient_quota" for b in refused), refused
            if len(refused) == len(answers):
                break
        else:
            raise AssertionError(f"still serving after {sum(sent)} tokens of {LIMIT}")
        # Idle replicas give back what they hold; then what is left is refused only if a request cannot fit.
        wait_for(lambda: _inference(kube).get("grantedTokens") == 0 and
                 _inference(kube).get("tokensToday") == sum(sent), timeout=60, what="idle replicas' grants back")
        for k in range(6):
            code, body, headers = _ask(servers[k % 3][1])
            if code == 200:
                sent.append(body["usage"]["total_tokens"])
            else:
                assert code == 429 and body["error"]["code"] == "insufficient_quota", body
                assert "TokenBudget 'default'" in body["error"]["message"]
                assert int(headers["x-ratelimit-remaining-tokens"]) < need
        assert LIMIT - need < sum(sent) <= LIMIT  # used to within one request, never past the limit
        # The record: exactly the usage the clients were sent, across a SIGKILLed replica and operator.
        wait_for(lambda: _inference(kube).get("tokensToday") == sum(sent), timeout=30,
                 what=f"the budget to record {sum(sent)} served tokens (it says {_inference(kube)})")
        served = {g["pod"]: g["servedTokens"] for g in _inference(kube)["servers"]}
        assert sum(served.values()) == sum(sent) and len(served) == 3
        # A replica deleted: its usage stays in the day's, its grant comes back.
        assert servers[2][1].stop() in (0, -signal.SIGTERM)
        kube.delete("v1", "Pod", NS, "chat-2")
        wait_for(lambda: "chat-2" not in {g["pod"] for g in _inference(kube).get("servers") or []}, timeout=30,
                 what="the deleted replica's record retired")
        assert _inference(kube)["tokensToday"] == sum(sent)
        assert _inference(kube)["retiredTokensToday"] == served["chat-2"]
        # The operator's gauges say what the budget's status says.
        labels = f'budget="default",namespace="{NS}",window="day"'

        def gauges_match() -> bool:
            metrics, inference = op.metrics(), _inference(kube)
            used = inference["tokensToday"] + inference.get("grantedTokens", 0)
            return f"hone_budget_inference_used_tokens{{{labels}}} {float(used)}" in metrics and \
                f"hone_budget_inference_limit_tokens{{{labels}}} {float(LIMIT)}" in metrics
        wait_for(gauges_match, timeout=30, what="the inference budget gauges")
    finally:
        for _, s in servers:
            s.stop()
        op.stop()
