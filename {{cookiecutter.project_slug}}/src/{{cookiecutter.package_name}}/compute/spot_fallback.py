"""Spot, then on-demand: a managed spot job that keeps losing its machine finishes on-demand.

    compute:
      max_preemptions: 3         # after the 3rd recovery of the spot job...
      max_spot_wait_minutes: 30  # ...or after 30 minutes in a row waiting for a spot machine

With either key set, `launch --backend sky` submits the spot job detached and watches it with
`sky jobs queue -o json` (SkyPilot's own records: job_name, status, recovery_count,
job_duration). Each recovery costs a restart (the base model loaded again) and the steps since
the last checkpoint; past the limit the job is cancelled, and once SkyPilot reports it
CANCELLED the same task is launched with `--no-use-spot` and the same RUN_FOLDER: it resumes
from the spot job's newest checkpoint, into the same MLflow run (the run id is in the
checkpoint folder). It does so only if the budget still allows: the spot hours so far at the
cheapest spot price, plus a whole run at the cheapest on-demand price (an upper bound: the run
resumes part-way), must stay within budget.max_run_usd. Otherwise the job is cancelled and
launch stops with exit 3 and both numbers. The on-demand job is then watched to its end.

Exit code of the watch: 0 when the job (spot or on-demand) SUCCEEDED, 1 when it FAILED or
was cancelled by someone else, 3 when the fallback would exceed the budget. SkyPilot reports
no cost per job, so "spent" is an estimate from the plan's price, as everywhere before a run
logs its own cost.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass

from ..config import ConfigError, load_params

# SkyPilot's ManagedJobStatus values (sky/jobs/state.py).
WAITING_FOR_SPOT = {"STARTING", "RECOVERING"}  # provisioning: where a job waits for spot capacity
SUCCEEDED = "SUCCEEDED"
ENDED = {"SUCCEEDED", "CANCELLED", "FAILED", "FAILED_SETUP", "FAILED_PRECHECKS", "FAILED_NO_RESOURCE", "FAILED_CONTROLLER"}
QUEUE_FAILURES_TOLERATED = 5  # `sky jobs queue` failing this many times in a row ends the watch
EXIT_BUDGET = 3


class QueueUnreadable(RuntimeError):
    """`sky jobs queue` failed or printed no job list, several times in a row."""


@dataclass
class Outcome:
    """How watching one job ended: `ended` (SkyPilot's final status), or a limit was reached."""

    reason: str  # ended | preempted | waited
    status: str
    recoveries: int
    job_hours: float  # SkyPilot's job_duration: time on a machine, over all recoveries


def wanted(params) -> bool:
    """Whether `launch` should watch the job: a spot run with a limit set."""
    compute = params.compute
    return compute.spot and (compute.max_preemptions is not None or compute.max_spot_wait_minutes is not None)


def ondemand_name(name: str, limit: int = 63) -> str:
    return f"{name[: limit - len('-ondemand')].rstrip('-')}-ondemand"


def read_queue(sky: list[str], name: str) -> dict | None:
    """SkyPilot's record of the newest job called `name`, or None when it is not listed yet."""
    done = subprocess.run([*sky, "jobs", "queue", "-o", "json"], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise QueueUnreadable(f"`sky jobs queue` exited {done.returncode}: {done.stderr.strip()[-500:]}")
    start = done.stdout.find("[")
    try:
        records = json.JSONDecoder().raw_decode(done.stdout[start:])[0] if start >= 0 else None
    except json.JSONDecodeError:
        records = None
    if not isinstance(records, list):
        raise QueueUnreadable(f"`sky jobs queue -o json` printed no job list: {done.stdout.strip()[:300]!r}")
    mine = [r for r in records if isinstance(r, dict) and r.get("job_name") == name]
    return max(mine, key=lambda r: r.get("job_id") or 0) if mine else None


def follow(sky: list[str], name: str, compute, *, stop_at_limits: bool, interval: float, log,
           sleep=time.sleep, clock=time.monotonic) -> Outcome:
    """Poll the job until it ends or (spot, `stop_at_limits`) a limit of `compute` is reached."""
    waiting_since = None
    failures = 0
    said = None
    while True:
        try:
            record = read_queue(sky, name)
            failures = 0
        except (QueueUnreadable, OSError, subprocess.SubprocessError) as err:
            failures += 1
            if failures >= QUEUE_FAILURES_TOLERATED:
                raise QueueUnreadable(f"{err} ({failures} times in a row); the job goes on: `sky jobs queue` to follow it") from None
            record = None
        if record is not None:
            status = str(record.get("status") or "")
            recoveries = int(record.get("recovery_count") or 0)
            hours = float(record.get("job_duration") or 0) / 3600
            if (status, recoveries) != said:
                log(f"launch: {name}: {status}, {recoveries} recover{'y' if recoveries == 1 else 'ies'}")
                said = status, recoveries
            if status in ENDED:
                return Outcome("ended", status, recoveries, hours)
            if stop_at_limits and compute.max_preemptions is not None and recoveries >= compute.max_preemptions:
                return Outcome("preempted", status, recoveries, hours)
            if status in WAITING_FOR_SPOT:
                waiting_since = clock() if waiting_since is None else waiting_since
                if stop_at_limits and compute.max_spot_wait_minutes is not None and \
                        clock() - waiting_since >= compute.max_spot_wait_minutes * 60:
                    return Outcome("waited", status, recoveries, hours)
            else:
                waiting_since = None
        sleep(interval)


def budget_problem(plan, args, spot_hours: float) -> str | None:
    """Why the on-demand rest of the run is not affordable, or None. Without a plan module
    there is no price to check against: None, and the caller says so."""
    params = load_params(args.params, args.set)
    budget = params.budget.max_run_usd
    cheapest_spot = plan.make_plan(params).get("cheapest") or {}
    spent = spot_hours * float(cheapest_spot.get("usd_per_hour") or 0)
    left = budget - spent
    if left <= 0:
        return f"the spot job has already cost about ${spent:.2f} of budget.max_run_usd=${budget:.2f}"
    ondemand = load_params(args.params, [*args.set, "compute.spot=false", f"budget.max_run_usd={left:.6f}"])
    try:
        plan.check_budget(ondemand)
    except ConfigError as err:
        return f"no on-demand machine can run it ({err})"
    except Exception as err:  # plan.BudgetExceeded; the plan module is optional
        if type(err).__name__ != "BudgetExceeded":
            raise
        return (f"the spot job has cost about ${spent:.2f} ({spot_hours:.2f} h), leaving ${left:.2f} of "
                f"budget.max_run_usd=${budget:.2f}; on-demand: {err}")
    return None


def cancel_and_wait(sky: list[str], name: str, compute, interval: float, log, sleep, clock) -> Outcome:
    """Cancel the job and wait until SkyPilot reports it ended: two jobs must never write one
    checkpoint folder at the same time."""
    subprocess.run([*sky, "jobs", "cancel", "-y", "-n", name], check=False, timeout=600)
    return follow(sky, name, compute, stop_at_limits=False, interval=interval, log=log, sleep=sleep, clock=clock)


def run(launch: dict, args, plan, sky: list[str], launch_command, log=print, sleep=time.sleep, clock=time.monotonic) -> int:
    """Launch the spot job detached, watch it, and move the run to on-demand past a limit.

    `launch_command(launch, extra)` is the `sky jobs launch` argument list with `extra` flags."""
    try:
        return _launch_and_watch(launch, args, plan, sky, launch_command, log, sleep, clock)
    except QueueUnreadable as err:
        log(f"launch: stopped watching: {err}")
        return 1


def _launch_and_watch(launch, args, plan, sky, launch_command, log, sleep, clock) -> int:
    compute = launch["params"].compute
    interval = args.watch_interval
    name = launch["name"]
    first = subprocess.run(launch_command(launch, ["-d"]))
    if first.returncode != 0:
        return first.returncode
    spot = follow(sky, name, compute, stop_at_limits=True, interval=interval, log=log, sleep=sleep, clock=clock)
    if spot.reason == "ended":
        return 0 if spot.status == SUCCEEDED else 1
    why = (f"recovered {spot.recoveries} times (compute.max_preemptions={compute.max_preemptions})" if spot.reason == "preempted"
           else f"waited {compute.max_spot_wait_minutes:g} minutes for spot capacity (compute.max_spot_wait_minutes)")
    problem = budget_problem(plan, args, spot.job_hours) if plan is not None and hasattr(plan, "check_budget") else None
    if plan is None:
        log("launch: no plan module: the on-demand machine's price is not checked against the budget")
    log(f"launch: {name} {why}: cancelling it" + (f"; not going on on-demand: {problem}" if problem else "; the rest goes on-demand"))
    ended = cancel_and_wait(sky, name, compute, interval, log, sleep, clock)
    if ended.status == SUCCEEDED:  # it finished while being cancelled
        return 0
    if problem:
        log(f"budget exceeded: {problem}. The checkpoints stay in the bucket (RUN_FOLDER={launch['env_changes']['RUN_FOLDER']})")
        return EXIT_BUDGET
    second = dict(launch, name=ondemand_name(name), env_changes={**launch["env_changes"], "USE_SPOT": "false"})
    if subprocess.run(launch_command(second, ["-d", "--no-use-spot"])).returncode != 0:
        return 1
    final = follow(sky, second["name"], compute, stop_at_limits=False, interval=interval, log=log, sleep=sleep, clock=clock)
    return 0 if final.status == SUCCEEDED else 1
