"""One sequence through the serving engine's steps against ``generate``, with torch.profiler tables of both.

    python bench/engine_profile.py --model DIR_OR_LOCATION [--tokens 48] [--batch 1] [--rows 15] [--rounds 3]

No server, no threads: the engine's own prefill and decode steps
(``Engine._prefill``/``Engine._decode``, what its thread runs) called in a
loop, so what is left is the engine's cost per step against transformers'
``generate`` on the same prompts. Prints the milliseconds per step of each,
interleaved over 3 rounds (medians; ``--rounds``), then ``torch.profiler``'s top operators
of 10 decode steps of each (CPU time, and CUDA time on a GPU): where a step's
time goes, by operator. The engine's steps are timed twice: with its own
decoding step (:mod:`hone_trainer.serving.decode`, where the model is a Llama)
and through the model's ``forward``. Variants: the engine with transformers' own cache
layers instead of its in-place one (``--plain-cache``).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "operator"), str(ROOT / "trainer"), str(ROOT / "devtools")]

from serve_throughput import QUESTIONS  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded://smollm2-135m-instruct")
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rows", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--plain-cache", action="store_true")
    args = parser.parse_args()

    import torch

    from hone_trainer import models
    from hone_trainer.contract import ModelSource
    from hone_trainer.serving import loading
    from hone_trainer.serving.engine import Engine, SamplingParams, SequenceState

    torch.set_grad_enabled(False)
    local = models.resolve(ModelSource(location=args.model))
    tok = models.load_tokenizer(local)
    device, dtype = loading.device_and_dtype()  # what the server picks
    cuda = device == "cuda"
    model = models.load_model(local, dtype).to(device).eval()
    engine = Engine(model, tok, max_batch_size=args.batch)
    if args.plain_cache:
        engine.can_join = False
    prompts = [tok.apply_chat_template([{"role": "user", "content": QUESTIONS[i]}], add_generation_prompt=True,
                                       tokenize=True, return_dict=True)["input_ids"] for i in range(args.batch)]

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def profiler(on: bool) -> Any:
        if not on:
            return contextlib.nullcontext()
        activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
        return torch.profiler.profile(activities=activities)

    own_step = engine.decode_step

    def engine_steps(n: int, profile: bool = False, model_forward: bool = False):
        engine.decode_step = None if model_forward else own_step
        seqs = [SequenceState(prompt_ids=p, adapter="__base__", emit=lambda ev: None,
                              params=SamplingParams(max_tokens=n + 1, temperature=0)) for p in prompts]
        engine.submit(seqs)
        with torch.inference_mode():
            engine._prefill(engine._admit())
            sync()
            started = time.perf_counter()
            with profiler(profile) as prof:
                for _ in range(n):
                    engine._decode()
                sync()
            return (time.perf_counter() - started) / n, prof

    def generate_steps(n: int, profile: bool = False):
        tok.padding_side = "left"
        enc = tok([tok.decode(p) for p in prompts], return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(device) for k, v in enc.items()}
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

        def run(k: int) -> None:
            model.generate(**enc, max_new_tokens=k, min_new_tokens=k, do_sample=False, pad_token_id=pad)

        with torch.inference_mode():
            run(1)  # prefill alone, to take it out of the per-step figure
            sync()
            t = time.perf_counter()
            run(1)
            sync()
            prefill = time.perf_counter() - t
            with profiler(profile) as prof:
                t = time.perf_counter()
                run(n + 1)
                sync()
                wall = time.perf_counter() - t
            return (wall - prefill) / n, prof

    engine_steps(4)
    engine_steps(4, model_forward=True)
    generate_steps(4)
    ours, forward, theirs = [], [], []
    for _ in range(args.rounds):
        theirs.append(generate_steps(args.tokens)[0])
        ours.append(engine_steps(args.tokens)[0])
        forward.append(engine_steps(args.tokens, model_forward=True)[0])
    e, f, g = statistics.median(ours), statistics.median(forward), statistics.median(theirs)
    where = torch.cuda.get_device_name() if cuda else "CPU"
    print(f"model {args.model} on {where} ({dtype}), batch {args.batch}, {args.tokens} decode steps, "
          f"median of {args.rounds} interleaved rounds{', plain cache layers' if args.plain_cache else ''}")
    print(f"engine decode step   {1000 * e:7.2f} ms")
    if own_step is not None:
        print(f"  through the model's forward {1000 * f:7.2f} ms   (own step / model's forward: {e / f:.2f}x)")
    print(f"generate decode step {1000 * g:7.2f} ms   (engine / generate: {e / g:.2f}x)")
    for name, fn in (("engine", engine_steps), ("generate", generate_steps)):
        _, prof = fn(10, profile=True)
        key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
        print(f"\n{name}: 10 decode steps, top operators by self CPU time")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
        if cuda:
            print(f"{name}: by self CUDA time")
            print(prof.key_averages().table(sort_by=key, row_limit=args.rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
