"""The shapes of training records: detecting them, checking them, normalising them.

Five shapes (params `data.format`; `auto`, the default, tells them apart by their keys,
from the first record of each file):
  chat         {"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": ...}, ...],
                "tools": [...] (optional)}: the OpenAI fine-tuning format, with per-message
               "weight": 0|1 on assistant messages, "tool_calls" (content may then be null),
               content as a string or a list of text parts
  sharegpt     {"conversations": [{"from": "human"|"gpt"|"system"|..., "value": "..."}, ...],
                "system": "..." (optional), "tools": ... (optional)}
  instruction  {"instruction": "...", "input": "... (optional)", "output": "...",
                "system": "..." (optional)}: Alpaca's format
  completion   {"prompt": ..., "completion": ...}: TRL's format; two strings are plain text with
               the loss on the completion, two lists of messages are a conversation
  text         {"text": "..."}: every token trained

How files are read (JSONL, JSON array, CSV, Parquet, folders, datasets) is `readers`' job.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from . import preference, readers
from .errors import DataError, json_problem

FORMATS = ("auto", "chat", "sharegpt", "instruction", "completion", "text", *preference.SHAPES)
ROLES = ("system", "user", "assistant", "tool")
# Other names of the four roles: OpenAI's newer name for the system prompt, and its legacy
# function-calling role.
ROLE_ALIASES = {"developer": "system", "function": "tool"}
# ShareGPT's speakers, as ShareGPT itself, its many derivatives (Vicuna, OpenHermes, SlimOrca)
# and LLaMA-Factory's function-calling variant name them.
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant", "bard": "assistant", "bing": "assistant",
    "model": "assistant",
    "tool": "tool", "observation": "tool", "function_response": "tool", "ipython": "tool",
    "function_call": "function_call",  # an assistant turn whose value is the call, as JSON
}
# What tells each shape apart, in the order detection tries them (a record may have several).
SIGNATURES = {
    "chat": '{"messages"}',
    "sharegpt": '{"conversations"}',
    "completion": '{"prompt", "completion"}',
    "instruction": '{"instruction", "output"}',
    "text": '{"text"}',
    "preference": '{"prompt", "chosen", "rejected"}',
    "implicit_preference": '{"chosen", "rejected"}',
    "kto": '{"prompt", "completion", "label"}',
}
# Message keys passed on as they are, when they are strings: a tool message's call id and
# function name, a participant's name, the reasoning some templates render.
_PASSED_ON = ("name", "tool_call_id", "reasoning_content", "thinking")


class _Bad(Exception):
    """A record's problem, without its location (the caller knows it)."""


def detect(record: object) -> str | None:
    """The shape a record has, by its keys; None when it has none of them."""
    if not isinstance(record, dict):
        return None
    if "messages" in record:
        return "chat"
    if "conversations" in record:
        return "sharegpt"
    if pair := preference.detect(record):  # preference data (preference.py)
        return pair
    if "prompt" in record and "completion" in record:
        return "completion"
    if "instruction" in record and "output" in record:
        return "instruction"
    if "text" in record:
        return "text"
    return None


def accepted() -> str:
    return ", ".join(f"{shape} {keys}" for shape, keys in SIGNATURES.items())


@dataclass(frozen=True)
class Part:
    """Records one process reads on its own: the lines of bytes `lines` = (start, end, first
    line) of a JSON Lines file, or (`lines` None) a whole source. `shape`: the records' shape,
    or None to take it from the first record."""

    source: readers.Source
    shape: str | None
    lines: tuple[int, int, int] | None = None


class Examples:
    """The normalised examples of `data.path`, read lazily as `(where, example)`.

    Iterating reads the data again from the start each time, so two passes (count, then
    tokenize) hold no more in memory than one. `count()` says how many records there are
    without normalising them. `shapes` maps each file (or dataset) read so far to its shape.
    """

    def __init__(self, path: str | Path, fmt: str = "auto"):
        if fmt not in FORMATS:
            raise DataError(f"data.format: unknown format {fmt!r} (one of {', '.join(FORMATS)})")
        self.path, self.format = path, fmt
        self.sources = readers.resolve(path)
        self.shapes: dict[str, str] = {}

    def __iter__(self) -> Iterator[tuple[str, dict]]:
        found = 0
        for source in self.sources:
            for where_example in self.part_examples(Part(source, None if self.format == "auto" else self.format)):
                yield where_example
                found += 1
        if not found:
            raise DataError(f"{self.path}: no records (the dataset is empty)")

    def parts(self, lines: int) -> Iterator[Part]:
        """The data in pieces that processes can read, check and normalise on their own: runs of
        `lines` lines of each JSON Lines file (its shape found here, from its first record), and
        every other source whole. Read in order, they are the records of `iter(self)`."""
        fixed = None if self.format == "auto" else self.format
        for source in self.sources:
            if source.kind != "jsonl":
                yield Part(source, fixed)
                continue
            try:
                shape = fixed or self._first_shape(source)
            except DataError:  # reading the source whole reports it, in its turn
                yield Part(source, None)
                continue
            for run in readers.line_runs(Path(source.path), lines):
                yield Part(source, shape, run)

    def part_examples(self, part: Part) -> Iterator[tuple[str, dict]]:
        """The `(where, example)` of one part (see `parts`), checked and normalised."""
        shape = part.shape
        records = part.source.records() if part.lines is None else part.source.line_records(*part.lines)
        for where, record in records:
            if shape is None:
                shape = _shape_of(where, record)
            self.shapes.setdefault(part.source.label, shape)
            yield where, _normalise_at(where, record, shape, self.format)

    @staticmethod
    def _first_shape(source: readers.Source) -> str | None:
        """The shape of a source's first record (None when it has none)."""
        for where, record in source.records():
            return _shape_of(where, record)
        return None

    def count(self) -> int:
        return sum(source.count() for source in self.sources)


def read_examples(path: str | Path, fmt: str = "auto") -> Examples:
    """Every record of `path` as `(where, example)`, validated; DataError names the first bad one.

    Lazy: records are read, checked and normalised one at a time, as they are iterated; each
    iteration reads the data again, and `.count()` says how many records there are cheaply.
    `where` is `file:line` (or `file:record N`), for error messages about that record later on.
    `example` is normalised to one of three kinds, whatever shape the file had:
      {"kind": "chat", "messages": [{"role", "content", ...}], "tools": list | None}
          messages as transformers' `apply_chat_template` takes them: roles system, user,
          assistant, tool; content always a string ("" for an assistant message that only
          calls tools); an assistant message may carry "weight": 0 (context, not trained) or
          1 and "tool_calls": [{"type": "function", "function": {"name": str, "arguments":
          dict}, "id"?: str}]; a tool message may carry "tool_call_id" and "name"
      {"kind": "text", "text": str}                          every token trained
      {"kind": "completion", "prompt": str, "completion": str}   plain text, completion trained
    """
    return Examples(path, fmt)


def normalise(record: object, fmt: str) -> dict:
    """One record of shape `fmt` (or `auto`) as a normalised example; DataError (no location) if it does not fit."""
    if fmt == "auto":
        fmt = detect(record)
        if fmt is None:
            raise DataError(_unknown_shape(record))
    try:
        return _NORMALISERS[fmt](_object(record))
    except _Bad as problem:
        raise DataError(str(problem)) from None


def _shape_of(where: str, record: object) -> str:
    """The shape of a file's first record, which all its records must have."""
    shape = detect(record)
    if shape is None:
        raise DataError(f"{where}: {_unknown_shape(record)}")
    return shape


def _normalise_at(where: str, record: object, shape: str, fmt: str) -> dict:
    try:
        return _NORMALISERS[shape](_object(record))
    except _Bad as problem:
        other = detect(record)
        if other is not None and other != shape:
            if fmt == "auto":
                hint = f"the file's first record is {shape}, this one looks like {other}: one shape per file"
            else:
                hint = f"data.format is {fmt} but this record looks like {other} (set data.format: {other}, or auto)"
            raise DataError(f"{where}: {problem}; {hint}") from None
        if other is None and isinstance(record, dict):
            raise DataError(f"{where}: {problem} ({_unknown_shape(record)})") from None
        raise DataError(f"{where}: {problem}") from None


def _unknown_shape(record: object) -> str:
    if not isinstance(record, dict):
        return f"expected a JSON object, found {_kind_of(record)}; accepted shapes: {accepted()}"
    keys = list(record)
    shown = ", ".join(json.dumps(str(k)) for k in keys[:12]) + (", ..." if len(keys) > 12 else "")
    hint = ""
    if "chosen" in record and "rejected" in record:
        hint = " (chosen/rejected is preference data, for DPO rather than supervised fine-tuning)"
    return f"not a known data shape: found keys [{shown}]{hint}; accepted shapes: {accepted()}"


def _kind_of(value: object) -> str:
    return {list: "a list", dict: "an object", str: "a string", type(None): "null", bool: "a boolean"}.get(type(value), "a number")


def _object(record: object) -> dict:
    if not isinstance(record, dict):
        raise _Bad(f"expected a JSON object, found {_kind_of(record)}")
    return record


# --- the shapes ---------------------------------------------------------------------------


def _chat(record: dict) -> dict:
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _Bad("missing 'messages' (a non-empty list of {role, content})")
    return _conversation([_message(m, f"messages[{i}]") for i, m in enumerate(messages)], _tools(record.get("tools")))


def _sharegpt(record: dict) -> dict:
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise _Bad("missing 'conversations' (a non-empty list of {from, value})")
    messages = []
    if isinstance(record.get("system"), str) and record["system"].strip():
        messages.append({"role": "system", "content": record["system"]})
    for i, turn in enumerate(turns):
        at = f"conversations[{i}]"
        if not isinstance(turn, dict):
            raise _Bad(f"{at} is not an object")
        if "from" not in turn and "role" in turn:  # OpenAI-style messages under ShareGPT's key
            messages.append(_message(turn, at))
            continue
        speaker = turn.get("from")
        role = SHAREGPT_ROLES.get(speaker.lower()) if isinstance(speaker, str) else None
        if role is None:
            raise _Bad(f"{at}: unknown 'from' {speaker!r} (expected one of {', '.join(SHAREGPT_ROLES)})")
        value = turn.get("value")
        if not isinstance(value, str):
            raise _Bad(f"{at}: 'value' must be a string")
        message = {"role": role, "content": value, "weight": turn.get("weight")}
        if role == "function_call":
            message = {"role": "assistant", "content": None, "weight": turn.get("weight"),
                       "tool_calls": _parse_json(value, f"{at}.value")}
            if isinstance(message["tool_calls"], dict):
                message["tool_calls"] = [message["tool_calls"]]
        messages.append(_message(message, at))
    return _conversation(messages, _tools(record.get("tools")))


def _instruction(record: dict) -> dict:
    instruction, output = _nonempty_string(record, "instruction"), _nonempty_string(record, "output")
    extra = record.get("input")
    if extra is not None and not isinstance(extra, str):
        raise _Bad("field 'input' must be a string")
    messages = []
    if isinstance(record.get("system"), str) and record["system"].strip():
        messages.append({"role": "system", "content": record["system"]})
    messages.append({"role": "user", "content": instruction + (f"\n\n{extra}" if extra else "")})
    messages.append({"role": "assistant", "content": output})
    return {"kind": "chat", "messages": messages, "tools": None}


def _completion(record: dict) -> dict:
    prompt, completion = record.get("prompt"), record.get("completion")
    if isinstance(prompt, str) and isinstance(completion, str):
        if not completion.strip():
            raise _Bad("field 'completion' is empty: nothing to learn from")
        return {"kind": "completion", "prompt": prompt, "completion": completion}
    if isinstance(prompt, list) and isinstance(completion, list):
        context = [_message(m, f"prompt[{i}]") for i, m in enumerate(prompt)]
        for message in context:  # only the completion is trained, as in TRL
            if message["role"] == "assistant":
                message["weight"] = 0
        answer = [_message(m, f"completion[{i}]") for i, m in enumerate(completion)]
        if not any(m["role"] == "assistant" for m in answer):
            raise _Bad("'completion' has no assistant message: nothing to learn from")
        return _conversation(context + answer, _tools(record.get("tools")))
    raise _Bad(
        "'prompt' and 'completion' must both be strings (plain text) or both lists of messages (a conversation), "
        f"found {_kind_of(prompt)} and {_kind_of(completion)}"
    )


def _text(record: dict) -> dict:
    return {"kind": "text", "text": _nonempty_string(record, "text")}


_NORMALISERS = {"chat": _chat, "sharegpt": _sharegpt, "instruction": _instruction, "completion": _completion, "text": _text}
# The preference shapes live in preference.py, built on this module's message and tool checks.
_NORMALISERS.update(preference.normalisers(lambda m, at: _message(m, at), lambda t: _tools(t), _Bad))


# --- the parts of a conversation ----------------------------------------------------------


def _conversation(messages: list[dict], tools: list[dict] | None) -> dict:
    answers = [m for m in messages if m["role"] == "assistant"]
    if not answers:
        raise _Bad("no assistant message: nothing to learn from")
    if all(m.get("weight", 1) == 0 for m in answers):
        raise _Bad("every assistant message has weight 0: nothing to learn from")
    return {"kind": "chat", "messages": messages, "tools": tools}


def _message(message: object, at: str) -> dict:
    if type(message) is dict and len(message) == 2 and type(message.get("content")) is str and message.get("role") in ROLES:
        return {"role": message["role"], "content": message["content"]}  # the common case, fast
    if not isinstance(message, dict):
        raise _Bad(f"{at} is not an object")
    role = message.get("role")
    role = ROLE_ALIASES.get(role, role)
    if role not in ROLES:
        raise _Bad(f"{at}: unknown role {message.get('role')!r} (expected one of {', '.join(ROLES)})")
    calls = message.get("tool_calls")
    if calls is None and isinstance(message.get("function_call"), dict):  # OpenAI's legacy function calling
        calls = [message["function_call"]]
    content = message.get("content")
    if role == "tool" and isinstance(content, dict):  # a structured tool result: the JSON text the model saw
        content = json.dumps(content, ensure_ascii=False)
    content = _content(content, at)
    if content is None:
        if role != "assistant" or not calls:
            what = "missing 'content'" if "content" not in message else "'content' is null"
            raise _Bad(f"{at}: {what} ('content' must be a string or a list of text parts; "
                       "only an assistant message with tool_calls may have none)")
        content = ""
    out = {"role": role, "content": content}
    if calls:
        if role != "assistant":
            raise _Bad(f"{at}: only assistant messages may have 'tool_calls'")
        if not isinstance(calls, list):
            raise _Bad(f"{at}: 'tool_calls' must be a list")
        out["tool_calls"] = [_tool_call(call, f"{at}.tool_calls[{j}]") for j, call in enumerate(calls)]
    weight = message.get("weight")
    if weight is not None:
        if role != "assistant":
            raise _Bad(f"{at}: 'weight' is only allowed on assistant messages (it says whether an answer is trained)")
        if isinstance(weight, bool) or not isinstance(weight, int | float) or weight not in (0, 1):
            raise _Bad(f"{at}: 'weight' must be 0 (not trained) or 1 (trained), got {weight!r}")
        out["weight"] = int(weight)
    for key in _PASSED_ON:
        if isinstance(message.get(key), str) and message[key]:
            out[key] = message[key]
    return out


def _content(content: object, at: str) -> str | None:
    """A message's text: a string, or a list of text parts joined as multimodal templates join them."""
    if content is None or isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _Bad(f"{at}: 'content' must be a string or a list of text parts, found {_kind_of(content)}")
    texts = []
    for j, part in enumerate(content):
        if isinstance(part, str):
            texts.append(part)
            continue
        kind = part.get("type", "text") if isinstance(part, dict) else None
        if kind not in ("text", "input_text", "output_text") or not isinstance(part.get("text"), str):
            shown = f"of type {kind!r}" if kind else "that is not a text part"
            raise _Bad(f"{at}.content[{j}]: a part {shown}; only text parts can be trained into a text model")
        texts.append(part["text"])
    return "".join(texts)


def _tool_call(call: object, at: str) -> dict:
    """A tool call as transformers' chat templates take it: arguments as a dict, not a JSON string."""
    if not isinstance(call, dict):
        raise _Bad(f"{at} is not an object")
    kind = call.get("type") or "function"
    if kind != "function":
        raise _Bad(f"{at}: type {kind!r}; only 'function' tool calls are supported")
    function = call.get("function") if isinstance(call.get("function"), dict) else call
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise _Bad(f"{at}: missing the function's 'name'")
    arguments = function.get("arguments")
    if isinstance(arguments, str):  # the OpenAI format carries them as a JSON string
        arguments = _parse_json(arguments, f"{at}.function.arguments") if arguments.strip() else {}
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise _Bad(f"{at}.function.arguments must be a JSON object, found {_kind_of(arguments)}")
    out = {"type": "function", "function": dict(name=name, arguments=arguments)}
    if isinstance(call.get("id"), str) and call["id"]:
        out["id"] = call["id"]
    return out


def _tools(tools: object) -> list[dict] | None:
    """The record's tool definitions (JSON schemas), or None; a JSON string is parsed."""
    if isinstance(tools, str):
        tools = _parse_json(tools, "tools") if tools.strip() else None
    if tools is None or tools == []:
        return None
    if not isinstance(tools, list):
        raise _Bad(f"'tools' must be a list of tool definitions, found {_kind_of(tools)}")
    out = []
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(tool, dict) and function is None and isinstance(tool.get("name"), str):
            tool, function = {"type": "function", "function": tool}, tool  # a bare function schema
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise _Bad(f"tools[{i}]: expected a tool definition: type 'function' and a 'function' with its 'name', 'description', 'parameters'")
        out.append(tool)
    return out


def _parse_json(text: str, at: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise _Bad(f"{at} is not valid JSON ({json_problem(err)})") from None


def _nonempty_string(record: dict, key: str) -> str:
    value = record.get(key)
    if not isinstance(value, str) or not value.strip():
        raise _Bad(f"missing field {key!r} (a non-empty string)")
    return value


# --- the older API: whole lists, for small files and tests -----------------------------------


def read_records(path: str | Path, fmt: str) -> list[dict]:
    """Every record of `path` as it is in the file, each checked; DataError names the first bad one."""
    examples = Examples(path, fmt)
    records = []
    for source in examples.sources:
        shape = None if fmt == "auto" else fmt
        for where, record in source.records():
            shape = shape or detect(record)
            if shape is None:
                raise DataError(f"{where}: {_unknown_shape(record)}")
            _normalise_at(where, record, shape, fmt)
            records.append(record)
    if not records:
        raise DataError(f"{path}: no records (the dataset is empty)")
    return records


def to_messages(record: dict, fmt: str) -> list[dict]:
    """A chat, sharegpt, instruction or conversational completion record's normalised messages."""
    example = normalise(record, fmt) if fmt in FORMATS else None
    if example is None or example["kind"] != "chat":
        raise ValueError(f"format {fmt!r} has no messages")
    return example["messages"]
