"""KTO: unpaired records labelled desirable or undesirable, their rows, loss, training and resume.

The loss is checked against an independent computation: every packed sequence run alone through
the tiny model (adapter on, and off for the reference), its log-probabilities summed in float64,
each record's label read from the source file by its answer's text, and the loss written out from
the KTO paper with the KL reference point of TRL's KTOTrainer.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from {{ cookiecutter.package_name }} import data
from {{ cookiecutter.package_name }}.data import kto as kto_data
from {{ cookiecutter.package_name }}.data import preference
from {{ cookiecutter.package_name }}.data.show import show_examples
from {{ cookiecutter.package_name }}.model.logps import count_pairs, sequence_logps
from {{ cookiecutter.package_name }}.model.pair_scores import adapter_off_logps
from {{ cookiecutter.package_name }}.train import objectives, train
from {{ cookiecutter.package_name }}.train.objectives.kto import KTOObjective, kto_terms, slot_labels
from test_preference_data import PROMPT, TEMPLATE_ENDS, normalised, trained, with_template, write_jsonl
from test_preference_train import alone, assert_sigkill_then_resume_is_bitwise_identical, batch_of, policy, sequences_of

from conftest import PROJECT, smoke_params

SETTINGS = ("train.objective=kto", "train.global_batch=4", "train.micro_batch=2", "lora.dropout=0")
GOOD, BAD = "Send us the log.", "Reinstall everything."


@pytest.fixture(scope="module")
def kto_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("kto") / "kto.jsonl"
    subprocess.run([sys.executable, str(PROJECT / "scripts/make_sample_data.py"), "--kto", "--count", "40",
                    "--out", str(path)], check=True, capture_output=True)
    return path


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tiny_model_dir, kto_file):
    tmp = tmp_path_factory.mktemp("kto-prepared")
    params = smoke_params(tmp, tiny_model_dir, kto_file, *SETTINGS, "train.beta=0.5", "train.undesirable_weight=1.5")
    data.prepare(params, log=lambda *_: None)
    return params


def answer_text(record) -> str:
    completion = record["completion"]
    return completion if isinstance(completion, str) else completion[0]["content"]


def test_sample_kto_data_is_detected_and_deterministic(kto_file, tmp_path):
    again = tmp_path / "again.jsonl"
    subprocess.run([sys.executable, str(PROJECT / "scripts/make_sample_data.py"), "--kto", "--count", "40",
                    "--out", str(again)], check=True, capture_output=True)
    assert again.read_bytes() == kto_file.read_bytes()
    examples = data.read_examples(kto_file)
    labels = [example["label"] for _, example in examples]
    assert set(examples.shapes.values()) == {"kto"}
    assert True in labels and False in labels


@pytest.mark.parametrize("name", list(TEMPLATE_ENDS), ids=lambda n: n or "smollm2")
def test_a_kto_record_trains_its_answer_and_the_turn_end_once(real_model, name):
    from transformers import AutoTokenizer

    start, end, special = TEMPLATE_ENDS[name]
    tokenizer = AutoTokenizer.from_pretrained(real_model)
    tokenizer = tokenizer if name is None else with_template(tokenizer, name, special)
    records = [{"prompt": PROMPT, "completion": [{"role": "assistant", "content": GOOD}], "label": True},
               {"prompt": PROMPT[:2], "completion": BAD, "label": False}]
    examples = [(f"kto.jsonl:{i + 1}", normalised(r)) for i, r in enumerate(records)]
    pairs = kto_data.as_pairs(examples)
    # Record 1's own answer, then record 0's as its mismatched one (the first takes the last's).
    own, mismatched = preference.encode_pair(tokenizer, pairs[1][1], "test-template"), preference.encode_pair(tokenizer, pairs[0][1])
    assert trained(tokenizer, own.chosen) == start + BAD + end
    assert trained(tokenizer, own.rejected) == start + GOOD + end
    assert trained(tokenizer, mismatched.chosen) == start + GOOD + end
    assert trained(tokenizer, mismatched.rejected) == start + BAD + end
    assert own.chosen.ids[: own.prompt_tokens] == own.rejected.ids[: own.prompt_tokens]


@pytest.mark.parametrize("bad, message", [
    ({"prompt": PROMPT, "completion": GOOD, "label": "yes"}, "'label' must be true .* or false"),
    ({"prompt": PROMPT, "completion": GOOD, "label": None}, "'label' must be true"),
    ({"prompt": PROMPT, "completion": [{"role": "user", "content": "x"}], "label": True}, "'completion' has no assistant message"),
    ({"prompt": "Q:", "completion": [{"role": "assistant", "content": "x"}], "label": False}, "'completion' must be a string too"),
    ({"prompt": "Q:", "completion": " ", "label": False}, "'completion' is empty"),
])
def test_bad_kto_records_are_refused_naming_file_and_line(tmp_path, bad, message):
    good = {"prompt": PROMPT, "completion": GOOD, "label": True}
    path = write_jsonl(tmp_path / "kto.jsonl", [good, good, bad])
    with pytest.raises(data.DataError, match=f"kto.jsonl:3: .*{message}"):
        list(data.read_examples(path))
    # Named explicitly, a record without the label is refused where it is.
    path = write_jsonl(tmp_path / "named.jsonl", [good, {"prompt": PROMPT, "completion": GOOD}])
    with pytest.raises(data.DataError, match="named.jsonl:2: .*'label' must be true"):
        list(data.read_examples(path, "kto"))


def test_csv_labels_and_a_mix_of_prompt_kinds(tmp_path, tiny_model_dir):
    path = tmp_path / "kto.csv"
    path.write_text('prompt,completion,label\n"Q: a?",A one,true\n"Q: b?",B two,FALSE\n')
    assert [e["label"] for _, e in data.read_examples(path)] == [True, False]
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [{"prompt": PROMPT, "completion": GOOD, "label": True},
                                                   {"prompt": "Q:", "completion": BAD, "label": False}])
    with pytest.raises(data.DataError, match="mixed.jsonl:2: .*mixes plain-text and message prompts"):
        kto_data.as_pairs(list(data.read_examples(mixed)))


def test_kto_loss_equals_an_independent_computation(prepared, kto_file):
    params = prepared
    label_of = {answer_text(json.loads(line)): json.loads(line)["label"] for line in kto_file.read_text().splitlines()}
    model, batch, micro = policy(params, seed=3), batch_of(params), [0, 1, 2, 3]
    labels = torch.from_numpy(kto_data.load_labels(params.data.prepared_dir).astype("int64"))
    objective = KTOObjective(0.5, 1.0, 1.5, lambda m: m, labels)
    items = count_pairs(batch["position_ids"], batch["labels"])
    loss, stats = objective.loss(model, batch, micro, items)

    logps, _ = sequence_logps(model, batch)
    ours = kto_terms(logps, adapter_off_logps(model, model, batch, logps.shape[1]),
                     slot_labels(labels, micro, logps.shape[1] // 2), 0.5, 1.0, 1.5)[0].tolist()

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(params.model.base)
    sequences = sequences_of(batch)
    ratios, kl_ratios, expected_labels = [], [], []
    for own, other in zip(sequences[0::2], sequences[1::2], strict=True):
        for (ids, labels_), out in ((own, ratios), (other, kl_ratios)):
            policy_logp = alone(model, ids, labels_)
            with model.disable_adapter():
                out.append(policy_logp - alone(model, ids, labels_))
        text = tokenizer.decode([i for i, label in zip(*own, strict=True) if label != data.IGNORE])
        expected_labels.append(next(label for answer, label in label_of.items() if text.startswith(answer)))
    z = max(0.0, sum(kl_ratios) / len(kl_ratios))
    sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    expected = [1.0 * (1 - sigmoid(0.5 * (r - z))) if desirable else 1.5 * (1 - sigmoid(0.5 * (z - r)))
                for r, desirable in zip(ratios, expected_labels, strict=True)]
    assert len(ours) == len(expected) == items >= 4
    assert True in expected_labels and False in expected_labels
    assert ours == pytest.approx(expected, abs=1e-5, rel=1e-5)
    assert float(loss) == pytest.approx(sum(expected) / items, abs=1e-5)
    # z is a difference of whole-sequence log-probability sums (tens of nats each), packed against
    # alone in fp32: they differ by up to ~2e-5 with some tiny models. A wrong pairing or mask moves it by 1e-2.
    assert float(stats["kl"]) == pytest.approx(z, abs=1e-4)


def test_a_kto_run_trains_and_logs_its_metrics(prepared, tmp_path):
    params = smoke_params(tmp_path, prepared.model.base, prepared.data.path, f"data.prepared_dir={prepared.data.prepared_dir}",
                          *SETTINGS, "train.max_steps=4", "train.log_every_steps=1", "train.warmup_steps=0",
                          "train.learning_rate=0.01")
    adapter = train(params, resume="never", log=lambda *_: None)
    losses = [float(line.split(",")[1]) for line in (tmp_path / "outputs/train_loss.csv").read_text().splitlines()[1:]]
    # At step 0 the policy is the reference: r = z = 0 and every loss 1 - sigmoid(0) = 0.5 times its weight.
    assert 0.5 <= losses[0] <= 0.5 * 1.5 + 1e-6
    assert losses[-1] < losses[0]
    # A client, not mlflow.set_tracking_uri: that sets MLFLOW_TRACKING_URI for the whole process.
    client = MlflowClient(params.tracking.uri)
    [run] = client.search_runs([client.get_experiment_by_name(params.tracking.experiment).experiment_id])
    assert {"kl", "signed_reward", "label_accuracy"} <= set(run.data.metrics)
    assert (adapter / "adapter_model.safetensors").is_file()


def test_sigkill_during_a_kto_run_then_resume_is_bitwise_identical(prepared, tmp_path):
    assert_sigkill_then_resume_is_bitwise_identical(prepared, tmp_path, steps=5)


def test_kto_objective_and_data_must_agree(prepared, make_params):
    from {{ cookiecutter.package_name }}.config import ConfigError

    summary = json.loads((Path(prepared.data.prepared_dir) / "summary.json").read_text())
    assert summary["data"] == "kto" and summary["train"]["desirable"] + summary["train"]["undesirable"] == summary["train"]["pairs"]
    with pytest.raises(ConfigError, match="holds KTO records"):
        objectives.check_data(make_params("train.objective=dpo"), summary)
    with pytest.raises(ConfigError, match="train.objective=kto needs KTO data"):
        objectives.check_data(make_params("train.objective=kto"), {**summary, "data": "pairs"})


def test_prepare_show_marks_a_kto_records_trained_part(prepared):
    lines = []
    show_examples(prepared, 2, color=False, out=lines.append)
    text = "\n".join(lines)
    assert "desirable (label true)" in text or "undesirable (label false)" in text
    assert "trained" in text and text.count("--- ") == 2


def test_plan_counts_kto_s_reference_forward():
    from {{ cookiecutter.package_name }}.model.preference_cost import reference_flops_per_token

    # KTO always has a reference (train.preference_loss does not apply), unless it is precomputed.
    assert reference_flops_per_token("kto", "simpo", False, 7.0) == 7.0
    assert reference_flops_per_token("kto", "sigmoid", True, 7.0) == 0.0
