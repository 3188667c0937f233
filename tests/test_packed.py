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


@pytest.mark.parametrize("slower", ["packed", "dense"])
def test_timed_at_load_the_faster_path_is_kept(tiny: Path, monkeypatch: pytest.MonkeyPatch, slower: str) -> None:
    """Which path is faster depends on the processor: given a step to time, the path that is slower here (made
    so by 3 ms a layer, many times a tiny model's step) is the one left out, and the answers stay the same."""
    import time

    model, dense = _load(tiny), _load(tiny)
    linears = sum(type(m) is torch.nn.Linear for m in model.modules())
    cls = packed.PackedLinear if slower == "packed" else torch.nn.Linear
    real = cls.forward
    monkeypatch.setattr(cls, "forward", lambda self, x: (time.sleep(0.003), real(self, x))[1])
    steps = []

    def step(rows: int) -> None:
        steps.append(rows)
        model(input_ids=torch.zeros((rows, 1), dtype=torch.long))

    assert packed.pack(model, step, rows=(1, 4)) == (0 if slower == "packed" else linears)
    assert set(steps) == {1, 4}
    kept = packed.PackedLinear if slower == "dense" else torch.nn.Linear
    assert all(isinstance(m, kept) for m in (model.lm_head, model.model.layers[0].mlp.down_proj))
    monkeypatch.setattr(cls, "forward", real)
    assert _greedy(model, [5, 17, 33], 12) == _greedy(dense, [5, 17, 33], 12)


def test_the_engine_packs_as_its_setting_says(tiny: Path) -> None:
    from transformers import AutoTokenizer

    from hone_trainer.serving.engine import Engine

    tok = AutoTokenizer.from_pretrained(str(tiny))
    for setting, kind in (("dense", torch.nn.Linear), ("packed", packed.PackedLinear)):
        model = _load(tiny)
        Engine(model, tok, max_batch_size=2, cpu_linear=setting)
        assert type(model.lm_head) is kind, setting
