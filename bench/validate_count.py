"""Token counting speed: Hone's ValidatingFiles path against a plain apply_chat_template loop.

    python bench/validate_count.py [--examples 100000] [--runs 3]

Same tokenizer (SmolLM2-135M-Instruct's, from the embedded GGUF), same
synthetic chat file (1-3 turns, 5-80 words per message). Hone's path does
more than the baseline: it checks every line, and computes assistant-only
loss masks, not just the total; and it uses every core for large files, as
the validator does. The sides run interleaved, run by run. Prints examples/s
for both (median of runs), the median ratio of the pairs with their spread
and the load average (``bench/stats.py``), and checks that both count the
same number of tokens.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "operator"), str(ROOT / "trainer")]

from hone_trainer import contract, models  # noqa: E402
from hone_trainer.training.formatting import ChatFormatter  # noqa: E402
from hone_trainer.training.data import read_jsonl  # noqa: E402
from hone_trainer.training.validate import count  # noqa: E402
from stats import Paired  # noqa: E402  (bench/, the script's own folder)

WORDS = ("wheel bearing deck truck grip tape return policy warranty shipping size hardness durometer "
         "clean lubricate skate park ramp bowl street cruiser longboard bushing axle nut spacer").split()


def make_file(n: int, seed: int = 0) -> bytes:
    rng = random.Random(seed)

    def sentence(k: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(k)).capitalize() + "."

    lines = []
    for _ in range(n):
        msgs = [{"role": "system", "content": "You are Ollie Shop's support assistant."}]
        for _ in range(rng.randint(1, 3)):
            msgs += [{"role": "user", "content": sentence(rng.randint(5, 30))},
                     {"role": "assistant", "content": sentence(rng.randint(10, 80))}]
        lines.append(json.dumps({"messages": msgs}))
    return ("\n".join(lines) + "\n").encode()


def baseline(tokenizer, data: bytes) -> tuple[float, int]:
    start, tokens = time.perf_counter(), 0
    for line in data.splitlines():
        out = tokenizer.apply_chat_template(json.loads(line)["messages"], tokenize=True)
        tokens += len(out["input_ids"] if hasattr(out, "keys") else out)
    return time.perf_counter() - start, tokens


def hone(tokenizer, data: bytes) -> tuple[float, int]:
    """What the ValidatingFiles step does: read and check every line, then count (all cores)."""
    start = time.perf_counter()
    read = read_jsonl(io.BytesIO(data))
    counts = count(ChatFormatter(tokenizer, 1 << 20), read, drop_over_length=False)
    return time.perf_counter() - start, counts.tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    tokenizer = models.load_tokenizer(models.resolve(contract.ModelSource(location="embedded://smollm2-135m-instruct")))
    data = make_file(args.examples)
    times: dict[str, list[float]] = {"hone": [], "baseline": []}
    counts: dict[str, int] = {}
    paired = Paired()
    for run in range(args.runs):
        for name, fn in (("hone", hone), ("baseline", baseline)):
            seconds, tokens = fn(tokenizer, data)
            times[name].append(seconds)
            counts[name] = tokens
            print(f"run {run + 1} {name}: {args.examples / seconds:,.0f} examples/s ({tokens:,} tokens)", flush=True)
        paired.add("hone/baseline examples/s", times["baseline"][-1], times["hone"][-1])  # a speed is 1 / time
    assert counts["hone"] == counts["baseline"], counts
    h, b = statistics.median(times["hone"]), statistics.median(times["baseline"])
    print(f"\n{args.examples:,} examples, {counts['hone']:,} tokens, median of {args.runs} run(s)")
    print(f"hone (validate + count + loss masks): {args.examples / h:10,.0f} examples/s")
    print(f"baseline (apply_chat_template loop):  {args.examples / b:10,.0f} examples/s")
    print(paired.line("hone/baseline examples/s"))
    print(paired.footer())


if __name__ == "__main__":
    main()
