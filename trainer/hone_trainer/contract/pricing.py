"""The price table and the cost arithmetic, so that the validator, the operator and the CLI agree to the cent."""

from __future__ import annotations

from pydantic import Field

from hone_trainer.contract.base import CamelModel


class PriceTable(CamelModel):
    """US dollars per one million tokens."""

    training: float = Field(25.0, ge=0, description="USD per 1M billable training tokens.")
    prompt: float = Field(3.75, ge=0, description="USD per 1M inference prompt tokens.")
    completion: float = Field(15.0, ge=0, description="USD per 1M inference completion tokens.")


def cost_usd(tokens: int, usd_per_million: float) -> float:
    """Cost of ``tokens`` at a per-million price, rounded to 1/10000 of a cent."""
    return round(tokens * usd_per_million / 1_000_000, 6)
