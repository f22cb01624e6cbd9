"""Best-fit-decreasing packing of tokenized examples into fixed-length rows.

Each packed example restarts its position ids at 0, which makes transformers build a
block-diagonal causal mask: packed examples never attend to each other, and no slot is
wasted on padding between them.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import torch

from .chat import IGNORE


@dataclass
class Packed:
    input_ids: torch.Tensor  # [rows, max_length]
    labels: torch.Tensor
    position_ids: torch.Tensor
    real_tokens: torch.Tensor  # [rows]: non-padding tokens per row, for honest tokens/s
    stats: dict = field(default_factory=dict)


def pack(examples: list[tuple[list[int], list[int]]], max_length: int, pad_id: int) -> Packed:
    """Best-fit-decreasing packing of examples into rows of `max_length` tokens.

    Longest first, each into the fullest row that still has room: typically >95% of slots
    hold real tokens. Examples longer than `max_length` must be filtered out beforehand.
    """
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i][0]))
    rows: list[list[int]] = []  # example indices per row
    free: list[tuple[int, int]] = []  # sorted (free slots, row index)
    for i in order:
        need = len(examples[i][0])
        at = bisect.bisect_left(free, (need, -1))
        if at == len(free):
            rows.append([i])
            bisect.insort(free, (max_length - need, len(rows) - 1))
        else:
            slots, row = free.pop(at)
            rows[row].append(i)
            bisect.insort(free, (slots - need, row))

    shape = (len(rows), max_length)
    input_ids = torch.full(shape, pad_id, dtype=torch.int32)
    labels = torch.full(shape, IGNORE, dtype=torch.int32)
    position_ids = torch.zeros(shape, dtype=torch.int32)
    real_tokens = torch.zeros(len(rows), dtype=torch.int32)
    for r, members in enumerate(rows):
        start = 0
        for i in members:
            ids, labs = examples[i]
            end = start + len(ids)
            input_ids[r, start:end] = torch.tensor(ids, dtype=torch.int32)
            # The first token of an example has no context inside it: never predict it
            # from the end of the previous example.
            labels[r, start:end] = torch.tensor([IGNORE] + labs[1:], dtype=torch.int32)
            position_ids[r, start:end] = torch.arange(len(ids), dtype=torch.int32)
            start = end
        real_tokens[r] = start
        # Padding is one more "sequence" with its own positions and no labels.
        position_ids[r, start:] = torch.arange(max_length - start, dtype=torch.int32)

    real = sum(len(e[0]) for e in examples)
    stats = {
        # Mean causal context per token, sum(l^2) / sum(l): what attention FLOPs scale with.
        "mean_context": round(sum(len(e[0]) ** 2 for e in examples) / max(1, real), 2),
        "rows": len(rows),
        "examples": len(examples),
        "tokens": real,
        "trained_tokens": int((labels != IGNORE).sum()),
        "packing_efficiency": round(real / max(1, input_ids.numel()), 4),
    }
    return Packed(input_ids, labels, position_ids, real_tokens, stats)
