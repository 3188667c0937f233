"""The trainer config: the one file (``config.json``) a validator or trainer pod reads, also what ``hone run`` writes."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from hone_trainer.contract.base import CamelModel, DataFile
from hone_trainer.contract.commands import RESULT_PATH_IN_POD
from hone_trainer.contract.evaluation import EvaluationConfig
from hone_trainer.contract.hyperparameters import ResolvedHyperparameters
from hone_trainer.contract.pricing import PriceTable


class ModelSource(CamelModel):
    location: str = Field(
        description="A Hugging Face id, a directory inside the pod, an s3:// URI, "
        "or a .gguf file."
    )
    revision: str | None = None
    trust_remote_code: bool = False
    credentials_dir: str | None = None


class LoraConfig(CamelModel):
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["auto"] = "auto"


class DeepSpeedSettings(CamelModel):
    zero_stage: int | Literal["auto"] = "auto"
    offload_optimizer: bool = False
    offload_params: bool = False
    config_override: dict[str, Any] | None = None


class ProgressReporting(CamelModel):
    """Where rank 0 reports progress while training."""

    kind: Literal["kubernetes", "file", "none"] = "none"
    namespace: str | None = None
    name: str | None = None
    path: str | None = Field(None, description="For kind=file: a JSON file rewritten each report.")
    interval_seconds: float = Field(10.0, gt=0)


class JobIdentity(CamelModel):
    namespace: str
    name: str
    uid: str
    fine_tuned_model: str = Field(description="ft:<base>:<namespace>:<suffix>:<id>")


class ValidatedData(CamelModel):
    """What ValidatingFiles counted in the training file, for the trainer to hold the data to."""

    examples: int = Field(ge=1, description="Training examples that train (at least one trained token).")
    tokens_per_epoch: int = Field(ge=1, description="Their tokens: what one epoch bills.")


PersonalDataKind = Literal["email", "phone", "payment_card", "iban"]
ScreeningPolicy = Literal["report", "redact", "reject"]


class ScreeningPattern(CamelModel):
    """A kind of personal data the user adds: a name and a regular expression (Python ``regex`` syntax)."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,39}$", description="The kind's name in findings, e.g. employee_id.")
    regex: str = Field(min_length=1, max_length=1000, description="What it matches, e.g. EMP-[0-9]{6}.")


class DataScreening(CamelModel):
    """What ValidatingFiles looks for in every message before counting, and what it does with what it finds.

    ``report`` lists the findings (file, line, message and kind, never the text); ``redact`` replaces each
    match with ``[KIND]`` in what trains, and the counts describe the redacted text; ``reject`` fails the job
    naming the first lines. Off: ``personal_data: off`` and no blocklist."""

    personal_data: Literal["off", "report", "redact", "reject"] = Field(
        "report", description="The policy for personal data: the kinds below and the patterns.")
    kinds: list[PersonalDataKind] = Field(
        default_factory=lambda: ["email", "phone", "payment_card", "iban"],
        description="Built-in detectors: email, phone (7 to 15 digits, international or grouped), payment_card "
                    "(13 to 19 digits passing the Luhn check), iban (ISO 13616, mod-97 checksum).")
    patterns: list[ScreeningPattern] = Field(default_factory=list, max_length=32,
                                             description="Kinds of personal data the user adds.")
    blocklist: list[str] = Field(default_factory=list, max_length=1000,
                                 description="Terms matched as whole words, ignoring case.")
    blocklist_policy: ScreeningPolicy = Field("reject", description="The policy for blocklisted terms.")
    moderation_url: str | None = Field(
        None, pattern=r"^https?://", description="An OpenAI-compatible moderations endpoint (the whole URL, e.g. "
        "http://guard.safety.svc/v1/moderations): every message is sent to it, flagged ones are findings.")
    moderation_policy: Literal["report", "reject"] = Field(
        "reject", description="The policy for flagged messages (not redact: blanking a message changes the "
                              "conversation; remove it from the file instead).")
    moderation_api_key_file: str | None = Field(
        None, description="A file whose content is the bearer token the moderations endpoint wants, if it needs one.")


class TrainerConfig(CamelModel):
    """Everything a validator or trainer process needs, resolved for where it runs.

    The validator takes ``auto`` hyperparameters and resolves them from the data; the trainer only takes the
    config :meth:`resolved` made from that result, so the estimate and the run are the same epochs, batch size
    and tokens.
    """

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
    micro_batch_tokens: int = Field(
        8192, ge=16,
        description="Tokens (rows x the longest row, padding included) each rank puts through the model in one "
        "forward and backward. A step's rows beyond it are split into micro-batches whose gradients DeepSpeed "
        "accumulates before the one optimizer step: the step's loss and update are the same, and activation "
        "memory is bounded by this instead of by the batch size. A row longer than this is a micro-batch alone.")
    gradient_checkpointing: bool = Field(
        False, description="Recompute each layer's activations in the backward pass instead of keeping them "
        "(non-reentrant): about a third more compute for activation memory of one layer per micro-batch.")
    over_length: Literal["truncate", "drop"] = "truncate"
    seed: int = 42
    deepspeed: DeepSpeedSettings = Field(default_factory=DeepSpeedSettings)
    output_uri: str = Field(description="Where the adapter/model is published.")
    output_credentials_dir: str | None = None
    checkpoint_dir: str = Field(description="Where checkpoints are written and resumed from.")
    checkpoint_interval_steps: int = Field(50, ge=1)
    checkpoint_each_epoch: bool = Field(False, description="Also checkpoint at the end of each epoch.")
    keep_checkpoints: int = Field(2, ge=1)
    servable_checkpoints: bool = Field(
        True, description="Export each checkpoint's model (adapter or weights, tokenizer, manifest) into its "
                          "folder, so that it can be served like the final result.")
    merge_weights: bool = False
    prices: PriceTable = Field(default_factory=PriceTable)
    progress: ProgressReporting = Field(default_factory=ProgressReporting)
    metrics_port: int | None = Field(9090, ge=1, le=65535)
    result_path: str | None = Field(
        RESULT_PATH_IN_POD, description="Where the result JSON is written at exit."
    )
    screening: DataScreening = Field(default_factory=DataScreening,
                                     description="Personal data and blocklisted terms: found, redacted or refused.")
    validated: ValidatedData | None = Field(
        None, description="Set with the resolved hyperparameters: the training file as ValidatingFiles counted "
        "it. The trainer refuses a file that no longer counts the same (it changed since it was validated).")
    evaluation: EvaluationConfig | None = Field(
        None, description="What the evaluation step runs after training (graders on the eval file, the safety "
        "suite); None: no evaluation step.")

    def unresolved(self) -> list[str]:
        """The hyperparameters still ``auto`` (which only validation resolves)."""
        return [name for name in ("epochs", "batch_size", "learning_rate_multiplier") if getattr(self, name) == "auto"]

    def resolved(self, hyperparameters: ResolvedHyperparameters, examples: int,
                 tokens_per_epoch: int) -> TrainerConfig:
        """This config with the hyperparameters ValidatingFiles resolved and the counts it made: what the
        trainer runs."""
        return self.model_copy(update={
            "epochs": hyperparameters.epochs, "batch_size": hyperparameters.batch_size,
            "learning_rate_multiplier": hyperparameters.learning_rate_multiplier,
            "validated": ValidatedData(examples=examples, tokens_per_epoch=tokens_per_epoch)})
