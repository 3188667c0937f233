"""TokenBudget (short name ``tb``): a namespace's daily free allowance and limits on training tokens and cost,
and its limits on the tokens its ModelServings serve.

One TokenBudget governs a namespace (the oldest, when there are several; the others say so in a condition).
Its status is the durable record of the namespace's usage: jobs reserve their estimate in it when they are
admitted and settle it with what they trained when they end; serving pods are granted inference tokens in it
before they serve them and report what they served (:mod:`hone_operator.reconcile.budget`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator

from hone_operator.api.v1alpha1.common import (
    API_VERSION,
    ApiModel,
    Condition,
    ObjectMeta,
    StatusModel,
)

#: What OpenAI gave with GPT-4o fine-tuning: 1M free training tokens a day per organisation.
DEFAULT_FREE_TOKENS_PER_DAY = 1_000_000


class TrainingLimits(ApiModel):
    """Training tokens: the free allowance, and hard limits (free tokens count towards them)."""

    freeTokensPerDay: int = Field(
        DEFAULT_FREE_TOKENS_PER_DAY, alias="freeTokensPerDay", ge=0,
        description="Training tokens a day that cost nothing: the allowance is applied before the price, to "
                    "jobs in the order they are admitted.")
    tokensPerDay: int | None = Field(
        None, alias="tokensPerDay", ge=1,
        description="Most training tokens a day (jobs admitted plus running), free ones included; none: no limit.")
    tokensPerMonth: int | None = Field(
        None, alias="tokensPerMonth", ge=1, description="Most training tokens a calendar month; none: no limit.")
    costPerMonthUsd: float | None = Field(
        None, alias="costPerMonthUsd", ge=0,
        description="Most training cost a calendar month in US dollars, after the free allowance; none: no limit.")


class InferenceLimits(ApiModel):
    """Tokens served by the namespace's ModelServings (prompt plus completion tokens, as in ``usage``)."""

    tokensPerDay: int | None = Field(
        None, alias="tokensPerDay", ge=1,
        description="Most tokens served a day, every replica of every ModelServing of the namespace together; "
                    "past it requests get HTTP 429 insufficient_quota. None: no limit.")
    tokensPerMinute: int | None = Field(
        None, alias="tokensPerMinute", ge=1,
        description="Most tokens served in any 60 seconds, shared among the serving pods that report; past it "
                    "requests get HTTP 429 rate_limit_exceeded. None: no limit.")


class TokenBudgetSpec(ApiModel):
    """A namespace's token allowance and limits."""

    enforce: bool = Field(
        True, description="Hold jobs that do not fit (true), or only meter and alert (false).")
    timeZone: str = Field(
        "UTC", alias="timeZone", max_length=64,
        description="IANA time zone of the windows: days start at midnight, months on the 1st.")
    training: TrainingLimits = Field(default_factory=TrainingLimits, description="Training tokens and cost.")
    inference: InferenceLimits = Field(default_factory=InferenceLimits,
                                       description="Tokens served by the namespace's ModelServings.")

    @field_validator("timeZone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA time zone (e.g. UTC, Europe/Lisbon)") from None
        return value


class ReservedEstimate(StatusModel):
    """A job's billable estimate as a TokenBudget reserved it: the budget's record of it
    (:class:`Reservation`) and the job's (``FineTuneJob.status.budget``) both hold these."""

    tokens: int = Field(0, description="Billable training tokens reserved (the estimate).")
    freeTokens: int = Field(0, alias="freeTokens", description="Of those, free under the day's allowance.")
    costUsd: float = Field(0.0, alias="costUsd", description="The estimate's cost after the allowance.")
    usdPerMillionTokens: float = Field(0.0, alias="usdPerMillionTokens", description="The training price used.")
    admittedAt: datetime | None = Field(None, alias="admittedAt", description="When the budget admitted the job.")


class Reservation(ReservedEstimate):
    """A job's estimate, held from its admission until it ends."""

    uid: str = Field(description="The FineTuneJob's uid.")
    job: str = Field(description="The FineTuneJob's name.")


class TrainingUsage(StatusModel):
    """Training usage in the current windows."""

    day: str | None = Field(None, description="The current day window, YYYY-MM-DD in spec.timeZone.")
    month: str | None = Field(None, description="The current month window, YYYY-MM.")
    tokensToday: int = Field(0, alias="tokensToday", description="Tokens settled today (jobs that ended).")
    freeTokensToday: int = Field(0, alias="freeTokensToday", description="Of those, free.")
    tokensThisMonth: int = Field(0, alias="tokensThisMonth", description="Tokens settled this month.")
    costThisMonthUsd: float = Field(0.0, alias="costThisMonthUsd", description="Their cost, after the allowance.")
    reservedTokens: int = Field(0, alias="reservedTokens", description="Tokens reserved by admitted jobs running now.")
    remainingTodayTokens: int | None = Field(
        None, alias="remainingTodayTokens", description="tokensPerDay less settled and reserved tokens.")
    remainingThisMonthTokens: int | None = Field(
        None, alias="remainingThisMonthTokens", description="tokensPerMonth less settled and reserved tokens.")
    freeTokensRemainingToday: int = Field(
        0, alias="freeTokensRemainingToday", description="Free tokens left today (after reservations).")


class ServerGrant(StatusModel):
    """One serving pod's record for the current day: what it served and what it may serve."""

    pod: str = Field(description="The serving pod's name.")
    uid: str = Field(description="The pod's uid.")
    servedTokens: int = Field(0, alias="servedTokens", description="Tokens it served today, as it last reported.")
    grantedTokens: int = Field(
        0, alias="grantedTokens", description="Tokens it may serve today (served plus what it holds unused).")
    reportedAt: datetime | None = Field(None, alias="reportedAt", description="Its last report.")


class InferenceUsage(StatusModel):
    """Inference usage in the current day window."""

    day: str | None = Field(None, description="The current day window, YYYY-MM-DD in spec.timeZone.")
    tokensToday: int = Field(
        0, alias="tokensToday", description="Tokens served today: the serving pods' reports and pods gone since.")
    retiredTokensToday: int = Field(
        0, alias="retiredTokensToday", description="Of those, served today by pods that are gone.")
    grantedTokens: int = Field(
        0, alias="grantedTokens", description="Granted to serving pods and not yet served (their reservations).")
    remainingTodayTokens: int | None = Field(
        None, alias="remainingTodayTokens", description="tokensPerDay less served and granted tokens.")
    servers: list[ServerGrant] | None = Field(None, description="The serving pods that reported today.")
    retiredPods: list[str] | None = Field(
        None, alias="retiredPods", description="Uids of pods gone today, whose usage is in retiredTokensToday.")


class TokenBudgetStatus(StatusModel):
    """Usage in the current windows, the reservations of running jobs, and conditions."""

    observedGeneration: int | None = Field(None, alias="observedGeneration", description="The spec generation last acted on.")
    training: TrainingUsage | None = Field(None, description="Training usage in the current windows.")
    reservations: list[Reservation] | None = Field(None, description="Admitted jobs that have not ended.")
    inference: InferenceUsage | None = Field(None, description="Inference usage in the current day window.")
    resetsAt: datetime | None = Field(None, alias="resetsAt", description="When the day window ends.")
    conditions: list[Condition] | None = Field(
        None, description="Active (this budget governs its namespace), NearLimit (80%), Exhausted (100%).")


class TokenBudget(BaseModel):
    """A namespace's token allowance and limits (short name tb)."""

    model_config = ConfigDict(extra="allow")
    apiVersion: Literal["hone.dev/v1alpha1"] = API_VERSION
    kind: Literal["TokenBudget"] = "TokenBudget"
    metadata: ObjectMeta
    spec: TokenBudgetSpec = Field(default_factory=TokenBudgetSpec)
    status: TokenBudgetStatus = Field(default_factory=TokenBudgetStatus)
