"""FineTuneJob (short name ``ftj``): a fine-tuning job, its spec and its status."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hone_operator.api.v1alpha1.common import (
    API_VERSION,
    ApiModel,
    cel_rules,
    StatusModel,
    AutoOrPositiveInt,
    AutoOrPositiveNumber,
    ZeroStage,
    Quantity,
    FreeForm,
    check_quantity,
    ConfigMapKeyRef,
    SecretRef,
    URI_SCHEMES,
    check_uri,
    Condition,
    ObjectMeta,
)
from hone_operator.api.v1alpha1.tokenbudget import ReservedEstimate
from hone_trainer.contract import CheckpointInfo, ModelShape, Problem, Progress, ResolvedHyperparameters


class BaseModelSpec(ApiModel):
    """The model to fine-tune."""

    uri: str = Field(
        description="Where the base model comes from: a Hugging Face id (org/name or "
        "hf://org/name), pvc://<claim>/<path> (a directory with config.json and "
        "*.safetensors, or a .gguf file), s3://bucket/prefix, embedded://smollm2-135m-instruct "
        "(SmolLM2-135M-Instruct shipped inside the runtime image: no hub needed), or - with "
        "`hone run` only - file:///path.",
        min_length=1,
    )
    revision: str | None = Field(
        None, description="Hugging Face revision (branch, tag or commit) to pin the model to."
    )
    trustRemoteCode: bool = Field(
        False,
        alias="trustRemoteCode",
        description="Allow the model repository's own Python code to run. Off by default; "
        "only turn it on for models whose code you have reviewed.",
    )
    credentialsSecret: SecretRef | None = Field(
        None,
        alias="credentialsSecret",
        description="Secret with a Hugging Face token (key `token`) or S3 credentials, "
        "mounted read-only as files.",
    )

    @field_validator("uri")
    @classmethod
    def _uri(cls, v: str) -> str:
        return check_uri(v, URI_SCHEMES, "baseModel.uri")


class LoraSpec(ApiModel):
    """LoRA adapter settings (also used by QLoRA)."""

    r: int = Field(16, ge=1, le=1024, description="LoRA rank: the inner dimension of the adapter matrices.")
    alpha: int = Field(32, ge=1, description="LoRA alpha: the update is scaled by alpha / r.")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapter input during training.")
    targetModules: list[str] | None = Field(
        None,
        alias="targetModules",
        description="Module names to adapt (e.g. q_proj, v_proj). Empty means auto: every "
        "attention and MLP projection of the architecture.",
    )


def _got(*fields: str) -> str:
    """A CEL expression naming which of ``fields`` are set, comma-separated, or 'none'."""
    parts = []
    for i, name in enumerate(fields):
        if i:
            before = " || ".join(f"has(self.{f})" for f in fields[:i])
            parts.append(f"(({before}) && has(self.{name}) ? ', ' : '')")
        parts.append(f"(has(self.{name}) ? '{name}' : '')")
    none = " && ".join(f"!has(self.{f})" for f in fields)
    return f"(({none}) ? 'none' : " + " + ".join(parts) + ")"


class DataSource(ApiModel):
    """A chat JSONL file in OpenAI's format. Set exactly one of uri, configMap, inline, file."""

    model_config = cel_rules({
        "rule": "[has(self.uri), has(self.configMap), has(self.inline), has(self.file)].filter(x, x).size() == 1",
        "messageExpression": "'set exactly one of uri, configMap, inline, file (got ' + " + _got(
            "uri", "configMap", "inline", "file") + " + ')'",
    })

    uri: str | None = Field(
        None,
        description="pvc://<claim>/<path>, s3://bucket/key or https://host/path of a JSONL "
        "file; file:///path with `hone run` only.",
    )
    configMap: ConfigMapKeyRef | None = Field(
        None, alias="configMap", description="A key of a ConfigMap in the same namespace (up to 1 MiB)."
    )
    inline: str | None = Field(
        None, description="The JSONL text itself, for small examples and tests.", max_length=1_000_000
    )
    file: str | None = Field(
        None, pattern=r"^file-[a-z0-9]{24}$",
        description="A file uploaded to `hone api` in this namespace, by its id (file-…): read from the API's "
                    "store with the Secret the operator's api_store_secret names.",
    )
    credentialsSecret: SecretRef | None = Field(
        None,
        alias="credentialsSecret",
        description="Secret with credentials for an s3:// or https:// uri, mounted as files.",
    )

    @field_validator("uri")
    @classmethod
    def _uri(cls, v: str | None) -> str | None:
        if v is None:
            return v
        return check_uri(v, ("pvc", "s3", "http", "https", "file"), "uri")

    @model_validator(mode="after")
    def _exactly_one(self) -> "DataSource":
        given = [k for k in ("uri", "configMap", "inline", "file") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "set exactly one of uri, configMap, inline, file"
                + (f" (got {', '.join(given)})" if given else " (got none)")
            )
        return self


class Hyperparameters(ApiModel):
    """Training hyperparameters, with OpenAI's semantics for `auto`."""

    epochs: AutoOrPositiveInt = Field(
        "auto",
        description="Passes over the training file, or `auto` (3, adjusted so that 100 to "
        "25,000 examples are seen in total).",
    )
    batchSize: AutoOrPositiveInt = Field(
        "auto",
        alias="batchSize",
        description="Examples per optimizer step across all GPUs, or `auto` (about 0.2% of "
        "the examples, 1 to 256).",
    )
    learningRateMultiplier: AutoOrPositiveNumber = Field(
        "auto",
        alias="learningRateMultiplier",
        description="Scales the method's base learning rate: a number > 0, or `auto`.",
    )
    maxSeqLength: int = Field(
        2048, alias="maxSeqLength", ge=16, le=1_048_576, description="Longest example, in tokens."
    )
    overLength: Literal["truncate", "drop"] = Field(
        "truncate",
        alias="overLength",
        description="What to do with examples longer than maxSeqLength: truncate or drop them.",
    )
    seed: int = Field(42, ge=0, description="Seed for shuffling, initialisation and dropout.")


class Toleration(ApiModel):
    """A Kubernetes toleration for the training pods."""

    key: str | None = Field(None, description="Taint key; empty with operator Exists matches all.")
    operator: Literal["Exists", "Equal"] | None = Field(None, description="Exists or Equal.")
    value: str | None = Field(None, description="Taint value for operator Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect to tolerate; empty matches all effects."
    )
    tolerationSeconds: int | None = Field(
        None, alias="tolerationSeconds", description="For NoExecute: how long the pod stays bound."
    )


class ResourcesSpec(ApiModel):
    """Compute for the training workload."""

    gpusPerNode: int = Field(
        1, alias="gpusPerNode", ge=0, le=64,
        description="GPUs per node; torchrun starts one process per GPU. 0 trains on CPU "
        "with one process per node.",
    )
    nodes: int = Field(1, ge=1, le=1024, description="Nodes (pods); more than 1 uses an Indexed Job.")
    gpuResourceName: str = Field(
        "nvidia.com/gpu", alias="gpuResourceName", description="Extended resource name of the GPUs."
    )
    gpuMemory: Quantity | None = Field(
        None, alias="gpuMemory",
        description="Memory of one GPU of the nodes the job runs on (e.g. 80Gi): a job whose memory estimate does "
                    "not fit is held before its pods are created. Default from the operator's settings; when "
                    "neither is set, GPU memory is estimated but not checked.",
    )
    cpu: Quantity | None = Field(None, description="CPU request and limit per pod (default from operator settings).")
    memory: Quantity | None = Field(None, description="Memory request and limit per pod (default from operator settings).")
    sharedMemory: Quantity | None = Field(
        None, alias="sharedMemory", description="Size of the in-memory /dev/shm (default from operator settings)."
    )
    nodeSelector: dict[str, str] | None = Field(None, alias="nodeSelector", description="Node labels the pods must match.")
    tolerations: list[Toleration] | None = Field(None, description="Taints the pods tolerate.")
    priorityClassName: str | None = Field(None, alias="priorityClassName", description="PriorityClass of the pods.")

    @field_validator("cpu", "memory", "sharedMemory", "gpuMemory")
    @classmethod
    def _quantity(cls, v: str | int | None, info: Any) -> str | int | None:
        return check_quantity(v, info.field_name)


class DeepSpeedSpec(ApiModel):
    """DeepSpeed settings; the full config is generated from these."""

    model_config = cel_rules({
        "rule": "!has(self.offloadParams) || !self.offloadParams || !has(self.zeroStage) || "
                "self.zeroStage == 'auto' || self.zeroStage == 3",
        "message": "offloadParams needs zeroStage 3 (or auto)",
    })

    zeroStage: ZeroStage = Field(
        "auto",
        alias="zeroStage",
        description="ZeRO stage 0-3, or `auto` (2 for LoRA/QLoRA, 3 for full fine-tuning on "
        "several GPUs).",
    )
    offloadOptimizer: bool = Field(False, alias="offloadOptimizer", description="Keep optimizer state in CPU memory.")
    offloadParams: bool = Field(False, alias="offloadParams", description="Keep parameters in CPU memory (ZeRO-3 only).")
    config: FreeForm | None = Field(
        None, description="A DeepSpeed config merged over the generated one; it is validated before training."
    )

    @model_validator(mode="after")
    def _offload(self) -> "DeepSpeedSpec":
        if self.offloadParams and self.zeroStage not in ("auto", 3):
            raise ValueError("offloadParams needs zeroStage 3 (or auto)")
        return self


class MemorySpec(ApiModel):
    """How each training step fits in GPU memory; neither setting changes what is trained."""

    microBatchTokens: int = Field(
        8192, alias="microBatchTokens", ge=16, le=1048576,
        description="Tokens (rows x the longest row, padding included) each GPU puts through the model at once. "
                    "A step's rows beyond it are split into micro-batches whose gradients are accumulated before "
                    "the optimizer step: the same loss and update, with activation memory bounded by this "
                    "instead of by batchSize. Lower it when a step runs out of memory.",
    )
    gradientCheckpointing: bool = Field(
        False, alias="gradientCheckpointing",
        description="Recompute each layer's activations in the backward pass instead of keeping them: about a "
                    "third more compute, for the memory of one layer's activations per micro-batch.",
    )
    checkFit: bool = Field(
        True, alias="checkFit",
        description="Hold the job, before its pods are created, while the memory estimate (status.estimate.memory) "
                    "exceeds a GPU's memory (resources.gpuMemory) or, on CPU, the pod's memory limit; the condition "
                    "MemoryFits says what would fit. false: report the estimate and start anyway.",
    )


class OutputSpec(ApiModel):
    """Where the trained adapter (or model) is published."""

    uri: str = Field(
        description="pvc://<claim>/<path> or s3://bucket/prefix; the model is published under "
        "<uri>/<namespace>/<job name>/ with a manifest, atomically. file:///path with `hone run` only.",
    )
    credentialsSecret: SecretRef | None = Field(
        None, alias="credentialsSecret", description="Secret with S3 credentials, mounted as files."
    )
    mergeWeights: bool = Field(
        False, alias="mergeWeights", description="Also publish the base model with the adapter merged in."
    )

    @field_validator("uri")
    @classmethod
    def _uri(cls, v: str) -> str:
        return check_uri(v, ("pvc", "s3", "file"), "output.uri")


class CheckpointingSpec(ApiModel):
    """Checkpoints: written every N steps and on preemption; resumed from automatically."""

    intervalSteps: int = Field(50, alias="intervalSteps", ge=1, description="Write a checkpoint every N optimizer steps.")
    keep: int = Field(2, ge=1, le=100, description="Complete checkpoints to keep (the newest ones).")
    everyEpoch: bool = Field(
        False, alias="everyEpoch",
        description="Also write a checkpoint at the end of each epoch, as OpenAI does (hone api's jobs set it).")
    servable: bool = Field(
        True, description="Export each checkpoint's model into it (the adapter, or for full fine-tuning the "
                          "weights, with the tokenizer and a manifest), so that a ModelServing can serve it "
                          "(fineTuneJobRef.checkpointStep) under OpenAI's <model>:ckpt-step-N name. An adapter "
                          "is small; for full fine-tuning each checkpoint holds one more copy of the model.")


QLORA_NEEDS_GPUS = ("method qlora needs GPUs (4-bit bitsandbytes kernels): set resources.gpusPerNode >= 1 "
                    "or use method lora")


class ScreeningPatternSpec(ApiModel):
    """A kind of personal data you add: its name in findings, and what it matches."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,39}$", max_length=40,
                      description="The kind's name in findings, e.g. employee_id.")
    regex: str = Field(min_length=1, max_length=1000, description="A regular expression, e.g. EMP-[0-9]{6}.")


class ModerationSpec(ApiModel):
    """An OpenAI-compatible moderations endpoint, e.g. a guard model served in the cluster."""

    url: str = Field(pattern=r"^https?://", max_length=2048,
                     description="The whole URL, e.g. http://guard.safety.svc/v1/moderations.")
    policy: Literal["report", "reject"] = Field(
        "reject", description="What a flagged message does: report, or reject (fail the job naming the lines).")
    apiKeySecret: SecretRef | None = Field(
        None, alias="apiKeySecret", description="A Secret whose key api-key is the bearer token the endpoint wants "
                                                "(mounted as a file in the validation pod; cluster only).")


class DataScreeningSpec(ApiModel):
    """What ValidatingFiles looks for in every message, and what it does with it (docs/safety.md)."""

    personalData: Literal["off", "report", "redact", "reject"] = Field(
        "report", alias="personalData",
        description="report: list the lines in status.dataset.screening; redact: train on the text with each match "
                    "replaced by [KIND]; reject: fail the job naming the first lines; off: do not look.")
    kinds: list[Literal["email", "phone", "payment_card", "iban"]] = Field(
        default_factory=lambda: ["email", "phone", "payment_card", "iban"], max_length=4,
        description="Built-in detectors (payment cards pass the Luhn check, IBANs their mod-97 checksum).")
    patterns: list[ScreeningPatternSpec] = Field(default_factory=list, max_length=32,
                                                 description="Kinds of personal data you add.")
    blocklist: list[str] = Field(default_factory=list, max_length=1000,
                                 description="Terms matched as whole words, ignoring case.")
    blocklistPolicy: Literal["report", "redact", "reject"] = Field(
        "reject", alias="blocklistPolicy", description="What a blocklisted term does: report, redact or reject.")
    moderation: ModerationSpec | None = Field(
        None, description="An OpenAI-compatible moderations endpoint every message is sent to (validation only).")


class JudgeSpec(ApiModel):
    """An OpenAI-compatible API (POST <url>/chat/completions) that judges: score_model graders and, with
    safety.judge endpoint, whether an answer declined."""

    url: str = Field(pattern=r"^https?://", max_length=2048, description="Its base URL, e.g. http://judge.safety.svc:8000/v1.")
    model: str | None = Field(None, max_length=256, description="The model the refusal judge asks.")
    timeoutSeconds: int = Field(60, alias="timeoutSeconds", ge=1, le=600, description="Per request.")
    apiKeySecret: SecretRef | None = Field(
        None, alias="apiKeySecret", description="A Secret whose key api-key is the bearer token the judge wants "
                                                "(mounted as a file in the evaluation pod; cluster only).")


class SafetySpec(ApiModel):
    """The safety suite: requests a deployed assistant must decline, asked of the base model and the fine-tune."""

    enabled: bool = Field(True, description="Run the suite (the built-in one, and extraSuite).")
    maxRefusalDrop: float = Field(
        0.10, alias="maxRefusalDrop", ge=0, le=1,
        description="The gate fails when the fine-tune's refusal rate is more than this below its base's "
                    "(0.10: ten points).")
    judge: Literal["heuristic", "endpoint"] = Field(
        "heuristic", description="heuristic: Hone's documented phrase classifier (docs/safety.md); endpoint: ask "
                                 "the judge endpoint's model (evaluation.judge).")
    extraSuite: DataSource | None = Field(
        None, alias="extraSuite", description="More requests to decline: JSONL of {id, category, messages, "
                                              "must_not_contain}, added to the built-in suite.")


class EvaluationSpec(ApiModel):
    """What runs after training, on the base model and the fine-tune side by side (docs/safety.md)."""

    evalFile: DataSource | None = Field(
        None, alias="evalFile", description="Chat JSONL of prompts for the graders; a line's last assistant message, "
                                            "if any, is not sent and is {{ item.reference }}.")
    graders: list[FreeForm] = Field(
        default_factory=list, max_length=16,
        description="OpenAI grader objects, spelled as OpenAI spells them: string_check, text_similarity "
                    "(fuzzy_match, bleu, rouge_1, rouge_2, rouge_l) and score_model (asks evaluation.judge).")
    judge: JudgeSpec | None = Field(None, description="The judge endpoint, for score_model and safety.judge endpoint.")
    safety: SafetySpec = Field(default_factory=SafetySpec, description="The safety suite and its gate.")
    maxTokens: int = Field(128, alias="maxTokens", ge=1, le=4096, description="Most tokens per answer (greedy).")
    maxExamples: int = Field(200, alias="maxExamples", ge=1, le=10000, description="Eval-file lines read at most.")

    @model_validator(mode="after")
    def _graders(self) -> "EvaluationSpec":
        from pydantic import TypeAdapter, ValidationError

        from hone_trainer.contract import Grader

        for i, grader in enumerate(self.graders):
            try:
                TypeAdapter(Grader).validate_python(grader)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"][1:] if p not in ("string_check", "text_similarity",
                                                                               "score_model"))
                raise ValueError(f"graders[{i}]{'.' + where if where else ''}: {first['msg']}") from None
        if self.graders and self.evalFile is None:
            raise ValueError("graders grade answers to the eval file's prompts: name evalFile too")
        if self.evalFile is not None and not self.graders:
            raise ValueError("evalFile: give at least one grader to score its answers")
        if self.judge is None and any(g.get("type") == "score_model" for g in self.graders):
            raise ValueError("a score_model grader needs the judge endpoint: set judge.url")
        if self.safety.judge == "endpoint" and (self.judge is None or not self.judge.model):
            raise ValueError("safety.judge endpoint needs judge.url and judge.model")
        return self


class FineTuneJobSpec(ApiModel):
    """A fine-tuning job: base model, data, method and hyperparameters."""

    model_config = cel_rules(
        {"rule": "!has(self.method) || self.method != 'qlora' || !has(self.resources) || "
                 "!has(self.resources.gpusPerNode) || self.resources.gpusPerNode >= 1",
         "message": QLORA_NEEDS_GPUS},
        # A transition rule (the API server alone can check it: it knows the old object). Checkpoints
        # and the published adapter belong to one base model.
        {"rule": "self.baseModel == oldSelf.baseModel", "fieldPath": ".baseModel",
         "message": "baseModel cannot change once a FineTuneJob exists: create a new FineTuneJob"},
    )

    baseModel: BaseModelSpec = Field(alias="baseModel", description="The model to fine-tune.")
    method: Literal["lora", "qlora", "full"] = Field(
        "lora",
        description="lora (default): train a low-rank adapter; qlora: LoRA on a 4-bit base "
        "(needs GPUs); full: train all weights.",
    )
    lora: LoraSpec = Field(default_factory=LoraSpec, description="LoRA settings for method lora and qlora.")
    trainingData: DataSource = Field(alias="trainingData", description="Chat JSONL training file (OpenAI format).")
    validationData: DataSource | None = Field(
        None, alias="validationData", description="Optional held-out chat JSONL file for validation loss."
    )
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters, description="Training hyperparameters.")
    dataScreening: DataScreeningSpec | None = Field(
        None, alias="dataScreening",
        description="Personal data and blocklisted terms in the data: reported, redacted or refused. Default: the "
                    "operator's setting dataScreening (the chart's value), which reports personal data.")
    evaluation: EvaluationSpec | None = Field(
        None, description="After training, before Succeeded: graders on an eval file and the safety suite, the base "
                          "model and the fine-tune side by side, in a pod of its own (hone run runs the same step). "
                          "Default: the safety suite alone; safety.enabled false and no graders: no step.")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="Compute for the training pods.")
    deepspeed: DeepSpeedSpec = Field(default_factory=DeepSpeedSpec, description="DeepSpeed ZeRO settings.")
    memory: MemorySpec = Field(default_factory=MemorySpec, description="How each training step fits in GPU memory.")
    checkpointing: CheckpointingSpec = Field(default_factory=CheckpointingSpec, description="Checkpoint interval and retention.")
    output: OutputSpec = Field(description="Where the result is published.")
    suffix: str | None = Field(
        None,
        description="Up to 40 characters added to the fine-tuned model name "
        "(ft:<base>:<namespace>:<suffix>:<id>).",
        max_length=40,
        pattern=r"^[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$",
    )
    image: str | None = Field(None, description="Runtime image override (default from the operator's settings).")
    suspend: bool = Field(False, description="Pause the job: training pods are removed and come back (resuming from a checkpoint) when set to false.")
    cancel: bool = Field(False, description="Cancel the job for good: pods are removed; the object and its checkpoints stay.")
    activeDeadlineSeconds: int | None = Field(
        None, alias="activeDeadlineSeconds", ge=1,
        description="Fail training that runs longer than this (suspended time does not count).",
    )

    @model_validator(mode="after")
    def _consistency(self) -> "FineTuneJobSpec":
        if self.method == "qlora" and self.resources.gpusPerNode == 0:
            raise ValueError(QLORA_NEEDS_GPUS)
        return self


class FineTuneJobPhase(str, enum.Enum):
    """The OpenAI job statuses, in Kubernetes case."""

    VALIDATING_FILES = "ValidatingFiles"
    QUEUED = "Queued"
    RUNNING = "Running"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELLED = "Cancelled"

    @property
    def terminal(self) -> bool:
        """Succeeded, Failed and Cancelled are final: a FineTuneJob never leaves them."""
        return self in (FineTuneJobPhase.SUCCEEDED, FineTuneJobPhase.FAILED, FineTuneJobPhase.CANCELLED)

    @classmethod
    def is_terminal(cls, phase: str | None) -> bool:
        """Whether a stored ``status.phase`` (possibly absent) is final."""
        return phase in {p.value for p in cls if p.terminal}


class ScreeningFinding(StatusModel):
    file: Literal["training", "validation"] = Field(description="training or validation.")
    line: int = Field(description="1-based line number.")
    message: int = Field(description="Index of the message in the line's messages.")
    kind: str = Field(description="email, phone, payment_card, iban, a pattern's name, or blocklist.")
    action: Literal["report", "redact", "reject"] = Field(description="What was done about it.")


class ScreeningStatus(StatusModel):
    """What data screening found in both files."""

    counts: dict[str, int] | None = Field(None, description="Matches per kind.")
    lines: int = Field(0, description="Lines with at least one finding.")
    redactedMessages: int = Field(0, alias="redactedMessages", description="Messages that train redacted.")
    findings: list[ScreeningFinding] | None = Field(None, description="The first findings (100 at most).")


class DatasetStatus(StatusModel):
    """What the ValidatingFiles step found in the data."""

    examples: int = Field(0, description="Training examples that train: valid, and with an assistant token left after maxSeqLength.")
    validationExamples: int = Field(0, alias="validationExamples", description="Valid validation examples.")
    invalidLines: int = Field(0, alias="invalidLines", description="Lines that are not valid examples.")
    tokensPerEpoch: int = Field(0, alias="tokensPerEpoch", description="Tokens in the training examples (model tokenizer and chat template).")
    trainedTokensPerEpoch: int = Field(0, alias="trainedTokensPerEpoch", description="Tokens the loss is computed on (weighted assistant turns).")
    maxExampleTokens: int = Field(0, alias="maxExampleTokens", description="Length of the longest example.")
    maxStepRows: int = Field(0, alias="maxStepRows",
                             description="The most packed rows any optimizer step has (split over the ranks).")
    maxRowTokens: int = Field(0, alias="maxRowTokens", description="The longest packed row, in tokens.")
    maxStepTokens: int = Field(0, alias="maxStepTokens",
                               description="The most tokens a step puts through the model: its rows x its longest "
                                           "row (padding included).")
    overLengthExamples: int = Field(0, alias="overLengthExamples", description="Examples longer than maxSeqLength.")
    overLengthAction: str | None = Field(None, alias="overLengthAction", description="truncate or drop, for over-length examples.")
    duplicateExamples: int = Field(0, alias="duplicateExamples", description="Training examples that repeat an earlier one.")
    validationOverlap: int = Field(0, alias="validationOverlap", description="Validation examples also present in the training file.")
    problemCounts: dict[str, int] | None = Field(None, alias="problemCounts", description="Problems found, per kind.")
    problems: list[Problem] | None = Field(None, description="The first problems found, with file and line.")
    warnings: list[str] | None = Field(None, description="Warnings that do not stop training.")
    screening: ScreeningStatus | None = Field(None, description="What data screening found (never the text itself).")


class MemoryStatus(StatusModel):
    """The memory estimate of one training rank (docs/memory.md), and whether it fits. Every key is always
    written, so that a re-estimate after a spec edit replaces the last one whole."""

    device: Literal["gpu", "cpu"] = Field(description="gpu: per GPU; cpu: per training process (one per pod).")
    perRank: str = Field(alias="perRank", description="Peak memory one rank needs on its device.")
    capacity: str = Field(description="What one rank has: resources.gpuMemory, or on CPU the pod's memory limit; "
                                      "unknown when neither is known.")
    fits: Literal["True", "False", "Unknown"] = Field(description="perRank (and hostPerPod) within the capacity.")
    hostPerPod: str = Field(alias="hostPerPod", description="Host memory one training pod needs (all its ranks).")
    parts: dict[str, str] = Field(description="perRank by part: weights, gradients, optimizer, activations, logits, "
                                              "buffers, fragmentation, runtime.")
    ranks: int = Field(description="Ranks the estimate assumes (GPUs, or nodes on CPU).")
    zeroStage: int = Field(alias="zeroStage", description="The ZeRO stage the trainer will use.")
    microBatchTokens: int = Field(alias="microBatchTokens", description="Tokens of the largest micro-batch.")
    whatFits: list[str] = Field(default_factory=list, alias="whatFits",
                                description="When it does not fit: single spec changes that would, each with its "
                                            "estimate.")

    def to_status(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


class EstimateStatus(StatusModel):
    """Resolved hyperparameters and the cost and memory estimates."""

    hyperparameters: ResolvedHyperparameters | None = Field(None, description="Hyperparameters with `auto` resolved.")
    billableTrainingTokens: int = Field(0, alias="billableTrainingTokens", description="tokensPerEpoch x epochs.")
    costUsd: float = Field(0.0, alias="costUsd", description="billableTrainingTokens at the training price, less "
                           "freeTokens once the namespace's TokenBudget admitted the job.")
    freeTokens: int | None = Field(None, alias="freeTokens", description="Of the billable tokens, free under the "
                                   "namespace's daily allowance (set when its TokenBudget admits the job).")
    usdPerMillionTokens: float | None = Field(None, alias="usdPerMillionTokens", description="The training price used.")
    model: ModelShape | None = Field(None, description="The base model's shape, read from its config by the "
                                                       "ValidatingFiles step.")
    memory: MemoryStatus | None = Field(None, description="Peak memory of one training rank, estimated before "
                                                          "the training pods are created.")


class BudgetUse(ReservedEstimate):
    """What the namespace's TokenBudget reserved for this job, and what it was charged when it ended."""

    name: str = Field(description="The TokenBudget.")
    settledAt: datetime | None = Field(None, alias="settledAt", description="When the job's usage was charged.")
    settledTokens: int | None = Field(None, alias="settledTokens", description="Tokens charged: what it trained.")
    settledFreeTokens: int | None = Field(None, alias="settledFreeTokens", description="Of those, free.")
    settledCostUsd: float | None = Field(None, alias="settledCostUsd", description="Their cost.")


class FineTunedModel(StatusModel):
    """The published result."""

    name: str = Field(description="ft:<base>:<namespace>:<suffix>:<id>, the name to request it by.")
    artifactUri: str | None = Field(None, alias="artifactUri", description="Where the adapter and its manifest were published.")
    manifestSha256: str | None = Field(None, alias="manifestSha256", description="SHA-256 of the published manifest.")


class EvaluationScores(StatusModel):
    """One model's scores on an evaluation file."""

    loss: float | None = Field(None, description="Mean cross-entropy over the assistant tokens.")
    meanTokenAccuracy: float | None = Field(
        None, alias="meanTokenAccuracy",
        description="The share of the assistant tokens the model predicts exactly (its most likely token).")


class GraderStatus(StatusModel):
    """One grader's results on the eval file, the base model and the fine-tune side by side."""

    name: str = Field(description="The grader's name.")
    basePassRate: float = Field(alias="basePassRate", description="Share of the base model's answers that passed.")
    fineTunedPassRate: float = Field(alias="fineTunedPassRate", description="Share of the fine-tune's that passed.")
    baseMeanScore: float | None = Field(None, alias="baseMeanScore", description="The base model's mean score.")
    fineTunedMeanScore: float | None = Field(None, alias="fineTunedMeanScore", description="The fine-tune's mean score.")


class SafetyStatus(StatusModel):
    """The safety suite's gate: the fine-tune may decline at most maxRefusalDrop less of it than its base."""

    requests: int = Field(description="Requests in the suite.")
    baseRefusalRate: float = Field(alias="baseRefusalRate", description="Share the base model declined.")
    fineTunedRefusalRate: float = Field(alias="fineTunedRefusalRate", description="Share the fine-tune declined.")
    maxRefusalDrop: float = Field(alias="maxRefusalDrop", description="The drop the gate allows.")
    judge: str = Field(description="heuristic, or the judge model's name.")
    passed: bool = Field(description="False: ModelServing refuses to serve the fine-tune (SafetyCheckFailed) "
                                     "unless the FineTuneJob carries the override annotation.")
    regressions: list[str] | None = Field(None, description="Suite ids the base declined and the fine-tune did not.")


class EvaluationStatus(StatusModel):
    """The base model and the fine-tune side by side: on the validation file (measured by the trainer before and
    after training), and by the evaluation step (graders on the eval file, the safety suite)."""

    file: str = Field("validation", description="The file base and fineTuned score: the validation file.")
    base: EvaluationScores | None = Field(None, description="The base model, before the first step.")
    fineTuned: EvaluationScores | None = Field(None, alias="fineTuned", description="The published fine-tune.")
    examples: int | None = Field(None, description="Eval-file prompts each model answered.")
    graders: list[GraderStatus] | None = Field(None, description="Each grader's pass rates on the eval file.")
    safety: SafetyStatus | None = Field(None, description="The safety suite and its gate.")


class ErrorStatus(StatusModel):
    """OpenAI's error object."""

    code: str = Field(description="Machine-readable code, e.g. invalid_spec, invalid_training_file.")
    message: str = Field(description="What went wrong and what to do.")
    param: str | None = Field(None, description="The spec field at fault, when there is one.")


class FineTuneJobStatus(StatusModel):
    """Observed state of a FineTuneJob. Written by the operator (and progress by the trainer)."""

    phase: FineTuneJobPhase | None = Field(None, description="ValidatingFiles, Queued, Running, Suspended, Succeeded, Failed or Cancelled.")
    observedGeneration: int | None = Field(None, alias="observedGeneration", description="The spec generation last acted on.")
    conditions: list[Condition] | None = Field(None, description="Kubernetes conditions, each with observedGeneration.")
    dataset: DatasetStatus | None = Field(None, description="Counts and findings of the ValidatingFiles step.")
    estimate: EstimateStatus | None = Field(None, description="Resolved hyperparameters and cost estimate.")
    progress: Progress | None = Field(None, description="Live training progress, reported by the trainer.")
    checkpoints: list[CheckpointInfo] | None = Field(None, description="Complete checkpoints that training can resume from.")
    fineTunedModel: FineTunedModel | None = Field(None, alias="fineTunedModel", description="The published model, once Succeeded.")
    trainedTokens: int | None = Field(None, alias="trainedTokens", description="Billable tokens trained, once Succeeded.")
    evaluation: EvaluationStatus | None = Field(
        None, description="Base model and fine-tune on the validation file, once Succeeded (with a validation file).")
    budget: BudgetUse | None = Field(None, description="The TokenBudget's reservation and charge for this job.")
    error: ErrorStatus | None = Field(None, description="Why the job failed (OpenAI's error object).")
    startTime: datetime | None = Field(None, alias="startTime", description="When training first started.")
    completionTime: datetime | None = Field(None, alias="completionTime", description="When the job reached a final phase.")
    lastHandledReconcileAt: str | None = Field(
        None, alias="lastHandledReconcileAt",
        description="The value of the hone.dev/reconcile-requested-at annotation when the operator last looked at "
                    "the object because of it: equal to the annotation once the operator has seen every change "
                    "made before the annotation was set.")

    #: Written by the trainer (rank 0, with its own token and Role) while it runs; the operator
    #: never overwrites it. Every other key is the operator's.
    NOT_OPERATOR_OWNED: ClassVar[frozenset[str]] = frozenset({"progress"})


class FineTuneJob(BaseModel):
    """A fine-tuning job (short name ftj)."""

    model_config = ConfigDict(extra="allow")
    apiVersion: Literal["hone.dev/v1alpha1"] = API_VERSION
    kind: Literal["FineTuneJob"] = "FineTuneJob"
    metadata: ObjectMeta
    spec: FineTuneJobSpec
    status: FineTuneJobStatus = Field(default_factory=FineTuneJobStatus)
