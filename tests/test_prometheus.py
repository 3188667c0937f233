"""The chart's Prometheus rules under promtool, and a real Prometheus scraping Hone.

promtool and prometheus come from Debian's package via .ci/tools.sh (into .tools/bin);
these tests skip, saying so, without them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from hone_dev.cluster import OperatorProcess, finish_job, seed_namespace, wait_phase
from hone_dev.serving import ServerProcess, free_port, http
from hone_dev.tiny import make_tiny_llama, make_tokenizer
from hone_dev.repo import CHART, helm, render
from hone_dev.resources import NS, apply, finish_training, published, validate_ok

#: Slow: a real Prometheus, promtool and a trained adapter. `pytest -m "not slow"` is the fast inner loop.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests" / "prometheus" / "hone-rules.test.yaml"


def tool(name: str) -> str:
    found = shutil.which(name) or (str(ROOT / ".tools/bin" / name) if (ROOT / ".tools/bin" / name).exists() else None)
    if not found:
        pytest.skip(f"{name} is not installed: run bash .ci/tools.sh")
    return found


def rendered_rules(*sets: str) -> dict[str, Any]:
    out = helm("template", "hone", str(CHART), "--set", "prometheus.rules=true", "-s", "templates/prometheusrule.yaml",
               *sets)
    assert out.returncode == 0, out.stderr
    rule = yaml.safe_load(out.stdout)
    assert rule["kind"] == "PrometheusRule"
    return {"groups": rule["spec"]["groups"]}


def test_rules_pass_promtool_check_and_their_unit_tests(tmp_path: Path) -> None:
    promtool = tool("promtool")
    rules = rendered_rules("--set-json", 'prometheus.alerts.dailyBudgetUsd={"team-a":50}')
    (tmp_path / "hone-rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))
    shutil.copy(TESTS, tmp_path / TESTS.name)
    check = subprocess.run([promtool, "check", "rules", "hone-rules.yaml"], cwd=tmp_path, capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run([promtool, "test", "rules", TESTS.name], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert unit.returncode == 0, unit.stdout + unit.stderr


def test_every_recording_rule_and_alert_has_a_unit_test() -> None:
    rules = rendered_rules("--set-json", 'prometheus.alerts.dailyBudgetUsd={"team-a":50}')
    tests = yaml.safe_load(TESTS.read_text())["tests"]
    exprs = " ".join(t["expr"] for case in tests for t in case.get("promql_expr_test", []))
    firing = {t["alertname"] for case in tests for t in case.get("alert_rule_test", []) if t["exp_alerts"]}
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "record" in rule:
                assert rule["record"] in exprs, f"no promtool test evaluates {rule['record']}"
            else:
                assert rule["alert"] in firing, f"no promtool test makes {rule['alert']} fire"


def test_prices_in_the_values_reach_the_operator_whose_counters_the_rules_read(tmp_path: Path, monkeypatch) -> None:
    """The cost rules sum the counters the operator (training, after free tokens) and each inference pod keep at
    their model's prices; the prices reach them through the operator's settings."""
    args = ("--set", "prices.prompt=2", "--set", "prices.completion=8", "--set", "prices.training=40",
            "--set-json", 'modelPrices={"embedded://smollm2-135m-instruct":{"training":3,"prompt":0.3,"completion":1.2}}')
    text = yaml.safe_dump(rendered_rules(*args))
    assert 'increase(hone_cost_usd_total{kind="training"}[1d])' in text
    assert 'increase(hone_cost_usd_total{kind=~"prompt|completion"}[1d])' in text
    settings_map = next(o for o in render(None, *args) if o["metadata"]["name"].endswith("-settings"))
    (tmp_path / "settings.yaml").write_text(settings_map["data"]["settings.yaml"])
    monkeypatch.setenv("HONE_CONFIG_FILE", str(tmp_path / "settings.yaml"))  # as the operator's pod reads it
    from hone_operator.settings import load

    settings = load()
    assert settings.prices_for("hf://HuggingFaceTB/SmolLM2-135M-Instruct").model_dump() == {
        "training": 40, "prompt": 2, "completion": 8}
    assert settings.prices_for("embedded://smollm2-135m-instruct").model_dump() == {
        "training": 3, "prompt": 0.3, "completion": 1.2}


def _query(url: str, promql: str) -> list[dict[str, Any]]:
    status, body = http("GET", f"{url}/api/v1/query?query={urllib.parse.quote(promql)}")
    assert status == 200, body
    return json.loads(body)["data"]["result"]


def test_a_real_prometheus_meters_exactly_what_the_server_returned(tmp_path: Path, apiserver, kube) -> None:
    """Scrape a running operator and a running built-in server; compare with the `usage` the client saw,
    and the training tokens and cost with the FineTuneJob's status.

    One long test on purpose: starting Prometheus, the operator and a server is most of its cost,
    and every check reads the same scrape."""
    prometheus = tool("prometheus")
    base = tmp_path / "model"
    make_tokenizer(base)
    make_tiny_llama(base)
    server = ServerProcess(["--model", str(base), "--served-model-name", "tiny"], cwd=tmp_path)
    operator = OperatorProcess(apiserver, tmp_path / "operator.log").start()
    rules = rendered_rules()
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["rules.yaml"],
        "scrape_configs": [
            {"job_name": "hone-serving", "static_configs": [
                {"targets": [f"127.0.0.1:{server.port}"], "labels": {"namespace": "team-a", "pod": "srv-0"}}]},
            # As the chart's ServiceMonitor does: the pod's namespace as a target label, and
            # honorLabels so that the FineTuneJobs' own namespace label wins.
            {"job_name": "hone-operator", "honor_labels": True, "static_configs": [
                {"targets": [f"127.0.0.1:{operator.metrics_port}"],
                 "labels": {"pod": "operator-0", "namespace": "hone-system"}}]},
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    prom = subprocess.Popen([prometheus, "--config.file=prometheus.yml", f"--web.listen-address=127.0.0.1:{port}",
                             "--storage.tsdb.path=data", "--storage.tsdb.retention.time=1h"],
                            cwd=tmp_path, stdout=open(tmp_path / "prometheus.log", "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        server.wait_ready()
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        expected = {"prompt": 0, "completion": 0}
        for i in range(12):
            kwargs: dict[str, Any] = dict(model="tiny", max_tokens=4 + i % 5, temperature=0.7)
            if i % 2:
                chunks = list(client.chat.completions.create(
                    messages=[{"role": "user", "content": f"question {i}"}], stream=True,
                    stream_options={"include_usage": True}, **kwargs))
                usage = chunks[-1].usage
            else:
                usage = client.completions.create(prompt=f"Our wheels {i}", **kwargs).usage
            expected["prompt"] += usage.prompt_tokens
            expected["completion"] += usage.completion_tokens

        def scraped() -> dict[str, float]:
            try:
                rows = _query(url, 'sum by (model, type) (hone_inference_tokens_total{namespace="team-a"})')
            except OSError:
                return {}
            return {r["metric"]["type"]: float(r["value"][1]) for r in rows if r["metric"].get("model") == "tiny"}

        deadline = time.monotonic() + 60
        while scraped() != {k: float(v) for k, v in expected.items()} and time.monotonic() < deadline:
            time.sleep(0.5)
        assert scraped() == {k: float(v) for k, v in expected.items()}, (scraped(), expected,
                                                                         (tmp_path / "prometheus.log").read_text()[-2000:])
        want_cost = expected["prompt"] * 3.75 / 1e6 + expected["completion"] * 15 / 1e6
        deadline = time.monotonic() + 30
        cost: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            cost = _query(url, 'namespace_model:hone_inference_cost_usd:sum{namespace="team-a",model="tiny"}')
            if cost and abs(float(cost[0]["value"][1]) - want_cost) < 1e-12:
                break
            time.sleep(0.5)
        assert cost and float(cost[0]["value"][1]) == pytest.approx(want_cost, rel=1e-12)
        exported = _query(url, 'sum(hone_cost_usd_total{namespace="team-a",model="tiny"})')
        assert float(exported[0]["value"][1]) == pytest.approx(want_cost, rel=1e-9)
        # The operator's target is scraped on its own schedule (a loaded run once queried before its first
        # scrape: no `up` series yet): wait for a successful scrape.
        deadline = time.monotonic() + 30
        up = _query(url, 'up{job="hone-operator"}')
        while not (up and up[0]["value"][1] == "1") and time.monotonic() < deadline:
            time.sleep(0.5)
            up = _query(url, 'up{job="hone-operator"}')
        targets = http("GET", f"{url}/api/v1/targets")[1]
        assert up and up[0]["value"][1] == "1", (up, targets)

        # A FineTuneJob in team-a succeeds: its tokens and cost are labelled with team-a, not the
        # operator pod's namespace (honor_labels, as in the chart's ServiceMonitor). Its namespace's budget
        # gives 100,000 free tokens a day: the other 50,000 cost $25 per 1M.
        seed_namespace(kube, NS)
        kube.create({"apiVersion": "hone.dev/v1alpha1", "kind": "TokenBudget",
                     "metadata": {"name": "team", "namespace": NS},
                     "spec": {"training": {"freeTokensPerDay": 100_000}}})
        apply(kube)
        validate_ok(kube)
        finish_training(kube, "support-assistant", published(tokens=150_000))
        wait_phase(kube, NS, "support-assistant", "Succeeded")

        def training() -> tuple[float, ...]:
            return tuple(float(found[0]["value"][1]) if (found := _query(url, q)) else -1.0 for q in (
                f'sum(hone_cost_usd_total{{kind="training",namespace="{NS}"}})',
                f'sum(hone_training_tokens_total{{namespace="{NS}"}})',
                f'sum(hone_training_free_tokens_total{{namespace="{NS}"}})',
                f'hone_budget_training_used_tokens{{namespace="{NS}",budget="team",window="day"}}'))

        want = (50_000 * 25 / 1e6, 150_000.0, 100_000.0, 150_000.0)
        deadline = time.monotonic() + 30  # the series exist (at 0) before the job succeeds: wait for the totals
        while training() != pytest.approx(want) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert training() == pytest.approx(want)
    finally:
        prom.terminate()
        prom.wait(30)
        server.stop()
        operator.stop()
