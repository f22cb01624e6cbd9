"""The default bake as a user meets it: installed, its own params, its own tests, `make smoke`, DVC.

These run the baked project's real code on its tiny model (nothing is downloaded).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import TEMPLATE, bake

PACKAGE = "baked_check"


def run(*command: str, cwd: Path, timeout: int = 600, **env: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        list(command), cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1", **env},
    )
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


# What a new user changes first, committed as their own: the project's suite (its CI on every pull
# request) must pass on the user's params.yaml, not only on the template's defaults.
USERS_OWN_PARAMS = [
    (r"^  method: \w+", "  method: lora"),
    (r"^  learning_rate: .*$", "  learning_rate: 1.0e-4"),  # the value the template's tests once "changed" to
    (r"^  path: data/raw/support\.jsonl", "  path: data/raw"),  # a folder of their own files
]


def use_own_params(project: Path) -> None:
    path = project / "params.yaml"
    text = path.read_text()
    for pattern, line in USERS_OWN_PARAMS:
        text, count = re.subn(pattern, line, text, count=1, flags=re.M)
        assert count == 1, f"params.yaml has no line matching {pattern}"
    path.write_text(text)
    run("git", "commit", "-q", "-am", "Our own params", cwd=project)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The default bake (another name, so it cannot clash with a demo install), pip-installed,
    with the parameters a user changes first changed and committed."""
    project = bake(tmp_path_factory.mktemp("baked"), project_name="Baked Check")
    use_own_params(project)
    run(sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "-e", ".", cwd=project)
    return project


def test_console_script_is_installed(installed):
    script = Path(sys.executable).parent / PACKAGE
    result = run(str(script), "--help", cwd=installed)
    for command in ("prepare", "train", "evaluate", "smoke"):
        assert command in result.stdout


def test_baked_test_suite_passes(installed):
    # The baked suite trains the tiny model for real many times: about 15 minutes on 2 cores,
    # through its README's `make test` (a process per core, a test file to each).
    # Its export tests run llama.cpp from the node-llama-cpp the template's `make install` put in .ci/node.
    node_modules = os.environ.get("NODE_LLAMA_CPP_MODULES") or str(TEMPLATE / ".ci/node/node_modules")
    result = run("make", "test", f"PYTHON={sys.executable}", cwd=installed, timeout=2400,
                 PYTEST_ADDOPTS="-q -p no:cacheprovider --durations=15", NODE_LLAMA_CPP_MODULES=node_modules)
    print(result.stdout[-3000:])  # the slowest tests, in CI's log
    # pytest's summary line; make may print "Leaving directory" after it when run from make.
    summaries = re.findall(r"^=*\s*(.*\b(\d+) passed\b.*) in [\d.]+s\b.*$", result.stdout, re.M)
    assert summaries, result.stdout[-3000:]
    summary, passed = summaries[-1][0], int(summaries[-1][1])
    assert passed >= 30 and "failed" not in summary and "skipped" not in summary, summary


def test_make_smoke_trains_end_to_end_within_90_seconds(installed):
    started = time.perf_counter()
    result = run("make", "smoke", f"PYTHON={sys.executable}", cwd=installed)
    elapsed = time.perf_counter() - started
    assert elapsed < 90, f"make smoke took {elapsed:.0f} s"
    metrics = json.loads((installed / "outputs/smoke/metrics.json").read_text())
    assert metrics["eval_loss"] > 0 and metrics["perplexity"] > 1
    assert (installed / "outputs/smoke/adapter/adapter_model.safetensors").is_file()
    assert "mlflow ui --backend-store-uri sqlite:///mlflow.db" in result.stdout
    # The run is in the local MLflow store, in the smoke experiment, with its metrics.
    with sqlite3.connect(installed / "mlflow.db") as db:
        names = {row[0] for row in db.execute("select distinct m.key from metrics m")}
        experiments = {row[0] for row in db.execute("select name from experiments")}
    assert {"loss", "eval_loss", "tokens_per_second", "cost_usd", "gpu_hours"} <= names
    assert "baked-check-smoke" in experiments


def test_dvc_repro_and_exp_run(tmp_path_factory, installed):
    """`dvc exp run -S` runs prepare -> train -> evaluate; a second repro skips everything."""
    project = bake(tmp_path_factory.mktemp("dvc"), project_name="Baked Check")
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


def test_make_lint_passes_on_the_baked_project(installed):
    result = run("make", "lint", f"PYTHON={sys.executable}", cwd=installed)
    assert "All checks passed!" in result.stdout
