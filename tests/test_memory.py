"""The memory estimate: counted from the model's config, checked against DeepSpeed's own estimators, against the
tensors autograd keeps, and (tests/test_train.py, the README demo) against the peaks training really reaches;
and a FineTuneJob that does not fit is held, saying what would."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from hone_dev.repo import load_sample
from hone_operator.reconcile.finetunejob import Observed, plan
from hone_operator.settings import OperatorSettings
from hone_trainer import contract, models
from hone_trainer.contract.memory import (GiB, MemoryPlan, _activations_per_token, estimate, format_bytes,
                                          parse_quantity)

TS = "2026-12-03T10:00:00Z"
#: Llama 3.1 8B's published config (no weights: the shape is read on the meta device).
LLAMA_8B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
            "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": False,
            "max_position_embeddings": 131072, "torch_dtype": "bfloat16"}


def shape_of(folder: Path, config: dict[str, Any]) -> contract.ModelShape:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    return models.model_shape(models.LocalModel(folder, None, str(folder)))


@pytest.fixture(scope="module")
def llama8b(tmp_path_factory) -> contract.ModelShape:
    return shape_of(tmp_path_factory.mktemp("llama8b"), LLAMA_8B)


def test_the_shape_counts_every_parameter_and_every_adapter_weight(tiny: Path) -> None:
    """Read from the config alone, the counts equal the loaded model's and peft's own."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    shape = models.model_shape(models.LocalModel(tiny, None, str(tiny)))
    model = AutoModelForCausalLM.from_pretrained(str(tiny))
    assert shape.parameters == sum(p.numel() for p in model.parameters())
    assert shape.output_parameters == model.lm_head.weight.numel()  # untied in the tiny model
    for r, targets in ((16, "auto"), (4, ["q_proj", "v_proj"])):
        lora = get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny)), LoraConfig(
            r=r, target_modules="all-linear" if targets == "auto" else targets))
        assert shape.lora_parameters(r, targets) == lora.get_nb_trainable_parameters()[0]


def test_an_8b_model_is_counted_from_its_config_alone(llama8b: contract.ModelShape) -> None:
    assert llama8b.parameters == 8_030_261_248  # Llama 3.1 8B, as published
    assert llama8b.output_parameters == llama8b.embedding_parameters == 4096 * 128256
    assert llama8b.lora_parameters(16, "auto") == 41_943_040  # what peft prints for r=16, all-linear


@pytest.mark.parametrize("gpus", [1, 2, 8])
@pytest.mark.parametrize("offload", [False, True])
def test_zero2_model_states_equal_deepspeeds_own_estimate(llama8b: contract.ModelShape, gpus: int,
                                                          offload: bool) -> None:
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    e = estimate(llama8b, MemoryPlan(method="full", zero_stage=2, gpus_per_node=gpus, offload_optimizer=offload))
    _, gpu = estimate_zero2_model_states_mem_needs(llama8b.parameters, num_gpus_per_node=gpus, cpu_offload=offload)
    assert abs(e.parts["weights"] + e.parts["gradients"] + e.parts["optimizer"] - gpu) <= 4


def test_zero3_spreads_the_model_over_the_gpus(llama8b: contract.ModelShape) -> None:
    one = estimate(llama8b, MemoryPlan(method="full", zero_stage=3, gpus_per_node=1))
    eight = estimate(llama8b, MemoryPlan(method="full", zero_stage=3, gpus_per_node=8))
    states = ("weights", "gradients", "optimizer")
    assert sum(one.parts[k] for k in states) == pytest.approx(20 * llama8b.parameters, rel=1e-6)
    assert sum(eight.parts[k] for k in states) == pytest.approx(20 * llama8b.parameters / 8, rel=1e-6)
    offloaded = estimate(llama8b, MemoryPlan(method="full", zero_stage=3, gpus_per_node=8, offload_params=True,
                                             offload_optimizer=True))
    assert sum(offloaded.parts[k] for k in states) == 0
    assert offloaded.host_per_pod > 8 * 18 * llama8b.parameters / 8  # it all lives in the pod's host memory


def test_qlora_holds_the_linear_layers_in_four_bits(llama8b: contract.ModelShape) -> None:
    lora = estimate(llama8b, MemoryPlan(method="lora"))
    qlora = estimate(llama8b, MemoryPlan(method="qlora"))
    assert lora.parts["weights"] > 15 * GiB  # bf16: 16 GB
    assert 5 * GiB < qlora.parts["weights"] < 6 * GiB  # 7B linear weights in NF4, embeddings in bf16


def measure_saved_bytes(config: dict[str, Any], targets: Any, dropout: float, dtype: str, tokens: int) -> float:
    """Bytes autograd keeps per token in one decoder layer (full fine-tuning when ``targets`` is None): two and
    four layers, the difference halved."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    saved = []
    for layers in (2, 4):
        torch.manual_seed(0)
        cfg = AutoConfig.for_model("llama", **{**config, "num_hidden_layers": layers})
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa", dtype=getattr(torch, dtype))
        if targets is not None:  # in the model's precision, as DeepSpeed casts every parameter (peft keeps fp32)
            model = get_peft_model(model, LoraConfig(r=16, lora_dropout=dropout, target_modules=targets))
            model = model.to(getattr(torch, dtype))
        model.train()
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        seen: dict[int, int] = {}

        def keep(t: Any) -> Any:
            seen.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
            return t

        ids = torch.randint(0, cfg.vocab_size, (2, tokens // 2))
        pos = torch.arange(tokens // 2).remainder(tokens // 4).repeat(2, 1)  # two packed examples a row
        with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
            model(input_ids=ids, position_ids=pos, use_cache=False)
        saved.append(sum(n for ptr, n in seen.items() if ptr not in params))
    return (saved[1] - saved[0]) / 2 / tokens


@pytest.mark.parametrize("targets,dropout", [(None, 0.0), ("all-linear", 0.05), ("all-linear", 0.0),
                                             (["q_proj", "v_proj"], 0.05), (["q_proj", "v_proj", "down_proj"], 0.0)],
                         ids=["full", "lora-all", "lora-all-nodropout", "lora-qv", "lora-qvd-nodropout"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_activation_bytes_are_what_autograd_keeps(tmp_path: Path, targets: Any, dropout: float, dtype: str) -> None:
    """The per-token, per-layer model holds for a shape it was not read from (wider MLP, grouped KV heads), for
    full fine-tuning and LoRA on every or some linear layers, with and without dropout."""
    config = {"hidden_size": 384, "intermediate_size": 1280, "num_attention_heads": 6, "num_key_value_heads": 2,
              "vocab_size": 512, "tie_word_embeddings": True}
    shape = shape_of(tmp_path / "m", {**LLAMA_8B, **config, "num_hidden_layers": 2})
    measured = measure_saved_bytes(config, targets, dropout, dtype, tokens=256)
    plan = MemoryPlan(method="full" if targets is None else "lora", lora_r=16, lora_dropout=dropout,
                      lora_targets="auto" if targets in (None, "all-linear") else targets)
    predicted = _activations_per_token(shape, plan, 4 if dtype == "float32" else 2)
    assert measured == pytest.approx(predicted, rel=0.05)


def test_quantities_read_and_print_as_kubernetes_writes_them() -> None:
    assert parse_quantity("80Gi") == 80 * GiB and parse_quantity("64G") == 64 * 10 ** 9
    assert parse_quantity("21255560Ki") == 21255560 * 1024 and parse_quantity(512) == 512
    assert format_bytes(80 * GiB) == "80Gi" and format_bytes(1536 * 1024 ** 2) == "1.5Gi"
    with pytest.raises(ValueError, match="not a memory quantity"):
        parse_quantity("lots")


# ---- the operator: a job that does not fit is held ------------------------------------------------------------


def validated_body(shape: contract.ModelShape, **spec: Any) -> dict[str, Any]:
    """A FineTuneJob whose ValidatingFiles step found ``shape`` (as the validator's result puts it in status)."""
    obj = load_sample("finetunejob-minimal.yaml")
    obj["metadata"].update(namespace="ns", uid="u-1", generation=1, resourceVersion="7")
    obj["spec"].update(spec)
    hp = contract.resolve_hyperparameters(1000)
    result = contract.ValidationResult(ok=True, examples=1000, tokens_per_epoch=400_000,
                                       trained_tokens_per_epoch=200_000, max_example_tokens=2048, max_step_rows=2,
                                       max_row_tokens=2048, hyperparameters=hp, model=shape)
    return {**obj, "status": {
        "phase": "ValidatingFiles",
        "conditions": [{"type": "FilesValidated", "status": "True", "reason": "Validated", "message": "ok"}],
        "dataset": {"examples": 1000, "tokensPerEpoch": 400_000, "trainedTokensPerEpoch": 200_000,
                    "maxExampleTokens": 2048, "maxStepRows": 2, "maxRowTokens": 2048},
        "estimate": {"hyperparameters": hp.model_dump(mode="json", by_alias=True),
                     "model": result.model.model_dump(mode="json", by_alias=True)}}}


def conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def test_a_job_over_a_gpus_memory_is_held_until_an_edit_makes_it_fit(llama8b: contract.ModelShape) -> None:
    b = validated_body(llama8b, method="full", resources={"gpusPerNode": 1, "gpuMemory": "80Gi"})
    p = plan(b, Observed(), OperatorSettings(), TS)
    assert not [o for o in p.ensure if o["kind"] == "Job"]  # no training pods for a job that cannot fit
    memory = p.status["estimate"]["memory"]
    assert memory["fits"] == "False" and memory["capacity"] == "80Gi" and memory["device"] == "gpu"
    held = conditions(p.status)["MemoryFits"]
    assert held["status"] == "False" and held["reason"] == "InsufficientMemory"
    assert "over the 80Gi of a GPU (spec.resources.gpuMemory)" in held["message"]
    assert "spec.method: lora" in held["message"] and "spec.method: lora" in " ".join(memory["whatFits"])
    assert p.status["phase"] == "Queued" and [e.reason for e in p.events] == ["InsufficientMemory", "Queued"]
    # Held is a converged state: planning again writes nothing and posts nothing.
    b["status"].update(p.status)
    assert plan(b, Observed(), OperatorSettings(), "2026-12-03T10:05:00Z").empty
    # The user follows the advice: the estimate is redone from the edited spec, and the job starts.
    edited = copy.deepcopy(b)
    edited["metadata"]["generation"] = 2
    edited["spec"]["method"] = "lora"
    p = plan(edited, Observed(), OperatorSettings(), TS)
    assert [o["kind"] for o in p.ensure][-1] == "Job"
    fits = conditions(p.status)["MemoryFits"]
    assert fits["status"] == "True" and fits["reason"] == "Fits" and p.status["estimate"]["memory"]["whatFits"] == []


def test_gpu_memory_comes_from_the_operators_settings_and_is_unknown_without_them(
        llama8b: contract.ModelShape) -> None:
    b = validated_body(llama8b, method="lora", resources={"gpusPerNode": 1})
    unknown = plan(b, Observed(), OperatorSettings(), TS)
    assert conditions(unknown.status)["MemoryFits"]["status"] == "Unknown"
    assert "set spec.resources.gpuMemory" in conditions(unknown.status)["MemoryFits"]["message"]
    assert [o["kind"] for o in unknown.ensure][-1] == "Job"  # unknown is not a reason to hold
    small = plan(b, Observed(), OperatorSettings(training_gpu_memory="16Gi"), TS)
    message = conditions(small.status)["MemoryFits"]["message"]
    assert "over the 16Gi of a GPU (the operator's trainingGpuMemory)" in message
    assert "would fit: together: spec.memory.gradientCheckpointing: true; " in message
    assert "spec.method: qlora" in message and "gpusPerNode" not in message  # cheapest changes first


def test_a_cpu_job_over_its_pods_memory_is_told_the_memory_to_ask_for(tmp_path: Path) -> None:
    shape = shape_of(tmp_path / "m", {**LLAMA_8B, "hidden_size": 576, "intermediate_size": 1536,
                                      "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
                                      "vocab_size": 49152, "tie_word_embeddings": True})
    b = validated_body(shape, resources={"gpusPerNode": 0, "memory": "2Gi"})
    p = plan(b, Observed(), OperatorSettings(), TS)
    memory = p.status["estimate"]["memory"]
    assert memory["device"] == "cpu" and memory["fits"] == "False"
    ask = [w for w in memory["whatFits"] if w.startswith("spec.resources.memory: ")]
    assert ask and parse_quantity(ask[0].split(": ")[1]) > parse_quantity(memory["perRank"])
    # Turned off, the job starts anyway and the condition says so.
    b["spec"]["memory"] = {"checkFit": False}
    p = plan(b, Observed(), OperatorSettings(), TS)
    assert [o["kind"] for o in p.ensure][-1] == "Job"
    assert conditions(p.status)["MemoryFits"]["reason"] == "CheckDisabled"
