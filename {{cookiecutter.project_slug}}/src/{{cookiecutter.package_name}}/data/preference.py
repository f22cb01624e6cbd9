"""Preference records: their shapes, and each pair rendered as the model sees it.

Two shapes (params `data.format`; `auto` tells them apart by their keys):
  preference           {"prompt": ..., "chosen": ..., "rejected": ..., "tools": [...] (optional)}: an explicit
                       prompt. Three strings are plain text (no chat template), the answers ending with eos;
                       a prompt as a list of messages takes answers as lists of messages (or as strings,
                       each one assistant message)
  implicit_preference  {"chosen": [messages], "rejected": [messages]}: two whole conversations that share
                       their first messages; the prompt is the shared messages, compared message by message,
                       never a shared run of characters (which can split a token like `<|assistant|>`).
                       Two sides that share no message, or whose shared part does not end where an assistant
                       answer begins, are refused.

  kto                  {"prompt": ..., "completion": ..., "label": true | false, "tools": [...] (optional)}:
                       KTO's unpaired records, one answer marked desirable (true) or undesirable (false);
                       prompt and completion as for `preference` (CSV's "true"/"false" text is read as such).
                       Normalised to {"kind": "kto", "prompt", "completion", "label": bool, "tools"}; kto.py
                       renders each one beside a mismatched completion as a pair (for KTO's KL estimate).

A pair is normalised to {"kind": "pair", "prompt": str | [messages], "chosen": str | [messages],
"rejected": str | [messages], "tools": list | None}.

`encode_pair` renders each side through the same render-once, offsets-to-labels path as
supervised examples (chat.encode_example): the trained tokens of a side are its answer as the
template renders it, up to where the template ends the assistant turn, and nothing after (no
second eos). Both sides must begin with the very same prompt tokens: a pair whose prompts
tokenize differently (a template that renders the prompt differently, or a plain-text prompt
whose last characters merge with the answer's first) is an error, not a warning.
"""

from __future__ import annotations

from dataclasses import dataclass

from .chat import IGNORE, Encoded, encode_example
from .errors import DataError

SHAPES = ("preference", "implicit_preference", "kto")


def detect(record: dict) -> str | None:
    if "chosen" in record and "rejected" in record:
        return "preference" if "prompt" in record else "implicit_preference"
    if "prompt" in record and "completion" in record and "label" in record:
        return "kto"
    return None


def normalisers(message, tools, bad) -> dict:
    """The normalisers of the preference shapes, built on shapes.py's message and tool checks
    (`message(m, at)`, `tools(value)`, and its exception type `bad`)."""

    def messages(value: object, key: str, answer: bool = False) -> list[dict]:
        if answer and isinstance(value, str):
            if not value.strip():
                raise bad(f"field {key!r} is empty: nothing to compare")
            return [{"role": "assistant", "content": value}]
        if not isinstance(value, list) or not value:
            raise bad(f"{key!r} must be a non-empty list of messages{' (or a string)' if answer else ''}, found {_kind(value)}")
        return [message(m, f"{key}[{i}]") for i, m in enumerate(value)]

    def answer_of(side: list[dict], key: str) -> list[dict]:
        if not any(m["role"] == "assistant" for m in side):
            raise bad(f"{key!r} has no assistant message: nothing to compare")
        return side

    def explicit(record: dict, sides: tuple[str, ...] = ("chosen", "rejected")) -> dict:
        prompt, chosen, rejected = record.get("prompt"), record.get(sides[0]), record.get(sides[-1])
        if isinstance(prompt, str):
            for key, value in zip(sides, (chosen, rejected), strict=False):  # kto: one side
                if not isinstance(value, str):
                    raise bad(f"'prompt' is plain text, so {key!r} must be a string too, found {_kind(value)} "
                              "(or give the prompt as a list of messages)")
                if not value.strip():
                    raise bad(f"field {key!r} is empty: nothing to compare")
            return {"kind": "pair", "prompt": prompt, "chosen": chosen, "rejected": rejected, "tools": None}
        context = messages(prompt, "prompt")
        for m in context:  # earlier answers are context, never trained (as in supervised completion records)
            if m["role"] == "assistant":
                m["weight"] = 0
        return {"kind": "pair", "prompt": context, "chosen": answer_of(messages(chosen, sides[0], True), sides[0]),
                "rejected": answer_of(messages(rejected, sides[-1], True), sides[-1]), "tools": tools(record.get("tools"))}

    def implicit(record: dict) -> dict:
        chosen, rejected = record.get("chosen"), record.get("rejected")
        if isinstance(chosen, str) or isinstance(rejected, str):
            raise bad("'chosen' and 'rejected' without a 'prompt' must be conversations (lists of messages): "
                      "a prompt is never cut from text by characters; add an explicit 'prompt'")
        chosen, rejected = messages(chosen, "chosen"), messages(rejected, "rejected")
        shared = 0
        while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
            shared += 1
        if shared == 0:
            raise bad("'chosen' and 'rejected' share no message: the prompt is their shared first messages "
                      "(or give an explicit 'prompt')")
        if shared == len(chosen) or shared == len(rejected):
            raise bad(f"one side is the first {shared} messages of the other: nothing differs to compare")
        if chosen[shared]["role"] != "assistant" or rejected[shared]["role"] != "assistant":
            raise bad(f"the sides first differ at message {shared} ({chosen[shared]['role']} / {rejected[shared]['role']}), "
                      "not at an assistant answer: the shared part must end where the answer begins")
        context = [dict(m) for m in chosen[:shared]]
        for m in context:
            if m["role"] == "assistant":
                m["weight"] = 0
        return {"kind": "pair", "prompt": context, "chosen": chosen[shared:], "rejected": rejected[shared:],
                "tools": tools(record.get("tools"))}

    def unpaired(record: dict) -> dict:
        label = record.get("label")
        if isinstance(label, str) and label.strip().lower() in ("true", "false"):  # CSV cells are text
            label = label.strip().lower() == "true"
        if not isinstance(label, bool):
            raise bad(f"'label' must be true (a desirable answer) or false (an undesirable one), found {_kind(label)} {label!r}")
        pair = explicit(record, ("completion",))
        return {"kind": "kto", "prompt": pair["prompt"], "completion": pair["chosen"], "label": label, "tools": pair["tools"]}

    return {"preference": explicit, "implicit_preference": implicit, "kto": unpaired}


def _kind(value: object) -> str:
    return {list: "a list", dict: "an object", str: "a string", type(None): "null", bool: "a boolean"}.get(type(value), "a number")


@dataclass
class EncodedPair:
    chosen: Encoded
    rejected: Encoded
    prompt_tokens: int  # the ids both sides start with, before the first trained token


def side_example(pair: dict, side: str, eos_token: str | None) -> dict:
    """One side of a pair as a supervised example (the shape chat.encode_example takes)."""
    if isinstance(pair["prompt"], str):
        answer = pair[side]
        if eos_token and answer.endswith(eos_token):  # encode_example appends eos: never a second one
            answer = answer[: -len(eos_token)]
        return {"kind": "completion", "prompt": pair["prompt"], "completion": answer}
    return {"kind": "chat", "messages": pair["prompt"] + pair[side], "tools": pair.get("tools")}


def _prompt_length(encoded: Encoded, side: str) -> int:
    trained = [i for i, label in enumerate(encoded.labels) if label != IGNORE]
    if not trained:
        raise DataError(f"the {side} answer has no trained tokens (the template renders nothing of it)")
    return trained[0]


def encode_pair(tokenizer, pair: dict, template_source: str = "") -> EncodedPair:
    """Both sides of a normalised pair, rendered and tokenized once each; DataError (without a
    location) when their prompt tokens differ."""
    chosen, rejected = (encode_example(tokenizer, side_example(pair, side, tokenizer.eos_token), "assistant", template_source)
                        for side in ("chosen", "rejected"))
    at_chosen, at_rejected = _prompt_length(chosen, "chosen"), _prompt_length(rejected, "rejected")
    if at_chosen != at_rejected or chosen.ids[:at_chosen] != rejected.ids[:at_rejected]:
        first = next((i for i, (a, b) in enumerate(zip(chosen.ids, rejected.ids, strict=False)) if a != b), min(at_chosen, at_rejected))
        raise DataError(
            f"'chosen' and 'rejected' do not start with the same prompt tokens ({at_chosen} and {at_rejected} prompt tokens, "
            f"first difference at token {first}: {tokenizer.decode(chosen.ids[first:first + 3])!r} / "
            f"{tokenizer.decode(rejected.ids[first:first + 3])!r}); the answers would be compared in different contexts"
        )
    return EncodedPair(chosen, rejected, at_chosen)


def held_out_prompt(pair: dict) -> dict:
    """A validation pair as a prompt for generation, with the chosen answer as the reference."""
    if isinstance(pair["prompt"], str):
        return {"prompt": pair["prompt"], "reference": pair["chosen"]}
    answer = next(m for m in pair["chosen"] if m["role"] == "assistant")
    return {"messages": pair["prompt"], "reference": answer["content"]}
