"""The built-in server as a real process, called with the official ``openai`` client.

A tiny Llama and two LoRA adapters fine-tuned by the real trainer (each
taught a different answer) are served together; every answer is compared
with plain transformers + peft generating from the same weights.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest

from hone_dev.serving import ServerProcess, http, reference_generations, train_adapter
from hone_dev.tiny import make_tiny_llama, make_tokenizer

#: Slow: trains two adapters and starts the real server. `pytest -m "not slow"` is the fast inner loop.
pytestmark = pytest.mark.slow

KEY = "sk-test-0123456789"
RETURNS = "Returns are accepted within 30 days."
WHEELS = "Our wheels come in 52mm and 54mm."
PROMPTS = [
    [{"role": "user", "content": "Question 3 about skateboards"}],
    [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "Hola, question about wheels?"}],
    [{"role": "user", "content": "Bearings should be cleaned with"}],
]
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Any:
    root = tmp_path_factory.mktemp("serve")
    base = root / "base"
    make_tokenizer(base)
    make_tiny_llama(base)
    returns = train_adapter(root / "returns", base, "returns", RETURNS)
    wheels = train_adapter(root / "wheels", base, "wheels", WHEELS)
    keys = root / "api-keys"
    keys.write_text(f"# one key per line\n{KEY}\n")
    server = ServerProcess(["--model", str(base), "--served-model-name", "tiny-base",
                            "--adapter", str(returns), "--adapter", f"wheels={wheels}",
                            "--api-keys-file", str(keys), "--max-concurrent-requests", "12",
                            "--max-batch-size", "6"], cwd=root)
    refs = reference_generations(base, {"ft:tiny:local:returns:returns": returns, "wheels": wheels}, PROMPTS,
                                 MAX_TOKENS)
    refs.update({("tiny-base", i): refs.pop(("base", i)) for i in range(len(PROMPTS))})
    server.wait_ready()
    yield {"server": server, "base": base, "returns": returns, "wheels": wheels, "refs": refs, "root": root}
    assert server.stop() in (0, -signal.SIGTERM), server.output()[-2000:]


@pytest.fixture
def client(served) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{served['server'].url}/v1", api_key=KEY, max_retries=0, timeout=120)


MODELS = ["tiny-base", "ft:tiny:local:returns:returns", "wheels"]


def test_models_lists_the_base_and_each_adapter_by_its_name(client) -> None:
    models = {m.id: m for m in client.models.list()}
    assert set(models) == set(MODELS)
    assert models["wheels"].model_extra["parent"] == "tiny-base"
    assert client.models.retrieve("wheels").id == "wheels"


def test_each_adapter_answers_with_its_own_weights(client, served) -> None:
    refs = served["refs"]
    assert refs[("wheels", 0)] != refs[("ft:tiny:local:returns:returns", 0)], "the two adapters learned different answers"
    assert "30 days" in refs[("ft:tiny:local:returns:returns", 0)] and "mm" in refs[("wheels", 0)]
    for model in MODELS:
        for i, messages in enumerate(PROMPTS):
            resp = client.chat.completions.create(model=model, messages=messages, max_tokens=MAX_TOKENS,
                                                  temperature=0)
            assert resp.choices[0].message.content == refs[(model, i)], (model, i)
            assert resp.model == model and resp.object == "chat.completion"
            u = resp.usage
            assert u.completion_tokens >= 1 and u.total_tokens == u.prompt_tokens + u.completion_tokens
            assert resp.choices[0].finish_reason in ("stop", "length")


def test_prompt_tokens_are_the_chat_template_tokens(client, served) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(served["base"]))
    expected = len(tok.apply_chat_template(PROMPTS[1], add_generation_prompt=True, return_dict=True)["input_ids"])
    resp = client.chat.completions.create(model="wheels", messages=PROMPTS[1], max_tokens=3, temperature=0)
    assert resp.usage.prompt_tokens == expected
    assert resp.usage.completion_tokens == 3 and resp.choices[0].finish_reason == "length"


def test_streaming_gives_the_same_text_and_usage(client, served) -> None:
    for model in MODELS:
        # Asked once before, so that both requests below find the prompt in the prefix cache alike
        # (``prompt_tokens_details.cached_tokens`` counts what an earlier request left there).
        client.chat.completions.create(model=model, messages=PROMPTS[0], max_tokens=1, temperature=0)
        stream = client.chat.completions.create(model=model, messages=PROMPTS[0], max_tokens=MAX_TOKENS,
                                                temperature=0, stream=True, stream_options={"include_usage": True})
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == served["refs"][(model, 0)]
        assert chunks[0].choices[0].delta.role == "assistant"
        assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1
        full = client.chat.completions.create(model=model, messages=PROMPTS[0], max_tokens=MAX_TOKENS, temperature=0)
        assert chunks[-1].usage.model_dump() == full.usage.model_dump()


def test_completions_with_n_stop_and_seed(client) -> None:
    resp = client.completions.create(model="wheels", prompt="Our wheels", max_tokens=8, temperature=0.9, n=3,
                                     seed=7)
    again = client.completions.create(model="wheels", prompt="Our wheels", max_tokens=8, temperature=0.9, n=3,
                                      seed=7)
    assert [c.text for c in resp.choices] == [c.text for c in again.choices], "a seed makes sampling repeatable"
    assert sorted(c.index for c in resp.choices) == [0, 1, 2]
    assert 3 <= resp.usage.completion_tokens <= 24
    greedy = client.completions.create(model="wheels", prompt="Our wheels", max_tokens=10, temperature=0)
    text = greedy.choices[0].text
    assert len(text) > 2
    stop = text[1:3]
    cut = client.completions.create(model="wheels", prompt="Our wheels", max_tokens=10, temperature=0, stop=[stop])
    assert cut.choices[0].text == text[: text.index(stop)] and cut.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model="wheels", prompt="Our wheels", max_tokens=10, temperature=0,
                                         stop=[stop], stream=True)
    assert "".join(c.choices[0].text for c in streamed) == cut.choices[0].text


def test_interleaved_requests_for_different_adapters_never_mix(client, served) -> None:
    refs = served["refs"]
    jobs = [(m, i) for m in MODELS for i in range(len(PROMPTS))] * 3
    random.Random(1).shuffle(jobs)

    def ask(job: tuple[str, int]) -> tuple[tuple[str, int], str]:
        model, i = job
        if hash(job) % 2:
            stream = client.chat.completions.create(model=model, messages=PROMPTS[i], max_tokens=MAX_TOKENS,
                                                    temperature=0, stream=True)
            return job, "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        resp = client.chat.completions.create(model=model, messages=PROMPTS[i], max_tokens=MAX_TOKENS, temperature=0)
        return job, resp.choices[0].message.content

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, jobs))
    wrong = [(job, text, refs[job]) for job, text in answers if text != refs[job]]
    assert not wrong


def test_a_near_zero_temperature_is_greedy_and_hurts_no_other_request(client, served) -> None:
    """temperature 1e-300 (and top_p 1e-300) once made the batch's sampling NaN: every request in it got a 500."""
    refs = served["refs"]
    jobs = [("wheels", 0, 1e-300, 1.0), ("wheels", 0, 1.0, 1e-300), ("tiny-base", 1, 0.0, 1.0),
            ("ft:tiny:local:returns:returns", 0, 1e-45, 1.0)] * 3

    def ask(job: tuple[str, int, float, float]) -> tuple[tuple[str, int], str]:
        model, i, temperature, top_p = job
        resp = client.chat.completions.create(model=model, messages=PROMPTS[i], max_tokens=MAX_TOKENS,
                                              temperature=temperature, top_p=top_p, seed=7)
        return (model, i), resp.choices[0].message.content

    with ThreadPoolExecutor(6) as pool:  # together, so they share batches
        answers = list(pool.map(ask, jobs))
    assert [text for _, text in answers] == [refs[key] for key, _ in answers]  # all greedy, none failed


def _token_counters(server: ServerProcess) -> Counter:
    out: Counter = Counter()
    for (name, labels), value in server.metrics().items():
        if name == "hone_inference_tokens_total":
            d = dict(labels)
            out[(d["model"], d["type"])] += value
    return out


def test_token_counters_move_by_exactly_the_usage_returned(client, served) -> None:
    server = served["server"]
    before = _token_counters(server)
    rng = random.Random(5)
    jobs = [(rng.choice(MODELS), rng.randrange(3), rng.random() < 0.5, rng.random() < 0.3, rng.randrange(1, 16))
            for _ in range(240)]

    def ask(job: tuple[str, int, bool, bool, int]) -> tuple[str, int, int]:
        model, i, stream, completions, max_tokens = job
        if completions:
            kwargs: dict[str, Any] = dict(model=model, prompt=PROMPTS[i][-1]["content"], max_tokens=max_tokens,
                                          temperature=0.8, n=2 if i == 0 else 1)
            if stream:
                chunks = list(client.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
                u = chunks[-1].usage
            else:
                u = client.completions.create(**kwargs).usage
        else:
            kwargs = dict(model=model, messages=PROMPTS[i], max_tokens=max_tokens, temperature=0.8)
            if stream:
                chunks = list(client.chat.completions.create(**kwargs, stream=True,
                                                             stream_options={"include_usage": True}))
                u = chunks[-1].usage
            else:
                u = client.chat.completions.create(**kwargs).usage
        return model, u.prompt_tokens, u.completion_tokens

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(ask, jobs))
    expected: Counter = Counter()
    for model, prompt, completion in results:
        expected[(model, "prompt")] += prompt
        expected[(model, "completion")] += completion
    after = _token_counters(server)
    delta = {k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0)}
    assert delta == dict(expected)
    assert sum(v for (m, t), v in expected.items() if t == "completion") > 240


def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(client, served) -> None:
    url = served["server"].url
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="nope", messages=PROMPTS[0])
    assert e.value.body["code"] == "model_not_found" and "wheels" in e.value.body["message"]

    status, body = http("POST", f"{url}/v1/chat/completions", b'{"model": "wheels", "messages": [', auth)
    assert status == 400 and "not valid JSON" in json.loads(body)["error"]["message"]

    status, body = http("POST", f"{url}/v1/chat/completions",
                        json.dumps({"model": "wheels", "messages": [{"role": "user", "content": "hi"}],
                                    "temperature": 7}).encode(), auth)
    err = json.loads(body)["error"]
    assert status == 400 and err["param"] == "temperature" and err["type"] == "invalid_request_error"

    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="wheels", messages=[{"role": "user", "content": "wheels " * 600}])
    assert e.value.body["code"] == "context_length_exceeded" and e.value.body["param"] == "messages"
    assert "512" in e.value.body["message"]

    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="wheels", messages=PROMPTS[0], max_tokens=100_000)
    assert "max_tokens" in e.value.body["message"]

    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="wheels", messages=PROMPTS[0], logprobs=True)
    assert "logprobs" in e.value.body["message"]

    bad_key = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad_key.models.list()
    assert http("GET", f"{url}/health")[0] == 200  # probes need no key

    ok = client.chat.completions.create(model="wheels", messages=PROMPTS[0], max_tokens=MAX_TOKENS, temperature=0)
    assert ok.choices[0].message.content == served["refs"][("wheels", 0)]


def test_over_capacity_gets_429_and_later_requests_are_served(client, served) -> None:
    barrier = threading.Barrier(30)

    def ask(_: int) -> str:
        barrier.wait()
        try:
            client.chat.completions.create(model="wheels", messages=PROMPTS[0], max_tokens=60, temperature=0.5,
                                           stop=["\u2603"])  # a stop that never matches: full length
            return "ok"
        except openai.RateLimitError as exc:
            assert exc.body["code"] == "rate_limit_exceeded"
            return "429"

    with ThreadPoolExecutor(30) as pool:
        outcomes = Counter(pool.map(ask, range(30)))
    assert outcomes["429"] >= 1 and outcomes["ok"] >= 12, outcomes
    assert client.chat.completions.create(model="wheels", messages=PROMPTS[0], max_tokens=2).usage.completion_tokens
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=PROMPTS[0], max_tokens=2)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="wheels", messages=PROMPTS[0], max_tokens=2, temperature=9)
    codes = {dict(labels).get("code") for (name, labels), _ in served["server"].metrics().items()
             if name == "hone_inference_requests_total"}
    assert {"200", "400", "404", "429"} <= codes


def test_sigterm_lets_a_streaming_request_finish(served) -> None:
    root = served["root"]
    server = ServerProcess(["--adapter", str(served["wheels"])], cwd=root)  # base from the adapter's manifest
    server.wait_ready()
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)
    # Seeded: unseeded, the first token drawn can be end-of-text (it was once in CI), which streams no text.
    stream = client.chat.completions.create(model="ft:tiny:local:wheels:wheels", messages=PROMPTS[0],
                                            max_tokens=300, temperature=1.0, seed=11, stop=["\u2603"], stream=True,
                                            stream_options={"include_usage": True})
    first = next(iter(stream))
    assert first.choices[0].delta.role == "assistant"
    server.proc.send_signal(signal.SIGTERM)
    rest = list(stream)  # the stream runs to its end although the server was told to stop
    finish = [c.choices[0].finish_reason for c in rest if c.choices and c.choices[0].finish_reason]
    assert finish in (["stop"], ["length"])
    text = "".join(c.choices[0].delta.content or "" for c in rest if c.choices)
    assert rest[-1].usage.completion_tokens >= 1 and len(text) > 0, (rest[-1].usage, text)
    assert server.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has drained


def test_an_adapter_that_does_not_match_its_manifest_is_refused(served, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(served["wheels"], broken)
    (broken / "adapter_config.json").write_text((broken / "adapter_config.json").read_text().replace("{", "{ ", 1))
    server = ServerProcess(["--model", str(served["base"]), "--adapter", str(broken)], cwd=tmp_path)
    assert server.proc.wait(120) == 5
    assert "adapter_config.json does not match its manifest" in server.output()


def test_an_adapter_trained_on_another_base_is_refused(served, tmp_path: Path) -> None:
    other = tmp_path / "other-base"
    make_tokenizer(other)
    make_tiny_llama(other, seed=3)
    server = ServerProcess(["--model", str(other), "--adapter", str(served["wheels"])], cwd=tmp_path)
    assert server.proc.wait(120) == 5
    out = server.output()
    assert "was trained on base model" in out and "ft:tiny:local:wheels:wheels" in out


def test_fetch_copies_verified_adapters_for_a_runtime_that_reads_files(served, tmp_path: Path) -> None:
    """The init step of a vLLM pod: the same checks as the server, then a copy per adapter."""
    import subprocess
    import sys

    from hone_trainer.manifest import verify
    from hone_dev.serving import env

    def fetch(*adapters: str) -> subprocess.CompletedProcess:
        args = [a for adapter in adapters for a in ("--adapter", adapter)]
        return subprocess.run([sys.executable, "-m", "hone_trainer", "fetch", "--model", str(served["base"]), *args,
                               "--target", str(tmp_path / "adapters")], env=env(), capture_output=True, text=True,
                              timeout=120)

    ok = fetch(str(served["returns"]), f"wheels={served['wheels']}")
    assert ok.returncode == 0, ok.stderr
    assert verify(tmp_path / "adapters" / "1")["fineTunedModel"] == "ft:tiny:local:wheels:wheels"
    assert '"adapter": "wheels"' in ok.stdout
    broken = tmp_path / "broken"
    shutil.copytree(served["wheels"], broken)
    (broken / "adapter_model.safetensors").write_bytes(b"not the published weights")
    bad = fetch(str(broken))
    assert bad.returncode == 5 and "adapter_model.safetensors does not match its manifest" in bad.stderr
