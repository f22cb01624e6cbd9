"""`report` against a real MLflow server: known runs in, tables / markdown / JSON / PNGs out."""

import json
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.entities import Metric, RunStatus, RunTag

from {{ cookiecutter.package_name }} import report
from {{ cookiecutter.package_name }}.compute.cost import CostMeter

from conftest import MlflowServer, run_cli

# name: (branch, pr, eval_loss, cost_usd, tokens/s, gpu)
RUNS = {
    "main-old": ("main", "", 1.50, 2.00, 9000, "L4"),
    "main-new": ("main", "", 1.40, 2.00, 9500, "L4"),
    "pr7-a": ("feature", "7", 1.20, 3.00, 9800, "A100"),
    "pr7-b": ("feature", "7", 1.60, 1.00, 12000, "L4"),
    "other": ("exp", "", 1.35, 5.00, 8000, "H100"),
}


@pytest.fixture(scope="module")
def populated(mlflow_server):
    client = mlflow.MlflowClient(mlflow_server.uri)
    experiment = client.create_experiment(f"report-{time.time_ns()}")
    ids = {}
    for name, (branch, pr, loss, cost, tps, gpu) in RUNS.items():  # oldest first
        run = client.create_run(experiment, run_name=name, tags={"git_branch": branch, "pr": pr, "gpu": gpu, "cloud": "aws", "spot": "true", "recoveries": "0"})
        metrics = {"eval_loss": loss, "cost_usd": cost, "tokens_per_second": tps, "gpu_hours": cost / 2}
        client.log_batch(run.info.run_id, metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()])
        for step in (1, 2, 3):
            client.log_metric(run.info.run_id, "loss", loss + 1 / step, step=step)
        client.set_terminated(run.info.run_id)
        ids[name] = run.info.run_id
        time.sleep(0.002)  # distinct start times: "newest" is well defined
    return client, client.get_experiment(experiment).name, ids


def report_cli(server, name, *args):
    return run_cli("report", "--experiment", name, *args, MLFLOW_TRACKING_URI=server.uri)


def test_baseline_is_mains_newest_finished_run(populated):
    client, name, ids = populated
    assert report.find_baseline(client, name).info.run_id == ids["main-new"]


def test_json_has_pr_runs_with_deltas_against_the_baseline(populated, mlflow_server):
    _, name, ids = populated
    result = report_cli(mlflow_server, name, "--pr", "7", "--format", "json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["baseline"]["run_id"] == ids["main-new"]
    rows = {r["run_name"]: r for r in data["runs"]}
    assert set(rows) == {"pr7-a", "pr7-b"}
    assert rows["pr7-a"]["eval_loss"] == pytest.approx(1.2)
    assert rows["pr7-a"]["delta"]["eval_loss"] == "-0.2 (-14.3%)"
    assert rows["pr7-b"]["delta"]["cost_usd"] == "-1 (-50.0%)"
    assert rows["pr7-a"]["gpu"] == "A100"


def test_markdown_marks_better_and_worse(populated, mlflow_server):
    _, name, ids = populated
    result = report_cli(mlflow_server, name, "--pr", "7", "--format", "markdown")
    lines = result.stdout.splitlines()
    assert lines[0].startswith("| run | id | eval_loss | perplexity | tokens_per_second | cost_usd")
    assert lines[2].startswith(f"| baseline `main-new` | {ids['main-new'][:8]} | 1.4000")
    pr7a = next(line for line in lines if "`pr7-a`" in line)
    # Speed and cost are marked by their sign; eval loss only by the paired comparison's verdict.
    assert "1.2000 (-0.2 (-14.3%))" in pr7a and "$3.00 (⚠️ +1 (+50.0%))" in pr7a and "12,000" not in pr7a


def test_terminal_table_lists_the_last_runs(populated, mlflow_server):
    _, name, _ = populated
    result = report_cli(mlflow_server, name, "--last", "3")
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["run", "id", "eval_loss"]
    assert lines[2].startswith("(baseline) main-new")
    assert [line.split()[0] for line in lines[3:]] == ["other", "pr7-b", "pr7-a"]  # newest first


def test_plots_are_written(populated, mlflow_server, tmp_path):
    _, name, _ = populated
    result = report_cli(mlflow_server, name, "--plots", str(tmp_path), "--last", "5")
    assert result.returncode == 0, result.stderr
    for png in ("loss_curves.png", "cost_vs_eval_loss.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pareto_front():
    # (cost, eval loss): the second is dominated by the first; the others trade off.
    points = [(1.0, 1.5), (2.0, 1.6), (3.0, 1.2), (0.5, 2.0)]
    assert report.pareto_front(points) == [3, 0, 2]


def test_a_thousand_runs_report_without_a_request_per_run(tmp_path):
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore(f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path / "artifacts"))
    experiment = store.create_experiment("bulk")
    for i in range(1000):
        branch = "main" if i % 50 == 0 else f"branch-{i}"
        run = store.create_run(experiment, "test", 1_700_000_000_000 + i, [RunTag("git_branch", branch), RunTag("pr", str(i % 40))], f"run-{i}")
        metrics = [Metric("eval_loss", 1 + i / 1000, 0, 0), Metric("cost_usd", i / 100, 0, 0), Metric("tokens_per_second", 1000 + i, 0, 0)]
        store.log_batch(run.info.run_id, metrics=metrics, params=[], tags=[])
        store.update_run_info(run.info.run_id, RunStatus.FINISHED, 1_700_000_000_500 + i, run_name=None)
    server = MlflowServer(tmp_path).start()
    try:
        started = time.perf_counter()
        result = run_cli("report", "--experiment", "bulk", "--last", "1000", "--format", "json", MLFLOW_TRACKING_URI=server.uri)
        elapsed = time.perf_counter() - started
    finally:
        server.stop()
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert len(data["runs"]) == 999 and data["baseline"]["run_name"] == "run-950"
    # A guard against per-run requests (minutes for 1,000 runs), not a speed measurement: on a
    # shared 2-core machine one call measured 5.2 to 6.2 s, with the same code before and after.
    assert elapsed < 15, f"report took {elapsed:.1f} s"


# ------------------------------------------------------------------ quality from per-example scores


def examples_table(exact: list[float], ids: list[str], answer: str) -> dict:
    answers = [{"id": i, "prompt": [{"role": "user", "content": f"question {i} | <b>"}], "reference": f"answer {i}",
                "answer": answer, "scores": {"exact_match": e, "chrf": 50.0 + 10 * e}} for i, e in zip(ids, exact, strict=True)]
    losses = [{"id": f"v{i}", "loss_sum": 2.0 * (10 + i), "tokens": 10 + i, "correct": 5} for i in range(10)]
    return {"answers": answers, "losses": losses}


@pytest.fixture(scope="module")
def quality_runs(mlflow_server, tmp_path_factory):
    """main's run and two runs of PR 8 with one name, each with an eval_examples.json artifact:
    the newest answers every prompt exactly, the older one was evaluated on other examples."""
    client = mlflow.MlflowClient(mlflow_server.uri)
    tmp = tmp_path_factory.mktemp("quality")
    experiment = client.create_experiment(f"quality-{time.time_ns()}")
    ids = [f"p{i}" for i in range(20)]
    runs = [
        ("main@aaaaaaa", {"git_branch": "main"}, examples_table([0.0] * 15 + [1.0] * 5, ids, "wrong")),
        ("pr-8@bbbbbbb", {"git_branch": "feature", "pr": "8"}, examples_table([1.0] * 20, [f"other{i}" for i in range(20)], "x")),
        ("pr-8@bbbbbbb", {"git_branch": "feature", "pr": "8"}, examples_table([1.0] * 20, ids, "answer")),
    ]
    run_ids = []
    for n, (name, tags, table) in enumerate(runs):
        exact = sum(a["scores"]["exact_match"] for a in table["answers"]) / 20
        metrics = {"eval_loss": 2.0, "exact_match": exact, "eval_examples": 20, "cost_usd": 1.0, "tokens_per_second": 1000}
        run_ids.append(log_finished_run(client, experiment, name, tags, metrics, table, tmp / str(n)))
    return client.get_experiment(experiment).name, run_ids


def log_finished_run(client, experiment: str, name: str, tags: dict, metrics: dict, table: dict | None, tmp: Path) -> str:
    """A finished run with its metrics and, when given, its eval_examples.json artifact."""
    run = client.create_run(experiment, run_name=name, tags=tags)
    if table is not None:
        path = tmp / "eval_examples.json"
        path.parent.mkdir()
        path.write_text(json.dumps(table))
        client.log_artifact(run.info.run_id, str(path))
    client.log_batch(run.info.run_id, metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()])
    client.set_terminated(run.info.run_id)
    time.sleep(0.002)  # distinct start times: the newest run is unambiguous
    return run.info.run_id


def test_json_quality_is_paired_with_an_interval_and_a_verdict(quality_runs, mlflow_server):
    name, (main, older, newest) = quality_runs
    result = report_cli(mlflow_server, name, "--pr", "8", "--format", "json")
    assert result.returncode == 0, result.stderr
    rows = {row["run_id"]: row for row in json.loads(result.stdout)["runs"]}
    exact = rows[newest]["quality"]["exact_match"]
    assert exact["value"] == 1.0 and exact["baseline"] == 0.25 and exact["delta"] == pytest.approx(0.75)
    assert exact["verdict"] == "better" and 0 < exact["ci95"][0] < 0.75 < exact["ci95"][1] <= 1
    loss = rows[newest]["quality"]["eval_loss"]  # identical losses: no change, and no verdict beyond noise
    assert loss["delta"] == 0 and loss["ci95"] == [0, 0] and loss["verdict"] == "within noise"
    other = rows[older]["quality"]["exact_match"]
    assert other["ci95"] is None and other["verdict"] is None and "other examples" in rows[older]["quality_note"]
    assert rows[older]["quality"]["eval_loss"]["verdict"] == "within noise"  # its losses still pair


def test_markdown_shows_the_quality_block_and_tells_same_name_runs_apart(quality_runs, mlflow_server):
    name, (main, older, newest) = quality_runs
    markdown = report_cli(mlflow_server, name, "--pr", "8", "--format", "markdown").stdout
    assert f"### Quality: `pr-8@bbbbbbb ({newest[:8]})` against `main@aaaaaaa ({main[:8]})`" in markdown
    exact = next(line for line in markdown.splitlines() if line.startswith("| exact_match |"))
    assert exact.startswith("| exact_match | 100.0% | 25.0% | +75.0 pts [") and exact.endswith("| ✅ better |")
    assert "Paired on the same held-out examples (10-20 per metric)" in markdown
    rows = [line for line in markdown.splitlines() if line.startswith("| `pr-8@bbbbbbb` |")]
    assert [row.split(" | ")[1] for row in rows] == [newest[:8], older[:8]]
    # Side by side, with the prompt's markup neutralised so it cannot break the comment.
    assert "<details><summary>Answers side by side: the first 3 held-out prompts</summary>" in markdown
    assert "| question p0 \\| &lt;b&gt; | answer | wrong | answer p0 |" in markdown


def test_a_baseline_without_per_example_scores_is_compared_by_means_only():
    row = {"run_id": "r" * 32, "id": "rrrrrrrr", "run_name": "pr", "eval_loss": 1.0, "exact_match": 0.5}
    baseline = {"run_id": "b" * 32, "id": "bbbbbbbb", "run_name": "main", "eval_loss": 1.2, "exact_match": 0.4}
    report_data = report.build_report([row], baseline, {row["run_id"]: examples_table([1.0, 0.0], ["a", "b"], "x")})
    quality = report_data["runs"][0]["quality"]
    assert quality["eval_loss"]["delta"] == pytest.approx(-0.2) and quality["eval_loss"]["verdict"] is None
    assert "the baseline has no per-example scores" in report_data["runs"][0]["quality_note"]
    assert "| eval_loss | 1 | 1.2 | -0.2 | means only |" in report.to_markdown(report_data)


def test_a_zero_change_is_not_marked_as_worse():
    row = {"run_id": "r" * 32, "id": "rrrrrrrr", "run_name": "pr", "tokens_per_second": 1000.0, "cost_usd": 1.0}
    baseline = {**row, "run_id": "b" * 32, "id": "bbbbbbbb", "run_name": "main"}
    line = report.to_markdown(report.build_report([row], baseline)).splitlines()[-1]
    assert "1,000 (±0)" in line and "$1.00 (±0)" in line and "⚠️" not in line and "✅" not in line


def test_report_says_where_the_runs_are_when_none_match(mlflow_server):
    client = mlflow.MlflowClient(mlflow_server.uri)
    name = f"smoky-{time.time_ns()}"
    client.create_experiment(name)
    smoke = client.create_experiment(f"{name}-smoke")
    client.set_terminated(client.create_run(smoke, run_name="smoke-run").info.run_id)
    result = report_cli(mlflow_server, name, "--format", "json")
    assert result.returncode == 0 and json.loads(result.stdout)["runs"] == []
    assert f"no runs match in experiment '{name}'; runs are in '{name}-smoke'" in result.stderr
    assert "add --smoke" in result.stderr
    found = report_cli(mlflow_server, name, "--smoke", "--format", "json")
    assert [r["run_name"] for r in json.loads(found.stdout)["runs"]] == ["smoke-run"]


def test_the_cost_axis_starts_at_zero_even_when_every_run_was_free():
    assert report.cost_axis([0.0, 0.0]) == (0.0, 1.0)
    assert report.cost_axis([1.0, 2.0]) == (0.0, pytest.approx(2.2))


# ------------------------------------------------------------------ what a new user's runs look like


def cost_of(hourly_usd: float, gpus: int, hours: float, source: str):
    """What the trainer's CostMeter logs for `hours` on such a machine: (metrics, tags)."""
    clock = [0.0]
    meter = CostMeter(hourly_usd, gpus, source=source, clock=lambda: clock[0])
    clock[0] = hours * 3600
    return meter.metrics(tokens_seen=1000), meter.tags()


@pytest.fixture(scope="module")
def first_hour_runs(mlflow_server, tmp_path_factory):
    """main's GPU run; a PR run on a GPU 28.8 times dearer (no per-example scores); then the
    PR's run on a CPU nothing priced (as `make smoke` trains), whose validation set has 4
    examples main's lacks. Cost tags and metrics come from the real CostMeter."""
    client = mlflow.MlflowClient(mlflow_server.uri)
    tmp = tmp_path_factory.mktemp("first-hour")
    experiment = client.create_experiment(f"first-hour-{time.time_ns()}")
    ids = [f"p{i}" for i in range(20)]
    cpu_table = examples_table([1.0] * 20, ids, "answer")
    cpu_table["losses"] += [{"id": f"new{i}", "loss_sum": 3.0 * 10, "tokens": 10, "correct": 2} for i in range(4)]
    runs = [
        ("main@aaaaaaa", {"git_branch": "main", "gpu": "NVIDIA L4"}, cost_of(0.8, 1, 0.125, "params cost.hourly_usd"),
         {"eval_loss": 2.0, "exact_match": 0.25, "chrf": 52.5, "tokens_per_second": 1000.0},
         examples_table([0.0] * 15 + [1.0] * 5, ids, "wrong")),
        ("pr-5@bbbbbbb", {"git_branch": "feature", "pr": "5", "gpu": "NVIDIA H100"}, cost_of(3.8356, 1, 0.75, "params cost.hourly_usd"),
         {"eval_loss": 2.1, "tokens_per_second": 28767.0}, None),
        # Your own machine with nothing priced: prices.machine_price gives (0.0, "unknown").
        ("pr-5@ccccccc", {"git_branch": "feature", "pr": "5"}, cost_of(0.0, 0, 0.5, "unknown"),
         {"eval_loss": 2.1, "exact_match": 1.0, "chrf": 60.0, "tokens_per_second": 30.0}, cpu_table),
    ]
    run_ids = []
    for n, (name, tags, (cost, cost_tags), metrics, table) in enumerate(runs):
        if table is not None:
            metrics = {**metrics, "eval_examples": len(table["answers"])}
        run_ids.append(log_finished_run(client, experiment, name, {**tags, **cost_tags}, {**metrics, **cost}, table, tmp / str(n)))
    return client.get_experiment(experiment).name, run_ids


def test_a_run_nothing_priced_shows_no_price_not_zero_dollars(first_hour_runs, mlflow_server):
    name, (main, gpu, cpu) = first_hour_runs
    data = json.loads(report_cli(mlflow_server, name, "--pr", "5", "--format", "json").stdout)
    rows = {row["run_id"]: row for row in data["runs"]}
    # The logged numbers stay as they were (cost_usd 0.0): `priced` says what they are worth.
    assert rows[cpu]["cost_usd"] == 0.0 and rows[cpu]["priced"] is False and rows[cpu]["price_source"] == "unknown"
    assert rows[gpu]["priced"] is True and data["baseline"]["priced"] is True
    assert rows[cpu]["delta"]["cost_usd"] == "" and rows[cpu]["delta"]["gpu_hours"] == ""
    table = report_cli(mlflow_server, name, "--pr", "5").stdout
    [line] = [line for line in table.splitlines() if line.startswith("pr-5@ccccccc ")]
    assert "no price" in line and "no GPU" in line and "$" not in line and "±0" not in line and "-100" not in line
    assert "no price: trained on a machine nothing priced" in table
    markdown = report_cli(mlflow_server, name, "--pr", "5", "--format", "markdown").stdout
    [row] = [line for line in markdown.splitlines() if line.startswith("| `pr-5@ccccccc` |")]
    assert "| no price | no GPU |" in row and "$0.00" not in markdown and "✅ -0.1" not in row


def test_changes_beyond_double_read_as_a_ratio():
    assert report.delta(28.767, 1.0) == "+27.77 (28.8x)"
    assert report.delta(28767.0, 1000.0) == "+27,767 (28.8x)"  # digits, not +2.777e+04
    assert report.delta(3000.0, 10.0) == "+2,990 (300x)"
    assert report.delta(2.0, 1.0) == "+1 (+100.0%)"  # up to +100%, a percentage still reads well
    assert report.delta(0.04, 1.0) == "-0.96 (-96.0%)"
    assert report.delta(0.4, 0.25, "exact_match") == "+15.0 pts"  # rates change in points


def test_big_changes_in_the_table_are_ratios(first_hour_runs, mlflow_server):
    name, (main, gpu, cpu) = first_hour_runs
    data = json.loads(report_cli(mlflow_server, name, "--pr", "5", "--format", "json").stdout)
    row = next(row for row in data["runs"] if row["run_id"] == gpu)
    assert row["delta"]["cost_usd"] == "+2.777 (28.8x)" and row["delta"]["gpu_hours"] == "+0.625 (6.0x)"
    markdown = report_cli(mlflow_server, name, "--pr", "5", "--format", "markdown").stdout
    [line] = [line for line in markdown.splitlines() if line.startswith("| `pr-5@bbbbbbb` |")]
    assert "$2.88 (⚠️ +2.777 (28.8x))" in line and "28,767 (✅ +27,767 (28.8x))" in line and "2776" not in line


def test_the_runs_table_has_the_task_metrics_with_their_verdicts(first_hour_runs, mlflow_server):
    name, (main, gpu, cpu) = first_hour_runs
    table = report_cli(mlflow_server, name, "--pr", "5").stdout.splitlines()
    header = next(line for line in table if line.startswith("run "))
    # Only the task metrics some shown run logged, and only the tags some shown run has (no cloud).
    assert header.split()[:6] == ["run", "id", "eval_loss", "perplexity", "exact_match", "chrf"]
    assert "rouge_l" not in header and "token_accuracy" not in header and "cloud" not in header and "gpu" in header
    [line] = [line for line in table if line.startswith("pr-5@ccccccc ")]
    assert "100.0% +75.0 pts better" in line and "60 +7.5 (+14.3%) better" in line
    assert "2.1000 +0.1 (+5.0%) noise" in line  # eval loss: the paired verdict, not its sign
    [line] = [line for line in table if line.startswith("pr-5@bbbbbbb ")]
    assert "better" not in line and "noise" not in line  # no per-example scores: no verdict
    assert any(line.startswith("Quality columns: better, worse, noise (within noise)") for line in table)

    markdown = report_cli(mlflow_server, name, "--pr", "5", "--format", "markdown").stdout
    assert "| run | id | eval_loss | perplexity | exact_match | chrf | tokens_per_second | cost_usd |" in markdown
    assert "### Speed and cost, with each run's quality means" in markdown
    [row] = [line for line in markdown.splitlines() if line.startswith("| `pr-5@ccccccc` |")]
    assert "| 100.0% (✅ +75.0 pts) | 60 (✅ +7.5 (+14.3%)) |" in row and "2.1000 (➖ +0.1 (+5.0%))" in row
    assert "Quality columns: ✅ better, ⚠️ worse, ➖ within noise: the paired verdict" in markdown
    data = json.loads(report_cli(mlflow_server, name, "--pr", "5", "--format", "json").stdout)
    cpu_row = next(row for row in data["runs"] if row["run_id"] == cpu)
    assert cpu_row["delta"]["exact_match"] == "+75.0 pts" and cpu_row["quality"]["exact_match"]["verdict"] == "better"


def test_paired_figures_say_which_examples_they_are_over(first_hour_runs, mlflow_server):
    name, (main, gpu, cpu) = first_hour_runs
    table = report_cli(mlflow_server, name, "--pr", "5").stdout
    # The run's mean loss (2.1, over its 14 validation examples) is in the table; the quality
    # block's 2 is over the 10 main also has: it says so, so the two do not contradict.
    [line] = [line for line in table.splitlines() if line.startswith("  eval_loss ")]
    assert line.startswith("  eval_loss        on the 10 examples both runs share (of this run's 14): 2 vs 2 (baseline), ")
    [line] = [line for line in table.splitlines() if line.startswith("  exact_match ")]
    assert "on the 20 examples both runs share: 100.0% vs 25.0% (baseline), +75.0 pts [" in line and line.endswith("✅ better")
    markdown = report_cli(mlflow_server, name, "--pr", "5", "--format", "markdown").stdout
    assert ("Only the examples both runs share are compared: eval_loss (10 of 14), token_accuracy (10 of 14); so this "
            "run's figures here can differ from its means over all of its examples in the table below.") in markdown
    data = json.loads(report_cli(mlflow_server, name, "--pr", "5", "--format", "json").stdout)
    loss = next(row for row in data["runs"] if row["run_id"] == cpu)["quality"]["eval_loss"]
    assert loss["examples"] == 10 and loss["run_examples"] == 14
