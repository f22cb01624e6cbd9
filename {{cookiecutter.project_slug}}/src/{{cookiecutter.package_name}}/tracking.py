"""MLflow: one run per training job, with params, tags, metrics and artifacts."""

from __future__ import annotations

import json
import os
import subprocess
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


class Tracker:
    """A thin wrapper so the training loop reads `tracker.log(step, loss=...)`."""

    def __init__(self, params, run_name: str | None = None, extra_tags: dict | None = None):
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        import mlflow

        self.mlflow = mlflow
        mlflow.set_tracking_uri(tracking_uri(params))
        mlflow.set_experiment(params.tracking.experiment)
        self.run = mlflow.start_run(run_name=run_name, tags={**run_tags(params), **(extra_tags or {})})
        self.run_id = self.run.info.run_id
        mlflow.log_params(params.flat())

    def log(self, step: int, **metrics: float) -> None:
        self.mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def log_artifact(self, path: str | Path) -> None:
        self.mlflow.log_artifact(str(path))

    def finish(self, status: str = "FINISHED") -> None:
        self.mlflow.end_run(status=status)

    def save_run_file(self, output_dir: str | Path) -> None:
        path = Path(output_dir) / RUN_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        info = {"run_id": self.run_id, "experiment_id": self.run.info.experiment_id, "tracking_uri": self.mlflow.get_tracking_uri()}
        path.write_text(json.dumps(info, indent=2) + "\n")


def log_to_training_run(params, metrics: dict[str, float], artifacts: list[Path], step: int | None = None) -> str | None:
    """Add evaluation results to the run that trained the adapter; returns its id."""
    path = Path(params.train.output_dir) / RUN_FILE
    if not path.is_file():
        return None
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    info = json.loads(path.read_text())
    mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI") or info["tracking_uri"])
    with mlflow.start_run(run_id=info["run_id"]):
        mlflow.log_metrics(metrics, step=step)
        for artifact in artifacts:
            mlflow.log_artifact(str(artifact))
    return info["run_id"]
