"""prepare at any size: streamed, parallel, packed on lengths, rows read memory-mapped.

The streaming stage is checked against a straightforward reference (every example in a list,
the list split, best-fit packing with a sorted list, rows filled one by one) on the sample
data, so the rewrite for size changed nothing a row holds.
"""

import bisect
import importlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import psutil
import pytest
import torch
from matplotlib.colors import to_rgb

from {{ cookiecutter.package_name }} import data
from {{ cookiecutter.package_name }}.model import loading

prepare_stage = importlib.import_module("{{ cookiecutter.package_name }}.data.prepare")  # the module, not the function

PROJECT = Path(__file__).resolve().parents[1]
quiet = {"log": lambda *_: None}


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    tokenizer = loading.load_tokenizer(str(tiny_model_dir))
    data.ensure_chat_template(tokenizer)
    return tokenizer


def reference_bfd(lengths: list[int], max_length: int) -> list[list[int]]:
    """Best-fit decreasing with a sorted list of (free slots, row): the textbook version."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    rows, free = [], []
    for i in order:
        at = bisect.bisect_left(free, (lengths[i], -1))
        if at == len(free):
            rows.append([i])
            bisect.insort(free, (max_length - lengths[i], len(rows) - 1))
        else:
            slots, row = free.pop(at)
            rows[row].append(i)
            bisect.insort(free, (slots - lengths[i], row))
    return rows


def reference_rows(examples, max_length: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Rows filled one example at a time: positions restart per example, first token untrained."""
    rows = reference_bfd([len(ids) for ids, _ in examples], max_length)
    out = {
        "input_ids": torch.full((len(rows), max_length), pad_id, dtype=torch.int32),
        "labels": torch.full((len(rows), max_length), data.IGNORE, dtype=torch.int32),
        "position_ids": torch.zeros((len(rows), max_length), dtype=torch.int32),
        "real_tokens": torch.zeros(len(rows), dtype=torch.int32),
    }
    for r, members in enumerate(rows):
        start = 0
        for i in members:
            ids, labels = examples[i]
            end = start + len(ids)
            out["input_ids"][r, start:end] = torch.tensor(ids)
            out["labels"][r, start:end] = torch.tensor([data.IGNORE] + labels[1:])
            out["position_ids"][r, start:end] = torch.arange(len(ids))
            start = end
        out["real_tokens"][r] = start
        out["position_ids"][r, start:] = torch.arange(max_length - start)
    return out


def test_prepare_writes_the_rows_of_a_straightforward_in_memory_reference(make_params, tokenizer):
    params = make_params("data.max_length=160", "data.num_proc=2")
    summary = data.prepare(params, tokenizer, **quiet)

    records = list(data.read_examples(params.data.path, params.data.format))
    train, val = data.split(records, params.data.val_fraction, params.data.seed)
    for name, subset in (("train", train), ("val", val)):
        encoded = [data.encode(tokenizer, example, params.data.train_on) for _, example in subset]
        kept = [(ids, labels) for ids, labels in encoded
                if len(ids) <= 160 and any(label != data.IGNORE for label in labels[1:])]
        expected = reference_rows(kept, 160, tokenizer.pad_token_id)
        rows = data.load_prepared(params.data.prepared_dir, name)
        for key, tensor in expected.items():
            assert torch.equal(rows[key], tensor), (name, key)
        stats = summary[name]
        assert stats["examples"] == len(kept)
        assert stats["dropped_too_long"] == sum(len(ids) > 160 for ids, _ in encoded) > 0
        assert stats["tokens"] == sum(len(ids) for ids, _ in kept) == int(rows["real_tokens"].sum())
        assert stats["trained_tokens"] == int((expected["labels"] != data.IGNORE).sum())
        assert stats["mean_context"] == round(sum(len(ids) ** 2 for ids, _ in kept) / stats["tokens"], 2)
    prompts = (Path(params.data.prepared_dir) / "held_out_prompts.jsonl").read_text().splitlines()
    assert [json.loads(p) for p in prompts] == [data.held_out_prompt(e) for _, e in val[: params.eval.generations]]


def mixed_folder(folder: Path, sample_lines: list[str]) -> Path:
    """A user's folder of several files and shapes: OpenAI `messages` JSON Lines, ShareGPT JSON
    Lines with some conversations too long for 400 tokens, and an Alpaca JSON array."""
    folder.mkdir()
    records = [json.loads(line) for line in sample_lines]
    (folder / "a_support.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[:120]))
    speaker = {"system": "system", "user": "human", "assistant": "gpt"}
    sharegpt = [{"conversations": [{"from": speaker[m["role"]], "value": m["content"] * (6 if i % 5 == 0 else 1)}
                                   for m in r["messages"]]} for i, r in enumerate(records[120:180])]
    (folder / "b_sharegpt.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sharegpt))
    alpaca = [{"instruction": next(m["content"] for m in r["messages"] if m["role"] == "user"),
               "output": next(m["content"] for m in r["messages"] if m["role"] == "assistant")} for r in records[180:210]]
    (folder / "c_alpaca.json").write_text(json.dumps(alpaca, indent=2))
    return folder


def at_least(share: float, lengths: list[int]) -> int:
    """The shortest length that `share` of the examples are no longer than."""
    return sorted(lengths)[-(-len(lengths) * round(share * 100) // 100) - 1]


@pytest.mark.parametrize("num_proc", [1, 2])
def test_prepare_counts_each_file_and_summarises_the_token_lengths(make_params, tokenizer, tmp_path, monkeypatch, num_proc):
    monkeypatch.setattr(prepare_stage, "CHUNK", 16)  # each JSON Lines file in several parts, read by several processes
    monkeypatch.setattr(prepare_stage, "FILES_LOGGED", 2)
    folder = mixed_folder(tmp_path / "raw", Path(make_params().data.path).read_text().splitlines())
    params = make_params(f"data.path={folder}", "data.max_length=400", f"data.num_proc={num_proc}")
    logged = []
    summary = data.prepare(params, tokenizer, log=logged.append)

    # The reference: every record encoded here, one by one, grouped by the file its `where` names.
    by_file: dict[str, list[tuple[int, int]]] = {}
    for where, example in data.read_examples(folder):
        ids, labels = data.encode(tokenizer, example, params.data.train_on)
        by_file.setdefault(where.rsplit(":", 1)[0], []).append((len(ids), sum(label != data.IGNORE for label in labels[1:])))
    expected = []
    for name, shape in (("a_support.jsonl", "chat"), ("b_sharegpt.jsonl", "sharegpt"), ("c_alpaca.json", "instruction")):
        examples = by_file[str(folder / name)]
        too_long = sum(length > 400 for length, _ in examples)
        no_labels = sum(length <= 400 and trained == 0 for length, trained in examples)
        expected.append({"file": str(folder / name), "shape": shape, "records": len(examples),
                         "kept": len(examples) - too_long - no_labels, "dropped_too_long": too_long,
                         "dropped_no_labels": no_labels, "median_tokens": at_least(0.5, [n for n, _ in examples])})
    assert summary["files"] == expected
    assert [f["records"] for f in expected] == [120, 60, 30]
    assert expected[0]["dropped_too_long"] == 0 and expected[1]["dropped_too_long"] >= 10  # the long ShareGPT ones
    assert sum(f["kept"] for f in expected) == summary["train"]["examples"] + summary["val"]["examples"]
    assert sum(f["dropped_too_long"] for f in expected) == summary["train"]["dropped_too_long"] + summary["val"]["dropped_too_long"]
    lengths = [n for examples in by_file.values() for n, _ in examples]
    assert summary["lengths"] == {"min": min(lengths), "median": at_least(0.5, lengths), "p95": at_least(0.95, lengths),
                                  "max": max(lengths), "over_max_length": sum(n > 400 for n in lengths)}
    assert json.loads((Path(params.data.prepared_dir) / "summary.json").read_text()) == summary

    # Said in the log, a line per file and one for the lengths.
    a, b = expected[:2]
    assert f"{folder}/a_support.jsonl (chat): 120 records, all kept; median {a['median_tokens']} tokens" in logged
    assert (f"{folder}/b_sharegpt.jsonl (sharegpt): 60 records, {b['kept']} kept, dropped {b['dropped_too_long']} longer "
            f"than data.max_length=400; median {b['median_tokens']} tokens") in logged
    stats = summary["lengths"]
    assert (f"tokens per example: min {stats['min']}, median {stats['median']}, p95 {stats['p95']}, max {stats['max']}; "
            f"{stats['over_max_length']} longer than data.max_length=400") in logged
    assert "... and 1 more file (summary.json lists every file)" in logged  # a line per file up to FILES_LOGGED
    assert logged[-1] == f"histogram of tokens per example: {params.data.prepared_dir}/lengths.png"

    # The histogram: a PNG next to summary.json, the dropped lengths in red beside the kept in blue.
    image = mpimg.imread(Path(params.data.prepared_dir) / "lengths.png")[..., :3]
    assert image.shape == (350, 600, 3)
    for colour in ("tab:blue", "tab:red"):
        assert (np.abs(image - to_rgb(colour)).max(axis=2) < 0.02).sum() > 100, colour


def test_packing_plan_is_best_fit_decreasing_and_fills_rows(make_params, tokenizer):
    for seed in range(3):
        rng = random.Random(seed)
        lengths = [max(1, min(512, int(rng.lognormvariate(5, 0.9)))) for _ in range(3000)]
        plan = data.plan_rows(np.array(lengths), 512)
        rows = [plan.members[plan.starts[r] : plan.starts[r + 1]].tolist() for r in range(plan.rows)]
        assert rows == reference_bfd(lengths, 512)
    # On the sample data at the default row length, rows are nearly all real tokens.
    summary = data.prepare(make_params("data.max_length=1024"), tokenizer, **quiet)
    assert summary["train"]["packing_efficiency"] >= 0.95


def test_num_proc_does_not_change_a_byte(make_params, tokenizer, tmp_path, monkeypatch):
    monkeypatch.setattr(prepare_stage, "CHUNK", 16)  # many chunks, several in flight per process
    outputs = {}
    for num_proc in (1, 2):
        params = make_params(f"data.num_proc={num_proc}", f"data.prepared_dir={tmp_path / f'prepared-{num_proc}'}")
        data.prepare(params, tokenizer, **quiet)
        folder = Path(params.data.prepared_dir)
        outputs[num_proc] = {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
    assert sorted(outputs[1]) == sorted(outputs[2]) == [
        "held_out_prompts.jsonl", "lengths.png", "summary.json",
        *(f"{split}/{column}.npy" for split in ("train", "val") for column in ("input_ids", "labels", "position_ids", "real_tokens")),
    ]
    assert outputs[1] == outputs[2]


def test_spawned_processes_write_the_same_bytes_as_one_process(make_params, tokenizer, tmp_path, monkeypatch):
    """macOS and Windows spawn processes rather than fork them: each gets its state pickled."""
    monkeypatch.setattr(prepare_stage, "CHUNK", 64)  # several runs of lines to check and tokenize
    monkeypatch.setattr(prepare_stage, "BLOCK_TOKENS", 16 * 1024)  # several blocks of rows to write
    outputs = {}
    for method, num_proc in (("fork", 1), ("spawn", 2)):
        monkeypatch.setattr(prepare_stage, "START_METHOD", method)
        params = make_params(f"data.num_proc={num_proc}", f"data.prepared_dir={tmp_path / method}")
        data.prepare(params, tokenizer, **quiet)
        folder = Path(params.data.prepared_dir)
        outputs[method] = {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
    assert len(outputs["spawn"]) == 11 and outputs["spawn"] == outputs["fork"]


def test_a_record_that_cannot_be_encoded_is_named_by_its_line_and_nothing_is_written(make_params, tokenizer, tmp_path, monkeypatch):
    """The error is raised in a tokenizing process; the stage names the record's file:line."""
    monkeypatch.setattr(prepare_stage, "CHUNK", 8)
    real_encode = prepare_stage.encode

    def encode(tokenizer, example, train_on, template_source=""):
        if example["messages"][-1]["content"] == "UNPLACEABLE":
            raise data.DataError("the answer cannot be placed")
        return real_encode(tokenizer, example, train_on, template_source=template_source)

    monkeypatch.setattr(prepare_stage, "encode", encode)  # the processes are forked: they see it too
    lines = Path(make_params().data.path).read_text().splitlines()[:100]
    lines[57] = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "UNPLACEABLE"}]})
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    params = make_params(f"data.path={path}", "data.num_proc=2")
    with pytest.raises(data.DataError) as err:
        data.prepare(params, tokenizer, **quiet)
    assert str(err.value) == f"{path}:58: the answer cannot be placed"
    assert not Path(params.data.prepared_dir).exists()
    assert not list(tmp_path.glob(".prepared-*"))


@pytest.mark.parametrize("num_proc", [1, 2])
def test_the_first_bad_record_in_file_order_stops_the_stage_whichever_process_reads_it(make_params, tokenizer, tmp_path,
                                                                                       monkeypatch, num_proc):
    """Runs of a JSON Lines file are checked in several processes, other files here: the error is
    the one reading the folder front to back meets first."""
    monkeypatch.setattr(prepare_stage, "CHUNK", 8)
    lines = Path(make_params().data.path).read_text().splitlines()[:100]
    folder = tmp_path / "raw"
    folder.mkdir()
    (folder / "c.csv").write_text("instruction,output\nhi,hello\nbroken\n")
    cases = []
    for bad_lines in ({60: "{not json", 90: "[1, 2]"}, {90: '{"messages": []}'}, {}):
        (folder / "a.jsonl").write_text("\n".join(bad_lines.get(i, line) for i, line in enumerate(lines)) + "\n")
        (folder / "b.jsonl").write_text(lines[0] + "\n" + '{"messages": "not a list"}\n')
        with pytest.raises(data.DataError) as read_whole:
            list(data.read_examples(folder))
        with pytest.raises(data.DataError) as prepared:
            data.prepare(make_params(f"data.path={folder}", f"data.num_proc={num_proc}"), tokenizer, **quiet)
        cases.append(str(prepared.value))
        assert str(prepared.value) == str(read_whole.value)
    assert [case.split(": ")[0] for case in cases] == [f"{folder}/a.jsonl:61", f"{folder}/a.jsonl:91", f"{folder}/b.jsonl:2"]


def test_a_file_changed_while_being_prepared_stops_the_stage(make_params, tokenizer, tmp_path, monkeypatch):
    path = tmp_path / "data.jsonl"
    path.write_text(Path(make_params().data.path).read_text())
    real_check = prepare_stage._check

    def check_then_append(examples, num_proc):
        checked = real_check(examples, num_proc)
        with path.open("a") as f:  # a line added after the records were counted
            f.write(path.read_text().splitlines()[0] + "\n")
        return checked

    monkeypatch.setattr(prepare_stage, "_check", check_then_append)
    params = make_params(f"data.path={path}", "data.num_proc=2")
    with pytest.raises(data.DataError, match=rf"^{path}: changed while being prepared; run `prepare` again$"):
        data.prepare(params, tokenizer, **quiet)
    assert not Path(params.data.prepared_dir).exists()


def test_training_rows_are_memory_mapped_not_loaded(make_params, tokenizer):
    params = make_params()
    data.prepare(params, tokenizer, **quiet)
    rows = data.load_prepared(params.data.prepared_dir, "train")
    folder = Path(params.data.prepared_dir).resolve() / "train"
    mapped = Path("/proc/self/maps").read_text()
    for column in ("input_ids", "labels", "position_ids", "real_tokens"):
        assert str(folder / f"{column}.npy") in mapped, column
        assert rows[column].dtype == torch.int32
    on_disk = np.load(folder / "input_ids.npy")
    assert rows["input_ids"].shape == on_disk.shape
    assert torch.equal(rows["input_ids"][[2, 0]], torch.from_numpy(on_disk[[2, 0]]))
    # Copy-on-write: a tensor changed in memory never changes the prepared file.
    rows["input_ids"][0, 0] = -7
    assert np.load(folder / "input_ids.npy")[0, 0] == on_disk[0, 0] != -7


def test_the_progress_bar_shows_examples_per_second_on_stderr(make_params, tokenizer, capsys):
    data.prepare(make_params(), tokenizer, **quiet)
    err = capsys.readouterr().err
    assert "check records: 400 records" in err
    assert "tokenize: 100%" in err and "400/400" in err and "examples/s" in err
    assert "write train rows: 100%" in err


def _children(pid: int) -> list[int]:
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_an_interrupted_prepare_leaves_the_previous_output_and_no_process(make_params, tmp_path, how):
    big = tmp_path / "big.jsonl"
    subprocess.run([sys.executable, str(PROJECT / "scripts/make_sample_data.py"), "--out", str(big), "--count", "12000"],
                   check=True, capture_output=True)
    params = make_params()
    data.prepare(params, **quiet)  # a previous, complete output
    before = (Path(params.data.prepared_dir) / "summary.json").read_text()

    env = {**os.environ, "PYTHONPATH": str(PROJECT / "src")}
    args = [f"--set={key}={value}" for key, value in
            {"model.base": params.model.base, "data.path": big, "data.prepared_dir": params.data.prepared_dir,
             "data.num_proc": 2}.items()]
    # As from a terminal: SIGINT is not ignored, even when these tests were started in the background.
    process = subprocess.Popen([sys.executable, "-m", "{{ cookiecutter.package_name }}", "prepare", *args],
                               cwd=PROJECT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    tokens = None
    while time.monotonic() < deadline and process.poll() is None:  # until tokens are being written
        tokens = next(Path(params.data.prepared_dir).parent.glob(".prepared-*/.tokens/ids.bin"), None)
        if tokens is not None and tokens.stat().st_size > 0:
            break
        time.sleep(0.05)
    assert tokens is not None and process.poll() is None, process.communicate()
    workers = _children(process.pid)
    assert len(workers) >= 2
    process.send_signal(how)
    process.communicate(timeout=60)
    assert process.returncode != 0
    assert (Path(params.data.prepared_dir) / "summary.json").read_text() == before
    if how == signal.SIGINT:  # cleaned up on the way out; after SIGKILL a hidden temporary folder remains
        assert not list(Path(params.data.prepared_dir).parent.glob(".prepared-*"))
    # The tokenizing processes do not outlive the stage.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in workers):
        time.sleep(0.1)
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in workers)
