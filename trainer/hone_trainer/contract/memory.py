"""How much memory one training rank needs, estimated before anything is scheduled.

Pure arithmetic over the model's shape (:class:`ModelShape`, read by the
ValidatingFiles step from the model's config on the meta device: no weights)
and the job's plan (:class:`MemoryPlan`: method, ZeRO stage, offload, ranks,
micro-batch, checkpointing). The operator holds a FineTuneJob whose estimate
does not fit and says what would (:func:`what_fits`); ``hone validate``
prints the same numbers. docs/memory.md gives the model and its measured error.

Per rank, on its device (a GPU; on CPU the process's host memory):

* **model states**, as in the ZeRO paper (Rajbhandari et al. 2020) and DeepSpeed's
  own estimators: weights ``w`` bytes a parameter (bf16 on GPUs, fp32 on CPU),
  gradients ``w``, and for the optimizer fp32 gradients, master weights, Adam's m
  and v (16 bytes) for each *trainable* parameter;
  ZeRO-1 splits the optimizer over the ranks, ZeRO-2 the gradients too, ZeRO-3
  the weights too; offload moves the optimizer (or ZeRO-3's weights) to host
  memory. LoRA's frozen base is weights only; QLoRA's linear layers hold NF4
  (4 bits and one byte of scale a 64-block);
* **activations** of the largest micro-batch, per token and layer, counted from
  the tensors autograd keeps in a Llama-style block (measured with saved-tensor
  hooks: :data:`FULL_ACTIVATION_BYTES`, :data:`FROZEN_ACTIVATION_BYTES` and what
  each LoRA adapter adds); with gradient checkpointing one layer input per
  layer plus one layer recomputed;
* **logits**: the model's [tokens, vocabulary] output, the labelled positions
  picked from it and their gradients, plus two fp32 loss chunks;
* **buffers**: DeepSpeed's gradient reduce bucket (ZeRO-1/2), or the layers
  ZeRO-3 gathers and prefetches;
* **fragmentation**: a tenth of the transient activations and logits, which
  the allocator cannot always reuse (measured);
* **runtime**: on a GPU the CUDA context and workspaces; on CPU the Python
  process (torch, DeepSpeed, transformers imported) and the peak of loading the
  weights when it exceeds training's.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field

from hone_trainer.contract.base import CamelModel
from hone_trainer.contract.config import TrainerConfig

MiB = 1024 ** 2
GiB = 1024 ** 3

#: Saved tensors of one Llama-style decoder layer, bytes per token, by weight bytes: coefficients of (hidden,
#: intermediate, head_dim), for full fine-tuning and for a frozen base. Measured with torch's saved-tensor hooks
#: over configurations varying each dimension (sdpa attention, packed position ids); see docs/memory.md.
FULL_ACTIVATION_BYTES: dict[int, tuple[float, float, float]] = {4: (40, 16, 16), 2: (24, 8, 8)}
FROZEN_ACTIVATION_BYTES: dict[int, tuple[float, float, float]] = {4: (24, 12, 8), 2: (16, 6, 4)}
#: What each LoRA adapter adds to a frozen layer: with dropout, its dropped-out input and the mask (2 x w bytes per
#: input feature); without, its input once per group of adapters that read the same tensor (q/k/v read one; the
#: frozen MLP keeps gate/up's input already); and its rank-r output (w bytes each).
SHARED_INPUTS = ({"q_proj", "k_proj", "v_proj"}, {"gate_proj", "up_proj"})
KEPT_BY_FROZEN = {"gate_proj", "up_proj"}
#: The trainer's fp32 loss chunk, in label positions (``training.trainer`` uses this one).
LOSS_CHUNK = 1024
#: DeepSpeed's defaults: ZeRO-1/2 reduce and all-gather buckets, ZeRO-3's prefetch bucket (elements).
BUCKET_ELEMENTS = 500_000_000
PREFETCH_ELEMENTS = 50_000_000
#: Memory a rank uses besides tensors: the CUDA context, cuBLAS and NCCL workspaces on a GPU (typical of
#: current drivers); on CPU the Python process with torch, DeepSpeed and transformers imported (measured).
GPU_RUNTIME_BYTES = 1 * GiB
CPU_RUNTIME_BYTES = 512 * MiB
#: Transient tensors (activations, logits and their gradients) come and go every micro-batch, and the allocator
#: cannot always reuse their space: a share of them on top, measured (docs/memory.md).
FRAGMENTATION = 0.10
#: NF4: 4 bits a weight plus, with double quantization, about one byte of scale per 64-weight block.
NF4_BYTES = 0.5 + 1 / 64


class ModelShape(CamelModel):
    """What memory depends on in a model: read from its config, never its weights."""

    architecture: str = Field(description="The transformers architecture, e.g. LlamaForCausalLM.")
    parameters: int = Field(ge=0, description="All parameters (tied embeddings counted once).")
    embedding_parameters: int = Field(0, ge=0, description="Input embedding parameters.")
    output_parameters: int = Field(0, ge=0, description="Output layer (lm_head) parameters; 0 when tied.")
    layers: int = Field(ge=1, description="Decoder layers.")
    hidden_size: int = Field(ge=1, description="Width of the residual stream.")
    intermediate_size: int = Field(ge=1, description="Width of the MLP.")
    head_dim: int = Field(ge=1, description="Width of one attention head.")
    vocab_size: int = Field(ge=1, description="Tokens in the vocabulary (the logits' width).")
    linear: dict[str, list[int]] = Field(
        default_factory=dict,
        description="Per module name (q_proj...), over all layers: the linear weights, in+out features summed "
                    "(LoRA of rank r adds r times that), and the input width. Excludes the output layer, as peft's "
                    "all-linear does.")
    weight_file_bytes: int = Field(0, ge=0, description="Size of the weight files.")
    gguf: bool = Field(False, description="Weights in a GGUF file (dequantized when loaded).")

    def lora_parameters(self, r: int, targets: list[str] | Literal["auto"]) -> int:
        names = list(self.linear) if targets == "auto" else [n for n in self.linear if n in targets]
        return r * sum(self.linear[n][1] for n in names)

    @property
    def linear_parameters(self) -> int:
        return sum(entry[0] for entry in self.linear.values())


class MemoryPlan(CamelModel):
    """The job settings memory depends on (from a FineTuneJob's spec and its resolved hyperparameters)."""

    method: Literal["lora", "qlora", "full"] = "lora"
    lora_r: int = 16
    lora_targets: list[str] | Literal["auto"] = "auto"
    zero_stage: int | Literal["auto"] = "auto"
    offload_optimizer: bool = False
    offload_params: bool = False
    gpus_per_node: int = Field(1, ge=0)
    nodes: int = Field(1, ge=1)
    micro_batch_tokens: int = Field(8192, ge=1)
    gradient_checkpointing: bool = False
    max_seq_length: int = 2048
    pack_length: int | None = None
    lora_dropout: float = 0.05
    batch_size: int | None = Field(None, description="Examples per step, once resolved (bounds a rank's tokens).")
    step_rows: int | None = Field(None, description="The most packed rows a step has, once planned.")
    longest_row: int | None = Field(None, description="The longest packed row, once planned.")
    step_padded_tokens: int | None = Field(None, description="The most padded tokens of a step, once planned.")
    max_example_tokens: int | None = Field(None, description="The longest example, once counted.")
    labelled_fraction: float = Field(1.0, ge=0, le=1, description="Share of tokens the loss is computed on.")

    @property
    def gpu(self) -> bool:
        return self.gpus_per_node > 0

    @property
    def world(self) -> int:
        return self.nodes * max(self.gpus_per_node, 1)

    @property
    def stage(self) -> int:
        """The ZeRO stage the trainer will use (``ds_config.zero_stage``'s rule for auto)."""
        if self.zero_stage != "auto":
            return int(self.zero_stage)
        return 3 if self.method == "full" and self.world > 1 else 2

    @property
    def row_tokens(self) -> int:
        """The longest packed row: as validation planned the run's rows, else the pack length or one example up
        to maxSeqLength alone (whichever is longer)."""
        if self.longest_row:
            return self.longest_row
        pack = self.pack_length or min(self.max_seq_length, 512)
        return max(pack, min(self.max_example_tokens or self.max_seq_length, self.max_seq_length))

    @property
    def step_tokens(self) -> int:
        """Tokens (padding included) of the largest micro-batch a rank puts through the model: as many of its
        share of a step's rows as fit the micro-batch budget, padded to the longest row."""
        row = self.row_tokens
        micro = max(row, (self.micro_batch_tokens // row) * row)
        rows = self.step_rows or self.batch_size
        if rows:
            micro = min(micro, math.ceil(rows / self.world) * row)
        if self.step_padded_tokens:  # no rank gets more than a whole step
            micro = min(micro, self.step_padded_tokens)
        return micro


def plan_for(config: TrainerConfig, dataset: Mapping[str, Any], batch_size: int | None, gpus_per_node: int,
             nodes: int) -> MemoryPlan:
    """The plan of a trainer config on ``gpus_per_node`` x ``nodes``, bounded by what validation counted
    (``dataset``: status.dataset's keys, or a ValidationResult's JSON) and the resolved batch size."""
    tokens, trained = dataset.get("tokensPerEpoch") or 0, dataset.get("trainedTokensPerEpoch") or 0
    return MemoryPlan(
        method=config.method, lora_r=config.lora.r, lora_targets=config.lora.target_modules,
        lora_dropout=config.lora.dropout, zero_stage=config.deepspeed.zero_stage,
        offload_optimizer=config.deepspeed.offload_optimizer, offload_params=config.deepspeed.offload_params,
        gpus_per_node=gpus_per_node, nodes=nodes, micro_batch_tokens=config.micro_batch_tokens,
        gradient_checkpointing=config.gradient_checkpointing, max_seq_length=config.max_seq_length,
        pack_length=config.pack_length, batch_size=batch_size,
        max_example_tokens=dataset.get("maxExampleTokens") or None, step_rows=dataset.get("maxStepRows") or None,
        longest_row=dataset.get("maxRowTokens") or None, step_padded_tokens=dataset.get("maxStepTokens") or None,
        labelled_fraction=min(1.0, trained / tokens) if tokens else 1.0,
    )


class MemoryEstimate(CamelModel):
    """One rank's peak memory, by part; ``total`` is what its device must hold."""

    device: Literal["gpu", "cpu"]
    world: int = Field(description="Ranks (GPUs, or one process per node on CPU).")
    zero_stage: int
    micro_batch_tokens: int = Field(description="Tokens of the largest micro-batch, padding included.")
    parts: dict[str, int] = Field(description="Bytes: weights, gradients, optimizer, activations, logits, buffers, "
                                              "fragmentation, runtime.")
    total: int = Field(description="Bytes one rank needs on its device (GPU memory; on CPU, host memory).")
    host_per_pod: int = Field(description="Host memory bytes one training pod needs (all its ranks).")

    def summary(self) -> str:
        where = "per GPU" if self.device == "gpu" else "per training process"
        big = sorted(((v, k) for k, v in self.parts.items() if v), reverse=True)[:3]
        return (f"{format_bytes(self.total)} {where} ({', '.join(f'{k} {format_bytes(v)}' for v, k in big)}; "
                f"ZeRO-{self.zero_stage}, {self.world} rank(s), micro-batches of {self.micro_batch_tokens} tokens)")


def _activations_per_token(shape: ModelShape, plan: MemoryPlan, w: int) -> float:
    """Bytes one decoder layer keeps per token for the backward pass."""
    if plan.method == "full":
        a_h, a_i, a_d = FULL_ACTIVATION_BYTES[w]
        return a_h * shape.hidden_size + a_i * shape.intermediate_size + a_d * shape.head_dim
    a_h, a_i, a_d = FROZEN_ACTIVATION_BYTES[w]
    frozen = a_h * shape.hidden_size + a_i * shape.intermediate_size + a_d * shape.head_dim
    adapted = [n for n in shape.linear if plan.lora_targets == "auto" or n in plan.lora_targets]
    width = {n: (shape.linear[n][2] if len(shape.linear[n]) > 2 else shape.hidden_size) for n in adapted}
    if plan.lora_dropout > 0:
        inputs = sum(2 * w * width[n] for n in adapted)
    else:
        inputs, seen = 0, set()
        for n in adapted:
            group = next((g for g in SHARED_INPUTS if n in g), {n})
            if n not in KEPT_BY_FROZEN and not seen & group:
                inputs += w * width[n]
            seen |= group
    return frozen + inputs + w * plan.lora_r * len(adapted)


def estimate(shape: ModelShape, plan: MemoryPlan) -> MemoryEstimate:
    """The peak memory of one rank of ``plan`` training ``shape``."""
    gpu, n, stage = plan.gpu, plan.world, plan.stage
    w = 2 if gpu else 4
    p = shape.parameters
    lora = plan.method in ("lora", "qlora")
    trainable = shape.lora_parameters(plan.lora_r, plan.lora_targets) if lora else p
    # Weights: the frozen base (LoRA) and the trainable parameters' working copy.
    if plan.method == "qlora":
        quantized = shape.linear_parameters
        base = int(quantized * NF4_BYTES + (p - quantized) * 2)
    else:
        base = (p if lora else 0) * w
    weights = base + trainable * w
    host_states = 0
    if stage == 3:
        if plan.offload_params:
            host_states += weights // n
            weights = 0
        else:
            weights //= n
    gradients = trainable * w // (n if stage >= 2 else 1)
    # The optimizer's partition: fp32 gradients, fp32 master weights, Adam's m and v (DeepSpeed's own estimate,
    # estimate_zero2_model_states_mem_needs, counts the same 16 bytes).
    optimizer = 16 * trainable // (n if stage >= 1 else 1)
    if plan.offload_optimizer:  # the partition, and with it the reduced gradients, live in host memory
        host_states += optimizer + (gradients if stage >= 1 else 0)
        optimizer = 0
        gradients = gradients if stage == 0 else 0
    # DeepSpeed's buffers: ZeRO-1/2 buckets its gradient reduction and parameter all-gather; ZeRO-3 holds the
    # layers it has gathered (the current and the prefetched one, the embedding while it runs) at full size.
    layer = (shape.linear_parameters // shape.layers) if shape.linear else p // shape.layers
    if stage == 3:
        buffers = (2 * layer + shape.embedding_parameters) * w + PREFETCH_ELEMENTS * w
        buffers = min(buffers, p * w)
    elif stage in (1, 2) and gpu:
        # The reduce bucket is allocated whole each step (whatever the trainable size), twice with overlap_comm;
        # ZeRO-1 accumulates in fp32.
        buffers = 2 * BUCKET_ELEMENTS * (4 if stage == 1 else w)
    elif stage in (1, 2):
        buffers = min(BUCKET_ELEMENTS, trainable) * w  # on CPU only the pages written become resident
    else:
        buffers = 0
    # Activations of the largest micro-batch.
    t = plan.step_tokens
    per_layer = _activations_per_token(shape, plan, w)
    if plan.gradient_checkpointing:
        layers = t * shape.layers * shape.hidden_size * w + t * per_layer
    else:
        layers = t * shape.layers * per_layer
    mask = t * plan.row_tokens  # the packed rows' boolean attention mask
    activations = int(layers + 4 * t * shape.hidden_size * w + mask)
    logits = int(t * shape.vocab_size * w * (1 + 1 + 2 * plan.labelled_fraction)
                 + 2 * LOSS_CHUNK * shape.vocab_size * 4)
    if gpu:
        runtime = GPU_RUNTIME_BYTES
    else:
        # Loading a GGUF file dequantizes every tensor before the model takes it: twice the weights for a
        # moment, beside the mapped file. Training's own peak is usually higher; the larger one counts.
        loading = p * w * (2 if shape.gguf else 1) + (shape.weight_file_bytes if shape.gguf else 0)
        training = weights + gradients + optimizer + buffers + activations + logits
        runtime = CPU_RUNTIME_BYTES + max(0, loading - training)
    parts = {"weights": weights, "gradients": gradients, "optimizer": optimizer, "activations": activations,
             "logits": logits, "buffers": buffers, "fragmentation": int(FRAGMENTATION * (activations + logits)),
             "runtime": runtime}
    total = sum(parts.values())
    ranks_per_pod = max(plan.gpus_per_node, 1)
    host_per_pod = total if not gpu else ranks_per_pod * (CPU_RUNTIME_BYTES + host_states)
    return MemoryEstimate(device="gpu" if gpu else "cpu", world=n, zero_stage=stage, micro_batch_tokens=t,
                          parts=parts, total=total, host_per_pod=host_per_pod)


def alternatives(shape: ModelShape, plan: MemoryPlan) -> list[tuple[str, MemoryPlan]]:
    """Changes a user can make to the spec, each with the plan it gives, the cheapest kind first."""
    out: list[tuple[str, MemoryPlan]] = []

    def add(text: str, **changes: object) -> None:
        out.append((text, plan.model_copy(update=changes)))

    if not plan.gradient_checkpointing:
        add("spec.memory.gradientCheckpointing: true", gradient_checkpointing=True)
    if plan.micro_batch_tokens > plan.row_tokens:
        smaller = max(plan.row_tokens, plan.micro_batch_tokens // 4)
        add(f"spec.memory.microBatchTokens: {smaller}", micro_batch_tokens=smaller)
    if plan.method == "lora" and plan.gpu:
        add("spec.method: qlora", method="qlora")
    if plan.method == "full":
        add("spec.method: lora", method="lora")
    if plan.world > 1 and plan.stage < 3:
        add("spec.deepspeed.zeroStage: 3", zero_stage=3)
    if not plan.offload_optimizer:
        add("spec.deepspeed.offloadOptimizer: true", offload_optimizer=True)
    if not plan.offload_params and plan.gpu and plan.world > 1:
        add("spec.deepspeed.zeroStage: 3 with offloadParams: true", zero_stage=3, offload_params=True,
            offload_optimizer=True)
    if plan.gpu:
        for gpus in (2, 4, 8):
            if gpus > plan.gpus_per_node:
                add(f"spec.resources.gpusPerNode: {gpus} with spec.deepspeed.zeroStage: 3", gpus_per_node=gpus,
                    zero_stage=3)
        for nodes in (2, 4, 8, 16):
            if nodes > plan.nodes:
                add(f"spec.resources.gpusPerNode: 8, nodes: {nodes} with spec.deepspeed.zeroStage: 3",
                    gpus_per_node=max(plan.gpus_per_node, 8), nodes=nodes, zero_stage=3)
    return out


def what_fits(shape: ModelShape, plan: MemoryPlan, capacity: int, limit: int = 3) -> list[str]:
    """Up to ``limit`` single changes to the spec after which a rank fits in ``capacity`` bytes, each with its
    estimate; when no single change is enough, the fewest of them that fit together, in the order listed by
    :func:`alternatives` (cheapest first)."""
    fits = []
    for text, changed in alternatives(shape, plan):
        e = estimate(shape, changed)
        if e.total <= capacity:
            fits.append(f"{text} ({format_bytes(e.total)})")
        if len(fits) == limit:
            break
    if fits:
        return fits
    together: list[str] = []
    current, total = plan, estimate(shape, plan).total
    while True:  # the cheapest change that still helps, again and again, until it fits
        for text, changed in alternatives(shape, current):
            smaller = estimate(shape, changed).total
            if smaller < total:
                together.append(text)
                current, total = changed, smaller
                break
        else:
            return []
        if total <= capacity:
            return [f"together: {'; '.join(together)} ({format_bytes(total)})"]


_UNITS = {"": 1, "k": 1000, "M": 1000 ** 2, "G": 1000 ** 3, "T": 1000 ** 4, "P": 1000 ** 5,
          "E": 1000 ** 6,
          "Ki": 1024, "Mi": MiB, "Gi": GiB, "Ti": 1024 ** 4, "Pi": 1024 ** 5, "Ei": 1024 ** 6}


def parse_quantity(value: str | int) -> int:
    """Bytes of a Kubernetes memory quantity ("80Gi", "64G", "1e9", 512)."""
    if isinstance(value, int):
        return value
    m = re.fullmatch(r"\s*([0-9.]+(?:[eE][0-9]+)?)\s*(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?\s*", str(value))
    if not m:
        raise ValueError(f"{value!r} is not a memory quantity (e.g. 80Gi)")
    return int(float(m.group(1)) * _UNITS[m.group(2) or ""])


def format_bytes(n: int | float) -> str:
    """Bytes the way Kubernetes writes memory (binary units), to three significant digits."""
    for unit in ("Ti", "Gi", "Mi", "Ki"):
        size = _UNITS[unit]
        if abs(n) >= size:
            value = n / size
            return f"{value:.3g}{unit}" if value < 1000 else f"{value:.0f}{unit}"
    return f"{int(n)}"
