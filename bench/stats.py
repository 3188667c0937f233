"""Helpers the benchmarks share: percentiles, and ratios that contention cannot fool.

A benchmark whose two sides run at different times can report any ratio: a
process that starts while the baseline runs slows the baseline alone. So the
sides run interleaved, run by run (baseline, candidate, baseline, candidate,
...), the ratio is taken within each pair, and what is reported is the median
of the pairs with their spread, beside the machine's load average at the start
and the end. A spread wider than :data:`DISTURBED_SPREAD` of the median says
the machine was not quiet, and the result says so.
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass, field

#: (max - min) / median of a ratio's pairs above which a run counts as disturbed.
DISTURBED_SPREAD = 0.15
#: A 1-minute load average above this share of the CPUs when the benchmark starts is not a quiet machine.
BUSY_LOAD_SHARE = 0.25


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (``q`` in 0..100)."""
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def load_average() -> float:
    """The 1-minute load average (what else wanted the CPUs)."""
    return os.getloadavg()[0]


@dataclass
class Paired:
    """Ratios candidate / baseline, one per interleaved pair of runs, per setting."""

    loads: list[float] = field(default_factory=lambda: [load_average()])
    ratios: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, candidate: float, baseline: float) -> float:
        ratio = candidate / baseline
        self.ratios.setdefault(name, []).append(ratio)
        return ratio

    def median(self, name: str) -> float:
        return statistics.median(self.ratios[name])

    def spread(self, name: str) -> float:
        r = self.ratios[name]
        return (max(r) - min(r)) / statistics.median(r)

    def line(self, name: str, goal: float | None = None, higher_is_better: bool = True) -> str:
        """``name: 1.23x (pairs 1.20-1.31x, spread 6%)``, and whether the goal is met."""
        r = self.ratios[name]
        text = (f"{name}: {self.median(name):.2f}x (pairs {min(r):.2f}-{max(r):.2f}x, "
                f"spread {100 * self.spread(name):.0f}%)")
        if goal is not None:
            met = self.median(name) >= goal if higher_is_better else self.median(name) <= goal
            text += f", goal {'>=' if higher_is_better else '<='} {goal:g}x: {'met' if met else 'NOT met'}"
        return text

    def footer(self) -> str:
        """The load average at the start and the end, and a warning when the run was disturbed."""
        self.loads.append(load_average())
        cpus = os.cpu_count() or 1
        text = (f"load average (1 min) {self.loads[0]:.2f} at the start, {self.loads[-1]:.2f} at the end, "
                f"{cpus} CPUs; ratios are medians of interleaved pairs")
        wide = [n for n in self.ratios if len(self.ratios[n]) > 1 and self.spread(n) > DISTURBED_SPREAD]
        busy = self.loads[0] > BUSY_LOAD_SHARE * cpus  # at the end the benchmark's own work is in it
        if wide or busy:
            why = []
            if wide:
                why.append(f"pairs spread over {100 * DISTURBED_SPREAD:.0f}% ({', '.join(wide)})")
            if busy:
                why.append("the load average at the start says something else was running")
            text += f"\nWARNING: this run was disturbed: {'; '.join(why)}. Run it again on a quiet machine."
        return text
