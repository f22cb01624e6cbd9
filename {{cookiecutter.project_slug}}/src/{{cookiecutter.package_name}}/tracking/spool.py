"""The spool: MLflow calls written as numbered files first, sent in order, once each.

A file that cannot be read (torn by a crash or a partial bucket upload) is moved to
`<spool>/quarantine/` and the files after it are still sent: one bad file never blocks the others.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import uuid
from pathlib import Path

from ..atomic import write_failed

# Fail fast instead of MLflow's default minutes of retries: the spool retries for us.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


# ------------------------------------------------------------------------ the spool


# What each operation must carry; a file without it cannot be sent, ever.
FIELDS = {
    "create_run": ("experiment", "run_name", "tags"), "params": ("values",), "tags": ("values",),
    "metrics": ("step", "timestamp", "values"), "dataset": ("name", "digest", "source"), "artifact": ("path",),
    "table": ("data", "artifact_file"), "status": ("status",),
}
QUARANTINE = "quarantine"


class Unreadable(Exception):
    """A spool file that can never be sent as it is (torn, not an operation, artifact gone)."""


def read_operation(path: Path) -> dict:
    try:
        op = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise Unreadable(f"not valid JSON ({type(err).__name__}: {str(err)[:80]})") from err
    if not isinstance(op, dict) or op.get("kind") not in FIELDS:
        raise Unreadable(f"not a spooled MLflow operation (kind {op.get('kind') if isinstance(op, dict) else None!r})")
    missing = [key for key in FIELDS[op["kind"]] if key not in op]
    if missing:
        raise Unreadable(f"{op['kind']} without {', '.join(missing)}")
    if op["kind"] == "artifact" and not Path(op["path"]).is_file():
        raise Unreadable(f"its artifact {op['path']} is gone")
    return op


class Spool:
    """Numbered operation files, sent to MLflow in order; a file is deleted once sent."""

    def __init__(self, directory: Path, uri: str, log=print):
        from mlflow import MlflowClient

        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(uri)
        self.uri = uri
        self.log = log
        # Three locks, none held while talking to the server except `sending`, which the
        # training thread never takes: a hanging server cannot stall put() or save_state().
        self.lock = threading.Lock()  # numbering and writing of operation files
        self.state_lock = threading.Lock()
        self.sending = threading.Lock()
        self.quarantined = 0  # files moved aside by this process
        self.state_file = self.dir / "run.json"
        self.state = {}
        if self.state_file.is_file():
            try:
                self.state = json.loads(self.state_file.read_text())
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                self._quarantine(self.state_file, f"not valid JSON ({err})")
        existing = [int(p.stem) for p in self.dir.glob("[0-9]*.json") if p.stem.isdigit()]
        self.next_seq = max(existing, default=0) + 1
        self.last_error = ""

    # -- writing (training thread)
    def put(self, op: dict) -> None:
        with self.lock:
            path = self.dir / f"{self.next_seq:012d}.json"
            tmp = self.dir / f".{path.name}.tmp"
            data = json.dumps(op, default=str)
            try:
                tmp.write_text(data)
                os.replace(tmp, path)
            except OSError as err:
                tmp.unlink(missing_ok=True)
                raise write_failed(path, err, len(data), f"MLflow update {path.name}") from err
            self.next_seq += 1

    def put_artifact(self, source: Path) -> None:
        """Copy the file now (it may change or vanish before it is sent)."""
        copy = self.dir / "artifacts" / uuid.uuid4().hex[:12] / source.name
        try:
            copy.parent.mkdir(parents=True)
            shutil.copy2(source, copy)
        except OSError as err:
            shutil.rmtree(copy.parent, ignore_errors=True)
            raise write_failed(copy, err, source.stat().st_size, f"MLflow artifact {source.name}") from err
        self.put({"kind": "artifact", "path": str(copy)})

    def save_state(self, **values) -> None:
        with self.state_lock:
            self.state.update(values)
            tmp = self.dir / ".run.json.tmp"
            tmp.write_text(json.dumps(self.state))
            os.replace(tmp, self.state_file)

    @property
    def pending(self) -> int:
        return len(list(self.dir.glob("[0-9]*.json")))

    def _quarantine(self, path: Path, why: str) -> None:
        target = self.dir / QUARANTINE / path.name
        target.parent.mkdir(exist_ok=True)
        os.replace(path, target)
        self.quarantined += 1
        self.log(f"warning: MLflow spool file {path} cannot be read ({why}); moved to {target}, the others are still sent")

    # -- sending (background thread, or a final flush)
    def flush(self) -> bool:
        """Send pending operations in order; stop at the first failure. True if all sent.

        Unreadable files are quarantined and skipped; a server error keeps the file for the
        next try."""
        with self.sending:
            for path in sorted(self.dir.glob("[0-9]*.json")):
                try:
                    op = read_operation(path)
                except Unreadable as err:
                    self._quarantine(path, str(err))
                    continue
                except FileNotFoundError:  # sent by another process meanwhile
                    continue
                try:
                    self._send(op)
                except Exception as err:  # unreachable, 5xx, timeouts: keep the file, retry later
                    self.last_error = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
                    return False
                path.unlink()
                if op["kind"] == "artifact":
                    shutil.rmtree(Path(op["path"]).parent, ignore_errors=True)
            return True

    def _send(self, op: dict) -> None:
        from mlflow.entities import Dataset as MlflowDataset
        from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunTag

        kind, client = op["kind"], self.client
        if kind == "create_run":
            experiment = client.get_experiment_by_name(op["experiment"])
            experiment_id = experiment.experiment_id if experiment else client.create_experiment(op["experiment"])
            run = client.create_run(experiment_id, run_name=op["run_name"], tags=op["tags"])
            self.save_state(run_id=run.info.run_id, experiment_id=experiment_id)
            return
        run_id = self.state["run_id"]
        if kind == "params":
            client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in op["values"].items()])
        elif kind == "tags":
            client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in op["values"].items()])
        elif kind == "metrics":
            metrics = [Metric(k, float(v), op["timestamp"], op["step"]) for k, v in op["values"].items()]
            client.log_batch(run_id, metrics=metrics)
        elif kind == "dataset":
            dataset = MlflowDataset(name=op["name"], digest=op["digest"], source_type="dvc", source=op["source"])
            client.log_inputs(run_id, [DatasetInput(dataset, [InputTag("mlflow.data.context", "training")])])
        elif kind == "artifact":
            client.log_artifact(run_id, op["path"])
        elif kind == "table":
            client.log_table(run_id, data=op["data"], artifact_file=op["artifact_file"])
        elif kind == "status":
            if op["status"] == "RUNNING":
                client.update_run(run_id, status="RUNNING")
            else:
                client.set_terminated(run_id, op["status"])
        else:
            raise ValueError(f"unknown spool operation {kind!r}")
