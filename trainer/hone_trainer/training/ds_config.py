"""The DeepSpeed config, generated from the job's settings.

DeepSpeed is configuration, not code: the ZeRO stage, offload, precision,
optimizer and schedule are written here from :class:`TrainerConfig`, and a
user's ``deepspeed.config`` override is merged on top and checked.

Choices:

* ZeRO ``auto``: stage 2 for LoRA/QLoRA (the adapter is small, the frozen
  base needs no partitioning), stage 3 for full fine-tuning on several ranks;
* bf16 on GPUs, fp32 on CPU (DeepSpeed rejects fp16 on CPU and bf16 is slower there);
* AdamW with ``torch_adam`` (the fused kernel would be compiled at start-up);
* linear warm-up over the first 3% of steps, then linear decay.

The batch size in examples is handled by the packer, not by DeepSpeed's batch
keys (fixed at a micro batch of 1 and no accumulation steps): each rank splits
its packed rows of a step into micro-batches of ``microBatchTokens`` and marks
the last one as the gradient accumulation boundary, so DeepSpeed accumulates
over however many a step needs and steps once.
"""

from __future__ import annotations

import copy
from typing import Any

from hone_trainer.contract import TrainerConfig

BASE_LEARNING_RATE = {"lora": 2e-4, "qlora": 2e-4, "full": 2e-5}
#: Keys the override may not change: Hone's loop relies on them.
FIXED_KEYS = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size")


class DeepSpeedConfigError(ValueError):
    pass


def zero_stage(config: TrainerConfig, world: int) -> int:
    stage = config.deepspeed.zero_stage
    if stage != "auto":
        return int(stage)
    return 3 if config.method == "full" and world > 1 else 2


def merge(base: dict[str, Any], override: dict[str, Any], path: str = "") -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value, f"{path}{key}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


def build(config: TrainerConfig, *, world: int, gpu: bool, learning_rate: float, total_steps: int) -> dict[str, Any]:
    stage = zero_stage(config, world)
    zero: dict[str, Any] = {"stage": stage, "overlap_comm": gpu, "contiguous_gradients": True}
    if config.deepspeed.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": gpu}
    if config.deepspeed.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": gpu}
    if stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = False
    warmup = max(1, int(0.03 * total_steps)) if total_steps > 1 else 0
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "train_batch_size": world,
        "gradient_clipping": 1.0,
        "zero_optimization": zero,
        "bf16": {"enabled": gpu},
        "fp16": {"enabled": False},
        "optimizer": {
            "type": "AdamW",
            "params": {"lr": learning_rate, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0,
                       "torch_adam": True},
        },
        "scheduler": {
            "type": "WarmupDecayLR",
            "params": {"warmup_min_lr": 0.0, "warmup_max_lr": learning_rate, "warmup_num_steps": warmup,
                       "total_num_steps": max(total_steps, warmup + 1), "warmup_type": "linear"},
        },
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    override = config.deepspeed.config_override or {}
    for key in FIXED_KEYS:
        if key in override:
            raise DeepSpeedConfigError(
                f"spec.deepspeed.config.{key} is set by Hone (one packed batch per rank per step); "
                "change hyperparameters.batchSize instead")
    merged = merge(ds, override)
    _check(merged, gpu)
    return merged


def _check(ds: dict[str, Any], gpu: bool) -> None:
    stage = ds.get("zero_optimization", {}).get("stage")
    if stage not in (0, 1, 2, 3):
        raise DeepSpeedConfigError(f"spec.deepspeed.config.zero_optimization.stage {stage!r} must be 0-3")
    if not gpu and (ds.get("fp16", {}).get("enabled") or ds.get("bf16", {}).get("enabled")):
        raise DeepSpeedConfigError("spec.deepspeed.config: fp16/bf16 need GPUs; on CPU Hone trains in fp32")
    if ds.get("fp16", {}).get("enabled") and ds.get("bf16", {}).get("enabled"):
        raise DeepSpeedConfigError("spec.deepspeed.config: fp16 and bf16 cannot both be enabled")
    if "offload_param" in ds.get("zero_optimization", {}) and stage != 3:
        raise DeepSpeedConfigError("spec.deepspeed.offloadParams needs ZeRO stage 3")
    clip = ds.get("gradient_clipping")
    if not isinstance(clip, (int, float)) or clip < 0:
        raise DeepSpeedConfigError(f"spec.deepspeed.config.gradient_clipping {clip!r} must be a number >= 0")
