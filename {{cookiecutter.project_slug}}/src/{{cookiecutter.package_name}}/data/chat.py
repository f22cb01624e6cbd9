"""Rendering an example through the model's chat template and marking which tokens are trained.

One render and one tokenization per example: the conversation is rendered once, as the model
will see it (tools through the template's own `tools=` support), and the whole text is
tokenized once, with character offsets. The ids are therefore those of the whole text, with no
merge across a cut that piecewise tokenization would break. What is trained is decided on the
text, as character spans, and a token is trained when it overlaps a trained span.

The trained span of an assistant message is its turn as the template rendered it, without the
turn's header: from the end of the assistant header to the end of the end-of-turn marker(s)
after it. That covers the content, tool calls (the assistant's output too, so a message that
is only a tool call trains its rendered call), a reasoning block the template renders, and the
marker that teaches the model to stop. System, user and tool turns are never trained; nor are
assistant messages with `"weight": 0`, which are context. `train_on: all` trains every token.

Header and end-of-turn markers differ between template families and cannot be listed, so they
are learned from the template itself, once per template, by rendering a probe conversation
whose contents are placeholder words (found again in the render):
  header      what the generation prompt adds after a user turn: the render with
              `add_generation_prompt` minus the render without it, cut after their common part
              at a token boundary (a template that appends eos when no generation prompt is
              asked for, Phi-3.5-style, then still gives the right header). A generation prompt
              may end inside the assistant's turn (`<think>\\n`, R1-distill style): in a
              conversation, the header is the longest token-aligned start of it found there.
  last turn   everything the template renders after the last assistant content (`<|im_end|>\\n`,
              or `<|return|>` where the last turn ends differently, gpt-oss style, or an end-of-turn
              followed by eos).
  other turns what it renders after an assistant content that a user turn follows, up to where
              the user's turn starts: the last-turn marker when it starts that way; else the
              marker that ends a user turn (the render without generation prompt minus the user's
              content) when it starts that way; else their common start cut at a token boundary;
              else up to and including the first special token.
In a conversation, messages are then found in order: user and tool contents are anchors; each
assistant turn is found as its header after the previous message, its content after the header
(as written, stripped, or only the answer after a reasoning block that the template drops from
earlier turns, Qwen3 style), and the first end-of-turn marker after that, before the next anchor.
Where the template rewrites earlier turns, the conversation is trained as the template renders
it. A template's own generation blocks (the `generation` tag that transformers'
`return_assistant_tokens_mask` reads), where present, one per assistant message, are used
instead: they say which text is the assistant's.

A template with no system role (it raises on one, Gemma style, or leaves it out) gets the
system prompt merged into the first user message, separated by a blank line. System prompts a
template moves elsewhere (to the last user turn, Mistral style) are rendered where it puts them.

Whatever cannot be placed (a template that raises, assistant content it drops, a turn whose
header or end cannot be found) is a DataError naming the template's source, never wrong labels.
"""

from __future__ import annotations

import bisect
import os
import re
from dataclasses import dataclass
from importlib import resources

from .errors import DataError

IGNORE = -100  # label value the loss skips

# ChatML, used when a tokenizer ships without a chat template (base models often do).
CHATML_TEMPLATE = resources.files(__package__).joinpath("chatml.jinja").read_text(encoding="utf-8")

GENERATION_BLOCK = re.compile(r"\{" r"%-?\s*generation\s*-?%" r"\}")  # split: this file is rendered by cookiecutter
# Placeholder contents of the probe conversation: plain words no template rewrites.
PROBE = {"system": "Probesystemxq", "user1": "Probeuserxq", "assistant1": "Probeanswerxq",
         "user2": "Probequestionxq", "assistant2": "Probereplyxq"}


def ensure_chat_template(tokenizer) -> None:
    if not tokenizer.chat_template:
        tokenizer.chat_template = CHATML_TEMPLATE


@dataclass
class Encoded:
    """One example as trained: the rendered text, its tokens and what of it is trained."""

    text: str
    ids: list[int]
    labels: list[int]
    offsets: list[tuple[int, int]]  # character span of each token in `text`


def encode(tokenizer, example: dict, train_on: str, template_source: str = "") -> tuple[list[int], list[int]]:
    """Token ids and labels (IGNORE where no loss is wanted) for one normalised example.

    `example` is what `shapes.read_examples` yields; `template_source` names where the chat
    template came from (model id or file), for error messages. Raises DataError without a
    location: the caller prefixes the record's `file:line`.
    """
    encoded = encode_example(tokenizer, example, train_on, template_source)
    return encoded.ids, encoded.labels


def encode_example(tokenizer, example: dict, train_on: str, template_source: str = "") -> Encoded:
    """`encode`, keeping the rendered text and offsets (for `prepare --show`)."""
    kind = example["kind"]
    if kind == "text":
        ids, offsets = _tokenize(tokenizer, example["text"])
        return _with_eos(tokenizer, Encoded(example["text"], ids, list(ids), offsets))
    if kind == "completion":
        text = example["prompt"] + example["completion"]
        ids, offsets = _tokenize(tokenizer, text)
        spans = [(0, len(text))] if train_on == "all" else [(len(example["prompt"]), len(text))]
        return _with_eos(tokenizer, Encoded(text, ids, _labels(ids, offsets, spans), offsets))
    if kind != "chat":
        raise DataError(f"examples of kind {kind!r} are not supported")

    template = _analyse(tokenizer, template_source)
    messages = [{key: value for key, value in message.items() if value is not None} for message in example["messages"]]
    if template.merge_system:
        messages = _merge_system(messages)
    tools = example.get("tools") or None
    text, spans = template.render_with_blocks(messages, tools) if template.generation_blocks else (None, [])
    assistants = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if text is not None and len(spans) == len(assistants):
        spans = [span for span, i in zip(spans, assistants, strict=True) if messages[i].get("weight", 1) != 0]
    else:  # no generation blocks, or not one per assistant message
        text = template.render(messages, tools)
        spans = template.assistant_spans(text, messages)
    if train_on == "all":
        spans = [(0, len(text))]
    ids, offsets = _tokenize(tokenizer, text)
    return Encoded(text, ids, _labels(ids, offsets, spans), offsets)


def render_prompt(tokenizer, messages: list[dict], tools: list | None = None, template_source: str = "") -> str:
    """A conversation rendered up to the assistant's next answer (the generation prompt), the
    way training rendered it: a system prompt merged where the template has no system role."""
    template = _analyse(tokenizer, template_source)
    messages = [{key: value for key, value in message.items() if value is not None} for message in messages]
    if template.merge_system:
        messages = _merge_system(messages)
    return template.render(messages, tools or None, add_generation_prompt=True)


def _with_eos(tokenizer, encoded: Encoded) -> Encoded:
    """Plain text (no chat template) ends with eos, so the model learns to stop."""
    if tokenizer.eos_token_id is None:
        return encoded
    eos = [tokenizer.eos_token_id]
    end = len(encoded.text)
    return Encoded(encoded.text + tokenizer.eos_token, encoded.ids + eos, encoded.labels + eos, encoded.offsets + [(end, end + len(tokenizer.eos_token))])


def _tokenize(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Ids and character offsets of the whole text, as `tokenizer(text, add_special_tokens=False)`."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise DataError(f"{tokenizer.name_or_path}: a fast tokenizer (with character offsets) is needed")
    encoding = backend.encode(text, add_special_tokens=False)
    return encoding.ids, encoding.offsets


def _labels(ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    """`ids` where a token overlaps one of the (sorted, disjoint) spans, else IGNORE."""
    labels = [IGNORE] * len(ids)
    # Offsets can be trimmed (a byte-level tokenizer leaves a token's leading space out), so a
    # token is taken to run from its start to the next token's start: every character belongs
    # to exactly one token, and a whitespace-only token cannot fall between two spans.
    starts = [start for start, _ in offsets]
    for begin, end in spans:
        if end <= begin:
            continue
        first = max(0, bisect.bisect_right(starts, begin) - 1)
        while first > 0 and starts[first - 1] == starts[first]:  # bytes of one character, split
            first -= 1
        last = bisect.bisect_left(starts, end)
        labels[first:last] = ids[first:last]
    return labels


def _merge_system(messages: list[dict]) -> list[dict]:
    """System prompts joined into the first user message, for templates without a system role."""
    system = "\n\n".join(_text(m) for m in messages if m["role"] == "system")
    rest = [m for m in messages if m["role"] != "system"]
    if not system:
        return rest
    for i, message in enumerate(rest):
        if message["role"] == "user":
            return [*rest[:i], {**message, "content": f"{system}\n\n{_text(message)}"}, *rest[i + 1 :]]
    return [{"role": "user", "content": system}, *rest]


def _text(message: dict) -> str:
    """A message's content as text (a list of parts joins its text parts)."""
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


def _answer_candidates(content: str) -> list[str]:
    """What of an assistant's content a template renders: all of it, stripped, or (for an
    earlier turn whose reasoning block the template drops) only the answer after it."""
    candidates = [content, content.strip()]
    if "</think>" in content:
        candidates.append(content.split("</think>")[-1].strip())
    return [c for c in dict.fromkeys(candidates) if c]


def _token_ends(tokenizer, text: str) -> list[int]:
    """Character positions in `text` where a token ends (text tokenized on its own)."""
    _, offsets = _tokenize(tokenizer, text)
    return sorted({end for _, end in offsets})


def _cut_at_token(tokenizer, text: str, length: int) -> int:
    """The longest start of `text`, at most `length` characters, that ends at a token boundary."""
    return max([end for end in _token_ends(tokenizer, text) if end <= length], default=0)


class Template:
    """A chat template, analysed once: how it marks an assistant turn's start and end."""

    def __init__(self, tokenizer, source: str):
        self.source = source or getattr(tokenizer, "name_or_path", "") or "the chat template"
        self.template = tokenizer.chat_template
        self.kwargs = dict(tokenizer.special_tokens_map)
        self.generation_blocks = bool(GENERATION_BLOCK.search(self.template))
        self.merge_system = not self._renders_system()
        p = PROBE
        user1, user2 = {"role": "user", "content": p["user1"]}, {"role": "user", "content": p["user2"]}
        answer1, answer2 = {"role": "assistant", "content": p["assistant1"]}, {"role": "assistant", "content": p["assistant2"]}
        probe = self._probe_render([user1, answer1, user2, answer2])
        positions = [probe.find(p[key]) for key in ("user1", "assistant1", "user2", "assistant2")]
        if -1 in positions or positions != sorted(positions):
            raise DataError(f"{self.source}: the chat template does not render message contents as given; cannot tell what to train")
        between = probe[positions[1] + len(p["assistant1"]) : positions[2]]
        self.last_end = probe[positions[3] + len(p["assistant2"]) :]

        with_prompt = self._probe_render([user1], add_generation_prompt=True)
        without = self._probe_render([user1])
        after_prompt = with_prompt[with_prompt.find(p["user1"]) + len(p["user1"]) :]
        after_user = without[without.find(p["user1"]) + len(p["user1"]) :]
        if after_prompt.startswith(after_user):
            self.user_end = after_user
        else:  # e.g. eos appended when no generation prompt is asked for
            self.user_end = after_prompt[: _cut_at_token(tokenizer, after_prompt, len(os.path.commonprefix([after_prompt, after_user])))]
        header = after_prompt[len(self.user_end) :]
        # Token-aligned starts of the header, longest first: where the generation prompt goes on
        # inside the turn (`<think>\n`), a rendered turn has only its start.
        self.headers = [header[:end] for end in reversed(_token_ends(tokenizer, header))] if header else []

        self.turn_end = self._turn_end(tokenizer, between)
        for before in (probe[positions[0] : positions[1]], probe[positions[2] : positions[3]]):
            # The analysis must place the probe's own turns: a header before each answer.
            if self.headers and not any(h in before for h in self.headers):
                raise DataError(f"{self.source}: cannot find the assistant header {header!r} in a rendered conversation")

    def _turn_end(self, tokenizer, between: str) -> str:
        if self.last_end and between.startswith(self.last_end):
            return self.last_end
        if self.user_end and between.startswith(self.user_end):
            return self.user_end
        common = _cut_at_token(tokenizer, between, len(os.path.commonprefix([between, self.last_end])))
        if common:
            return between[:common]
        specials = [t.content for t in tokenizer.added_tokens_decoder.values() if t.special and t.content in between]
        if specials:
            first = min(specials, key=lambda s: (between.find(s), -len(s)))
            return between[: between.find(first) + len(first)]
        raise DataError(f"{self.source}: cannot tell where an assistant turn ends (the template renders {between!r} before the next turn)")

    def _renders_system(self) -> bool:
        p = PROBE
        conversation = [{"role": "system", "content": p["system"]}, {"role": "user", "content": p["user1"]},
                        {"role": "assistant", "content": p["assistant1"]}]
        try:
            return p["system"] in self.render(conversation, None)
        except DataError:
            self._probe_render(conversation[1:])  # raises with the template's own error when even that fails
            return False

    def _probe_render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        try:
            return self.render(messages, None, add_generation_prompt)
        except DataError as err:
            raise DataError(f"{err} (a plain user/assistant conversation)") from None

    def render(self, messages: list[dict], tools: list | None, add_generation_prompt: bool = False) -> str:
        from transformers.utils.chat_template_utils import render_jinja_template

        try:
            rendered, _ = render_jinja_template(
                conversations=[messages], tools=tools, chat_template=self.template,
                add_generation_prompt=add_generation_prompt, **self.kwargs,
            )
        except Exception as err:  # a template's raise_exception, or any error inside the template
            first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise DataError(f"{self.source}: the chat template fails on this conversation ({first_line})") from None
        return rendered[0]

    def render_with_blocks(self, messages: list[dict], tools: list | None) -> tuple[str, list[tuple[int, int]]]:
        from transformers.utils.chat_template_utils import render_jinja_template

        try:
            rendered, blocks = render_jinja_template(
                conversations=[messages], tools=tools, chat_template=self.template,
                return_assistant_tokens_mask=True, **self.kwargs,
            )
        except Exception as err:
            first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise DataError(f"{self.source}: the chat template fails on this conversation ({first_line})") from None
        return rendered[0], [tuple(span) for span in blocks[0]]

    def assistant_spans(self, text: str, messages: list[dict]) -> list[tuple[int, int]]:
        """Character spans of the trained assistant turns in `text`, the render of `messages`."""
        spans = []
        cursor = 0
        anchors = [i for i, m in enumerate(messages) if m["role"] not in ("assistant", "system")]
        for i, message in enumerate(messages):
            role = message["role"]
            if role == "system":
                continue  # rendered where the template puts it, not necessarily here
            content = _text(message)
            if role != "assistant":
                at, found = _find_any(text, [content, content.strip()], cursor, len(text))
                if at < 0:
                    raise DataError(f"{self.source}: the chat template does not render message {i} ({role}) as given")
                cursor = at + len(found)
                if self.user_end and text.startswith(self.user_end, cursor):
                    cursor += len(self.user_end)
                continue
            later = [a for a in anchors if a > i]
            start, end = self._place_turn(text, message, i, cursor, later[0] if later else None, messages)
            if message.get("weight", 1) != 0:
                spans.append((start, end))
            cursor = end
        return spans

    def _place_turn(self, text: str, message: dict, i: int, cursor: int, next_anchor: int | None, messages) -> tuple[int, int]:
        candidates = _answer_candidates(_text(message))
        body = _find_header_end(text, self.headers, cursor)
        answer_at, answer = _find_any(text, candidates, body if body >= 0 else cursor, len(text)) if candidates else (-1, "")
        if candidates and answer_at < 0 and body >= 0:  # the header found belongs to a later turn
            answer_at, answer = _find_any(text, candidates, cursor, len(text))
            body = -1
        if candidates and answer_at < 0:
            raise DataError(f"{self.source}: the chat template leaves out the content of assistant message {i}; cannot train it")
        if body < 0 or (answer_at >= 0 and body > answer_at):
            before = text[cursor:answer_at] if answer_at >= 0 else ""
            ends = [before.rfind(h) + len(h) for h in self.headers if h and before.rfind(h) >= 0]
            body = cursor + max(ends) if ends else answer_at
        if body < 0:
            raise DataError(f"{self.source}: cannot find where assistant message {i} starts in the rendered conversation")
        search_from = answer_at + len(answer) if answer_at >= 0 else body
        limit = len(text)
        if next_anchor is not None:
            next_content = _text(messages[next_anchor])
            at, _ = _find_any(text, [next_content, next_content.strip()], search_from, len(text))
            limit = at if at >= 0 else limit
        markers = [self.last_end, self.turn_end] if next_anchor is None and i == len(messages) - 1 else [self.turn_end]
        for marker in markers:
            if not marker:
                continue
            at = text.find(marker, search_from, limit)
            if at >= 0:
                return body, at + len(marker)
        raise DataError(f"{self.source}: cannot find the end of assistant message {i} (expected {self.turn_end!r})")


def _find_any(text: str, candidates: list[str], start: int, end: int) -> tuple[int, str]:
    """The first candidate (in the given order of preference) found in text[start:end]."""
    for candidate in candidates:
        if not candidate:
            continue
        at = text.find(candidate, start, end)
        if at >= 0:
            return at, candidate
    return -1, ""


def _find_header_end(text: str, headers: list[str], start: int) -> int:
    """End of the first assistant header after `start` (as much of it as the template rendered
    there; `headers` are its token-aligned starts, longest first), or -1."""
    if not headers:
        return -1
    at = text.find(headers[-1], start)
    if at < 0:
        return -1
    return at + len(next(h for h in headers if text.startswith(h, at)))


def template_notes(tokenizer, source: str = "") -> str:
    """What the analysis found in the chat template, in words (for `prepare --show`)."""
    template = _analyse(tokenizer, source)
    if template.generation_blocks:
        return f"chat template of {template.source}: trained text marked by its own generation blocks"
    lines = [
        f"chat template of {template.source}: assistant header {template.headers[0] if template.headers else ''!r}, "
        f"end of turn {template.turn_end!r}, end of the last turn {template.last_end!r}"
    ]
    if template.merge_system:
        lines.append("it has no system role: system prompts are merged into the first user message")
    return "\n".join(lines)


_TEMPLATES: dict[tuple, Template] = {}
_LAST: list = [None, None, None, None]  # tokenizer, template text, source, analysis: the common case, checked fast


def _analyse(tokenizer, source: str) -> Template:
    """The template's analysis, made once per template and tokenizer (the probe renders and
    tokenizes a few texts: too slow to repeat per conversation)."""
    ensure_chat_template(tokenizer)
    last_tokenizer, last_template, last_source, analysis = _LAST
    if last_tokenizer is tokenizer and last_template is tokenizer.chat_template and last_source == source:
        return analysis
    key = (tokenizer.chat_template, getattr(tokenizer, "name_or_path", ""), len(tokenizer), source,
           tuple(sorted(tokenizer.special_tokens_map.items(), key=str)))
    if key not in _TEMPLATES:
        _TEMPLATES[key] = Template(tokenizer, source)
    _LAST[:] = [tokenizer, tokenizer.chat_template, source, _TEMPLATES[key]]
    return _TEMPLATES[key]
