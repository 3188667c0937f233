"""The resolution of ``auto`` hyperparameters (OpenAI's published heuristics)."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field

from hone_trainer.contract.base import CamelModel


class ResolvedHyperparameters(CamelModel):
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
