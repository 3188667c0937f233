"""A FineTuneJob as OpenAI's ``fine_tuning.job``, and the API's other objects.

The FineTuneJob is the record: what OpenAI's job object holds that the spec
and status do not (the catalog name the client gave as ``model``, the file
ids, ``metadata``, the result file) rides in annotations, so ``kubectl get
ftj -o yaml`` shows everything the API answers with.
"""

from __future__ import annotations

import json
import re
import secrets
from datetime import datetime
from typing import Any

from hone_operator.api.v1alpha1 import FineTuneJob
from hone_trainer import contract
from hone_operator.openai_api.errors import bad_request

ANNOTATION_PREFIX = "api.hone.dev/"
MODEL = ANNOTATION_PREFIX + "model"  # the catalog name the client asked for
TRAINING_FILE = ANNOTATION_PREFIX + "training-file"
VALIDATION_FILE = ANNOTATION_PREFIX + "validation-file"
METADATA = ANNOTATION_PREFIX + "metadata"  # JSON object
RESULT_FILES = ANNOTATION_PREFIX + "result-files"  # JSON list of file ids
MODEL_DELETED = ANNOTATION_PREFIX + "model-deleted"  # "true" once DELETE /v1/models/<it> was called
#: Label on every FineTuneJob the API created (what GET /v1/fine_tuning/jobs lists).
CREATED_BY = "api.hone.dev/created-by"

JOB_ID = re.compile(r"^ftjob-[a-z0-9]{24}$")
FILE_ID = re.compile(r"^file-[a-z0-9]{24}$")

#: FineTuneJob phase -> OpenAI status. A suspended job is OpenAI's "paused".
STATUS = {"ValidatingFiles": "validating_files", "Queued": "queued", "Running": "running", "Suspended": "paused",
          "Succeeded": "succeeded", "Failed": "failed", "Cancelled": "cancelled"}


def phase(ftj: FineTuneJob) -> str:
    """The job's phase; ValidatingFiles before anything has written one (a job just created)."""
    return ftj.status.phase.value if ftj.status.phase is not None else "ValidatingFiles"


def is_fine_tune(ftj: FineTuneJob) -> bool:
    """Whether the job's model can be listed and requested: it succeeded, and its model was not deleted."""
    return phase(ftj) == "Succeeded" and ftj.status.fineTunedModel is not None \
        and annotations(ftj).get(MODEL_DELETED) != "true"


def failed_safety_check(ftj: FineTuneJob) -> str | None:
    """Why the job's fine-tune is not served when its evaluation step's safety gate failed (None: it passed, or
    there was none), with its measured refusal rates."""
    evaluation = ftj.status.evaluation
    gate = evaluation.safety if evaluation is not None else None
    if gate is None or gate.passed:
        return None
    model = ftj.status.fineTunedModel.name if ftj.status.fineTunedModel else ftj.metadata.name
    return contract.SafetyGate.model_validate(gate.to_status()).failure(model)


def check_in_use(jobs: list[FineTuneJob], file_id: str) -> None:
    """OpenAI's 400 when a job that has not finished trains on the file (by the API's annotation, or by
    ``spec.trainingData.file`` / ``spec.validationData.file`` in YAML)."""
    for job in jobs:
        ann = annotations(job)
        named = {ann.get(TRAINING_FILE), ann.get(VALIDATION_FILE), job.spec.trainingData.file,
                 job.spec.validationData.file if job.spec.validationData else None}
        if not (job.status.phase and job.status.phase.terminal) and file_id in named:
            raise bad_request(f"file {file_id} is the data of job {job.metadata.name}, which has not finished; "
                              "cancel the job first", "file_id")


def check_control(ftj: FineTuneJob, action: str) -> None:
    """OpenAI's 400 when ``action`` (cancel, pause, resume) cannot apply to the job as it is."""
    job_id = ftj.metadata.name
    status = STATUS[phase(ftj)]
    if ftj.status.phase is not None and ftj.status.phase.terminal:
        raise bad_request(f"Job {job_id} has already {'completed' if status == 'succeeded' else status} "
                          f"(status {status}); only a job that has not finished can be {action}d",
                          "fine_tuning_job_id", "job_already_finished")
    if action == "resume" and not ftj.spec.suspend:
        raise bad_request(f"Job {job_id} is not paused (status {status})", "fine_tuning_job_id", "job_not_paused")


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def unix(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return int(value.timestamp())


def annotations(ftj: FineTuneJob) -> dict[str, str]:
    return ftj.metadata.annotations or {}


def job_object(ftj: FineTuneJob, organization: str) -> dict[str, Any]:
    """OpenAI's ``fine_tuning.job`` for a FineTuneJob: every field the openai client's model declares."""
    ann = annotations(ftj)
    status = ftj.status
    spec = ftj.spec
    current = phase(ftj)
    resolved = status.estimate.hyperparameters if status.estimate and status.estimate.hyperparameters else None
    hp = {
        "n_epochs": resolved.epochs if resolved else spec.hyperparameters.epochs,
        "batch_size": resolved.batch_size if resolved else spec.hyperparameters.batchSize,
        "learning_rate_multiplier": (resolved.learning_rate_multiplier if resolved
                                     else spec.hyperparameters.learningRateMultiplier),
    }
    error = None
    if status.error is not None and current == "Failed":
        error = {"code": status.error.code, "message": status.error.message, "param": status.error.param}
    progress = status.progress
    running = current in ("Running", "Queued", "ValidatingFiles")
    return {
        "id": ftj.metadata.name,
        "object": "fine_tuning.job",
        "created_at": unix(ftj.metadata.creationTimestamp) or 0,
        "error": error,
        # As on OpenAI, null until the job succeeded (Hone publishes before its evaluation step ends).
        "fine_tuned_model": status.fineTunedModel.name if status.fineTunedModel and current == "Succeeded" else None,
        "finished_at": unix(status.completionTime) if not running else None,
        "hyperparameters": hp,
        "model": ann.get(MODEL, spec.baseModel.uri),
        "organization_id": organization,
        "result_files": json.loads(ann.get(RESULT_FILES, "[]")),
        "seed": spec.hyperparameters.seed,
        "status": STATUS[current],
        "trained_tokens": status.trainedTokens if current == "Succeeded" else None,
        "training_file": ann.get(TRAINING_FILE, ""),
        "validation_file": ann.get(VALIDATION_FILE),
        "estimated_finish": unix(progress.estimated_finish) if progress and current == "Running" else None,
        "integrations": [],
        "metadata": json.loads(ann[METADATA]) if METADATA in ann else None,
        "method": {"type": "supervised", "supervised": {"hyperparameters": hp}},
        "user_provided_suffix": spec.suffix,
    }


def file_object(record: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's ``file`` from a stored file record."""
    return {"id": record["id"], "object": "file", "bytes": record["bytes"], "created_at": record["created_at"],
            "filename": record["filename"], "purpose": record["purpose"], "status": "processed",
            "expires_at": None, "status_details": None}


def event_object(event: dict[str, Any]) -> dict[str, Any]:
    return {"id": event["id"], "object": "fine_tuning.job.event", "created_at": event["created_at"],
            "level": event.get("level", "info"), "message": event["message"], "type": event.get("type", "message"),
            "data": event.get("data")}


def checkpoint_name(ftj: FineTuneJob, step: int) -> str:
    """The name a checkpoint is requested by: the fine-tuned model's name (or what it will be) + ``:ckpt-step-N``."""
    from hone_operator.builders.finetunejob import fine_tuned_model_name

    base = ftj.status.fineTunedModel.name if ftj.status.fineTunedModel else fine_tuned_model_name(ftj)
    return contract.checkpoint_model_name(base, step)


_CHECKPOINT_NAME = re.compile(r"^(?P<model>.+):ckpt-step-(?P<step>[0-9]+)$")


def checkpoint_of(name: str) -> tuple[str, int] | None:
    """``(fine-tuned model, step)`` of a checkpoint's name, None for any other name."""
    m = _CHECKPOINT_NAME.match(name)
    return (m.group("model"), int(m.group("step"))) if m else None


def checkpoint_object(ftj: FineTuneJob, step: int, created_at: int, meta: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's ``fine_tuning.job.checkpoint`` from a complete checkpoint's marker."""
    valid, accuracy = meta.get("validation_loss"), meta.get("validation_accuracy")
    return {
        "id": f"ftckpt-{ftj.metadata.name.removeprefix('ftjob-')}-{step}",
        "object": "fine_tuning.job.checkpoint",
        "created_at": created_at,
        "fine_tuned_model_checkpoint": checkpoint_name(ftj, step),
        "fine_tuning_job_id": ftj.metadata.name,
        "step_number": step,
        "metrics": {"step": float(step), "train_loss": meta.get("train_loss"), "train_mean_token_accuracy": None,
                    "valid_loss": valid, "valid_mean_token_accuracy": accuracy, "full_valid_loss": valid,
                    "full_valid_mean_token_accuracy": accuracy},
    }


def model_object(name: str, created: int, owned_by: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": owned_by, "shutdown_date": None}


def results_csv(train_curve: list[dict[str, Any]], validation_curve: list[dict[str, Any]]) -> str:
    """OpenAI's per-step results file (``step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy``)
    from the published manifest's loss curves; what Hone does not measure is left empty."""
    valid = {p["step"]: p["loss"] for p in validation_curve}
    lines = ["step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy"]
    for point in train_curve:
        v = valid.get(point["step"])
        lines.append(f"{point['step']},{point['loss']},,{'' if v is None else v},")
    return "\n".join(lines) + "\n"


def page(items: list[dict[str, Any]], after: str | None, limit: int) -> dict[str, Any]:
    """OpenAI's cursor page: the ``limit`` items after the one with id ``after`` (items newest first)."""
    start = 0
    if after:
        ids = [i["id"] for i in items]
        start = ids.index(after) + 1 if after in ids else len(items)
    chunk = items[start:start + limit]
    return {"object": "list", "data": chunk, "has_more": start + limit < len(items),
            "first_id": chunk[0]["id"] if chunk else None, "last_id": chunk[-1]["id"] if chunk else None}
