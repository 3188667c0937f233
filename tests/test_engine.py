"""The serving engine on its own: continuous batching gives each request the answer it would get alone."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from hone_trainer.serving.engine import RESERVE, Engine, GenerationEvent, SamplingParams, SequenceState


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(tiny), dtype=torch.float32)
    model.eval()
    return model, AutoTokenizer.from_pretrained(str(tiny))


class Tracked:
    """A sequence plus the signals a test waits on: its n-th token, and its end."""

    def __init__(self, prompt: list[int], max_tokens: int) -> None:
        self.ended = threading.Event()
        self.progress = threading.Condition()
        self.tokens = 0
        self.last: GenerationEvent | None = None
        self.seq = SequenceState(prompt_ids=prompt, adapter="__base__",
                                 params=SamplingParams(max_tokens=max_tokens, temperature=0), emit=self._emit)

    def _emit(self, event: GenerationEvent) -> None:
        with self.progress:
            self.tokens = event.tokens
            self.last = event
            self.progress.notify_all()
        if event.finished:
            self.ended.set()

    def wait_tokens(self, n: int) -> None:
        with self.progress:
            assert self.progress.wait_for(lambda: self.tokens >= n or self.ended.is_set(), timeout=120)


def alone(model, prompt: list[int], max_tokens: int) -> list[int]:
    import torch

    ids = torch.tensor([prompt])
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                             min_new_tokens=max_tokens, do_sample=False, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def test_staggered_requests_get_the_tokens_they_would_get_alone(model_and_tokenizer) -> None:
    """Requests join a running batch at different times, with prompts of different lengths, finish at
    different times, and run past the cache's reserved room (so it grows while others are in the batch):
    each one's greedy tokens are exactly what ``generate`` gives it on its own."""
    model, tok = model_and_tokenizer
    texts = ["Bearings should be cleaned", "Returns are accepted within 30 days with the original receipt.",
             "Hola", "The deck is seven-ply Canadian maple. Grip tape lasts about six months. Our wheels"]
    prompts = [tok(t)["input_ids"] for t in texts]
    budgets = [RESERVE + 40, 12, RESERVE + 10, 30]  # two outlive the reserved room, two leave early
    engine = Engine(model, tok, max_batch_size=3)  # no EOS: every sequence runs to its budget
    assert engine.decode_step is not None  # a Llama: decoding steps take the engine's own loop (test_decode.py)
    engine.start()
    try:
        first = Tracked(prompts[0], budgets[0])
        engine.submit([first.seq])
        first.wait_tokens(5)  # running: the next ones join a batch in progress
        second, third = Tracked(prompts[1], budgets[1]), Tracked(prompts[2], budgets[2])
        engine.submit([second.seq, third.seq])
        third.wait_tokens(3)
        fourth = Tracked(prompts[3], budgets[3])  # waits for a free row: the batch holds 3
        engine.submit([fourth.seq])
        for t in (first, second, third, fourth):
            assert t.ended.wait(120)
    finally:
        engine.stop()
    for t, prompt, budget in zip((first, second, third, fourth), prompts, budgets):
        assert t.last is not None and t.last.finish_reason == "length", t.last
        assert t.seq.generated == alone(model, prompt, budget)
    assert fourth.seq.prefilled and engine.running == 0 and engine.waiting == 0


def test_a_burst_is_prefilled_in_two_halves_back_to_back(model_and_tokenizer) -> None:
    """Requests that wait at once are prefilled half first, then the rest in the very next step (before any
    decoding step, so the rest get their first token when one prefill of all of them would have given it).
    Five waiting: three send their first text at the first step, two at the second. A request left for the
    next step is taken then, with half of those that came meanwhile: two waiting, then four arriving while
    the first of them is prefilled alone, are prefilled as 1, then 1 + 2, then 2. Every row's tokens are
    what it gets alone."""
    model, tok = model_and_tokenizer
    texts = ["Returns are accepted within 30 days.", "Hola, tienen ruedas", "The deck is seven-ply Canadian maple.",
             "Our wheels are", "Grip tape lasts"]  # each one's first token is text (checked below)
    prompts = [tok(t)["input_ids"] for t in texts]
    engine = Engine(model, tok, max_batch_size=8)
    first_text_at: dict[str, int] = {}  # request -> the engine step that sent its first text
    arrive_later: list[Tracked] = []

    def tracked(name: str, prompt: list[int]) -> Tracked:
        t = Tracked(prompt, 6)

        def emit(event: GenerationEvent, inner=t.seq.emit) -> None:  # runs on the engine thread, within a step
            if event.text and name not in first_text_at:
                first_text_at[name] = engine.steps
                if name == "a" and arrive_later:  # four more arrive before the next step
                    engine.submit([t.seq for t in arrive_later])
            inner(event)
        t.seq.emit = emit
        return t

    burst = [tracked(f"burst{i}", p) for i, p in enumerate(prompts)]
    engine.submit([t.seq for t in burst])  # all five wait before the engine's first step
    engine.start()
    try:
        for t in burst:
            assert t.ended.wait(120)
        assert first_text_at == {"burst0": 0, "burst1": 0, "burst2": 0, "burst3": 1, "burst4": 1}
        a, b = tracked("a", prompts[0]), tracked("b", prompts[1])
        arrive_later[:] = [tracked(f"later{i}", p) for i, p in enumerate(prompts[2:] + prompts[:1])]
        engine.submit([a.seq, b.seq])
        for t in [a, b, *arrive_later]:
            assert t.ended.wait(120)
    finally:
        engine.stop()
    wants = [alone(model, p, 6) for p in prompts]
    # A first token that is no text yet (part of a character) would move its first text to a later step.
    assert all(tok.decode(w[:1], skip_special_tokens=True).strip("\ufffd") for w in wants), wants
    s = first_text_at["a"]
    assert {k: v - s for k, v in first_text_at.items() if not k.startswith("burst")} == {
        "a": 0, "b": 1, "later0": 1, "later1": 1, "later2": 2, "later3": 2}
    for t, want in zip(burst, wants):
        assert t.seq.generated == want
    for t, want in zip([a, b, *arrive_later], wants[:2] + wants[2:] + wants[:1]):
        assert t.seq.generated == want


@pytest.fixture(scope="module")
def three_adapters(tiny: Path):
    """The tiny model with three LoRA adapters of random, non-zero weights (two ranks, two scalings)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(str(tiny), dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                             init_lora_weights=False), adapter_name="a")
    model.add_adapter("b", LoraConfig(r=4, lora_alpha=32, target_modules="all-linear", init_lora_weights=False))
    model.add_adapter("c", LoraConfig(r=8, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                      init_lora_weights=False))
    model.eval()
    return model, AutoTokenizer.from_pretrained(str(tiny))


def test_a_batch_mixing_adapters_gives_each_row_its_own_adapter(three_adapters) -> None:
    """Rows on different adapters (of different ranks and targets) and on the base model share a batch,
    join it at different times and leave it: each row's greedy tokens are what peft generates with that
    adapter alone (or with adapters disabled, for the base)."""
    model, tok = three_adapters
    cases = [("a", "Bearings should be cleaned", RESERVE + 8), ("b", "Returns are accepted", 20),
             ("__base__", "Hola", 30), ("c", "The deck is seven-ply Canadian maple.", 25), ("a", "Grip tape", 10)]
    expected = []
    for adapter, text, budget in cases:  # before the engine stacks the adapters into the model
        prompt = tok(text)["input_ids"]
        if adapter == "__base__":
            with model.disable_adapter():
                expected.append(alone(model, prompt, budget))
        else:
            model.set_adapter(adapter)
            expected.append(alone(model, prompt, budget))
    engine = Engine(model, tok, max_batch_size=4, adapters=["a", "b", "c"])
    assert engine.stacked is not None  # plain LoRA everywhere: the stacked path, not peft's per-adapter loop
    assert engine.decode_step is not None
    engine.start()
    try:
        tracked = [Tracked(tok(text)["input_ids"], budget) for _, text, budget in cases]
        for t, (adapter, _, _) in zip(tracked, cases):
            t.seq.adapter = adapter
        engine.submit([tracked[0].seq])
        tracked[0].wait_tokens(4)
        engine.submit([t.seq for t in tracked[1:3]])
        tracked[2].wait_tokens(2)
        engine.submit([t.seq for t in tracked[3:]])  # one waits for a free row
        for t in tracked:
            assert t.ended.wait(120)
    finally:
        engine.stop()
    for t, want, case in zip(tracked, expected, cases):
        assert t.last is not None and t.last.finish_reason == "length", (case, t.last)
        assert t.seq.generated == want, case


def test_prefix_cache_reuses_to_the_token_within_its_bound() -> None:
    """The cache hands back exactly the keys and values stored for the longest shared prefix, whole blocks
    and the shared start of a block alike; when it is full the least recently used blocks go, what it says it
    holds is what it holds, and a lookup never returns a prompt's last token."""
    import torch

    from hone_trainer.serving.prefix import BLOCK, PrefixCache

    def layers(tokens: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:  # keys that name their token
        t = torch.tensor(tokens, dtype=torch.float32).view(1, -1, 1)
        return [(t, -t)]

    cache = PrefixCache(4 * BLOCK)
    first = list(range(40))
    cache.store("a", first, layers(first))
    assert cache.tokens == 39  # two whole blocks and the last, partial one
    assert cache.lookup("a", first)[0] == 39 and cache.lookup("b", first) == (0, [])
    second = first[:20] + [1000 + i for i in range(30)]
    n, got = cache.lookup("a", second)
    assert n == 20 and got[0][0].flatten().tolist() == first[:20]
    assert got[0][1].flatten().tolist() == [-t for t in first[:20]]
    cache.store("a", second, layers(second))  # 3 blocks more: the 2 used least recently go
    assert cache.tokens == 49 and len(cache._blocks) == 4
    assert cache.lookup("a", first + [7])[0] == 20  # its own second block is gone; the other's start serves
    assert cache.lookup("a", second)[0] == 49


def test_prompts_that_start_alike_reuse_the_prefix_and_answer_as_alone(model_and_tokenizer) -> None:
    """Prompts sharing a long beginning (a system prompt): later ones compute only the rest against the kept
    keys and values, in batches with rows that hit and miss, and the second half of a burst finds what the
    first half stored; each row's greedy tokens are what ``generate`` gives its whole prompt alone. Reuse is
    exact to the token, not rounded down to a block, and the next turn of a conversation finds all of this
    turn's prompt. A prefix is never reused across adapters or past the cache's bound."""
    import os

    from hone_trainer.serving.prefix import BLOCK

    model, tok = model_and_tokenizer
    system = tok("You are the support assistant of an Amsterdam skateboard shop. Answer briefly. " * 2)["input_ids"]
    assert len(system) > 2 * BLOCK
    questions = ["Do you ship to Porto?", "What is your return policy?", "Which wheels for rough streets?"]
    prompts = [system + tok(q)["input_ids"] for q in questions]
    other = tok("Bearings should be cleaned every month")["input_ids"]  # shares nothing
    shared = [len(os.path.commonprefix([prompts[0], p])) for p in prompts[1:]]
    later = len(os.path.commonprefix([prompts[1], prompts[2]]))
    assert all(n % BLOCK for n in shared) and later > shared[1]  # the shared parts end inside a block
    engine = Engine(model, tok, max_batch_size=4, prefix_cache_tokens=8 * BLOCK)
    assert engine.prefixes is not None
    engine.start()
    try:
        first = Tracked(prompts[0], 12)
        engine.submit([first.seq])
        assert first.ended.wait(120)
        assert engine.prefixes.tokens == len(prompts[0]) - 1  # all of it but the last token
        # The next turn of the conversation: this turn's prompt, its answer and a new question.
        turn = prompts[0] + first.seq.generated + tok(" And to Lisbon?")["input_ids"]
        second = Tracked(turn, 12)
        engine.submit([second.seq])
        assert second.ended.wait(120)
        assert second.seq.cached_tokens == len(prompts[0]) - 1
        hits = engine.prefixes.hit_tokens
        rest = [Tracked(p, 12) for p in (prompts[1], other, prompts[2])]
        # Two prefills, half of the burst then the rest: a row that hits beside one that misses, then a row
        # that finds more of itself in what the first stored than in the first turn's prompt.
        engine.submit([t.seq for t in rest])
        for t in rest:
            assert t.ended.wait(120)
        assert [t.seq.cached_tokens for t in rest] == [shared[0], 0, later]
        assert engine.prefixes.hit_tokens - hits == shared[0] + later
    finally:
        engine.stop()
    assert engine.prefixes.tokens <= 8 * BLOCK  # bounded
    for t, prompt in zip([first, second, *rest], [prompts[0], turn, prompts[1], other, prompts[2]]):
        assert t.seq.generated == alone(model, prompt, 12)

    # Another adapter's rows never see the base model's prefixes (keys and values differ per adapter).
    assert engine.prefixes.lookup("some-adapter", prompts[1]) == (0, [])
