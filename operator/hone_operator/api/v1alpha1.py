"""Hone's API, group ``hone.dev``, version ``v1alpha1``: the one source of truth.

The CRDs in ``crds/`` are generated from these models
(``python -m hone_operator.api.crdgen``) and the operator parses every object
it reads into them, so a field exists in exactly one place. Field docstrings
(``description=``) become ``kubectl explain`` text.

Naming follows Kubernetes: camelCase in YAML, ``spec``/``status``, references
are ``{name}`` objects in the object's own namespace.
"""

from __future__ import annotations

import enum
import re
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from hone_trainer.contract import (
    CheckpointInfo,
    Problem,
    Progress,
    ResolvedHyperparameters,
)

GROUP = "hone.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"


class ApiModel(BaseModel):
    """Base of every API type: camelCase aliases, unknown fields rejected."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class StatusModel(BaseModel):
    """Base of status types: fields it does not know (newer versions, kopf) are ignored.

    The operator builds its status patches from these types (:meth:`to_status`), so the
    CRD schema generated from them and what is written into ``status`` cannot drift apart.
    """

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    def to_status(self) -> dict[str, Any]:
        """The JSON written into ``status``: camelCase, without unset, empty or None fields."""
        data = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        return {k: v for k, v in data.items() if v not in ([], {})}

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """Every status key this type defines, as written in the object."""
        return tuple(f.alias or name for name, f in cls.model_fields.items())


# --------------------------------------------------------------------------
# Value types with a Kubernetes-specific schema
# --------------------------------------------------------------------------

_AUTO_OR_POSITIVE_INT_SCHEMA = {
    "x-kubernetes-int-or-string": True,
    "anyOf": [{"type": "integer", "minimum": 1}, {"type": "string", "enum": ["auto"]}],
}
AutoOrPositiveInt = Annotated[
    Literal["auto"] | Annotated[int, Field(ge=1)], WithJsonSchema(_AUTO_OR_POSITIVE_INT_SCHEMA)
]

# A number or "auto". Kubernetes structural schemas have no number-or-string
# type, so the field is left untyped and constrained by value: "auto", or a
# number > 0 (a string other than "auto" fails both branches, because no
# string is both at least 1 and at most 0 characters long).
_AUTO_OR_POSITIVE_NUMBER_SCHEMA = {
    "x-kubernetes-preserve-unknown-fields": True,
    "anyOf": [
        {"enum": ["auto"]},
        {"minimum": 0, "exclusiveMinimum": True, "minLength": 1, "maxLength": 0},
    ],
}
AutoOrPositiveNumber = Annotated[
    Literal["auto"] | Annotated[float, Field(gt=0)], WithJsonSchema(_AUTO_OR_POSITIVE_NUMBER_SCHEMA)
]

ZeroStage = Annotated[
    Literal["auto", 0, 1, 2, 3],
    WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "anyOf": [{"type": "integer", "enum": [0, 1, 2, 3]}, {"type": "string", "enum": ["auto"]}],
        }
    ),
]

_QUANTITY_RE = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
Quantity = Annotated[
    str | int,
    WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "anyOf": [{"type": "integer"}, {"type": "string", "pattern": _QUANTITY_RE}],
        }
    ),
]

_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"

FreeForm = Annotated[
    dict[str, Any],
    WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
]


def _check_quantity(value: str | int | None, field: str) -> str | int | None:
    if value is None or isinstance(value, int):
        return value
    if not re.match(_QUANTITY_RE, value):
        raise ValueError(f"{field} {value!r} is not a Kubernetes quantity (e.g. 4, 500m, 16Gi)")
    return value


# --------------------------------------------------------------------------
# References: always in the object's own namespace
# --------------------------------------------------------------------------


class NamespacedRef(ApiModel):
    namespace: str | None = Field(
        None,
        description="Must be empty or equal to this object's namespace: Hone never reads "
        "objects from another namespace. Present only so that such an attempt is refused "
        "with a clear condition instead of being silently ignored.",
    )


class ConfigMapKeyRef(NamespacedRef):
    """A key of a ConfigMap in the same namespace."""

    name: str = Field(description="Name of the ConfigMap.", pattern=_DNS_SUBDOMAIN, max_length=253)
    key: str = Field(description="Key inside the ConfigMap that holds the JSONL data.", min_length=1)


class SecretRef(NamespacedRef):
    """A Secret in the same namespace; it is mounted as files, never put in env vars."""

    name: str = Field(description="Name of the Secret.", pattern=_DNS_SUBDOMAIN, max_length=253)


class FineTuneJobRef(NamespacedRef):
    """A FineTuneJob in the same namespace."""

    name: str = Field(description="Name of the FineTuneJob.", pattern=_DNS_SUBDOMAIN, max_length=253)


URI_SCHEMES = ("hf", "pvc", "s3", "http", "https", "file", "embedded")


def uri_scheme(uri: str) -> str:
    """The scheme of a model or data location; bare ``org/name`` means ``hf``."""
    if "://" in uri:
        return uri.split("://", 1)[0].lower()
    return "hf"


def parse_pvc_uri(uri: str) -> tuple[str, str]:
    """``pvc://claim/sub/path`` -> ``("claim", "sub/path")``."""
    rest = uri.split("://", 1)[1]
    claim, _, path = rest.partition("/")
    return claim, path.strip("/")


def _check_uri(uri: str, allowed: tuple[str, ...], what: str) -> str:
    scheme = uri_scheme(uri)
    if scheme not in allowed:
        raise ValueError(
            f"{what} {uri!r} has scheme {scheme!r}; use one of "
            + ", ".join(f"{s}://" for s in allowed)
        )
    if scheme == "pvc":
        claim, _ = parse_pvc_uri(uri)
        if not re.match(_DNS_SUBDOMAIN, claim):
            raise ValueError(
                f"{what} {uri!r}: the PersistentVolumeClaim name {claim!r} is not valid; "
                "write pvc://<claim-in-this-namespace>/<path>"
            )
    if scheme == "hf" and "://" not in uri and not re.match(r"^[\w.-]+(/[\w.-]+)?$", uri):
        raise ValueError(f"{what} {uri!r} is neither a URI nor a Hugging Face id like org/name")
    return uri


# --------------------------------------------------------------------------
# FineTuneJob
# --------------------------------------------------------------------------


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
        return _check_uri(v, URI_SCHEMES, "baseModel.uri")


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


class DataSource(ApiModel):
    """A chat JSONL file in OpenAI's format. Set exactly one of uri, configMap, inline."""

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
        return _check_uri(v, ("pvc", "s3", "http", "https", "file"), "uri")

    @model_validator(mode="after")
    def _exactly_one(self) -> "DataSource":
        given = [k for k in ("uri", "configMap", "inline") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "set exactly one of uri, configMap, inline"
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
    cpu: Quantity | None = Field(None, description="CPU request and limit per pod (default from operator settings).")
    memory: Quantity | None = Field(None, description="Memory request and limit per pod (default from operator settings).")
    sharedMemory: Quantity | None = Field(
        None, alias="sharedMemory", description="Size of the in-memory /dev/shm (default from operator settings)."
    )
    nodeSelector: dict[str, str] | None = Field(None, alias="nodeSelector", description="Node labels the pods must match.")
    tolerations: list[Toleration] | None = Field(None, description="Taints the pods tolerate.")
    priorityClassName: str | None = Field(None, alias="priorityClassName", description="PriorityClass of the pods.")

    @field_validator("cpu", "memory", "sharedMemory")
    @classmethod
    def _quantity(cls, v: str | int | None, info: Any) -> str | int | None:
        return _check_quantity(v, info.field_name)


class DeepSpeedSpec(ApiModel):
    """DeepSpeed settings; the full config is generated from these."""

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
        return _check_uri(v, ("pvc", "s3", "file"), "output.uri")


class CheckpointingSpec(ApiModel):
    """Checkpoints: written every N steps and on preemption; resumed from automatically."""

    intervalSteps: int = Field(50, alias="intervalSteps", ge=1, description="Write a checkpoint every N optimizer steps.")
    keep: int = Field(2, ge=1, le=100, description="Complete checkpoints to keep (the newest ones).")


class FineTuneJobSpec(ApiModel):
    """A fine-tuning job: base model, data, method and hyperparameters."""

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
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="Compute for the training pods.")
    deepspeed: DeepSpeedSpec = Field(default_factory=DeepSpeedSpec, description="DeepSpeed ZeRO settings.")
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
            raise ValueError(
                "method qlora needs GPUs (4-bit bitsandbytes kernels): set resources.gpusPerNode >= 1 "
                "or use method lora"
            )
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


class Condition(StatusModel):
    """A Kubernetes condition (metav1.Condition)."""

    type: str = Field(description="Condition type, e.g. Failed, FilesValidated, Running.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(description="CamelCase reason, e.g. InvalidSpec.")
    message: str = Field("", description="What happened and what to do about it.")
    lastTransitionTime: datetime | None = Field(None, alias="lastTransitionTime", description="When the status last changed.")
    observedGeneration: int | None = Field(None, alias="observedGeneration", description="The generation this condition was computed for.")


class DatasetStatus(StatusModel):
    """What the ValidatingFiles step found in the data."""

    examples: int = Field(0, description="Valid training examples.")
    validationExamples: int = Field(0, alias="validationExamples", description="Valid validation examples.")
    invalidLines: int = Field(0, alias="invalidLines", description="Lines that are not valid examples.")
    tokensPerEpoch: int = Field(0, alias="tokensPerEpoch", description="Tokens in the training examples (model tokenizer and chat template).")
    trainedTokensPerEpoch: int = Field(0, alias="trainedTokensPerEpoch", description="Tokens the loss is computed on (weighted assistant turns).")
    maxExampleTokens: int = Field(0, alias="maxExampleTokens", description="Length of the longest example.")
    overLengthExamples: int = Field(0, alias="overLengthExamples", description="Examples longer than maxSeqLength.")
    overLengthAction: str | None = Field(None, alias="overLengthAction", description="truncate or drop, for over-length examples.")
    duplicateExamples: int = Field(0, alias="duplicateExamples", description="Training examples that repeat an earlier one.")
    validationOverlap: int = Field(0, alias="validationOverlap", description="Validation examples also present in the training file.")
    problemCounts: dict[str, int] | None = Field(None, alias="problemCounts", description="Problems found, per kind.")
    problems: list[Problem] | None = Field(None, description="The first problems found, with file and line.")
    warnings: list[str] | None = Field(None, description="Warnings that do not stop training.")


class EstimateStatus(StatusModel):
    """Resolved hyperparameters and the cost estimate."""

    hyperparameters: ResolvedHyperparameters | None = Field(None, description="Hyperparameters with `auto` resolved.")
    billableTrainingTokens: int = Field(0, alias="billableTrainingTokens", description="tokensPerEpoch x epochs.")
    costUsd: float = Field(0.0, alias="costUsd", description="billableTrainingTokens at the price table's training price.")
    usdPerMillionTokens: float | None = Field(None, alias="usdPerMillionTokens", description="The training price used.")


class FineTunedModel(StatusModel):
    """The published result."""

    name: str = Field(description="ft:<base>:<namespace>:<suffix>:<id>, the name to request it by.")
    artifactUri: str | None = Field(None, alias="artifactUri", description="Where the adapter and its manifest were published.")
    manifestSha256: str | None = Field(None, alias="manifestSha256", description="SHA-256 of the published manifest.")


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
    error: ErrorStatus | None = Field(None, description="Why the job failed (OpenAI's error object).")
    startTime: datetime | None = Field(None, alias="startTime", description="When training first started.")
    completionTime: datetime | None = Field(None, alias="completionTime", description="When the job reached a final phase.")

    #: Written by the trainer (rank 0, with its own token and Role) while it runs; the operator
    #: never overwrites it. Every other key is the operator's.
    TRAINER_OWNED: ClassVar[frozenset[str]] = frozenset({"progress"})

    @classmethod
    def operator_keys(cls) -> tuple[str, ...]:
        return tuple(k for k in cls.keys() if k not in cls.TRAINER_OWNED)


class ObjectMeta(BaseModel):
    """The parts of metadata the operator reads."""

    model_config = ConfigDict(extra="allow")
    name: str
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    creationTimestamp: datetime | None = None
    deletionTimestamp: datetime | None = None


class FineTuneJob(BaseModel):
    """A fine-tuning job (short name ftj)."""

    model_config = ConfigDict(extra="allow")
    apiVersion: Literal["hone.dev/v1alpha1"] = API_VERSION
    kind: Literal["FineTuneJob"] = "FineTuneJob"
    metadata: ObjectMeta
    spec: FineTuneJobSpec
    status: FineTuneJobStatus = Field(default_factory=FineTuneJobStatus)


# --------------------------------------------------------------------------
# ModelServing
# --------------------------------------------------------------------------


class AdapterSpec(ApiModel):
    """One LoRA adapter served on the shared base model."""

    name: str | None = Field(
        None,
        description="Model name clients request it by (default: the FineTuneJob's fine-tuned model name).",
        max_length=200,
    )
    fineTuneJobRef: FineTuneJobRef | None = Field(
        None, alias="fineTuneJobRef", description="A Succeeded FineTuneJob in the same namespace."
    )
    uri: str | None = Field(None, description="A published adapter: pvc://<claim>/<path> or s3://bucket/prefix.")

    @model_validator(mode="after")
    def _one(self) -> "AdapterSpec":
        if (self.fineTuneJobRef is None) == (self.uri is None):
            raise ValueError("set exactly one of fineTuneJobRef, uri")
        if self.uri is not None:
            _check_uri(self.uri, ("pvc", "s3", "file"), "uri")
        return self


class AutoscalingSpec(ApiModel):
    """Horizontal autoscaling of the inference Deployment."""

    minReplicas: int = Field(1, alias="minReplicas", ge=1, description="Fewest replicas.")
    maxReplicas: int = Field(alias="maxReplicas", ge=1, description="Most replicas.")
    targetCPUUtilizationPercentage: int = Field(
        80, alias="targetCPUUtilizationPercentage", ge=1, le=100, description="Average CPU use to aim for."
    )

    @model_validator(mode="after")
    def _bounds(self) -> "AutoscalingSpec":
        if self.maxReplicas < self.minReplicas:
            raise ValueError("maxReplicas must be >= minReplicas")
        return self


class ServingResourcesSpec(ApiModel):
    """Compute for each inference replica."""

    gpus: int = Field(0, ge=0, le=64, description="GPUs per replica.")
    gpuResourceName: str = Field("nvidia.com/gpu", alias="gpuResourceName", description="Extended resource name of the GPUs.")
    cpu: Quantity | None = Field(None, description="CPU request and limit per replica.")
    memory: Quantity | None = Field(None, description="Memory request and limit per replica.")
    nodeSelector: dict[str, str] | None = Field(None, alias="nodeSelector", description="Node labels the pods must match.")
    tolerations: list[Toleration] | None = Field(None, description="Taints the pods tolerate.")
    priorityClassName: str | None = Field(None, alias="priorityClassName", description="PriorityClass of the pods.")

    @field_validator("cpu", "memory")
    @classmethod
    def _quantity(cls, v: str | int | None, info: Any) -> str | int | None:
        return _check_quantity(v, info.field_name)


class ModelServingSpec(ApiModel):
    """An OpenAI-compatible inference endpoint for fine-tuned models."""

    fineTuneJobRef: FineTuneJobRef | None = Field(
        None, alias="fineTuneJobRef",
        description="Serve this FineTuneJob's result (same namespace; it must have Succeeded).",
    )
    baseModel: BaseModelSpec | None = Field(
        None, alias="baseModel",
        description="The base model; default: the base model of the referenced FineTuneJob(s).",
    )
    adapters: list[AdapterSpec] | None = Field(
        None, description="More LoRA adapters served on the same base model, each under its own name."
    )
    runtime: Literal["hone", "vllm"] = Field(
        "hone", description="hone: the built-in server (CPU or GPU); vllm: vLLM with --enable-lora (GPU)."
    )
    replicas: int = Field(1, ge=0, le=1000, description="Replicas (also set by `kubectl scale msv`).")
    autoscaling: AutoscalingSpec | None = Field(None, description="Autoscale replicas with an HPA instead of a fixed count.")
    resources: ServingResourcesSpec = Field(default_factory=ServingResourcesSpec, description="Compute per replica.")
    image: str | None = Field(None, description="Runtime image override (default from the operator's settings).")
    apiKeySecret: SecretRef | None = Field(
        None, alias="apiKeySecret",
        description="Secret whose key `api-keys` lists accepted API keys, one per line; mounted as a file.",
    )
    maxConcurrentRequests: int = Field(
        64, alias="maxConcurrentRequests", ge=1,
        description="Requests queued or running per replica before new ones get HTTP 429.",
    )

    @model_validator(mode="after")
    def _has_something_to_serve(self) -> "ModelServingSpec":
        if self.fineTuneJobRef is None and not self.adapters and self.baseModel is None:
            raise ValueError("set fineTuneJobRef, adapters or baseModel: there is nothing to serve")
        return self


class ModelServingPhase(str, enum.Enum):
    PENDING = "Pending"
    WAITING = "Waiting"
    DEPLOYING = "Deploying"
    READY = "Ready"
    FAILED = "Failed"


class ModelServingStatus(StatusModel):
    """Observed state of a ModelServing."""

    phase: ModelServingPhase | None = Field(None, description="Pending, Waiting (for a FineTuneJob), Deploying, Ready or Failed.")
    observedGeneration: int | None = Field(None, alias="observedGeneration", description="The spec generation last acted on.")
    replicas: int | None = Field(None, description="Current replicas (scale subresource).")
    readyReplicas: int | None = Field(None, alias="readyReplicas", description="Replicas that pass their readiness probe.")
    selector: str | None = Field(None, description="Label selector of the pods (scale subresource).")
    url: str | None = Field(None, description="In-cluster base URL of the OpenAI-compatible API (…/v1).")
    servedModels: list[str] | None = Field(None, alias="servedModels", description="Model names clients can request.")
    conditions: list[Condition] | None = Field(None, description="Kubernetes conditions, each with observedGeneration.")


class ModelServing(BaseModel):
    """An inference endpoint (short name msv)."""

    model_config = ConfigDict(extra="allow")
    apiVersion: Literal["hone.dev/v1alpha1"] = API_VERSION
    kind: Literal["ModelServing"] = "ModelServing"
    metadata: ObjectMeta
    spec: ModelServingSpec
    status: ModelServingStatus = Field(default_factory=ModelServingStatus)
