"""MLflow tracking that never stops training:
  run      one MLflow run per job, spooled to disk first and sent by a background thread;
           the run's tags (git, DVC data hash, pull request); `sync` of what a crash left
  runs     finding runs again: a branch's newest finished run (the baseline), a pull request's runs

Imports: the atomic-write helper only. Everything else may use this package; it uses none of them.
"""

from .run import (
    QUARANTINE,
    RUN_FILE,
    Spool,
    Tracker,
    dvc_data_hash,
    log_to_training_run,
    run_name,
    run_tags,
    sync_spools,
    tracking_uri,
)

__all__ = [
    "QUARANTINE", "RUN_FILE", "Spool", "Tracker", "dvc_data_hash", "log_to_training_run", "run_name", "run_tags",
    "sync_spools", "tracking_uri",
]
