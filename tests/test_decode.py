"""The engine's own decoding step for Llama-architecture models: bit for bit the model's forward, or not used."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from hone_trainer.serving import decode  # noqa: E402
from hone_trainer.serving.engine import _ReservedLayer  # noqa: E402


def _llama(kv_heads: int, **extra):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(3)
    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=256,
                         pad_token_id=0, **extra)
    return LlamaForCausalLM(config).eval()


def _prefill(model, prompts: list[list[int]]):
    """A left-padded batch through the model's forward, its cache in the engine's in-place layers."""
    from transformers.cache_utils import DynamicCache

    width = max(len(p) for p in prompts)
    ids = torch.zeros((len(prompts), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):], mask[i, width - len(p):] = torch.tensor(p), 1
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=DynamicCache(), use_cache=True)
    cache = out.cache
    cache.layers[:] = [_ReservedLayer.holding(layer.keys, layer.values, room=4) for layer in cache.layers]
    return out.logits[:, -1, :], mask, cache


def _steps_agree(model, prompts: list[list[int]], steps: int = 9) -> None:
    """Two copies of one batch, one decoded by the model's forward and one by the fast step, the same greedy
    token fed to both: every step's logits are equal, bit for bit (past the caches' reserved room)."""
    step = decode.build(model)
    assert step is not None
    with torch.inference_mode():
        logits, mask, theirs = _prefill(model, prompts)
        _, _, ours = _prefill(model, prompts)
        for _ in range(steps):
            token = logits.argmax(-1, keepdim=True)
            positions = mask.sum(1, keepdim=True)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            want = model(input_ids=token, attention_mask=mask, position_ids=positions, cache=theirs,
                         use_cache=True, logits_to_keep=1).logits[:, -1, :].float()
            got = step(token, mask, positions, ours)
            assert torch.equal(got, want)
            logits = want


@pytest.mark.parametrize("kv_heads", [2, 4], ids=["grouped-query", "multi-head"])
def test_the_fast_step_gives_the_models_logits_with_and_without_padding(kv_heads: int) -> None:
    model = _llama(kv_heads)
    _steps_agree(model, [[5, 17, 33, 2, 90, 41]])  # one row: no padding, no mask
    _steps_agree(model, [[5, 17, 33, 2, 90, 41], [7, 8], [250, 3, 3, 9]])  # padded rows: the mask


def test_the_fast_step_through_packed_and_stacked_layers(tiny: Path) -> None:
    """Projections are called as modules: with oneDNN-packed weights, and with LoRA adapters stacked and mixed
    per row, the fast step still gives exactly the model's logits."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from hone_trainer.serving import lora, packed

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(str(tiny), dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False),
                           adapter_name="a")
    model.add_adapter("b", LoraConfig(r=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.eval()
    assert decode.build(model) is None  # peft's own LoRA layers: its forward, not ours
    rows = lora.install(model, ["a", "b"])
    assert rows is not None
    if torch.backends.mkldnn.is_available():
        assert packed.pack(model) > 0
    rows.select(["a", "__base__", "b"], torch.device("cpu"))
    _steps_agree(model.get_base_model(), [[5, 17, 33, 2], [7, 8], [250, 3, 3, 9, 11]])
    step = decode.build(model)
    assert step is not None and step.inner is model.get_base_model().model


def test_models_it_was_not_written_for_keep_their_forward() -> None:
    assert decode.build(_llama(2, attn_implementation="eager")) is None
    assert decode.build(_llama(2, rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4})) \
        is None
    hooked = _llama(2)
    hooked.model.layers[1].mlp.register_forward_hook(lambda module, args, out: out * 2)
    assert decode.build(hooked) is None
    assert decode.build(_llama(2)) is not None
