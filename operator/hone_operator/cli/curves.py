"""Loss curves for people: a compact one in the terminal, and a PNG beside the result of `hone run`.

Both draw exactly the points the trainer reported (``status.progress`` and the published
manifest keep at most 100 per curve). The PNG carries those points in its ``hone:losses``
text chunk, so what it shows can be checked against what was reported.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hone_trainer.contract import evenly_spaced

_BLOCKS = "▁▂▃▄▅▆▇█"
PNG_NAME = "loss.png"
PNG_KEY = "hone:losses"


def sparkline(values: list[float], width: int = 48) -> str:
    """The values as block characters, at most ``width`` of them (evenly chosen), low to high."""
    if not values:
        return ""
    values = evenly_spaced(values, width)
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    return "".join(_BLOCKS[min(len(_BLOCKS) - 1, int((v - low) / span * len(_BLOCKS)))] for v in values)


def terminal_summary(train: list[dict[str, Any]], validation: list[dict[str, Any]]) -> str:
    lines = []
    for name, curve in (("train loss", train), ("validation loss", validation)):
        if curve:
            values = [p["loss"] for p in curve]
            lines.append(f"  {name:<16}{sparkline(values)}  {values[0]:.3f} -> {values[-1]:.3f} "
                         f"(steps {curve[0]['step']}-{curve[-1]['step']}, {len(curve)} points)")
    return "\n".join(lines)


def write_png(path: Path, train: list[dict[str, Any]], validation: list[dict[str, Any]], title: str) -> Path:
    """A PNG of both curves; raises ImportError when matplotlib is missing."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.add_subplot()
    if train:
        ax.plot([p["step"] for p in train], [p["loss"] for p in train], label="train (per step)", linewidth=1.2)
    if validation:
        ax.plot([p["step"] for p in validation], [p["loss"] for p in validation], label="validation",
                marker="o", linewidth=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={PNG_KEY: json.dumps({"train": train, "validation": validation})})
    return path
