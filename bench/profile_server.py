"""Where the built-in server's time goes: py-spy samples it while it answers streamed requests.

    pip install py-spy
    python bench/profile_server.py [--model embedded://smollm2-135m-instruct] [--concurrency 1]
                                   [--seconds 15] [--rate 200] [--out profile.txt]

Starts ``python -m hone_trainer serve`` as ``bench/serve_throughput.py`` does,
sends greedy streamed chat requests (``--concurrency`` at a time, 48 tokens
each) for ``--seconds`` while ``py-spy record`` samples every thread of the
server, then prints for each thread the share of its samples that each
function accounts for (inclusive) and the share where the thread held the
GIL. ``--out`` keeps the raw collapsed stacks (``py-spy``'s ``raw`` format,
loadable in speedscope or flamegraph.pl).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "operator"), str(ROOT / "trainer"), str(ROOT / "devtools")]

from serve_throughput import QUESTIONS  # noqa: E402  (bench/, the script's own folder)


def load(url: str, concurrency: int, stop: threading.Event, counts: list[int]) -> list[threading.Thread]:
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="bench", max_retries=0, timeout=600)

    def worker(k: int) -> None:
        i = k
        while not stop.is_set():
            stream = client.chat.completions.create(
                model="bench", messages=[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}], max_tokens=48,
                temperature=0, stream=True, stream_options={"include_usage": True})
            for chunk in stream:
                if chunk.usage is not None:
                    counts[k] += chunk.usage.completion_tokens
            i += concurrency

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(concurrency)]
    for t in threads:
        t.start()
    return threads


def summarise(raw: Path, top: int) -> str:
    """Per thread: inclusive share of each function, and how often the thread held the GIL (``--gil`` off)."""
    per_thread: dict[str, Counter[str]] = defaultdict(Counter)
    totals: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames = stack.split(";")
        thread = frames[0]
        n = int(count)
        totals[thread] += n
        seen = set()
        for frame in frames[1:]:
            name = frame.split(" (")[0] + " (" + frame.rsplit("/", 1)[-1] if "/" in frame else frame
            if name not in seen:
                seen.add(name)
                per_thread[thread][name] += n
    lines = []
    for thread, n in totals.most_common():
        lines.append(f"{thread}: {n} samples")
        for name, k in per_thread[thread].most_common(top):
            lines.append(f"  {100 * k / n:5.1f}%  {name}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded://smollm2-135m-instruct")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--rate", type=int, default=200, help="samples per second")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if shutil.which("py-spy") is None:
        print("py-spy is not installed: pip install py-spy", file=sys.stderr)
        return 2

    import torch

    from hone_dev.serving import ServerProcess

    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(["--model", args.model, "--served-model-name", "bench", "--max-batch-size", "8",
                                "--max-concurrent-requests", "64"], cwd=Path(tmp),
                               extra_env={"OMP_NUM_THREADS": str(torch.get_num_threads())})
        try:
            server.wait_ready(timeout=600)
            stop = threading.Event()
            counts = [0] * args.concurrency
            threads = load(server.url, args.concurrency, stop, counts)
            while sum(counts) == 0:  # past the first request: the model has run once
                time.sleep(0.1)
            raw = args.out or Path(tmp) / "profile.txt"
            start, started = sum(counts), time.perf_counter()
            subprocess.run(["py-spy", "record", "--pid", str(server.proc.pid), "--rate", str(args.rate),
                            "--duration", str(args.seconds), "--threads", "--format", "raw", "--output", str(raw),
                            "--nonblocking"], check=True, capture_output=True)
            tokens, wall = sum(counts) - start, time.perf_counter() - started
            stop.set()
            for t in threads:
                t.join(timeout=120)
            print(f"model {args.model}, concurrency {args.concurrency}: {tokens / wall:.1f} completion tokens/s "
                  f"while sampled ({tokens} tokens counted at the end of each request)")
            print(summarise(raw, args.top))
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
