"""Packaging, settings and entry points: what installing and starting Hone relies on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml
from click.testing import CliRunner

from hone_operator.cli import cli
from hone_operator.settings import OperatorSettings
from hone_dev.cluster import free_port, seed_namespace, wait_for, wait_phase

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "operator"), str(ROOT / "trainer")])}


def assert_imports_without(modules: str, forbidden: tuple[str, ...]) -> None:
    """Import ``modules`` in a fresh interpreter and fail if any of ``forbidden`` came along."""
    code = (f"import sys, {modules}\n"
            f"bad = [m for m in {forbidden!r} if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, env=ENV)


def test_operator_never_imports_torch_or_the_trainer_runtime() -> None:
    assert_imports_without("hone_operator.main, hone_operator.cli, hone_operator.startup, hone_operator.controller, "
                           "hone_operator.api.crdgen, hone_operator.openai_api.app",
                           ("torch", "deepspeed", "transformers", "peft"))


def test_the_api_image_runs_hone_api_without_kopf_or_torch() -> None:
    """The api image installs the api extra only: ``hone api`` in a cluster must need nothing else."""
    assert_imports_without("hone_operator.cli, hone_operator.cli.api, hone_operator.openai_api.app, "
                           "hone_operator.openai_api.cluster", ("kopf", "torch", "transformers", "peft"))


def test_trainer_contract_needs_neither_kopf_nor_kubernetes() -> None:
    assert_imports_without("hone_trainer.contract", ("kopf", "kubernetes", "torch"))


def test_trainer_never_imports_kopf_or_the_kubernetes_client() -> None:
    assert_imports_without("hone_trainer.training.trainer, hone_trainer.training.validate, "
                           "hone_trainer.training.report, hone_trainer.serving.app, hone_trainer.__main__",
                           ("kopf", "kubernetes"))


def test_source_roots_hold_one_package_each() -> None:
    assert not (ROOT / "operator" / "__init__.py").exists()
    assert not (ROOT / "trainer" / "__init__.py").exists()
    assert (ROOT / "operator" / "hone_operator" / "__init__.py").exists()
    assert (ROOT / "trainer" / "hone_trainer" / "__init__.py").exists()


def test_settings_from_environment_and_file(tmp_path: Path, monkeypatch) -> None:
    cfg = tmp_path / "hone.yaml"
    cfg.write_text(yaml.safe_dump({"runtimeImage": "file/image:1", "watchNamespaces": ["a", "b"],
                                   "prices": {"training": 30}}))
    monkeypatch.setenv("HONE_CONFIG_FILE", str(cfg))
    monkeypatch.setenv("HONE_PRICES__PROMPT", "1.5")
    monkeypatch.setenv("HONE_METRICS_PORT", "9999")
    s = OperatorSettings()
    assert s.runtime_image == "file/image:1"
    assert s.watch_namespaces == ["a", "b"]
    assert s.prices.training == 30 and s.prices.completion == 15.0
    assert s.metrics_port == 9999
    monkeypatch.setenv("HONE_RUNTIME_IMAGE", "env/image:2")  # the environment wins over the file
    assert OperatorSettings().runtime_image == "env/image:2"


def test_default_prices_are_the_documented_ones() -> None:
    p = OperatorSettings().prices
    assert (p.training, p.prompt, p.completion) == (25.0, 3.75, 15.0)


def test_hone_crds_prints_every_crd() -> None:
    result = CliRunner().invoke(cli, ["crds"])
    assert result.exit_code == 0, result.output
    docs = [d for d in yaml.safe_load_all(result.output) if d]
    assert [d["metadata"]["name"] for d in docs] == ["finetunejobs.hone.dev", "modelservings.hone.dev",
                                                     "tokenbudgets.hone.dev"]
    assert CliRunner().invoke(cli, ["crds", "--check"]).exit_code == 0


def test_console_script_is_installed() -> None:
    out = subprocess.run(["hone", "--help"], capture_output=True, text=True, check=True)
    assert "crds" in out.stdout and "operator" in out.stdout


def test_kopf_run_module_mode_works(kube, kubeconfig: Path, tmp_path: Path) -> None:
    """`kopf run -m hone_operator.main` is the other documented way to start the operator."""
    env = {**ENV, "KUBECONFIG": str(kubeconfig), "HONE_METRICS_PORT": str(free_port()), "HONE_HEALTH_PORT": "0",
           "HONE_QUOTA_PORT": str(free_port())}  # not the default 8082: another operator may hold it
    log = open(tmp_path / "kopf.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "kopf", "run", "-m", "hone_operator.main", "--standalone",
                             "-n", "team-a"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        body = yaml.safe_load((ROOT / "crds" / "samples" / "finetunejob-minimal.yaml").read_text())
        body["metadata"]["namespace"] = "team-a"
        seed_namespace(kube, "team-a")
        kube.create(body)
        wait_phase(kube, "team-a", "support-assistant", "ValidatingFiles", timeout=60)
        assert wait_for(lambda: kube.get("batch/v1", "Job", "team-a", "support-assistant-validate"))
    finally:
        proc.terminate()
        proc.wait(20)


def test_cpu_install_pulled_no_cuda_packages() -> None:
    """On the CPU install .ci/run makes, torch is the 2.13.0 CPU wheel and nothing from nvidia."""
    import importlib.metadata as md

    import pytest

    if not os.environ.get("HONE_EXPECT_CPU_TORCH"):
        pytest.skip("only meaningful on the CPU install made by .ci/run")
    assert md.version("torch").startswith("2.13.0")
    cuda = sorted(d.metadata["Name"] for d in md.distributions()
                  if d.metadata["Name"] and d.metadata["Name"].lower().startswith(("nvidia-", "triton")))
    assert cuda == []
