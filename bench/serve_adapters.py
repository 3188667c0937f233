"""Mixed adapters in one batch: 8 requests over 4 LoRA adapters against 8 requests on one adapter.

    python bench/serve_adapters.py [--model embedded://smollm2-135m-instruct] [--runs 5]
                                   [--adapters 4] [--max-tokens 48] [--rank 16]

The server's engine (``hone_trainer.serving.engine``, what ``hone serve``
runs) gets 8 greedy requests at once, every one for adapter ``a0`` (the
baseline), or spread round-robin over ``--adapters`` adapters (the
candidate): one batch, each row through its own adapter's LoRA matrices.
The adapters are LoRA over every linear layer (Hone's default targets and
rank) with random, non-zero weights, loaded the way the server loads
published adapters (peft, one ``PeftModel`` with an adapter per name). Both
sides run in the same process, interleaved run by run, and the ratio is
taken per pair (``bench/stats.py``). Requests run to ``--max-tokens`` (no
end-of-sequence), so both sides compute the same number of tokens.

Goal (issue #15): the mixed batch within 1.2x of the single-adapter batch,
i.e. its tokens/s ratio >= 1/1.2.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "operator"), str(ROOT / "trainer"), str(ROOT / "devtools")]

from stats import Paired  # noqa: E402  (bench/, the script's own folder)

from serve_throughput import QUESTIONS  # noqa: E402  (the same requests as the throughput benchmark)

BATCH = 8
GOAL = 1 / 1.2


def build(model_loc: str, adapters: int, rank: int):
    import torch
    from peft import LoraConfig, get_peft_model

    from hone_trainer import models
    from hone_trainer.contract import ModelSource
    from hone_trainer.serving import loading

    local = models.resolve(ModelSource(location=model_loc))
    tok = models.load_tokenizer(local)
    device, dtype = loading.device_and_dtype()  # what the server picks
    model = models.load_model(local, dtype).to(device)
    torch.manual_seed(0)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear", init_lora_weights=False)
    model = get_peft_model(model, config, adapter_name="a0")
    for i in range(1, adapters):
        model.add_adapter(f"a{i}", config)
    model.eval()
    return model, tok


def run(engine_mod, model, tok, prompts: list[list[int]], names: list[str], max_tokens: int) -> float:
    """Completion tokens/s of one batch: ``prompts[i]`` through adapter ``names[i]``, all submitted at once."""
    engine = engine_mod.Engine(model, tok, max_batch_size=BATCH, adapters=list(model.peft_config))
    done = threading.Semaphore(0)

    def emit(event) -> None:
        if event.finished:
            done.release()

    seqs = [engine_mod.SequenceState(prompt_ids=p, adapter=n, emit=emit,
                                     params=engine_mod.SamplingParams(max_tokens=max_tokens, temperature=0))
            for p, n in zip(prompts, names)]
    engine.start()
    try:
        started = time.perf_counter()
        engine.submit(seqs)
        for _ in seqs:
            done.acquire()
        wall = time.perf_counter() - started
    finally:
        engine.stop()
    assert all(len(s.generated) == max_tokens for s in seqs), [len(s.generated) for s in seqs]
    return sum(len(s.generated) for s in seqs) / wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded://smollm2-135m-instruct")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--adapters", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--rank", type=int, default=16)
    args = parser.parse_args()

    import torch

    from hone_trainer.serving import engine as engine_mod

    torch.set_grad_enabled(False)
    # Loaded on a thread that ends before the engine's starts, as the server loads: while a thread that has run
    # torch's parallel work lives on (this one, had it loaded the model), the engine thread's OpenMP team
    # competes with its team and every step runs 1.6-2.4x slower (engine.py).
    loaded: list[tuple[object, object]] = []

    def load() -> None:
        model, tok = build(args.model, args.adapters, args.rank)
        engine_mod.Engine(model, tok, adapters=list(model.peft_config))  # stacks and packs the layers, once
        loaded.append((model, tok))

    loader = threading.Thread(target=load)
    loader.start()
    loader.join()
    model, tok = loaded[0]
    prompts = [tok.apply_chat_template([{"role": "user", "content": QUESTIONS[i]}], add_generation_prompt=True,
                                       tokenize=True, return_dict=True)["input_ids"] for i in range(BATCH)]
    one = ["a0"] * BATCH
    mixed = [f"a{i % args.adapters}" for i in range(BATCH)]
    run(engine_mod, model, tok, prompts, mixed, 4)  # warm-up
    paired = Paired()
    name = f"{args.adapters} adapters vs 1, tokens/s"
    results: dict[str, list[float]] = {"one adapter": [], f"{args.adapters} adapters": []}
    for i in range(args.runs):
        base = run(engine_mod, model, tok, prompts, one, args.max_tokens)
        cand = run(engine_mod, model, tok, prompts, mixed, args.max_tokens)
        results["one adapter"].append(base)
        results[f"{args.adapters} adapters"].append(cand)
        paired.add(name, cand, base)
        print(f"run {i + 1}/{args.runs} done", file=sys.stderr, flush=True)
    import statistics

    print(f"model {args.model}, LoRA r={args.rank} on every linear layer, {BATCH} requests x {args.max_tokens} "
          f"tokens in one batch, greedy, median of {args.runs} interleaved runs, {torch.get_num_threads()} threads")
    for label, values in results.items():
        print(f"{label:<16} {statistics.median(values):7.1f} tokens/s")
    print(paired.line(name, goal=GOAL))
    print(paired.footer())
    return 0


if __name__ == "__main__":
    sys.exit(main())
