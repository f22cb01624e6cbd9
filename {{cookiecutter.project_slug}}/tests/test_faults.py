"""Faults beyond SIGKILL, each injected for real: a full disk (a 900 KB tmpfs, or where the
machine cannot mount one, os.write / the file-size limit failing at the Nth byte), a torn
spool file, a sick MLflow server (answers 500s, or holds every request). Each test checks
the message, the exit code, what was kept and what arrives later."""

import errno
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import pytest

from {{ cookiecutter.package_name }} import cli, data
from {{ cookiecutter.package_name }}.tracking import QUARANTINE, Spool
from {{ cookiecutter.package_name }}.train import checkpoints

from conftest import PROJECT, cli_overrides, smoke_params

sys.path.insert(0, str(PROJECT / "scripts"))
from sick_mlflow import SickServer  # noqa: E402

# One checkpoint of the tiny model is 513 KB (900 KB hold one, not two); os.write carries
# 355 KB of it (safetensors writes the adapter itself), so a budget of 530 KB fails the second.
OS_WRITE_BUDGET = 530_000


class SmallDisk:
    """A 900 KB file system at `path`: a real tmpfs when this machine lets us mount one,
    else a plain folder and `mounted` False (the tests then make writes fail at the Nth byte)."""

    def __init__(self, path: Path):
        self.path = path
        path.mkdir(parents=True)
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=900k", "tmpfs", str(path)], capture_output=True)
        self.mounted = result.returncode == 0

    def grow(self, size: str = "8m") -> None:
        if self.mounted:
            subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True)

    def fill(self, leave: int) -> None:
        """Take all but `leave` bytes (tmpfs only)."""
        stat = os.statvfs(self.path)
        try:
            (self.path / "filler").write_bytes(b"\0" * max(0, stat.f_bavail * stat.f_frsize - leave))
        except OSError:  # block rounding: full is what we wanted
            pass

    def unmount(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], check=False)


@pytest.fixture
def small_disk(tmp_path):
    disk = SmallDisk(tmp_path / "small-disk")
    yield disk
    disk.unmount()


class FailingWrites:
    """os.write raising ENOSPC once `budget` bytes went through it (the fallback injection)."""

    def __init__(self, monkeypatch, budget: int):
        self.budget, self.real = budget, os.write
        monkeypatch.setattr(os, "write", self)

    def __call__(self, fd, data):
        if fd > 2:
            if self.budget < len(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.budget -= len(data)
        return self.real(fd, data)


def file_size_limit(limit: int):
    """preexec_fn: files larger than `limit` bytes fail with EFBIG (no root needed)."""
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def run(*args, preexec_fn=None, **env):
    return subprocess.run(
        [sys.executable, "-m", "{{ cookiecutter.package_name }}", *args], cwd=PROJECT, capture_output=True, text=True,
        timeout=600, preexec_fn=preexec_fn, env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", **env},
    )


def in_process(capsys, *args) -> tuple[int, str, str]:
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    code = cli.main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tiny_model_dir, sample_data):
    tmp = tmp_path_factory.mktemp("faults")
    params = smoke_params(tmp, tiny_model_dir, sample_data, "train.max_steps=4", "train.log_every_steps=2",
                          "checkpoint.every_steps=2", "checkpoint.keep=1", "tracking.system_metrics=false")
    data.prepare(params, log=lambda *_: None)
    return params, tmp


# ------------------------------------------------------------------------ a full disk


def test_full_disk_at_a_checkpoint_stops_with_74_keeps_the_previous_one_and_resumes_once_freed(
        prepared, small_disk, tmp_path, capsys, monkeypatch):
    params, _ = prepared
    args = ["train", *cli_overrides(params, **{"checkpoint.dir": small_disk.path, "train.output_dir": tmp_path / "out",
                                                "tracking.uri": f"sqlite:///{tmp_path / 'mlflow.db'}"})]
    if small_disk.mounted:
        result = run(*args)
        code, out, err = result.returncode, result.stdout, result.stderr
    else:  # no tmpfs here: os.write fails after one checkpoint and a half
        failing = FailingWrites(monkeypatch, budget=OS_WRITE_BUDGET)
        code, out, err = in_process(capsys, *args)
    assert code == cli.EXIT_WRITE_FAILED == 74, err[-3000:]
    [run_dir] = [p for p in small_disk.path.iterdir() if p.is_dir() and p.name != "lost+found"]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot write checkpoint step-00000004 in {run_dir}: No space left on device (")
    assert " free, about " in last and " needed)" in last and "Traceback" not in err
    if small_disk.mounted:  # before training: the estimate says two will not fit in 900 KB
        assert f"warning: checkpoint.dir {run_dir} has " in out and "checkpoint.keep=1 + 1 checkpoints of about" in out
    # The previous checkpoint is whole, and nothing half-written is left.
    assert [p.name for p in run_dir.glob("step-*")] == ["step-00000002"]
    assert checkpoints.verify(run_dir / "step-00000002") is None
    assert not list(run_dir.glob(".tmp-*"))

    # Space freed: the same command resumes from step 2 and finishes.
    if small_disk.mounted:
        small_disk.grow()
        result = run(*args)
        code, out, err = result.returncode, result.stdout, result.stderr
    else:
        monkeypatch.setattr(os, "write", failing.real)
        code, out, err = in_process(capsys, *args)
    assert code == 0, err[-3000:]
    assert f"resuming from {run_dir / 'step-00000002'} (step 2)" in out
    assert (run_dir / checkpoints.COMPLETE).is_file()
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [mlflow_run] = client.search_runs([client.get_experiment_by_name(params.tracking.experiment).experiment_id])
    assert [m.step for m in client.get_metric_history(mlflow_run.info.run_id, "loss")] == [2, 4]
    assert mlflow_run.info.status == "FINISHED"


def test_space_check_before_training_uses_the_size_of_the_last_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "step-00000002").mkdir(parents=True)
    (run_dir / "step-00000002" / "optimizer.pt").write_bytes(b"\0" * 5000)
    assert checkpoints.size_for_next(run_dir, estimate=1) == 5000
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    problem = checkpoints.space_problem(run_dir, keep=3, size=free)  # three more of the free size: no room
    assert f"checkpoint.dir {run_dir} has " in problem and "checkpoint.keep=3 + 1 checkpoints" in problem
    assert "(1 already there, " in problem
    assert checkpoints.space_problem(run_dir, keep=1, size=5000) is None


def test_prepare_merge_and_evaluate_outputs_on_a_full_disk(prepared, small_disk, tmp_path, tiny_model_dir, sample_data):
    params, tmp = prepared
    # A trained adapter to evaluate and merge.
    trained = smoke_params(tmp_path, tiny_model_dir, sample_data, "train.max_steps=2", "checkpoint.every_steps=1000",
                           f"data.prepared_dir={params.data.prepared_dir}", "tracking.system_metrics=false")
    assert run("train", *cli_overrides(trained)).returncode == 0
    limit = None if small_disk.mounted else file_size_limit(100_000)
    if small_disk.mounted:
        small_disk.fill(leave=100_000)

    # prepare: the packed rows do not fit; nothing half-written is left, an older version is kept.
    prepared_dir = small_disk.path / "prepared"
    result = run("prepare", *cli_overrides(params, **{"data.prepared_dir": prepared_dir}), preexec_fn=limit)
    assert result.returncode == 74, result.stderr[-3000:]
    # A full tmpfs says ENOSPC; the file-size limit says EFBIG, which torch reports as a short write.
    reason = "No space left on device (" if small_disk.mounted else ""
    assert f"error: cannot write prepared/ in {small_disk.path}: {reason}" in result.stderr
    assert "free, more than " in result.stderr and "Traceback" not in result.stderr
    assert not prepared_dir.exists() and not list(small_disk.path.glob(".prepared-*"))

    # merge: the merged model does not fit.
    merged = small_disk.path / "merged"
    result = run("merge", *cli_overrides(trained), "--out", str(merged), "--dtype", "float32", preexec_fn=limit)
    assert result.returncode == 74, result.stderr[-3000:]
    assert f"error: cannot write merged/ in {small_disk.path}: {reason}" in result.stderr
    assert not merged.exists() and not list(small_disk.path.glob(".merged-*"))

    # evaluate: its outputs (per-example scores, generations, metrics.json) cannot be written;
    # the metrics.json before is kept.
    out_dir = small_disk.path / "eval-out"
    if small_disk.mounted:
        (small_disk.path / "filler").unlink()
        small_disk.grow()
    import shutil

    shutil.copytree(trained.train.output_dir, out_dir)
    (out_dir / "metrics.json").write_text('{"eval_loss": 1.0}\n')
    if small_disk.mounted:
        small_disk.fill(leave=0)
        result = run("evaluate", *cli_overrides(trained, **{"train.output_dir": out_dir}))
    else:
        result = run("evaluate", *cli_overrides(trained, **{"train.output_dir": out_dir}), preexec_fn=file_size_limit(2))
    assert result.returncode == 74, result.stderr[-3000:]
    written_first = "eval_examples.json"  # evaluate writes the per-example scores before the means
    assert f"error: cannot write {written_first} in {out_dir}:" in result.stderr and "Traceback" not in result.stderr
    assert json.loads((out_dir / "metrics.json").read_text()) == {"eval_loss": 1.0}


# ------------------------------------------------------------------- a torn spool file


def spool_with_metrics(directory: Path, uri: str, steps: int) -> Spool:
    spool = Spool(directory, uri)
    spool.put({"kind": "create_run", "experiment": "faults", "run_name": "torn", "tags": {}})
    for step in range(1, steps + 1):
        spool.put({"kind": "metrics", "step": step, "timestamp": 1_000 + step, "values": {"loss": 1.0 / step}})
    spool.put({"kind": "status", "status": "FINISHED"})
    return spool


def test_a_torn_spool_file_is_quarantined_and_the_rest_is_sent_in_order(tmp_path, mlflow_server, tiny_model_dir, sample_data):
    ckpt = tmp_path / "checkpoints"
    spool_dir = ckpt / "abc123" / "mlflow-spool"
    spool_with_metrics(spool_dir, mlflow_server.uri, steps=5)
    torn = sorted(spool_dir.glob("[0-9]*.json"))[3]  # the metrics of step 3
    torn_bytes = torn.read_bytes()[:17]
    torn.write_bytes(torn_bytes)  # a crash mid-upload
    params = smoke_params(tmp_path, tiny_model_dir, sample_data, f"checkpoint.dir={ckpt}")

    result = run("tracking-sync", *cli_overrides(params), MLFLOW_TRACKING_URI=mlflow_server.uri)
    assert result.returncode == cli.EXIT_NOT_SENT == 1, result.stderr[-3000:]
    quarantined = spool_dir / QUARANTINE / torn.name
    assert f"warning: MLflow spool file {torn} cannot be read (not valid JSON" in result.stdout
    assert f"moved to {quarantined}" in result.stdout
    assert "1 spool(s) sent, 0 still pending, 1 unreadable update(s) quarantined" in result.stdout
    assert quarantined.read_bytes() == torn_bytes
    assert not list(spool_dir.glob("[0-9]*.json"))  # everything else went out

    client = mlflow.MlflowClient(mlflow_server.uri)
    run_id = json.loads((spool_dir / "run.json").read_text())["run_id"]
    history = client.get_metric_history(run_id, "loss")
    assert [m.step for m in history] == [1, 2, 4, 5]
    assert client.get_run(run_id).info.status == "FINISHED"
    # Nothing is stuck: the next sync has nothing left and succeeds.
    again = run("tracking-sync", *cli_overrides(params), MLFLOW_TRACKING_URI=mlflow_server.uri)
    assert again.returncode == 0 and "1 spool(s) sent, 0 still pending, 0 unreadable" in again.stdout


def test_a_resumed_run_replays_past_a_torn_file_and_a_torn_run_state(tmp_path, mlflow_server):
    spool_dir = tmp_path / "mlflow-spool"
    spool = spool_with_metrics(spool_dir, mlflow_server.uri, steps=3)
    assert spool.flush()
    run_id = spool.state["run_id"]
    for step in (4, 5, 6):
        spool.put({"kind": "metrics", "step": step, "timestamp": 2_000 + step, "values": {"loss": 0.1}})
    files = sorted(spool_dir.glob("[0-9]*.json"))
    files[0].write_text('{"kind": "metrics", "step": 4}')  # parses, but is no complete operation
    lines = []
    reopened = Spool(spool_dir, mlflow_server.uri, log=lines.append)  # what a resumed run does
    assert reopened.flush() and reopened.quarantined == 1 and "metrics without timestamp, values" in lines[0]
    assert [m.step for m in mlflow.MlflowClient(mlflow_server.uri).get_metric_history(run_id, "loss")] == [1, 2, 3, 5, 6]

    (spool_dir / "run.json").write_text('{"run_id": "')  # torn
    torn_state = Spool(spool_dir, mlflow_server.uri, log=lines.append)
    assert torn_state.quarantined == 1 and (spool_dir / QUARANTINE / "run.json").is_file()


# ------------------------------------------------------------------- a sick server


def test_a_hanging_server_never_blocks_the_training_thread(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    sick = SickServer("hang").start()
    try:
        spool = Spool(tmp_path / "spool", sick.uri)
        spool.put({"kind": "create_run", "experiment": "x", "run_name": "x", "tags": {}})
        sender = threading.Thread(target=spool.flush, daemon=True)
        sender.start()
        while sick.in_flight == 0:
            time.sleep(0.01)
        for step in range(200):  # what the loop does while the sender waits on the server
            spool.put({"kind": "metrics", "step": step, "timestamp": step, "values": {"loss": 1.0}})
            spool.save_state(last_logged_step=step)
        assert sick.in_flight == 1 and sender.is_alive()  # all written while the request was held
        assert spool.pending == 201
    finally:
        sick.stop()


def test_updates_arrive_once_a_sick_server_heals(prepared, tmp_path, mlflow_server):
    params, _ = prepared
    sick = SickServer("500", upstream=mlflow_server.uri).start()
    sample_log = tmp_path / "samples"
    args = cli_overrides(params, **{"checkpoint.dir": tmp_path / "ckpt", "train.output_dir": tmp_path / "out",
                                    "train.max_steps": 8, "train.log_every_steps": 1, "checkpoint.every_steps": 1000,
                                    "tracking.experiment": "sick-server", "tracking.flush_timeout_s": 120})
    env = {**os.environ, "MLFLOW_TRACKING_URI": sick.uri, "MLFLOW_HTTP_REQUEST_TIMEOUT": "2",
           "TRAIN_SAMPLE_LOG": str(sample_log), "MLFLOW_DISABLE_TELEMETRY": "true"}
    process = subprocess.Popen([sys.executable, "-m", "{{ cookiecutter.package_name }}", "train", *args], cwd=PROJECT,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def steps_done():
            return len(sample_log.read_text().splitlines()) - 1 if sample_log.exists() else 0

        deadline = time.monotonic() + 300
        while steps_done() < 3 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sick.requests > 0  # it did try, and got 500s
        sick.set_mode("hang")  # now it accepts and never answers
        while steps_done() < 6 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process.poll() is None  # training went on
        sick.heal()
        out, err = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
        sick.stop()
    assert process.returncode == 0, err[-3000:]
    run_id = json.loads(next((tmp_path / "ckpt").glob("*/mlflow-spool/run.json")).read_text())["run_id"]
    client = mlflow.MlflowClient(mlflow_server.uri)
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == list(range(1, 9))
    assert client.get_run(run_id).info.status == "FINISHED"
    assert not list((tmp_path / "ckpt").glob("*/mlflow-spool/[0-9]*.json"))


# ------------------------------------------------------------ a price nobody knows


def test_unknown_price_on_a_cloud_machine_is_logged_as_unknown_not_zero(prepared, tmp_path):
    params, _ = prepared
    ckpt = tmp_path / "ckpt"
    env = {"SKYPILOT_CLUSTER_INFO": '{"cloud": "aws", "region": "us-east-1", "zone": "us-east-1a"}', "GPU_MODEL": "B9000",
           "USE_SPOT": "true", "SKY_RUNTIME_DIR": str(tmp_path / "no-catalog")}
    result = run("train", *cli_overrides(params, **{"checkpoint.dir": ckpt, "train.output_dir": tmp_path / "out",
                                                   "tracking.uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}), **env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "warning: the price of this machine is unknown on a cloud machine: no 1x B9000 spot row" in result.stdout
    assert "the budget guard (budget.max_run_usd=$" in result.stdout and "cannot stop this run for cost" in result.stdout
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [finished] = client.search_runs([client.get_experiment_by_name(params.tracking.experiment).experiment_id])
    assert "cost_usd" not in finished.data.metrics and "price_per_hour" not in finished.data.metrics
    assert "gpu_hours" in finished.data.metrics and "loss" in finished.data.metrics
    assert finished.data.tags["cost_known"] == "false"
    assert finished.data.tags["price_source"].startswith("unknown on a cloud machine")
    [segments] = ckpt.glob("*/segments.json")
    assert [s["usd"] for s in json.loads(segments.read_text())] == [None]
    # report says so: "unknown" in the table, cost_known false and no dollars in the JSON.
    shown = run("report", "--experiment", params.tracking.experiment, "--format", "json",
                MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert shown.returncode == 0, shown.stderr[-3000:]
    [row] = json.loads(shown.stdout)["runs"]
    assert row["cost_usd"] is None and row["cost_known"] is False
    table = run("report", "--experiment", params.tracking.experiment, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    [line] = [line for line in table.stdout.splitlines() if row["id"] in line]
    assert " unknown " in f" {line} " and "$" not in line
