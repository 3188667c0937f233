"""The server config: what ``python -m hone_trainer serve --config`` reads, and how served models are named."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import ConfigDict, Field

from hone_trainer.contract.base import CamelModel
from hone_trainer.contract.commands import SERVER_PORT
from hone_trainer.contract.config import ModelSource
from hone_trainer.contract.pricing import PriceTable


class AdapterSource(CamelModel):
    """A LoRA adapter published by the trainer (its folder holds ``manifest.json``)."""

    name: str | None = Field(None, description="Served model name; default: the manifest's fineTunedModel.")
    location: str = Field(description="A directory, or s3://bucket/prefix of a published model.")
    credentials_dir: str | None = None


class QuotaSettings(CamelModel):
    """Where the server reports the tokens it serves and is granted tokens under its namespace's TokenBudget."""

    url: str = Field(description="The operator's quota endpoint, e.g. http://hone-operator-quota.hone.svc:8082.")
    token_file: str = Field("/var/run/secrets/hone/quota/token",
                            description="The pod's ServiceAccount token it reports with (a projected volume).")
    journal: str | None = Field(
        "/var/run/hone/usage/usage.json",
        description="Where the tokens served today are kept across restarts of the container (an emptyDir).")
    report_seconds: float = Field(1.0, gt=0, le=60, description="How often a busy server reports.")
    wait_seconds: float = Field(5.0, gt=0, le=60,
                                description="How long a request waits for a grant before HTTP 503.")


class QuotaReport(CamelModel):
    """A serving pod's report to the operator's quota endpoint (``POST /quota/v1/report``): the tokens it
    served in ``day`` (None before it knows the budget's day), what it keeps holding for requests running
    now, and how many more it wants to hold."""

    # Pods and the operator may run different versions during an upgrade: unknown keys are ignored.
    model_config = ConfigDict(**{**CamelModel.model_config, "extra": "ignore"})

    pod: str = Field(min_length=1, strict=True, description="The serving pod's name.")
    uid: str = Field(min_length=1, strict=True, description="The pod's uid.")
    day: str | None = Field(None, strict=True, description="The budget's day the count is for (YYYY-MM-DD).")
    served: int = Field(0, ge=0, strict=True, alias="servedTokens")
    in_flight: int = Field(0, ge=0, strict=True, alias="inFlightTokens")
    want: int = Field(0, ge=0, strict=True, alias="wantTokens")


class QuotaAnswer(CamelModel):
    """The quota endpoint's answer: the pod's grant for the day (None: no daily limit) and its per-minute
    share (None: none), with what the pod needs to say so in OpenAI's headers and errors."""

    model_config = ConfigDict(**{**CamelModel.model_config, "extra": "ignore"})

    budget: str | None = Field(None, description="The governing TokenBudget; None: the namespace has none.")
    enforce: bool = False
    day: str | None = None
    resets_at: datetime | None = None
    served: int = Field(0, alias="servedTokens", description="What the budget records the pod served today.")
    granted: int | None = Field(None, alias="grantedTokens", description="The most the pod may serve today.")
    tokens_per_day: int | None = None
    remaining_today: int | None = Field(None, alias="remainingTodayTokens")
    tokens_per_minute: int | None = None
    minute_share: int | None = Field(None, alias="minuteShareTokens")
    retired: bool = Field(False, description="The pod's record was retired: it may not serve under the budget.")

    def to_wire(self) -> dict:
        return self.model_dump(mode="json", by_alias=True)


class ServerConfig(CamelModel):
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
    prefix_cache_tokens: int = Field(
        4096, ge=0, description="Prompt tokens whose keys and values are kept for later prompts that start the "
        "same way (per adapter; least recently used dropped first); 0 turns prefix caching off.")
    cpu_linear: Literal["auto", "packed", "dense"] = Field(
        "auto", description="On CPU, how linear layers multiply: `packed` through oneDNN with weights laid out once "
        "at load, `dense` through torch's default path (MKL), `auto` times both at load (at 1, 2, 4... rows up to "
        "maxBatchSize) and keeps the faster on this processor, or both where MKL wins at few rows and oneDNN at "
        "more and the memory left holds the dense weights again (each call then takes the faster path for its "
        "rows). Pin one where replicas must compute alike to the last bit.")
    default_max_tokens: int = Field(512, ge=1, description="Completion limit when a request sets none.")
    max_request_bytes: int = Field(8 * 1024 * 1024, ge=1024,
                                   description="Largest request body, in bytes; beyond it: HTTP 413.")
    max_sequences_per_request: int = Field(
        16, ge=1, le=1024, description="Prompts times n of one request (the sequences it decodes); beyond it: HTTP 400.")
    max_messages: int = Field(2048, ge=1, description="Messages in one chat request; beyond it: HTTP 400.")
    special_tokens_in_content: Literal["text", "reject", "parse"] = Field(
        "text", description="A special token's text (e.g. <|im_end|>) inside a message or prompt: `text` reads it "
        "as plain text, so content cannot forge a turn of the chat template; `reject` answers HTTP 400 naming "
        "the message; `parse` makes it the special token (trusted callers only).")
    prices: PriceTable = Field(default_factory=PriceTable)
    metrics_enabled: bool = True
    quota: QuotaSettings | None = Field(
        None, description="Report usage to the operator and enforce the namespace's inference budget; the pod's "
                          "name and uid come from HONE_POD_NAME and HONE_POD_UID. None: no budget.")


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
