"""The README's first two commands stay true."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_first_two_commands_are_the_demo_and_the_tests() -> None:
    demo, tests = readme_commands()[:2]
    assert demo.endswith("python examples/operator_walkthrough.py")
    assert "PIP_CONSTRAINT=.ci/constraints-cpu.txt" in demo  # never pulls CUDA torch
    assert tests == "bash .ci/run"
    assert (ROOT / ".ci" / "run").exists()


def test_the_demo_runs_to_a_succeeded_job() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "operator"), str(ROOT / "trainer")])}
    out = subprocess.run([sys.executable, "examples/operator_walkthrough.py"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "PHASE=Succeeded" in out.stdout
    assert "fineTunedModel: ft:smollm2-135m-instruct:team-a::" in out.stdout
    assert 'hone_training_tokens_total{base_model="HuggingFaceTB/SmolLM2-135M-Instruct"' in out.stdout
    assert "[simulated" in out.stdout  # it says what is simulated
