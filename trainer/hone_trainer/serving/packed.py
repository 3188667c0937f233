"""Linear layers on CPU through oneDNN with weights packed once, not through MKL's sgemm every step.

On CPU, ``torch.nn.functional.linear`` in fp32 goes to MKL's ``sgemm``, which
on some processors reads the weights at less than half the memory bandwidth
the machine has at the few rows of a decoding step (measured on a 2-core
machine: the 49,152 x 576 output layer of SmolLM2-135M took 7.4 ms a token that
way, 2.9 ms through oneDNN with the weight reordered ahead). Decoding a token
reads every weight once, so that is most of a step. :func:`pack` replaces each
plain ``nn.Linear`` of a model with a :class:`PackedLinear` that holds its
weight in oneDNN's layout (reordered once, at load) and multiplies with
oneDNN's matmul, the way PyTorch's own compiler does for frozen CPU models.

Which path is faster depends on the processor: on another 2-core machine MKL
decoded one sequence faster (a step of 38 ms against 55) and oneDNN eight (78
against 81). So given a ``step`` (one decoding step of the model at a batch
size), :func:`pack` times both paths, alternately, at one row and at the
largest batch, and keeps oneDNN only when the product of its two ratios to
MKL's times is below 1: a single user's latency counts as much as a full
batch's throughput.

The results are the same products summed in another order: they differ from
``F.linear`` by float rounding (about 1e-5 relative in fp32), so greedy
answers are the same tokens but for exact near-ties. :func:`pack` checks each
shape against ``F.linear`` once and leaves the model untouched where the
oneDNN operators are missing or disagree (another build of torch, another
processor).

Layers inside a peft LoRA layer are left alone (peft reads their weights),
except the base layer of a :class:`~hone_trainer.serving.lora.StackedLinear`,
which only ever calls it.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from typing import Any, Callable, Sequence

import torch

log = logging.getLogger("hone.packed")

#: The batch size oneDNN is told to expect when it lays the weights out. Measured on SmolLM2-135M, 2 threads:
#: 64 decodes batches of 1 and 8 10% and 30% faster than 1, and no slower than 8 at batch 8 (on another
#: processor, where MKL won, 8 was 5-7% faster than 64: the best layout varies less than the best path).
PACK_FOR_ROWS = 64
#: The largest difference from ``F.linear``, relative to the largest output, that the check accepts.
TOLERANCE = 1e-4


class PackedLinear(torch.nn.Module):
    """``y = x @ W.T + b`` with ``W`` in oneDNN's layout; keeps no dense copy of ``W``."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        # A plain attribute, not a buffer: an opaque oneDNN tensor that module machinery (.to, state_dict)
        # must not touch. The model is only served from now on.
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), PACK_FOR_ROWS)
        self.bias = None if bias is None else bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, oneDNN packed"


def pack(model: Any, step: Callable[[int], object] | None = None, rows: Sequence[int] = (1, 8)) -> int:
    """Replace the model's eligible linear layers in place; the number replaced (0: nothing changed).

    With ``step`` (``step(n)`` runs one decoding step of ``model`` at batch ``n``), the packed layers are kept
    only if ``rows``' steps take less time with them than with the dense ones (see the module docstring)."""
    if not torch.backends.mkldnn.is_available():
        log.info("linear layers stay on torch's default path: this torch has no oneDNN")
        return 0
    inside_tuner = _inside_peft_layers(model)
    targets: list[tuple[torch.nn.Module, str, torch.nn.Linear]] = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if type(child) is not torch.nn.Linear or id(child) in inside_tuner:
                continue
            w = child.weight
            if w.device.type != "cpu" or w.dtype not in (torch.float32, torch.bfloat16):
                continue
            targets.append((parent, name, child))
    checked: set[tuple[int, int, torch.dtype, bool]] = set()
    for parent, name, child in targets:
        shape = (child.out_features, child.in_features, child.weight.dtype, child.bias is not None)
        try:
            packed = PackedLinear(child.weight, child.bias)
            if shape not in checked:
                _check(child, packed)
                checked.add(shape)
        except Exception as exc:  # noqa: BLE001 - any failure here means: keep torch's own path
            log.warning("linear layers stay on torch's default path: oneDNN's packed linear failed its "
                        "check (%s)", exc)
            _set(targets, [child for _, _, child in targets])
            return 0
        setattr(parent, name, packed)
    if step is not None and targets:
        times = _time_both(targets, step, rows)
        what = "a step took " + ", ".join(f"{p * 1e3:.1f} ms against {d * 1e3:.1f} at {n} row{'s' * (n > 1)}"
                                          for n, (d, p) in times.items())
        # Relative, so that a single user's latency counts as much as a full batch's throughput.
        if math.prod(p / d for d, p in times.values()) >= 1:
            _set(targets, [child for _, _, child in targets])
            log.info("linear layers stay on torch's default path: with oneDNN's packed weights %s", what)
            return 0
        log.info("%d linear layers packed for oneDNN: with them %s on torch's default path", len(targets), what)
        return len(targets)
    log.info("%d linear layers packed for oneDNN", len(targets))
    return len(targets)


def _time_both(targets: list[tuple[torch.nn.Module, str, torch.nn.Linear]], step: Callable[[int], object],
               rows: Sequence[int], rounds: int = 3) -> dict[int, tuple[float, float]]:
    """For each of ``rows``: the seconds ``step`` takes with the dense layers and with the packed ones (medians
    of ``rounds``, the two taking turns so that a busy moment slows both). The packed layers are in place after."""
    packed = [getattr(parent, name) for parent, name, _ in targets]
    dense = [child for _, _, child in targets]

    def timed(layers: list[torch.nn.Module], n: int) -> float:
        _set(targets, layers)
        started = time.perf_counter()
        step(n)
        return time.perf_counter() - started

    out = {}
    with torch.inference_mode():
        for n in dict.fromkeys(rows):
            timed(dense, n), timed(packed, n)  # warm both: first calls allocate and lay out
            pairs = [(timed(dense, n), timed(packed, n)) for _ in range(rounds)]
            out[n] = (statistics.median(d for d, _ in pairs), statistics.median(p for _, p in pairs))
    return out


def _check(dense: torch.nn.Linear, packed: PackedLinear) -> None:
    gen = torch.Generator().manual_seed(0)
    for rows in (1, 3, 40):
        x = torch.randn(2, rows, dense.in_features, generator=gen).to(dense.weight.dtype)
        with torch.inference_mode():
            want, got = torch.nn.functional.linear(x, dense.weight, dense.bias), packed(x)
        scale = float(want.abs().max()) or 1.0
        err = float((want.float() - got.float()).abs().max()) / scale
        tolerance = TOLERANCE if dense.weight.dtype == torch.float32 else 1e-2
        if got.shape != want.shape or not err <= tolerance:
            raise ValueError(f"{dense.out_features}x{dense.in_features}: off by {err:.2g} of the output's scale")


def _set(targets: list[tuple[torch.nn.Module, str, torch.nn.Linear]], layers: Sequence[torch.nn.Module]) -> None:
    """Put ``layers`` in the places ``targets`` name, one for one."""
    for (parent, name, _), layer in zip(targets, layers, strict=True):
        setattr(parent, name, layer)


def _inside_peft_layers(model: Any) -> set[int]:
    """ids of the modules inside peft's tuner layers (their base layers and LoRA matrices)."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:
        return set()
    out: set[int] = set()
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            out.update(id(m) for m in module.modules() if m is not module)
    return out
