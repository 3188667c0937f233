"""Does a FineTuneJob fit? Its memory estimate against what one rank has, before any pod exists.

The estimate itself is the trainer contract's (:mod:`hone_trainer.contract.memory`,
torch-free), of the trainer config resolved from the spec as it is now (an edit
that makes the job fit takes effect at once, with no new validation); this
module decides: a GPU's memory is ``spec.resources.gpuMemory`` or the operator's
``trainingGpuMemory``; on CPU a rank is the whole training pod, whose memory
limit is known.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hone_operator.api.v1alpha1 import FineTuneJobSpec, MemoryStatus
from hone_operator.settings import OperatorSettings
from hone_trainer.contract import ModelShape, ResolvedHyperparameters, TrainerConfig
from hone_trainer.contract.memory import estimate, format_bytes, parse_quantity, plan_for, what_fits


@dataclass
class Fit:
    status: dict[str, Any]
    #: False: held (the message says by how much and what would fit); None: nothing to check against.
    fits: bool | None
    message: str


def capacity(spec: FineTuneJobSpec, settings: OperatorSettings) -> tuple[int | None, str]:
    """Bytes one rank has, and the field they come from."""
    if spec.resources.gpusPerNode == 0:
        limit = spec.resources.memory or settings.training_resources.memory
        where = "spec.resources.memory" if spec.resources.memory else "the operator's default training memory"
        return parse_quantity(limit), where
    if spec.resources.gpuMemory:
        return parse_quantity(spec.resources.gpuMemory), "spec.resources.gpuMemory"
    if settings.training_gpu_memory:
        return parse_quantity(settings.training_gpu_memory), "the operator's trainingGpuMemory"
    return None, ""


def check(spec: FineTuneJobSpec, config: TrainerConfig, shape: ModelShape,
          hyperparameters: ResolvedHyperparameters | None, dataset: dict[str, Any] | None,
          settings: OperatorSettings, available: tuple[int, str] | None = None) -> Fit:
    """The estimate of ``spec`` as it is now, against one rank's capacity and, with GPUs, the pod's host memory
    (offloaded states live there). ``available``: bytes one rank has and where they come from, instead of the
    spec's (a local run on this machine)."""
    plan = plan_for(config, dataset or {}, hyperparameters.batch_size if hyperparameters else None,
                    spec.resources.gpusPerNode, spec.resources.nodes)
    e = estimate(shape, plan)
    have, where = available or capacity(spec, settings)
    unit = "GPU" if plan.gpu else "training pod"
    fits = None if have is None else e.total <= have
    suggestions = what_fits(shape, plan, have) if have is not None and not fits else []
    if fits is False and not plan.gpu:
        suggestions.append(f"spec.resources.memory: {format_bytes(_round_up(e.total * 1.1))}")
    problems = []
    if fits is False:
        problems.append(f"over the {format_bytes(have)} {_of(unit, where)}")
    if plan.gpu:
        host = parse_quantity(spec.resources.memory or settings.training_resources.memory)
        if e.host_per_pod > host:
            fits = False
            problems.append(f"and its pod needs {format_bytes(e.host_per_pod)} of host memory, over its limit "
                            f"{format_bytes(host)}")
            suggestions.append(f"spec.resources.memory: {format_bytes(_round_up(e.host_per_pod * 1.1))}")
    status = MemoryStatus(
        device=e.device, perRank=format_bytes(e.total), capacity=format_bytes(have) if have else "unknown",
        fits="Unknown" if fits is None else str(fits), hostPerPod=format_bytes(e.host_per_pod),
        parts={k: format_bytes(v) for k, v in e.parts.items()}, ranks=e.world, zeroStage=e.zero_stage,
        microBatchTokens=e.micro_batch_tokens, whatFits=suggestions,
    ).to_status()
    if fits is False:
        fix = "; ".join(suggestions) if suggestions else "no single change fits: use a smaller base model"
        message = f"estimated {e.summary()}, {' '.join(problems)}; would fit: {fix}"
    elif fits:
        message = f"estimated {e.summary()}, within the {format_bytes(have)} {_of(unit, where)}"
    else:
        message = (f"estimated {e.summary()}; GPU memory unknown: set spec.resources.gpuMemory (or the operator's "
                   "trainingGpuMemory) to have it checked")
    return Fit(status, fits, message)


def _round_up(n: float) -> int:
    """Up to a whole GiB (or MiB under 1 GiB): a limit a person would write."""
    step = 1024 ** 3 if n >= 1024 ** 3 else 1024 ** 2
    return int(-(-n // step) * step)


def _of(unit: str, where: str) -> str:
    return where if where.startswith("available") else f"of a {unit} ({where})"
