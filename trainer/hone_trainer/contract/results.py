"""What the runtime reports back: the validation result, training progress and the training result."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Literal, TypeVar

from pydantic import Field, PrivateAttr, model_validator

from hone_trainer.contract.base import CamelModel
from hone_trainer.contract.hyperparameters import ResolvedHyperparameters
from hone_trainer.contract.memory import ModelShape


class ProblemKind(str, enum.Enum):
    """What can be wrong with a line of a chat JSONL file."""

    INVALID_JSON = "invalid_json"
    INVALID_ENCODING = "invalid_encoding"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_MESSAGES = "missing_messages"
    INVALID_MESSAGE = "invalid_message"
    UNKNOWN_ROLE = "unknown_role"
    INVALID_CONTENT = "invalid_content"
    EMPTY_CONTENT = "empty_content"
    INVALID_WEIGHT = "invalid_weight"
    NO_ASSISTANT_MESSAGE = "no_assistant_message"
    LINE_TOO_LONG = "line_too_long"
    SPECIAL_TOKEN_IN_CONTENT = "special_token_in_content"
    TOO_FEW_EXAMPLES = "too_few_examples"
    EMPTY_FILE = "empty_file"
    UNREADABLE_FILE = "unreadable_file"
    SCREENING_REJECTED = "screening_rejected"
    SCREENING_UNAVAILABLE = "screening_unavailable"
    #: The evaluation step's eval file or extra safety suite cannot be read as one (checked before training).
    INVALID_EVAL_FILE = "invalid_eval_file"


class Problem(CamelModel):
    file: Literal["training", "validation", "evaluation"] = Field(
        description="Which file: training, validation, or evaluation (the eval file or the extra safety suite).")
    line: int | None = Field(None, description="1-based line number; absent for whole-file problems.")
    kind: ProblemKind = Field(description="What kind of problem (invalid_json, unknown_role, ...).")
    message: str = Field(description="What is wrong and how to fix it.")


class Finding(CamelModel):
    """Where data screening found something: never the text itself."""

    file: Literal["training", "validation"]
    line: int = Field(description="1-based line number.")
    message: int = Field(description="Index of the message in the line's messages.")
    kind: str = Field(description="email, phone, payment_card, iban, a pattern's name, or blocklist.")
    action: Literal["report", "redact", "reject"] = Field(description="What was done.")


class ScreeningResult(CamelModel):
    """What data screening found in both files."""

    counts: dict[str, int] = Field(default_factory=dict, description="Matches per kind.")
    lines: int = Field(0, ge=0, description="Lines with at least one finding.")
    redacted_messages: int = Field(0, ge=0, description="Messages that train redacted.")
    findings: list[Finding] = Field(default_factory=list, description="The first findings (100 at most).")
    #: (file, line) of every line with a finding, across detectors and files: what ``lines`` counts.
    _seen: set[tuple[str, int]] = PrivateAttr(default_factory=set)

    def found(self, file: str, line: int) -> None:
        self._seen.add((file, line))
        self.lines = len(self._seen)


class ValidationResult(CamelModel):
    """What the ValidatingFiles step found; the operator copies it into status."""

    ok: bool = Field(description="True when the data is trainable.")
    examples: int = Field(0, ge=0, description="Training examples that train: valid, and with an assistant token "
                          "left after maxSeqLength (what each epoch bills).")
    validation_examples: int = Field(0, ge=0)
    invalid_lines: int = Field(0, ge=0)
    tokens_per_epoch: int = Field(0, ge=0, description="All tokens of the training examples.")
    trained_tokens_per_epoch: int = Field(
        0, ge=0, description="Tokens the loss is computed on (weighted assistant tokens)."
    )
    validation_tokens: int = Field(0, ge=0)
    max_example_tokens: int = Field(0, ge=0)
    max_step_rows: int = Field(0, ge=0, description="The most packed rows any optimizer step of the run has.")
    max_row_tokens: int = Field(0, ge=0, description="The longest packed row of the run, in tokens.")
    max_step_tokens: int = Field(0, ge=0, description="The most tokens a step puts through the model, padded.")
    over_length_examples: int = Field(0, ge=0)
    over_length_action: Literal["truncate", "drop"] = "truncate"
    duplicate_examples: int = Field(0, ge=0)
    validation_overlap: int = Field(
        0, ge=0, description="Validation examples that also occur in the training file."
    )
    problem_counts: dict[str, int] = Field(default_factory=dict)
    problems: list[Problem] = Field(default_factory=list, description="The first problems found.")
    warnings: list[str] = Field(default_factory=list)
    hyperparameters: ResolvedHyperparameters | None = None
    billable_training_tokens: int = Field(0, ge=0, description="tokens_per_epoch x epochs.")
    estimated_cost_usd: float = Field(0.0, ge=0)
    model: ModelShape | None = Field(None, description="The base model's shape, for the memory estimate.")
    screening: ScreeningResult | None = Field(None, description="What data screening found.")

    @property
    def summary(self) -> str:
        """One line a person can act on: the first problem, or the counts."""
        if self.ok:
            return (
                f"{self.examples} examples, {self.tokens_per_epoch} tokens per epoch, "
                f"{self.billable_training_tokens} billable tokens"
            )
        if self.problems:
            p = self.problems[0]
            where = f"{p.file} file line {p.line}" if p.line is not None else f"{p.file} file"
            more = sum(self.problem_counts.values()) - 1
            tail = f" (and {more} more problem(s))" if more > 0 else ""
            return f"{where}: {p.message}{tail}"
        return "the data is not trainable"


#: Points a loss curve keeps in ``status.progress`` and the manifest (evenly spaced over the run).
MAX_LOSS_POINTS = 100


class LossPoint(CamelModel):
    """One point of a loss curve."""

    step: int = Field(ge=0, description="Optimizer step (0: the base model, before any training).")
    loss: float = Field(description="Loss at that step.")


T = TypeVar("T")


def evenly_spaced(items: list[T], limit: int) -> list[T]:
    """At most ``limit`` of ``items``, evenly spaced, the first and the last always kept."""
    if len(items) <= limit:
        return items
    keep = sorted({round(i * (len(items) - 1) / (limit - 1)) for i in range(limit)})
    return [items[i] for i in keep]


def loss_curve(points: list[tuple[int, float]], limit: int = MAX_LOSS_POINTS) -> list[LossPoint]:
    """At most ``limit`` of ``points`` (step, loss), evenly spaced, the first and the last always kept."""
    return [LossPoint(step=step, loss=round(loss, 6)) for step, loss in evenly_spaced(points, limit)]


class Progress(CamelModel):
    """What rank 0 reports while training; lands in ``status.progress``."""

    step: int = Field(0, ge=0, description="Optimizer steps done.")
    total_steps: int = Field(0, ge=0, description="Optimizer steps in the whole run.")
    percent: int = Field(0, ge=0, le=100, description="step / totalSteps in percent, for kubectl get.")
    epoch: float = Field(0.0, ge=0, description="Epochs done, fractional.")
    train_loss: float | None = Field(None, description="Mean training loss over the last report interval.")
    validation_loss: float | None = Field(None, description="Latest loss on the validation file.")
    validation_accuracy: float | None = Field(
        None, ge=0, le=1, description="Mean token accuracy on the validation file at the latest evaluation: the "
                                      "share of its assistant tokens the model predicts exactly.")
    trained_tokens: int = Field(0, ge=0, description="Billable tokens processed so far.")
    tokens_per_second: float | None = Field(None, ge=0, description="Training throughput over the last interval.")
    estimated_finish: datetime | None = Field(None, description="When training should finish at the current rate.")
    updated_at: datetime | None = Field(None, description="When this report was written.")
    train_curve: list[LossPoint] = Field(
        default_factory=list, description="Training loss per step (at most 100 points, evenly spaced).")
    validation_curve: list[LossPoint] = Field(
        default_factory=list, description="Validation loss at each evaluation, from the base model's at step 0.")
    peak_memory_bytes: int | None = Field(
        None, ge=0, description="The largest peak memory of any rank so far: GPU memory PyTorch reserved, or on CPU "
                                "the process's peak resident memory. Compare with status.estimate.memory.perRank.")

    @model_validator(mode="after")
    def _percent(self) -> "Progress":
        if self.total_steps:
            self.percent = min(100, int(100 * self.step / self.total_steps))
        return self


#: Where a checkpoint's servable model lies inside its folder (adapter or weights, tokenizer, manifest).
CHECKPOINT_MODEL_DIR = "model"


def checkpoint_model_name(fine_tuned_model: str, step: int) -> str:
    """The name a checkpoint's model is served and requested by, as OpenAI names them: ``<model>:ckpt-step-N``."""
    return f"{fine_tuned_model}:ckpt-step-{step}"


class CheckpointInfo(CamelModel):
    step: int = Field(ge=0, description="Optimizer step the checkpoint was taken at.")
    uri: str = Field(description="Where the complete checkpoint lies.")
    train_loss: float | None = Field(None, description="Training loss at that step.")
    validation_loss: float | None = Field(None, description="Loss on the validation file at that step.")
    validation_accuracy: float | None = Field(None, description="Mean token accuracy on the validation file then.")
    model_uri: str | None = Field(
        None, description="The checkpoint's servable model (adapter or weights, tokenizer and manifest), which a "
                          "ModelServing serves with fineTuneJobRef.checkpointStep; absent when "
                          "spec.checkpointing.servable was false.")


class TrainingResult(CamelModel):
    """What rank 0 writes to its result file once the model is published."""

    ok: bool
    fine_tuned_model: str | None = None
    artifact_uri: str | None = None
    manifest_sha256: str | None = None
    trained_tokens: int = Field(0, ge=0)
    steps: int = Field(0, ge=0)
    train_loss: float | None = None
    validation_loss: float | None = None
    initial_validation_loss: float | None = Field(
        None, description="Validation loss of the base model, before the first step.")
    validation_accuracy: float | None = Field(None, description="Mean token accuracy on the validation file.")
    initial_validation_accuracy: float | None = Field(
        None, description="The base model's mean token accuracy on the validation file.")
    checkpoints: list[CheckpointInfo] = Field(default_factory=list)
    peak_memory_bytes: int | None = Field(None, ge=0, description="As in Progress, over the whole run.")
    error_code: str | None = None
    message: str | None = None
