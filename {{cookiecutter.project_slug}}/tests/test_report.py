"""`report` against a real MLflow server: known runs in, tables / markdown / JSON / PNGs out."""

import json
import time

import mlflow
import pytest
from mlflow.entities import Metric, RunStatus, RunTag

from {{ cookiecutter.package_name }} import report

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
    _, name, _ = populated
    result = report_cli(mlflow_server, name, "--pr", "7", "--format", "markdown")
    lines = result.stdout.splitlines()
    assert lines[0].startswith("| run | eval_loss | perplexity | tokens_per_second | cost_usd")
    assert lines[2].startswith("| baseline `main-new` | 1.4000")
    pr7a = next(line for line in lines if "`pr7-a`" in line)
    assert "1.2000 (✅ -0.2 (-14.3%))" in pr7a and "$3.00 (⚠️ +1 (+50.0%))" in pr7a


def test_terminal_table_lists_the_last_runs(populated, mlflow_server):
    _, name, _ = populated
    result = report_cli(mlflow_server, name, "--last", "3")
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["run", "eval_loss", "perplexity"]
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


def test_a_thousand_runs_report_in_under_5_seconds(tmp_path):
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
    assert elapsed < 5, f"report took {elapsed:.1f} s"
