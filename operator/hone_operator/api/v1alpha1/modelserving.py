"""ModelServing (short name ``msv``): an OpenAI-compatible endpoint for fine-tuned models."""

from __future__ import annotations

import enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hone_operator.api.v1alpha1.common import (
    API_VERSION,
    ApiModel,
    cel_rules,
    StatusModel,
    Quantity,
    check_quantity,
    SecretRef,
    FineTuneJobRef,
    check_uri,
    Condition,
    NetworkPeer,
    ObjectMeta,
)
from hone_operator.api.v1alpha1.finetunejob import BaseModelSpec, Toleration


class AdapterSpec(ApiModel):
    """One LoRA adapter served on the shared base model."""

    model_config = cel_rules({"rule": "has(self.fineTuneJobRef) != has(self.uri)",
                              "message": "set exactly one of fineTuneJobRef, uri"})

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
            check_uri(self.uri, ("pvc", "s3", "file"), "uri")
        return self


class AutoscalingSpec(ApiModel):
    """Horizontal autoscaling of the inference Deployment."""

    model_config = cel_rules({"rule": "self.maxReplicas >= (has(self.minReplicas) ? self.minReplicas : 1)",
                              "message": "maxReplicas must be >= minReplicas"})

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
        return check_quantity(v, info.field_name)


VLLM_NEEDS_GPUS = "runtime vllm needs GPUs: set resources.gpus >= 1, or use runtime hone (CPU or GPU)"


class ModelServingSpec(ApiModel):
    """An OpenAI-compatible inference endpoint for fine-tuned models."""

    model_config = cel_rules({"rule": "has(self.fineTuneJobRef) || (has(self.adapters) && size(self.adapters) > 0) "
                                      "|| has(self.baseModel)",
                              "message": "set fineTuneJobRef, adapters or baseModel: there is nothing to serve"},
                             {"rule": "!has(self.runtime) || self.runtime != 'vllm' || "
                                      "(has(self.resources) && has(self.resources.gpus) && self.resources.gpus >= 1)",
                              "message": VLLM_NEEDS_GPUS})

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
    serveCheckpoints: bool = Field(
        False, alias="serveCheckpoints",
        description="Also serve every servable checkpoint that spec.fineTuneJobRef's status.checkpoints lists, "
                    "each under its <fine-tuned model>:ckpt-step-N name, as adapters on the same base (LoRA and "
                    "QLoRA jobs), as OpenAI serves a job's checkpoints. hone api's ModelServings set it.",
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
    ingressFrom: list[NetworkPeer] | None = Field(
        None, alias="ingressFrom",
        description="Who else may call the endpoint, as NetworkPolicy peers (namespaces, pods, addresses). By "
                    "default only pods of this namespace, hone api and what the operator's settings allow "
                    "(network.servingIngress, network.monitoring) may.",
    )
    maxConcurrentRequests: int = Field(
        64, alias="maxConcurrentRequests", ge=1,
        description="Requests queued or running per replica before new ones get HTTP 429.",
    )
    specialTokensInContent: Literal["text", "reject", "parse"] = Field(
        "text", alias="specialTokensInContent",
        description="What the built-in server does with the text of a special token of the tokenizer (e.g. "
                    "<|im_end|>) inside a message or prompt: text reads it as plain text, so content cannot "
                    "forge a turn of the chat template; reject answers HTTP 400 naming the message; parse makes "
                    "it the special token (trusted callers only).",
    )
    startupTimeoutSeconds: int = Field(
        600, alias="startupTimeoutSeconds", ge=10, le=86400,
        description="How long a roll-out may go without a replica becoming ready (loading the model, passing "
                    "its readiness probe) before the ModelServing is Failed with reason ProgressDeadlineExceeded "
                    "(the Deployment's progressDeadlineSeconds; for vLLM also its startup probe). The "
                    "Deployment keeps trying: a replica that becomes ready later makes it Ready.",
    )

    @model_validator(mode="after")
    def _has_something_to_serve(self) -> "ModelServingSpec":
        if self.fineTuneJobRef is None and not self.adapters and self.baseModel is None:
            raise ValueError("set fineTuneJobRef, adapters or baseModel: there is nothing to serve")
        if self.runtime == "vllm" and self.resources.gpus < 1:
            raise ValueError(VLLM_NEEDS_GPUS)
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
    lastHandledReconcileAt: str | None = Field(
        None, alias="lastHandledReconcileAt",
        description="The value of the hone.dev/reconcile-requested-at annotation when the operator last looked at "
                    "the object because of it: equal to the annotation once the operator has seen every change "
                    "made before the annotation was set.")


class ModelServing(BaseModel):
    """An inference endpoint (short name msv)."""

    model_config = ConfigDict(extra="allow")
    apiVersion: Literal["hone.dev/v1alpha1"] = API_VERSION
    kind: Literal["ModelServing"] = "ModelServing"
    metadata: ObjectMeta
    spec: ModelServingSpec
    status: ModelServingStatus = Field(default_factory=ModelServingStatus)
