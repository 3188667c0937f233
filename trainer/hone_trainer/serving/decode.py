"""A decoding step of a Llama-architecture model without transformers' per-call machinery.

A decoding step feeds one token per row. For a small model its arithmetic is
little (on CPU it is bound by reading the weights), so the Python around it
counts: transformers' ``forward`` of the model, of each decoder layer and of
each attention goes through decorators that rewrite keyword arguments, output
capture, a mask builder, per-layer dispatch to the attention function and
output dataclasses, about 10 to 15% of a step of SmolLM2-135M on 2 CPU cores
(and more of it on a GPU, where the arithmetic is fast).

:class:`DecodeStep` runs the same step as a loop over the decoder layers that
calls the model's own modules and functions for every computation (the norms'
and the MLP's ``forward``, the rotary embedding, ``apply_rotary_pos_emb``,
each projection, the cache layer's ``update``) and torch's
``scaled_dot_product_attention`` with the arguments transformers gives it for
a one-token query. Its logits are bit for bit those of the model's
``forward`` (the tests compare them with ``torch.equal``). It exists only for
the structure it was written against; :func:`build` checks that structure and
returns ``None`` for anything else (another architecture, eager or flash
attention, dynamic RoPE, hooks on the decoder's modules, peft's own LoRA
layers), and the engine then calls the model's ``forward`` as before.
Projections are called as modules, so packed and stacked-LoRA layers work
through it unchanged.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

log = logging.getLogger("hone.decode")


class DecodeStep:
    """``step(ids [B, 1], mask [B, L], positions [B, 1], cache) -> logits [B, vocab]`` (float32),
    appending each layer's new keys and values to ``cache.layers[i]``."""

    def __init__(self, causal_lm: Any) -> None:
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        self.rotate = apply_rotary_pos_emb
        self.inner = causal_lm.model
        self.layers = list(self.inner.layers)
        self.lm_head = causal_lm.lm_head
        first = self.layers[0].self_attn
        self.head_dim = first.head_dim
        self.groups = first.num_key_value_groups

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any) -> torch.Tensor:
        rows = ids.shape[0]
        hidden = self.inner.embed_tokens(ids)
        # What transformers' mask builder gives sdpa for one query token: nothing when every column is a
        # real token, else the padding mask as booleans (the causal part allows every cached column).
        padding = None if bool(mask.all()) else mask.bool()[:, None, None, :]
        cos, sin = self.inner.rotary_emb(hidden, position_ids=positions)
        shape = (rows, 1, -1, self.head_dim)
        # transformers' sdpa for one query token with grouped heads: torch's GQA without a mask; with one,
        # the query's heads of a group laid out as that group's query rows (its ``pack_gqa``).
        gqa = self.groups > 1 and padding is None and self.head_dim <= 256
        pack = self.groups > 1 and not gqa
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            residual = hidden
            x = layer.input_layernorm.forward(hidden)
            q = attn.q_proj(x).view(shape).transpose(1, 2)
            k = attn.k_proj(x).view(shape).transpose(1, 2)
            v = attn.v_proj(x).view(shape).transpose(1, 2)
            q, k = self.rotate(q, k, cos, sin)
            k, v = cache.layers[i].update(k, v)
            heads = q.shape[1]
            if pack:
                q = q.reshape(rows, heads // self.groups, self.groups, self.head_dim)
            out = torch.nn.functional.scaled_dot_product_attention(
                q, k, v, attn_mask=padding, dropout_p=0.0, scale=attn.scaling, is_causal=False,
                **({"enable_gqa": True} if gqa else {}))
            out = out.reshape(out.shape[0], -1, 1, v.shape[-1]).transpose(1, 2).contiguous()
            hidden = residual + attn.o_proj(out.reshape(rows, 1, -1))
            residual = hidden
            hidden = residual + layer.mlp.forward(layer.post_attention_layernorm.forward(hidden))
        hidden = self.inner.norm.forward(hidden)
        return self.lm_head(hidden[:, -1:, :])[:, -1, :].float()


def build(model: Any) -> DecodeStep | None:
    """The fast step for this model, or ``None`` (logged) where its structure is not the one it was written
    against. ``model`` is what the engine serves: a causal LM, or a ``PeftModel`` around one whose LoRA
    layers were replaced by stacked ones (any peft layer left means peft's own path, and ``None``)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    why = _unsupported(base)
    if why:
        log.info("decoding steps go through the model's forward: %s", why)
        return None
    return DecodeStep(base)


def _unsupported(base: Any) -> str | None:
    from transformers.models.llama import modeling_llama as llama

    if type(base) is not llama.LlamaForCausalLM:
        return f"{type(base).__name__} is not LlamaForCausalLM"
    config = base.config
    if config._attn_implementation != "sdpa":
        return f"attention implementation {config._attn_implementation!r}, not 'sdpa'"
    rope = (getattr(config, "rope_parameters", None) or {}).get("rope_type", "default")
    if "dynamic" in rope or rope == "longrope":
        return f"RoPE type {rope!r} updates its frequencies with the positions"
    inner = base.model
    expected = {"layer": llama.LlamaDecoderLayer, "attention": llama.LlamaAttention, "mlp": llama.LlamaMLP,
                "norm": llama.LlamaRMSNorm}
    modules: list[tuple[str, Any]] = [("model", inner), ("norm", inner.norm), ("rotary", inner.rotary_emb)]
    for layer in inner.layers:
        modules += [("layer", layer), ("attention", layer.self_attn), ("mlp", layer.mlp),
                    ("norm", layer.input_layernorm), ("norm", layer.post_attention_layernorm)]
    for kind, module in modules:
        if kind in expected and type(module) is not expected[kind]:
            return f"a {kind} of type {type(module).__name__}"
        if module._forward_hooks or module._forward_pre_hooks or hasattr(module, "_hf_hook"):
            return f"hooks on {type(module).__name__}"
    if any(type(m).__module__.startswith("peft.") for m in base.modules()):
        return "peft's own LoRA layers (adapters that could not be stacked)"
    if len(inner.layers) != config.num_hidden_layers:
        return "a model whose forward runs only some of its layers"
    return None
