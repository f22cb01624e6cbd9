"""`prepare --show N`: N examples as the model will see them, the trained part marked.

A look before paying for a GPU: which text the chat template renders, and which of it the
loss is computed on. Nothing is written. The N are taken from every file of a folder in turn
and spread evenly through each file (its first record included), not just its first lines:
a folder's files often differ in shape and content, and a file's start is rarely typical.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from .chat import IGNORE, Encoded, encode_example, template_notes
from .errors import DataError
from .preference import encode_pair, side_example
from .readers import Source
from .shapes import detect, normalise, read_examples

ANSI_TRAINED, ANSI_RESET = "\033[1;32m", "\033[0m"  # bold green
PLAIN_OPEN, PLAIN_CLOSE = "[[", "]]"


def marked(encoded: Encoded, color: bool) -> str:
    """The rendered text with each trained run of tokens marked (ANSI colour, or [[...]])."""
    opening, closing = (ANSI_TRAINED, ANSI_RESET) if color else (PLAIN_OPEN, PLAIN_CLOSE)
    text, starts = encoded.text, [start for start, _ in encoded.offsets]
    pieces, i = [], 0
    while i < len(starts):
        trained = encoded.labels[i] != IGNORE
        j = i
        while j < len(starts) and (encoded.labels[j] != IGNORE) == trained:
            j += 1
        # A token runs to the next token's start, so the pieces cover the whole text.
        piece = text[starts[i] if i else 0 : starts[j] if j < len(starts) else len(text)]
        pieces.append(f"{opening}{piece}{closing}" if trained else piece)
        i = j
    return "".join(pieces)


def spread(counts: list[int], n: int) -> list[list[int]]:
    """Which records to show of each source, by position: n dealt to the sources in turn (so each
    file of a folder shows up), each one's share evenly spaced through its records from the first."""
    shares, left = [0] * len(counts), min(n, sum(counts))
    while left:
        for i, count in enumerate(counts):
            if left and shares[i] < count:
                shares[i], left = shares[i] + 1, left - 1
    return [[j * count // share for j in range(share)] for count, share in zip(counts, shares, strict=True)]


_BOM = b"\xef\xbb\xbf"
_PIECE = 2**20  # bytes read at once: a long line is scanned in pieces


def _jsonl_lines(path: Path, positions: list[int]) -> Iterator[tuple[int, int, int]]:
    """(start byte, end byte, line number) of the records at `positions` (sorted) of a JSON Lines
    file, found in its raw bytes: its records are its non-blank lines, as `Source.count` counts
    them. Nothing is parsed but the lines shown, so a file of millions of records costs a scan."""
    wanted = iter(positions)
    target = next(wanted, None)
    record, number, offset, start, counted, at_start = -1, 0, 0, 0, False, True
    with path.open("rb") as f:
        while target is not None and (piece := f.readline(_PIECE)):
            if at_start:
                number, start, counted = number + 1, offset, False
            offset += len(piece)
            if not counted and piece.removeprefix(_BOM).strip():
                record, counted = record + 1, True
            at_start = piece.endswith(b"\n")
            if counted and record == target and at_start:
                yield start, offset, number
                target = next(wanted, None)
    if target is not None and record == target and counted:  # the last line, without a line break
        yield start, offset, number


def _records_at(source: Source, positions: list[int]) -> Iterator[tuple[str, object]]:
    """The `(where, record)` of a source's records at `positions` (sorted), as they are in the file."""
    if source.kind == "jsonl":
        for start, end, line in _jsonl_lines(Path(source.path), positions):
            yield from source.line_records(start, end, line)
        return
    wanted = set(positions)
    for position, where_record in enumerate(source.records()):
        if position in wanted:
            yield where_record
            if position == positions[-1]:
                return


def sample(path, fmt: str, n: int) -> tuple[list[tuple[str, dict]], int, int]:
    """n `(where, example)` of `path`, spread over its files and through each (see `spread`); how
    many records it holds, and in how many files. Only the chosen records are parsed: the data
    may hold millions."""
    sources = read_examples(path, fmt).sources
    counts = [source.count() for source in sources]
    if not sum(counts):
        raise DataError(f"{path}: no records (the dataset is empty)")
    chosen, shares = [], spread(counts, n)
    for source, positions in zip(sources, shares, strict=True):
        shape = None if fmt == "auto" else fmt  # auto: a file's first record (always chosen) says its shape
        for where, record in _records_at(source, positions) if positions else ():
            shape = shape or detect(record) or "auto"  # "auto" only to have normalise name what is wrong
            try:
                chosen.append((where, normalise(record, shape)))
            except DataError as err:
                raise DataError(f"{where}: {err}") from None
    return chosen, sum(counts), len(sources)


def show_examples(params, n: int, color: bool, tokenizer=None, out=print) -> None:
    cfg = params.data
    if n < 1:
        raise DataError(f"--show {n}: give how many examples to show, 1 or more")
    examples, total, files = sample(cfg.path, cfg.format, n)
    if tokenizer is None:
        from ..model.loading import load_tokenizer

        tokenizer = load_tokenizer(params.model.base)
    source = params.model.base
    legend = "trained text in bold green" if color else f"trained text between {PLAIN_OPEN} and {PLAIN_CLOSE}"
    notes = template_notes(tokenizer, source) if any(e["kind"] == "chat" or e["kind"] in ("pair", "kto") and not isinstance(e["prompt"], str)
                                                     for _, e in examples) else ""
    how = f" (taken in turn from its {files} files, evenly spaced through each)" if files > 1 else " (evenly spaced through it)"
    how = how if len(examples) < total else ""
    out(f"{len(examples)} of {total} examples of {cfg.path}{how}, tokenized for {source} (train_on: {cfg.train_on}); {legend}")
    if notes:
        out(notes)
    for where, example in examples:
        if example["kind"] == "pair":
            show_pair(tokenizer, where, example, source, color, out)
            continue
        if example["kind"] == "kto":
            show_kto(tokenizer, where, example, source, color, out)
            continue
        try:
            encoded = encode_example(tokenizer, example, cfg.train_on, template_source=source)
        except DataError as err:
            raise DataError(f"{where}: {err}") from None
        trained = sum(label != IGNORE for label in encoded.labels)
        out(f"\n--- {where}: {len(encoded.ids)} tokens, {trained} trained ---")
        out(marked(encoded, color))


def show_pair(tokenizer, where: str, pair: dict, source: str, color: bool, out=print) -> None:
    """A preference pair: each side rendered whole, its trained answer marked; the prompt tokens are the same."""
    try:
        both = encode_pair(tokenizer, pair, template_source=source)
    except DataError as err:
        raise DataError(f"{where}: {err}") from None
    out(f"\n--- {where}: a pair, {both.prompt_tokens} prompt tokens shared ---")
    for side, encoded in (("chosen", both.chosen), ("rejected", both.rejected)):
        trained = sum(label != IGNORE for label in encoded.labels)
        out(f"  [{side}: {len(encoded.ids)} tokens, {trained} trained]")
        out(marked(encoded, color))


def show_kto(tokenizer, where: str, example: dict, source: str, color: bool, out=print) -> None:
    """A KTO record: its answer rendered as a pair side is (the trained part marked), and its label."""
    pair = {"prompt": example["prompt"], "chosen": example["completion"], "tools": example["tools"]}
    try:
        encoded = encode_example(tokenizer, side_example(pair, "chosen", tokenizer.eos_token), "assistant", source)
    except DataError as err:
        raise DataError(f"{where}: {err}") from None
    trained = sum(label != IGNORE for label in encoded.labels)
    label = "desirable (label true)" if example["label"] else "undesirable (label false)"
    out(f"\n--- {where}: {len(encoded.ids)} tokens, {trained} trained, {label} ---")
    out(marked(encoded, color))
