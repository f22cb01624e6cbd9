"""MLflow against a real `mlflow server` on 127.0.0.1: complete runs, and outages that lose nothing."""

import json
import os
import subprocess
import sys
import time

import mlflow
import pytest

from {{ cookiecutter.package_name }} import data
from {{ cookiecutter.package_name }}.tracking import Spool, sync_spools

from conftest import PROJECT, MlflowServer, cli_overrides, smoke_params

STEPS = 24


def train_args(params, tmp, name, *extra):
    changes = {
        "train.output_dir": tmp / name, "checkpoint.dir": tmp / f"ckpt-{name}",
        "train.max_steps": STEPS, "train.log_every_steps": 1, "checkpoint.every_steps": 1000,
    }
    return [*cli_overrides(params, **changes), *extra]


def cli(*args, env=None, wait=True):
    command = [sys.executable, "-m", "{{ cookiecutter.package_name }}", *args]
    kwargs = dict(cwd=PROJECT, text=True, env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", **(env or {})})
    if wait:
        return subprocess.run(command, capture_output=True, timeout=600, **kwargs)
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tiny_model_dir, sample_data):
    tmp = tmp_path_factory.mktemp("mlflow-runs")
    params = smoke_params(tmp, tiny_model_dir, sample_data, "tracking.experiment=mlflow-tests", "cost.hourly_usd=1.8")
    data.prepare(params, log=lambda *_: None)
    return params, tmp


def test_two_runs_with_different_params_carry_every_field(prepared, mlflow_server):
    params, tmp = prepared
    env = {"MLFLOW_TRACKING_URI": mlflow_server.uri, "PR_NUMBER": "42"}
    for name, rank in (("rank8", 8), ("rank4", 4)):
        for stage in ("train", "evaluate"):
            extra = ["--set", f"lora.r={rank}", "--set", "tracking.system_metrics_interval_s=0.5"]
            result = cli(stage, *train_args(params, tmp, name, *extra), env=env)
            assert result.returncode == 0, result.stderr[-3000:]

    client = mlflow.MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name("mlflow-tests")
    runs = {r.data.params["lora.r"]: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"8", "4"}
    for rank, run in runs.items():
        assert run.info.status == "FINISHED"
        assert run.info.run_name.startswith("pr-42@")
        assert run.data.params["train.max_steps"] == str(STEPS)
        for tag in ("git_commit", "method", "base_model", "pr", "recoveries"):
            assert tag in run.data.tags, tag
        for key in ("loss", "learning_rate", "grad_norm", "tokens_per_second", "cost_usd", "gpu_hours", "eval_loss", "perplexity"):
            assert key in run.data.metrics, key
        assert run.data.metrics["cost_usd"] > 0
        assert "system/cpu_utilization_percentage" in run.data.metrics  # sampled by MLflow itself
        losses = client.get_metric_history(run.info.run_id, "loss")
        assert [m.step for m in losses] == list(range(1, STEPS + 1))
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"metrics.json", "loss.png", "generations.jsonl", "generations.json", "eval_examples.json",
                "adapter_config.json"} <= artifacts
        local = client.download_artifacts(run.info.run_id, "generations.json", str(tmp / f"dl-{rank}"))
        table = json.load(open(local))
        assert table["columns"] == ["reference", "generated", "prompt", *params.eval.metrics]
        assert len(table["data"]) == params.eval.generations
        assert json.loads(open(client.download_artifacts(run.info.run_id, "metrics.json", str(tmp / f"m-{rank}"))).read())["eval_loss"] \
            == pytest.approx(run.data.metrics["eval_loss"])
    if (PROJECT / "data/raw/support.jsonl.dvc").is_file():  # the baked project: a DVC-tracked dataset
        inputs = client.get_run(runs["8"].info.run_id).inputs.dataset_inputs
        assert inputs and inputs[0].dataset.source_type == "dvc"


def test_server_down_mid_run_loses_nothing_and_duplicates_nothing(prepared, tmp_path):
    params, tmp = prepared
    server = MlflowServer(tmp_path).start()
    env = {"MLFLOW_TRACKING_URI": server.uri, "TRAIN_SAMPLE_LOG": str(tmp_path / "samples")}
    # A short retry interval so the test does not wait for the default 15 s.
    process = cli("train", *train_args(params, tmp, "outage", "--set", "train.max_steps=60"), env=env, wait=False)
    log = tmp_path / "samples"
    deadline = time.monotonic() + 120
    while not (log.exists() and len(log.read_text().splitlines()) > 5) and time.monotonic() < deadline:
        time.sleep(0.01)
    server.stop()  # the server goes away while training runs
    while len(log.read_text().splitlines()) < 40 and process.poll() is None:
        time.sleep(0.01)
    assert process.poll() is None  # training went on without the server
    server.start()  # ...and comes back, same port, same database
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]

    run_id = json.loads((tmp / "outage/mlflow_run.json").read_text())["run_id"]
    client = mlflow.MlflowClient(server.uri)
    history = client.get_metric_history(run_id, "loss")
    assert [m.step for m in history] == list(range(1, 61))  # every step once
    timestamps = [m.timestamp for m in sorted(history, key=lambda m: m.step)]
    assert timestamps == sorted(timestamps)  # and in order
    assert client.get_run(run_id).info.status == "FINISHED"
    assert not list((tmp / "ckpt-outage").glob("*/mlflow-spool/[0-9]*.json"))  # nothing left behind
    server.stop()


def test_server_never_back_keeps_the_spool_until_sync(prepared, tmp_path):
    params, tmp = prepared
    server = MlflowServer(tmp_path)  # the address the run is told about, but nobody listens yet
    env = {"MLFLOW_TRACKING_URI": server.uri}
    result = cli("train", *train_args(params, tmp, "offline", "--set", "train.max_steps=6", "--set", "tracking.flush_timeout_s=1"), env=env)
    assert result.returncode == 0, result.stderr[-3000:]  # training does not need MLflow
    assert "MLflow unreachable" in result.stdout
    spools = list((tmp / "ckpt-offline").glob("*/mlflow-spool"))
    assert len(spools) == 1 and Spool(spools[0], server.uri).pending > 0

    server.start()
    try:
        assert sync_spools(tmp / "ckpt-offline", server.uri) == (1, 0, 0)  # sent, pending, quarantined
        client = mlflow.MlflowClient(server.uri)
        [run] = client.search_runs([client.get_experiment_by_name("mlflow-tests").experiment_id])
        assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == list(range(1, 7))
        assert run.info.status == "FINISHED"
    finally:
        server.stop()
