"""The whole pipeline on the tiny model, for real: prepare -> train -> evaluate -> MLflow."""

import json
import math

import mlflow
import pytest

from {{ cookiecutter.package_name }} import data
from {{ cookiecutter.package_name }}.evaluate import evaluate
from {{ cookiecutter.package_name }}.model import loading
from {{ cookiecutter.package_name }}.tracking import plots
from {{ cookiecutter.package_name }}.train import BudgetExceeded, rows_for_step, train
from test_loss_plot import marker_misses

from conftest import smoke_params


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir, sample_data):
    """One short training run shared by the tests of this module."""
    params = smoke_params(tmp_path_factory.mktemp("run"), tiny_model_dir, sample_data, "cost.hourly_usd=2.5")
    data.prepare(params, log=lambda *_: None)
    adapter = train(params, log=lambda *_: None)
    metrics = evaluate(params, log=lambda *_: None)
    return params, adapter, metrics


def test_loss_falls(trained):
    params, _, _ = trained
    lines = open(params.train.output_dir + "/train_loss.csv").read().splitlines()
    assert lines[0] == "step,loss"
    losses = [float(line.split(",")[1]) for line in lines[1:]]
    assert len(losses) == params.train.max_steps // params.train.log_every_steps
    assert losses[-1] < losses[0] - 0.5, losses


def test_the_loss_png_marks_every_logged_point_and_the_eval_loss(trained):
    params, _, metrics = trained
    rows = open(params.train.output_dir + "/train_loss.csv").read().splitlines()[1:]
    log = [(int(step), float(loss)) for step, loss in (row.split(",") for row in rows)]
    # `evaluate` redrew it with its eval loss at the last step, beside the training loss.
    evals = [(params.train.max_steps, metrics["eval_loss"])]
    figure = plots.loss_figure(log, params.model.base, evals)  # drawn as evaluate drew it, to find the points
    png = params.train.output_dir + "/loss.png"
    # The eval square sits at the last step, over the last training dot when the two losses are close.
    assert marker_misses(png, figure, log[:-1], plots.TRAIN_COLOUR) == []
    assert marker_misses(png, figure, evals, plots.EVAL_COLOUR) == []


def test_adapter_is_saved_in_peft_format_and_reloads(trained):
    params, adapter, _ = trained
    assert (adapter / "adapter_config.json").is_file()
    assert (adapter / "adapter_model.safetensors").is_file()
    assert (adapter / "tokenizer.json").is_file()
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == params.lora.r and config["peft_type"] == "LORA"
    model = loading.load_trained(params, adapter, loading.resolve_device("cpu"))
    assert any("lora_A" in name for name, _ in model.named_parameters())


def test_evaluate_writes_metrics_json(trained):
    params, _, metrics = trained
    written = json.loads(open(params.train.output_dir + "/metrics.json").read())
    assert written == metrics
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]), rel=1e-3)
    # A trained adapter beats the random model's uniform guess over the vocabulary.
    vocab = len(loading.load_tokenizer(params.model.base))
    assert metrics["eval_loss"] < math.log(vocab) - 0.5


def test_mlflow_run_has_params_metrics_and_tags(trained):
    params, _, metrics = trained
    run_id = json.loads(open(params.train.output_dir + "/mlflow_run.json").read())["run_id"]
    client = mlflow.MlflowClient(params.tracking.uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.max_steps"] == str(params.train.max_steps)
    assert run.data.params["model.base"] == params.model.base
    summary = json.loads(open(f"{params.data.prepared_dir}/summary.json").read())["train"]
    assert run.data.params["data.dropped_too_long"] == str(summary["dropped_too_long"])
    assert run.data.params["data.packing_efficiency"] == str(summary["packing_efficiency"])
    for key in ("loss", "eval_loss", "perplexity", "tokens_per_second", "cost_usd", "gpu_hours", "learning_rate"):
        assert key in run.data.metrics, key
    assert run.data.metrics["eval_loss"] == pytest.approx(metrics["eval_loss"])
    assert run.data.metrics["tokens_per_second"] > 0
    assert run.data.metrics["cost_usd"] > 0  # 2.5 $/h for a few seconds
    assert run.data.metrics["gpu_hours"] == 0  # CPU run
    history = client.get_metric_history(run_id, "loss")
    assert [m.step for m in history] == list(range(10, params.train.max_steps + 1, 10))
    assert run.data.tags["method"] == "lora"
    assert run.info.experiment_id == client.get_experiment_by_name(params.tracking.experiment).experiment_id


def test_sample_order_covers_each_epoch_once_and_is_reproducible():
    n_rows, batch = 10, 4
    stream = [row for step in range(5) for row in rows_for_step(step, batch, n_rows, seed=1)]
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:20]) == list(range(10))
    assert stream == [row for step in range(5) for row in rows_for_step(step, batch, n_rows, seed=1)]
    assert stream[:10] != stream[10:20]  # each epoch is shuffled anew


def test_a_stopped_run_leaves_the_run_file_naming_the_adapter_it_describes(make_params):
    """The run file tells `evaluate` which MLflow run trained outputs/adapter: a later run that
    stops early (Ctrl-C, a spot notice, the budget) saves no adapter, so it must not move the file."""
    finished = make_params("train.max_steps=2", "train.log_every_steps=1")
    data.prepare(finished, log=lambda *_: None)
    adapter = train(finished, resume="never", log=lambda *_: None)
    run_file = adapter.parent / "mlflow_run.json"
    first = json.loads(run_file.read_text())["run_id"]
    weights = (adapter / "adapter_model.safetensors").read_bytes()

    # The budget guard stops the next run after its first step, as a signal would: same path out.
    stopped = make_params("train.max_steps=4", "train.log_every_steps=1", "cost.hourly_usd=1000000", "budget.max_run_usd=0.01")
    with pytest.raises(BudgetExceeded):
        train(stopped, resume="never", log=lambda *_: None)
    runs = mlflow.MlflowClient(stopped.tracking.uri).search_runs(
        [mlflow.MlflowClient(stopped.tracking.uri).get_experiment_by_name(stopped.tracking.experiment).experiment_id])
    assert {run.info.status for run in runs} == {"FINISHED", "KILLED"}  # the stopped run exists, apart
    assert json.loads(run_file.read_text())["run_id"] == first
    assert (adapter / "adapter_model.safetensors").read_bytes() == weights
