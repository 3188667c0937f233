"""Training throughput: Hone's trainer against Hugging Face Trainer + peft with padding.

    python bench/train_throughput.py [--runs 3] [--steps 30]

Both sides train the same LoRA adapter (r=16, all linear layers, fp32 on
CPU) on the same few-million-parameter Llama, the same chat data with
assistant-only labels (conversations of varied length), for the same number
of steps of 8 examples each. The baseline is the Trainer with the default
padding collator (each batch padded to its longest example); Hone packs each
step's examples into rows. Each side runs in its own process, interleaved
run by run; the ratio is taken within each pair of runs and its median over
the pairs is reported with their spread and the load average, with a warning
when the spread says the machine was not quiet (``bench/stats.py``).

Prints trained tokens/s for both (real tokens, padding excluded), their
ratio, and the share of processed positions that are padding. Goal: ratio
>= 1.5 and padding under 2%.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "operator"), str(ROOT / "trainer"), str(ROOT / "devtools")]

from stats import Paired  # noqa: E402  (bench/, the script's own folder)

BATCH = 8


def build(folder: Path, n_examples: int) -> None:
    """Tokenizer, a ~3.5M-parameter Llama and a chat file with 20-260-token conversations."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from hone_dev.tiny import CORPUS, make_tokenizer

    tok = make_tokenizer(folder / "model", vocab_size=1000)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=2048,
                         pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    model.save_pretrained(str(folder / "model"), safe_serialization=True)
    words = " ".join(CORPUS).split()
    rng = random.Random(1)
    lines = []
    for _ in range(n_examples):
        q = " ".join(rng.choice(words) for _ in range(rng.randint(3, 40)))
        a = " ".join(rng.choice(words) for _ in range(rng.choice([rng.randint(3, 20), rng.randint(40, 150)])))
        lines.append(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}))
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    n_params = sum(p.numel() for p in model.parameters())
    (folder / "info.json").write_text(json.dumps({"params": n_params}))


def encoded(folder: Path):
    from hone_trainer import contract, models
    from hone_trainer.training.formatting import ChatFormatter
    from hone_trainer.training.data import read_jsonl

    tok = models.load_tokenizer(models.resolve(contract.ModelSource(location=str(folder / "model"))))
    return tok, ChatFormatter(tok, 2048).encode(read_jsonl(open(folder / "train.jsonl", "rb")).examples)


def run_hone(folder: Path, steps: int) -> dict:
    from hone_trainer import contract
    from hone_trainer.training import packing
    from hone_trainer.training.trainer import Trainer

    n = sum(1 for _ in open(folder / "train.jsonl"))
    config = contract.TrainerConfig(
        job=contract.JobIdentity(namespace="bench", name="b", uid="u", fine_tuned_model="ft:b:bench::u"),
        base_model=contract.ModelSource(location=str(folder / "model")),
        training_data=contract.DataFile(location=str(folder / "train.jsonl")),
        epochs=1, batch_size=BATCH, learning_rate_multiplier=1.0, max_seq_length=2048, seed=0,
        lora=contract.LoraConfig(r=16, alpha=32, dropout=0.0),
        output_uri=str(folder / f"out-{os.getpid()}"), checkpoint_dir=str(folder / f"ckpt-{os.getpid()}"),
        checkpoint_interval_steps=10**6, metrics_port=None, result_path=None)
    assert n == steps * BATCH
    trainer = Trainer(config)
    trainer.setup()
    # Time the training loop only: the final checkpoint and publishing have no
    # counterpart in the baseline (save_strategy="no").
    excluded = {"seconds": 0.0}
    for name in ("save", "publish"):
        original = getattr(trainer, name)

        def timed(*a, _original=original, **k):
            t = time.perf_counter()
            try:
                return _original(*a, **k)
            finally:
                excluded["seconds"] += time.perf_counter() - t
        setattr(trainer, name, timed)
    start = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - start - excluded["seconds"]
    pad = real = 0
    for step in range(steps):
        rows = packing.pack(packing.step_examples(n, BATCH, 0, step), trainer.train_data, trainer.pack_length)
        longest = max(len(r) for r in rows)
        real += sum(len(r) for r in rows)
        pad += longest * len(rows) - sum(len(r) for r in rows)
    trainer.close()
    return {"seconds": seconds, "tokens": result.trained_tokens, "padding": pad / (pad + real)}


def run_baseline(folder: Path, steps: int) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    tok, data = encoded(folder)
    rows = [{"input_ids": e.input_ids, "attention_mask": [1] * len(e.input_ids), "labels": e.labels} for e in data]
    model = AutoModelForCausalLM.from_pretrained(str(folder / "model"), use_safetensors=True, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    collator = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100)
    padding = {"pad": 0, "real": 0}

    def counting_collator(features):
        batch = collator(features)
        mask = batch["attention_mask"]
        padding["real"] += int(mask.sum())
        padding["pad"] += int(mask.numel() - mask.sum())
        return batch

    args = TrainingArguments(output_dir=str(folder / f"hf-{os.getpid()}"), per_device_train_batch_size=BATCH,
                             max_steps=steps, learning_rate=2e-4, logging_steps=10**6, save_strategy="no",
                             report_to=[], use_cpu=True, dataloader_num_workers=0, seed=0,
                             disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=counting_collator)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "tokens": padding["real"],
            "padding": padding["pad"] / (padding["pad"] + padding["real"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--side", choices=["hone", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        fn = run_hone if args.side == "hone" else run_baseline
        print("RESULT " + json.dumps(fn(args.folder, args.steps)), flush=True)
        return

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        build(folder, args.steps * BATCH)
        params = json.loads((folder / "info.json").read_text())["params"]
        env = {**os.environ, "OMP_NUM_THREADS": str(os.cpu_count() or 1), "DS_ACCELERATOR": "cpu",
               "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "operator"), str(ROOT / "trainer")])}
        results: dict[str, list[dict]] = {"hone": [], "baseline": []}
        paired = Paired()
        for run in range(args.runs):
            for side in ("hone", "baseline"):
                out = subprocess.run([sys.executable, __file__, "--side", side, "--folder", str(folder),
                                      "--steps", str(args.steps)], env=env, capture_output=True, text=True)
                line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
                if line is None:
                    raise SystemExit(f"{side} failed:\n{out.stderr[-3000:]}")
                r = json.loads(line.removeprefix("RESULT "))
                results[side].append(r)
                print(f"run {run + 1} {side:8}: {r['tokens'] / r['seconds']:8,.0f} trained tokens/s, "
                      f"padding {100 * r['padding']:.1f}%", flush=True)
            hone, base = results["hone"][-1], results["baseline"][-1]
            paired.add("hone/baseline tokens/s", hone["tokens"] / hone["seconds"], base["tokens"] / base["seconds"])
    tps = {s: statistics.median(r["tokens"] / r["seconds"] for r in rs) for s, rs in results.items()}
    pad = {s: statistics.median(r["padding"] for r in rs) for s, rs in results.items()}
    print(f"\nLlama with {params / 1e6:.1f}M parameters, LoRA r=16, {args.steps} steps x {BATCH} examples, "
          f"median of {args.runs} run(s)")
    print(f"hone     {tps['hone']:10,.0f} tokens/s   padding {100 * pad['hone']:5.1f}%")
    print(f"baseline {tps['baseline']:10,.0f} tokens/s   padding {100 * pad['baseline']:5.1f}%")
    print(paired.line("hone/baseline tokens/s", goal=1.5))
    print(f"padding goal < 2%: {'met' if pad['hone'] < 0.02 else 'NOT met'}")
    print(paired.footer())


if __name__ == "__main__":
    main()
