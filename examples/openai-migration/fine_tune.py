"""OpenAI's fine-tuning flow, unchanged but for ``base_url``, ``api_key`` and the model name, on Hone.

Start the API first (one machine, no cluster; the embedded SmolLM2-135M-Instruct is in its catalog)::

    hone api --local --port 8080

then run this from the repository root::

    python examples/openai-migration/fine_tune.py [--base-url http://127.0.0.1:8080/v1]

In a cluster with ``hone api`` (docs/migrating-from-openai.md), point it there and use a
Kubernetes token as the key (the project is the token's namespace, or ``--project``)::

    python examples/openai-migration/fine_tune.py --base-url https://hone-api.example.com/v1 \
        --api-key "$(kubectl -n team-a create token ci)"

It uploads the skateboard shop's support conversations, fine-tunes, follows the job's
events, lists its checkpoints, and asks the base model, the first checkpoint and the
fine-tuned model a held-out question whose answer (a 45-day return window) only the
training data holds (a cluster answers for the base model only where a ModelServing serves
it). Measured on 2 CPU cores (2026-12-04): 5 minutes 36 seconds, 48 steps; the fine-tune
answered "If the return is within 45 days of delivery, we refund you ...", the checkpoint
of step 32 named the shop's e-mail address but not the window, the base model neither.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from openai import NotFoundError, OpenAI

DATA = Path(__file__).resolve().parents[1] / "skateboard-support"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8080/v1")
    parser.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", "local"),
                        help="in a cluster: a Kubernetes token, or a key of hone api's identities file")
    parser.add_argument("--project", default=None, help="in a cluster: the namespace (default: the key's own)")
    args = parser.parse_args()

    client = OpenAI(base_url=args.base_url, api_key=args.api_key, project=args.project)  # was: OpenAI()
    training = client.files.create(file=open(DATA / "train.jsonl", "rb"), purpose="fine-tune")
    validation = client.files.create(file=open(DATA / "validation.jsonl", "rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model="smollm2-135m-instruct",  # was: "gpt-4o-mini-2024-07-18"
        training_file=training.id, validation_file=validation.id, suffix="ollie",
        method={"type": "supervised", "supervised": {"hyperparameters": {
            "n_epochs": 6, "batch_size": 8, "learning_rate_multiplier": 6}}},
    )
    print(f"created {job.id} ({job.status})")
    seen: set[str] = set()
    while job.status not in ("succeeded", "failed", "cancelled"):
        time.sleep(5)
        job = client.fine_tuning.jobs.retrieve(job.id)
        for event in reversed(client.fine_tuning.jobs.list_events(job.id, limit=20).data):
            if event.id not in seen:
                seen.add(event.id)
                print(f"  {event.message}")
    if job.status != "succeeded":
        raise SystemExit(f"the job {job.status}: {job.error}")
    print(f"fine-tuned model: {job.fine_tuned_model} ({job.trained_tokens:,} trained tokens)")
    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job.id))
    for ckpt in checkpoints:
        print(f"  checkpoint at step {ckpt.step_number}: validation loss {ckpt.metrics.full_valid_loss:.3f}")

    question = [  # held out: line 1 of validation.jsonl, as in the skateboard demo
        {"role": "system", "content": "You are the customer support assistant of Ollie's Skate Supply, a skateboard "
                                      "shop in Lisbon. Answer with the shop's own policies, briefly and precisely."},
        {"role": "user", "content": "What is your return policy? I bought wheels last week."}]
    first = checkpoints[-1].fine_tuned_model_checkpoint  # a checkpoint is a model too, as on OpenAI
    for model in ("smollm2-135m-instruct", first, job.fine_tuned_model):
        try:
            answer = client.chat.completions.create(model=model, messages=question, max_tokens=60, temperature=0)
        except NotFoundError as exc:  # in a cluster, a base model no ModelServing serves
            print(f"{model}: {exc.message}")
            continue
        print(f"{model}:\n  {answer.choices[0].message.content}")


if __name__ == "__main__":
    main()
