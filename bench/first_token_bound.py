"""How close a burst's first tokens can come to one request's: the bound the engine's own prefill costs set.

    python bench/first_token_bound.py [--model embedded://smollm2-135m-instruct] [--burst 8] [--rounds 7]
                                      [--dtype float32|bfloat16]

Issue #15 asks that at concurrency 8 the time to first token be at most 2x that at
concurrency 1. This measures what the server's first tokens are made of, without
the server: the serving engine in this process (the server's engine, its prefix
cache as the server keeps it, warm with the chat template), prefilling ``k`` of
``bench/serve_throughput.py``'s prompts in one step (``Engine._prefill``, what the
engine's thread runs), for ``k`` = 1, the halves of a burst, and the whole burst;
every size once a round, in a shuffled order, ``--rounds`` rounds, medians. Every
prompt is new (another order number), as in the benchmark.

From those costs it prints the burst's median first token, over the prefill
alone (no HTTP, no tokenizing, no other work sharing the cores), under two
schedules, against one request's:

- as the engine schedules a burst that arrives the way the benchmark's does (its
  first request alone, the rest while that one is prefilled): the first request
  prefilled alone, then the rest in two halves, back to back;
- the whole burst prefilled in one step from the start, as a server could only
  do by holding the first request until the rest came (which would add that wait
  to every request that comes alone).

With the first, the burst's median first token cannot be earlier than the sum
of the prefill costs ahead of it: so when the bound printed is above 2x, the
goal is out of reach on this machine for that schedule, whatever the server
around the engine does. ``--dtype bfloat16`` measures the same in bfloat16 (the
server computes in float32 on a CPU, so its answers equal ``generate``'s).
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "operator"), str(ROOT / "trainer"), str(ROOT / "devtools")]

from serve_throughput import QUESTIONS  # noqa: E402  (bench/, the script's own folder)


def schedule_median(cost: dict[int, float], sizes: list[int]) -> float:
    """The median first token of a burst prefilled as ``sizes`` (step after step, each step's rows
    getting their first token at its end), from the prefill cost of each step size."""
    done, firsts = 0.0, []
    for k in sizes:
        done += cost[k]
        firsts += [done] * k
    return statistics.median(firsts)


def halves(burst: int) -> list[int]:
    """The steps the engine prefills a burst in when its first request comes alone: 1, then the rest in
    two halves (the larger first)."""
    rest = burst - 1
    return [1, (rest + 1) // 2, rest // 2] if rest > 1 else [1, rest]


def prefill_costs(model_loc: str, burst: int, rounds: int, dtype: str = "float32"
                  ) -> tuple[dict[int, float], dict[int, int]]:
    """Seconds of one prefill step of ``k`` fresh prompts (medians of ``rounds``), and the tokens it computed,
    for ``k`` in 1, the halves of the burst's rest, the rest and the whole burst."""
    import torch

    from hone_trainer import models
    from hone_trainer.contract import ModelSource, ServerConfig
    from hone_trainer.serving.engine import BASE_ADAPTER, Engine, SamplingParams, SequenceState

    torch.set_grad_enabled(False)
    local = models.resolve(ModelSource(location=model_loc))
    tok = models.load_tokenizer(local)
    model = models.load_model(local, getattr(torch, dtype)).eval()
    engine = Engine(model, tok, max_batch_size=burst,
                    prefix_cache_tokens=ServerConfig.model_fields["prefix_cache_tokens"].default)
    orders = itertools.count(1000)

    def prompts(n: int) -> list[list[int]]:
        chats = [[{"role": "user", "content": f"Order {next(orders)}: {QUESTIONS[i % len(QUESTIONS)]}"}]
                 for i in range(n)]
        return [tok.apply_chat_template(c, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
                for c in chats]

    def prefill(k: int) -> tuple[float, int]:
        seqs = [SequenceState(p, BASE_ADAPTER, SamplingParams(max_tokens=1, temperature=0.0), lambda ev: None)
                for p in prompts(k)]
        with torch.inference_mode():
            started = time.perf_counter()
            engine._prefill(seqs)  # max_tokens=1: every row finishes in it and leaves the batch
            took = time.perf_counter() - started
        assert not len(engine._batch)
        return took, sum(len(s.prompt_ids) - s.cached_tokens for s in seqs)

    sizes = sorted({*halves(burst), burst - 1, burst})
    for k in sizes * 2:  # warm-up; the prefix cache now holds what the prompts share
        prefill(k)
    times: dict[int, list[float]] = {k: [] for k in sizes}
    tokens: dict[int, int] = {}
    rng = random.Random(0)
    for _ in range(rounds):
        for k in rng.sample(sizes, len(sizes)):
            took, tokens[k] = prefill(k)
            times[k].append(took)
    return {k: statistics.median(v) for k, v in times.items()}, tokens


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded://smollm2-135m-instruct")
    parser.add_argument("--burst", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    args = parser.parse_args()
    if args.burst < 2:
        parser.error("--burst: at least 2")

    import torch

    cost, tokens = prefill_costs(args.model, args.burst, args.rounds, args.dtype)
    print(f"model {args.model} on CPU ({args.dtype}, {torch.get_num_threads()} threads), burst of {args.burst}, "
          f"median of {args.rounds} shuffled rounds")
    for k in sorted(cost):
        print(f"  prefill of {k} new prompt(s) ({tokens[k]} tokens not in the prefix cache): {1000 * cost[k]:7.1f} ms"
              f"   ({cost[k] / cost[1]:.2f}x one)")
    one, rest, plan = cost[1], args.burst - 1, halves(args.burst)
    for name, steps in ((f"first alone, then the rest in halves {'+'.join(map(str, plan[1:]))} (the engine)", plan),
                        (f"first alone, then the rest ({rest}) in one step", [1, rest]),
                        (f"all {args.burst} in one step (holding the first for the rest)", [args.burst])):
        median = schedule_median(cost, steps)
        print(f"  burst's median first token, {name}: {1000 * median:6.1f} ms = {median / one:.2f}x one request's")
    print("  (prefill alone: the server adds HTTP, tokenizing and the other requests' work on the same cores)")
    return 0

if __name__ == "__main__":
    sys.exit(main())
