"""What a client may send to create a fine-tuning job, as OpenAI defines it, and what Hone makes of it."""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hone_operator.openai_api.errors import ApiError, bad_request

AutoInt = Literal["auto"] | int
AutoFloat = Literal["auto"] | float

#: Hone's FineTuneJob suffix: what ft:<base>:<namespace>:<suffix>:<id> allows.
SUFFIX = re.compile(r"^[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Hyperparameters(_Strict):
    n_epochs: AutoInt | None = None
    batch_size: AutoInt | None = None
    learning_rate_multiplier: AutoFloat | None = None

    @field_validator("n_epochs", "batch_size", "learning_rate_multiplier")
    @classmethod
    def _positive(cls, v: Any) -> Any:
        if v is not None and v != "auto" and v <= 0:
            raise ValueError("must be 'auto' or greater than 0")
        return v


class Supervised(_Strict):
    hyperparameters: Hyperparameters | None = None


class Method(_Strict):
    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: Supervised | None = None
    dpo: dict[str, Any] | None = None
    reinforcement: dict[str, Any] | None = None


class JobCreate(_Strict):
    """``POST /v1/fine_tuning/jobs``."""

    model: str
    training_file: str
    validation_file: str | None = None
    hyperparameters: Hyperparameters | None = None  # deprecated by OpenAI for method.supervised, still accepted
    method: Method | None = None
    suffix: str | None = Field(None, max_length=64)
    seed: int | None = Field(None, ge=0, le=2_147_483_647)
    metadata: dict[str, str] | None = None
    integrations: list[dict[str, Any]] | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is None:
            return v
        if len(v) > 16:
            raise ValueError("at most 16 keys")
        for key, value in v.items():
            if len(key) > 64 or len(value) > 512:
                raise ValueError(f"key {key[:64]!r}: keys are at most 64 characters, values at most 512")
        return v

    def resolved_hyperparameters(self) -> Hyperparameters:
        """``method.supervised.hyperparameters``, else the deprecated top-level ``hyperparameters``."""
        if self.method is not None and self.method.type != "supervised":
            raise bad_request(f"method.type {self.method.type!r} is not trained by Hone yet; use 'supervised' "
                              "(supervised fine-tuning on chat examples)", "method.type", "unsupported_method")
        nested = self.method.supervised.hyperparameters if self.method and self.method.supervised else None
        if nested is not None and self.hyperparameters is not None:
            raise bad_request("give hyperparameters in method.supervised.hyperparameters or in the deprecated "
                              "top-level hyperparameters, not both", "hyperparameters")
        return nested or self.hyperparameters or Hyperparameters()

    def hone_suffix(self) -> str | None:
        if self.suffix is None or self.suffix == "":
            return None
        suffix = self.suffix.lower()
        if len(suffix) > 40 or not SUFFIX.match(suffix):
            raise bad_request("suffix: up to 40 characters of a-z, 0-9, '-', '_' and '.', starting and ending "
                              "with a letter or digit (it becomes part of the fine-tuned model's name)", "suffix")
        return suffix


def finetunejob(req: JobCreate, catalog: dict[str, Any], namespace: str, job_id: str,
                data: dict[str, dict[str, Any]], output: dict[str, Any]) -> dict[str, Any]:
    """The FineTuneJob a create request makes (both modes): the catalog entry as its base model, the
    hyperparameters in the spec, what OpenAI's job object holds besides in annotations.

    ``data``: the DataSource of ``training_file`` (and ``validation_file``), resolved from the file ids by
    the caller; ``output``: where the result is published. A request Hone cannot honour is OpenAI's 400 (or
    the 404 of an unknown model) before anything is created."""
    if req.model not in catalog:
        raise ApiError(404, f"The model '{req.model}' does not exist or is not available for fine-tuning here. "
                            f"Available: {', '.join(sorted(catalog))}.", param="model", code="model_not_found")
    hp = req.resolved_hyperparameters()
    suffix = req.hone_suffix()
    if req.integrations:
        kinds = sorted({str(i.get("type")) for i in req.integrations})
        raise bad_request(f"integrations {kinds} are not supported by Hone: its metrics are in Prometheus and "
                          "in the job's events; remove integrations", "integrations", "unsupported_integration")
    from hone_operator.openai_api import objects

    entry = catalog[req.model]
    hyper: dict[str, Any] = {"epochs": hp.n_epochs or "auto", "batchSize": hp.batch_size or "auto",
                             "learningRateMultiplier": hp.learning_rate_multiplier or "auto"}
    if req.seed is not None:
        hyper["seed"] = req.seed
    annotations = {objects.MODEL: req.model, objects.TRAINING_FILE: req.training_file}
    if req.validation_file:
        annotations[objects.VALIDATION_FILE] = req.validation_file
    if req.metadata is not None:
        annotations[objects.METADATA] = json.dumps(req.metadata)
    return {
        "apiVersion": "hone.dev/v1alpha1", "kind": "FineTuneJob",
        "metadata": {"name": job_id, "namespace": namespace, "labels": {objects.CREATED_BY: "hone-api"},
                     "annotations": annotations},
        "spec": {"baseModel": {"uri": entry.uri, **({"revision": entry.revision} if entry.revision else {})},
                 "method": entry.method,
                 **({"resources": entry.resources.model_dump(by_alias=True, exclude_none=True)}
                    if entry.resources is not None else {}),
                 "trainingData": data["training_file"],
                 **({"validationData": data["validation_file"]} if "validation_file" in data else {}),
                 "hyperparameters": hyper, **({"suffix": suffix} if suffix else {}), "output": output},
    }


def parse(model: type[BaseModel], body: Any) -> Any:
    """``body`` as ``model``; the first problem as OpenAI's 400, naming the parameter."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            raise ApiError(400, f"Unrecognized request argument supplied: {param}", param=param) from None
        if err["type"] == "missing":
            raise ApiError(400, f"Missing required parameter: '{param}'.", param=param,
                           code="missing_required_parameter") from None
        raise ApiError(400, f"Invalid value for '{param}': {err['msg']}", param=param, code="invalid_value") from None
