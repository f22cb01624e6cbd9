"""MLflow: one run per training job, with params, tags, metrics and artifacts."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

RUN_FILE = "mlflow_run.json"  # in train.output_dir: lets `evaluate` log into the training run


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


def run_tags(params) -> dict[str, str]:
    tags = {
        "git_commit": _git("rev-parse", "HEAD"),
        "git_branch": _git("rev-parse", "--abbrev-ref", "HEAD"),
        "git_dirty": str(bool(_git("status", "--porcelain", "--untracked-files=no"))).lower(),
        "dvc_data_hash": dvc_data_hash(params.data.path),
        "base_model": params.model.base,
        "method": params.model.method,
    }
    return {key: value for key, value in tags.items() if value}


def _client(uri: str):
    # An explicit client, not mlflow's fluent API: that one keeps a process-wide "current"
    # URI and run (and exports MLFLOW_TRACKING_URI), so a second run in the same process,
    # as in tests or a notebook, would silently log into the first one's store.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow import MlflowClient

    return MlflowClient(uri)


def experiment_id(client, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    return experiment.experiment_id if experiment else client.create_experiment(name)


class Tracker:
    """One MLflow run: `tracker.log(step, loss=...)` from the training loop."""

    def __init__(self, params, run_name: str | None = None, extra_tags: dict | None = None, resume_run_id: str | None = None):
        self.uri = tracking_uri(params)
        self.client = _client(self.uri)
        self.last_logged_step = 0
        if resume_run_id:
            # A resumed job continues its own run: same id, metrics go on from where they stopped.
            run = self.client.get_run(resume_run_id)
            self.run_id, self.experiment_id = run.info.run_id, run.info.experiment_id
            self.client.update_run(self.run_id, status="RUNNING")
            history = self.client.get_metric_history(self.run_id, "loss")
            self.last_logged_step = max((m.step for m in history), default=0)
            for key, value in (extra_tags or {}).items():
                self.client.set_tag(self.run_id, key, value)
            return
        self.experiment_id = experiment_id(self.client, params.tracking.experiment)
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags={**run_tags(params), **(extra_tags or {})})
        self.run_id = run.info.run_id
        self.log_params(params.flat())

    def log_params(self, values: dict) -> None:
        from mlflow.entities import Param

        self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in values.items()])

    def log(self, step: int, **metrics: float) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def log_artifact(self, path: str | Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status)

    def save_run_file(self, output_dir: str | Path) -> None:
        path = Path(output_dir) / RUN_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        info = {"run_id": self.run_id, "experiment_id": self.experiment_id, "tracking_uri": self.uri}
        path.write_text(json.dumps(info, indent=2) + "\n")


def log_to_training_run(params, metrics: dict[str, float], artifacts: list[Path], step: int | None = None) -> str | None:
    """Add evaluation results to the run that trained the adapter; returns its id."""
    path = Path(params.train.output_dir) / RUN_FILE
    if not path.is_file():
        return None
    from mlflow.entities import Metric

    info = json.loads(path.read_text())
    client = _client(os.environ.get("MLFLOW_TRACKING_URI") or info["tracking_uri"])
    now = int(time.time() * 1000)
    client.log_batch(info["run_id"], metrics=[Metric(k, float(v), now, step or 0) for k, v in metrics.items()])
    for artifact in artifacts:
        client.log_artifact(info["run_id"], str(artifact))
    return info["run_id"]
