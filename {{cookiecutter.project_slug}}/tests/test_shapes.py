"""Every data shape from every kind of file, read into the same normalised examples; every bad file
stopped with `file:line: what`."""

import csv
import json
import subprocess
import sys
import textwrap
from itertools import pairwise
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from {{ cookiecutter.package_name }} import data
from {{ cookiecutter.package_name }}.config import ConfigError, load_params
from {{ cookiecutter.package_name }}.data import readers

from conftest import PARAMS, cli_overrides, run_cli

# One record per shape, as users' files hold it, and the example it must become.
SHAPES = {
    "chat": (
        {"messages": [
            {"role": "system", "content": "You are support."},
            {"role": "user", "content": "My sync fails."},
            {"role": "assistant", "content": "Restart the app."},
        ]},
        {"kind": "chat", "tools": None, "messages": [
            {"role": "system", "content": "You are support."},
            {"role": "user", "content": "My sync fails."},
            {"role": "assistant", "content": "Restart the app."},
        ]},
    ),
    "sharegpt": (
        {"conversations": [
            {"from": "system", "value": "You are support."},
            {"from": "human", "value": "My sync fails."},
            {"from": "gpt", "value": "Restart the app."},
        ]},
        {"kind": "chat", "tools": None, "messages": [
            {"role": "system", "content": "You are support."},
            {"role": "user", "content": "My sync fails."},
            {"role": "assistant", "content": "Restart the app."},
        ]},
    ),
    "instruction": (
        {"instruction": "Translate to French", "input": "hello", "output": "bonjour"},
        {"kind": "chat", "tools": None, "messages": [
            {"role": "user", "content": "Translate to French\n\nhello"},
            {"role": "assistant", "content": "bonjour"},
        ]},
    ),
    "completion": (
        {"prompt": "The capital of France is", "completion": " Paris."},
        {"kind": "completion", "prompt": "The capital of France is", "completion": " Paris."},
    ),
    "text": (
        {"text": "Plain words to learn."},
        {"kind": "text", "text": "Plain words to learn."},
    ),
}
# TRL's conversational prompt/completion: an assistant turn in the prompt is context (weight 0).
CONVERSATIONAL_COMPLETION = (
    {"prompt": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello, how can I help?"},
        {"role": "user", "content": "My sync fails."},
    ], "completion": [{"role": "assistant", "content": "Restart the app."}]},
    {"kind": "chat", "tools": None, "messages": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello, how can I help?", "weight": 0},
        {"role": "user", "content": "My sync fails."},
        {"role": "assistant", "content": "Restart the app."},
    ]},
)


def write(path, kind, records):
    """`records` written as a user's file of `kind`; returns the path `data.path` names."""
    if kind == "jsonl":
        path = path.with_suffix(".jsonl")
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    elif kind == "json":
        path = path.with_suffix(".json")
        path.write_text(json.dumps(records, indent=2), encoding="utf-8")
    elif kind == "csv":
        path = path.with_suffix(".csv")
        columns = list(dict.fromkeys(key for r in records for key in r))
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            for r in records:  # lists (messages, conversations) as JSON cells
                writer.writerow([v if isinstance(v, str) else json.dumps(v) for v in (r.get(c, "") for c in columns)])
    elif kind == "parquet":
        path = path.with_suffix(".parquet")
        pq.write_table(pa.Table.from_pylist(records), path)
    elif kind == "saved":
        import datasets

        datasets.Dataset.from_list(records).save_to_disk(str(path))
    return path


FILE_KINDS = ["jsonl", "json", "csv", "parquet", "saved"]
CASES = [(shape, *SHAPES[shape]) for shape in SHAPES] + [("completion", *CONVERSATIONAL_COMPLETION)]


@pytest.mark.parametrize("kind", FILE_KINDS)
@pytest.mark.parametrize("shape, record, expected", CASES, ids=[*SHAPES, "completion-conversational"])
def test_every_shape_from_every_kind_of_file(tmp_path, kind, shape, record, expected):
    path = write(tmp_path / "data", kind, [record, record])
    for fmt in ("auto", shape):
        examples = data.read_examples(path, fmt)
        assert [example for _, example in examples] == [expected, expected]
        assert examples.shapes == {str(path): shape}
        assert examples.count() == 2


@pytest.mark.parametrize("kind, wheres", [
    ("jsonl", ["{p}:1", "{p}:2"]),
    ("json", ["{p}:2", "{p}:7"]),  # the line each record of the indented array starts on
    ("csv", ["{p}:2", "{p}:3"]),
    ("parquet", ["{p}:record 1", "{p}:record 2"]),
    ("saved", ["{p}:record 1", "{p}:record 2"]),
])
def test_each_record_says_where_it_is(tmp_path, kind, wheres):
    path = write(tmp_path / "data", kind, [SHAPES["instruction"][0]] * 2)
    assert [where for where, _ in data.read_examples(path)] == [w.format(p=path) for w in wheres]


def test_reading_is_lazy_and_can_start_again(tmp_path):
    good = json.dumps(SHAPES["text"][0])
    path = tmp_path / "data.jsonl"
    path.write_text(f"{good}\n{good}\n" + "{broken\n")
    examples = data.read_examples(path)
    first = iter(examples)
    assert next(first)[0] == f"{path}:1"  # the broken line 3 is not read yet
    assert next(iter(examples))[0] == f"{path}:1"  # a second pass starts from the top
    assert examples.count() == 3  # counts lines without parsing them
    with pytest.raises(data.DataError, match=f"^{path}:3: not valid JSON"):
        list(examples)


@pytest.mark.parametrize("name, text, error", [
    ("data.jsonl", '{"text": "a"}\n{"text": "no end\n', '2: not valid JSON (Unterminated string starting at column 10)'),
    ("data.jsonl", '{"text": "a\tb"}\n', '1: not valid JSON (Invalid control character at column 12)'),
    ("data.csv", 'messages\n"[{""role"": ""user}]"\n', "2: column 'messages' is not valid JSON (Unterminated string starting at column 11)"),
])
def test_json_errors_say_where_once(tmp_path, name, text, error):
    # Python's own message ends with "at" ("... starting at"): not "at at column".
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(data.DataError) as err:
        list(data.read_examples(path))
    assert str(err.value) == f"{path}:{error}"


# --- the chat format's details -------------------------------------------------------------


def test_openai_tool_calls_weights_and_content_parts(tmp_path):
    record = {
        "tools": [{"type": "function", "function": {"name": "get_status", "description": "Service status",
                                                    "parameters": {"type": "object", "properties": {"region": {"type": "string"}}}}}],
        "messages": [
            {"role": "developer", "content": [{"type": "text", "text": "You are "}, {"type": "text", "text": "support."}]},
            {"role": "user", "content": "Is US-West down?"},
            {"role": "assistant", "content": "Let me check.", "weight": 0},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_status", "arguments": '{"region": "us-west"}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": '{"status": "degraded"}'},
            {"role": "assistant", "content": "Uploads are degraded in US-West.", "weight": 1},
        ],
    }
    path = write(tmp_path / "data", "jsonl", [record])
    [(where, example)] = list(data.read_examples(path))
    assert where == f"{path}:1"
    assert example == {"kind": "chat", "tools": record["tools"], "messages": [
        {"role": "system", "content": "You are support."},
        {"role": "user", "content": "Is US-West down?"},
        {"role": "assistant", "content": "Let me check.", "weight": 0},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "id": "call_1", "function": {"name": "get_status", "arguments": {"region": "us-west"}}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"status": "degraded"}'},
        {"role": "assistant", "content": "Uploads are degraded in US-West.", "weight": 1},
    ]}
    # Parquet unifies every message into one struct (absent keys become null): the same example.
    # (A column holds strings or lists, not both: the system prompt is a string there.)
    record["messages"][0]["content"] = "You are support."
    assert [e for _, e in data.read_examples(write(tmp_path / "data", "parquet", [record]))] == [example]


def test_parquet_tool_calls_keep_only_their_own_arguments(tmp_path):
    """Arrow gives every struct in a column the keys of all of them; the nulls it adds are dropped."""
    def record(arguments, parameters):
        return {
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": parameters}}}],
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": arguments}}]},
                {"role": "tool", "content": "ok"},
                {"role": "assistant", "content": "a"},
            ],
        }

    records = [record({"region": "us"}, {"region": {"type": "string"}}),
               record({"city": "Paris", "days": 2}, {"city": {"type": "string"}, "days": {"type": "integer"}})]
    from_parquet = [e for _, e in data.read_examples(write(tmp_path / "data", "parquet", records))]
    assert from_parquet == [e for _, e in data.read_examples(write(tmp_path / "data", "jsonl", records))]
    assert [e["messages"][1]["tool_calls"][0]["function"]["arguments"] for e in from_parquet] == [
        {"region": "us"}, {"city": "Paris", "days": 2}]
    assert [list(e["tools"][0]["function"]["parameters"]["properties"]) for e in from_parquet] == [["region"], ["city", "days"]]
    # A structured tool result (JSON Lines can hold one) becomes the JSON text the model saw.
    records[0]["messages"][2]["content"] = {"status": "ok"}
    [(_, example), _] = data.read_examples(write(tmp_path / "data", "jsonl", records))
    assert example["messages"][2] == {"role": "tool", "content": '{"status": "ok"}'}


def test_sharegpt_function_calls_tools_and_system_column(tmp_path):
    record = {
        "system": "You are support.",
        "tools": json.dumps([{"name": "get_status", "description": "Service status", "parameters": {"type": "object"}}]),
        "conversations": [
            {"from": "human", "value": "Is US-West down?"},
            {"from": "function_call", "value": '{"name": "get_status", "arguments": {"region": "us-west"}}'},
            {"from": "observation", "value": "degraded"},
            {"from": "gpt", "value": "Uploads are degraded."},
        ],
    }
    [(_, example)] = list(data.read_examples(write(tmp_path / "data", "jsonl", [record])))
    assert example == {
        "kind": "chat",
        "tools": [{"type": "function", "function": {"name": "get_status", "description": "Service status",
                                                    "parameters": {"type": "object"}}}],
        "messages": [
            {"role": "system", "content": "You are support."},
            {"role": "user", "content": "Is US-West down?"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"type": "function", "function": {"name": "get_status", "arguments": {"region": "us-west"}}}]},
            {"role": "tool", "content": "degraded"},
            {"role": "assistant", "content": "Uploads are degraded."},
        ],
    }


def test_normalised_tool_calls_render_through_a_tool_template():
    """The normalised form is what transformers' chat templates take: arguments as a dict."""
    from jinja2 import Environment

    template = Environment().from_string((Path(__file__).parent / "chat_templates/tool_call_names.jinja").read_text())
    record = {"messages": [
        {"role": "user", "content": "Is US-West down?"},
        {"role": "assistant", "content": None,
         "tool_calls": [{"type": "function", "function": {"name": "get_status", "arguments": '{"region": "us-west"}'}}]},
    ]}
    assert template.render(messages=data.to_messages(record, "chat")) == "get_status(us-west)"


# --- one-line errors ------------------------------------------------------------------------

CHAT_ERRORS = [
    ({"role": "robot", "content": "beep"}, "messages[1]: unknown role 'robot' (expected one of system, user, assistant, tool)"),
    ({"role": "user", "content": "hi", "weight": 0}, "messages[1]: 'weight' is only allowed on assistant messages"),
    ({"role": "assistant", "content": "hi", "weight": 2}, "messages[1]: 'weight' must be 0 (not trained) or 1 (trained), got 2"),
    ({"role": "assistant", "content": "hi", "weight": True}, "messages[1]: 'weight' must be 0 (not trained) or 1 (trained), got True"),
    ({"role": "user", "content": None}, "messages[1]: 'content' is null ('content' must be a string or a list of text parts"),
    ({"role": "user"}, "messages[1]: missing 'content'"),
    ({"role": "user", "content": 5}, "messages[1]: 'content' must be a string or a list of text parts, found a number"),
    ({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x.png"}}]},
     "messages[1].content[0]: a part of type 'image_url'; only text parts can be trained into a text model"),
    ({"role": "user", "content": "x", "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]},
     "messages[1]: only assistant messages may have 'tool_calls'"),
    ({"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{region: 1}"}}]},
     "messages[1].tool_calls[0].function.arguments is not valid JSON (Expecting property name enclosed in double quotes at column 2)"),
    ({"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "[1]"}}]},
     "messages[1].tool_calls[0].function.arguments must be a JSON object, found a list"),
    ({"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": {"arguments": "{}"}}]},
     "messages[1].tool_calls[0]: missing the function's 'name'"),
]


@pytest.mark.parametrize("message, error", CHAT_ERRORS, ids=[str(i) for i in range(len(CHAT_ERRORS))])
def test_bad_chat_messages_name_file_line_and_message(tmp_path, message, error):
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    bad = {"messages": [{"role": "user", "content": "hi"}, message, {"role": "assistant", "content": "yo"}]}
    path = write(tmp_path / "data", "jsonl", [good, bad])
    with pytest.raises(data.DataError) as err:
        list(data.read_examples(path))
    assert str(err.value).startswith(f"{path}:2: {error}")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("record, error", [
    ({"messages": [{"role": "user", "content": "only a question"}]}, "no assistant message: nothing to learn from"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0}]},
     "every assistant message has weight 0: nothing to learn from"),
    ({"messages": []}, "missing 'messages' (a non-empty list of {role, content})"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "tools": [{"type": "function"}]},
     "tools[0]: expected a tool definition"),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "robot", "value": "a"}]},
     "conversations[1]: unknown 'from' 'robot' (expected one of system, human, user, gpt"),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": None}]}, "conversations[1]: 'value' must be a string"),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": "get_status(us)"}]},
     "conversations[1].value is not valid JSON"),
    ({"instruction": "do it", "output": ""}, "missing field 'output' (a non-empty string)"),
    ({"instruction": "do it", "input": 3, "output": "done"}, "field 'input' must be a string"),
    ({"prompt": "q", "completion": ""}, "field 'completion' is empty: nothing to learn from"),
    ({"prompt": "q", "completion": [{"role": "assistant", "content": "a"}]},
     "'prompt' and 'completion' must both be strings (plain text) or both lists of messages (a conversation), found a string and a list"),
    ({"prompt": [{"role": "user", "content": "q"}], "completion": [{"role": "user", "content": "a"}]},
     "'completion' has no assistant message: nothing to learn from"),
    ({"text": ""}, "missing field 'text' (a non-empty string)"),
])
def test_records_that_cannot_be_trained_name_file_and_line(tmp_path, record, error):
    path = write(tmp_path / "data", "jsonl", [record])
    with pytest.raises(data.DataError) as err:
        list(data.read_examples(path))
    assert str(err.value).startswith(f"{path}:1: {error}")


def test_a_file_of_no_known_shape_gets_one_line_with_the_accepted_shapes(tmp_path):
    path = write(tmp_path / "data", "jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(data.DataError) as err:
        list(data.read_examples(path))
    assert str(err.value) == (
        f'{path}:1: not a known data shape: found keys ["question", "answer"]; accepted shapes: '
        'chat {"messages"}, sharegpt {"conversations"}, completion {"prompt", "completion"}, '
        'instruction {"instruction", "output"}, text {"text"}, preference {"prompt", "chosen", "rejected"}, '
        'implicit_preference {"chosen", "rejected"}, kto {"prompt", "completion", "label"}'
    )
    # Preference records are a shape of their own (tests/test_preference_data.py).
    path = write(tmp_path / "pref", "jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}])
    [(_, example)] = list(data.read_examples(path))
    assert example == {"kind": "pair", "prompt": "q", "chosen": "a", "rejected": "b", "tools": None}


def test_a_wrong_explicit_format_says_what_the_file_looks_like(tmp_path):
    path = write(tmp_path / "data", "jsonl", [SHAPES["sharegpt"][0]])
    with pytest.raises(data.DataError) as err:
        list(data.read_examples(path, "chat"))
    assert str(err.value) == (
        f"{path}:1: missing 'messages' (a non-empty list of " + "{role, content}); "
        "data.format is chat but this record looks like sharegpt (set data.format: sharegpt, or auto)"
    )


def test_one_shape_per_file(tmp_path):
    path = write(tmp_path / "data", "jsonl", [SHAPES["chat"][0], SHAPES["text"][0]])
    with pytest.raises(data.DataError, match=f"^{path}:2: missing 'messages' .*the file's first record is chat, this one looks like text"):
        list(data.read_examples(path))


def test_data_format_is_validated_naming_the_key():
    assert load_params(PARAMS).data.format == "auto"
    for fmt in data.FORMATS:
        assert load_params(PARAMS, [f"data.format={fmt}"]).data.format == fmt
    with pytest.raises(ConfigError, match=r"^--set: data.format: Input should be 'auto', 'chat', 'sharegpt', 'instruction', 'completion', 'text', 'preference', 'implicit_preference' or 'kto' \(got 'alpaca'\)"):
        load_params(PARAMS, ["data.format=alpaca"])
    with pytest.raises(data.DataError, match="data.format: unknown format 'alpaca'"):
        data.read_examples("whatever.jsonl", "alpaca")


# --- files: JSON arrays, CSV, Parquet, folders, datasets --------------------------------------


@pytest.mark.parametrize("name, text, line, error", [
    ('data.json', '[{"text": "a"},\n {"text": "b"}\n {"text": "c"}]', 3, "expected ',' or ']' after a record of the JSON array"),
    ('data.json', '[{"text": "a"},\n {"text": "b"},\n', 3, "the JSON array is not closed (missing ']')"),
    ('data.json', '[{"text": "a"}]\n{"text": "b"}', 2, "text after the end of the JSON array"),
    ('data.json', '[{"text": "a"},\n {"text": "b"},\n]', 3, "expected a record after ',' (a trailing comma is not JSON)"),
    ('data.json', '[{"text": "a"},\n {"text": b}]', 2, "not valid JSON (Expecting value at column 11)"),
    ('data.json', '[{"text": "a"},\n "just a string"]', 2, "expected a JSON object, found a string"),
    ('data.csv', "text,source\nhello,a\nworld\n", 3, "1 fields, but the header has 2"),
    ('data.csv', 'messages\n"[{""role"": ""user""}"\n', 2, "column 'messages' is not valid JSON"),
    ('data.csv', "text,text\na,b\n", 1, "the header row names a column more than once ('text')"),
])
def test_json_array_and_csv_errors_name_the_line(tmp_path, name, text, line, error):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(data.DataError) as err:
        list(data.read_examples(path))
    assert str(err.value).startswith(f"{path}:{line}: {error}")


def test_a_json_file_holding_one_object_is_told_what_json_files_may_hold(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(SHAPES["chat"][0], indent=2))
    with pytest.raises(data.DataError) as err:
        list(data.read_examples(path))
    assert str(err.value) == (
        f"{path}:1: not valid JSON (Expecting property name enclosed in double quotes at column 2) "
        "(a .json file is read as one JSON array of records, or as JSON Lines: one record per line)"
    )


def test_json_array_records_cut_by_the_read_ahead_are_read_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "_CHUNK", 7)  # every record spans several reads
    records = [{"text": f"record {i} " + "é" * i} for i in range(30)]
    path = write(tmp_path / "data", "json", records)
    examples = data.read_examples(path)
    assert [e["text"] for _, e in examples] == [r["text"] for r in records]
    assert [w for w, _ in examples][:2] == [f"{path}:2", f"{path}:5"]
    assert examples.count() == 30


def test_csv_rows_may_span_lines_and_tsv_is_read_too(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text('instruction,output\n"Say\nhello",hello\n\nAsk,"why, then?"\n')
    assert [(w, e["messages"][0]["content"]) for w, e in data.read_examples(path)] == [
        (f"{path}:2", "Say\nhello"), (f"{path}:5", "Ask")]
    pandas = tmp_path / "pandas.csv"  # with the unnamed index column pandas writes by default
    pandas.write_text(",text\n0,first\n1,second\n")
    assert [e["text"] for _, e in data.read_examples(pandas)] == ["first", "second"]
    tsv = tmp_path / "data.tsv"
    tsv.write_text("prompt\tcompletion\n[INST] q\ta, b\n")
    assert [e for _, e in data.read_examples(tsv)] == [{"kind": "completion", "prompt": "[INST] q", "completion": "a, b"}]


def test_parquet_that_is_not_parquet(tmp_path):
    fake = tmp_path / "data.parquet"
    fake.write_text('{"text": "a"}\n')
    with pytest.raises(data.DataError, match=rf"^{fake}: not a Parquet file \(it does not start with the Parquet magic bytes"):
        list(data.read_examples(fake))
    good = write(tmp_path / "good", "parquet", [SHAPES["text"][0]] * 50)
    torn = tmp_path / "torn.parquet"
    torn.write_bytes(good.read_bytes()[:-20])  # cut short, as by an interrupted copy
    with pytest.raises(data.DataError, match=rf"^{torn}: not a readable Parquet file"):
        list(data.read_examples(torn))


def test_files_are_told_apart_by_their_bytes_when_the_suffix_says_nothing(tmp_path):
    jsonl = tmp_path / "train.txt"
    jsonl.write_text(json.dumps(SHAPES["text"][0]) + "\n")
    parquet = tmp_path / "train.data"
    parquet.write_bytes(write(tmp_path / "p", "parquet", [SHAPES["text"][0]]).read_bytes())
    for path in (jsonl, parquet):
        assert [e for _, e in data.read_examples(path)] == [SHAPES["text"][1]]
    other = tmp_path / "notes.md"
    other.write_text("# notes\n")
    with pytest.raises(data.DataError, match=rf"^{other}: unknown kind of file; accepted: .jsonl, .json, .csv, .tsv, .parquet"):
        data.read_examples(other)


def test_a_folder_reads_its_files_in_sorted_order_each_with_its_own_shape(tmp_path):
    folder = tmp_path / "raw"
    (folder / "b").mkdir(parents=True)
    (folder / ".cache").mkdir()
    write(folder / "b" / "2-text", "parquet", [SHAPES["text"][0]])
    write(folder / "b" / "1-chat", "jsonl", [SHAPES["chat"][0], SHAPES["chat"][0]])
    write(folder / "a", "csv", [SHAPES["instruction"][0]])
    write(folder / ".cache" / "hidden", "jsonl", [{"nonsense": 1}])
    (folder / "README.md").write_text("not data")
    examples = data.read_examples(folder)
    assert [(where, example["kind"]) for where, example in examples] == [
        (f"{folder}/a.csv:2", "chat"),
        (f"{folder}/b/1-chat.jsonl:1", "chat"),
        (f"{folder}/b/1-chat.jsonl:2", "chat"),
        (f"{folder}/b/2-text.parquet:record 1", "text"),
    ]
    assert examples.shapes == {f"{folder}/a.csv": "instruction", f"{folder}/b/1-chat.jsonl": "chat",
                               f"{folder}/b/2-text.parquet": "text"}
    assert examples.count() == 4
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(data.DataError, match=rf"^{empty}: no data files in this folder \(looked for .jsonl, .json"):
        data.read_examples(empty)


def test_parts_read_one_after_another_are_the_records_read_whole(tmp_path):
    """prepare's processes each read a run of lines of a JSON Lines file: together, in order,
    the runs are the file, and their records the records read front to back."""
    folder = tmp_path / "raw"
    folder.mkdir()
    chat, text = SHAPES["chat"][0], SHAPES["text"][0]
    lines = [json.dumps(chat), "", json.dumps({**chat, "id": 2}), "   ", json.dumps({**chat, "id": 3}), json.dumps(chat)]
    (folder / "a.jsonl").write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n")  # BOM, CRLF, blank lines
    write(folder / "b", "csv", [SHAPES["instruction"][0]] * 3)
    (folder / "c.jsonl").write_text("\n".join(json.dumps({"text": f"t{i}"}) for i in range(7)))  # no final line break
    write(folder / "d", "jsonl", [text])
    examples = data.read_examples(folder)
    whole = list(examples)
    assert len(whole) == 6 + 3 + 7 + 1 - 2
    for lines_per_run in (1, 2, 3, 1000):
        parts = list(examples.parts(lines_per_run))
        assert [x for part in parts for x in examples.part_examples(part)] == whole
        for name in ("a.jsonl", "c.jsonl", "d.jsonl"):
            runs = [part.lines for part in parts if part.source.path == str(folder / name)]
            assert runs[0][0] == 0 and runs[-1][1] == (folder / name).stat().st_size
            assert all(one[1] == two[0] and two[2] == one[2] + lines_per_run for one, two in pairwise(runs))
        assert [part.lines for part in parts if part.source.kind == "csv"] == [None]
        assert {part.shape for part in parts if part.lines} == {"chat", "text"}
    # A file whose first record has no known shape is read whole, to be reported in its turn.
    (folder / "b2.jsonl").write_text('{"nonsense": 1}\n')
    parts = list(data.read_examples(folder).parts(2))
    assert [(Path(part.source.path).name, part.lines) for part in parts if part.lines is None] == [("b.csv", None), ("b2.jsonl", None)]


def test_a_saved_dataset_dict_and_its_splits(tmp_path):
    import datasets

    rows = [SHAPES["sharegpt"][0]] * 3
    folder = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows), "test": datasets.Dataset.from_list(rows[:1])}).save_to_disk(str(folder))
    assert [e for _, e in data.read_examples(folder)] == [SHAPES["sharegpt"][1]] * 3
    assert [w for w, _ in data.read_examples(f"{folder}@test")] == [f"{folder}:record 1"]
    assert data.read_examples(f"{folder}@test").count() == 1
    with pytest.raises(data.DataError, match=rf"^{folder}: no split 'dev' in the saved dataset \(it has train, test\)"):
        list(data.read_examples(f"{folder}@dev"))


def test_a_dataset_whose_messages_are_a_sequence_feature(tmp_path):
    """`datasets`' Sequence of a dict hands a conversation over as a dict of lists."""
    import datasets

    features = datasets.Features({"conversations": datasets.Sequence({"from": datasets.Value("string"), "value": datasets.Value("string")})})
    turns = SHAPES["sharegpt"][0]["conversations"]
    columns = {"from": [t["from"] for t in turns], "value": [t["value"] for t in turns]}
    datasets.Dataset.from_dict({"conversations": [columns]}, features=features).save_to_disk(str(tmp_path / "saved"))
    assert [e for _, e in data.read_examples(tmp_path / "saved")] == [SHAPES["sharegpt"][1]]


def test_hub_datasets_load_through_datasets(tmp_path, monkeypatch):
    """`hf:<id>` goes to `datasets.load_dataset`, as for the hub; a local data folder stands in
    for a hub repository (nothing can be downloaded here)."""
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    write(repo / "data" / "train-00000-of-00001", "parquet", [CONVERSATIONAL_COMPLETION[0]] * 2)
    write(repo / "data" / "test-00000-of-00001", "parquet", [CONVERSATIONAL_COMPLETION[0]])
    examples = data.read_examples(f"hf:{repo}")
    assert [(w, e) for w, e in examples] == [(f"hf:{repo}:record {n}", CONVERSATIONAL_COMPLETION[1]) for n in (1, 2)]
    assert data.read_examples(f"hf:{repo}@test").count() == 1
    with pytest.raises(data.DataError, match=r"^hf:nobody/no-such-dataset: cannot load the dataset \(\w+: "):
        list(data.read_examples("hf:nobody/no-such-dataset"))  # HF_HUB_OFFLINE=1 in the tests
    [source] = readers.resolve("hf:owner/name:subset@test#0123abc")
    assert (source.path, source.subset, source.split, source.revision) == ("owner/name", "subset", "test", "0123abc")


def test_missing_and_empty_data(tmp_path):
    with pytest.raises(data.DataError, match="file not found"):
        data.read_examples(tmp_path / "nothing.jsonl")
    for kind in ("jsonl", "json", "csv"):
        path = write(tmp_path / "empty", kind, [])
        with pytest.raises(data.DataError, match=rf"^{path}: no records \(the dataset is empty\)"):
            list(data.read_examples(path))


# --- bad bytes ------------------------------------------------------------------------------


def test_a_utf8_byte_order_mark_is_accepted(tmp_path):
    for kind in ("jsonl", "json", "csv"):
        path = write(tmp_path / "bom", kind, [SHAPES["instruction"][0]])
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
        assert [e for _, e in data.read_examples(path)] == [SHAPES["instruction"][1]]
        assert data.read_examples(path).count() == 1


@pytest.mark.parametrize("kind", ["jsonl", "json", "csv"])
@pytest.mark.parametrize("bad, error", [
    (b"\xff", "not valid UTF-8 (byte 0xff at column {col}); save the file as UTF-8"),
    (b"\x00", "a NUL byte at column {col} (binary data, or text not saved as UTF-8?)"),
])
def test_bad_bytes_name_file_line_and_column(tmp_path, kind, bad, error):
    path = write(tmp_path / "data", kind, [{"text": "fine"}, {"text": "caf\u00e9 BAD"}])
    raw = path.read_bytes()
    at = raw.index(b"BAD")
    path.write_bytes(raw[:at] + bad + raw[at + 3:])
    line = raw[:at].count(b"\n") + 1
    col = len(raw[raw.rfind(b"\n", 0, at) + 1 : at].decode()) + 1
    with pytest.raises(data.DataError) as err:
        list(data.read_examples(path))
    assert str(err.value) == f"{path}:{line}: " + error.format(col=col)


def test_a_utf16_file_is_named_as_such(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(SHAPES["text"][0]) + "\n", encoding="utf-16")
    with pytest.raises(data.DataError, match=rf"^{path}: the file is UTF-16 encoded; save it as UTF-8$"):
        list(data.read_examples(path))


def write_huge(path, head: bytes, tail: bytes, mib: int = 300):
    with path.open("wb") as f:
        f.write(head)
        block = b"a" * 2**20
        for _ in range(mib):
            f.write(block)
        f.write(tail)
    return path


@pytest.mark.parametrize("kind", ["jsonl", "json"])
def test_a_record_of_300_mb_is_refused_in_bounded_memory(tmp_path, kind):
    """A real 300 MB line (or JSON array element), read in another process whose peak memory is measured."""
    record = json.dumps(SHAPES["text"][0]).encode()
    if kind == "jsonl":
        path = write_huge(tmp_path / "huge.jsonl", record + b'\n{"text": "', b'"}\n' + record + b"\n")
        expected = f"{path}:2: a record of 300 MiB, more than the 16 MiB one record may have "
    else:  # one line: a JSON array written without indentation
        path = write_huge(tmp_path / "huge.json", b"[" + record + b', {"text": "', b'"}, ' + record + b"]")
        expected = f"{path}:1: a record of more than the 16 MiB one record may have "
    script = textwrap.dedent(f"""
        from {{ cookiecutter.package_name }}.data import DataError, read_examples

        def kib(key):
            return int(next(line for line in open("/proc/self/status") if line.startswith(key)).split()[1])

        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # Linux: the peak (VmHWM) starts again from memory now, after the imports
        before = kib("VmRSS")
        try:
            list(read_examples({str(path)!r}))
        except DataError as err:
            print(err)
        print(kib("VmHWM") - before)
    """)
    try:
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True)
    finally:
        path.unlink()  # 300 MB: not left behind in pytest's kept tmp folders
    message, growth_kib = result.stdout.strip().splitlines()
    print(f"peak RSS growth reading {kind}: {int(growth_kib) // 1024} MiB")
    assert message == expected + "(a missing line break, or not a text file?)"
    assert int(growth_kib) < 64 * 1024, f"peak memory grew by {int(growth_kib) // 1024} MiB"  # 31-36 MiB measured


def test_long_records_are_refused_in_json_arrays_and_csv_too(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "MAX_RECORD_BYTES", 2000)
    monkeypatch.setattr(readers, "_CHUNK", 100)
    for kind in ("json", "csv"):
        path = write(tmp_path / "data", kind, [{"text": "fine"}, {"text": "x" * 5000}])
        with pytest.raises(data.DataError, match=rf"^{path}:\d+: a record of (\d+ MiB, )?more than the 0 MiB one record may have"):
            list(data.read_examples(path))


# --- the old API, and prepare end to end through the CLI ------------------------------------


def test_read_records_returns_the_records_as_they_are_in_the_file(tmp_path):
    path = write(tmp_path / "data", "jsonl", [SHAPES["sharegpt"][0]] * 2)
    assert data.read_records(path, "auto") == [SHAPES["sharegpt"][0]] * 2
    assert data.to_messages(SHAPES["sharegpt"][0], "sharegpt") == SHAPES["sharegpt"][1]["messages"]


def sample_records(sample_data, n=40):
    return [json.loads(line) for line in sample_data.read_text().splitlines()[:n]]


@pytest.mark.parametrize("kind, shape", [("parquet", "chat"), ("jsonl", "sharegpt")])
def test_prepare_through_the_cli_from_parquet_and_sharegpt(tmp_path, make_params, sample_data, kind, shape):
    records = sample_records(sample_data)
    if shape == "sharegpt":
        speaker = {"system": "system", "user": "human", "assistant": "gpt"}
        records = [{"conversations": [{"from": speaker[m["role"]], "value": m["content"]} for m in r["messages"]]}
                   for r in records]
    path = write(tmp_path / "mine", kind, records)
    params = make_params()
    result = run_cli("prepare", *cli_overrides(params, **{"data.path": str(path)}))
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"read 40 records from {path} ({shape})" in result.stdout
    summary = json.loads((tmp_path / "prepared" / "summary.json").read_text())
    assert summary["records"] == 40 and summary["shapes"] == [shape] and summary["format"] == "auto"
    kept = summary["train"]["examples"] + summary["val"]["examples"]
    assert kept + summary["train"]["dropped_too_long"] + summary["val"]["dropped_too_long"] == 40
    assert summary["train"]["trained_tokens"] > 0


def test_prepare_through_the_cli_refuses_a_bad_file_in_one_line(tmp_path, make_params):
    path = tmp_path / "mine.jsonl"
    path.write_bytes(json.dumps(SHAPES["chat"][0]).encode() + b"\n" + b'{"messages": "\xff"}\n')
    result = run_cli("prepare", *cli_overrides(make_params(), **{"data.path": str(path)}))
    assert result.returncode == 2
    # The progress bar may come before it; the error is the one last line, with no traceback.
    assert result.stderr.endswith(f"\nerror: {path}:2: not valid UTF-8 (byte 0xff at column 15); save the file as UTF-8\n")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "prepared").exists()


# --- prepare --show: examples from every file, spread through each ---------------------------


def shown(params, n: int) -> tuple[str, list[tuple[str, str]]]:
    """`prepare --show n`'s header line, and each example's `where` with the text shown for it."""
    from {{ cookiecutter.package_name }}.data.show import show_examples

    lines: list[str] = []
    show_examples(params, n, color=False, out=lines.append)
    blocks = [(lines[i].removeprefix("\n--- ").split(": ")[0], lines[i + 1]) for i in range(len(lines)) if lines[i].startswith("\n--- ")]
    return lines[0], blocks


def test_show_takes_examples_from_every_file_in_turn_and_says_where_each_is(tmp_path, make_params):
    folder = tmp_path / "raw"
    folder.mkdir()
    chat = [{"messages": [{"role": "user", "content": f"chat question {i}"}, {"role": "assistant", "content": f"chat answer {i}"}]}
            for i in range(7)]
    sharegpt = [{"conversations": [{"from": "human", "value": f"sharegpt question {i}"}, {"from": "gpt", "value": f"sharegpt answer {i}"}]}
                for i in range(10)]
    alpaca = [{"instruction": f"alpaca question {i}", "output": f"alpaca answer {i}"} for i in range(5)]
    write(folder / "a_chat", "jsonl", chat)
    lines = [json.dumps(r) for r in sharegpt]
    (folder / "b_sharegpt.jsonl").write_text("\n".join(lines[:3] + [""] + lines[3:]) + "\n")  # a blank line 4
    write(folder / "c_alpaca", "json", alpaca)
    wheres = {}  # every record's `where`, by file, as prepare reads them
    for where, _ in data.read_examples(folder):
        wheres.setdefault(where.rsplit(":", 1)[0], []).append(where)
    a, b, c = (wheres[str(folder / name)] for name in ("a_chat.jsonl", "b_sharegpt.jsonl", "c_alpaca.json"))

    header, blocks = shown(make_params(f"data.path={folder}"), 7)
    assert header.startswith(f"7 of 22 examples of {folder} (taken in turn from its 3 files, evenly spaced through each), ")
    # 7 dealt to the 3 files in turn (3, 2, 2), each file's share evenly spaced from its first record.
    assert [where for where, _ in blocks] == [a[0], a[2], a[4], b[0], b[5], c[0], c[2]]
    assert b[5] == f"{folder}/b_sharegpt.jsonl:7"  # its line, past the blank one
    for (where, text), expected in zip(blocks, ["chat 0", "chat 2", "chat 4", "sharegpt 0", "sharegpt 5", "alpaca 0", "alpaca 2"],
                                       strict=True):
        kind, number = expected.split()
        assert f"{kind} question {number}" in text and f"[[{kind} answer {number}" in text, where


def test_show_finds_the_lines_of_a_json_lines_file_with_blank_lines_and_no_final_line_break(tmp_path, make_params):
    records = [json.dumps({"text": f"record {i}"}) for i in range(9)]
    path = tmp_path / "data.jsonl"
    body = "\n".join(records[:2] + ["", "   "] + records[2:6] + [""] + records[6:])  # no line break after the last
    path.write_bytes(b"\xef\xbb\xbf" + body.encode())
    wheres = [where for where, _ in data.read_examples(path)]
    params = make_params(f"data.path={path}", "data.format=text")
    header, blocks = shown(params, 3)
    assert header.startswith(f"3 of 9 examples of {path} (evenly spaced through it), ")
    assert [(where, text.startswith(f"[[record {i}")) for (where, text), i in zip(blocks, (0, 3, 6), strict=True)] == [
        (wheres[i], True) for i in (0, 3, 6)]
    header, blocks = shown(params, 20)
    assert header.startswith(f"9 of 9 examples of {path}, ") and [where for where, _ in blocks] == wheres
    assert wheres[-1] == f"{path}:12"
    with pytest.raises(data.DataError, match="^--show 0: give how many examples to show, 1 or more$"):
        shown(params, 0)
