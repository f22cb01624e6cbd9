"""Which tokens are trained, for chat templates of every family, with a real tokenizer.

The templates in tests/chat_templates/ are written for these tests, one per way real templates
differ (see the first line of each). Every test decodes the trained tokens and compares them
with the text that should be trained, exactly.
"""

import copy
import json
from pathlib import Path

import pytest

from {{ cookiecutter.package_name }} import data
from {{ cookiecutter.package_name }}.data import chat

from conftest import run_cli

TEMPLATES = Path(__file__).parent / "chat_templates"

CHAT = [
    {"role": "system", "content": "You are support."},
    {"role": "user", "content": "My sync fails."},
    {"role": "assistant", "content": "Restart the app."},
    {"role": "user", "content": "Still failing."},
    {"role": "assistant", "content": "Send us the log."},
]


@pytest.fixture(scope="module")
def real_tokenizer(real_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(real_model)


def with_template(tokenizer, name: str, *special_tokens: str):
    """The real tokenizer with one of the test templates (and the special tokens it uses)."""
    tokenizer = copy.deepcopy(tokenizer)
    if special_tokens:
        tokenizer.add_special_tokens({"additional_special_tokens": list(special_tokens)})
    tokenizer.chat_template = (TEMPLATES / f"{name}.jinja").read_text()
    return tokenizer


def conversation(messages, tools=None) -> dict:
    return {"kind": "chat", "messages": messages, "tools": tools}


def encode(tokenizer, example, train_on="assistant") -> chat.Encoded:
    encoded = chat.encode_example(tokenizer, example, train_on, template_source="test-template")
    # The ids are always those of the whole rendered text, tokenized at once.
    assert encoded.ids == tokenizer(encoded.text, add_special_tokens=False)["input_ids"]
    assert len(encoded.labels) == len(encoded.ids)
    return encoded


def trained(tokenizer, encoded) -> str:
    return tokenizer.decode([i for i, label in zip(encoded.ids, encoded.labels, strict=True) if label != data.IGNORE])


def test_real_template_trains_answers_and_their_end_of_turn(real_tokenizer):
    encoded = encode(real_tokenizer, conversation(CHAT))
    assert trained(real_tokenizer, encoded) == "Restart the app.<|im_end|>\nSend us the log.<|im_end|>\n"
    assert encoded.ids == real_tokenizer.apply_chat_template(CHAT, tokenize=True, return_dict=False)
    assert data.encode(real_tokenizer, conversation(CHAT), "assistant") == (encoded.ids, encoded.labels)


def test_train_on_all_trains_every_token(real_tokenizer):
    encoded = encode(real_tokenizer, conversation(CHAT), train_on="all")
    assert encoded.labels == encoded.ids


def test_weight_zero_answers_are_context(real_tokenizer):
    messages = [dict(m) for m in CHAT]
    messages[2]["weight"] = 0
    encoded = encode(real_tokenizer, conversation(messages))
    assert trained(real_tokenizer, encoded) == "Send us the log.<|im_end|>\n"
    assert "Restart the app." in encoded.text


def test_a_short_answer_is_not_found_inside_the_header(real_tokenizer):
    messages = [{"role": "user", "content": "Pick a letter."}, {"role": "assistant", "content": "a"}]
    assert trained(real_tokenizer, encode(real_tokenizer, conversation(messages))) == "a<|im_end|>\n"


def test_characters_split_across_byte_tokens(real_tokenizer):
    messages = [{"role": "user", "content": "Done?"}, {"role": "assistant", "content": "✅ 完了"}]
    assert trained(real_tokenizer, encode(real_tokenizer, conversation(messages))) == "✅ 完了<|im_end|>\n"


def test_answer_repeating_the_question_is_placed_after_it(real_tokenizer):
    messages = [{"role": "user", "content": "Say: it works."}, {"role": "assistant", "content": "it works."},
                {"role": "user", "content": "it works."}, {"role": "assistant", "content": "Great."}]
    assert trained(real_tokenizer, encode(real_tokenizer, conversation(messages))) == "it works.<|im_end|>\nGreat.<|im_end|>\n"


def test_prefix_stable_header_template(real_tokenizer):
    tokenizer = with_template(real_tokenizer, "header_lines", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
    messages = [dict(m) for m in CHAT]
    messages[4]["content"] = "Send us the log.  \n"  # the template trims it
    encoded = encode(tokenizer, conversation(messages))
    assert trained(tokenizer, encoded) == "Restart the app.<|eot_id|>Send us the log.<|eot_id|>"


def test_ids_equal_whole_text_tokenization_across_a_bpe_merge(real_tokenizer):
    """`\\n\\n` then a word: tokenized apart, `\\n\\n` is one token; in the whole text, two."""
    tokenizer = with_template(real_tokenizer, "header_lines", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
    messages = CHAT[1:3]
    encoded = encode(tokenizer, conversation(messages))
    prompt = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("\n\n") and encoded.text.startswith(prompt)
    piecewise = tokenizer(prompt, add_special_tokens=False)["input_ids"] + tokenizer(encoded.text[len(prompt) :], add_special_tokens=False)["input_ids"]
    assert piecewise != encoded.ids  # what rendering turn by turn would have trained on
    assert trained(tokenizer, encoded) == "Restart the app.<|eot_id|>"


def test_reasoning_kept_in_the_last_turn_only_is_trained_as_rendered(real_tokenizer):
    tokenizer = with_template(real_tokenizer, "reasoning_last_turn")
    messages = [dict(m) for m in CHAT]
    messages[2]["content"] = "<think>A restart fixes most sync errors.</think>Restart the app."
    messages[4]["content"] = "<think>The log will say more.</think>\n\nSend us the log."
    encoded = encode(tokenizer, conversation(messages))
    assert "A restart fixes" not in encoded.text
    assert trained(tokenizer, encoded) == (
        "Restart the app.<|im_end|>\n<think>\nThe log will say more.\n</think>\n\nSend us the log.<|im_end|>\n"
    )


def test_generation_prompt_that_opens_a_think_block(real_tokenizer):
    tokenizer = with_template(real_tokenizer, "prompt_opens_thinking", "<|User|>", "<|Assistant|>", "<|end_of_sentence|>")
    assert tokenizer.apply_chat_template(CHAT[:2], tokenize=False, add_generation_prompt=True).endswith("<|Assistant|><think>\n")
    encoded = encode(tokenizer, conversation(CHAT))
    assert trained(tokenizer, encoded) == "Restart the app.<|end_of_sentence|>Send us the log.<|end_of_sentence|>"


def test_last_turn_with_its_own_terminator(real_tokenizer):
    tokenizer = with_template(real_tokenizer, "last_turn_returns", "<|start|>", "<|channel|>", "<|message|>", "<|end|>", "<|return|>")
    encoded = encode(tokenizer, conversation(CHAT))
    assert trained(tokenizer, encoded) == (
        "<|channel|>final<|message|>Restart the app.<|end|><|channel|>final<|message|>Send us the log.<|return|>"
    )


def test_system_prompt_moved_to_the_last_user_turn(real_tokenizer):
    tokenizer = with_template(real_tokenizer, "system_in_last_user")
    encoded = encode(tokenizer, conversation(CHAT))
    assert "[INST] You are support.\n\nStill failing. [/INST]" in encoded.text
    assert trained(tokenizer, encoded) == " Restart the app.<|im_end|> Send us the log.<|im_end|>"


def test_template_without_system_role_gets_it_in_the_first_user_message(real_tokenizer):
    tokenizer = with_template(real_tokenizer, "no_system_role", "<start_of_turn>", "<end_of_turn>")
    with pytest.raises(Exception, match="System role not supported"):
        tokenizer.apply_chat_template(CHAT, tokenize=False)
    encoded = encode(tokenizer, conversation(CHAT))
    assert "<start_of_turn>user\nYou are support.\n\nMy sync fails.<end_of_turn>" in encoded.text
    assert trained(tokenizer, encoded) == "Restart the app.<end_of_turn>\nSend us the log.<end_of_turn>\n"
    # Held-out prompts are rendered the same way for evaluation.
    prompt = chat.render_prompt(tokenizer, CHAT[:4])
    assert prompt == encoded.text[: encoded.text.index("Send us the log.")]


def test_eos_appended_without_generation_prompt(real_tokenizer):
    """Cutting the generation-prompt render at the length of the previous render would cut
    inside the appended eos; the whole render has no such cut."""
    tokenizer = with_template(real_tokenizer, "eos_without_prompt", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
    encoded = encode(tokenizer, conversation(CHAT))
    assert encoded.text.endswith("Send us the log.<|end|>\n<|im_end|>")
    assert trained(tokenizer, encoded) == "Restart the app.<|end|>\nSend us the log.<|end|>\n<|im_end|>"


def test_generation_blocks_are_used_and_agree_with_transformers(real_tokenizer):
    tokenizer = with_template(real_tokenizer, "generation_blocks")
    encoded = encode(tokenizer, conversation(CHAT))
    assert trained(tokenizer, encoded) == "Restart the app.<|im_end|>Send us the log.<|im_end|>"
    reference = tokenizer.apply_chat_template(CHAT, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    assert reference["input_ids"] == encoded.ids
    assert reference["assistant_masks"] == [int(label != data.IGNORE) for label in encoded.labels]
    # The same template without its blocks: found from the template alone, the same answers
    # (with the newline the template renders after the end-of-turn token).
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = tokenizer.chat_template.replace("{" "% generation %" "}", "").replace("{" "% endgeneration %" "}", "")
    assert trained(plain, encode(plain, conversation(CHAT))) == "Restart the app.<|im_end|>\nSend us the log.<|im_end|>\n"


# Built from parts: closing braces written together would read as template syntax to the
# template's own leftover-Jinja check.
CITY = {"city": "Paris"}
CITY_SCHEMA = {"type": "object", "properties": dict(city={"type": "string"})}
WEATHER = {"name": "get_weather", "description": "Weather now in a city", "parameters": CITY_SCHEMA}
TOOLS = [{"type": "function", "function": WEATHER}]
CALL = {"type": "function", "function": dict(name="get_weather", arguments=CITY)}
TOOL_CHAT = [
    {"role": "user", "content": "Is it raining in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "content": "rain, 12 C"},
    {"role": "assistant", "content": "Yes, it rains: 12 C."},
]


def test_tool_calls_are_trained_and_tool_results_are_not(real_tokenizer):
    tokenizer = with_template(real_tokenizer, "tools")
    encoded = encode(tokenizer, conversation(TOOL_CHAT, TOOLS))
    assert "Tools: get_weather" in encoded.text and "rain, 12 C" in encoded.text
    assert trained(tokenizer, encoded) == (
        "<tool_call>" + json.dumps({"name": "get_weather", "arguments": CITY}) + "</tool_call><|im_end|>\n"
        "Yes, it rains: 12 C.<|im_end|>\n"
    )


def test_text_and_completion_examples(real_tokenizer):
    text = encode(real_tokenizer, {"kind": "text", "text": "plain words"})
    assert text.labels == text.ids and text.ids[-1] == real_tokenizer.eos_token_id
    completion = encode(real_tokenizer, {"kind": "completion", "prompt": "Q: 2+2?\nA:", "completion": " 4"})
    assert trained(real_tokenizer, completion) == " 4<|im_end|>"
    assert real_tokenizer.decode(completion.ids) == "Q: 2+2?\nA: 4<|im_end|>"


@pytest.mark.parametrize(
    "template, message",
    [
        ("refuses_word", "the chat template fails on this conversation (Conversation roles must alternate user/assistant)"),
        ("drops_past_answers", "the chat template does not render message contents as given"),
    ],
)
def test_template_failures_name_the_template(real_tokenizer, template, message):
    tokenizer = with_template(real_tokenizer, template)
    messages = [dict(m) for m in CHAT]
    messages[3]["content"] = "This is forbidden."
    with pytest.raises(data.DataError) as err:
        chat.encode(tokenizer, conversation(messages), "assistant", template_source="acme/chat-7b")
    assert str(err.value).startswith(f"acme/chat-7b: {message}")


def test_assistant_content_the_template_drops_is_an_error(real_tokenizer):
    tokenizer = with_template(real_tokenizer, "reasoning_last_turn")
    messages = [*CHAT[1:3], {"role": "user", "content": "And?"}, {"role": "assistant", "content": "Done."}]
    messages[1] = {"role": "assistant", "content": "<think>Only thinking, no answer.</think>"}
    with pytest.raises(data.DataError, match="acme/chat-7b: the chat template leaves out the content of assistant message 1"):
        chat.encode(tokenizer, conversation(messages), "assistant", template_source="acme/chat-7b")


def test_prepare_stops_on_a_failing_template_with_file_line_and_exit_2(tmp_path, real_tokenizer, make_params):
    model_dir = tmp_path / "model"
    with_template(real_tokenizer, "refuses_word").save_pretrained(model_dir)
    path = tmp_path / "chats.jsonl"
    good = {"messages": CHAT}
    bad = {"messages": [*CHAT[:3], {"role": "user", "content": "forbidden words"}, CHAT[4]]}
    path.write_text("".join(json.dumps(r) + "\n" for r in [good, good, bad, good]))
    params = make_params(f"model.base={model_dir}", f"data.path={path}", "data.val_fraction=0.25")
    with pytest.raises(data.DataError, match=f"^{path}:3: {model_dir}: the chat template fails"):
        data.prepare(params, log=lambda *_: None)
    result = run_cli("prepare", "--set", f"model.base={model_dir}", "--set", f"data.path={path}",
                     "--set", f"data.prepared_dir={tmp_path / 'prepared'}")
    assert result.returncode == 2, result.stderr
    # The last line (after the progress bars) is the one error line.
    assert result.stderr.splitlines()[-1].startswith(f"error: {path}:3: {model_dir}: the chat template fails on this conversation")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "prepared").exists()


def test_prepare_show_marks_the_trained_text_and_writes_nothing(tmp_path, tiny_model_dir, sample_data):
    lines = [line for line in sample_data.read_text().splitlines() if line.strip()]
    first = json.loads(lines[0])["messages"]
    result = run_cli("prepare", "--show", "2", "--set", f"model.base={tiny_model_dir}", "--set", f"data.path={sample_data}",
                     "--set", f"data.prepared_dir={tmp_path / 'prepared'}")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith(f"2 of {len(lines)} examples of {sample_data}") and "trained text between [[ and ]]" in out
    # The first record and the middle one: spread through the file, each with its line.
    assert [line.split(": ")[0] for line in out.splitlines() if line.startswith("--- ")] == [
        f"--- {sample_data}:1", f"--- {sample_data}:{len(lines) // 2 + 1}"]
    answers = [m["content"] for m in first if m["role"] == "assistant"]
    for answer in answers:
        assert f"<|im_start|>assistant\n[[{answer}<|im_end|>\n]]" in out
    assert f"[[{first[1]['content']}" not in out and f"{first[1]['content']}" in out  # the user turn: shown, not trained
    assert not (tmp_path / "prepared").exists()
