"""Preference data: its shapes, its refusals (naming file:line), and what of each side is trained.

Every chat template of the test set (tests/chat_templates/) renders a pair; the trained tokens
of chosen and rejected are decoded and compared with the text that should be trained, and the
prompt tokens of both sides must be the very same ids.
"""

import copy
import json
from pathlib import Path

import pytest

from {{ cookiecutter.package_name }} import data
from {{ cookiecutter.package_name }}.data import preference
from {{ cookiecutter.package_name }}.data.pairs import pack_pairs

from conftest import PROJECT, run_cli

TEMPLATES = Path(__file__).parent / "chat_templates"
PROMPT = [
    {"role": "system", "content": "You are support."},
    {"role": "user", "content": "My sync fails."},
    {"role": "assistant", "content": "Restart the app."},
    {"role": "user", "content": "Still failing."},
]
CHOSEN, REJECTED = "Send us the log.", "Reinstall everything."
PAIR = {"prompt": PROMPT, "chosen": [{"role": "assistant", "content": CHOSEN}], "rejected": [{"role": "assistant", "content": REJECTED}]}
# Each template of tests/chat_templates with the special tokens it uses, and the end of an assistant's
# last turn as it renders it: what must be trained after the answer, and nothing more.
TEMPLATE_ENDS = {
    None: ("", "<|im_end|>\n", ()),  # the real SmolLM2 template (ChatML)
    "eos_without_prompt": ("", "<|end|>\n<|im_end|>", ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")),
    "generation_blocks": ("", "<|im_end|>", ()),
    "header_lines": ("", "<|eot_id|>", ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")),
    "last_turn_returns": ("<|channel|>final<|message|>", "<|return|>", ("<|start|>", "<|channel|>", "<|message|>", "<|end|>", "<|return|>")),
    "no_system_role": ("", "<end_of_turn>\n", ("<start_of_turn>", "<end_of_turn>")),
    "prompt_opens_thinking": ("", "<|end_of_sentence|>", ("<|User|>", "<|Assistant|>", "<|end_of_sentence|>")),
    "reasoning_last_turn": ("<think>\n\n</think>\n\n", "<|im_end|>\n", ()),
    "refuses_word": ("", "<|im_end|>\n", ()),
    "system_in_last_user": (" ", "<|im_end|>", ()),
    "tools": ("", "<|im_end|>\n", ()),
}
# Templates the supervised path already refuses (tests/test_chat.py): a pair is refused the same way.
REFUSED = {"drops_past_answers", "tool_call_names"}


@pytest.fixture(scope="module")
def real_tokenizer(real_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(real_model)


def with_template(tokenizer, name, special):
    tokenizer = copy.deepcopy(tokenizer)
    if special:
        tokenizer.add_special_tokens({"additional_special_tokens": list(special)})
    tokenizer.chat_template = (TEMPLATES / f"{name}.jinja").read_text()
    return tokenizer


def trained(tokenizer, encoded) -> str:
    return tokenizer.decode([i for i, label in zip(encoded.ids, encoded.labels, strict=True) if label != data.IGNORE])


def normalised(record: dict, fmt: str = "auto") -> dict:
    from {{ cookiecutter.package_name }}.data.shapes import normalise

    return normalise(record, fmt)


def test_every_template_of_the_test_set_is_covered():
    assert {p.stem for p in TEMPLATES.glob("*.jinja")} == (set(TEMPLATE_ENDS) - {None}) | REFUSED


@pytest.mark.parametrize("name", list(TEMPLATE_ENDS), ids=lambda n: n or "smollm2")
def test_each_side_trains_its_answer_and_the_turn_end_once(real_tokenizer, name):
    start, end, special = TEMPLATE_ENDS[name]
    tokenizer = real_tokenizer if name is None else with_template(real_tokenizer, name, special)
    pair = preference.encode_pair(tokenizer, normalised(PAIR), "test-template")
    assert trained(tokenizer, pair.chosen) == start + CHOSEN + end
    assert trained(tokenizer, pair.rejected) == start + REJECTED + end
    # The same prompt ids on both sides, and all of them before the first trained token.
    assert pair.chosen.ids[: pair.prompt_tokens] == pair.rejected.ids[: pair.prompt_tokens]
    assert pair.chosen.labels[pair.prompt_tokens] != data.IGNORE
    # Both sides are what rendering the whole conversation and tokenizing it at once gives.
    for side in (pair.chosen, pair.rejected):
        assert side.ids == tokenizer(side.text, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token:  # never a second eos after the template's end of turn
        assert not (start + CHOSEN + end).endswith(tokenizer.eos_token * 2)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_templates_that_cannot_be_placed_are_refused_for_pairs_too(real_tokenizer, name):
    with pytest.raises(data.DataError, match="test-template"):
        preference.encode_pair(with_template(real_tokenizer, name, ()), normalised(PAIR), "test-template")


def test_plain_text_pairs_end_with_one_eos(real_tokenizer):
    eos = real_tokenizer.eos_token
    pair = preference.encode_pair(real_tokenizer, normalised({"prompt": "Q: sync fails?\nA:", "chosen": " Send the log." + eos,
                                                              "rejected": " Reinstall."}))
    assert trained(real_tokenizer, pair.chosen) == " Send the log." + eos
    assert trained(real_tokenizer, pair.rejected) == " Reinstall." + eos


def test_implicit_prompt_is_the_shared_messages(real_tokenizer):
    record = {"chosen": PROMPT + PAIR["chosen"], "rejected": PROMPT + PAIR["rejected"]}
    example = normalised(record)
    assert example["prompt"] == normalised(PAIR)["prompt"]
    explicit = preference.encode_pair(real_tokenizer, normalised(PAIR))
    implicit = preference.encode_pair(real_tokenizer, example)
    assert (implicit.chosen.ids, implicit.chosen.labels) == (explicit.chosen.ids, explicit.chosen.labels)
    assert (implicit.rejected.ids, implicit.rejected.labels) == (explicit.rejected.ids, explicit.rejected.labels)


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.mark.parametrize("bad, message", [
    ({"chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
      "rejected": [{"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}, "share no message"),
    ({"chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
      "rejected": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}, "not at an assistant answer"),
    ({"chosen": "Hello there", "rejected": "Hello world"}, "never cut from text by characters"),
    ({"prompt": PROMPT, "chosen": [{"role": "user", "content": "x"}], "rejected": PAIR["rejected"]}, "'chosen' has no assistant message"),
    ({"prompt": "Q", "chosen": [{"role": "assistant", "content": "x"}], "rejected": "y"}, "'chosen' must be a string too"),
])
def test_bad_pairs_are_refused_naming_file_and_line(tmp_path, bad, message):
    good = PAIR if "prompt" in bad else {"chosen": PROMPT + PAIR["chosen"], "rejected": PROMPT + PAIR["rejected"]}
    path = write_jsonl(tmp_path / "prefs.jsonl", [good, good, bad])
    with pytest.raises(data.DataError, match=f"prefs.jsonl:3: .*{message}"):
        list(data.read_examples(path))


def test_pairs_whose_prompt_tokens_differ_stop_prepare_with_file_and_line(tmp_path, real_model):
    # Plain text: the prompt's last characters merge with one answer's first ones ("Hello wor" + "ld"
    # is the one token " world"; "Hello wor" + " apple" keeps " wor"), so the sides would not share
    # the prompt tokens.
    records = [{"prompt": "Q: how many?\nA:", "chosen": " three", "rejected": " four"}] * 3
    records.append({"prompt": "Hello wor", "chosen": "ld", "rejected": " apple"})
    path = write_jsonl(tmp_path / "prefs.jsonl", records)
    result = run_cli("prepare", "--set", f"model.base={real_model}", "--set", f"data.path={path}",
                     "--set", f"data.prepared_dir={tmp_path / 'prepared'}", "--set", "data.num_proc=1", cwd=PROJECT)
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"{path}:4: 'chosen' and 'rejected' do not start with the same prompt tokens" in result.stderr
    assert not (tmp_path / "prepared").exists()


def test_pairs_are_packed_side_by_side_with_positions_restarting(real_tokenizer):
    pairs = [preference.encode_pair(real_tokenizer, normalised({**PAIR, "chosen": [{"role": "assistant", "content": "Log " * k}]}))
             for k in (1, 5, 9)]
    encoded = [((p.chosen.ids, p.chosen.labels), (p.rejected.ids, p.rejected.labels)) for p in pairs]
    rows, stats = pack_pairs(encoded, 256, real_tokenizer.pad_token_id or 0)
    assert stats["pairs"] == 3
    found = []
    for ids, positions in zip(rows["input_ids"], rows["position_ids"], strict=True):
        starts = [i for i, p in enumerate(positions) if p == 0] + [len(ids)]
        sequences = [ids[a:b].tolist() for a, b in zip(starts, starts[1:], strict=False)]
        found += [tuple(s) for s in sequences]
    for (chosen, _), (rejected, _) in encoded:  # each pair's sides are neighbours: chosen, then rejected
        assert found[found.index(tuple(chosen)) + 1] == tuple(rejected)


def test_prepare_show_marks_each_sides_trained_part(tmp_path, real_model):
    path = write_jsonl(tmp_path / "prefs.jsonl", [PAIR] * 3)
    result = run_cli("prepare", "--show", "1", "--set", f"model.base={real_model}", "--set", f"data.path={path}", cwd=PROJECT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"{path}:1: a pair" in result.stdout
    assert f"[[{CHOSEN}<|im_end|>\n]]" in result.stdout
    assert f"[[{REJECTED}<|im_end|>\n]]" in result.stdout
    assert result.stdout.count("Still failing.") == 2  # each side shown whole, with its prompt
