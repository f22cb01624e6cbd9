import json

import pytest
import torch

from {{ cookiecutter.package_name }} import data
from {{ cookiecutter.package_name }}.model import loading


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return loading.load_tokenizer(str(tiny_model_dir))


def test_packing_fills_rows_and_masks_example_starts():
    examples = [([1] * n, [5] * n) for n in (7, 5, 3, 3, 2)]
    packed = data.pack(examples, max_length=10, pad_id=0)
    assert packed.input_ids.shape == (2, 10)
    assert packed.stats["packing_efficiency"] == 1.0
    assert packed.stats["mean_context"] == round((49 + 25 + 9 + 9 + 4) / 20, 2)
    assert int(packed.real_tokens.sum()) == 20
    # Every example restarts its positions; its first token is never a target.
    starts = (packed.position_ids == 0).sum().item()
    assert starts == len(examples)
    assert torch.all(packed.labels[packed.position_ids == 0] == data.IGNORE)
    assert int((packed.labels != data.IGNORE).sum()) == 20 - len(examples)


def test_packing_pads_with_unlabelled_tokens():
    packed = data.pack([([1] * 4, [1] * 4)], max_length=8, pad_id=9)
    assert packed.input_ids[0, 4:].tolist() == [9] * 4
    assert packed.labels[0, 4:].tolist() == [data.IGNORE] * 4
    assert packed.stats["packing_efficiency"] == 0.5


@pytest.mark.parametrize("attention", ["sdpa", "flex_attention", "eager"])
def test_packed_logits_equal_per_sequence_logits(tiny_model_dir, tokenizer, attention):
    """Packed examples must not attend to each other: same logits as run one by one.

    transformers only derives the block-diagonal mask from position ids when there is no
    KV cache, so the forward passes here (like training's) say use_cache=False.
    """
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation=attention).eval()
    texts = ["Where is my invoice?", "Reset my password please, it expired yesterday.", "Thanks!"]
    examples = [(tokenizer(t)["input_ids"], tokenizer(t)["input_ids"]) for t in texts]
    packed = data.pack(examples, max_length=64, pad_id=tokenizer.pad_token_id)
    assert packed.input_ids.shape[0] == 1
    with torch.no_grad():
        packed_logits = model(
            input_ids=packed.input_ids.long(), position_ids=packed.position_ids.long(), use_cache=False
        ).logits[0]
        row, start = packed.input_ids[0].tolist(), 0
        for ids, _ in sorted(examples, key=lambda e: -len(e[0])):  # pack() places longest first
            assert row[start : start + len(ids)] == ids
            alone = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0]
            torch.testing.assert_close(packed_logits[start : start + len(ids)], alone, atol=1e-5, rtol=1e-4)
            start += len(ids)


def test_split_is_deterministic_and_disjoint():
    records = [{"text": str(i)} for i in range(50)]
    train_a, val_a = data.split(records, 0.2, seed=3)
    train_b, val_b = data.split(records, 0.2, seed=3)
    assert (train_a, val_a) == (train_b, val_b)
    assert len(val_a) == 10
    assert {r["text"] for r in train_a}.isdisjoint({r["text"] for r in val_a})
    assert data.split(records, 0.2, seed=4)[1] != val_a


@pytest.mark.parametrize(
    "fmt, lines, bad_line, message",
    [
        ("chat", ['{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}', "{not json"], 2, "not valid JSON"),
        ("chat", ['{"text": "no messages here"}'], 1, "missing 'messages'"),
        ("chat", ['{"messages": [{"role": "robot", "content": "beep"}]}'], 1, "unknown role 'robot'"),
        ("chat", ['{"messages": [{"role": "user", "content": "only a question"}]}'], 1, "no assistant message"),
        ("chat", ['{"messages": [{"role": "user", "content": 5}]}'], 1, "'content' must be a string"),
        ("instruction", ['{"instruction": "do it"}'], 1, "missing field 'output'"),
        ("text", ['["a list"]'], 1, "expected a JSON object"),
    ],
)
def test_bad_records_name_file_and_line(tmp_path, fmt, lines, bad_line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(data.DataError) as err:
        data.read_records(path, fmt)
    assert str(err.value).startswith(f"{path}:{bad_line}: ")
    assert message in str(err.value)


def test_a_missing_data_file_says_what_brings_it_back(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a project whose data has not been pulled

    def error(path):
        with pytest.raises(data.DataError) as err:
            data.read_records(path, "chat")
        return str(err.value)

    # The template's sample: DVC has it, and `make data` writes it again.
    assert error("data/raw/support.jsonl") == (
        "data/raw/support.jsonl: file not found; run `dvc pull`, or `make data` to regenerate the sample"
    )
    # The user's own data, tracked by DVC (the file, or a folder holding it): `make data` would
    # only write the sample.
    (tmp_path / "data").mkdir()
    (tmp_path / "data/mine.jsonl.dvc").write_text("outs:\n- md5: 0123456789abcdef0123456789abcdef\n  path: mine.jsonl\n")
    assert error("data/mine.jsonl") == "data/mine.jsonl: file not found; DVC tracks it (data/mine.jsonl.dvc): run `dvc pull`"
    (tmp_path / "corpus.dvc").write_text("outs:\n- md5: 0123456789abcdef0123456789abcdef.dir\n  path: corpus\n")
    assert error("corpus/part-1.jsonl") == "corpus/part-1.jsonl: file not found; DVC tracks it (corpus.dvc): run `dvc pull`"
    # Neither: most likely a typo in data.path.
    assert error("data/mien.jsonl") == "data/mien.jsonl: file not found; check data.path in params.yaml"


def test_empty_dataset_is_refused(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    with pytest.raises(data.DataError, match="empty"):
        data.read_records(path, "chat")


def test_prepare_reports_drops_and_writes_all_outputs(make_params, tokenizer, tmp_path):
    params = make_params("data.max_length=160")
    summary = data.prepare(params, tokenizer, log=lambda *_: None)
    prepared = tmp_path / "prepared"
    assert sorted(p.name for p in prepared.iterdir()) == ["held_out_prompts.jsonl", "lengths.png", "summary.json", "train", "val"]
    prompts = [json.loads(line) for line in (prepared / "held_out_prompts.jsonl").read_text().splitlines()]
    assert len(prompts) == params.eval.generations
    assert all(p["messages"][-1]["role"] == "user" and p["reference"] for p in prompts)
    assert json.loads((prepared / "summary.json").read_text()) == summary
    dropped = summary["train"]["dropped_too_long"] + summary["val"]["dropped_too_long"]
    kept = summary["train"]["examples"] + summary["val"]["examples"]
    assert dropped > 0 and kept + dropped == summary["records"]
    rows = data.load_prepared(prepared, "train")
    assert rows["input_ids"].shape[1] == 160
    stats = summary["train"]
    assert stats["packing_efficiency"] == round(stats["tokens"] / (stats["rows"] * 160), 4)
    assert stats["packing_efficiency"] > 0.7


def test_prepare_refuses_when_every_example_is_too_long(make_params, tokenizer):
    params = make_params("data.max_length=16")
    with pytest.raises(data.DataError, match="no usable train examples .* longer than data.max_length=16"):
        data.prepare(params, tokenizer, log=lambda *_: None)
