"""Preemption-proof training, with real processes and real signals.

Kill the trainer at any instant (SIGKILL, also in the middle of writing a checkpoint), rerun
it, and the finished adapter is bitwise identical to an uninterrupted run's; the samples it
trained on have no gap and no repeat. SIGTERM (a spot notice) saves a checkpoint and exits
with code 75. A partial or corrupted newest checkpoint is skipped for the one before it.
"""

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import mlflow
import pytest
from safetensors.torch import load_file

from {{ cookiecutter.package_name }} import data
from {{ cookiecutter.package_name }}.train import checkpoints

from conftest import PROJECT, cli_overrides, run_cli, smoke_params

STEPS = 12


def train_command(params, output_dir: Path, *extra: str) -> list[str]:
    changes = {"train.output_dir": output_dir, "train.max_steps": STEPS, "checkpoint.every_steps": 1, "checkpoint.keep": 2}
    return [sys.executable, "-m", "{{ cookiecutter.package_name }}", "train", *cli_overrides(params, **changes), *extra]


def start(command, sample_log: Path, **env) -> subprocess.Popen:
    return subprocess.Popen(
        command, cwd=PROJECT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TRAIN_SAMPLE_LOG": str(sample_log), "MLFLOW_DISABLE_TELEMETRY": "true", **env},
    )


def wait_for(condition, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.001)
    return False


def effective_samples(sample_log: Path) -> list[tuple[int, str]]:
    """The (step, rows) that made it into the final adapter: each restart discards the steps
    after the checkpoint it resumed from."""
    kept: list[tuple[int, str]] = []
    for line in sample_log.read_text().splitlines():
        head, _, rest = line.partition(" ")
        if head == "start":
            resumed_at = int(rest)
            kept = [entry for entry in kept if entry[0] < resumed_at]
        else:
            kept.append((int(head), rest))
    return kept


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tiny_model_dir, sample_data):
    tmp = tmp_path_factory.mktemp("resume")
    params = smoke_params(tmp, tiny_model_dir, sample_data, "train.log_every_steps=2", "train.global_batch=8", "train.micro_batch=4")
    data.prepare(params, log=lambda *_: None)
    # The reference: one uninterrupted run.
    reference = tmp / "reference"
    result = subprocess.run(
        train_command(params, reference, "--set", f"checkpoint.dir={tmp / 'ckpt-reference'}"), cwd=PROJECT,
        capture_output=True, text=True, env={**os.environ, "TRAIN_SAMPLE_LOG": str(tmp / "reference.samples")},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return params, tmp, load_file(reference / "adapter/adapter_model.safetensors"), tmp / "reference.samples"


@pytest.mark.parametrize("seed", [1, 2])
def test_sigkill_at_random_moments_then_resume_is_bitwise_identical(prepared, seed):
    params, tmp, reference_adapter, reference_samples = prepared
    rng = random.Random(seed)
    run = tmp / f"killed-{seed}"
    ckpt = tmp / f"ckpt-killed-{seed}"
    command = train_command(params, run, "--set", f"checkpoint.dir={ckpt}")
    sample_log = tmp / f"killed-{seed}.samples"

    kills = 0
    # Kill 1: in the middle of writing a checkpoint (its temporary folder exists).
    process = start(command, sample_log)
    assert wait_for(lambda: any(ckpt.glob("*/.tmp-step-*")) or process.poll() is not None)
    process.kill()
    kills += process.wait() == -signal.SIGKILL
    # Kill 2: at a random moment once some steps are done.
    process = start(command, sample_log)
    done_before = len(sample_log.read_text().splitlines())
    assert wait_for(lambda: len(sample_log.read_text().splitlines()) > done_before + rng.randint(1, 4) or process.poll() is not None)
    time.sleep(rng.uniform(0, 0.3))
    process.kill()
    kills += process.wait() == -signal.SIGKILL
    assert kills == 2  # both kills landed before the run could finish
    # Finish.
    process = start(command, sample_log)
    assert process.wait(timeout=300) == 0, process.stderr.read()[-3000:]

    resumed = load_file(run / "adapter/adapter_model.safetensors")
    assert resumed.keys() == reference_adapter.keys()
    for key in resumed:
        assert resumed[key].equal(reference_adapter[key]), f"{key} differs from the uninterrupted run"
    # No gap, no repeat: the effective sequence is the reference's, step by step.
    assert effective_samples(sample_log) == effective_samples(reference_samples)
    assert [step for step, _ in effective_samples(sample_log)] == list(range(STEPS))
    assert sample_log.read_text().count("start ") == 3


def test_sigterm_saves_a_checkpoint_and_exits_75(prepared):
    params, tmp, _, _ = prepared
    ckpt = tmp / "ckpt-term"
    sample_log = tmp / "term.samples"
    command = train_command(params, tmp / "term", "--set", f"checkpoint.dir={ckpt}", "--set", "train.max_steps=100000",
                            "--set", "checkpoint.every_steps=100000")
    process = start(command, sample_log)
    assert wait_for(lambda: sample_log.exists() and len(sample_log.read_text().splitlines()) > 3)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 75
    assert "interrupted: stopped by signal" in process.stderr.read()
    [run_dir] = ckpt.iterdir()
    [checkpoint] = run_dir.glob("step-*")
    assert checkpoints.verify(checkpoint) is None
    assert json.loads((checkpoint / "state.json").read_text())["step"] >= 3


class StalledHub:
    """A Hugging Face endpoint that takes every request and answers none until released: a
    base model whose download has begun and will take minutes (a 70B model on each restart)."""

    def __init__(self):
        self.requested, self.released, self.paths = threading.Event(), threading.Event(), []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                hub.paths.append(self.path)
                hub.requested.set()
                hub.released.wait(600)

            do_HEAD = do_GET

            def log_message(self, *_):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


def test_sigterm_while_the_base_model_loads_exits_75_not_143(prepared):
    """A spot notice can come before the first step, while the base loads: the loader is held
    on a hub that has the request and does not answer (no timing race: the signal is sent once
    the request has arrived, and the loading cannot have finished). Without the handler in place
    before loading, SIGTERM would kill the trainer (143) and SkyPilot would count an error."""
    params, tmp, _, _ = prepared
    hub = StalledHub()
    ckpt = tmp / "ckpt-loading"
    command = train_command(params, tmp / "loading", "--set", f"checkpoint.dir={ckpt}", "--set", "model.base=stalled/llama-70b")
    env = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp / "hf-home"),
           "HF_HUB_ETAG_TIMEOUT": "600", "HF_HUB_DOWNLOAD_TIMEOUT": "600"}
    process = start(command, tmp / "loading.samples", **env)
    try:
        assert hub.requested.wait(300), process.stderr.read() if process.poll() is not None else "no request reached the hub"
        assert process.poll() is None
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
        hub.close()
    stderr = process.stderr.read()
    assert code == 75, stderr[-3000:]
    assert "interrupted: stopped by SIGTERM before the first step, while loading" in stderr
    assert "Traceback" not in stderr
    assert hub.paths  # it was waiting for the hub
    assert not ckpt.exists() and not (tmp / "loading.samples").exists()  # nothing written half-way


def test_a_corrupted_or_partial_newest_checkpoint_is_skipped(prepared, tmp_path):
    params, tmp, reference_adapter, _ = prepared
    ckpt = tmp / "ckpt-corrupt"
    run = tmp / "corrupt"
    command = train_command(params, run, "--set", f"checkpoint.dir={ckpt}", "--set", "checkpoint.keep=3")
    process = start(command, tmp / "corrupt.samples")
    assert wait_for(lambda: len(list(ckpt.glob("*/step-*"))) >= 3 or process.poll() is not None)
    process.kill()
    process.wait()
    run_dir = next(ckpt.iterdir())
    newest, second = sorted(run_dir.glob("step-*"))[-2:][::-1]

    # What each kind of damage looks like to verify() (on copies):
    flipped, unfinished = tmp_path / "flipped", tmp_path / "unfinished"
    for copy in (flipped, unfinished):
        subprocess.run(["cp", "-r", str(second), str(copy)], check=True)
    raw = bytearray((flipped / "adapter.safetensors").read_bytes())
    raw[-1] ^= 0xFF
    (flipped / "adapter.safetensors").write_bytes(bytes(raw))
    assert checkpoints.verify(flipped) == "adapter.safetensors does not match its checksum"
    (unfinished / "manifest.json").unlink()
    assert checkpoints.verify(unfinished) == "no manifest (the write was interrupted)"

    # The newest on disk: a truncated file, as an interrupted asynchronous upload leaves it.
    optimizer = newest / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[: optimizer.stat().st_size // 2])
    assert checkpoints.latest_valid(run_dir, log=lambda *_: None) == second
    result = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True, env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"skipping checkpoint {newest}: optimizer.pt has" in result.stdout
    assert f"resuming from {second}" in result.stdout
    resumed = load_file(run / "adapter/adapter_model.safetensors")
    assert all(resumed[k].equal(reference_adapter[k]) for k in resumed)


def test_incompatible_params_stop_with_a_clear_message(prepared):
    params, tmp, _, _ = prepared
    ckpt = tmp / "ckpt-reference"
    [checkpoint] = sorted(ckpt.glob("*/step-*"))[-1:]
    result = run_cli(*train_command(params, tmp / "other", "--set", "train.learning_rate=0.5", "--resume", str(checkpoint))[3:])
    assert result.returncode == 2
    assert "train.learning_rate: 0.01 -> 0.5" in result.stderr
    assert "use --resume never" in result.stderr


def test_budget_guard_stops_a_real_run_with_a_checkpoint(prepared):
    params, tmp, _, _ = prepared
    ckpt = tmp / "ckpt-budget"
    command = train_command(params, tmp / "budget", "--set", f"checkpoint.dir={ckpt}", "--set", "cost.hourly_usd=100000",
                            "--set", "budget.max_run_usd=0.5", "--set", "checkpoint.every_steps=100000")
    result = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True, env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    assert result.returncode == 3, result.stderr[-2000:]
    assert "crossed budget.max_run_usd=$0.50" in result.stderr
    [checkpoint] = ckpt.glob("*/step-*")
    segments = json.loads((checkpoint.parent / "segments.json").read_text())
    assert segments[-1]["usd"] > 0.5 and segments[-1]["hourly_usd"] == 100000


def test_resume_continues_the_same_mlflow_run_on_a_real_server(prepared, mlflow_server):
    params, tmp, _, _ = prepared
    ckpt = tmp / "ckpt-mlflow"
    env = {"MLFLOW_TRACKING_URI": mlflow_server.uri}
    command = train_command(params, tmp / "mlflow-run", "--set", f"checkpoint.dir={ckpt}")
    sample_log = tmp / "mlflow.samples"
    # The job restarts on another machine at another price: each segment at its own.
    process = start([*command, "--set", "cost.hourly_usd=3.6"], sample_log, **env)
    assert wait_for(lambda: sample_log.exists() and len(sample_log.read_text().splitlines()) > 7 or process.poll() is not None)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 75
    process = start([*command, "--set", "cost.hourly_usd=7.2"], sample_log, **env)
    assert process.wait(timeout=300) == 0, process.stderr.read()[-2000:]

    run_id = json.loads((tmp / "mlflow-run/mlflow_run.json").read_text())["run_id"]
    client = mlflow.MlflowClient(mlflow_server.uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["recoveries"] == "1"
    steps = [m.step for m in client.get_metric_history(run_id, "loss")]
    assert steps == list(range(2, STEPS + 1, 2))  # continuous, each step once
    costs = [m.value for m in sorted(client.get_metric_history(run_id, "cost_usd"), key=lambda m: m.step)]
    assert costs == sorted(costs)  # the second segment adds to the first
    segments = json.loads((next(ckpt.iterdir()) / "segments.json").read_text())
    assert [s["hourly_usd"] for s in segments] == [3.6, 7.2]
    assert run.data.tags["price_source"] == "params cost.hourly_usd"
    assert run.data.metrics["price_per_hour"] == 7.2
    assert run.data.metrics["cost_usd"] == pytest.approx(sum(s["usd"] for s in segments), rel=0.05)
