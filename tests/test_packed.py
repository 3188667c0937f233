"""The server's CPU linear layers through oneDNN with packed weights: same answers, and a safe way back."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from hone_trainer.serving import packed  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN")


def _load(tiny: Path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny), dtype=torch.float32)
    return model.eval()


def _greedy(model, ids: list[int], n: int) -> list[int]:
    x = torch.tensor([ids])
    with torch.inference_mode():
        out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=n, min_new_tokens=n,
                             do_sample=False, pad_token_id=0)
    return out[0, len(ids):].tolist()


def test_a_packed_model_gives_the_logits_and_the_greedy_tokens_of_the_dense_one(tiny: Path) -> None:
    dense, model = _load(tiny), _load(tiny)
    linears = sum(type(m) is torch.nn.Linear for m in model.modules())
    assert packed.pack(model) == linears > 0
    assert not any(type(m) is torch.nn.Linear for m in model.modules())
    assert isinstance(model.lm_head, packed.PackedLinear)
    ids = torch.tensor([[5, 17, 33, 2, 90, 41, 7]])
    with torch.inference_mode():
        want, got = dense(input_ids=ids).logits, model(input_ids=ids).logits
    assert torch.allclose(want, got, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    assert _greedy(model, [5, 17, 33], 12) == _greedy(dense, [5, 17, 33], 12)
    assert packed.pack(model) == 0  # nothing left to pack: packing twice changes nothing


def test_layers_inside_peft_lora_layers_stay_dense(tiny: Path) -> None:
    """peft reads the weights of its LoRA layers (DoRA, merging): those stay nn.Linear; the rest is packed."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(_load(tiny), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], use_dora=True,
                                                   init_lora_weights=False)).eval()
    ids = torch.tensor([[5, 17, 33, 2, 90]])
    with torch.inference_mode():
        want = model(input_ids=ids).logits
    assert packed.pack(model) > 0
    base = model.base_model.model.model.layers[0]
    assert type(base.self_attn.q_proj.base_layer) is torch.nn.Linear  # inside peft's layer: untouched
    assert type(base.self_attn.q_proj.lora_A["default"]) is torch.nn.Linear
    assert isinstance(base.self_attn.k_proj, packed.PackedLinear)  # not adapted: packed
    assert isinstance(base.mlp.down_proj, packed.PackedLinear)
    with torch.inference_mode():
        got = model(input_ids=ids).logits
    assert torch.allclose(want, got, rtol=1e-4, atol=1e-4 * float(want.abs().max()))


def test_a_failed_check_leaves_the_whole_model_dense(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where oneDNN disagrees with F.linear for one shape (another build, another processor), nothing is packed:
    not half a model."""
    model = _load(tiny)
    before = {name: m for name, m in model.named_modules() if type(m) is torch.nn.Linear}
    real = packed._check
    calls = []

    def check(dense, candidate) -> None:
        calls.append(dense)
        if len(calls) == 3:
            raise ValueError("off by 0.5 of the output's scale")
        real(dense, candidate)

    monkeypatch.setattr(packed, "_check", check)
    assert packed.pack(model) == 0
    assert len(calls) == 3
    after = {name: m for name, m in model.named_modules() if type(m) is torch.nn.Linear}
    assert after.keys() == before.keys() and all(after[n] is before[n] for n in before)
    assert not any(isinstance(m, packed.PackedLinear) for m in model.modules())


class Clock:
    """The clock ``packed`` times steps with, moved only by the cost a test gives a layer's forward: which path
    is faster is then what the test says it is, however busy the machine (real sleeps were not: a test
    process kept off the CPU for longer than the penalty, twice in three rounds, turned the answer around)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 0.0
        monkeypatch.setattr(packed, "time", self)

    def perf_counter(self) -> float:
        return self.now


def _slower(monkeypatch: pytest.MonkeyPatch, clock: Clock, cls: type, when) -> None:
    """``cls``'s forward takes 1 ms on ``clock``, and 3 ms more for the inputs ``when`` picks (by their rows)."""
    real = cls.forward

    def forward(self, x):
        clock.now += 0.004 if when(x.numel() // x.shape[-1]) else 0.001
        return real(self, x)

    monkeypatch.setattr(cls, "forward", forward)


@pytest.mark.parametrize("slower", ["packed", "dense"])
def test_timed_at_load_the_faster_path_is_kept(tiny: Path, monkeypatch: pytest.MonkeyPatch, slower: str) -> None:
    """Which path is faster depends on the processor: given a step to time, the path that is slower here (by
    3 ms a layer) is the one left out, and the answers stay the same."""
    model, dense = _load(tiny), _load(tiny)
    linears = sum(type(m) is torch.nn.Linear for m in model.modules())
    clock = Clock(monkeypatch)
    slow = packed.PackedLinear if slower == "packed" else torch.nn.Linear
    for cls in (packed.PackedLinear, torch.nn.Linear):
        _slower(monkeypatch, clock, cls, lambda rows, slowed=cls is slow: slowed)
    steps = []

    def step(rows: int) -> None:
        steps.append(rows)
        model(input_ids=torch.zeros((rows, 1), dtype=torch.long))

    assert packed.pack(model, step, rows=(1, 4)) == (0 if slower == "packed" else linears)
    assert set(steps) == {1, 4}
    kept = packed.PackedLinear if slower == "dense" else torch.nn.Linear
    assert all(isinstance(m, kept) for m in (model.lm_head, model.model.layers[0].mlp.down_proj))
    monkeypatch.undo()
    assert _greedy(model, [5, 17, 33], 12) == _greedy(dense, [5, 17, 33], 12)


def test_the_engine_packs_as_its_setting_says(tiny: Path) -> None:
    from transformers import AutoTokenizer

    from hone_trainer.serving.engine import Engine

    tok = AutoTokenizer.from_pretrained(str(tiny))
    for setting, kind in (("dense", torch.nn.Linear), ("packed", packed.PackedLinear)):
        model = _load(tiny)
        Engine(model, tok, max_batch_size=2, cpu_linear=setting)
        assert type(model.lm_head) is kind, setting


def test_a_layer_kept_beside_its_dense_weight_computes_few_rows_with_it() -> None:
    """Calls of up to ``dense_rows`` rows (all leading dimensions together) take the dense weight; more take the
    packed one. Told apart here by giving the layer a dense weight that is not the one it packed."""
    gen = torch.Generator().manual_seed(0)
    w, other = torch.randn(6, 5, generator=gen), torch.randn(6, 5, generator=gen)
    layer = packed.PackedLinear(w, None)
    layer.keep_dense(other, rows=2)
    with torch.inference_mode():
        for shape, want in (((1, 1, 5), other), ((2, 1, 5), other), ((1, 2, 5), other), ((3, 1, 5), w),
                            ((2, 2, 5), w)):
            x = torch.randn(*shape, generator=gen)
            assert torch.allclose(layer(x), x @ want.T, atol=1e-5), shape


@pytest.mark.parametrize("memory", ["enough", "short"])
def test_where_each_path_wins_at_some_rows_both_are_kept_if_memory_allows(
        tiny: Path, monkeypatch: pytest.MonkeyPatch, memory: str) -> None:
    """MKL faster at one row and oneDNN at four (as on some processors): each call takes the faster path for
    its rows, the dense weights kept beside the packed ones; where the memory left would not hold that much
    again, one path serves every call."""
    model, dense = _load(tiny), _load(tiny)
    linears = sum(type(m) is torch.nn.Linear for m in model.modules())
    clock = Clock(monkeypatch)
    _slower(monkeypatch, clock, torch.nn.Linear, lambda rows: rows > 2)
    _slower(monkeypatch, clock, packed.PackedLinear, lambda rows: rows <= 2)
    weight_bytes = sum(m.weight.numel() * m.weight.element_size() for m in model.modules()
                       if type(m) is torch.nn.Linear)
    monkeypatch.setattr(packed, "_memory_left", lambda: 10 * weight_bytes if memory == "enough" else 1000)

    def step(rows: int) -> None:
        model(input_ids=torch.zeros((rows, 1), dtype=torch.long))

    down = model.model.layers[0].mlp.down_proj.weight
    replaced = packed.pack(model, step, rows=(1, 2, 4))
    if memory == "enough":
        assert replaced == linears
        layers = [model.lm_head, model.model.layers[0].mlp.down_proj]
        assert all(isinstance(m, packed.PackedLinear) and m.dense_rows == 2 for m in layers)
        assert model.model.layers[0].mlp.down_proj.dense.data_ptr() == down.data_ptr()  # kept, not copied
    else:  # one path for every call (which one, the product of the ratios at 1 and 4 rows decides)
        assert replaced in (0, linears)
        assert not any(isinstance(m, packed.PackedLinear) and m.dense is not None for m in model.modules())
    monkeypatch.undo()
    assert _greedy(model, [5, 17, 33], 12) == _greedy(dense, [5, 17, 33], 12)
