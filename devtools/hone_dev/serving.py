"""Adapters trained by the real trainer, and the real server as a subprocess."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import urllib.error
import urllib.request

from hone_dev import ROOT
from hone_trainer import contract


def env() -> dict[str, str]:
    paths = [str(ROOT / "operator"), str(ROOT / "trainer"), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths),
            "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def train_adapter(folder: Path, model: Path, name: str, answer: str, epochs: int = 4) -> Path:
    """Fine-tune a LoRA adapter that answers every question with ``answer``; returns the published folder."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"messages": [{"role": "user", "content": f"Question {i} about skateboards"},
                                      {"role": "assistant", "content": answer}]}) for i in range(24)]
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    config = contract.TrainerConfig(
        job=contract.JobIdentity(namespace="local", name=name, uid=f"{name}-uid",
                                 fine_tuned_model=f"ft:tiny:local:{name}:{name[:8]}"),
        base_model=contract.ModelSource(location=str(model)),
        training_data=contract.DataFile(location=str(folder / "train.jsonl")),
        epochs=epochs, batch_size=8, learning_rate_multiplier=50.0,
        output_uri=str(folder / "model"), checkpoint_dir=str(folder / "ckpt"), metrics_port=None,
        result_path=str(folder / "result.json"),
    )
    (folder / "config.json").write_text(config.model_dump_json(by_alias=True))
    proc = subprocess.run([sys.executable, "-m", "hone_trainer", "train", "--config", str(folder / "config.json")],
                          env=env(), capture_output=True, text=True, timeout=300, cwd=folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder / "model"


def http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 60) -> tuple[int, str]:
    """A raw HTTP call (for what an OpenAI client would refuse to send); returns (status, body)."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``python -m hone_trainer serve`` on a loopback port bound here and handed over (``--listen-fd``), so no
    other process on the machine can take it before the server listens."""

    def __init__(self, args: list[str], cwd: Path, extra_env: dict[str, str] | None = None):
        with socket.create_server(("127.0.0.1", 0)) as listener:
            self.port = listener.getsockname()[1]
            self.url = f"http://127.0.0.1:{self.port}"
            self.log = cwd / f"server-{self.port}.log"
            self._log = open(self.log, "w")
            self.proc = subprocess.Popen([sys.executable, "-m", "hone_trainer", "serve", "--listen-fd",
                                          str(listener.fileno()), *args], env={**env(), **(extra_env or {})},
                                         cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT,
                                         pass_fds=(listener.fileno(),))

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.output()[-3000:]}")
            try:
                if http("GET", f"{self.url}/ready", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"server not ready after {timeout}s:\n{self.output()[-3000:]}")

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log.read_text()

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        from prometheus_client.parser import text_string_to_metric_families

        status, text = http("GET", f"{self.url}/metrics", timeout=10)
        assert status == 200, text
        out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return out

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()


def reference_generations(base: Path, adapters: dict[str, Path], prompts: list[list[dict[str, Any]]],
                          max_tokens: int) -> dict[tuple[str, int], str]:
    """Greedy answers from plain transformers + peft (no Hone code): (model name, prompt index) -> text.

    The key ``"base"`` is the base model without any adapter.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base))
    out: dict[tuple[str, int], str] = {}
    for name, path in [("base", None), *adapters.items()]:
        model = AutoModelForCausalLM.from_pretrained(str(base), use_safetensors=True)
        if path is not None:
            model = PeftModel.from_pretrained(model, str(path))
        model.eval()
        for i, messages in enumerate(prompts):
            ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                          return_dict=True)["input_ids"]
            with torch.no_grad():
                gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                                     do_sample=False, pad_token_id=tok.pad_token_id)
            out[(name, i)] = tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True)
    return out
