"""`prepare` for preference data: pairs -> chosen and rejected rows, packed side by side.

Each pair is encoded by `preference.encode_pair` (both sides through the supervised render
path, identical prompt tokens checked). A pair is packed as one unit: its chosen sequence, then
its rejected sequence, in the same row, each restarting its position ids (so neither attends
to the other, as in packed supervised rows). Pairs are planned into rows by best-fit on their
two lengths together, so a row holds whole pairs only and a step's rows give whole pairs.

Inside a row, sequence k (counted by where the position ids restart) is pair k // 2's chosen
side when k is even, its rejected side when k is odd; padding, when the row has any, is one
more sequence without trained tokens. The row files are those of supervised data, so loading,
batching and the train/validation split are shared; summary.json says `"data": "pairs"`.

Pairs are encoded by the main process and held in memory while packed: preference sets are
small next to supervised corpora (hundreds of thousands of pairs at most).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..atomic import atomic_dir
from . import kto
from .errors import DataError
from .packing import build_rows, gather, packing_stats, plan_rows
from .preference import SHAPES, encode_pair, held_out_prompt
from .store import RowWriter

DATA_KIND = "pairs"  # summary.json's "data" for preference rows


def is_pairs(shapes: list[str]) -> bool:
    """True for preference data; a DataError for a mix of preference and supervised files."""
    kinds = {shape in SHAPES for shape in shapes}
    if len(kinds) > 1:
        raise DataError(f"the data mixes preference files with supervised ones ({', '.join(shapes)}): "
                        "prepare them as separate datasets")
    return kinds == {True}


def encode_all(examples, tokenizer, template_source: str) -> tuple[list, list[dict]]:
    """Every pair's ids and labels (chosen, rejected), in file order; DataError naming `file:line`."""
    encoded, pairs = [], []
    for where, pair in examples:
        if pair["kind"] != "pair":
            raise DataError(f"{where}: not a preference record (one shape per dataset)")
        try:
            both = encode_pair(tokenizer, pair, template_source)
        except DataError as err:
            raise DataError(f"{where}: {err}") from None
        encoded.append(((both.chosen.ids, both.chosen.labels), (both.rejected.ids, both.rejected.labels)))
        pairs.append(pair)
    return encoded, pairs


def pack_pairs(encoded: list, max_length: int, pad_id: int) -> tuple[dict[str, np.ndarray], dict]:
    """Rows of whole pairs (chosen then rejected, positions restarting), and their packing figures."""
    rows, stats, _ = pack_planned(encoded, max_length, pad_id)
    return rows, stats


def pack_planned(encoded: list, max_length: int, pad_id: int) -> tuple[dict[str, np.ndarray], dict, tuple[np.ndarray, np.ndarray]]:
    """pack_pairs, and which pairs each row holds: (members, starts), row r's pairs members[starts[r]:starts[r + 1]]."""
    sides = [side for pair in encoded for side in pair]
    lengths = np.array([len(ids) for ids, _ in sides], dtype=np.int64)
    offsets = np.cumsum(lengths) - lengths
    tokens = {"ids": np.array([t for ids, _ in sides for t in ids], dtype=np.int32),
              "labels": np.array([t for _, labels in sides for t in labels], dtype=np.int32)}
    pair_plan = plan_rows(lengths[0::2] + lengths[1::2], max_length)
    planned = (pair_plan.members.copy(), pair_plan.starts.copy())
    # The plan of pairs as a plan of sequences: pair p -> its sides 2p, 2p + 1, side by side.
    pair_plan.members = np.stack([2 * pair_plan.members, 2 * pair_plan.members + 1], axis=1).reshape(-1)
    pair_plan.starts = 2 * pair_plan.starts
    rows = build_rows(pair_plan, 0, pair_plan.rows, gather(tokens, offsets, lengths), lengths, max_length, pad_id)
    trained = [sum(label != -100 for label in labels[1:]) for _, labels in sides]
    stats = packing_stats(lengths, np.array(trained), pair_plan.rows, max_length)
    stats["pairs"] = len(encoded)
    return rows, stats, planned


def prepare_pairs(params, examples, tokenizer, shapes: list[str], validation_records, length_summary, log=print) -> dict:
    """Encode, split, pack and write preference pairs into data.prepared_dir; returns the summary.

    `validation_records` and `length_summary` are prepare.py's: the same split and length figures
    as supervised data."""
    cfg = params.data
    examples = list(examples)
    records = [example for _, example in examples]
    unpaired = shapes == ["kto"]  # KTO: each answer beside a mismatched one, labels beside the rows (kto.py)
    if "kto" in shapes and not unpaired:
        raise DataError(f"the data mixes KTO files (prompt/completion/label) with paired ones ({', '.join(shapes)}): "
                        "prepare them as separate datasets")
    encoded, pairs = encode_all(kto.as_pairs(examples) if unpaired else examples, tokenizer, params.model.base)
    labels = np.array([example["label"] for example in records], dtype=np.int8) if unpaired else None
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    lengths = np.array([len(c[0]) + len(r[0]) for c, r in encoded], dtype=np.int64)
    val = validation_records(len(encoded), cfg.val_fraction, cfg.seed)
    is_val = np.zeros(len(encoded), dtype=bool)
    is_val[val] = True
    summary: dict = {"source": str(cfg.path), "records": len(encoded), "format": cfg.format, "shapes": shapes,
                     "data": kto.DATA_KIND if unpaired else DATA_KIND}
    with atomic_dir(cfg.prepared_dir) as tmp:
        for name, chosen in (("train", np.flatnonzero(~is_val)), ("val", val)):
            too_long = lengths[chosen] > cfg.max_length
            kept = chosen[~too_long].tolist()
            if not kept:
                raise DataError(f"{cfg.path}: no usable {name} pairs ({int(too_long.sum())} longer than data.max_length={cfg.max_length}, "
                                "chosen and rejected together)")
            rows, stats, (members, starts) = pack_planned([encoded[i] for i in kept], cfg.max_length, pad_id)
            RowWriter(tmp / name, len(rows["real_tokens"]), cfg.max_length).write(0, rows)
            if unpaired:
                kept_labels = labels[kept]
                np.save(tmp / kto.LABELS.format(split=name), kto.row_labels(members, starts, kept_labels))
                stats["desirable"], stats["undesirable"] = int(kept_labels.sum()), int(len(kept) - kept_labels.sum())
            summary[name] = {**stats, "dropped_too_long": int(too_long.sum()), "dropped_no_labels": 0}
            log(f"{name}: {len(kept)} pairs -> {stats['rows']} rows of {cfg.max_length} tokens, packing efficiency "
                f"{stats['packing_efficiency']:.1%}; dropped {int(too_long.sum())} longer than data.max_length (both sides together)")
        summary["max_length"] = cfg.max_length
        summary["tokenizer"] = params.model.base
        summary["lengths"] = length_summary(lengths, cfg.max_length)
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if unpaired:  # the desirable answers are the references of the held-out prompts
            prompts = [kto.held_out_prompt(records[i]) for i in val.tolist() if records[i]["label"]][: params.eval.generations]
        else:
            prompts = [held_out_prompt(pairs[i]) for i in val.tolist()[: params.eval.generations]]
        (tmp / "held_out_prompts.jsonl").write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in prompts))
    return summary


def pair_summary(prepared_dir: str | Path) -> bool:
    """True when data.prepared_dir holds preference rows."""
    path = Path(prepared_dir) / "summary.json"
    return path.is_file() and json.loads(path.read_text()).get("data") == DATA_KIND
