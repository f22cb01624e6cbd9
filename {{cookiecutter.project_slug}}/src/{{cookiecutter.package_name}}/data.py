"""JSONL -> chat template -> masked labels -> packed rows. The `prepare` stage.

Three input formats (params `data.format`), one record per line:
  chat         {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}
  instruction  {"instruction": "...", "input": "... (optional)", "output": "..."}
  text         {"text": "..."}

Every line is validated before anything is written; a bad line stops with `file:line: what`.
Examples are packed into fixed-length rows. Each packed example restarts its position ids at
0, which makes transformers build a block-diagonal causal mask: packed examples never
attend to each other, and no slot is wasted on padding between them.
"""

from __future__ import annotations

import bisect
import json
import random
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch

from .atomic import atomic_dir

IGNORE = -100  # label value the loss skips
ROLES = ("system", "user", "assistant")

# ChatML, used when a tokenizer ships without a chat template (base models often do).
CHATML_TEMPLATE = resources.files(__package__).joinpath("chatml.jinja").read_text(encoding="utf-8")


class DataError(ValueError):
    """Invalid training data. The CLI prints the message and exits with code 2."""


# ---------------------------------------------------------------------------- reading


def read_records(path: str | Path, fmt: str) -> list[dict]:
    """Parse and validate every line; raise DataError naming the first bad line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found (run `dvc pull` or `make data`)")
    records = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{number}: not valid JSON ({err.msg} at column {err.colno})") from None
            problem = _check_record(record, fmt)
            if problem:
                raise DataError(f"{path}:{number}: {problem}")
            records.append(record)
    if not records:
        raise DataError(f"{path}: no records (the dataset is empty)")
    return records


def _check_record(record: object, fmt: str) -> str | None:
    if not isinstance(record, dict):
        return "expected a JSON object"
    if fmt == "text":
        return _nonempty_string(record, "text")
    if fmt == "instruction":
        if "input" in record and not isinstance(record["input"], str):
            return "field 'input' must be a string"
        return _nonempty_string(record, "instruction") or _nonempty_string(record, "output")
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        return "missing 'messages' (a non-empty list of {role, content})"
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"messages[{i}] is not an object"
        if message.get("role") not in ROLES:
            return f"messages[{i}]: unknown role {message.get('role')!r} (expected one of {', '.join(ROLES)})"
        if not isinstance(message.get("content"), str):
            return f"messages[{i}]: 'content' must be a string"
    if not any(m["role"] == "assistant" for m in messages):
        return "no assistant message: nothing to learn from"
    return None


def _nonempty_string(record: dict, key: str) -> str | None:
    value = record.get(key)
    if not isinstance(value, str) or not value.strip():
        return f"missing field {key!r} (a non-empty string)"
    return None


def to_messages(record: dict, fmt: str) -> list[dict]:
    if fmt == "chat":
        return record["messages"]
    if fmt == "instruction":
        prompt = record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": record["output"]}]
    raise ValueError(f"format {fmt!r} has no messages")


# ------------------------------------------------------------------------- tokenizing


def ensure_chat_template(tokenizer) -> None:
    if not tokenizer.chat_template:
        tokenizer.chat_template = CHATML_TEMPLATE


def tokenize(tokenizer, record: dict, fmt: str, train_on: str) -> tuple[list[int], list[int]]:
    """Token ids and labels for one record; labels are IGNORE where no loss is wanted.

    A conversation is rendered turn by turn: the text the template adds for an assistant
    turn (its content and end-of-turn token) is trained, everything else (system prompt,
    user turns, role headers) is context. Rendering prefixes keeps this correct for any
    chat template, not just ones we know.
    """
    if fmt == "text":
        ids = tokenizer(record["text"], add_special_tokens=False)["input_ids"]
        ids = ids + [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else ids
        return ids, list(ids)

    messages = to_messages(record, fmt)
    ids: list[int] = []
    labels: list[int] = []
    rendered = ""
    for i, message in enumerate(messages):
        if message["role"] == "assistant":
            prompt = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
            _append(tokenizer, prompt[len(rendered):], ids, labels, trained=train_on == "all")
            rendered = prompt
        full = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not full.startswith(rendered):
            raise DataError("the chat template does not render conversations prefix by prefix")
        _append(tokenizer, full[len(rendered):], ids, labels, trained=train_on == "all" or message["role"] == "assistant")
        rendered = full
    return ids, labels


def _append(tokenizer, text: str, ids: list[int], labels: list[int], trained: bool) -> None:
    piece = tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
    ids.extend(piece)
    labels.extend(piece if trained else [IGNORE] * len(piece))


# ---------------------------------------------------------------------------- packing


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


# ------------------------------------------------------------------ the prepare stage


def split(records: list[dict], val_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
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
    records = read_records(cfg.path, cfg.format)
    if tokenizer is None:
        from .modeling import load_tokenizer

        tokenizer = load_tokenizer(params.model.base)
    if cfg.format != "text":
        ensure_chat_template(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    train_records, val_records = split(records, cfg.val_fraction, cfg.seed)

    summary: dict = {"source": str(cfg.path), "records": len(records), "format": cfg.format}
    splits = {}
    for name, subset in (("train", train_records), ("val", val_records)):
        examples, too_long, no_labels = [], 0, 0
        for record in subset:
            ids, labels = tokenize(tokenizer, record, cfg.format, cfg.train_on)
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
    prompts = [held_out_prompt(record, cfg.format) for record in val_records[: params.eval.generations]]
    _write_prepared(Path(cfg.prepared_dir), splits, summary, prompts)
    return summary


def held_out_prompt(record: dict, fmt: str) -> dict:
    """A validation record cut before its last answer: the prompt and the reference."""
    if fmt == "text":
        words = record["text"].split()
        return {"prompt": " ".join(words[: len(words) // 2]), "reference": " ".join(words[len(words) // 2 :])}
    messages = to_messages(record, fmt)
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
