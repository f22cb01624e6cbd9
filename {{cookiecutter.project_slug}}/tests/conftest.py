"""Shared fixtures: the tiny model (built once per session) and params pointing into tmp."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from {{ cookiecutter.package_name }}.cli import smoke_overrides
from {{ cookiecutter.package_name }}.config import load_params
from {{ cookiecutter.package_name }}.tiny import build_tiny_model

PROJECT = Path(__file__).resolve().parents[1]
PARAMS = PROJECT / "params.yaml"


@pytest.fixture(autouse=True)
def _quiet_offline_env(monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory) -> Path:
    """The project's sample dataset, regenerated if `dvc pull` has not been run."""
    path = PROJECT / "data/raw/support.jsonl"
    if path.is_file():
        return path
    path = tmp_path_factory.mktemp("data") / "support.jsonl"
    subprocess.run([sys.executable, str(PROJECT / "scripts/make_sample_data.py"), "--out", str(path)], check=True)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, sample_data) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny", sample_data)


@pytest.fixture
def make_params(tmp_path, tiny_model_dir, sample_data):
    """params.yaml + the smoke settings, with every path inside this test's tmp folder."""

    def make(*overrides: str):
        base = load_params(PARAMS)
        return load_params(
            PARAMS,
            [
                *smoke_overrides(base),
                f"model.base={tiny_model_dir}",
                f"data.path={sample_data}",
                f"data.prepared_dir={tmp_path / 'prepared'}",
                f"train.output_dir={tmp_path / 'outputs'}",
                f"checkpoint.dir={tmp_path / 'checkpoints'}",
                f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
                *overrides,
            ],
        )

    return make


def run_cli(*args: str, cwd: Path = PROJECT, **env: str) -> subprocess.CompletedProcess:
    """The CLI as a user runs it: a separate process, exit code and output captured."""
    return subprocess.run(
        [sys.executable, "-m", "{{ cookiecutter.package_name }}", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", **env},
        timeout=600,
    )
