"""`evaluate` after a preference run: held-out preference accuracy and margins, in metrics.json,
MLflow, the paired comparison and `report`.

Two tiny DPO runs log to a real MLflow server: main's (one step) and a PR's (more steps, a
higher learning rate). The metrics are checked against an independent computation: every
held-out chosen and rejected answer run alone through the trained adapter and through the
base (adapter off), log-probabilities summed in float64 from a plain log-softmax.
"""

import json
import subprocess
import sys

import mlflow
import pytest
import torch

from {{ cookiecutter.package_name }} import data
from {{ cookiecutter.package_name }}.evaluate import compare, evaluate
from {{ cookiecutter.package_name }}.model import loading
from {{ cookiecutter.package_name }}.train import train

from conftest import PROJECT, run_cli, smoke_params

PREFERENCE_METRICS = ("preference_accuracy", "reward_margin", "logp_margin")
quiet = {"log": lambda *_: None}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, tiny_model_dir, mlflow_server):
    root = tmp_path_factory.mktemp("pref-eval")
    pairs = root / "pairs.jsonl"
    subprocess.run([sys.executable, str(PROJECT / "scripts/make_sample_data.py"), "--preferences", "--count", "48",
                    "--out", str(pairs)], check=True, capture_output=True)
    experiment = f"preference-{root.name}"
    common = ["train.objective=dpo", "train.global_batch=4", "train.micro_batch=2", "lora.dropout=0", "train.beta=0.5",
              "data.val_fraction=0.25", "train.log_every_steps=1", "train.warmup_steps=0", "eval.generations=2",
              "eval.max_new_tokens=4", f"data.path={pairs}", f"data.prepared_dir={root / 'prepared'}",
              f"tracking.experiment={experiment}"]
    runs = {
        "main": (["train.max_steps=1", "train.learning_rate=0.0001"], {"GIT_BRANCH": "main", "GIT_COMMIT": "a" * 40}),
        "pr": (["train.max_steps=8", "train.learning_rate=0.01"],
               {"GIT_BRANCH": "feature", "GIT_COMMIT": "b" * 40, "PR_NUMBER": "7"}),
    }
    results, logs = {}, {}
    for name, (sets, env) in runs.items():
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
            for key in ("GITHUB_HEAD_REF", "GITHUB_SHA", "GITHUB_REF", "RUN_NAME"):
                patch.delenv(key, raising=False)
            for key, value in env.items():
                patch.setenv(key, value)
            params = smoke_params(root / name, tiny_model_dir, pairs, *common, *sets)
            if name == "main":
                data.prepare(params, **quiet)
            train(params, **quiet)
            lines = []
            results[name] = (params, evaluate(params, log=lines.append))
            logs[name] = lines
    return experiment, results, logs


def alone(model, ids: list[int], labels: list[int]) -> tuple[float, int]:
    """(summed log-probability of the trained tokens, their count): the sequence run alone, float64."""
    logprobs = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), dim=-1)
    trained = [t for t in range(len(ids) - 1) if labels[t + 1] != data.IGNORE]
    return sum(float(logprobs[t, labels[t + 1]]) for t in trained), len(trained)


def held_out_pairs(prepared_dir):
    """Every validation pair's (chosen, rejected) sequences as (ids, labels), cut where positions restart."""
    rows = data.load_prepared(prepared_dir, "val")
    pairs = []
    for ids, labels, positions in zip(rows["input_ids"], rows["labels"], rows["position_ids"], strict=True):
        starts = [i for i, p in enumerate(positions.tolist()) if p == 0] + [len(ids)]
        sequences = [(ids[a:b].tolist(), labels[a:b].tolist()) for a, b in zip(starts, starts[1:], strict=False)]
        trained = [s for s in sequences if any(x != data.IGNORE for x in s[1])]  # the padding trains nothing
        pairs += list(zip(trained[0::2], trained[1::2], strict=True))
    return pairs


def test_evaluate_writes_held_out_preference_metrics_equal_to_an_independent_computation(two_runs, mlflow_server):
    _, results, logs = two_runs
    params, metrics = results["pr"]
    assert json.loads(open(f"{params.train.output_dir}/metrics.json").read()) == metrics
    model = loading.load_trained(params, f"{params.train.output_dir}/adapter", torch.device("cpu"))
    beta, margins, logp_margins = params.train.beta, [], []
    with torch.no_grad():
        for chosen, rejected in held_out_pairs(params.data.prepared_dir):
            (c, n_c), (r, n_r) = alone(model, *chosen), alone(model, *rejected)
            with model.disable_adapter():
                (rc, _), (rr, _) = alone(model, *chosen), alone(model, *rejected)
            margins.append(beta * (c - rc) - beta * (r - rr))  # DPO's implicit rewards, chosen minus rejected
            logp_margins.append(c / n_c - r / n_r)
    assert metrics["eval_pairs"] == len(margins) >= 8
    assert metrics["preference_accuracy"] == pytest.approx(sum(m > 0 for m in margins) / len(margins), abs=1e-6)
    assert metrics["reward_margin"] == pytest.approx(sum(margins) / len(margins), abs=1e-4)
    assert metrics["logp_margin"] == pytest.approx(sum(logp_margins) / len(logp_margins), abs=1e-4)
    assert metrics["reward_margin"] > 0  # trained eight steps: the held-out chosen answers gained on the rejected
    examples = json.loads(open(f"{params.train.output_dir}/eval_examples.json").read())
    assert len(examples["pairs"]) == len(margins) and len({p["id"] for p in examples["pairs"]}) == len(margins)

    run = mlflow.MlflowClient(mlflow_server.uri).get_run(json.loads(open(f"{params.train.output_dir}/mlflow_run.json").read())["run_id"])
    for name in PREFERENCE_METRICS:
        assert run.data.metrics[name] == pytest.approx(metrics[name])
    assert any(line.startswith(f"{len(margins)} held-out pairs: preference accuracy") for line in logs["pr"])


def test_the_pr_runs_pairs_are_compared_with_mains_pair_by_pair(two_runs):
    _, results, logs = two_runs
    pairs = results["pr"][1]["eval_pairs"]
    for name in PREFERENCE_METRICS:
        (line,) = [line for line in logs["pr"] if line.startswith(f"  {name} ")]
        assert f"on the {pairs} examples both runs share: " in line, line
        assert any(line.endswith(f": {v}") for v in (compare.BETTER, compare.WORSE, compare.NOISE)), line
    # main trained one step at a tiny learning rate, the PR eight at a large one: its margins are
    # clearly larger on the same pairs.
    (reward,) = [line for line in logs["pr"] if line.startswith("  reward_margin ")]
    assert reward.endswith(f": {compare.BETTER}"), reward


def test_report_shows_the_preference_metrics_with_their_verdicts(two_runs, mlflow_server):
    experiment, results, _ = two_runs
    result = run_cli("report", "--experiment", experiment, "--pr", "7", "--format", "json", MLFLOW_TRACKING_URI=mlflow_server.uri)
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)["runs"]
    for name in PREFERENCE_METRICS:
        q = row["quality"][name]
        assert q["value"] == pytest.approx(results["pr"][1][name], abs=1e-5)
        assert q["baseline"] == pytest.approx(results["main"][1][name], abs=1e-5)
        assert q["paired"] and q["ci95"][0] <= q["delta"] <= q["ci95"][1]
    assert row["quality"]["reward_margin"]["verdict"] == compare.BETTER

    markdown = run_cli("report", "--experiment", experiment, "--pr", "7", "--format", "markdown",
                       MLFLOW_TRACKING_URI=mlflow_server.uri).stdout
    reward = next(line for line in markdown.splitlines() if line.startswith("| reward_margin |"))
    assert "✅" in reward
    accuracy = next(line for line in markdown.splitlines() if line.startswith("| preference_accuracy |"))
    assert f"{results['pr'][1]['preference_accuracy']:.1%}" in accuracy
    header = next(line for line in markdown.splitlines() if line.startswith("| run | id |"))
    assert "| preference_accuracy | reward_margin | logp_margin |" in header
