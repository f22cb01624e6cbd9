"""Rendering a record through the model's chat template and marking which tokens are trained."""

from __future__ import annotations

from importlib import resources

from .errors import DataError
from .shapes import to_messages

IGNORE = -100  # label value the loss skips

# ChatML, used when a tokenizer ships without a chat template (base models often do).
CHATML_TEMPLATE = resources.files(__package__).joinpath("chatml.jinja").read_text(encoding="utf-8")


def ensure_chat_template(tokenizer) -> None:
    if not tokenizer.chat_template:
        tokenizer.chat_template = CHATML_TEMPLATE


def encode(tokenizer, example: dict, train_on: str, template_source: str = "") -> tuple[list[int], list[int]]:
    """Token ids and labels (IGNORE where no loss is wanted) for one normalised example.

    `example` is what `shapes.read_examples` yields; `template_source` names where the chat
    template came from (model id or file), for error messages. Raises DataError without a
    location: the caller prefixes the record's `file:line`.
    """
    if example["kind"] == "text":
        return tokenize(tokenizer, {"text": example["text"]}, "text", train_on)
    if example["kind"] == "chat":
        return tokenize(tokenizer, {"messages": example["messages"]}, "chat", train_on)
    raise DataError(f"examples of kind {example['kind']!r} are not supported yet")


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
