"""``hone api --local`` driven by the real ``openai`` client, as OpenAI's own fine-tuning guide drives OpenAI.

The catalog names the tiny model ``tiny``; jobs run with the real validator
and trainer, and the fine-tune answers through the built-in server started
on demand. Only ``base_url``, ``api_key`` and the model name differ from
code written for OpenAI.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import openai
import pytest

from hone_dev.serving import env, free_port, http

pytestmark = pytest.mark.slow

ANSWER = "Returns are accepted within 30 days."
QUESTION = [{"role": "user", "content": "Question 3 about skateboards"}]


def examples(answer: str = ANSWER, n: int = 24) -> bytes:
    return "".join(json.dumps({"messages": [{"role": "user", "content": f"Question {i} about skateboards"},
                                            {"role": "assistant", "content": answer}]}) + "\n"
                   for i in range(n)).encode()


@pytest.fixture(scope="module")
def api(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("api")
    settings = root / "settings.yaml"
    settings.write_text(json.dumps({"catalog": {"tiny": {"uri": f"file://{tiny}"}}}))
    port = free_port()
    log = (root / "api.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "hone_operator.cli", "api", "--local", "--port", str(port),
                             "--workdir", str(root / "state")], cwd=root, stdout=log, stderr=subprocess.STDOUT,
                            env={**env(), "HONE_CONFIG_FILE": str(settings)})
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, (root / "api.log").read_text()[-3000:]
        try:
            return http("GET", f"{url}/health", timeout=5)[0] == 200
        except OSError:  # not listening yet
            return False

    try:
        wait_for("hone api to listen", up, timeout=120)
        yield url
    finally:
        proc.terminate()  # a graceful stop: the running trainer checkpoints, the model server stops
        rc = proc.wait(120)
    assert rc == 0, (root / "api.log").read_text()[-3000:]
    left = [p for p in Path("/proc").glob("[0-9]*") if _cmdline(p).startswith(sys.executable) and
            "hone_trainer" in _cmdline(p) and (str(tiny) in _cmdline(p) or str(root) in _cmdline(p))]
    assert not left, "hone api left its model server or trainer running"


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:  # gone meanwhile
        return ""


def client(url: str, project: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="sk-local", project=project, max_retries=0, timeout=600)


def wait_for(what: str, check: Callable[[], Any], timeout: float = 600) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def finished(c: openai.OpenAI, job_id: str) -> Any:
    return wait_for(f"job {job_id} to finish", lambda: (j := c.fine_tuning.jobs.retrieve(job_id)).status in
                    ("succeeded", "failed", "cancelled") and j)


def why(job: Any) -> str:
    """A failed job's error, with the end of the log it names (the trainer's or the evaluator's)."""
    text = str(job.error)
    named = re.search(r"its log: (\S+)", job.error.message if job.error else "")
    if named and Path(named[1]).is_file():
        text += "\n" + Path(named[1]).read_text(errors="replace")[-3000:]
    return text


def first_checkpoint(c: openai.OpenAI, job_id: str) -> Any:
    """The job's checkpoints once it has one; a job that ends first fails the test at once, saying why."""
    def check() -> Any:
        job = c.fine_tuning.jobs.retrieve(job_id)  # first: had it ended, its checkpoints are listed below
        if checkpoints := c.fine_tuning.jobs.checkpoints.list(job_id).data:
            return checkpoints
        assert job.status in ("validating_files", "queued", "running"), f"{job.status}: {why(job)}"
        return None
    return wait_for(f"a first checkpoint of {job_id}", check)


def test_openai_fine_tuning_flow_unchanged_but_for_base_url(api: str) -> None:
    """files.create -> fine_tuning.jobs.create -> retrieve until done -> list_events -> checkpoints.list ->
    the results file -> chat.completions.create(model=job.fine_tuned_model)."""
    c = client(api)
    f = c.files.create(file=("train.jsonl", examples()), purpose="fine-tune")
    assert f.object == "file" and f.purpose == "fine-tune" and f.bytes == len(examples()) and f.id.startswith("file-")
    assert c.files.content(f.id).content == examples()
    job = c.fine_tuning.jobs.create(model="tiny", training_file=f.id, suffix="Returns", seed=7,
                                    method={"type": "supervised", "supervised": {"hyperparameters": {
                                        "n_epochs": 4, "batch_size": 8, "learning_rate_multiplier": 50}}},
                                    metadata={"team": "support"})
    assert job.status == "validating_files" and job.model == "tiny" and job.training_file == f.id
    assert job.metadata == {"team": "support"} and job.seed == 7
    done = finished(c, job.id)
    assert done.status == "succeeded", why(done)
    assert done.fine_tuned_model.startswith("ft:") and ":default:returns:" in done.fine_tuned_model
    assert done.trained_tokens > 0 and done.finished_at >= done.created_at and done.error is None
    assert done.hyperparameters.n_epochs == 4 and done.hyperparameters.batch_size == 8

    events = c.fine_tuning.jobs.list_events(done.id, limit=100).data
    messages = [e.message for e in events]
    assert messages[0] == "The job has successfully completed" and messages[-1].startswith("Created fine-tuning job")
    # As in a cluster (and on OpenAI), the model is evaluated after it is published: the base model and the
    # fine-tune answer the safety suite, and the gate's verdict is an event.
    assert re.fullmatch(r"safety suite \(32 requests, heuristic judge\): refusal rate \d+\.\d% \(base\) -> "
                        r"\d+\.\d% \(fine-tune\), allowed drop 10 points; gate passed", messages[1]), messages
    assert messages[2:4] == ["Evaluating the fine-tune against its base model: both answer the safety suite",
                             f"New fine-tuned model created: {done.fine_tuned_model}"], messages
    metrics = [e for e in events if e.type == "metrics"]
    assert metrics and all(e.data["total_steps"] == 12 for e in metrics) and metrics[0].data["step"] == 12

    checkpoints = c.fine_tuning.jobs.checkpoints.list(done.id).data
    assert [ck.step_number for ck in checkpoints] == [12, 9, 6]  # one per epoch, the last three, newest first
    assert all(ck.fine_tuned_model_checkpoint == f"{done.fine_tuned_model}:ckpt-step-{ck.step_number}"
               and ck.metrics.train_loss is not None for ck in checkpoints)

    [result_file] = done.result_files
    csv = c.files.content(result_file).text.splitlines()
    assert csv[0] == "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy" and len(csv) == 13

    assert done.fine_tuned_model in [m.id for m in c.models.list()]
    answer = c.chat.completions.create(model=done.fine_tuned_model, messages=QUESTION, max_tokens=12,
                                       temperature=0)
    assert "30 days" in answer.choices[0].message.content and answer.model == done.fine_tuned_model
    base = c.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=12, temperature=0)
    assert "30 days" not in base.choices[0].message.content  # the fact came from the fine-tune
    streamed = c.chat.completions.create(model=done.fine_tuned_model, messages=QUESTION, max_tokens=12,
                                         temperature=0, stream=True, stream_options={"include_usage": True})
    chunks = list(streamed)
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == \
        answer.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == answer.usage.completion_tokens

    # Each checkpoint answers under its own name, as on OpenAI: the last one is the final model's weights.
    last = c.chat.completions.create(model=checkpoints[0].fine_tuned_model_checkpoint, messages=QUESTION,
                                     max_tokens=12, temperature=0)
    assert last.model == checkpoints[0].fine_tuned_model_checkpoint
    assert last.choices[0].message.content == answer.choices[0].message.content
    early = c.chat.completions.create(model=checkpoints[-1].fine_tuned_model_checkpoint, messages=QUESTION,
                                      max_tokens=12, temperature=0)
    assert early.model == checkpoints[-1].fine_tuned_model_checkpoint and early.usage.completion_tokens > 0
    with pytest.raises(openai.NotFoundError) as missing:  # a step with no checkpoint
        c.chat.completions.create(model=f"{done.fine_tuned_model}:ckpt-step-7", messages=QUESTION, max_tokens=4)
    assert missing.value.code == "model_not_found"

    with pytest.raises(openai.BadRequestError) as err:  # a finished job cannot be cancelled
        c.fine_tuning.jobs.cancel(done.id)
    assert err.value.code == "job_already_finished"

    other = client(api, project="other-team")  # another project sees none of it
    for call in (lambda: other.fine_tuning.jobs.retrieve(done.id), lambda: other.files.retrieve(f.id),
                 lambda: other.chat.completions.create(model=done.fine_tuned_model, messages=QUESTION, max_tokens=4)):
        with pytest.raises(openai.NotFoundError):
            call()
    assert other.fine_tuning.jobs.list().data == [] and done.fine_tuned_model not in [m.id for m in other.models.list()]

    assert c.models.delete(done.fine_tuned_model).deleted
    for name in (done.fine_tuned_model, checkpoints[0].fine_tuned_model_checkpoint):  # its checkpoints go with it
        with pytest.raises(openai.NotFoundError):
            c.chat.completions.create(model=name, messages=QUESTION, max_tokens=4)


def test_bad_input_gets_openai_errors_naming_what_to_fix(api: str) -> None:
    c = client(api)
    with pytest.raises(openai.BadRequestError) as err:
        c.files.create(file=("train.csv", b"a,b\n"), purpose="fine-tune")
    assert err.value.code == "invalid_file_format" and ".jsonl" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        c.files.create(file=("train.jsonl", examples(n=2) + b"{not json\n"), purpose="fine-tune")
    assert err.value.param == "file" and "line 3" in err.value.message

    no_answer = examples(n=12).splitlines(keepends=True)
    no_answer[4] = json.dumps({"messages": [{"role": "user", "content": "Where is the shop?"}]}).encode() + b"\n"
    bad = c.files.create(file=("bad.jsonl", b"".join(no_answer)), purpose="fine-tune")
    job = c.fine_tuning.jobs.create(model="tiny", training_file=bad.id)
    failed = finished(c, job.id)
    assert failed.status == "failed" and failed.error.code == "invalid_training_file"
    assert failed.error.param == "training_file" and "line 5" in failed.error.message

    good = c.files.create(file=("ok.jsonl", examples(n=12)), purpose="fine-tune")
    with pytest.raises(openai.NotFoundError) as err:
        c.fine_tuning.jobs.create(model="gpt-4o-mini-2024-07-18", training_file=good.id)
    assert err.value.code == "model_not_found" and "tiny" in err.value.message
    with pytest.raises(openai.NotFoundError):
        c.fine_tuning.jobs.create(model="tiny", training_file="file-000000000000000000000000")
    with pytest.raises(openai.BadRequestError) as err:
        c.fine_tuning.jobs.create(model="tiny", training_file=good.id, method={"type": "dpo", "dpo": {}})
    assert err.value.param == "method.type"
    with pytest.raises(openai.BadRequestError) as err:
        c.fine_tuning.jobs.create(model="tiny", training_file=good.id,
                                  integrations=[{"type": "wandb", "wandb": {"project": "x"}}])
    assert err.value.param == "integrations" and "wandb" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        c.fine_tuning.jobs.create(model="tiny", training_file=good.id, hyperparameters={"n_epochs": 0})
    assert err.value.param == "hyperparameters.n_epochs"
    with pytest.raises(openai.BadRequestError):
        client(api, project="Not A Namespace").fine_tuning.jobs.list()
    status, body = http("GET", f"{api}/v1/fine_tuning/nothing-here")
    assert status == 404 and json.loads(body)["error"]["code"] == "unknown_url"


def test_pages_and_metadata_filters(api: str) -> None:
    c = client(api, project="pages")
    f = c.files.create(file=("t.jsonl", examples(n=12)), purpose="fine-tune")
    made = []
    for i in range(3):
        job = c.fine_tuning.jobs.create(model="tiny", training_file=f.id, metadata={"i": str(i), "kind": "page"})
        made.append(job.id)
        c.fine_tuning.jobs.cancel(job.id)  # keeps the worker free for the other tests
    for job_id in made:
        wait_for("the cancellation", lambda: c.fine_tuning.jobs.retrieve(job_id).status == "cancelled")
    first = c.fine_tuning.jobs.list(limit=2)
    assert [j.id for j in first.data] == made[::-1][:2] and first.has_more
    rest = c.fine_tuning.jobs.list(limit=2, after=first.data[-1].id)
    assert [j.id for j in rest.data] == [made[0]] and not rest.has_more
    assert [j.id for j in c.fine_tuning.jobs.list(metadata={"i": "1"}).data] == [made[1]]
    assert len(list(c.fine_tuning.jobs.list(limit=1))) == 3  # the client's auto-pagination follows after=
    assert all(j.status == "cancelled" for j in c.fine_tuning.jobs.list().data)
    files = c.files.list(purpose="fine-tune")
    assert [x.id for x in files.data] == [f.id]
    job = c.fine_tuning.jobs.create(model="tiny", training_file=f.id)
    with pytest.raises(openai.BadRequestError) as err:  # the data of a job that has not finished stays
        c.files.delete(f.id)
    assert job.id in err.value.message
    c.fine_tuning.jobs.cancel(job.id)
    wait_for("the cancellation", lambda: c.fine_tuning.jobs.retrieve(job.id).status == "cancelled")
    assert c.files.delete(f.id).deleted and c.files.list().data == []
    with pytest.raises(openai.NotFoundError):
        c.files.content(f.id)


def test_pause_and_resume_keep_the_checkpoints(api: str) -> None:
    c = client(api, project="pausing")
    f = c.files.create(file=("t.jsonl", examples(answer="Our wheels come in 52mm and 54mm.")), purpose="fine-tune")
    job = c.fine_tuning.jobs.create(model="tiny", training_file=f.id, hyperparameters={  # 96 steps, 12 an epoch
        "n_epochs": 8, "batch_size": 2, "learning_rate_multiplier": 10})
    first = first_checkpoint(c, job.id)
    paused = c.fine_tuning.jobs.pause(job.id)
    assert paused.status in ("running", "paused")
    paused = wait_for("the pause", lambda: (j := c.fine_tuning.jobs.retrieve(job.id)).status == "paused" and j)
    kept = c.fine_tuning.jobs.checkpoints.list(job.id).data
    assert first[0].step_number in [ck.step_number for ck in kept]
    steps_before = max(ck.step_number for ck in kept)
    assert steps_before < 96
    assert c.fine_tuning.jobs.resume(job.id).status == "queued"
    done = finished(c, job.id)
    assert done.status == "succeeded", why(done)
    events = list(c.fine_tuning.jobs.list_events(job.id, limit=100))  # newest first, every page
    messages = [e.message for e in events]
    assert "Fine-tuning job paused; its checkpoints are kept" in messages
    resumed = messages.index("Fine-tuning job resumed")
    after = [e.data["step"] for e in events[:resumed] if e.type == "metrics"]
    assert after and min(after) >= steps_before and max(after) == 96  # training went on from the checkpoint
    assert done.trained_tokens == max(e.data["trained_tokens"] for e in events if e.type == "metrics")
    with pytest.raises(openai.BadRequestError):
        c.fine_tuning.jobs.resume(job.id)


def test_the_local_model_server_meters_at_its_base_models_prices(tiny: Path, tmp_path: Path) -> None:
    """`hone api --local` serves fine-tunes with the built-in server, at the base model's price table."""
    from hone_operator.openai_api.serving import ServerPool, Target
    from hone_operator.settings import OperatorSettings

    settings = OperatorSettings(model_prices={str(tiny): {"training": 1, "prompt": 2, "completion": 4}})
    pool = ServerPool(tmp_path, settings)
    try:
        url = pool.url(Target(project="local", base_name="tiny", base_uri=str(tiny), adapters=()))
        status, body = http("POST", f"{url}/v1/completions",
                            json.dumps({"model": "tiny", "prompt": "Hello", "max_tokens": 3}).encode(),
                            {"Content-Type": "application/json"})
        assert status == 200, body
        usage = json.loads(body)["usage"]
        _, text = http("GET", f"{url}/metrics")
        cost = {line.split("{")[1].split("}")[0]: float(line.rsplit(" ", 1)[1])
                for line in text.splitlines() if line.startswith("hone_cost_usd_total{")}
        assert cost['kind="prompt",model="tiny"'] == pytest.approx(usage["prompt_tokens"] * 2 / 1e6)
        assert cost['kind="completion",model="tiny"'] == pytest.approx(usage["completion_tokens"] * 4 / 1e6)
    finally:
        pool.stop()
