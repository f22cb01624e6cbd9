"""MLflow tracking that never stops training: one run per job, spooled to disk first.

Every call (create run, params, tags, metrics, dataset, artifacts, status) is written as a
numbered file in a spool folder, then sent in order by a background thread. If the server
is down, training goes on; the files wait and are replayed, in order and once each, when it
answers again, at the end of the run, or by the next process that opens the same spool
(the spool lives beside the checkpoints, so it survives a preemption too).

The run id lives in the checkpoint, so a resumed job continues the same run; the steps it
redoes after its last checkpoint are not logged twice.

A sick server (answering 500s, or accepting connections and never answering) costs the
training loop nothing: the loop only writes files, and sending happens on another thread
that never holds a lock the loop needs. A spool file that cannot be read (torn by a crash
or a partial bucket upload) is moved to `<spool>/quarantine/` with a warning naming it, and
the files after it are sent in order: one bad file never blocks the others.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

from ..atomic import WriteFailed, write_text_atomic
from .spool import QUARANTINE, Spool

RUN_FILE = "mlflow_run.json"  # in train.output_dir: where `evaluate` finds the training run


def tracking_uri(params) -> str:
    """The environment wins (CI, SkyPilot), then params.yaml."""
    return os.environ.get("MLFLOW_TRACKING_URI") or params.tracking.uri


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def dvc_data_hash(data_path: str | Path) -> str:
    """The md5 DVC recorded for the dataset (`<file>.dvc`), empty when it is not DVC-tracked."""
    import yaml

    dvc_file = Path(f"{data_path}.dvc")
    if not dvc_file.is_file():
        return ""
    outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs") or [{}]
    return str(outs[0].get("md5", ""))


def pull_request_number(environ=os.environ) -> str:
    """PR number from our workflows (PR_NUMBER) or GitHub's ref (refs/pull/<n>/merge)."""
    if environ.get("PR_NUMBER"):
        return environ["PR_NUMBER"]
    parts = environ.get("GITHUB_REF", "").split("/")
    return parts[2] if len(parts) > 2 and parts[1] == "pull" else ""


def run_tags(params, environ=os.environ) -> dict[str, str]:
    """Where and from what a run came: code, data, machine."""
    cluster = json.loads(environ.get("SKYPILOT_CLUSTER_INFO") or "{}")
    tags = {
        # On a cloud VM there is no .git: `launch` passes GIT_COMMIT / GIT_BRANCH along.
        "git_commit": environ.get("GITHUB_SHA") or environ.get("GIT_COMMIT") or _git("rev-parse", "HEAD"),
        "git_branch": environ.get("GITHUB_HEAD_REF") or environ.get("GIT_BRANCH") or _git("rev-parse", "--abbrev-ref", "HEAD"),
        "git_dirty": str(bool(_git("status", "--porcelain", "--untracked-files=no"))).lower(),
        "pr": pull_request_number(environ),
        "dvc_data_hash": dvc_data_hash(params.data.path),
        "base_model": params.model.base,
        "method": params.model.method,
        "cloud": str(cluster.get("cloud", "")),
        "region": str(cluster.get("region", "")),
        "zone": str(cluster.get("zone", "")),
        "spot": environ.get("USE_SPOT", ""),
        "skypilot_task_id": environ.get("SKYPILOT_TASK_ID", ""),
        # A variant of a `sweep`: which sweep, which variant, and its `--set` line.
        "sweep_id": environ.get("SWEEP_ID", ""),
        "sweep_variant": environ.get("SWEEP_VARIANT", ""),
        "sweep_set": environ.get("SWEEP_SET", ""),
    }
    try:
        import torch

        if torch.cuda.is_available():
            tags["gpu"] = torch.cuda.get_device_name(0)
            tags["gpu_count"] = str(int(environ.get("WORLD_SIZE", "1")))
    except ImportError:
        pass
    return {key: value for key, value in tags.items() if value}


def run_name(tags: dict[str, str], environ=os.environ) -> str:
    """RUN_NAME if given (`launch` sets it), else `pr-12@1a2b3c4` / `main@1a2b3c4`."""
    if environ.get("RUN_NAME"):
        return environ["RUN_NAME"]
    where = f"pr-{tags['pr']}" if tags.get("pr") else tags.get("git_branch", "local")
    return f"{where}@{tags.get('git_commit', 'nogit')[:7]}"


class Tracker:
    """One MLflow run per training job: `tracker.log(step, loss=...)` never blocks on MLflow."""

    def __init__(self, params, spool_dir: Path, resume_run_id: str | None = None, extra_tags: dict | None = None,
                 retry_seconds: float = 15.0):
        self.uri = tracking_uri(params)
        self.spool = Spool(spool_dir, self.uri)
        self.retry_seconds = retry_seconds
        self.last_logged_step = int(self.spool.state.get("last_logged_step", 0))
        if resume_run_id and not self.spool.state.get("run_id"):
            self.spool.save_state(run_id=resume_run_id)
        if self.spool.state.get("run_id") or self.spool.state.get("create_spooled"):
            # A resumed job continues its own run: same id, metrics go on from where they stopped.
            self.spool.put({"kind": "status", "status": "RUNNING"})
            if extra_tags:
                self.spool.put({"kind": "tags", "values": extra_tags})
            self.resumed = True
        else:
            tags = {**run_tags(params), **(extra_tags or {})}
            self.spool.put({"kind": "create_run", "experiment": params.tracking.experiment, "run_name": run_name(tags), "tags": tags})
            self.spool.save_state(create_spooled=True)
            self.spool.put({"kind": "params", "values": params.flat()})
            digest = dvc_data_hash(params.data.path)
            if digest:
                self.spool.put({"kind": "dataset", "name": Path(params.data.path).name, "digest": digest[:36],
                                "source": json.dumps({"path": str(params.data.path), "dvc_md5": digest})})
            self.resumed = False
        self.spool.flush()  # usually creates the run right away
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._send_in_background, name="mlflow-spool", daemon=True)
        self._thread.start()

    @property
    def run_id(self) -> str | None:
        return self.spool.state.get("run_id")

    def _send_in_background(self) -> None:
        while not self._stop.is_set():
            try:
                sent = self.spool.flush()
            except Exception as err:  # e.g. a full disk while quarantining: never kill the sender
                self.spool.last_error, sent = f"{type(err).__name__}: {err}", False
            if not sent:
                # Down or sick: try again later, however many updates arrive meanwhile (a
                # server that answers 500s is not asked again at every step).
                self._stop.wait(self.retry_seconds)
            else:
                self._wake.wait()
            self._wake.clear()

    def log_params(self, values: dict) -> None:
        self.spool.put({"kind": "params", "values": values})
        self._wake.set()

    def log(self, step: int, **metrics: float) -> None:
        values = {k: float(v) for k, v in metrics.items()}
        self.spool.put({"kind": "metrics", "step": step, "timestamp": int(time.time() * 1000), "values": values})
        if step > self.last_logged_step:
            self.last_logged_step = step
            self.spool.save_state(last_logged_step=step)
        self._wake.set()

    def log_artifact(self, path: str | Path) -> None:
        self.spool.put_artifact(Path(path))
        self._wake.set()

    def start_system_metrics(self, interval_s: float = 10) -> None:
        """CPU, memory and (with nvidia-ml-py) GPU utilisation, sampled by MLflow itself.

        Best effort: these go straight to the server, not through the spool."""
        if not self.run_id:
            return
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._system = SystemMetricsMonitor(
                self.run_id, sampling_interval=interval_s, tracking_uri=self.uri, resume_logging=self.resumed
            )
            self._system.start()
        except Exception as err:  # psutil missing, server down: training does not depend on it
            print(f"system metrics off ({type(err).__name__}: {err})")

    def finish(self, status: str = "FINISHED", wait_seconds: float = 60.0) -> bool:
        """Mark the run ended and send what is pending, waiting up to `wait_seconds`.

        False when MLflow is still unreachable: the spool stays on disk and is replayed by
        the next process that opens it (a resumed job, `evaluate`, or `tracking-sync`).
        """
        if getattr(self, "_system", None):
            self._system.finish()
        try:
            self.spool.put({"kind": "status", "status": status})
        except WriteFailed as err:  # a full disk: what is spooled already is still sent
            print(f"warning: the run's end status is not spooled: {err}")
        self._stop.set()
        self._wake.set()
        self._thread.join()
        deadline = time.monotonic() + wait_seconds
        sent = True
        while not self.spool.flush():
            if time.monotonic() > deadline:
                print(f"MLflow unreachable ({self.spool.last_error}); {self.spool.pending} updates kept in {self.spool.dir}")
                sent = False
                break
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
        if self.spool.quarantined:
            print(f"MLflow: {self.spool.quarantined} unreadable update(s) not sent, kept in {self.spool.dir / QUARANTINE}")
        return sent

    def save_run_file(self, output_dir: str | Path) -> None:
        """Which run trained the adapter in `output_dir`: written (atomically) only once the adapter
        is there, so an interrupted run never points `evaluate` at an earlier run's adapter."""
        path = Path(output_dir) / RUN_FILE
        info = {"run_id": self.run_id, "tracking_uri": self.uri, "spool": str(self.spool.dir.resolve())}
        write_text_atomic(path, json.dumps(info, indent=2) + "\n")


def log_to_training_run(
    params, metrics: dict[str, float], artifacts: list[Path], step: int | None = None, tables: dict[str, dict] | None = None
) -> str | None:
    """Add evaluation results to the run that trained the adapter, through its spool."""
    path = Path(params.train.output_dir) / RUN_FILE
    if not path.is_file():
        return None
    info = json.loads(path.read_text())
    spool = Spool(Path(info["spool"]), os.environ.get("MLFLOW_TRACKING_URI") or info["tracking_uri"])
    spool.put({"kind": "metrics", "step": step or 0, "timestamp": int(time.time() * 1000), "values": metrics})
    for artifact in artifacts:
        spool.put_artifact(Path(artifact))
    for artifact_file, data in (tables or {}).items():
        spool.put({"kind": "table", "artifact_file": artifact_file, "data": data})
    if not spool.flush():
        print(f"MLflow unreachable ({spool.last_error}); evaluation results kept in {spool.dir}")
    return spool.state.get("run_id")


def sync_spools(checkpoint_dir: Path, uri: str | None = None) -> tuple[int, int, int]:
    """Send every spool left under checkpoint.dir (MLflow was down when its run ended).

    Returns (spools fully sent, spools still pending, unreadable files quarantined now)."""
    sent = pending = quarantined = 0
    for directory in sorted(Path(checkpoint_dir).glob("**/mlflow-spool")):
        spool = Spool(directory, uri or os.environ.get("MLFLOW_TRACKING_URI") or "")
        if spool.flush():
            sent += 1
            if directory.parent.name.startswith("unsent-") and not (directory / QUARANTINE).is_dir():
                shutil.rmtree(directory.parent)
        else:
            pending += 1
            print(f"{directory}: {spool.pending} updates still pending ({spool.last_error})")
        quarantined += spool.quarantined
    return sent, pending, quarantined
