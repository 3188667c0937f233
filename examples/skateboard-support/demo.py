"""The README demo: validate -> fine-tune -> serve -> answer, all on this machine.

    python examples/skateboard-support/demo.py [--quick]

Runs the `hone` commands a user would type, on the files in this folder:

1. ``hone validate finetunejob.yaml``: the data checked and counted with the model's own
   tokenizer, and the estimate for the manifest's hyperparameters;
2. ``hone run finetunejob.yaml``: fine-tunes SmolLM2-135M-Instruct (embedded, no hub),
   prints the held-out validation loss before and after and the loss curves;
3. ``hone serve modelserving.yaml`` in the background;
4. ``hone chat``: a held-out question (not in the training data) to the base model and
   to the fine-tuned model, then the token counters from ``/metrics``.

``--quick`` trains one epoch on a few examples (for the test that keeps this script
working); the answer then shows the plumbing, not the learning. Results go where `hone`
itself puts them, ``.hone/run`` and ``.hone/pvc`` (``--workdir`` moves both), so the
README's next commands (``hone serve examples/skateboard-support/modelserving.yaml``)
find the model; run it again and training resumes from its last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SYSTEM = ("You are the customer support assistant of Ollie's Skate Supply, a skateboard shop in Lisbon. "
          "Answer with the shop's own policies, briefly and precisely.")
QUESTION = "What is your return policy? I bought wheels last week."  # validation.jsonl, line 1 (held out)
FACT = re.compile(r"\b45[- ]days?\b")  # the return window: only the training data says so


def hone(*args: str, env: dict[str, str], check: bool = True, **kw) -> subprocess.CompletedProcess:
    print(f"\n$ hone {shlex.join(args)}", flush=True)
    proc = subprocess.run([sys.executable, "-m", "hone_operator.cli", *args], env=env, text=True, **kw)
    if check and proc.returncode != 0:
        raise SystemExit(f"demo: `hone {args[0]}` failed with exit code {proc.returncode}")
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, server: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"demo: `hone serve` exited with code {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/ready", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"demo: the server was not ready after {timeout:.0f}s")


def quick_copy(target: Path) -> Path:
    """This folder with 12 training and 3 validation examples and one epoch; the evaluation step grades 3 eval
    questions and leaves out the safety suite (64 more answers from each model)."""
    import yaml

    target.mkdir(parents=True, exist_ok=True)
    for name, n in (("train.jsonl", 12), ("validation.jsonl", 3), ("eval.jsonl", 3)):
        lines = (HERE / name).read_text().splitlines()[:n]
        (target / name).write_text("\n".join(lines) + "\n")
    shutil.copy(HERE / "kustomization.yaml", target)
    shutil.copy(HERE / "modelserving.yaml", target)
    job = yaml.safe_load((HERE / "finetunejob.yaml").read_text())
    job["spec"]["hyperparameters"] = {"epochs": 1, "batchSize": 4, "learningRateMultiplier": 4}
    job["spec"]["evaluation"]["safety"] = {"enabled": False}
    (target / "finetunejob.yaml").write_text(yaml.safe_dump(job, sort_keys=False))
    return target


def main() -> int:
    """The four steps in order (one function on purpose: it reads top to bottom as the demo runs)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few examples, one epoch (for tests)")
    parser.add_argument("--workdir", type=Path, default=Path(".hone"),
                        help="where results go: WORKDIR/run and WORKDIR/pvc (default: hone's own .hone)")
    args = parser.parse_args()

    workdir = args.workdir.resolve()
    folder = quick_copy(Path(tempfile.mkdtemp(prefix="hone-demo-"))) if args.quick else HERE
    env = {**os.environ, "HONE_PVC_ROOT": str(workdir / "pvc"),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "operator"), str(ROOT / "trainer"),
                                          os.environ.get("PYTHONPATH", "")])}
    started = time.monotonic()

    print("== 1. Validate the data and estimate the cost")
    print("The FineTuneJob names the model, the two files and the hyperparameters; `hone validate` reads them\n"
          "from it, so the epochs / batch size / multiplier and the cost below are what step 2 trains.\n"
          "Look at: examples, tokens per epoch, any warnings, the estimated cost.")
    hone("validate", str(folder / "finetunejob.yaml"), env=env)

    print("\n== 2. Fine-tune SmolLM2-135M-Instruct with LoRA (the FineTuneJob YAML you would kubectl apply)")
    print("The bar first says the model is loading and the base model's validation loss is measured; then\n"
          "steps, loss and tokens/s. Look at: validationLoss before -> after, and the loss curves. Then the\n"
          "evaluation step: the base model and the fine-tune answer the held-out questions (graded: does the\n"
          "answer state the shop's fact?) and Hone's safety suite (does the fine-tune still decline what its\n"
          "base declines?).")
    hone("run", str(folder / "finetunejob.yaml"), "--workdir", str(workdir / "run"), env=env)
    result = json.loads((workdir / "run" / "local" / "skateboard-support" / "result.json").read_text())
    fine_tuned = result["fineTunedModel"]

    print("\n== 3. Serve it (the ModelServing YAML) with the built-in OpenAI-compatible server")
    print("It serves the base model and the fine-tune side by side, under their own names.")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    print(f"$ hone serve {folder / 'modelserving.yaml'} --port {port} &", flush=True)
    log = open(workdir / "server.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "hone_operator.cli", "serve", str(folder / "modelserving.yaml"),
                               "--port", str(port), "--workdir", str(workdir / "run")],
                              env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_ready(url, server)
        with urllib.request.urlopen(f"{url}/v1/models") as resp:
            models = [m["id"] for m in json.load(resp)["data"]]
        print(f"serving {', '.join(models)} at {url}/v1")

        print(f"\n== 4. A question from the held-out validation set: {QUESTION!r}")
        print("First the base model, then the fine-tuned one; only the training data says how long returns take.")
        answers = {}
        for model in (models[0], fine_tuned):
            proc = hone("chat", model, QUESTION, "--system", SYSTEM, "--url", f"{url}/v1", "--max-tokens", "80",
                        env=env, capture_output=True)
            answers[model] = proc.stdout.strip()
            print(answers[model])
            print(proc.stderr.strip())
        if FACT.search(answers[fine_tuned]) and not FACT.search(answers[models[0]]):
            print("\nThe fine-tuned model answers with the shop's 45-day return window, which only the training "
                  "data contains; the base model does not know it.")
        else:
            print("\nThe fine-tuned answer does not state the 45-day return window"
                  + (" (--quick trains too little to learn it)." if args.quick else "."))

        with urllib.request.urlopen(f"{url}/metrics") as resp:
            metered = [line for line in resp.read().decode().splitlines()
                       if line.startswith(("hone_inference_tokens_total", "hone_cost_usd_total"))]
        print("\n$ curl -s " + f"{url}/metrics | grep -E 'hone_(inference_tokens|cost_usd)_total'")
        print("\n".join(metered))
    finally:
        server.terminate()
        server.wait(60)
        log.close()
        if args.quick:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"\nDone in {time.monotonic() - started:.0f}s. Server log: {workdir / 'server.log'}")
    if not args.quick:
        print("Next: `hone serve examples/skateboard-support/modelserving.yaml` serves it again; "
              "`hone chat <model> \"question\"` asks it.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
