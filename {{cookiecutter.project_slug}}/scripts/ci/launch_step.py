"""Launch the training run of this pull request or push (the SkyPilot train job), or cancel it.

    python scripts/ci/launch_step.py --backend sky   [--set key=value ...]
    python scripts/ci/launch_step.py --backend local [--set key=value ...] [--checkpoint-root DIR]
    python scripts/ci/launch_step.py --cancel        # the `if: cancelled() || failure()` step

Names the job after the event: `<task>-pr<N>-<commit>` for a pull request (PR_NUMBER,
GITHUB_SHA), `<task>-<branch>-<commit>` for a push, with `-a<attempt>` on a re-run
(GITHUB_RUN_ATTEMPT), so each run of the workflow has its own job and `sky jobs cancel -n`
finds exactly it. Then runs `{{ cookiecutter.package_name }} launch --backend sky|local --name <job>` with
an argument list (never a shell), passing to the job what tracking tags its MLflow run with:
PR_NUMBER, GITHUB_SHA, GITHUB_HEAD_REF (the branch; `main` for a baseline) and
MLFLOW_TRACKING_URI. Secrets the task declares (HF_TOKEN, MLFLOW_TRACKING_PASSWORD, ...)
are passed by name by `launch` itself, never as values on a command line.

Before launching it records the job name in a state file ($RUNNER_TEMP, or --state);
`--cancel` reads it and runs `sky jobs cancel -y -n <job>`, so a superseded or timed-out
workflow run stops paying for its cloud job. Outputs: `job_name`, `backend`, `exit_code`.
Exit code: the launch's (0 done, 2 invalid input, 3 budget exceeded, 75 interrupted after a
checkpoint; from SkyPilot 100 failed, 103 cancelled).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import ghactions
import yaml

PACKAGE = "{{ cookiecutter.package_name }}"
TASK = "sky/train.yaml"
MAX_NAME = 63
MEANING = {
    0: "finished",
    2: "invalid input: bad parameters, data or model (see the log; retrying will not help)",
    3: "budget exceeded: the estimate or the running cost crossed budget.max_run_usd",
    75: "interrupted after saving a checkpoint (rerun to resume)",
    100: "SkyPilot: the job failed (setup or training; see the log above)",
    101: "SkyPilot: the job has not finished",
    102: "SkyPilot: the job was not found",
    103: "SkyPilot: the job was cancelled",
}


def child_env() -> dict[str, str]:
    """This environment, less SkyPilot settings that are set but empty (an unset secret in the
    workflow arrives as ''; SkyPilot would take an empty API server URL literally)."""
    return {k: v for k, v in os.environ.items() if v or not k.startswith("SKYPILOT_")}


def state_file(given: str | None) -> Path:
    return Path(given or Path(os.environ.get("RUNNER_TEMP") or tempfile.gettempdir()) / "spot-lora-launch.json")


def source() -> dict[str, str]:
    """What this run trains: PR number, branch, commit; from the GitHub variables."""
    pr = ghactions.pull_request_number()
    branch = os.environ.get("GITHUB_HEAD_REF") or os.environ.get("GITHUB_REF_NAME") or ""
    commit = os.environ.get("GITHUB_SHA", "")
    if not commit:
        done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
        commit = done.stdout.strip()
    return {"pr": pr, "branch": branch, "commit": commit}


def job_name(task: str, where: dict[str, str]) -> str:
    from importlib import import_module

    launch = import_module(f"{PACKAGE}.compute.launch")
    attempt = os.environ.get("GITHUB_RUN_ATTEMPT", "1")
    suffix = f"-a{attempt}" if attempt.isdigit() and attempt != "1" else ""
    task_name = (yaml.safe_load(Path(task).read_text(encoding="utf-8")) or {}).get("name") or "train"
    return launch.job_name(task_name, {**where, "dirty": False}, limit=MAX_NAME - len(suffix)) + suffix


def launch_command(args, name: str, where: dict[str, str]) -> list[str]:
    command = [sys.executable, "-m", PACKAGE, "launch", "--backend", args.backend, "--task", args.task, "--name", name]
    env = {
        "PR_NUMBER": where["pr"],
        "GITHUB_SHA": where["commit"],
        # tracking tags git_branch from GITHUB_HEAD_REF; the VM has no .git to ask.
        "GITHUB_HEAD_REF": where["branch"],
        "MLFLOW_TRACKING_URI": os.environ.get("MLFLOW_TRACKING_URI", ""),
    }
    for key, value in env.items():
        if value:
            command += ["--env", f"{key}={value}"]
    for assignment in args.set:
        command += ["--set", assignment]
    if args.backend == "local":
        command += ["--checkpoint-root", args.checkpoint_root, "--task-id", name]
    return command


def launch(args) -> int:
    where = source()
    name = job_name(args.task, where)
    state = state_file(args.state)
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_text(json.dumps({"name": name, "backend": args.backend}))
    ghactions.set_outputs(job_name=name, backend=args.backend)
    print(f"launching {name} ({args.backend})", flush=True)
    code = subprocess.run(launch_command(args, name, where), env=child_env()).returncode
    ghactions.set_outputs(exit_code=code)
    what = MEANING.get(code, "failed (see the log above)")
    ghactions.summary(f"### Training job `{name}`\n\nBackend: {args.backend}. Exit code {code}: {what}.")
    return code


def cancel(args) -> int:
    state = state_file(args.state)
    if not state.is_file():
        print("nothing was launched: nothing to cancel")
        return 0
    launched = json.loads(state.read_text())
    if launched["backend"] != "sky":
        print(f"{launched['name']} ran on this machine: it stopped with the job")
        return 0
    from importlib import import_module

    skytask = import_module(f"{PACKAGE}.compute.skytask")
    command = [*skytask.find_sky_cli(), "jobs", "cancel", "-y", "-n", launched["name"]]
    print(f"cancelling {launched['name']}", flush=True)
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=child_env())
    print(done.stdout + done.stderr)
    if done.returncode != 0:
        return done.returncode
    ghactions.summary(f"### Training job `{launched['name']}` cancelled\n\nThe workflow run was cancelled or failed; "
                      "the SkyPilot job was cancelled with it.")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sky", "local"], default="sky")
    parser.add_argument("--cancel", action="store_true", help="cancel the job this workflow run launched")
    parser.add_argument("--task", default=TASK, help=f"SkyPilot task (default: {TASK})")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a parameter")
    parser.add_argument("--checkpoint-root", default=".cache/checkpoints", help="local backend: stands in for the bucket")
    parser.add_argument("--state", help="where the job name is kept for --cancel (default: $RUNNER_TEMP)")
    args = parser.parse_args(argv)
    return cancel(args) if args.cancel else launch(args)


if __name__ == "__main__":
    sys.exit(main())
