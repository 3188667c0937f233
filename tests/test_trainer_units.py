"""Trainer pieces on their own: packing, checkpoints, DeepSpeed config, metrics."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from hone_trainer import contract
from hone_trainer.training import ds_config, packing
from hone_trainer.training.formatting import IGNORE_INDEX, ChatFormatter
from hone_trainer.training.checkpoints import MARKER, CheckpointStore
from hone_trainer.training.data import Example, Message
from hone_dev.cluster import free_port
from hone_dev.tiny import make_tiny_llama, make_tokenizer


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-units")
    return make_tokenizer(folder), make_tiny_llama(folder)


def examples(n: int) -> list[Example]:
    return [Example(i + 1, (Message("user", "How do I clean bearings? " * (1 + i % 4)),
                            Message("assistant", "Use isopropyl alcohol. " * (1 + i % 3)))) for i in range(n)]


def test_packed_rows_give_the_same_per_example_loss(tiny) -> None:
    import torch

    tok, model = tiny
    model.eval()
    enc = ChatFormatter(tok, 512).encode(examples(7))
    rows = packing.pack(range(7), enc, 160)
    assert len(rows) < 7  # really packed

    def loss(logits, labels) -> float:
        return float(torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(labels[1:]),
                                                       ignore_index=IGNORE_INDEX, reduction="sum"))

    with torch.no_grad():
        for row in rows:
            out = model(input_ids=torch.tensor([row.input_ids]), position_ids=torch.tensor([row.position_ids]),
                        use_cache=False).logits[0]
            start = 0
            for i in row.examples:
                n = len(enc[i].input_ids)
                alone = model(input_ids=torch.tensor([enc[i].input_ids]), use_cache=False).logits[0]
                labels = list(enc[i].labels)
                labels[0] = IGNORE_INDEX
                assert loss(out[start:start + n], row.labels[start:start + n]) == pytest.approx(
                    loss(alone, labels), abs=1e-5)
                start += n


@pytest.mark.parametrize("attention", packing.PACKED_ATTENTION)
def test_packed_rows_in_a_batch_keep_examples_apart_with_each_attention_the_trainer_allows(
        tiny, tmp_path_factory, attention: str) -> None:
    """As the trainer batches them: several padded rows per forward, with each attention implementation
    it allows; every example's logits equal its logits alone (flash_attention_2 would mix them: refused)."""
    import torch
    from transformers import AutoModelForCausalLM

    tok, _ = tiny
    folder = tmp_path_factory.mktemp("tiny-attention")
    make_tiny_llama(folder)
    model = AutoModelForCausalLM.from_pretrained(str(folder), attn_implementation=attention).eval()
    packing.check_packed_attention(model.config._attn_implementation)
    enc = ChatFormatter(tok, 512).encode(examples(9))
    rows = packing.pack(range(9), enc, 120)
    assert len(rows) >= 2 and any(len(r.examples) > 1 for r in rows)
    longest = max(len(r) for r in rows)
    ids = torch.tensor([r.input_ids + [0] * (longest - len(r)) for r in rows])
    pos = torch.tensor([r.position_ids + [0] * (longest - len(r)) for r in rows])
    with torch.no_grad():
        out = model(input_ids=ids, position_ids=pos, use_cache=False).logits
        for b, row in enumerate(rows):
            start = 0
            for i in row.examples:
                n = len(enc[i].input_ids)
                alone = model(input_ids=torch.tensor([enc[i].input_ids]), use_cache=False).logits[0]
                assert torch.allclose(out[b, start:start + n], alone, atol=1e-5), (attention, b, i)
                start += n


def test_an_attention_that_mixes_packed_rows_is_refused() -> None:
    with pytest.raises(ValueError, match="flash_attention_2.*does not keep packed examples apart"):
        packing.check_packed_attention("flash_attention_2")


def test_packing_wastes_almost_nothing_and_never_crosses_examples(tiny) -> None:
    import random

    tok, _ = tiny
    rng = random.Random(5)
    varied = [Example(i + 1, (Message("user", "How do I clean bearings? " * rng.randint(1, 12)),
                              Message("assistant", "Use isopropyl alcohol. " * rng.choice(
                                  [rng.randint(1, 4), rng.randint(5, 30)])))) for i in range(96)]
    enc = ChatFormatter(tok, 1024).encode(varied)
    packed_pad = packed_real = naive_pad = 0
    for step in range(12):  # as training does: 8 examples per step
        members = packing.step_examples(96, 8, seed=1, step=step)
        rows = packing.pack(members, enc, 1024)
        assert sorted(i for r in rows for i in r.examples) == sorted(members)
        for r in rows:
            starts = [k for k, p in enumerate(r.position_ids) if p == 0]
            assert all(r.labels[k] == IGNORE_INDEX for k in starts)  # no prediction across a boundary
        longest = max(len(r) for r in rows)
        packed_real += sum(len(r) for r in rows)
        packed_pad += longest * len(rows) - sum(len(r) for r in rows)
        lengths = [len(enc[i].input_ids) for i in members]
        naive_pad += max(lengths) * len(lengths) - sum(lengths)
    packed = packed_pad / (packed_pad + packed_real)
    naive = naive_pad / (naive_pad + packed_real)
    assert naive > 0.3  # what padding each batch to its longest example would waste
    assert packed < 0.03


def test_step_order_is_deterministic_and_covers_each_epoch() -> None:
    seen = [i for s in range(5) for i in packing.step_examples(37, 8, seed=3, step=s)]
    assert sorted(seen) == list(range(37))  # 5 steps = one epoch of 37 examples
    assert packing.step_examples(37, 8, 3, 6) == packing.step_examples(37, 8, 3, 6)
    assert packing.step_examples(37, 8, 3, 0) != packing.step_examples(37, 8, 4, 0)
    assert packing.epoch_order(37, 3, 0) != packing.epoch_order(37, 3, 1)


def test_rank_rows_split_the_work() -> None:
    rows = [packing.Row(list(range(n)), [0] * n, list(range(n)), [k]) for k, n in enumerate([50, 40, 30, 20, 10])]
    mine = [packing.rank_rows(rows, r, 2) for r in range(2)]
    assert sorted(len(r) for m in mine for r in m) == [10, 20, 30, 40, 50]
    assert [len(r) for r in mine[0]] == [50, 30, 10]


def test_checkpoint_store_keeps_the_newest_complete_ones(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=2)
    for step in (10, 20, 30):
        (tmp_path / f"step-{step:08d}").mkdir()
        store.mark_complete(step, {"train_loss": step / 10})
    (tmp_path / "step-00000040").mkdir()  # interrupted
    assert store.latest().step == 30
    store.prune()
    assert [c.step for c in store.complete()] == [20, 30]
    assert (tmp_path / "step-00000040").exists()  # pruning never touches an incomplete save
    assert store.remove_incomplete() == [tmp_path / "step-00000040"]
    (tmp_path / "step-00000050").mkdir()
    (tmp_path / "step-00000050" / MARKER).write_text("{not json")
    assert store.latest().step == 30  # an unreadable marker is no marker


def cfg(**overrides) -> contract.TrainerConfig:
    return contract.TrainerConfig(
        job=contract.JobIdentity(namespace="n", name="j", uid="u", fine_tuned_model="ft:x:n::u"),
        base_model=contract.ModelSource(location="/m"), training_data=contract.DataFile(location="/d"),
        output_uri="/o", checkpoint_dir="/c", **overrides)


def test_deepspeed_config_is_generated_from_the_job() -> None:
    ds = ds_config.build(cfg(), world=4, gpu=True, learning_rate=1e-4, total_steps=100)
    assert ds["zero_optimization"]["stage"] == 2
    assert ds["bf16"] == {"enabled": True} and ds["train_batch_size"] == 4
    assert ds["optimizer"]["params"]["torch_adam"] is True
    assert ds["scheduler"]["params"]["warmup_num_steps"] == 3
    cpu = ds_config.build(cfg(), world=2, gpu=False, learning_rate=1e-4, total_steps=10)
    assert cpu["bf16"] == {"enabled": False}
    full = ds_config.build(cfg(method="full"), world=8, gpu=True, learning_rate=1e-5, total_steps=10)
    assert full["zero_optimization"]["stage"] == 3
    offload = ds_config.build(cfg(method="full", deepspeed=contract.DeepSpeedSettings(
        zero_stage=3, offload_optimizer=True, offload_params=True)), world=8, gpu=True, learning_rate=1e-5,
        total_steps=10)
    assert offload["zero_optimization"]["offload_param"]["device"] == "cpu"


def test_deepspeed_override_is_merged_and_validated() -> None:
    merged = ds_config.build(cfg(deepspeed=contract.DeepSpeedSettings(
        config_override={"gradient_clipping": 0.5, "zero_optimization": {"reduce_bucket_size": 5e7}})),
        world=1, gpu=True, learning_rate=1e-4, total_steps=10)
    assert merged["gradient_clipping"] == 0.5
    assert merged["zero_optimization"] == {**merged["zero_optimization"], "stage": 2, "reduce_bucket_size": 5e7}
    bad = [
        ({"bf16": {"enabled": True}}, False, "fp16/bf16 need GPUs"),
        ({"zero_optimization": {"stage": 7}}, True, "must be 0-3"),
        ({"gradient_clipping": "lots"}, True, "gradient_clipping"),
        ({"gradient_accumulation_steps": 4}, True, "set by Hone"),
    ]
    for override, gpu, text in bad:
        with pytest.raises(ds_config.DeepSpeedConfigError, match=text):
            ds_config.build(cfg(deepspeed=contract.DeepSpeedSettings(config_override=override)), world=1, gpu=gpu,
                            learning_rate=1e-4, total_steps=10)


def test_trainer_metrics_and_structured_logs(capsys, tmp_path: Path) -> None:
    from hone_trainer.training.report import Reporter

    port = free_port()
    reporter = Reporter(contract.ProgressReporting(kind="file", path=str(tmp_path / "p.json")), port,
                        {"namespace": "n", "finetunejob": "j", "base_model": "m"})
    reporter.report(contract.Progress(step=3, total_steps=10, train_loss=1.25, trained_tokens=900,
                                      tokens_per_second=450.0))
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    assert 'hone_trainer_step{base_model="m",finetunejob="j",namespace="n"} 3.0' in text
    assert 'hone_trainer_tokens_processed{base_model="m",finetunejob="j",namespace="n"} 900.0' in text
    assert "hone_training_tokens_total" not in text  # the operator's metric, never duplicated here
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["event"] == "progress" and line["percent"] == 30 and line["finetunejob"] == "j"
    assert json.loads((tmp_path / "p.json").read_text())["trainLoss"] == 1.25


def test_the_last_steps_report_is_retried_until_it_lands(tmp_path: Path, monkeypatch) -> None:
    import http.server
    import threading

    from hone_trainer.training.report import Reporter

    answers, received = [503, 503, 200], []

    class Api(http.server.BaseHTTPRequestHandler):
        def do_PATCH(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            code = answers.pop(0) if answers else 503
            received.append((code, body["status"]["progress"]["step"]))
            self.send_response(code)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("HONE_KUBERNETES_API", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("HONE_KUBERNETES_TOKEN_FILE", str(tmp_path / "none"))
    reporter = Reporter(contract.ProgressReporting(kind="kubernetes", namespace="n", name="j"), None, {})
    try:
        # An API server busy for a moment: the final report (the curves the status keeps) lands.
        reporter.report(contract.Progress(step=32, total_steps=32), final=True)
        assert received == [(503, 32), (503, 32), (200, 32)]
        # An ordinary report is tried once and dropped: the next one carries newer progress anyway.
        reporter.report(contract.Progress(step=33, total_steps=40))
        assert received[3:] == [(503, 33)]
    finally:
        server.shutdown()


@pytest.mark.parametrize("child, result, code", [
    # torchrun exits 1 whatever its worker exited with; rank 0's result names the trainer's own code.
    ("raise SystemExit(1)", {"ok": False, "errorCode": "model_error", "message": "no weights"}, 5),
    ("raise SystemExit(1)", {"ok": False, "errorCode": "invalid_training_file", "message": "line 3"}, 4),
    ("raise SystemExit(1)", None, 1),  # a crash: retryable
    ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", None, 137),
    ("pass", None, 0),
])
def test_launch_exits_with_the_trainers_own_code(tmp_path: Path, child: str, result, code: int) -> None:
    import subprocess
    import sys

    result_path = tmp_path / "result.json"
    config = contract.TrainerConfig(
        job=contract.JobIdentity(namespace="ns", name="j", uid="u", fine_tuned_model="ft:x:ns:j:1"),
        base_model=contract.ModelSource(location=str(tmp_path)),
        training_data=contract.DataFile(location=str(tmp_path / "train.jsonl")),
        output_uri=str(tmp_path / "out"), checkpoint_dir=str(tmp_path / "ckpt"), result_path=str(result_path))
    (tmp_path / "config.json").write_text(config.model_dump_json(by_alias=True))
    if result is not None:
        result_path.write_text(json.dumps(result))
    proc = subprocess.run([sys.executable, "-m", "hone_trainer", "launch", "--config", str(tmp_path / "config.json"),
                           "--", sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
    assert proc.returncode == code, proc.stderr


def test_launch_waits_for_the_first_nodes_rendezvous(monkeypatch) -> None:
    """A replacement pod of node 1 waits until node 0's store accepts connections before torchrun joins."""
    import socket
    import threading
    import time

    from hone_trainer.__main__ import _wait_for_rendezvous

    port = free_port()
    command = ["torchrun", "--nnodes=2", "--node-rank=1", "--master-addr=127.0.0.1", f"--master-port={port}",
               "-m", "hone_trainer", "train"]
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "0")
    started = time.monotonic()
    _wait_for_rendezvous(command, timeout=30)  # node 0 hosts the store: it waits only for its name to resolve
    assert time.monotonic() - started < 1
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "1")
    server = socket.socket()
    ready = threading.Event()

    def serve_later() -> None:
        ready.wait()
        server.bind(("127.0.0.1", port))
        server.listen()
    thread = threading.Thread(target=serve_later)
    thread.start()
    waiter = threading.Thread(target=_wait_for_rendezvous, args=(command, 30))
    waiter.start()
    waiter.join(1.0)
    assert waiter.is_alive()  # nothing listens yet: still waiting
    ready.set()
    waiter.join(10)
    assert not waiter.is_alive()
    thread.join()
    server.close()
