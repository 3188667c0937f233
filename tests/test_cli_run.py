"""`hone run`: a FineTuneJob manifest fine-tunes on this machine, and resumes after Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hone_trainer.publish import verify
from tests.support.cluster import wait_for
from tests.support.tiny import make_tiny_llama, make_tokenizer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A folder with a model, data and a manifest written for a cluster (pvc:// output)."""
    make_tokenizer(tmp_path / "model")
    make_tiny_llama(tmp_path / "model")
    lines = [json.dumps({"messages": [{"role": "user", "content": f"Do you ship to Porto? {i}"},
                                      {"role": "assistant", "content": "Yes, in 3 to 5 working days."}]})
             for i in range(40)]
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "val.jsonl").write_text("\n".join(lines[:5]) + "\n")
    manifest = {
        "apiVersion": "hone.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "shop-assistant"},
        "spec": {"baseModel": {"uri": "file://model"},
                 "trainingData": {"uri": "file://train.jsonl"}, "validationData": {"uri": "file://val.jsonl"},
                 "hyperparameters": {"epochs": 4, "batchSize": 4, "learningRateMultiplier": 20},
                 "resources": {"gpusPerNode": 1},
                 "checkpointing": {"intervalSteps": 5},
                 "output": {"uri": "pvc://models/adapters"}, "suffix": "shop"},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(manifest))
    return tmp_path


def hone(project: Path, *args: str, **kwargs):
    env = {**os.environ, "HONE_PVC_ROOT": str(project / "pvc"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "operator"), str(ROOT / "trainer")])}
    return subprocess.Popen([sys.executable, "-m", "hone_operator.cli", *args], cwd=project, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_hone_run_fine_tunes_and_publishes(project: Path) -> None:
    proc = hone(project, "run", "job.yaml")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out + err
    assert "trainable" in out
    assert "fineTunedModel: ft:model:local:shop:" in out
    artifact = project / "pvc" / "models" / "adapters" / "local" / "shop-assistant" / "model"
    assert f"artifact:       {artifact}" in out
    assert verify(artifact)["fineTunedModel"].startswith("ft:model:local:shop:")
    line = next(x for x in out.splitlines() if "validationLoss:" in x)
    before, after = (float(w) for w in line.replace(",", " ").split() if w.replace(".", "").isdigit())
    assert after < before  # fine-tuning did something to held-out loss


def test_ctrl_c_saves_a_checkpoint_and_the_next_run_resumes(project: Path) -> None:
    proc = hone(project, "run", "job.yaml", start_new_session=True)
    progress = project / ".hone" / "run" / "local" / "shop-assistant" / "progress.json"
    wait_for(lambda: progress.exists() and json.loads(progress.read_text())["step"] >= 6, timeout=180)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the terminal
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert "run the same command again to resume" in err.lower()
    again = hone(project, "run", "job.yaml")
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, out + err
    log = (project / ".hone" / "run" / "local" / "shop-assistant" / "trainer.log").read_text()
    assert "resumed from" in log


def test_hone_run_errors_name_the_field(project: Path) -> None:
    manifest = yaml.safe_load((project / "job.yaml").read_text())
    manifest["spec"]["trainingData"] = {"configMap": {"name": "chats", "key": "train.jsonl"}}
    (project / "bad.yaml").write_text(yaml.safe_dump(manifest))
    proc = hone(project, "run", "bad.yaml")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert "bad.yaml: spec.trainingData.configMap" in err and "Traceback" not in err


def test_qlora_on_a_cpu_machine_fails_before_anything_runs(project: Path) -> None:
    manifest = yaml.safe_load((project / "job.yaml").read_text())
    manifest["spec"]["method"] = "qlora"
    (project / "qlora.yaml").write_text(yaml.safe_dump(manifest))
    proc = hone(project, "run", "qlora.yaml")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert "qlora.yaml: spec.method: qlora needs an NVIDIA GPU" in err
    assert "Validating" not in out  # refused before validation, let alone training
