"""Reading data files and checking each record's shape; a bad line stops with `file:line: what`.

Three record shapes (params `data.format`), one JSON object per line:
  chat         {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}
  instruction  {"instruction": "...", "input": "... (optional)", "output": "..."}
  text         {"text": "..."}
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import DataError

ROLES = ("system", "user", "assistant")


def read_examples(path: str | Path, fmt: str) -> list[tuple[str, dict]]:
    """Every record of `path` as `(where, example)`, validated; DataError names the first bad one.

    `where` is `file:line` (or `file:record N`), for error messages about that record later on.
    `example` is normalised to one of three kinds, whatever shape the file had:
      {"kind": "chat", "messages": [{"role", "content", ...}], "tools": list | None}
          messages as transformers' `apply_chat_template` takes them; an assistant message may
          carry "weight": 0 (context, not trained) or 1
      {"kind": "text", "text": str}                          every token trained
      {"kind": "completion", "prompt": str, "completion": str}   plain text, completion trained
    """
    path = Path(path)
    return [(f"{path}:{number}", _normalise(record, fmt)) for number, record in _numbered_records(path, fmt)]


def _normalise(record: dict, fmt: str) -> dict:
    if fmt == "text":
        return {"kind": "text", "text": record["text"]}
    return {"kind": "chat", "messages": to_messages(record, fmt), "tools": None}


def read_records(path: str | Path, fmt: str) -> list[dict]:
    """Parse and validate every line; raise DataError naming the first bad line."""
    return [record for _, record in _numbered_records(Path(path), fmt)]


def _numbered_records(path: Path, fmt: str) -> list[tuple[int, dict]]:
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
            records.append((number, record))
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
