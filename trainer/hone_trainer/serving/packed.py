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

Which path is faster depends on the processor, and on the rows: on one 2-core
machine oneDNN took about half MKL's time at 1 and at 8 rows; on another MKL
decoded one sequence faster (a step of 31 ms against 48) and oneDNN eight (59
against 75), because MKL's ``sgemm`` copies (packs) the weights it reads on
every call with more than a few rows and reads them straight at one. So
given a ``step`` (one decoding step of the model at a batch size),
:func:`pack` times both paths, alternately, at each of ``rows``, and keeps:

- MKL alone, where it is faster at every batch size;
- oneDNN alone, where it is faster at one row;
- both, where MKL is faster up to some batch size and oneDNN above it: each
  call then takes the faster path for its rows. The dense weights stay beside
  the packed ones (as many bytes again: what the timing held anyway), so this
  is kept only when the memory left afterwards (the container's limit, the
  machine's available memory) is at least that much again; otherwise the
  product of oneDNN's ratios to MKL's times at one row and at the largest
  batch decides, so that a single user's latency counts as much as a full
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
import statistics
import time
from pathlib import Path
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
    """``y = x @ W.T + b`` with ``W`` in oneDNN's layout; with :meth:`keep_dense`, calls of up to ``dense_rows``
    rows go to ``F.linear`` on the dense ``W`` instead."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        # Plain attributes, not buffers: an opaque oneDNN tensor that module machinery (.to, state_dict) must not
        # touch. The model is only served from now on.
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), PACK_FOR_ROWS)
        self.bias = None if bias is None else bias.detach()
        self.dense: torch.Tensor | None = None
        self.dense_rows = 0

    def keep_dense(self, weight: torch.Tensor, rows: int) -> None:
        """Compute calls of at most ``rows`` rows with ``weight`` (the dense one this layer was packed from)."""
        self.dense, self.dense_rows = weight.detach(), rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dense is not None and x.numel() <= self.dense_rows * self.in_features:
            return torch.nn.functional.linear(x, self.dense, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        also = f", dense up to {self.dense_rows} rows" if self.dense is not None else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, oneDNN packed{also}"


def pack(model: Any, step: Callable[[int], object] | None = None, rows: Sequence[int] = (1, 8)) -> int:
    """Replace the model's eligible linear layers in place; the number replaced (0: nothing changed).

    With ``step`` (``step(n)`` runs one decoding step of ``model`` at batch ``n``), the packed layers are kept
    where ``rows``' steps take less time with them than with the dense ones, beside the dense ones where that
    depends on the rows (see the module docstring)."""
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
                                          for n, (d, p) in sorted(times.items()))
        dense_up_to = 0  # MKL is faster at every batch size up to this one
        for n, (d, p) in sorted(times.items()):
            if d > p:
                break
            dense_up_to = n
        if dense_up_to == max(times):
            _set(targets, [child for _, _, child in targets])
            log.info("linear layers stay on torch's default path: with oneDNN's packed weights %s", what)
            return 0
        left = _memory_left() if dense_up_to else None
        # What keeping the dense weights costs: those the model holds anyway (a tied output layer's, the
        # embedding) cost nothing.
        held = {param.data_ptr() for param in model.parameters()}
        extra = sum(child.weight.numel() * child.weight.element_size() for _, _, child in targets
                    if child.weight.data_ptr() not in held)
        if dense_up_to and left is not None and left >= extra:
            for parent, name, child in targets:
                getattr(parent, name).keep_dense(child.weight, dense_up_to)
            log.info("%d linear layers packed for oneDNN beside their dense weights (%.0f MiB more), MKL computing "
                     "calls of up to %d rows: with the packed weights %s on torch's default path", len(targets),
                     extra / 2**20, dense_up_to, what)
            return len(targets)
        # One path for every call: relative, so that a single user's latency counts as much as a full batch's
        # throughput.
        one, most = times[min(times)], times[max(times)]
        why = "" if not dense_up_to else (f" (too little memory left to keep both paths: "
                                          f"{'unknown' if left is None else f'{left / 2**20:.0f} MiB'}, "
                                          f"{extra / 2**20:.0f} MiB needed)")
        if (one[1] / one[0]) * (most[1] / most[0]) >= 1:
            _set(targets, [child for _, _, child in targets])
            log.info("linear layers stay on torch's default path%s: with oneDNN's packed weights %s", why, what)
            return 0
        log.info("%d linear layers packed for oneDNN%s: with them %s on torch's default path", len(targets), why,
                 what)
        return len(targets)
    log.info("%d linear layers packed for oneDNN", len(targets))
    return len(targets)


def _memory_left() -> int | None:
    """Bytes this process could still take: the least of what its cgroup's limit and the machine have left;
    ``None`` where neither can be read."""
    out = []
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            if limit != "max" and int(limit) < 2**60:  # cgroup v1 writes "no limit" as a huge number
                out.append(int(limit) - int(Path(usage_file).read_text()))
                break
        except (OSError, ValueError):
            continue
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                out.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError):
        pass
    return min(out) if out else None


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
