"""`prepare --show N`: the first N examples as the model will see them, the trained part marked.

A look before paying for a GPU: which text the chat template renders, and which of it the
loss is computed on. Nothing is written.
"""

from __future__ import annotations

from itertools import islice

from .chat import IGNORE, Encoded, encode_example, template_notes
from .errors import DataError
from .shapes import read_examples

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


def show_examples(params, n: int, color: bool, tokenizer=None, out=print) -> None:
    cfg = params.data
    reader = read_examples(cfg.path, cfg.format)
    # Only the first n are read: the file may hold millions.
    examples = list(islice(reader, n))
    total = reader.count()
    if tokenizer is None:
        from ..model.loading import load_tokenizer

        tokenizer = load_tokenizer(params.model.base)
    source = params.model.base
    legend = "trained text in bold green" if color else f"trained text between {PLAIN_OPEN} and {PLAIN_CLOSE}"
    notes = template_notes(tokenizer, source) if any(e["kind"] == "chat" for _, e in examples) else ""
    out(f"{len(examples)} of {total} examples of {cfg.path}, tokenized for {source} (train_on: {cfg.train_on}); {legend}")
    if notes:
        out(notes)
    for where, example in examples:
        try:
            encoded = encode_example(tokenizer, example, cfg.train_on, template_source=source)
        except DataError as err:
            raise DataError(f"{where}: {err}") from None
        trained = sum(label != IGNORE for label in encoded.labels)
        out(f"\n--- {where}: {len(encoded.ids)} tokens, {trained} trained ---")
        out(marked(encoded, color))
