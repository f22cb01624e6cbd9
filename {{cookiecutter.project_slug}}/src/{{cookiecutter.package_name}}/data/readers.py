"""Reading data files record by record, streamed: no file is ever held in memory whole.

`data.path` may name:
  a JSONL file       one JSON object per line (.jsonl; also .json when it does not start with `[`)
  a JSON array file  one list of objects (.json, Alpaca's own format), parsed one record at a time
  a CSV / TSV file   a header row, then one record per row (.csv, .tsv); a `messages`,
                     `conversations` or `tools` cell holds JSON
  a Parquet file     .parquet, read in batches with pyarrow
  a folder           every such file inside it (sub-folders too), in sorted path order
  a saved dataset    a folder written by `datasets`' `save_to_disk`; `folder@split` picks a split
  a hub dataset      `hf:owner/name`, `hf:owner/name@split`, `hf:owner/name:subset@split`, and
                     `#revision` after any of them (split `train` unless named), through
                     `datasets.load_dataset`

Every record comes with `where`, for messages about it: `file:line` for text files (the line
a record starts on), `file:record N` for Parquet and datasets (N counts from 1).

Text files are read as bytes, one line at a time and at most MAX_RECORD_BYTES at once, so a
corrupt file (invalid UTF-8, a NUL byte, a line of hundreds of MB) stops with `file:line: what`
in bounded memory. JSON Lines are parsed here rather than by `datasets`' JSON loader: that
loader infers one Arrow schema for the whole file, which refuses what chat data routinely mixes
(`content: null` next to strings, tool arguments with other keys in every call), and it
reports no line numbers.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path

from .errors import DataError, json_problem

# A record (one JSONL line, one JSON array element, one CSV row) may be at most this big:
# 16 MiB of text is about 4M tokens, far beyond any data.max_length, so a longer line is
# a broken file (a missing newline, binary data), reported without reading it whole.
MAX_RECORD_BYTES = 16 * 2**20
_CHUNK = 2**20  # bytes read at once where a file is scanned rather than parsed

SUFFIXES = {".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}
_UTF8_BOM = b"\xef\xbb\xbf"
# Columns whose CSV cells hold JSON (a list of messages, a list of tools).
_JSON_COLUMNS = ("messages", "conversations", "tools")
# Columns whose CSV cells hold JSON when they are a list (TRL's conversational prompt/completion).
_MAYBE_JSON_COLUMNS = ("prompt", "completion")


class Source:
    """One file or dataset of `data.path`: its records, and how many there are."""

    def __init__(self, kind: str, path: str, split: str | None = None, subset: str | None = None,
                 revision: str | None = None, label: str | None = None):
        self.kind, self.path, self.split, self.subset, self.revision = kind, path, split, subset, revision
        self.label = label or path

    def records(self) -> Iterator[tuple[str, object]]:
        if self.kind == "jsonl":
            return _jsonl_records(Path(self.path))
        if self.kind == "json_array":
            return _json_array_records(Path(self.path))
        if self.kind == "csv":
            return _csv_records(Path(self.path), "\t" if self.path.endswith(".tsv") else ",")
        if self.kind == "parquet":
            return _parquet_records(Path(self.path))
        return self._dataset_records()

    def line_records(self, start: int, end: int, first_line: int) -> Iterator[tuple[str, object]]:
        """The records of bytes start..end of a JSON Lines file, the first on line `first_line`
        (a run of `line_runs`)."""
        assert self.kind == "jsonl", self.kind
        return _jsonl_records(Path(self.path), start, end, first_line)

    def count(self) -> int:
        """Records in this source, without checking them: cheap for JSONL (a scan of the bytes),
        Parquet and datasets (their metadata); a JSON array or CSV file is parsed."""
        if self.kind == "jsonl":
            return _count_lines(Path(self.path))
        if self.kind == "parquet":
            return _parquet_file(Path(self.path)).metadata.num_rows
        if self.kind in ("saved", "hub"):
            return len(self.dataset)
        return sum(1 for _ in self.records())

    @cached_property
    def dataset(self):
        """The `datasets.Dataset` of a saved or hub source (memory-mapped Arrow: cheap to hold)."""
        import datasets

        try:
            if self.kind == "saved":
                loaded = datasets.load_from_disk(self.path)
            else:
                loaded = datasets.load_dataset(self.path, self.subset, split=self.split or "train", revision=self.revision)
        except Exception as err:  # the library's many error types all mean "cannot load it"
            what = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise DataError(f"{self.label}: cannot load the dataset ({type(err).__name__}: {what})") from None
        if isinstance(loaded, datasets.DatasetDict):
            split = self.split or "train"
            if split not in loaded:
                raise DataError(
                    f"{self.label}: no split {split!r} in the saved dataset (it has {', '.join(loaded)}): "
                    f"name one as {self.path}@<split>"
                )
            return loaded[split]
        if self.split and self.kind == "saved":
            raise DataError(f"{self.label}: a single saved dataset has no splits; drop '@{self.split}'")
        return loaded

    def _dataset_records(self) -> Iterator[tuple[str, object]]:
        number = 0
        for batch in self.dataset.with_format(None).iter(batch_size=1024):  # plain Python values, whatever format it was saved with
            columns = list(batch)
            for values in zip(*(batch[c] for c in columns), strict=True):
                number += 1
                yield f"{self.label}:record {number}", _without_arrow_nulls(dict(zip(columns, values, strict=True)))


def resolve(path: str | Path) -> list[Source]:
    """The sources `data.path` names, in the order their records are read."""
    text = str(path)
    if text.startswith("hf:"):
        return [_hub_source(text)]
    path = Path(text)
    if not path.exists() and "@" in path.name:
        # `folder@split`: a split of a saved DatasetDict.
        base, _, split = text.rpartition("@")
        if _is_saved_dataset(Path(base)):
            return [Source("saved", base, split=split)]
    if path.is_dir():
        if _is_saved_dataset(path):
            return [Source("saved", text)]
        files = sorted(
            (p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES
             and not any(part.startswith(".") for part in p.relative_to(path).parts)),
            key=lambda p: p.relative_to(path).as_posix(),
        )
        if not files:
            raise DataError(f"{path}: no data files in this folder (looked for {', '.join(SUFFIXES)})")
        return [_file_source(p) for p in files]
    if not path.is_file():
        raise DataError(f"{path}: file not found; {_how_to_get(path)}")
    return [_file_source(path)]


SAMPLE = Path("data/raw/support.jsonl")  # the template's sample dataset, which `make data` regenerates


def _how_to_get(path: Path) -> str:
    """What brings a missing data file back: `make data` regenerates only the template's sample;
    `dvc pull` fetches what DVC tracks (a `.dvc` file beside the file or one of its folders)."""
    if path == SAMPLE or path.absolute() == SAMPLE.absolute():
        return "run `dvc pull`, or `make data` to regenerate the sample"
    for tracked in (path, *path.parents):
        if tracked.name and tracked.with_name(tracked.name + ".dvc").is_file():
            return f"DVC tracks it ({tracked}.dvc): run `dvc pull`"
    return "check data.path in params.yaml"


def _hub_source(text: str) -> Source:
    spec, _, revision = text[len("hf:"):].partition("#")
    spec, _, split = spec.partition("@")
    name, _, subset = spec.partition(":")
    if not name:
        raise DataError(f"{text}: name a dataset, e.g. hf:owner/name, hf:owner/name@split or hf:owner/name:subset@split")
    return Source("hub", name, split=split or None, subset=subset or None, revision=revision or None, label=text)


def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())


def _file_source(path: Path) -> Source:
    """The reader of a file: by its suffix, or by its first bytes when the suffix says nothing."""
    with path.open("rb") as f:
        head = f.read(64)
    kind = SUFFIXES.get(path.suffix)
    starts = head.removeprefix(_UTF8_BOM).lstrip()[:1]
    if head.startswith(b"PAR1"):
        return Source("parquet", str(path))
    if kind == "parquet":
        raise DataError(f"{path}: not a Parquet file (it does not start with the Parquet magic bytes 'PAR1')")
    if kind == "csv":
        return Source("csv", str(path))
    if kind is None and starts not in (b"{", b"["):
        raise DataError(f"{path}: unknown kind of file; accepted: {', '.join(SUFFIXES)} files, or a folder of them")
    # .jsonl and .json alike: a file that starts with `[` is one JSON array, anything else JSON Lines.
    return Source("json_array" if starts == b"[" else "jsonl", str(path))


# --- text files: bytes -> checked text ----------------------------------------------------


def _check_encoding(path: Path, head: bytes) -> None:
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataError(f"{path}: the file is UTF-16 encoded; save it as UTF-8")


def _decode(path: Path, line: int, raw: bytes, final: bool = True) -> tuple[str, bytes]:
    """`raw` (starting on line `line`) as text, or `file:line: what` for bytes that are not UTF-8 text.

    With `final=False` an incomplete character at the end is handed back, to be decoded
    with the bytes that follow it."""
    nul, bad, tail = raw.find(b"\0"), -1, b""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        if not final and err.end == len(raw) and err.reason == "unexpected end of data":
            raw, tail = raw[: err.start], raw[err.start :]
            text = raw.decode("utf-8")  # cannot fail: decoding stopped at the first bad byte
        else:
            bad, text = err.start, ""
    if nul >= 0 and (bad < 0 or nul < bad):
        at, column = _position(line, raw, nul)
        raise DataError(f"{path}:{at}: a NUL byte at column {column} (binary data, or text not saved as UTF-8?)")
    if bad >= 0:
        at, column = _position(line, raw, bad)
        raise DataError(f"{path}:{at}: not valid UTF-8 (byte 0x{raw[bad]:02x} at column {column}); save the file as UTF-8")
    return text, tail


def _position(line: int, raw: bytes, index: int) -> tuple[int, int]:
    """Line and column (in characters) of byte `index` of `raw`, which starts on line `line`."""
    newline = b"\n"
    line_start = raw.rfind(newline, 0, index) + 1
    column = len(raw[line_start:index].decode("utf-8", "replace")) + 1
    return line + raw.count(newline, 0, index), column


def _too_long(path: Path, number: int, size: int, exact: bool) -> DataError:
    measured = f"a record of {size / 2**20:,.0f} MiB, more than" if exact else "a record of more than"
    return DataError(
        f"{path}:{number}: {measured} the {MAX_RECORD_BYTES // 2**20} MiB one record may have "
        f"(a missing line break, or not a text file?)"
    )


def _lines(path: Path, start: int = 0, end: int | None = None, first_line: int = 1) -> Iterator[tuple[int, str]]:
    """`(line number, text)` of every line, the line break kept; never more than one record in memory.

    `start`, `end` and `first_line` read only the lines of bytes start..end (cut after line
    breaks, as `line_runs` cuts them), `first_line` being the number of the first.
    """
    with path.open("rb") as f:
        if start == 0:
            _check_encoding(path, f.read(4))
        f.seek(start)
        number, position = first_line - 1, start
        while (end is None or position < end) and (raw := f.readline(MAX_RECORD_BYTES + 1)):
            number += 1
            position += len(raw)
            if len(raw) > MAX_RECORD_BYTES and not raw.endswith(b"\n"):
                # Skip through the rest of the line in chunks, only to say how long it was.
                size = len(raw)
                while piece := f.readline(_CHUNK):
                    size += len(piece)
                    if piece.endswith(b"\n"):
                        break
                raise _too_long(path, number, size, exact=True)
            if number == 1:
                raw = raw.removeprefix(_UTF8_BOM)
            yield number, _decode(path, number, raw)[0]


def _text_chunks(path: Path) -> Iterator[str]:
    """The file's text in pieces of about _CHUNK bytes, checked as `_lines` checks lines."""
    with path.open("rb") as f:
        _check_encoding(path, f.read(4))
        f.seek(0)
        line, tail, first = 1, b"", True
        while True:
            raw = f.read(_CHUNK)
            data = tail + raw
            if first:
                data, first = data.removeprefix(_UTF8_BOM), False
            if not data:
                return
            text, tail = _decode(path, line, data, final=not raw)
            line += text.count("\n")
            yield text


def _count_lines(path: Path) -> int:
    """Non-blank lines, counted from the raw bytes (a JSONL file's records, cheaply)."""
    count, at_start, counted = 0, True, False
    with path.open("rb") as f:
        while piece := f.readline(_CHUNK):
            if at_start:
                counted = False
            if not counted and piece.removeprefix(_UTF8_BOM).strip():
                count, counted = count + 1, True
            at_start = piece.endswith(b"\n")
    return count


def line_runs(path: Path, lines: int) -> Iterator[tuple[int, int, int]]:
    """`(start byte, end byte, first line)` of each run of `lines` lines of a text file, cut
    after line breaks: the pieces that processes read on their own (`Source.line_records`).

    A scan of the raw bytes, a block at a time; what the lines hold is for their readers to check.
    """
    with path.open("rb") as f:
        start, first, offset, pending = 0, 1, 0, 0  # pending: lines of the current run so far
        while block := f.read(_CHUNK):
            at = 0
            while pending + block.count(b"\n", at) >= lines:
                for _ in range(lines - pending):
                    at = block.find(b"\n", at) + 1
                yield start, offset + at, first
                start, first, pending = offset + at, first + lines, 0
            pending += block.count(b"\n", at)
            offset += len(block)
        if offset > start:
            yield start, offset, first


def _jsonl_records(path: Path, start: int = 0, end: int | None = None, first_line: int = 1) -> Iterator[tuple[str, object]]:
    for number, line in _lines(path, start, end, first_line):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            err = _json_error(line.rstrip("\r\n"))  # columns on this line, not past its line break
            hint = " (a .json file is read as one JSON array of records, or as JSON Lines: one record per line)"
            raise DataError(
                f"{path}:{number}: not valid JSON ({json_problem(err)})" + (hint if path.suffix == ".json" else "")
            ) from None
        yield f"{path}:{number}", record


def _json_error(text: str) -> json.JSONDecodeError:
    try:
        json.loads(text)
    except json.JSONDecodeError as err:
        return err
    raise AssertionError("expected a JSON error")  # pragma: no cover


class _JsonArray:
    """The elements of a file holding one JSON array, parsed one at a time.

    `buf` holds the text not yet consumed (at most one record and one read ahead) and always
    starts at the beginning of a line, so the decoder's line numbers count from `base`.
    """

    def __init__(self, path: Path):
        self.path, self.chunks = path, _text_chunks(path)
        self.buf, self.base, self.pos, self.eof = "", 1, 0, False
        self.mark, self.mark_line = 0, 1  # a position whose line is known, to count lines incrementally

    def line(self, pos: int) -> int:
        self.mark_line += self.buf.count("\n", self.mark, pos)
        self.mark = pos
        return self.mark_line

    def more(self) -> bool:
        if self.eof:
            return False
        line = self.line(self.pos)
        cut = self.buf.rfind("\n", 0, self.pos) + 1  # drop whole consumed lines only
        self.base = line - self.buf.count("\n", cut, self.pos)
        self.buf, self.pos, self.mark = self.buf[cut:], self.pos - cut, self.pos - cut
        chunk = next(self.chunks, None)
        if chunk is None:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def peek(self) -> str:
        """The next character that is not white space ("" at the end), at `self.pos`."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in " \t\r\n":
                self.pos += 1
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self.more():
                return ""

    def error(self, what: str) -> DataError:
        return DataError(f"{self.path}:{self.line(self.pos)}: {what}")

    def __iter__(self) -> Iterator[tuple[str, object]]:
        decoder = json.JSONDecoder()
        if self.peek() != "[":
            raise self.error("expected a JSON array")
        self.pos += 1
        first = True
        while True:
            char = self.peek()
            if char == "]":
                self.pos += 1
                if self.peek():
                    raise self.error("text after the end of the JSON array")
                return
            if not char:
                raise self.error("the JSON array is not closed (missing ']')")
            if not first:
                if char != ",":
                    raise self.error("expected ',' or ']' after a record of the JSON array")
                self.pos += 1
                if self.peek() in ("]", ""):
                    raise self.error("expected a record after ',' (a trailing comma is not JSON)" if self.peek()
                                     else "the JSON array is not closed (missing ']')")
            first = False
            while True:
                try:
                    record, end = decoder.raw_decode(self.buf, self.pos)
                    break
                except json.JSONDecodeError as err:
                    # Cut short by the end of what has been read so far, or really broken?
                    cut_short = err.msg.startswith("Unterminated string") or err.pos >= len(self.buf) - 8
                    if len(self.buf) - self.pos > MAX_RECORD_BYTES:
                        raise _too_long(self.path, self.line(self.pos), len(self.buf) - self.pos, exact=False) from None
                    line = self.base + err.lineno - 1  # before more() moves the buffer
                    if not cut_short or not self.more():
                        raise DataError(f"{self.path}:{line}: not valid JSON ({json_problem(err)})") from None
            yield f"{self.path}:{self.line(self.pos)}", record
            self.pos = end


def _json_array_records(path: Path) -> Iterator[tuple[str, object]]:
    return iter(_JsonArray(path))


def _csv_records(path: Path, delimiter: str) -> Iterator[tuple[str, object]]:
    csv.field_size_limit(MAX_RECORD_BYTES)
    current = 0  # the line the csv reader has read up to

    def feed() -> Iterator[str]:
        nonlocal current
        for current, line in _lines(path):  # noqa: B007 - `current` is read by the loop below
            yield line

    reader = csv.reader(feed(), delimiter=delimiter)
    try:
        header = next(reader, None)
        if header is None:
            return
        if len(set(header)) != len(header):  # (an unnamed column, as pandas writes its index, is fine)
            twice = sorted({name for name in header if header.count(name) > 1})
            raise DataError(f"{path}:1: the header row names a column more than once ({', '.join(map(repr, twice))})")
        while True:
            start = current + 1
            row = next(reader, None)
            if row is None:
                return
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise DataError(f"{path}:{start}: {len(row)} fields, but the header has {len(header)}")
            yield f"{path}:{start}", _csv_record(path, start, dict(zip(header, row, strict=True)))
    except csv.Error as err:
        raise DataError(f"{path}:{current}: not valid CSV ({err})") from None


def _csv_record(path: Path, line: int, record: dict) -> dict:
    for column in _JSON_COLUMNS + _MAYBE_JSON_COLUMNS:
        cell = record.get(column)
        if not isinstance(cell, str):
            continue
        if column in ("tools",) and not cell.strip():
            record[column] = None
        elif cell.lstrip()[:1] in ("[", "{"):
            try:
                value = json.loads(cell)
            except json.JSONDecodeError as err:
                if column in _MAYBE_JSON_COLUMNS:
                    continue  # plain text that happens to start with a bracket
                raise DataError(f"{path}:{line}: column {column!r} is not valid JSON ({json_problem(err)})") from None
            if column in _JSON_COLUMNS or isinstance(value, list):
                record[column] = value
    return record


def _parquet_file(path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{path}: not a readable Parquet file ({err})") from None


def _parquet_records(path: Path) -> Iterator[tuple[str, object]]:
    import pyarrow as pa

    number = 0
    batches = _parquet_file(path).iter_batches(batch_size=1024)
    while True:
        try:
            batch = next(batches, None)
        except (pa.ArrowException, OSError) as err:
            raise DataError(f"{path}:record {number + 1}: cannot read the Parquet file from here ({err})") from None
        if batch is None:
            return
        for record in batch.to_pylist():
            number += 1
            yield f"{path}:record {number}", _without_arrow_nulls(record)


def _without_arrow_nulls(record: dict) -> dict:
    """Undo what Arrow's one-schema-per-column does to tool calls and tool definitions.

    A column of structs has one set of keys, so every tool call's arguments (and every tool's
    parameter schema) get the keys of all the others, as nulls: rendered as they are, the model
    would be trained on arguments nobody passed. Nulls are dropped there; elsewhere a null is
    an absent key already (see shapes). A list of messages that `datasets` hands over as a
    dict of lists (its `Sequence` of a dict feature) becomes a list of dicts again."""
    for key in ("messages", "conversations", "prompt", "completion"):
        if key in record:
            record[key] = _list_of_dicts(record[key])
        for message in record.get(key) if isinstance(record.get(key), list) else ():
            if isinstance(message, dict) and "tool_calls" in message:
                message["tool_calls"] = _list_of_dicts(message["tool_calls"])
    for key in ("messages", "prompt", "completion"):
        for message in record.get(key) if isinstance(record.get(key), list) else ():
            for call in (message.get("tool_calls") or ()) if isinstance(message, dict) else ():
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict) and isinstance(function.get("arguments"), dict):
                    function["arguments"] = _drop_nulls(function["arguments"])
    if isinstance(record.get("tools"), list):
        record["tools"] = _drop_nulls(record["tools"])
    return record


def _list_of_dicts(value):
    """{"role": [a, b], "content": [c, d]} -> [{"role": a, "content": c}, {"role": b, "content": d}]."""
    if isinstance(value, dict) and value and all(isinstance(v, list) for v in value.values()):
        columns = list(value.values())
        if len({len(c) for c in columns}) == 1:
            return [dict(zip(value, row, strict=True)) for row in zip(*columns, strict=True)]
    return value


def _drop_nulls(value):
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value
