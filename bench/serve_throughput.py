"""Serving throughput: the built-in server against one-at-a-time ``model.generate``.

    python bench/serve_throughput.py [--model embedded://smollm2-135m-instruct] [--runs 3]
                                     [--requests 16] [--max-tokens 48] [--cpu-linear auto|packed|dense]

Both sides answer chat requests of the same kind (different questions, greedy
decoding, at most ``--max-tokens`` completion tokens) with the same weights:
the baseline loads the model in this process and calls plain transformers
``generate`` for one request after another; the server
(``python -m hone_trainer serve``, continuous batching) is called through the
``openai`` client at concurrency 1, 4 and 8. Completion tokens are counted
from what each side actually generated (the server's ``usage``), so an early
end-of-sequence counts the same on both sides. Every request is a prompt the
server has not seen before: each question is asked about another order
(``Order 1042: ...``), as a service's users ask their own questions after the
same system prompt. The server's prefix cache keeps what prompts share (the
chat template, ``Order 10``) and computes the rest; the same prompts repeated
in every run and setting would leave it only their last token to compute,
which real traffic does not do.

The sides run interleaved, run by run (baseline, then the server at each
concurrency, then the baseline again...), and each ratio is taken against the
baseline of its own run: contention that slows one run slows both sides of
its pairs (``bench/stats.py``). Prints, per setting, the median over
``--runs`` runs of completion tokens/s, of the per-request latency p50/p99 and
of the time to first token (requests are streamed, usage included), then the
median ratio of the pairs with their spread, the load average, and a warning
when the spread says the machine was not quiet.

Goals (issue #15): concurrency 1 >= 1.0x the baseline, concurrency 8 >= 4x,
and time to first token at concurrency 8 <= 2x that at concurrency 1. On a CPU it
then prints the least that last ratio can be on this machine, from the engine's own
prefill costs (``bench/first_token_bound.py``, about 15 s more).
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "operator"), str(ROOT / "trainer"), str(ROOT / "devtools")]

from stats import Paired, percentile  # noqa: E402  (bench/, the script's own folder)

CONCURRENCY = (1, 4, 8)
#: Tokens/s against the baseline, per concurrency (issue #15).
GOALS = {1: 1.0, 8: 4.0}

QUESTIONS = [
    "Which wheel hardness should I pick for rough streets?", "How often should I clean my bearings?",
    "What is your return policy?", "Do you ship to Porto?", "How wide should my deck be for size 44 shoes?",
    "What does a tune-up include?", "Can I return a deck I have ridden once?", "Are your bearings ABEC rated?",
    "How long does grip tape last?", "Which trucks fit an 8.25 inch deck?", "Do you sell complete boards?",
    "How do I stop wheel bite?", "¿Tienen ruedas de 54mm?", "Vocês entregam em Lisboa?",
    "What is the warranty on decks?", "Where is the shop?",
]


def baseline(model_loc: str, requests: list[list[dict[str, str]]], max_tokens: int) -> dict[str, float]:
    import torch

    from hone_trainer import models
    from hone_trainer.contract import ModelSource
    from hone_trainer.serving import loading

    local = models.resolve(ModelSource(location=model_loc))
    tok = models.load_tokenizer(local)
    device, dtype = loading.device_and_dtype()  # what the server picks
    model = models.load_model(local, dtype).to(device)
    model.eval()
    latencies, tokens = [], 0
    with torch.inference_mode():  # warm-up (the server gets one too): kernels chosen and loaded, caches filled
        model.generate(input_ids=torch.tensor([[1, 2, 3]], device=device), max_new_tokens=2, do_sample=False,
                       pad_token_id=tok.pad_token_id or tok.eos_token_id)
    started = time.perf_counter()
    for messages in requests:
        t0 = time.perf_counter()
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                      return_dict=True)["input_ids"].to(device)
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                                 do_sample=False, pad_token_id=tok.pad_token_id or tok.eos_token_id)
        if device == "cuda":
            torch.cuda.synchronize()
        tokens += out.shape[1] - ids.shape[1]
        latencies.append(time.perf_counter() - t0)
    wall = time.perf_counter() - started
    return {"tok_s": tokens / wall, "p50": percentile(latencies, 50), "p99": percentile(latencies, 99)}


def against_server(url: str, requests: list[list[dict[str, str]]], max_tokens: int, concurrency: int,
                   model: str) -> dict[str, float]:
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="bench", max_retries=0, timeout=600)

    def one(messages: list[dict[str, str]]) -> tuple[float, float, int]:
        t0 = time.perf_counter()
        first, tokens = None, 0
        stream = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,
                                                temperature=0, stream=True, stream_options={"include_usage": True})
        for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter() - t0
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        return time.perf_counter() - t0, first if first is not None else time.perf_counter() - t0, tokens

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, requests))
    wall = time.perf_counter() - started
    latencies = [r[0] for r in results]
    return {"tok_s": sum(r[2] for r in results) / wall, "p50": percentile(latencies, 50),
            "p99": percentile(latencies, 99), "ttft": statistics.median(r[1] for r in results)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded://smollm2-135m-instruct")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--cpu-linear", choices=("auto", "packed", "dense"), default="auto",
                        help="the server's linear path on CPU (to compare them: a run with each)")
    args = parser.parse_args()

    from hone_dev.serving import ServerProcess

    orders = itertools.count(1000)

    def fresh(n: int) -> list[list[dict[str, str]]]:
        """``n`` requests no earlier one began like, but for what every request shares."""
        return [[{"role": "user", "content": f"Order {next(orders)}: {QUESTIONS[i % len(QUESTIONS)]}"}]
                for i in range(n)]

    results: dict[str, list[dict[str, float]]] = {}
    paired = Paired()
    base_name = "baseline generate, one at a time"
    with tempfile.TemporaryDirectory() as tmp:
        # The server gets the CPU threads the baseline has (torch's default here: one per core), as a pod gets
        # its CPU limit; the test suite's servers run on one thread.
        import torch

        server = ServerProcess(["--model", args.model, "--served-model-name", "bench",
                                "--max-batch-size", str(args.max_batch_size),
                                "--max-concurrent-requests", "64", "--cpu-linear", args.cpu_linear], cwd=Path(tmp),
                               extra_env={"OMP_NUM_THREADS": str(torch.get_num_threads())})
        try:
            server.wait_ready(timeout=600)
            against_server(server.url, fresh(2), 4, 2, "bench")  # warm-up
            for run in range(args.runs):
                base = baseline(args.model, fresh(args.requests), args.max_tokens)
                results.setdefault(base_name, []).append(base)
                for c in CONCURRENCY:
                    r = against_server(server.url, fresh(args.requests), args.max_tokens, c, "bench")
                    results.setdefault(f"hone server, concurrency {c}", []).append(r)
                    paired.add(f"concurrency {c} tokens/s vs baseline", r["tok_s"], base["tok_s"])
                ttft = {c: results[f"hone server, concurrency {c}"][-1]["ttft"] for c in (1, CONCURRENCY[-1])}
                paired.add(f"time to first token, concurrency {CONCURRENCY[-1]} vs 1", ttft[CONCURRENCY[-1]], ttft[1])
                print(f"run {run + 1}/{args.runs}: baseline {base['tok_s']:.1f} tokens/s; server " +
                      ", ".join(f"c{c} {results[f'hone server, concurrency {c}'][-1]['tok_s']:.1f}" for c in CONCURRENCY)
                      + f"; TTFT c1 {ttft[1]:.3f} s, c{CONCURRENCY[-1]} {ttft[CONCURRENCY[-1]]:.3f} s",
                      file=sys.stderr, flush=True)
        finally:
            server.stop()
    from hone_trainer.serving import loading

    device, dtype = loading.device_and_dtype()
    where = f", {torch.cuda.get_device_name()}" if device == "cuda" else ""
    gpu = f"{where} ({str(dtype).removeprefix('torch.')})"
    print(f"model {args.model}, {args.requests} requests x <= {args.max_tokens} tokens, greedy, "
          f"median of {args.runs} interleaved runs, {os.cpu_count()} CPUs{gpu}")
    print(f"{'setting':<36} {'tokens/s':>9} {'p50 s':>7} {'p99 s':>7} {'TTFT s':>7}")
    for name, runs in results.items():
        ttft = f"{statistics.median(r['ttft'] for r in runs):7.2f}" if "ttft" in runs[0] else f"{'-':>7}"
        print(f"{name:<36} {statistics.median(r['tok_s'] for r in runs):9.1f} "
              f"{statistics.median(r['p50'] for r in runs):7.2f} {statistics.median(r['p99'] for r in runs):7.2f} "
              f"{ttft}")
    print()
    for c in CONCURRENCY:
        print(paired.line(f"concurrency {c} tokens/s vs baseline", goal=GOALS.get(c)))
    print(paired.line(f"time to first token, concurrency {CONCURRENCY[-1]} vs 1", goal=2.0, higher_is_better=False))
    if device == "cpu":  # what the first-token ratio can be here, from the engine's own prefill costs
        from first_token_bound import halves, prefill_costs, schedule_median

        cost, _ = prefill_costs(args.model, CONCURRENCY[-1], rounds=5)
        print(f"  the engine's prefill alone puts a burst of {CONCURRENCY[-1]}'s median first token at "
              f"{schedule_median(cost, halves(CONCURRENCY[-1])) / cost[1]:.2f}x one request's on this machine "
              "(bench/first_token_bound.py)")
    print(paired.footer())
    return 0


if __name__ == "__main__":
    sys.exit(main())
