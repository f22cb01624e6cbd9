"""Where a variant runs: LocalBackend (the task's run section here, one after another) or
SkyBackend (a managed spot job per variant, up to --parallel at once); the jobs' names.

A backend starts a variant, stops it early (local: SIGTERM, so it checkpoints; sky: `sky jobs
cancel`), and passes a signal to the sweep on (`interrupt`).
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

from .. import launch, skytask
from .variants import Variant


def job_name(task_name: str, sweep_id: str, variant: str, limit: int = launch.MAX_NAME) -> str:
    """`<task>-<sweep id>-<variant>`, the task name shortened to fit SkyPilot's 63 characters."""
    tail = f"-{sweep_id}-{variant}"
    head = launch._slug(task_name) or "sweep"
    if not head[0].isalpha():
        head = f"job-{head}"
    return head[: limit - len(tail)].strip("-") + tail


class LocalBackend:
    """One variant after another: the task's run section here, as `launch --backend local`."""

    parallel = 1
    detach_on_signal = False  # the run sections are children of this process: they stop with it

    def __init__(self, args, sweep_dir: Path):
        self.args, self.sweep_dir = args, sweep_dir

    def start(self, launched: dict, variant: Variant) -> subprocess.Popen:
        ns = argparse.Namespace(task_id=None, gpus=self.args.gpus, checkpoint_root=self.args.checkpoint_root)
        env = launch.local_environment(launched, ns)
        log = (self.sweep_dir / f"{variant.name}.log").open("ab")
        print(f"sweep: {variant.name} runs here as task {env['SKYPILOT_TASK_ID']} (log: {log.name})", flush=True)
        return launch.start_local(launched, env, stdout=log, stderr=subprocess.STDOUT)

    def stop(self, process: subprocess.Popen, launched: dict) -> None:
        """SIGTERM to the run section's group: the trainer checkpoints and exits 75."""
        self._signal(process, signal.SIGTERM)

    def interrupt(self, process: subprocess.Popen, launched: dict, signals: int) -> None:
        """The sweep was signalled: checkpoint and stop (first time), kill (after that)."""
        self._signal(process, signal.SIGTERM if signals == 1 else signal.SIGKILL)

    @staticmethod
    def _signal(process: subprocess.Popen, signum: int) -> None:
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            pass


class SkyBackend:
    """One managed spot job per variant, up to --parallel at once. Each job's `sky jobs launch`
    stays attached (it follows the job's logs through recoveries) and ends when the job does."""

    def __init__(self, args, sweep_dir: Path):
        self.args, self.sweep_dir = args, sweep_dir
        self.parallel = args.parallel
        self.missing = ""  # why SkyPilot was not found, for a dry run's note
        try:
            self.cli = skytask.find_sky_cli()
        except skytask.SkyNotFound as err:
            if not getattr(args, "dry_run", False):
                raise
            self.cli, self.missing = ["sky"], str(err)  # a dry run only prints the command, as `launch --dry-run`

    def task_file(self, launched: dict, variant: Variant) -> Path:
        """The resolved task of one variant: its envs (overrides, sweep tags) in the file."""
        config = dict(launched["resolved"])
        config["workdir"] = str(Path(config.get("workdir") or ".").resolve())  # the file is not in the project root
        path = self.sweep_dir / f"{variant.name}.yaml"
        path.write_text(launch.task_yaml(config), encoding="utf-8")
        return path

    def command(self, launched: dict, variant: Variant) -> list[str]:
        command = [*self.cli, "jobs", "launch", "-y", "-n", launched["name"]]
        for key in launched["secrets"]:
            command += ["--secret", key]  # no value: SkyPilot copies it from our environment
        return [*command, str(self.task_file(launched, variant))]

    def start(self, launched: dict, variant: Variant) -> subprocess.Popen:
        command = self.command(launched, variant)
        log = (self.sweep_dir / f"{variant.name}.log").open("ab")
        print(f"sweep: {variant.name}: {shlex.join(command)} (log: {log.name})", flush=True)
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)

    def stop(self, process: subprocess.Popen, launched: dict) -> None:
        subprocess.run([*self.cli, "jobs", "cancel", "-y", "-n", launched["name"]], stdin=subprocess.DEVNULL)

    # Managed jobs run and recover without us: a signal stops new launches and the sweep
    # returns, leaving the running jobs to finish (`report --sweep ID` shows them later).
    detach_on_signal = True

    def interrupt(self, process: subprocess.Popen, launched: dict, signals: int) -> None:
        print(f"sweep: {launched['name']} keeps running as a managed job; cancel it with "
              f"`sky jobs cancel -n {launched['name']}`", file=sys.stderr, flush=True)
