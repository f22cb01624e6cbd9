"""Spot, then on-demand: `launch` watches a managed spot job through `sky jobs queue` and, past
compute.max_preemptions recoveries (or compute.max_spot_wait_minutes of waiting), moves the rest
of the run to an on-demand machine that resumes from the same checkpoint folder, if the
budget allows.

The cloud is the boundary: `sky` here is tests/standin_sky.py, run by SkyPilot's own Python,
whose `jobs queue -o json` prints SkyPilot's own job records (its ManagedJobRecord and
ManagedJobStatus) along a script of statuses and recovery counts. The launcher, the plan
that prices the fallback and the argument lists are the real ones.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from {{ cookiecutter.package_name }}.compute import launch, spot_fallback
from {{ cookiecutter.package_name }}.config import ConfigError, load_params

PROJECT = Path(__file__).resolve().parents[1]
STANDIN = Path(__file__).with_name("standin_sky.py")


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    launch.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["launch", "--watch-interval", "0.1", *argv])


# What `sky jobs queue -o json` prints for one job (a ManagedJobRecord, dumped as the CLI does).
DUMP_SKYPILOT_FORMAT = """
import json, sys
from sky.jobs.state import ManagedJobStatus
from sky.schemas.api.responses import ManagedJobRecord
record = ManagedJobRecord(job_id=1, task_id=0, job_name="j", task_name="j", status=ManagedJobStatus.RUNNING,
                          recovery_count=0, job_duration=0.0, submitted_at=0.0, resources="1x[L4:1]")
json.dump({"record": record.model_dump(mode="json"), "statuses": [s.value for s in ManagedJobStatus]}, sys.stdout)
"""


@pytest.fixture(scope="session")
def skypilot_format(sky_python, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("skypilot") / "format.json"
    path.write_text(subprocess.run([str(sky_python), "-c", DUMP_SKYPILOT_FORMAT], capture_output=True, text=True,
                                   check=True, timeout=300).stdout)
    return path


@pytest.fixture
def standin_sky(tmp_path, monkeypatch, skypilot_format):
    """`sky` on SKY_PYTHON's folder = the stand-in; returns (script it, read its state)."""
    bin_dir = tmp_path / "sky-env/bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "sky").write_text(f'#!/bin/sh\nexec "{sys.executable}" "{STANDIN}" "$@"\n')
    (bin_dir / "sky").chmod(0o755)
    (bin_dir / "python").symlink_to(sys.executable)
    state = tmp_path / "sky-state.json"
    monkeypatch.setenv("SKY_PYTHON", str(bin_dir / "python"))
    monkeypatch.setenv("STANDIN_SKY_STATE", str(state))
    monkeypatch.setenv("STANDIN_SKY_FORMAT", str(skypilot_format))
    for key in ("PR_NUMBER", "GITHUB_REF", "GITHUB_HEAD_REF", "GITHUB_REF_NAME", "GITHUB_SHA", "HF_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(PROJECT)

    def script(spot, ondemand=(("STARTING", 0, 0), ("RUNNING", 0, 60), ("SUCCEEDED", 0, 600))):
        state.write_text(json.dumps({"scripts": {"spot": spot, "ondemand": ondemand}, "jobs": [], "calls": []}))

    return script, lambda: json.loads(state.read_text())


def envs_of(call: list[str]) -> dict[str, str]:
    return dict(value.split("=", 1) for flag, value in zip(call, call[1:], strict=False) if flag == "--env")


PREEMPTED_TWICE = [("PENDING", 0, 0), ("STARTING", 0, 0), ("RUNNING", 0, 300), ("RECOVERING", 1, 300),
                   ("RUNNING", 1, 600), ("RECOVERING", 2, 600), ("RUNNING", 2, 900), ("SUCCEEDED", 2, 1200)]


def test_past_max_preemptions_the_rest_runs_on_demand_from_the_same_checkpoints(standin_sky, capsys):
    script, state = standin_sky
    script(PREEMPTED_TWICE)
    assert launch.run(parse("--set", "compute.max_preemptions=2")) == 0
    calls = state()["calls"]
    launches = [c for c in calls if c[:2] == ["jobs", "launch"]]
    cancels = [c for c in calls if c[:2] == ["jobs", "cancel"]]
    spot, ondemand = launches
    name = spot[spot.index("-n") + 1]
    assert "-d" in spot and "--no-use-spot" not in spot and spot[-1] == "sky/train.yaml"
    assert cancels == [["jobs", "cancel", "-y", "-n", name]]
    assert ondemand[ondemand.index("-n") + 1] == f"{name}-ondemand" and "--no-use-spot" in ondemand
    # The same checkpoint folder (so the same newest checkpoint and MLflow run), priced on-demand.
    assert envs_of(ondemand)["RUN_FOLDER"] == envs_of(spot)["RUN_FOLDER"] and envs_of(spot)["RUN_FOLDER"].startswith(name)
    assert envs_of(ondemand)["USE_SPOT"] == "false" and envs_of(ondemand)["TRAIN_OVERRIDES"] == envs_of(spot)["TRAIN_OVERRIDES"]
    # Cancelled at the second recovery, not before; on-demand only once SkyPilot says CANCELLED.
    order = [c[1] for c in calls]
    cancelled_at, ondemand_at = calls.index(cancels[0]), calls.index(ondemand)
    assert order[:cancelled_at].count("queue") == 6  # PENDING ... RECOVERING with 2 recoveries
    assert order[cancelled_at:ondemand_at].count("queue") == 2  # CANCELLING, CANCELLED
    out = capsys.readouterr().out
    assert "recovered 2 times (compute.max_preemptions=2): cancelling it; the rest goes on-demand" in out
    assert f"{name}-ondemand: SUCCEEDED" in out


def test_without_a_limit_the_spot_job_is_launched_as_before(standin_sky):
    script, state = standin_sky
    script(PREEMPTED_TWICE)
    assert launch.run(parse()) == 0
    [call] = state()["calls"]
    assert call[:4] == ["jobs", "launch", "-y", "-n"] and "-d" not in call and "RUN_FOLDER" not in envs_of(call)


def test_a_spot_job_that_finishes_within_the_limit_is_not_moved(standin_sky):
    script, state = standin_sky
    script(PREEMPTED_TWICE)
    assert launch.run(parse("--set", "compute.max_preemptions=3")) == 0
    calls = state()["calls"]
    assert [c[1] for c in calls if c[1] != "queue"] == ["launch"]


def test_waiting_too_long_for_spot_capacity_moves_the_run(standin_sky, capsys):
    script, state = standin_sky
    script([("STARTING", 0, 0)])  # no spot capacity anywhere: SkyPilot keeps trying
    # 0.001 minutes = 60 ms, shorter than one poll interval: the second poll is past the limit.
    assert launch.run(parse("--set", "compute.max_spot_wait_minutes=0.001")) == 0
    launches = [c for c in state()["calls"] if c[:2] == ["jobs", "launch"]]
    assert len(launches) == 2 and "--no-use-spot" in launches[1]
    assert "waited 0.001 minutes for spot capacity" in capsys.readouterr().out


def test_no_fallback_past_the_budget_stops_with_the_reason(standin_sky, capsys):
    script, state = standin_sky
    # 1,000 hours on spot machines: whatever the cheapest spot price, the budget is gone.
    script([("STARTING", 0, 0), ("RUNNING", 0, 3.6e6), ("RECOVERING", 1, 3.6e6)])
    assert launch.run(parse("--set", "compute.max_preemptions=1", "--set", "budget.max_run_usd=20")) == spot_fallback.EXIT_BUDGET
    calls = state()["calls"]
    assert [c[1] for c in calls if c[1] != "queue"] == ["launch", "cancel"]  # cancelled, no on-demand job
    out = capsys.readouterr().out
    assert "budget exceeded: the spot job has already cost about $" in out and "budget.max_run_usd=$20.00" in out
    assert "RUN_FOLDER=" in out  # where the checkpoints wait for a later launch


def test_the_fallback_is_priced_at_the_cheapest_on_demand_offer(standin_sky):
    """budget_problem asks the real plan: with nothing spent yet, on-demand fits a budget the
    plan's cheapest on-demand run fits, and is refused just below it."""
    from {{ cookiecutter.package_name }}.compute import plan

    ondemand = plan.make_plan(load_params(PROJECT / "params.yaml", ["compute.spot=false"]))["cheapest"]
    assert not ondemand["spot"]
    args = parse("--set", f"budget.max_run_usd={ondemand['usd_per_run'] * 1.01}")
    assert spot_fallback.budget_problem(plan, args, spot_hours=0) is None
    args = parse("--set", f"budget.max_run_usd={ondemand['usd_per_run'] * 0.99}")
    assert "on-demand: estimated" in spot_fallback.budget_problem(plan, args, spot_hours=0)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("compute.max_preemptions", "-1", "greater than or equal to 0"),
    ("compute.max_preemptions", "two", "valid integer"),
    ("compute.max_spot_wait_minutes", "0", "greater than 0"),
])
def test_bad_limits_are_refused_naming_the_key(key, value, message):
    with pytest.raises(ConfigError, match=rf"--set: {key}: .*{message}"):
        load_params(PROJECT / "params.yaml", [f"{key}={value}"])


def test_the_task_resumes_from_run_folder_when_it_is_set():
    """The run section's checkpoint folder is RUN_FOLDER when set, else SKYPILOT_TASK_ID."""
    run = yaml.safe_load((PROJECT / "sky/train.yaml").read_text())["run"]
    line = next(line.strip() for line in run.splitlines() if line.strip().startswith("OUT="))
    for env, expected in (({"RUN_FOLDER": "job-1-20261206"}, "job-1-20261206"), ({"RUN_FOLDER": ""}, "sky-managed-7")):
        out = subprocess.run(["bash", "-c", f'{line}; echo "$OUT"'], capture_output=True, text=True, check=True,
                             env={"CHECKPOINT_ROOT": "/ckpt", "SKYPILOT_TASK_ID": "sky-managed-7", **env}).stdout.strip()
        assert out == f"/ckpt/{expected}"
