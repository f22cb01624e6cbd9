#!/usr/bin/env bash
# Run a training command; if it was interrupted after saving a checkpoint (exit 75) or
# killed outright (exit 137: SIGKILL, e.g. the OOM killer), run it again: it resumes from
# the newest valid checkpoint. Spot-style recovery for your own GPU or a self-hosted runner.
# Anything else is not retried: 2 (bad input), 3 (over budget), 74 (an output could not be
# written, e.g. a full disk: a rerun would hit the same wall until space is freed).
#   scripts/train_with_retries.sh python -m <package> train [--set key=value ...]
# TRAIN_MAX_ATTEMPTS (default 3) bounds the attempts. Ctrl-C / SIGTERM to this script stop
# training cleanly (checkpoint, exit 75) and are not retried.
set -u

attempts="${TRAIN_MAX_ATTEMPTS:-3}"
stopping=0
child=0
trap 'stopping=1; [ "$child" -ne 0 ] && kill -TERM "$child" 2>/dev/null' INT TERM

for ((attempt = 1; attempt <= attempts; attempt++)); do
  "$@" &
  child=$!
  wait "$child"
  rc=$?
  # A trapped signal interrupts `wait` (status > 128): wait again for the trainer's own
  # exit status, after its checkpoint. 127 means that status was already collected.
  while [ "$stopping" -eq 1 ] && [ "$rc" -gt 128 ]; do
    wait "$child"
    next=$?
    [ "$next" -eq 127 ] && break
    rc=$next
  done
  child=0
  if [ "$stopping" -eq 1 ] || { [ "$rc" -ne 75 ] && [ "$rc" -ne 137 ]; }; then
    if [ "$rc" -eq 74 ]; then
      echo "exit code 74: an output could not be written (see the error above); not retrying until space is freed" >&2
    fi
    exit "$rc"
  fi
  echo "training stopped with exit code $rc; resuming (attempt $((attempt + 1)) of $attempts)" >&2
done
echo "training did not finish after $attempts attempts" >&2
exit 75
