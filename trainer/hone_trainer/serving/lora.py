"""Many LoRA adapters in one batch at the cost of one: every adapter's matrices stacked per layer.

peft serves a batch that mixes adapters (its ``adapter_names``) by splitting
every LoRA layer's input into one sub-batch per adapter: a Python loop and
half a dozen small operations per adapter, per layer, per decoding step. On
a small model that overhead is most of a step's time, and it grows with the
number of adapters in the batch.

:func:`install` replaces each plain LoRA ``Linear`` of a ``PeftModel`` with a
:class:`StackedLinear` that holds every adapter's ``A`` and ``B`` matrices
stacked (ranks padded with zeros, one all-zero slot for rows on the base
model). A step then picks each row's matrices by index and applies them with
two batched matrix products, whatever the mix (the idea of Punica's BGMV
kernel and S-LoRA, in plain torch). A batch whose rows all use one adapter
takes two plain matrix products; one on the base model adds nothing.

Each row is computed with its own adapter's matrices only, as peft does:
``base(x) + (x @ A.T) @ B.T * scaling``. A model with anything else (DoRA or
another LoRA variant, LoRA biases, embedding or convolution LoRA layers,
``modules_to_save``) is left to peft: :func:`install` returns ``None``.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import torch

log = logging.getLogger("hone.lora")


class Rows:
    """Which stacked slot each row of the current batch uses (set by the engine before every forward)."""

    def __init__(self, slots: dict[str, int]) -> None:
        self.slots = slots  # peft adapter name -> slot; the base model is the last slot
        self.uniform: int | None = None  # the one slot every row uses, when it does
        self._onehot: torch.Tensor | None = None  # [B, adapters], when the batch mixes slots (base rows: all 0)
        self._masks: dict[int, torch.Tensor] = {}

    def select(self, names: Sequence[str], device: torch.device) -> None:
        slots = [self.slots[n] for n in names]
        self._masks = {}
        if all(s == slots[0] for s in slots):
            self.uniform, self._onehot = slots[0], None
        else:
            self.uniform = None
            # The base model's slot (the last) is all zeros: its column is dropped, and with it a slot's worth
            # of every mixed product.
            self._onehot = torch.nn.functional.one_hot(torch.tensor(slots, device=device), len(self.slots))[:, :-1]

    def mask(self, rank: int, dtype: torch.dtype) -> torch.Tensor:
        """``[B, 1, adapters * rank]``: 1 on the ``rank`` columns of each row's own adapter, 0 elsewhere (all 0
        for a row on the base model)."""
        assert self._onehot is not None, "Rows.select was not called before the forward pass"
        found = self._masks.get(rank)
        if found is None or found.dtype != dtype:
            found = self._masks[rank] = self._onehot.to(dtype).repeat_interleave(rank, dim=1)[:, None, :]
        return found


class StackedLinear(torch.nn.Module):
    """A linear layer plus every adapter's LoRA update, applied per row by slot.

    A mixed batch takes every adapter's ``x @ A.T`` in one product (``[B, T, adapters * r]``), zeroes the
    columns of the adapters a row does not use, and multiplies by every adapter's ``B.T * scaling`` stacked in
    one more: two matrix products and a multiply per layer, however many adapters the batch mixes. The base
    model's slot, all zeros, is left out of these two products.
    """

    def __init__(self, base: torch.nn.Module, a: torch.Tensor, b: torch.Tensor, scaling: torch.Tensor,
                 rows: Rows) -> None:
        super().__init__()
        slots, rank, _ = a.shape
        self.base_layer = base
        self.register_buffer("lora_a", a, persistent=False)  # [slots, r, in]
        self.register_buffer("lora_b", b, persistent=False)  # [slots, out, r]
        self.register_buffer("scaling", scaling, persistent=False)  # [slots]
        # Every adapter at once (not the base model's slot, the last): A as [adapters * r, in], and
        # B.T * scaling as [adapters * r, out].
        adapters = slots - 1
        self.register_buffer("a_all", a[:adapters].reshape(adapters * rank, -1), persistent=False)
        self.register_buffer("b_all", (b[:adapters] * scaling[:adapters].view(-1, 1, 1)).transpose(1, 2)
                             .reshape(adapters * rank, -1), persistent=False)
        self.rows = rows
        self.rank = rank
        self.base_slot = adapters

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        rows = self.rows
        if rows.uniform is not None:
            slot = rows.uniform
            if slot == self.base_slot:
                return result
            update = (x.to(self.lora_a.dtype) @ self.lora_a[slot].T) @ self.lora_b[slot].T * self.scaling[slot]
            return result + update.to(result.dtype)
        flat = x.reshape(x.shape[0], -1, x.shape[-1]).to(self.a_all.dtype)  # [B, T, in]
        h = (flat @ self.a_all.T) * rows.mask(self.rank, flat.dtype)  # [B, T, adapters * r], own adapter only
        return result + (h @ self.b_all).reshape(result.shape).to(result.dtype)


def install(model: Any, adapters: Sequence[str]) -> Rows | None:
    """Stack ``adapters`` (peft adapter names) in every LoRA layer of ``model``; ``None`` (model untouched)
    when some layer is not one this module computes exactly as peft does."""
    try:
        from peft.tuners.lora import Linear as LoraLinear
        from peft.tuners.tuners_utils import BaseTunerLayer
        from peft.utils.other import ModulesToSaveWrapper
    except ImportError:
        return None
    names = list(adapters)
    wanted = {name: i for i, name in enumerate(names)} | {"__base__": len(names)}
    done = {id(m.rows): m.rows for m in model.modules() if isinstance(m, StackedLinear)}
    if done:  # installed before (another engine on the same model): the same stacks serve again
        rows = next(iter(done.values()))
        if len(done) > 1 or not set(wanted) <= set(rows.slots):
            raise ValueError(f"the model's LoRA layers are stacked for {sorted(rows.slots)}, not {sorted(wanted)}")
        return rows
    targets: list[tuple[str, Any]] = []
    for qualified, module in model.named_modules():
        if isinstance(module, ModulesToSaveWrapper):
            return _unsupported(f"{qualified} is a modules_to_save copy")
        if not isinstance(module, BaseTunerLayer):
            continue
        if type(module) is not LoraLinear:
            return _unsupported(f"{qualified} is a {type(module).__name__}")
        if getattr(module, "merged_adapters", None):
            return _unsupported(f"{qualified} has merged adapters")
        if getattr(module, "fan_in_fan_out", False):
            return _unsupported(f"{qualified} stores its weight transposed (fan_in_fan_out)")
        for name in module.lora_A:
            if getattr(module, "lora_variant", {}).get(name) is not None or module.use_dora.get(name):
                return _unsupported(f"{qualified} uses a LoRA variant (DoRA...) for {name}")
            if module.lora_B[name].bias is not None or module.lora_A[name].bias is not None:
                return _unsupported(f"{qualified} has a LoRA bias for {name}")
        targets.append((qualified, module))
    if not targets:
        return None
    rows = Rows(wanted)
    for qualified, module in targets:
        base = module.base_layer
        weight = base.weight
        out_features, in_features = weight.shape
        rank = max((module.lora_A[n].weight.shape[0] for n in names if n in module.lora_A), default=1)
        ref = next((module.lora_A[n].weight for n in names if n in module.lora_A), weight)
        a = torch.zeros(len(names) + 1, rank, in_features, dtype=ref.dtype, device=ref.device)
        b = torch.zeros(len(names) + 1, out_features, rank, dtype=ref.dtype, device=ref.device)
        scaling = torch.zeros(len(names) + 1, dtype=ref.dtype, device=ref.device)
        for slot, name in enumerate(names):
            if name not in module.lora_A:  # this adapter does not touch this layer: its slot stays zero
                continue
            r = module.lora_A[name].weight.shape[0]
            a[slot, :r] = module.lora_A[name].weight.detach()
            b[slot, :, :r] = module.lora_B[name].weight.detach()
            scaling[slot] = float(module.scaling[name])
        parent_name, _, child = qualified.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, StackedLinear(base, a, b, scaling, rows))
    log.info("stacked %d adapters in %d LoRA layers", len(names), len(targets))
    return rows


def _unsupported(why: str) -> None:
    log.info("mixed-adapter batches use peft's per-adapter path: %s", why)
    return None
