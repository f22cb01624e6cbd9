"""KTO's unpaired records as rows: each answer beside a mismatched one, for the KL reference point.

KTO (Ethayarajh et al., 2024) compares each answer's policy/reference log-ratio with a reference
point: the KL divergence between policy and reference, estimated from completions that do NOT
answer their prompt. As TRL's KTOTrainer does, the mismatched completions are those of the
other records shifted by one: record i's prompt with record i - 1's completion (the first takes
the last's). TRL shifts inside each training batch; here the shift is made once at prepare, in
file order inside each split, so the mismatched sequences are rendered, checked and packed like
any other (and a resumed run sees the very same ones).

Each record becomes a "pair" of pairs.py: sequence 2k its own answer (trained tokens = the
completion as the template renders it), sequence 2k + 1 the mismatched answer after the same
prompt tokens. The labels (desirable or not) go beside the rows, one per pair slot of each row
(`labels_<split>.npy`, -1 for a slot without a pair), read back by train/objectives/kto.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import DataError

DATA_KIND = "kto"  # summary.json's "data" for KTO rows
LABELS = "kto_labels_{split}.npy"


def as_pairs(examples: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    """(where, pair) for each KTO record: its completion as `chosen`, the previous record's as `rejected`
    (the mismatched completion of the KL estimate); DataError naming `file:line` for a mix of plain-text
    and message prompts (a mismatched completion must be of its prompt's kind)."""
    if not examples:
        return []
    text = isinstance(examples[0][1]["prompt"], str)
    for where, example in examples:
        if example["kind"] != "kto":
            raise DataError(f"{where}: not a KTO record (one shape per dataset)")
        if isinstance(example["prompt"], str) != text:
            raise DataError(f"{where}: the data mixes plain-text and message prompts; KTO pairs each prompt with another "
                            "record's completion, so all records must be of one kind")
    pairs = []
    for i, (where, example) in enumerate(examples):
        other = examples[i - 1][1]["completion"]
        pairs.append((where, {"kind": "pair", "prompt": example["prompt"], "chosen": example["completion"],
                              "rejected": other, "tools": example["tools"]}))
    return pairs


def held_out_prompt(example: dict) -> dict:
    """A desirable validation record as a prompt for generation, its completion the reference."""
    completion = example["completion"]
    reference = completion if isinstance(completion, str) else next(m["content"] for m in completion if m["role"] == "assistant")
    if isinstance(example["prompt"], str):
        return {"prompt": example["prompt"], "reference": reference}
    return {"messages": example["prompt"], "reference": reference}


def row_labels(members: np.ndarray, starts: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """[rows, most pairs in a row] int8: each row's pairs' labels in packing order (1 desirable, 0 not), -1 after."""
    counts = np.diff(starts)
    out = np.full((len(counts), max(int(counts.max(initial=0)), 1)), -1, dtype=np.int8)
    for row, (first, count) in enumerate(zip(starts[:-1], counts, strict=True)):
        out[row, :count] = labels[members[first:first + count]]
    return out


def load_labels(prepared_dir: str | Path, split: str = "train") -> np.ndarray:
    path = Path(prepared_dir) / LABELS.format(split=split)
    if not path.is_file():
        raise DataError(f"{path} is missing: run `prepare` again for KTO data")
    return np.load(path)
