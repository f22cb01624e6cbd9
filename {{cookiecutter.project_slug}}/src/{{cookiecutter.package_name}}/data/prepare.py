"""The `prepare` stage: read, split, tokenize, pack and write `data.prepared_dir`; and load it back.

Every line is validated before anything is written, and the output folder appears whole or
not at all.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from ..atomic import atomic_dir
from .chat import IGNORE, encode, ensure_chat_template
from .errors import DataError
from .packing import Packed, pack
from .shapes import read_examples


def split(records: list, val_fraction: float, seed: int) -> tuple[list, list]:
    """Deterministic shuffle-and-split; at least one record on each side."""
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_val = min(len(records) - 1, max(1, round(len(records) * val_fraction)))
    if n_val < 1:
        raise DataError(f"need at least 2 records to split train/validation, got {len(records)}")
    return [records[i] for i in order[n_val:]], [records[i] for i in order[:n_val]]


def prepare(params, tokenizer=None, log=print) -> dict:
    """Validate, tokenize, split and pack `data.path` into `data.prepared_dir`.

    The data is validated first, so a bad line is reported before a model is downloaded.
    """
    cfg = params.data
    examples = read_examples(cfg.path, cfg.format)
    records = list(examples)
    shapes = sorted(set(examples.shapes.values()))
    log(f"read {len(records)} records from {cfg.path} ({', '.join(shapes)})")
    if tokenizer is None:
        from ..modeling import load_tokenizer

        tokenizer = load_tokenizer(params.model.base)
    if cfg.format != "text":
        ensure_chat_template(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    train_records, val_records = split(records, cfg.val_fraction, cfg.seed)

    summary: dict = {"source": str(cfg.path), "records": len(records), "format": cfg.format, "shapes": shapes}
    splits = {}
    for name, subset in (("train", train_records), ("val", val_records)):
        examples, too_long, no_labels = [], 0, 0
        for where, example in subset:
            try:
                ids, labels = encode(tokenizer, example, cfg.train_on, template_source=params.model.base)
            except DataError as err:
                raise DataError(f"{where}: {err}") from None
            if len(ids) > cfg.max_length:
                too_long += 1
            elif all(label == IGNORE for label in labels[1:]):
                no_labels += 1
            else:
                examples.append((ids, labels))
        if not examples:
            raise DataError(
                f"{cfg.path}: no usable {name} examples "
                f"({too_long} longer than data.max_length={cfg.max_length}, {no_labels} with nothing to train on)"
            )
        splits[name] = pack(examples, cfg.max_length, pad_id)
        summary[name] = {**splits[name].stats, "dropped_too_long": too_long, "dropped_no_labels": no_labels}
        log(
            f"{name}: {len(examples)} examples -> {splits[name].stats['rows']} rows of {cfg.max_length} tokens, "
            f"packing efficiency {splits[name].stats['packing_efficiency']:.1%}; "
            f"dropped {too_long} longer than max_length, {no_labels} with no trained tokens"
        )
    summary["max_length"] = cfg.max_length
    summary["tokenizer"] = params.model.base
    prompts = [held_out_prompt(example) for _, example in val_records[: params.eval.generations]]
    _write_prepared(Path(cfg.prepared_dir), splits, summary, prompts)
    return summary


def held_out_prompt(example: dict) -> dict:
    """A validation example cut before its last answer: the prompt and the reference."""
    if example["kind"] == "text":
        words = example["text"].split()
        return {"prompt": " ".join(words[: len(words) // 2]), "reference": " ".join(words[len(words) // 2 :])}
    if example["kind"] == "completion":
        return {"prompt": example["prompt"], "reference": example["completion"]}
    messages = example["messages"]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return {"messages": messages[:last], "reference": messages[last]["content"]}


def _write_prepared(out_dir: Path, splits: dict[str, Packed], summary: dict, prompts: list[dict]) -> None:
    with atomic_dir(out_dir) as tmp:
        for name, packed in splits.items():
            tensors = {
                "input_ids": packed.input_ids,
                "labels": packed.labels,
                "position_ids": packed.position_ids,
                "real_tokens": packed.real_tokens,
            }
            torch.save(tensors, tmp / f"{name}.pt")
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        (tmp / "held_out_prompts.jsonl").write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in prompts))


def load_prepared(prepared_dir: str | Path, name: str) -> dict[str, torch.Tensor]:
    path = Path(prepared_dir) / f"{name}.pt"
    if not path.is_file():
        raise DataError(f"{path}: not found; run `prepare` first")
    return torch.load(path, weights_only=True)
