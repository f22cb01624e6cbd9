"""Best-fit-decreasing packing of tokenized examples into fixed-length rows.

Each packed example restarts its position ids at 0, which makes transformers build a
block-diagonal causal mask: packed examples never attend to each other, and no slot is
wasted on padding between them.

Packing is planned on the examples' lengths alone (`plan_rows`: a few bytes per example),
and rows are built from the token arrays only when they are written (`build_rows`, a block
of rows at a time, reading just their examples), so a dataset of any size packs without
holding its tokens in memory.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import numpy as np
import torch

from .chat import IGNORE

COLUMNS = ("input_ids", "labels", "position_ids", "real_tokens")


@dataclass
class RowPlan:
    """Which examples go in which row: row r holds examples members[starts[r]:starts[r + 1]], in order."""

    members: np.ndarray  # int64 example indices, row after row
    starts: np.ndarray  # int64, rows + 1

    @property
    def rows(self) -> int:
        return len(self.starts) - 1


class _FreeSlots:
    """Rows by free slots: the row with the fewest free slots >= need, in O(log max_length).

    One min-heap of row indices per free-slot count (ties go to the oldest row), and a
    segment tree over the counts that finds the smallest non-empty one at or above `need`.
    """

    def __init__(self, max_length: int):
        self.size = 1 << max_length.bit_length()  # leaves 0..max_length
        self.tree = [0] * (2 * self.size)  # rows per subtree of free-slot counts
        self.rows: dict[int, list[int]] = {}

    def add(self, free: int, row: int) -> None:
        if free == 0:
            return  # a full row takes nothing more
        heapq.heappush(self.rows.setdefault(free, []), row)
        i = free + self.size
        while i:
            self.tree[i] += 1
            i >>= 1

    def take(self, need: int) -> tuple[int, int] | None:
        """(free slots, row) of the best-fitting row for `need` tokens, removed; None if none fits."""
        tree, i = self.tree, need + self.size
        if not tree[i]:
            while i > 1:  # up to the first left child whose right sibling holds rows, then down its leftmost path
                if not i & 1 and tree[i + 1]:
                    i += 1
                    while i < self.size:
                        i = 2 * i if tree[2 * i] else 2 * i + 1
                    break
                i >>= 1
            else:
                return None
        free = i - self.size
        row = heapq.heappop(self.rows[free])
        while i:
            tree[i] -= 1
            i >>= 1
        return free, row


def plan_rows(lengths: np.ndarray, max_length: int) -> RowPlan:
    """Best-fit decreasing: longest first, each into the fullest row that still has room.

    Typically >95% of slots hold real tokens. Every length must be 1..max_length (longer
    examples are filtered out beforehand). Ties go to the earlier example and the older row,
    so the plan depends only on the lengths.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) and (lengths.min() < 1 or lengths.max() > max_length):
        raise ValueError(f"example lengths must be 1..{max_length}")
    order = np.argsort(-lengths, kind="stable")
    row_of = np.empty(len(lengths), dtype=np.int64)
    slots = _FreeSlots(max_length)
    rows = 0
    for i, need in zip(order.tolist(), lengths[order].tolist(), strict=True):
        found = slots.take(need)
        if found is None:
            free, row = max_length, rows
            rows += 1
        else:
            free, row = found
        row_of[i] = row
        slots.add(free - need, row)
    # Within a row, examples stay in the order they were placed (longest first).
    members = order[np.argsort(row_of[order], kind="stable")]
    starts = np.searchsorted(row_of[members], np.arange(rows + 1))
    return RowPlan(members, starts.astype(np.int64))


def build_rows(plan: RowPlan, first: int, last: int, read, lengths: np.ndarray, max_length: int,
               pad_id: int) -> dict[str, np.ndarray]:
    """Rows first..last-1 of the plan as int32 arrays (COLUMNS).

    `read(members)` returns the members' ids and labels, each one flat array of the examples
    one after the other (in memory: `gather`; on disk: `TokenStore.read`).
    """
    n = last - first
    members = plan.members[plan.starts[first] : plan.starts[last]]
    sizes = lengths[members].astype(np.int64)
    row_of = np.repeat(np.arange(n), np.diff(plan.starts[first : last + 1]))
    # Where each member starts in the flat run of its tokens, and within its row.
    run_start = np.cumsum(sizes) - sizes
    first_member = np.searchsorted(row_of, np.arange(n))  # a row's members are one contiguous run
    in_row = run_start - run_start[first_member[row_of]]
    total = int(sizes.sum())
    within = np.arange(total) - np.repeat(run_start, sizes)  # position inside its example
    target = np.repeat(row_of * max_length + in_row, sizes) + within
    member_ids, member_labels = read(members)

    input_ids = np.full(n * max_length, pad_id, dtype=np.int32)
    labels = np.full(n * max_length, IGNORE, dtype=np.int32)
    input_ids[target] = member_ids
    labels[target] = member_labels
    # The first token of an example has no context inside it: never predict it from the
    # end of the previous example.
    labels[target[within == 0]] = IGNORE
    real_tokens = np.bincount(row_of, weights=sizes, minlength=n).astype(np.int32)
    # Padding is one more "sequence" with its own positions and no labels.
    position_ids = np.tile(np.arange(max_length, dtype=np.int32), n) - np.repeat(real_tokens, max_length)
    position_ids[target] = within
    return {
        "input_ids": input_ids.reshape(n, max_length),
        "labels": labels.reshape(n, max_length),
        "position_ids": position_ids.reshape(n, max_length),
        "real_tokens": real_tokens,
    }


def gather(tokens: dict, offsets: np.ndarray, lengths: np.ndarray):
    """`read` for build_rows from flat in-memory arrays, example i at [offsets[i], offsets[i] + lengths[i])."""

    def read(members):
        sizes = lengths[members].astype(np.int64)
        source = np.repeat(offsets[members].astype(np.int64) - (np.cumsum(sizes) - sizes), sizes) + np.arange(int(sizes.sum()))
        return tokens["ids"][source], tokens["labels"][source]

    return read


def packing_stats(lengths: np.ndarray, trained: np.ndarray, rows: int, max_length: int) -> dict:
    """summary.json's figures for the examples `lengths` packed into `rows` rows.

    `trained`: per example, its trained tokens after the first (which is never trained).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    real = int(lengths.sum())
    return {
        # Mean causal context per token, sum(l^2) / sum(l): what attention FLOPs scale with.
        "mean_context": round(int((lengths * lengths).sum()) / max(1, real), 2),
        "rows": rows,
        "examples": len(lengths),
        "tokens": real,
        "trained_tokens": int(np.asarray(trained, dtype=np.int64).sum()),
        "packing_efficiency": round(real / max(1, rows * max_length), 4),
    }


@dataclass
class Packed:
    input_ids: torch.Tensor  # [rows, max_length]
    labels: torch.Tensor
    position_ids: torch.Tensor
    real_tokens: torch.Tensor  # [rows]: non-padding tokens per row, for honest tokens/s
    stats: dict = field(default_factory=dict)


def pack(examples: list[tuple[list[int], list[int]]], max_length: int, pad_id: int) -> Packed:
    """Pack in-memory examples `(ids, labels)` into rows of `max_length` tokens (see plan_rows)."""
    lengths = np.array([len(ids) for ids, _ in examples], dtype=np.int64)
    offsets = np.cumsum(lengths) - lengths
    tokens = {
        "ids": np.array([t for ids, _ in examples for t in ids], dtype=np.int32),
        "labels": np.array([t for _, labels in examples for t in labels], dtype=np.int32),
    }
    plan = plan_rows(lengths, max_length)
    rows = build_rows(plan, 0, plan.rows, gather(tokens, offsets, lengths), lengths, max_length, pad_id)
    trained = [sum(label != IGNORE for label in labels[1:]) for _, labels in examples]
    stats = packing_stats(lengths, trained, plan.rows, max_length)
    return Packed(*(torch.from_numpy(rows[key]) for key in COLUMNS), stats=stats)
