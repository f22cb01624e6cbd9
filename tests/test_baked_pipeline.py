"""The baked project's pipeline as a user runs it: `make smoke` into the local MLflow store, and
DVC's `exp run` / `repro` / `status` over prepare -> train -> evaluate, on the tiny model."""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_baked_project import run, use_own_params

from conftest import bake

PACKAGE = "baked_pipeline"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The default bake under its own name (its package cannot clash with test_baked_project's),
    pip-installed, with the parameters a user changes first changed and committed."""
    project = bake(tmp_path_factory.mktemp("pipeline"), project_name="Baked Pipeline")
    use_own_params(project)
    run(sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "-e", ".", cwd=project)
    return project


def test_make_smoke_trains_end_to_end_in_minutes(installed):
    # The README says about a minute on an idle laptop; here the baked project's suite runs beside
    # it on the same cores, so the bound only catches a smoke run that has become a real one.
    started = time.perf_counter()
    result = run("make", "smoke", f"PYTHON={sys.executable}", cwd=installed)
    elapsed = time.perf_counter() - started
    assert elapsed < 240, f"make smoke took {elapsed:.0f} s"
    metrics = json.loads((installed / "outputs/smoke/metrics.json").read_text())
    assert metrics["eval_loss"] > 0 and metrics["perplexity"] > 1
    assert (installed / "outputs/smoke/adapter/adapter_model.safetensors").is_file()
    assert "mlflow ui --backend-store-uri sqlite:///mlflow.db" in result.stdout
    # The run is in the local MLflow store, in the smoke experiment, with its metrics.
    with sqlite3.connect(installed / "mlflow.db") as db:
        names = {row[0] for row in db.execute("select distinct m.key from metrics m")}
        experiments = {row[0] for row in db.execute("select name from experiments")}
    assert {"loss", "eval_loss", "tokens_per_second", "cost_usd", "gpu_hours"} <= names
    assert "baked-pipeline-smoke" in experiments


def test_dvc_repro_and_exp_run(tmp_path_factory, installed):
    """`dvc exp run -S` runs prepare -> train -> evaluate; a second repro skips everything."""
    project = bake(tmp_path_factory.mktemp("dvc"), project_name="Baked Pipeline")
    tiny = project / ".cache/tiny-model"
    run(sys.executable, "-m", PACKAGE, "tiny-model", "--out", str(tiny), cwd=project)
    # The user's own data file, not the sample's path: DVC must watch what data.path names.
    ours = project / "data/ours.jsonl"
    ours.write_text((project / "data/raw/support.jsonl").read_text())
    settings = [
        "data.path=data/ours.jsonl",
        f"model.base={tiny}", "model.method=lora", "compute.device=cpu", "data.max_length=512",
        "train.max_steps=6", "train.micro_batch=4", "train.global_batch=8", "train.log_every_steps=2",
        "eval.generations=4", "eval.max_new_tokens=16", f"tracking.uri=sqlite:///{project / 'mlflow.db'}",
    ]
    run("dvc", "exp", "run", *[arg for s in settings for arg in ("-S", s)], cwd=project)
    metrics = json.loads((project / "outputs/metrics.json").read_text())
    assert metrics["eval_loss"] > 0
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"prepare", "train", "evaluate"}
    assert lock["stages"]["train"]["params"]["params.yaml"]["train"]["max_steps"] == 6
    # prepare keeps eval.generations held-out prompts: changing it reruns prepare.
    assert lock["stages"]["prepare"]["params"]["params.yaml"]["eval.generations"] == 4

    shown = json.loads(run("dvc", "metrics", "show", "--json", cwd=project).stdout)
    assert any("eval_loss" in json.dumps(v) for v in shown.values())
    again = run("dvc", "repro", cwd=project)
    assert "didn't change, skipping" in again.stdout
    assert "Running stage" not in again.stdout

    # A record added to the user's file: prepare is out of date (and so what follows it).
    with ours.open("a") as f:
        f.write(ours.read_text().splitlines()[0] + "\n")
    status = run("dvc", "status", "prepare", cwd=project).stdout
    assert "changed deps" in status and "data/ours.jsonl" in status, status
    # A change to the loss code (not train/ itself) reruns train.
    loss = project / "src" / PACKAGE / "model" / "loss.py"
    loss.write_text(loss.read_text() + "\n# a change to the loss code\n")
    status = run("dvc", "status", "train", cwd=project).stdout
    assert "train:" in status and f"src/{PACKAGE}/model" in status, status
