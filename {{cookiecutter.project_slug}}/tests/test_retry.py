"""scripts/train_with_retries.sh: resumes after exit 75 / 137, stops on anything else."""

import os
import signal
import subprocess
import sys
import time

from conftest import PROJECT

SCRIPT = PROJECT / "scripts/train_with_retries.sh"

# A stand-in for the trainer: exits with the next code of a list, counting its attempts.
FAKE_TRAINER = """
import os, signal, sys, time
counter, codes = sys.argv[1], [int(c) for c in sys.argv[2].split(",")]
attempt = int(open(counter).read()) if os.path.exists(counter) else 0
open(counter, "w").write(str(attempt + 1))
def on_term(signum, frame):
    open(counter + ".term", "w").write("checkpointed")
    sys.exit(75)
signal.signal(signal.SIGTERM, on_term)
code = codes[min(attempt, len(codes) - 1)]
if code == -9:
    os.kill(os.getpid(), signal.SIGKILL)
if code == -1:  # run until told to stop
    open(counter + ".ready", "w").write("")
    while True:
        time.sleep(0.05)
sys.exit(code)
"""


def run_wrapper(tmp_path, codes: str, **env):
    fake = tmp_path / "fake_trainer.py"
    fake.write_text(FAKE_TRAINER)
    counter = tmp_path / "attempts"
    result = subprocess.run(
        ["bash", str(SCRIPT), sys.executable, str(fake), str(counter), codes],
        capture_output=True, text=True, timeout=60, env={**os.environ, **env},
    )
    return result, int(counter.read_text())


def test_resumes_after_interruption_and_kill_until_success(tmp_path):
    result, attempts = run_wrapper(tmp_path, "75,-9,0")
    assert result.returncode == 0 and attempts == 3
    assert "exit code 75; resuming (attempt 2 of 3)" in result.stderr
    assert "exit code 137; resuming (attempt 3 of 3)" in result.stderr


def test_bad_input_and_budget_are_not_retried(tmp_path):
    result, attempts = run_wrapper(tmp_path, "2")
    assert (result.returncode, attempts) == (2, 1)
    other = tmp_path / "budget"
    other.mkdir()
    result, attempts = run_wrapper(other, "3")
    assert (result.returncode, attempts) == (3, 1)


def test_attempts_are_bounded(tmp_path):
    result, attempts = run_wrapper(tmp_path, "75", TRAIN_MAX_ATTEMPTS="2")
    assert (result.returncode, attempts) == (75, 2)
    assert "did not finish after 2 attempts" in result.stderr


def test_sigterm_to_the_wrapper_stops_cleanly_without_retrying(tmp_path):
    fake = tmp_path / "fake_trainer.py"
    fake.write_text(FAKE_TRAINER)
    counter = tmp_path / "attempts"
    wrapper = subprocess.Popen(["bash", str(SCRIPT), sys.executable, str(fake), str(counter), "-1"], text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not (tmp_path / "attempts.ready").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    wrapper.send_signal(signal.SIGTERM)
    assert wrapper.wait(timeout=30) == 75
    assert (tmp_path / "attempts.term").read_text() == "checkpointed"  # the trainer got the signal
    assert counter.read_text() == "1"  # and was not started again


def test_an_output_that_cannot_be_written_is_not_retried(tmp_path):
    result, attempts = run_wrapper(tmp_path, "74,0")
    assert (result.returncode, attempts) == (74, 1)
    assert "exit code 74: an output could not be written (see the error above); not retrying" in result.stderr


def test_sky_restarts_after_exit_74_stop_at_once(tmp_path):
    """SkyPilot restarts a failed job up to max_restarts_on_errors times whatever its code: the
    run section (executed here by bash, as on the VM) marks the job in the bucket on exit 74,
    and every restart of the same job then exits 74 before running anything."""
    import yaml

    task = yaml.safe_load((PROJECT / "sky/train.yaml").read_text())
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    fake = bin_dir / "{{ cookiecutter.package_name }}"
    fake.write_text(f"#!/usr/bin/env bash\necho \"$1\" >> {calls}\necho 'error: cannot write prepared/ ...' >&2\nexit 74\n")
    fake.chmod(0o755)
    env = {**os.environ, "VENV_BIN": str(bin_dir), "CHECKPOINT_ROOT": str(tmp_path / "bucket"), "SKYPILOT_TASK_ID": "job-1",
           "SKYPILOT_NUM_GPUS_PER_NODE": "0", "TRAIN_OVERRIDES": "", "MLFLOW_TRACKING_URI": "sqlite:///x.db"}

    def section(name):
        return subprocess.run(["bash", "-c", task[name]], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)

    first = section("run")
    assert first.returncode == 74 and calls.read_text() == "prepare\n"
    marker = tmp_path / "bucket/job-1/STOPPED-74"
    assert "free space and launch a new job" in marker.read_text()
    for name in ("setup", "run"):  # a restart: setup and run stop at once, nothing else runs
        again = section(name)
        assert again.returncode == 74 and "stopped with exit 74" in again.stderr
    assert calls.read_text() == "prepare\n"
    env["SKYPILOT_TASK_ID"] = "job-2"  # a new job is not blocked
    assert section("run").returncode == 74 and calls.read_text() == "prepare\nprepare\n"
