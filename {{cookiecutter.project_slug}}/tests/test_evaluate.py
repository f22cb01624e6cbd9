"""Answer quality: metrics on known strings, the bootstrap on known differences, per-example
loss on the tiny model, the judge against a fake endpoint, lm-eval on a local task, and two
tiny-model runs compared through a real MLflow server."""

import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import mlflow
import numpy as np
import pytest
import torch

from {{ cookiecutter.package_name }} import data
from {{ cookiecutter.package_name }}.config import ConfigError, JudgeParams
from {{ cookiecutter.package_name }}.evaluate import compare, harness, judge, metrics
from {{ cookiecutter.package_name }}.evaluate.answers import validation_scores
from {{ cookiecutter.package_name }}.evaluate.stage import evaluate
from {{ cookiecutter.package_name }}.model import loading
from {{ cookiecutter.package_name }}.train import train

from conftest import run_cli, smoke_params

quiet = {"log": lambda *_: None}

# ============================================================================ metrics


PAIRS = [  # (reference, answer)
    ("Your files sync within a minute.", "Your files sync within a minute."),
    ("Your files sync within a minute.", "  Your files   sync within a minute. "),
    ("Reset it from the login page.", "Open the login page and choose reset."),
    ("Thirty days.", "Deleted files are kept for thirty days."),
    ("Contact support.", "zq xv"),
]


def test_builtin_metrics_match_the_libraries_own_computation():
    from rouge_score import rouge_scorer
    from sacrebleu.metrics import CHRF

    chrf, rouge = CHRF(), rouge_scorer.RougeScorer(["rougeL"])
    scorers = metrics.resolve(["exact_match", "chrf", "rouge_l"])
    for reference, answer in PAIRS:
        scores = metrics.score(scorers, "q", reference, answer)
        assert scores["chrf"] == pytest.approx(chrf.sentence_score(answer, [reference]).score)
        assert scores["rouge_l"] == pytest.approx(rouge.score(reference, answer)["rougeL"].fmeasure)
    assert [metrics.score(scorers, "q", r, a)["exact_match"] for r, a in PAIRS] == [1, 1, 0, 0, 0]
    assert metrics.score(scorers, "q", *PAIRS[0])["chrf"] == pytest.approx(100)
    assert metrics.score(scorers, "q", *PAIRS[4])["rouge_l"] == 0


def test_a_users_metric_is_imported_by_name_and_called_per_example(tmp_path):
    (tmp_path / "mymetrics.py").write_text(
        "def words(prompt, reference, answer):\n    return len(answer.split()) - len(reference.split())\n"
        "def broken(prompt, reference, answer):\n    return 'good'\n"
    )
    scorers = metrics.resolve(["chrf", "mymetrics:words"], root=tmp_path)
    assert list(scorers) == ["chrf", "words"]
    assert metrics.score(scorers, "q", "a b", "a b c d")["words"] == 2
    with pytest.raises(ConfigError, match="broken returned 'good'; it must return a finite number"):
        metrics.score(metrics.resolve(["mymetrics:broken"], root=tmp_path), "q", "a", "b")


@pytest.mark.parametrize("entry, message", [
    ("bleu", "unknown metric 'bleu'; built in: exact_match, chrf, rouge_l"),
    ("no_such_module:f", "cannot import 'no_such_module'"),
    ("json:no_such_function", "module 'json' has no function 'no_such_function'"),
])
def test_a_bad_metric_name_is_a_clear_error(entry, message):
    with pytest.raises(ConfigError, match=message):
        metrics.resolve([entry])


def test_evaluate_stops_on_a_bad_metric_before_loading_any_model(tmp_path):
    (tmp_path / "outputs/adapter").mkdir(parents=True)
    (tmp_path / "outputs/adapter/adapter_config.json").write_text("{}")
    result = run_cli("evaluate", "--set", "model.base=/nonexistent", "--set", f"train.output_dir={tmp_path / 'outputs'}",
                     "--set", "eval.metrics=[chrf, bleu]")
    assert result.returncode == 2
    assert "eval.metrics: unknown metric 'bleu'" in result.stderr and "Traceback" not in result.stderr


# ============================================================================ the paired comparison


def table(scores: list[float], name: str = "exact_match", ids=None) -> dict:
    ids = ids or [f"ex{i}" for i in range(len(scores))]
    return {"answers": [{"id": i, "prompt": "q", "reference": "r", "answer": "a", "scores": {name: s}} for i, s in zip(ids, scores, strict=True)]}


def test_identical_runs_give_an_interval_around_zero_and_within_noise():
    scores = list(np.random.default_rng(1).random(40))
    q = compare.compare(table(scores), table(scores))["quality"]["exact_match"]
    assert q["delta"] == 0 and q["ci95"] == [0, 0] and q["verdict"] == compare.NOISE and q["examples"] == 40


def test_all_exact_matches_against_none_is_better_and_the_reverse_is_worse():
    ours, theirs = table([1.0] * 30), table([0.0] * 20 + [1.0] * 10)
    better = compare.compare(ours, theirs)["quality"]["exact_match"]
    assert better["verdict"] == compare.BETTER and better["delta"] == pytest.approx(20 / 30)
    assert 0 < better["ci95"][0] < better["delta"] < better["ci95"][1] <= 1
    assert compare.compare(theirs, ours)["quality"]["exact_match"]["verdict"] == compare.WORSE


def test_pure_noise_is_within_noise_and_the_interval_covers_the_truth():
    rng = np.random.default_rng(7)
    base = rng.normal(50, 10, 200)
    run = base + rng.normal(0, 5, 200)  # same quality, per-example jitter only
    q = compare.compare(table(list(run), "chrf"), table(list(base), "chrf"))["quality"]["chrf"]
    assert q["ci95"][0] < 0 < q["ci95"][1] and q["verdict"] == compare.NOISE
    # The interval has the width the standard error predicts (1.96 * 5 / sqrt(200) = 0.69).
    assert q["ci95"][1] - q["ci95"][0] == pytest.approx(2 * 1.96 * 5 / np.sqrt(200), rel=0.2)


def test_lower_loss_is_better_and_losses_are_weighted_by_tokens():
    def losses(per_token, tokens):
        return {"losses": [{"id": f"v{i}", "loss_sum": p * t, "tokens": t, "correct": t // 2}
                           for i, (p, t) in enumerate(zip(per_token, tokens, strict=True))]}
    tokens = [10, 100, 30, 50, 20, 70]
    run, base = losses([1.0, 1.1, 0.9, 1.0, 1.2, 1.0], tokens), losses([1.5, 1.6, 1.4, 1.5, 1.7, 1.5], tokens)
    q = compare.compare(run, base)["quality"]["eval_loss"]
    assert q["verdict"] == compare.BETTER
    expected = sum(p * t for p, t in zip([1.0, 1.1, 0.9, 1.0, 1.2, 1.0], tokens, strict=True)) / sum(tokens)
    assert q["value"] == pytest.approx(expected) and q["delta"] == pytest.approx(-0.5)


def test_a_baseline_on_other_examples_is_compared_by_means_only():
    result = compare.compare(table([1.0, 1.0, 0.0]), table([0.0, 0.0, 1.0], ids=["x", "y", "z"]))
    q = result["quality"]["exact_match"]
    assert not result["paired"] and q["ci95"] is None and q["verdict"] is None
    assert q["delta"] == pytest.approx(1 / 3) and "other examples" in result["note"]


# ============================================================================ per-example loss on the tiny model


def test_per_example_losses_add_up_to_the_models_own_loss(make_params):
    params = make_params()
    data.prepare(params, **quiet)
    rows = data.load_prepared(params.data.prepared_dir, "val")
    model = loading.load_base_model(params, torch.device("cpu")).eval()
    per_example = validation_scores(model, rows, 4, torch.device("cpu"))
    first = {key: rows[key][:4].long() for key in ("input_ids", "labels", "position_ids")}
    with torch.no_grad():  # num_items_in_batch=1: the model's summed loss over every trained token
        summed = model(**first, num_items_in_batch=1).loss.item()
    in_first_rows = validation_scores(model, {key: value[:4] for key, value in rows.items()}, 4, torch.device("cpu"))
    assert sum(e["loss_sum"] for e in in_first_rows) == pytest.approx(summed, rel=1e-4)
    assert sum(e["tokens"] for e in per_example) == int((rows["labels"][:, 1:] != data.IGNORE).sum())
    summary = json.loads(open(f"{params.data.prepared_dir}/summary.json").read())["val"]
    assert len(per_example) == summary["examples"]  # one entry per packed example, none lost
    assert len({e["id"] for e in per_example}) == len(per_example)
    assert all(0 <= e["correct"] <= e["tokens"] for e in per_example)


# ============================================================================ the judge


class FakeJudge:
    """An OpenAI-compatible /chat/completions on 127.0.0.1 that answers deterministically:
    `prefers="reference"` picks the answer sharing more words with the reference; `"A"`
    always the first (a position-biased judge)."""

    def __init__(self, prefers: str = "reference"):
        self.requests = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                text = body["messages"][1]["content"]
                reference = set(text.split("Reference answer:\n")[1].split("\n\nAnswer A:")[0].split())
                first = set(text.split("Answer A:\n")[1].split("\n\nAnswer B:")[0].split())
                second = set(text.split("Answer B:\n")[1].split("\n\nWhich is better")[0].split())
                if prefers == "A":
                    letter = "A"
                else:
                    overlap = len(first & reference) - len(second & reference)
                    letter = "A" if overlap > 0 else "B" if overlap < 0 else "T"
                reply = json.dumps({"choices": [{"message": {"role": "assistant", "content": letter}}],
                                    "usage": {"prompt_tokens": 100, "completion_tokens": 1}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_judge():
    servers = []

    def start(prefers="reference"):
        servers.append(FakeJudge(prefers))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def judged_answers(n=12):
    ours = [{"id": f"p{i}", "prompt": [{"role": "user", "content": f"question {i}"}], "reference": f"the answer is {i}",
             "answer": f"the answer is {i}"} for i in range(n)]
    theirs = [{**row, "answer": "zq xv"} for row in ours]
    return ours, theirs


def test_the_judge_prefers_the_better_answers_in_both_orders_and_counts_its_cost(fake_judge):
    server = fake_judge()
    env = {"JUDGE_BASE_URL": server.url, "JUDGE_MODEL": "fake-judge", "JUDGE_API_KEY": "k-123"}
    settings = JudgeParams(enabled=True, usd_per_million_input_tokens=2.0, usd_per_million_output_tokens=8.0)
    ours, theirs = judged_answers()
    result = judge.judge_runs(settings, ours, theirs, "base-run", environ=env)
    assert result["win_rate"] == 1.0 and result["verdict"] == compare.BETTER and result["examples"] == 12
    assert result["calls"] == 24 and len(server.requests) == 24
    assert result["cost_usd"] == pytest.approx((24 * 100 * 2.0 + 24 * 1 * 8.0) / 1e6)
    assert {r["path"] for r in server.requests} == {"/v1/chat/completions"}
    assert {r["auth"] for r in server.requests} == {"Bearer k-123"}
    assert {r["body"]["model"] for r in server.requests} == {"fake-judge"}
    # Both orders: our answer is A in one call and B in the other, for every prompt.
    firsts = [r["body"]["messages"][1]["content"].split("Answer A:\n")[1].startswith("the answer") for r in server.requests]
    assert firsts.count(True) == firsts.count(False) == 12
    swapped = judge.judge_runs(settings, theirs, ours, "base-run", environ=env)
    assert swapped["win_rate"] == 0.0 and swapped["verdict"] == compare.WORSE


def test_a_judge_that_always_picks_the_first_answer_cancels_out(fake_judge):
    server = fake_judge(prefers="A")
    ours, theirs = judged_answers()
    result = judge.judge_runs(JudgeParams(enabled=True), ours, theirs, "base-run",
                              environ={"JUDGE_BASE_URL": server.url, "JUDGE_MODEL": "biased"})
    assert result["win_rate"] == 0.5 and result["ci95"] == [0.5, 0.5] and result["verdict"] == compare.NOISE
    assert result["cost_usd"] == 0 and not result["priced"]


def test_the_judges_key_never_goes_to_another_machine_in_the_clear():
    with pytest.raises(judge.JudgeError, match="must be https"):
        judge.endpoint(JudgeParams(enabled=True, model="m"), {"JUDGE_BASE_URL": "http://judge.example.com/v1"})
    with pytest.raises(judge.JudgeError, match="needs JUDGE_BASE_URL and JUDGE_MODEL"):
        judge.endpoint(JudgeParams(enabled=True), {})


# ============================================================================ lm-evaluation-harness, offline


TASK_ROWS = [
    {"question": "Where do synced files go?", "choices": [" to the cloud", " to the moon"], "answer": 0},
    {"question": "What resets a password?", "choices": [" a banana", " a reset link"], "answer": 1},
    {"question": "How long are deleted files kept?", "choices": [" thirty days", " for ever and ever"], "answer": 0},
    {"question": "Who answers tickets?", "choices": [" nobody", " the support team"], "answer": 1},
]


@pytest.fixture(scope="module")
def local_task(tmp_path_factory):
    """A multiple-choice task in lm-eval's YAML format over a local JSONL file: no download."""
    root = tmp_path_factory.mktemp("harness")
    # Fields named directly (lm-eval reads a field whose name is given), so no Jinja is needed.
    rows = [{**r, "prompt": f"Question: {r['question']}\nAnswer:"} for r in TASK_ROWS]
    (root / "support_mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "tasks").mkdir()
    (root / "tasks/support_mc.yaml").write_text(
        "task: support_mc\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {root / 'support_mc.jsonl'}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        "doc_to_text: prompt\n"
        "doc_to_choice: choices\n"
        "doc_to_target: answer\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
    )
    return root / "tasks"


def test_harness_task_accuracy_is_what_the_models_loglikelihoods_say(tiny_model_dir, local_task):
    tokenizer = loading.load_tokenizer(str(tiny_model_dir))
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    manager = harness.task_manager(["support_mc"], str(local_task))
    result = harness.run_tasks(model, tokenizer, manager, ["support_mc"], None, 4)
    assert list(result) == ["support_mc"] and list(result["support_mc"]) == ["acc"]

    def loglikelihood(context: str, continuation: str) -> float:
        whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
        start = len(tokenizer(context, add_special_tokens=False)["input_ids"])
        with torch.no_grad():
            logits = model(torch.tensor([whole])).logits[0].log_softmax(-1)
        return sum(logits[i - 1, whole[i]].item() for i in range(start, len(whole)))

    right = [max(range(2), key=lambda c: loglikelihood(f"Question: {r['question']}\nAnswer:", r["choices"][c])) == r["answer"]
             for r in TASK_ROWS]
    assert result["support_mc"]["acc"] == pytest.approx(sum(right) / len(right))


def test_an_unknown_harness_task_is_named(local_task):
    with pytest.raises(ConfigError, match="unknown task\\(s\\) no_such_task"):
        harness.task_manager(["support_mc", "no_such_task"], str(local_task))


# ============================================================================ two runs through a real MLflow server


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, tiny_model_dir, sample_data, mlflow_server, local_task):
    """main's run (with a harness task), then a PR's run (judged against main's) of the tiny
    model, each trained and evaluated in this process, logging to the real server."""
    root = tmp_path_factory.mktemp("two-runs")
    experiment = f"quality-{root.name}"
    judge_server = FakeJudge()
    logs, results = {}, {}
    common = ["train.max_steps=6", "train.log_every_steps=2", "eval.generations=6", "eval.max_new_tokens=6",
              f"data.prepared_dir={root / 'prepared'}", f"tracking.experiment={experiment}"]
    runs = {
        "main": (["train.learning_rate=0.01", "eval.harness_tasks=[support_mc]", f"eval.harness_include={local_task}"],
                 {"GIT_BRANCH": "main", "GIT_COMMIT": "a" * 40}),
        # eval.generations raised after prepare kept 6 prompts: evaluate answers those 6 and says so.
        "pr": (["train.learning_rate=0.02", "eval.generations=8", "eval.judge.enabled=true", "eval.judge.usd_per_million_input_tokens=1.0"],
               {"GIT_BRANCH": "feature", "GIT_COMMIT": "b" * 40, "PR_NUMBER": "12", "JUDGE_BASE_URL": judge_server.url,
                "JUDGE_MODEL": "fake-judge"}),
    }
    try:
        for name, (sets, env) in runs.items():
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
                for key in ("GITHUB_HEAD_REF", "GITHUB_SHA", "GITHUB_REF", "RUN_NAME"):
                    patch.delenv(key, raising=False)
                for key, value in env.items():
                    patch.setenv(key, value)
                params = smoke_params(root / name, tiny_model_dir, sample_data, *common, *sets)
                if name == "main":
                    data.prepare(params, **quiet)
                train(params, **quiet)
                lines = []
                results[name] = (params, evaluate(params, log=lines.append))
                logs[name] = lines
    finally:
        judge_server.close()
    return experiment, results, logs


def run_id(params) -> str:
    return json.loads(open(f"{params.train.output_dir}/mlflow_run.json").read())["run_id"]


def test_evaluate_saves_means_as_metrics_and_every_example_for_later(two_runs, mlflow_server):
    _, results, logs = two_runs
    params, metrics_json = results["main"]
    assert json.loads(open(f"{params.train.output_dir}/metrics.json").read()) == metrics_json
    assert {"eval_loss", "perplexity", "token_accuracy", "exact_match", "chrf", "rouge_l"} <= set(metrics_json)
    assert metrics_json["eval_examples"] == 6 and set(metrics_json["harness"]) == {"support_mc"}
    examples = json.loads(open(f"{params.train.output_dir}/eval_examples.json").read())
    assert len(examples["answers"]) == 6
    assert metrics_json["chrf"] == pytest.approx(sum(a["scores"]["chrf"] for a in examples["answers"]) / 6, abs=1e-6)
    tokens = sum(e["tokens"] for e in examples["losses"])
    assert metrics_json["eval_loss"] == pytest.approx(sum(e["loss_sum"] for e in examples["losses"]) / tokens, abs=1e-6)
    client = mlflow.MlflowClient(mlflow_server.uri)
    run = client.get_run(run_id(params))
    assert run.data.metrics["token_accuracy"] == pytest.approx(metrics_json["token_accuracy"])
    assert run.data.metrics["harness.support_mc.acc"] == metrics_json["harness"]["support_mc"]["acc"]
    assert compare.download_examples(client, run.info.run_id, params.train.output_dir + "/dl") == examples
    assert any("no finished run of `main`" in line for line in logs["main"])  # the first run has no baseline


def test_the_pr_run_is_compared_with_mains_example_by_example(two_runs):
    _, results, logs = two_runs
    assert (f"compared with {run_id(results['main'][0])[:8]} (newest finished run of the baseline branch), "
            "this run vs baseline:") in logs["pr"]
    verdicts = (compare.BETTER, compare.WORSE, compare.NOISE)
    for name in ("eval_loss", "token_accuracy", "exact_match", "chrf", "rouge_l"):
        (line,) = [line for line in logs["pr"] if line.startswith(f"  {name} ")]
        assert any(v in line for v in verdicts), line
        if name not in ("eval_loss", "token_accuracy"):
            assert f"  {name:<16} on the 6 examples both runs share: " in line, line
    assert any(line.startswith("judge: win rate") for line in logs["pr"])
    assert any(line.startswith("note: ") and "holds 6 prompts, eval.generations=8" in line for line in logs["pr"])
    assert results["pr"][1]["judge_cost_usd"] == pytest.approx(12 * 100 / 1e6)  # 6 prompts, both orders


def test_report_json_and_markdown_carry_the_paired_quality(two_runs, mlflow_server):
    experiment, results, _ = two_runs
    result = run_cli("report", "--experiment", experiment, "--pr", "12", "--format", "json",
                     MLFLOW_TRACKING_URI=mlflow_server.uri)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["baseline"]["run_id"] == run_id(results["main"][0])
    (row,) = report["runs"]
    assert row["run_id"] == run_id(results["pr"][0]) and row["id"] == row["run_id"][:8]
    quality = row["quality"]
    assert set(quality) == {"eval_loss", "token_accuracy", "exact_match", "chrf", "rouge_l", "judge_win_rate"}
    for name in ("eval_loss", "token_accuracy", "chrf", "rouge_l"):
        q = quality[name]
        assert q["value"] == pytest.approx(results["pr"][1][name], abs=1e-5)
        assert q["baseline"] == pytest.approx(results["main"][1][name], abs=1e-5)
        assert q["delta"] == pytest.approx(q["value"] - q["baseline"], abs=1e-9)
        assert q["ci95"][0] <= q["delta"] <= q["ci95"][1]
        assert q["verdict"] in (compare.BETTER, compare.WORSE, compare.NOISE) and q["paired"]
    assert quality["judge_win_rate"]["value"] == pytest.approx(results["pr"][1]["judge_win_rate"])
    assert len(row["answers"]) == 3 and all(a["baseline"] is not None for a in row["answers"])

    markdown = run_cli("report", "--experiment", experiment, "--pr", "12", "--format", "markdown",
                       MLFLOW_TRACKING_URI=mlflow_server.uri).stdout
    assert f"### Quality: `pr-12@bbbbbbb ({row['id']})` against `main@aaaaaaa ({report['baseline']['id']})`" in markdown
    assert "| metric | this run | baseline | delta [95% interval] | verdict |" in markdown
    assert markdown.index("### Quality") < markdown.index("### Speed and cost") < markdown.index("<details>")
    chrf = next(line for line in markdown.splitlines() if line.startswith("| chrf |"))
    assert f"{quality['chrf']['delta']:+.4g} [{quality['chrf']['ci95'][0]:+.4g}, {quality['chrf']['ci95'][1]:+.4g}]" in chrf
    # The runs table: each run's task means with the paired verdict; trained on this CPU with
    # nothing priced, the PR's cost is "no price", not $0.00.
    assert "| run | id | eval_loss | perplexity | token_accuracy | exact_match | chrf | rouge_l | tokens_per_second |" in markdown
    pr_row = next(line for line in markdown.splitlines() if line.startswith("| `pr-12@bbbbbbb` |"))
    base_row = next(line for line in markdown.splitlines() if line.startswith("| baseline `main@aaaaaaa` |"))
    assert "| no price | no GPU |" in pr_row and "| no price | no GPU |" in base_row and row["priced"] is False
    assert "$" not in pr_row + base_row
    verdict = {compare.BETTER: "✅", compare.WORSE: "⚠️", compare.NOISE: "➖"}[quality["chrf"]["verdict"]]
    assert f"{results['pr'][1]['chrf']:.4g} ({verdict} " in pr_row


def test_paired_figures_over_part_of_the_examples_say_so(two_runs, mlflow_server, tiny_model_dir, sample_data, tmp_path,
                                                         monkeypatch):
    """A baseline evaluated on only part of this run's validation set (another data version):
    the compared eval loss is over the shared examples, not the headline's all, and says so."""
    _, results, _ = two_runs
    pr_params = results["pr"][0]
    out = tmp_path / "outputs"  # the PR's adapter, without its MLflow run (nothing is logged to it)
    shutil.copytree(pr_params.train.output_dir, out, ignore=shutil.ignore_patterns("mlflow_run.json", "dl"))
    losses = json.loads((out / "eval_examples.json").read_text())["losses"]
    shared = losses[: max(2, (2 * len(losses) + 2) // 3)]
    assert len(shared) < len(losses)
    # The baseline: the same examples, half the loss, on fewer of them.
    base_table = {"answers": json.loads((out / "eval_examples.json").read_text())["answers"],
                  "losses": [{**e, "loss_sum": e["loss_sum"] / 2} for e in shared]}
    client, experiment = mlflow.MlflowClient(mlflow_server.uri), f"subset-{tmp_path.name}"
    base = client.create_run(client.create_experiment(experiment), run_name="main@ccccccc", tags={"git_branch": "main"})
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "eval_examples.json").write_text(json.dumps(base_table))
    client.log_artifact(base.info.run_id, str(tmp_path / "base" / "eval_examples.json"))
    client.log_metric(base.info.run_id, "eval_loss", 1.0)
    client.set_terminated(base.info.run_id)

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    params = smoke_params(tmp_path, tiny_model_dir, sample_data, "eval.generations=6", "eval.max_new_tokens=6",
                         f"data.prepared_dir={pr_params.data.prepared_dir}", f"train.output_dir={out}",
                         f"tracking.experiment={experiment}")
    lines = []
    result = evaluate(params, log=lines.append)
    assert any(line.startswith(f"eval_loss {result['eval_loss']:.4f}, ") for line in lines)  # the headline: all examples
    scored = {e["id"]: e for e in json.loads((out / "eval_examples.json").read_text())["losses"]}
    mean = sum(scored[e["id"]]["loss_sum"] for e in shared) / sum(scored[e["id"]]["tokens"] for e in shared)
    (line,) = [line for line in lines if line.startswith("  eval_loss ")]
    assert line.startswith(f"  eval_loss        on the {len(shared)} examples both runs share (of this run's {len(losses)}): "
                           f"{mean:.4g} vs {mean / 2:.4g} (baseline), +"), line
    assert line.endswith(": worse"), line
    (line,) = [line for line in lines if line.startswith("  exact_match ")]
    exact = result["exact_match"]
    assert f"on the 6 examples both runs share: {exact:.1%} vs {exact:.1%} (baseline), +0.0 pts" in line, line
