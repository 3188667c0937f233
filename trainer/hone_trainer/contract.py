"""The contract between the Hone operator and the trainer.

Pure and torch-free: the operator imports this module, so nothing here may
import torch, transformers or kopf. It fixes:

* :class:`TrainerConfig`, the one file (``config.json``) a trainer or
  validator pod reads, also what ``hone run`` writes locally;
* :class:`ValidationResult`, what ``python -m hone_trainer validate`` writes
  to its result file (in a cluster: the pod's termination message);
* :class:`Progress`, what rank 0 patches into ``FineTuneJob.status.progress``
  while training runs;
* :class:`TrainingResult`, what rank 0 writes to its result file when it has
  published the model;
* :class:`ExitCode`, the exit codes that tell a retryable failure from one
  that retrying cannot fix;
* the resolution of ``auto`` hyperparameters and the cost arithmetic, so
  that the validator, the operator and the CLI agree to the cent.

All JSON is camelCase, matching the Kubernetes status it ends up in.
"""

from __future__ import annotations

import enum
import json
import math
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

#: Kubernetes keeps at most this many bytes of a container's termination message.
TERMINATION_MESSAGE_LIMIT = 4096

#: Where the pods the operator creates read their config and write their result.
CONFIG_MOUNT_PATH = "/etc/hone"
CONFIG_FILE = "config.json"
RESULT_PATH_IN_POD = "/dev/termination-log"


def validate_command(config_path: str, result_path: str) -> list[str]:
    """How the operator (and ``hone run``) invokes the ValidatingFiles step.

    ``python -m hone_trainer validate`` reads :class:`TrainerConfig` from
    ``--config``, writes :class:`ValidationResult` (see
    :func:`to_termination_message`) to ``--result`` and exits with
    :attr:`ExitCode.OK`, or :attr:`ExitCode.DATA_ERROR` when the data is not
    trainable (the result is written either way).
    """
    return ["python", "-m", "hone_trainer", "validate", "--config", config_path, "--result", result_path]


def train_module_args(config_path: str) -> list[str]:
    """What follows ``torchrun <launcher options>``: one process per GPU runs this.

    ``python -m hone_trainer train`` reads :class:`TrainerConfig`, reports
    :class:`Progress` as the config says, and on rank 0 writes
    :class:`TrainingResult` to ``config.result_path`` at exit.
    """
    return ["-m", "hone_trainer", "train", "--config", config_path]


class ExitCode(enum.IntEnum):
    """Exit codes of ``python -m hone_trainer``.

    The operator's ``podFailurePolicy`` fails the Job at once on any code in
    :data:`NON_RETRYABLE_EXIT_CODES`; every other non-zero code (a crash, an
    out-of-memory kill, a lost node) is retried up to the backoff limit, and
    the trainer resumes from its newest complete checkpoint.
    """

    OK = 0
    #: An unexpected failure: retrying may help (network, node, OOM).
    RETRYABLE = 1
    #: Command-line usage error (argparse's own code).
    USAGE = 2
    #: The trainer config is invalid or asks for something impossible here.
    CONFIG_ERROR = 3
    #: The training or validation data is not trainable.
    DATA_ERROR = 4
    #: The base model cannot be loaded (missing, not safetensors, remote code).
    MODEL_ERROR = 5
    #: Publishing the result failed in a way retrying cannot fix (permissions).
    OUTPUT_ERROR = 6


NON_RETRYABLE_EXIT_CODES: tuple[int, ...] = (
    ExitCode.USAGE,
    ExitCode.CONFIG_ERROR,
    ExitCode.DATA_ERROR,
    ExitCode.MODEL_ERROR,
    ExitCode.OUTPUT_ERROR,
)


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=False
    )

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


# --------------------------------------------------------------------------
# Prices and hyperparameters
# --------------------------------------------------------------------------


class PriceTable(_Model):
    """US dollars per one million tokens."""

    training: float = Field(25.0, ge=0, description="USD per 1M billable training tokens.")
    prompt: float = Field(3.75, ge=0, description="USD per 1M inference prompt tokens.")
    completion: float = Field(15.0, ge=0, description="USD per 1M inference completion tokens.")


def cost_usd(tokens: int, usd_per_million: float) -> float:
    """Cost of ``tokens`` at a per-million price, rounded to 1/10000 of a cent."""
    return round(tokens * usd_per_million / 1_000_000, 6)


class ResolvedHyperparameters(_Model):
    """Hyperparameters after ``auto`` has been resolved from the data."""

    epochs: int = Field(ge=1, description="Passes over the training file.")
    batch_size: int = Field(ge=1, description="Examples per optimizer step across all ranks.")
    learning_rate_multiplier: float = Field(gt=0, description="Multiplier on the base learning rate.")


#: OpenAI's published heuristic for ``n_epochs: auto``: aim for 3 epochs, but
#: see at least 100 and at most 25,000 examples in total, within 1..25 epochs.
_EPOCHS_DEFAULT, _MIN_TARGET_EXAMPLES, _MAX_TARGET_EXAMPLES = 3, 100, 25_000
_MIN_EPOCHS, _MAX_EPOCHS = 1, 25


def resolve_hyperparameters(
    n_examples: int,
    epochs: int | Literal["auto"] = "auto",
    batch_size: int | Literal["auto"] = "auto",
    learning_rate_multiplier: float | Literal["auto"] = "auto",
) -> ResolvedHyperparameters:
    """Resolve ``auto`` values the way OpenAI's fine-tuning API documents them.

    * epochs: 3, raised so that at least 100 examples are seen, lowered so
      that at most 25,000 are, within 1..25;
    * batch size: about 0.2% of the examples, between 1 and 256;
    * learning-rate multiplier: 2.0 for small batches, 1.0 from batch size 16
      on (the multiplier scales the trainer's base learning rate).
    """
    n = max(n_examples, 1)
    if epochs == "auto":
        e = _EPOCHS_DEFAULT
        if n * e < _MIN_TARGET_EXAMPLES:
            e = min(_MAX_EPOCHS, math.ceil(_MIN_TARGET_EXAMPLES / n))
        elif n * e > _MAX_TARGET_EXAMPLES:
            e = max(_MIN_EPOCHS, _MAX_TARGET_EXAMPLES // n)
        epochs = e
    if batch_size == "auto":
        batch_size = min(256, max(1, round(n * 0.002)))
    if learning_rate_multiplier == "auto":
        learning_rate_multiplier = 2.0 if batch_size < 16 else 1.0
    return ResolvedHyperparameters(
        epochs=epochs, batch_size=batch_size, learning_rate_multiplier=learning_rate_multiplier
    )


# --------------------------------------------------------------------------
# Trainer config
# --------------------------------------------------------------------------


class DataFile(_Model):
    """One JSONL file as the pod sees it: a local path or a remote URI."""

    location: str = Field(
        description="A path inside the pod (mounted ConfigMap/PVC) or an s3://, "
        "http(s):// URI the trainer fetches with fsspec."
    )
    credentials_dir: str | None = Field(
        None, description="Directory of the mounted Secret with credentials for the URI."
    )


class ModelSource(_Model):
    location: str = Field(
        description="A Hugging Face id, a directory inside the pod, an s3:// URI, "
        "or a .gguf file."
    )
    revision: str | None = None
    trust_remote_code: bool = False
    credentials_dir: str | None = None


class LoraConfig(_Model):
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["auto"] = "auto"


class DeepSpeedSettings(_Model):
    zero_stage: int | Literal["auto"] = "auto"
    offload_optimizer: bool = False
    offload_params: bool = False
    config_override: dict[str, Any] | None = None


class ProgressReporting(_Model):
    """Where rank 0 reports progress while training."""

    kind: Literal["kubernetes", "file", "none"] = "none"
    namespace: str | None = None
    name: str | None = None
    path: str | None = Field(None, description="For kind=file: a JSON file rewritten each report.")
    interval_seconds: float = Field(10.0, gt=0)


class JobIdentity(_Model):
    namespace: str
    name: str
    uid: str
    fine_tuned_model: str = Field(description="ft:<base>:<namespace>:<suffix>:<id>")


class TrainerConfig(_Model):
    """Everything a validator or trainer process needs, resolved for where it runs."""

    api_version: Literal["hone.dev/v1alpha1"] = "hone.dev/v1alpha1"
    kind: Literal["TrainerConfig"] = "TrainerConfig"
    job: JobIdentity
    base_model: ModelSource
    method: Literal["lora", "qlora", "full"] = "lora"
    lora: LoraConfig = Field(default_factory=LoraConfig)
    training_data: DataFile
    validation_data: DataFile | None = None
    epochs: int | Literal["auto"] = "auto"
    batch_size: int | Literal["auto"] = "auto"
    learning_rate_multiplier: float | Literal["auto"] = "auto"
    max_seq_length: int = Field(2048, ge=16)
    pack_length: int | None = Field(
        None, ge=16,
        description="Tokens per packed row; default min(max_seq_length, 512). Attention in a row costs the "
        "square of its length even with examples kept apart, so short rows are faster; an example longer "
        "than this gets a row of its own.")
    over_length: Literal["truncate", "drop"] = "truncate"
    seed: int = 42
    deepspeed: DeepSpeedSettings = Field(default_factory=DeepSpeedSettings)
    output_uri: str = Field(description="Where the adapter/model is published.")
    output_credentials_dir: str | None = None
    checkpoint_dir: str = Field(description="Where checkpoints are written and resumed from.")
    checkpoint_interval_steps: int = Field(50, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    merge_weights: bool = False
    prices: PriceTable = Field(default_factory=PriceTable)
    progress: ProgressReporting = Field(default_factory=ProgressReporting)
    metrics_port: int | None = Field(9090, ge=1, le=65535)
    result_path: str | None = Field(
        RESULT_PATH_IN_POD, description="Where the result JSON is written at exit."
    )


# --------------------------------------------------------------------------
# Validation result (the ValidatingFiles step)
# --------------------------------------------------------------------------


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
    TOO_FEW_EXAMPLES = "too_few_examples"
    EMPTY_FILE = "empty_file"
    UNREADABLE_FILE = "unreadable_file"


class Problem(_Model):
    file: Literal["training", "validation"] = Field(description="Which file: training or validation.")
    line: int | None = Field(None, description="1-based line number; absent for whole-file problems.")
    kind: ProblemKind = Field(description="What kind of problem (invalid_json, unknown_role, ...).")
    message: str = Field(description="What is wrong and how to fix it.")


class ValidationResult(_Model):
    """What the ValidatingFiles step found; the operator copies it into status."""

    ok: bool = Field(description="True when the data is trainable.")
    examples: int = Field(0, ge=0, description="Valid training examples.")
    validation_examples: int = Field(0, ge=0)
    invalid_lines: int = Field(0, ge=0)
    tokens_per_epoch: int = Field(0, ge=0, description="All tokens of the training examples.")
    trained_tokens_per_epoch: int = Field(
        0, ge=0, description="Tokens the loss is computed on (weighted assistant tokens)."
    )
    validation_tokens: int = Field(0, ge=0)
    max_example_tokens: int = Field(0, ge=0)
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


def to_termination_message(result: BaseModel, limit: int = TERMINATION_MESSAGE_LIMIT) -> str:
    """Serialise a result compactly so that it fits Kubernetes' termination message.

    Lists (problems, warnings) are shortened from the end until it fits;
    the counts are kept, so nothing is silently lost from the totals.
    """
    data = result.model_dump(mode="json", by_alias=True, exclude_none=True)
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    for key in ("problems", "warnings"):
        while len(text.encode()) > limit and data.get(key):
            data[key] = data[key][:-1]
            text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    for key in ("problems", "warnings"):
        # Messages themselves may be long (a quoted line): clip them next.
        if len(text.encode()) > limit and key in data:
            data[key] = []
            text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    if len(text.encode()) > limit:
        raise ValueError(f"result does not fit in {limit} bytes even without problem details")
    return text


# --------------------------------------------------------------------------
# Progress and the training result
# --------------------------------------------------------------------------


class Progress(_Model):
    """What rank 0 reports while training; lands in ``status.progress``."""

    step: int = Field(0, ge=0, description="Optimizer steps done.")
    total_steps: int = Field(0, ge=0, description="Optimizer steps in the whole run.")
    percent: int = Field(0, ge=0, le=100, description="step / totalSteps in percent, for kubectl get.")
    epoch: float = Field(0.0, ge=0, description="Epochs done, fractional.")
    train_loss: float | None = Field(None, description="Mean training loss over the last report interval.")
    validation_loss: float | None = Field(None, description="Latest loss on the validation file.")
    trained_tokens: int = Field(0, ge=0, description="Billable tokens processed so far.")
    tokens_per_second: float | None = Field(None, ge=0, description="Training throughput over the last interval.")
    estimated_finish: datetime | None = Field(None, description="When training should finish at the current rate.")
    updated_at: datetime | None = Field(None, description="When this report was written.")

    @model_validator(mode="after")
    def _percent(self) -> "Progress":
        if self.total_steps:
            self.percent = min(100, int(100 * self.step / self.total_steps))
        return self


class CheckpointInfo(_Model):
    step: int = Field(ge=0, description="Optimizer step the checkpoint was taken at.")
    uri: str = Field(description="Where the complete checkpoint lies.")
    train_loss: float | None = Field(None, description="Training loss at that step.")


class TrainingResult(_Model):
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
    checkpoints: list[CheckpointInfo] = Field(default_factory=list)
    error_code: str | None = None
    message: str | None = None


def parse_result(text: str | None, model: type[_Model]) -> _Model | None:
    """Parse a result file or termination message; None when absent or unparsable."""
    if not text or not text.strip():
        return None
    try:
        return model.model_validate_json(text.strip())
    except ValueError:
        return None


# --------------------------------------------------------------------------
# Serving
# --------------------------------------------------------------------------

SERVER_CONFIG_FILE = "server.json"
SERVER_PORT = 8000


class AdapterSource(_Model):
    """A LoRA adapter published by the trainer (its folder holds ``manifest.json``)."""

    name: str | None = Field(None, description="Served model name; default: the manifest's fineTunedModel.")
    location: str = Field(description="A directory, or s3://bucket/prefix of a published model.")
    credentials_dir: str | None = None


class ServerConfig(_Model):
    """What ``python -m hone_trainer serve --config`` reads (the operator's ConfigMap, or ``hone serve``)."""

    base_model: ModelSource
    served_model_name: str | None = Field(
        None, description="Name clients use for the base model; default: its location without a scheme.")
    adapters: list[AdapterSource] = Field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = Field(SERVER_PORT, ge=0, le=65535)
    api_keys_file: str | None = Field(None, description="Accepted API keys, one per line; none: no key needed.")
    max_concurrent_requests: int = Field(64, ge=1, description="Queued plus running; beyond it: HTTP 429.")
    max_batch_size: int = Field(8, ge=1, le=256, description="Sequences decoded together in one step.")
    default_max_tokens: int = Field(512, ge=1, description="Completion limit when a request sets none.")
    prices: PriceTable = Field(default_factory=PriceTable)
    metrics_enabled: bool = True


def normalise_location(location: str) -> str:
    """A model location without the schemes that name the same thing (``hf://``, ``file://``)."""
    return location.removeprefix("hf://").removeprefix("file://").rstrip("/")


def default_served_name(location: str) -> str:
    """How clients name a base model when the config gives no name: its Hugging Face id, the
    embedded model's name, or the folder (or .gguf file) name of a path or s3:// prefix.
    The server and the operator's ``status.servedModels`` both use this."""
    loc = normalise_location(location)
    if loc.startswith("embedded://"):
        return loc.removeprefix("embedded://")
    if loc.startswith("/") or loc.startswith(".") or loc.startswith("s3://"):
        name = loc.rsplit("/", 1)[-1]
        return name.removesuffix(".gguf") or loc
    return loc


def serve_command(config_path: str) -> list[str]:
    """How the operator (and ``hone serve``) starts the built-in server."""
    return ["python", "-m", "hone_trainer", "serve", "--config", config_path]


def fetch_command(config_path: str, target: str) -> list[str]:
    """The init step: fetch and verify every adapter of a :class:`ServerConfig` into ``target``."""
    return ["python", "-m", "hone_trainer", "fetch", "--config", config_path, "--target", target]
