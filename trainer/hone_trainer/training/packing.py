"""Sequence packing: several examples per row, no padding wasted, no leakage.

Each optimizer step takes ``batch_size`` examples (OpenAI's batch size: examples
per step) in an order shuffled deterministically from the seed and the epoch,
packs them first-fit-decreasing into rows of at most ``row_length`` tokens,
and deals the rows out to the ranks.

Inside a row, ``position_ids`` restart at 0 for each example; with
``use_cache=False`` the model's attention then keeps examples apart (the
tests check that a packed row gives the same per-example loss as the
examples one by one). The first label of every example is masked, so no
token is ever predicted from the previous example.
"""

from __future__ import annotations

import importlib
import random
from dataclasses import dataclass, field
from typing import Sequence

from hone_trainer.training.formatting import IGNORE_INDEX, Encoded


#: Attention implementations whose masks keep packed examples apart in a batch of several rows: the
#: mask comes from ``position_ids`` (transformers' masking_utils). flash_attention_2 detects packing
#: only for a batch of one row, so several rows would attend across examples; the trainer loads sdpa.
PACKED_ATTENTION = ("sdpa", "eager")


def check_packed_attention(implementation: str | None) -> None:
    """Refuse to train where packed examples could see each other: a transformers without masks from
    ``position_ids`` (before 4.54, transformers#39194), or an attention implementation not in
    :data:`PACKED_ATTENTION`."""
    try:
        masking = importlib.import_module("transformers.masking_utils")
    except ImportError:
        masking = None
    if masking is None or not hasattr(masking, "find_packed_sequence_indices"):
        import transformers

        raise ValueError(f"transformers {transformers.__version__} cannot keep packed training examples apart "
                         "(masks from position_ids came in 4.54); install transformers>=4.54")
    if implementation not in PACKED_ATTENTION:
        raise ValueError(f"attention implementation {implementation!r} does not keep packed examples apart in a "
                         f"batch of several rows; Hone trains with {' or '.join(PACKED_ATTENTION)}")


@dataclass
class Row:
    input_ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    position_ids: list[int] = field(default_factory=list)
    examples: list[int] = field(default_factory=list)  # indices into the dataset

    def add(self, index: int, enc: Encoded) -> None:
        self.examples.append(index)
        self.input_ids.extend(enc.input_ids)
        labels = list(enc.labels)
        labels[0] = IGNORE_INDEX  # never predicted across an example boundary
        self.labels.extend(labels)
        self.position_ids.extend(range(len(enc.input_ids)))

    def __len__(self) -> int:
        return len(self.input_ids)


def pack(indices: Sequence[int], data: Sequence[Encoded], row_length: int) -> list[Row]:
    """Pack examples into as few rows as first-fit-decreasing needs, then balance them.

    A batch of rows is padded to its longest row, so the examples are spread
    over that number of rows longest-first, each to the currently shortest
    row: the rows come out almost equally long. A row may then exceed
    ``row_length`` by less than one example; an example longer than
    ``row_length`` gets a row of its own.
    """
    bins = row_bins({i: len(data[i].input_ids) for i in indices}, row_length)
    rows = []
    for members in bins:
        row = Row()
        for i in members:
            row.add(i, data[i])
        rows.append(row)
    return rows


def row_bins(size: dict[int, int], row_length: int) -> list[list[int]]:
    """The examples (index: length) of each row :func:`pack` makes: the packing itself, on lengths alone (the
    validator plans every step's rows with it for the memory estimate)."""
    order = sorted(size, key=lambda i: size[i], reverse=True)
    loads: list[int] = []
    for i in order:  # first-fit-decreasing: how many rows are needed
        n = size[i]
        for k, load in enumerate(loads):
            if load + n <= row_length:
                loads[k] += n
                break
        else:
            loads.append(n)
    bins: list[list[int]] = [[] for _ in loads]
    totals = [0] * len(loads)
    for i in order:  # longest processing time first: balance the rows
        k = totals.index(min(totals))
        bins[k].append(i)
        totals[k] += size[i]
    _even_out(bins, totals, size)
    return bins


def row_length(max_seq_length: int, pack_length: int | None) -> int:
    """Tokens per packed row: ``pack_length``, by default min(max_seq_length, 512)."""
    return pack_length or min(max_seq_length, 512)


def _even_out(bins: list[list[int]], totals: list[int], size: dict[int, int], rounds: int = 32) -> None:
    """Move or swap single examples between the longest and the shortest row while that shortens the longest."""
    for _ in range(rounds):
        hi, lo = totals.index(max(totals)), totals.index(min(totals))
        gap = totals[hi] - totals[lo]
        if hi == lo or gap <= 1:
            return
        best, move = gap, None
        for a in bins[hi]:
            for b in [None, *bins[lo]]:
                delta = size[a] - (size[b] if b is not None else 0)
                new_gap = abs(gap - 2 * delta)
                if 0 < delta and new_gap < best:
                    best, move = new_gap, (a, b, delta)
        if move is None:
            return
        a, b, delta = move
        bins[hi].remove(a)
        bins[lo].append(a)
        if b is not None:
            bins[lo].remove(b)
            bins[hi].append(b)
        totals[hi] -= delta
        totals[lo] += delta


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The order examples are seen in during ``epoch``: the same on every rank and every resume."""
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def steps_per_epoch(n_examples: int, batch_size: int) -> int:
    return max(1, -(-n_examples // batch_size))


def step_examples(n: int, batch_size: int, seed: int, step: int) -> list[int]:
    """Examples of global optimizer step ``step`` (0-based, counted across epochs)."""
    per_epoch = steps_per_epoch(n, batch_size)
    epoch, k = divmod(step, per_epoch)
    order = epoch_order(n, seed, epoch)
    return order[k * batch_size:(k + 1) * batch_size]


def micro_batches(rows: list[Row], budget: int) -> list[list[Row]]:
    """A rank's rows in micro-batches of at most ``budget`` padded tokens (rows x the longest row), longest
    rows first so that each micro-batch pads little; a row over the budget is a micro-batch alone."""
    out: list[list[Row]] = []
    for row in sorted(rows, key=len, reverse=True):
        if out and (len(out[-1]) + 1) * len(out[-1][0]) <= budget:
            out[-1].append(row)
        else:
            out.append([row])
    return out


def rank_rows(rows: list[Row], rank: int, world: int) -> list[Row]:
    """The rows one rank trains on: dealt round-robin, longest first, to balance tokens."""
    ordered = sorted(rows, key=len, reverse=True)
    return ordered[rank::world]

