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

from hone_trainer.manifest import verify
from hone_trainer.training.checkpoints import MARKER
from hone_dev import processes
from hone_dev.cluster import wait_for
from hone_dev.tiny import make_tiny_llama, make_tokenizer

#: Slow: every test runs the trainer through hone run. `pytest -m "not slow"` is the fast inner loop.
pytestmark = pytest.mark.slow

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
    _assert_loss_curves(project, out)
    # Without spec.evaluation, the evaluation step runs the safety suite: its result is printed and published.
    gate = verify(artifact)["evaluation"]["safety"]
    assert gate["requests"] == 32 and gate["judge"] == "heuristic"
    assert (f"safety suite: 32 requests (heuristic judge), refusal rate {100 * gate['baseRefusalRate']:.1f}% -> "
            f"{100 * gate['fineTunedRefusalRate']:.1f}%; gate {'passed' if gate['passed'] else 'FAILED'}") in out


def _assert_loss_curves(project: Path, out: str) -> None:
    """40 steps (40 examples x 4 epochs / batch 4), evaluated before the first step and every 5."""
    from PIL import Image

    job_dir = project / ".hone" / "run" / "local" / "shop-assistant"
    manifest = verify(project / "pvc" / "models" / "adapters" / "local" / "shop-assistant" / "model")
    result = json.loads((job_dir / "result.json").read_text())
    progress = json.loads((job_dir / "progress.json").read_text())  # the last report, as status.progress gets it
    train, validation = progress["trainCurve"], progress["validationCurve"]
    assert [p["step"] for p in train] == list(range(1, 41))
    assert [p["step"] for p in validation] == [0, 5, 10, 15, 20, 25, 30, 35, 40]
    assert validation[0]["loss"] == pytest.approx(result["initialValidationLoss"], rel=1e-5)
    assert validation[-1]["loss"] == pytest.approx(result["validationLoss"], rel=1e-5)
    assert manifest["losses"]["trainCurve"] == train and manifest["losses"]["validationCurve"] == validation
    png = job_dir / "loss.png"
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size[0] >= 400
        drawn = json.loads(image.text["hone:losses"])
    assert drawn == {"train": train, "validation": validation}  # the picture shows exactly the reported points
    assert "Loss curves" in out and str(png) in out
    assert "40 points" in out and "9 points" in out


def test_ctrl_c_saves_a_checkpoint_and_the_next_run_resumes(project: Path) -> None:
    # As from a terminal: SIGINT at its default. A test run started in the background (`cmd &` in a
    # script) inherits SIGINT ignored, and Python then keeps ignoring it: Ctrl-C would never arrive.
    proc = hone(project, "run", "job.yaml", start_new_session=True,
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    job_dir = project / ".hone" / "run" / "local" / "shop-assistant"
    checkpoints = project / "pvc" / "models" / "adapters" / "local" / "shop-assistant" / "checkpoints"
    trainer: list[int] = []
    try:
        # The 40 steps take well under a second on a quiet machine, faster than any poll: freeze
        # the trainer as soon as it exists and let it run a few milliseconds at a time until its
        # first complete checkpoint; it is stopped, mid-run, when Ctrl-C comes.
        trainer = wait_for(lambda: processes.children(proc.pid), timeout=60, interval=0.001, what="the trainer")
        processes.stop(trainer)
        processes.run_in_slices(trainer, lambda: any(checkpoints.glob(f"*/{MARKER}")))
        assert not (job_dir / "result.json").exists()  # the run is not over
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the terminal
        try:
            wait_for(lambda: processes.signal_pending(trainer[0], signal.SIGTERM), timeout=120,
                     what="SIGTERM forwarded to the trainer")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{processes.describe([proc.pid, *processes.children(proc.pid)])}") from None
        processes.resume(trainer)
        out, err = proc.communicate(timeout=120)
    finally:
        processes.resume(trainer)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, out + err
    assert "run the same command again to resume" in err.lower()
    again = hone(project, "run", "job.yaml")
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, out + err
    log = (job_dir / "trainer.log").read_text()
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


def test_hone_serve_answers_for_the_job_hone_run_published(project: Path) -> None:
    import openai

    from hone_dev.serving import free_port, http

    proc = hone(project, "run", "job.yaml")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out + err
    name = next(x.split()[-1] for x in out.splitlines() if "fineTunedModel:" in x)
    (project / "serving.yaml").write_text(yaml.safe_dump({
        "apiVersion": "hone.dev/v1alpha1", "kind": "ModelServing", "metadata": {"name": "shop"},
        "spec": {"fineTuneJobRef": {"name": "shop-assistant"}}}))
    port = free_port()
    server = hone(project, "serve", "serving.yaml", "--port", str(port))
    try:
        wait_for(lambda: _ready(f"http://127.0.0.1:{port}"), timeout=120, what="hone serve ready")
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="local", max_retries=0)
        assert {m.id for m in client.models.list()} == {"model", name}
        answer = client.chat.completions.create(model=name, messages=[{"role": "user", "content": "Do you ship to Porto? 3"}],
                                                max_tokens=12, temperature=0)
        assert answer.usage.completion_tokens >= 1 and answer.choices[0].message.content

        chat = hone(project, "chat", name, "Do you ship to Porto? 3", "--url", f"http://127.0.0.1:{port}/v1",
                    "--max-tokens", "12")
        chat_out, chat_err = chat.communicate(timeout=120)
        assert chat.returncode == 0, chat_err
        cut = " [...]" if answer.choices[0].finish_reason == "length" else ""
        assert chat_out.strip() == answer.choices[0].message.content.strip() + cut  # greedy both times

        short = hone(project, "chat", name, "Do you ship to Porto? 3", "--url", f"http://127.0.0.1:{port}/v1",
                     "--max-tokens", "1")
        short_out, short_err = short.communicate(timeout=120)
        assert short.returncode == 0 and short_out.rstrip().endswith("[...]")  # an answer cut short says so
        assert "cut at --max-tokens 1" in short_err
        assert f"{answer.usage.prompt_tokens} prompt + {answer.usage.completion_tokens} completion tokens" in chat_err

        unknown = hone(project, "chat", "no-such-model", "hi", "--url", f"http://127.0.0.1:{port}/v1")
        _, unknown_err = unknown.communicate(timeout=60)
        assert unknown.returncode == 1 and "HTTP 404" in unknown_err and name in unknown_err

        metrics = http("GET", f"http://127.0.0.1:{port}/metrics")[1]
        prompt_line = f'hone_inference_tokens_total{{model="{name}",type="prompt"}} '
        assert float(next(x for x in metrics.splitlines() if x.startswith(prompt_line)).split()[-1]) == \
            3 * answer.usage.prompt_tokens  # the openai call and both chats
    finally:
        server.send_signal(signal.SIGINT)
        server.communicate(timeout=60)


def test_hone_serve_before_hone_run_says_what_to_do(project: Path) -> None:
    (project / "serving.yaml").write_text(yaml.safe_dump({
        "apiVersion": "hone.dev/v1alpha1", "kind": "ModelServing", "metadata": {"name": "shop"},
        "spec": {"fineTuneJobRef": {"name": "shop-assistant"}}}))
    proc = hone(project, "serve", "serving.yaml")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "serving.yaml: spec.fineTuneJobRef: FineTuneJob 'shop-assistant'" in err and "hone run" in err
    assert "Traceback" not in err


def _ready(url: str) -> bool:
    from hone_dev.serving import http

    try:
        return http("GET", f"{url}/ready", timeout=2)[0] == 200
    except OSError:
        return False
