"""MLflow tracking that never stops training:
  spool    MLflow calls as numbered files on disk, sent in order and once each; unreadable ones quarantined
  run      one MLflow run per job (`Tracker`), written to the spool and sent by a background thread;
           the run's tags (git, DVC data hash, pull request); `sync` of what a crash left
  runs     finding runs again: a branch's newest finished run (the baseline), a pull request's runs
  plots    the loss curve as CSV and PNG, training and eval loss (drawn by train and by evaluate)

Imports: the atomic-write helper only. Everything else may use this package; it uses none of them.
"""

from .run import (
    RUN_FILE,
    Tracker,
    dvc_data_hash,
    log_to_training_run,
    run_name,
    run_tags,
    sync_spools,
    tracking_uri,
)
from .spool import QUARANTINE, Spool

__all__ = [
    "QUARANTINE", "RUN_FILE", "Spool", "Tracker", "dvc_data_hash", "log_to_training_run", "run_name", "run_tags",
    "sync_spools", "tracking_uri",
]
