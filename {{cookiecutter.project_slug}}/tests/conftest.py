"""Shared fixtures: the tiny model (built once per session) and params pointing into tmp."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
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


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """accelerate keeps one state per process (precision, device) and refuses a change; a
    real run is one process, so every test starts as a new one would."""
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


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


def smoke_params(tmp: Path, tiny_model_dir: Path, sample_data: Path, *overrides: str):
    """params.yaml + the smoke settings (tiny model, short schedule), every path inside `tmp`."""
    return load_params(
        PARAMS,
        [
            *smoke_overrides(load_params(PARAMS)),
            f"model.base={tiny_model_dir}",
            f"data.path={sample_data}",
            f"data.prepared_dir={tmp / 'prepared'}",
            f"train.output_dir={tmp / 'outputs'}",
            f"checkpoint.dir={tmp / 'checkpoints'}",
            f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}",
            *overrides,
        ],
    )


@pytest.fixture
def make_params(tmp_path, tiny_model_dir, sample_data):
    """smoke_params for this test's tmp folder, with more overrides."""
    return lambda *overrides: smoke_params(tmp_path, tiny_model_dir, sample_data, *overrides)


def cli_overrides(params, **changes) -> list[str]:
    """`--set key=value` arguments that recreate `params` in another process, with changes."""
    values = {key: value for key, value in params.flat().items() if value is not None and not isinstance(value, list)}
    values.update(changes)
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


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


@pytest.fixture(scope="session")
def sky_python() -> Path:
    """The python of SkyPilot's own virtualenv (its pins clash with this project's)."""
    from {{ cookiecutter.package_name }} import skytask

    try:
        return skytask.find_sky_python(PROJECT)
    except skytask.SkyNotFound as err:
        pytest.fail(f"{err}\nThese tests run real SkyPilot: `make setup-sky`, or export SKY_PYTHON.", pytrace=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1 with a SQLite store, started and stopped by tests."""

    def __init__(self, root: Path, port: int | None = None):
        self.root, self.port = root, port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process = None

    def start(self, timeout: float = 60) -> "MlflowServer":
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", str(self.root / "artifacts"), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"],
            env=env, stdout=subprocess.DEVNULL, stderr=open(self.root / "server.log", "ab"),
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # the server has no readiness event to wait on
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(self.root / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=1) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        self.stop()  # do not leave a late starter running after the tests
        raise RuntimeError("mlflow server did not become healthy")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow")).start()
    yield server
    server.stop()
