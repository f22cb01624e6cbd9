"""`launch`: run a SkyPilot task as a managed spot job, or its run section on this machine.

    {{ cookiecutter.package_name }} launch --dry-run                      # the resolved task, the command, the plan
    {{ cookiecutter.package_name }} launch --set train.max_steps=500      # sky jobs launch -y -n <name> ... sky/train.yaml
    {{ cookiecutter.package_name }} launch --backend local --set ...      # the same run section, here, with SKYPILOT_* set

The job is named after the branch (or pull request) and commit, e.g.
`{{ cookiecutter.project_slug }}-train-pr42-1a2b3c4`, so a relaunch is recognisable in `sky jobs queue` and
`sky jobs cancel -n <name>` finds it. `--set` overrides are validated against params.yaml
first, then reach every stage through the task's TRAIN_OVERRIDES. Nothing is ever passed
through a shell: branch names and overrides are arguments or environment values.

The local backend runs the task's `run:` section with bash in the task's workdir, with the
variables one SkyPilot node sees (SKYPILOT_TASK_ID, SKYPILOT_NODE_RANK=0, SKYPILOT_NODE_IPS,
SKYPILOT_NUM_NODES=1, SKYPILOT_NUM_GPUS_PER_NODE, SKYPILOT_CLUSTER_INFO), the task's envs,
CHECKPOINT_ROOT pointed at --checkpoint-root instead of the bucket, and VENV_BIN pointed at
this Python's environment (the setup section is not run: install the project first). The
task id is stable (`local-<job name>` unless --task-id), so rerunning after a crash resumes
from the checkpoints of the run before, as a recovered SkyPilot job does. The first Ctrl-C
or SIGTERM asks the trainer to checkpoint and stop (exit 75); a second one kills it.

Errors: a bad task file, bad overrides or a missing SkyPilot raise ConfigError subclasses
(the CLI's exit code 2). If the project has a `plan` module, `--dry-run` prints
`plan.make_plan(params)` and a SkyPilot launch (dry or not) first calls `plan.check_budget`,
whose exception (plan.BudgetExceeded) propagates to the caller. Otherwise `run` returns the exit
code of `sky jobs launch` or of the run section (75: stopped after a checkpoint).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from ..config import ConfigError, load_params, multi_gpu_problem, yaml_error
from . import skytask, spot_fallback

DEFAULT_TASK = "sky/train.yaml"
DEFAULT_CHECKPOINT_ROOT = ".cache/checkpoints"
MAX_NAME = 63  # SkyPilot names become cloud resource names; most clouds stop at 63 characters
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# --------------------------------------------------------------------------- names


def _git(*args: str, cwd: str | Path = ".") -> str:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True)
        return done.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def source_state(env: dict[str, str] | None = None, cwd: str | Path = ".") -> dict[str, Any]:
    """Branch (or PR number), commit and whether tracked files have uncommitted changes.

    CI variables win over git: GitHub Actions checks out a detached merge commit.
    """
    env = os.environ if env is None else env
    pr = env.get("PR_NUMBER", "")
    match = re.fullmatch(r"refs/pull/(\d+)/merge", env.get("GITHUB_REF", ""))
    if not pr and match:
        pr = match.group(1)
    branch = env.get("GITHUB_HEAD_REF") or env.get("GITHUB_REF_NAME") or _git("rev-parse", "--abbrev-ref", "HEAD", cwd=cwd)
    commit = env.get("GITHUB_SHA") or _git("rev-parse", "HEAD", cwd=cwd)
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no", cwd=cwd)) if not env.get("GITHUB_SHA") else False
    return {"pr": pr, "branch": "" if branch == "HEAD" else branch, "commit": commit, "dirty": dirty}


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def job_name(task_name: str, source: dict[str, Any], limit: int = MAX_NAME) -> str:
    """`<task>-<pr42|branch>-<commit7>[-dirty]`, valid for SkyPilot and cloud resource names:
    lowercase letters, digits and dashes, starting with a letter, at most `limit` characters.
    The branch is shortened first, then the task name; the commit is always kept."""
    ref = f"pr{_slug(source['pr'])}" if source.get("pr") else _slug(source.get("branch", ""))
    tail = "-".join(part for part in (_slug(source.get("commit", ""))[:7], "dirty" if source.get("dirty") else "") if part)
    head = _slug(task_name) or "job"
    if not head[0].isalpha():
        head = f"job-{head}"
    room = limit - len(tail) - 1 if tail else limit
    if ref and len(head) + 1 + len(ref) > room:
        ref = ref[: max(0, room - len(head) - 1)].strip("-")
    if len(head) > room:
        head = head[:room].strip("-")
    name = "-".join(part for part in (head, ref, tail) if part)
    return name[:limit].strip("-")


def sanitized_ref(text: str) -> str:
    """A branch name as a plain label (for the MLflow tag): no shell or YAML metacharacters."""
    return re.sub(r"[^A-Za-z0-9._/-]+", "-", text)[:200]


# --------------------------------------------------------------------------- resolving


def parse_env(assignment: str) -> tuple[str, str]:
    key, sep, value = assignment.partition("=")
    if not sep or not ENV_NAME.fullmatch(key):
        raise ConfigError(f"--env {assignment!r}: expected NAME=value, NAME made of letters, digits and underscores")
    return key, value


def train_overrides(base: str, sets: list[str]) -> str:
    """TRAIN_OVERRIDES for the task: its own value plus `--set key=value` for each override.
    The run section splits it on whitespace, so a value cannot contain any."""
    for assignment in sets:
        if re.search(r"\s", assignment):
            raise ConfigError(f"--set {assignment!r}: a value passed to a task cannot contain whitespace")
    return " ".join([*base.split(), *(arg for s in sets for arg in ("--set", s))])


def check_accelerate_config(name: str, params, workdir: Path) -> None:
    """The launch config the task uses on machines with several GPUs must exist and suit the
    method: better found here than on a VM that is already being paid for."""
    if not name:
        return
    path = workdir / name
    if not path.is_file():
        choices = ", ".join(str(p.relative_to(workdir)) for p in sorted((workdir / "configs" / "accelerate").glob("*.yaml")))
        raise ConfigError(f"ACCELERATE_CONFIG={name!r}: no such file (choose one of: {choices})")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"ACCELERATE_CONFIG={name!r}: {yaml_error(path, err)}") from None
    distributed_type = str(config.get("distributed_type", "")) if isinstance(config, dict) else ""
    problem = multi_gpu_problem(distributed_type, params.model.method)
    if problem:
        raise ConfigError(f"ACCELERATE_CONFIG={name!r}: {problem}")


def resolve(args) -> dict[str, Any]:
    """Everything a launch needs, checked: the task, its envs, the job name, the params."""
    task_path = Path(args.task)
    config = skytask.check_file(task_path)
    params = load_params(args.params, args.set)  # unknown keys and bad values stop here
    source = source_state()
    name = args.name or job_name(config["name"], source)
    if len(name) > MAX_NAME or not re.fullmatch(r"[a-zA-Z]([-_.a-zA-Z0-9]*[a-zA-Z0-9])?", name):
        raise ConfigError(
            f"--name {name!r}: SkyPilot names start with a letter, use letters, digits, '-', '_', '.' "
            f"and stay within {MAX_NAME} characters"
        )
    envs = {str(k): "" if v is None else str(v) for k, v in (config.get("envs") or {}).items()}
    changed: dict[str, str] = {}
    for key, value in map(parse_env, args.env):
        changed[key] = value
    # What git would say, for the MLflow run name and tags (the VM gets no .git).
    changed.setdefault("GIT_COMMIT", source["commit"])
    changed.setdefault("GIT_BRANCH", sanitized_ref(source["branch"]))
    changed.setdefault("PR_NUMBER", source["pr"])
    changed["TRAIN_OVERRIDES"] = train_overrides(changed.get("TRAIN_OVERRIDES", envs.get("TRAIN_OVERRIDES", "")), args.set)
    changed = {k: v for k, v in changed.items() if envs.get(k) != v}  # only what differs from the file
    declared = config.get("secrets") or {}
    secrets = [key for key in declared if os.environ.get(key)]  # names only: SkyPilot reads the values itself
    resolved = dict(config, envs={**envs, **changed})
    check_accelerate_config(resolved["envs"].get("ACCELERATE_CONFIG", ""), params, Path(resolved.get("workdir") or "."))
    return {
        "task_path": task_path,
        "config": config,
        "resolved": resolved,
        "params": params,
        "name": name,
        "env_changes": changed,
        "secrets": secrets,
        "source": source,
    }


def skyignored(relative: Path, workdir: Path) -> bool:
    """Whether `.skyignore` (its plain folder and file entries) keeps `relative` out of the upload."""
    ignore = workdir / ".skyignore"
    if not ignore.is_file():
        return False
    entries = [line.strip().rstrip("/") for line in ignore.read_text(encoding="utf-8").splitlines()]
    parts = relative.parts
    return any(entry and not entry.startswith("#") and tuple(Path(entry).parts) == parts[: len(Path(entry).parts)]
               for entry in entries)


def check_model_reaches_the_vm(base: str, workdir: Path) -> None:
    """A model.base that names a directory on this machine is refused for a cloud launch: the VM
    gets the workdir (less .skyignore) and the hub, nothing else. A directory inside the workdir
    that is uploaded with it is fine."""
    from ..model.loading import looks_like_path  # the same rule `prepare` and `train` use

    path = Path(base).expanduser()
    if not (looks_like_path(base) or path.is_dir()):
        return  # a hub id: the VM downloads it (HF_TOKEN for gated models)
    try:
        inside = path.resolve().relative_to(workdir.resolve())
    except ValueError:
        inside = None
    if path.is_dir() and inside is not None and not skyignored(inside, workdir):
        return
    where = ("inside the project but under a path .skyignore keeps from the upload" if inside is not None and path.is_dir()
             else "a directory on this machine" if path.is_dir() else "a path that does not exist here either")
    raise ConfigError(
        f"model.base={base!r} is {where}: the cloud VM will not have it. Use a Hugging Face hub id (a private or "
        "gated one with HF_TOKEN set), put the model directory inside the project where the workdir upload takes it "
        "(not under a path listed in .skyignore), or train here with --backend local"
    )


def sky_command(cli: list[str], launch: dict[str, Any], extra: list[str] = ()) -> list[str]:
    """`sky jobs launch -y -n NAME [extra] --env ... --secret ... TASK`."""
    command = [*cli, "jobs", "launch", "-y", "-n", launch["name"], *extra]
    for key, value in launch["env_changes"].items():
        command += ["--env", f"{key}={value}"]
    for key in launch["secrets"]:
        command += ["--secret", key]  # no value: SkyPilot copies it from our environment
    return [*command, str(launch["task_path"])]


# --------------------------------------------------------------------------- the local node


def count_gpus() -> int:
    """What SKYPILOT_NUM_GPUS_PER_NODE would say here: visible NVIDIA GPUs, 0 without any."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in listed.stdout.splitlines()) if listed.returncode == 0 else 0


def local_environment(launch: dict[str, Any], args) -> dict[str, str]:
    """The environment of the run section on one simulated SkyPilot node."""
    envs = launch["resolved"]["envs"]
    task_id = args.task_id or f"local-{launch['name']}"
    if not re.fullmatch(r"[A-Za-z0-9._-]+", task_id):
        raise ConfigError(f"--task-id {task_id!r}: letters, digits, '.', '_' and '-' only (it names a folder)")
    gpus = count_gpus() if args.gpus is None else args.gpus
    return {
        **os.environ,
        **envs,
        # The bucket mount becomes a folder here; the run section only ever uses the variable.
        "CHECKPOINT_ROOT": str(Path(args.checkpoint_root).resolve()),
        # The run section puts the project's virtualenv first on PATH; here that is ours.
        "VENV_BIN": str(Path(sys.executable).parent),
        "SKYPILOT_TASK_ID": task_id,
        "SKYPILOT_NODE_RANK": "0",
        "SKYPILOT_NODE_IPS": "127.0.0.1",
        "SKYPILOT_NUM_NODES": "1",
        "SKYPILOT_NUM_GPUS_PER_NODE": str(gpus),
        "SKYPILOT_CLUSTER_INFO": json.dumps(
            {"cluster_name": socket.gethostname(), "cloud": "Local", "region": None, "zone": None}
        ),
    }


def start_local(launch: dict[str, Any], env: dict[str, str], **popen) -> subprocess.Popen:
    """Start bash -c <run section> in its own process group. The shell ignores SIGTERM, so
    that a SIGTERM sent to the group reaches the trainer (checkpoint, exit 75) while the
    shell waits for it and reports its exit code."""
    script = launch["resolved"].get("run") or ""
    workdir = Path(launch["resolved"].get("workdir") or ".")
    if not workdir.is_dir():
        raise ConfigError(f"{launch['task_path']}: workdir {str(workdir)!r} is not a folder (run from the project root)")
    Path(env["CHECKPOINT_ROOT"]).mkdir(parents=True, exist_ok=True)

    def ignore_sigterm():  # in the child, before bash starts: inherited by bash, not by Python handlers
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    return subprocess.Popen(
        ["bash", "-c", script], cwd=workdir, env=env, start_new_session=True, preexec_fn=ignore_sigterm, **popen
    )


def run_local(launch: dict[str, Any], env: dict[str, str]) -> int:
    """The run section here (start_local), until it ends. A first SIGTERM/SIGINT is passed on
    as SIGTERM (the trainer checkpoints and exits 75); a second signal kills the group."""
    process = start_local(launch, env)
    received = []

    def forward(signum, _frame):
        received.append(signum)
        try:
            os.killpg(process.pid, signal.SIGTERM if len(received) == 1 else signal.SIGKILL)
        except ProcessLookupError:
            pass
        if len(received) == 1:
            print("launch: stopping: the trainer saves a checkpoint first (signal again to kill)", file=sys.stderr)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return process.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# --------------------------------------------------------------------------- plan and output


def plan_module():
    """The project's `plan` module, or None if it has none. Errors inside it are not hidden."""
    name = f"{__package__}.plan"
    if importlib.util.find_spec(name) is None:
        return None
    return importlib.import_module(name)


def _block_strings(dumper, text):
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


class _TaskDumper(yaml.SafeDumper):
    pass


_TaskDumper.add_representer(str, _block_strings)


def task_yaml(config: dict[str, Any]) -> str:
    return yaml.dump(config, Dumper=_TaskDumper, sort_keys=False, allow_unicode=True, width=120)


def print_dry_run(launch: dict[str, Any], args, plan):
    """Print what a launch would do; returns the plan it printed (None without a plan module)."""
    print(f"# job name: {launch['name']}")
    if args.backend == "sky":
        try:
            cli = skytask.find_sky_cli()
        except skytask.SkyNotFound as err:
            cli = ["sky"]
            print(f"# note: {err}")
        print(f"# command: {shlex.join(sky_command(cli, launch))}")
        if launch["secrets"]:
            print(f"# secrets passed from your environment: {', '.join(launch['secrets'])}")
        try:
            checked = skytask.skypilot_check([launch["task_path"]])
            entry = next(iter(checked.values()))
            print("# SkyPilot parses the task: " + ("ok" if entry["ok"] else entry["error"]))
        except skytask.SkyNotFound as err:
            print(f"# SkyPilot's parser not run: {err}")
    else:
        env = local_environment(launch, args)
        shown = {k: env[k] for k in env if k.startswith("SKYPILOT_") or k in ("CHECKPOINT_ROOT", "VENV_BIN")}
        workdir = launch["resolved"].get("workdir") or "."
        print(f"# command: bash -c <run section below>   (in {workdir}, with the task's envs and:)")
        for key, value in shown.items():
            print(f"#   {key}={value}")
    planned = None
    if plan is not None and hasattr(plan, "make_plan"):
        planned = plan.make_plan(launch["params"])
        text = plan.render_table(planned) if hasattr(plan, "render_table") else str(planned)
        print("# plan:")
        for line in str(text).splitlines():
            print(f"#   {line}")
    print(task_yaml(launch["resolved"]), end="")
    return planned


def check_budget(plan, params, planned=None) -> None:
    """plan.check_budget raises (BudgetExceeded) when the cheapest run is over budget.max_run_usd."""
    if plan is None or not hasattr(plan, "check_budget"):
        return
    if planned is not None:
        plan.check_budget(planned, params)
    else:
        plan.check_budget(params)


# --------------------------------------------------------------------------- the command


def register(subparsers) -> argparse.ArgumentParser:
    """Add `launch` to the CLI's subcommands; `run(args)` executes it."""
    parser = subparsers.add_parser(
        "launch",
        help="run a SkyPilot task: a managed spot job (sky), or its run section here (local)",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--backend", choices=["sky", "local"], default="sky", help="sky: `sky jobs launch`; local: this machine")
    parser.add_argument("--task", default=DEFAULT_TASK, help=f"task file (default: {DEFAULT_TASK})")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved task, the command and the plan; run nothing")
    parser.add_argument("--params", default="params.yaml", help="parameters file the overrides are checked against")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a parameter in every stage")
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="set a task env (e.g. MLFLOW_TRACKING_URI)"
    )
    parser.add_argument("--name", help="job name (default: <task>-<branch or prN>-<commit>)")
    parser.add_argument("--watch-interval", type=float, default=60, metavar="SECONDS",
                        help="with compute.max_preemptions or max_spot_wait_minutes: seconds between `sky jobs queue` polls")
    local = parser.add_argument_group("local backend")
    local.add_argument(
        "--checkpoint-root",
        default=DEFAULT_CHECKPOINT_ROOT,
        help=f"stands in for the bucket (default: {DEFAULT_CHECKPOINT_ROOT})",
    )
    local.add_argument("--task-id", help="SKYPILOT_TASK_ID (default: local-<job name>; the same id resumes)")
    local.add_argument("--gpus", type=int, help="SKYPILOT_NUM_GPUS_PER_NODE (default: the GPUs nvidia-smi lists, else 0)")
    parser.set_defaults(handler=run)
    return parser


def run(args) -> int:
    launch = resolve(args)
    if args.backend == "sky":  # before the dry run too: what it would launch must be able to run
        check_model_reaches_the_vm(launch["params"].model.base, Path(launch["resolved"].get("workdir") or "."))
    plan = plan_module()
    if args.dry_run:
        planned = print_dry_run(launch, args, plan)
        if args.backend == "sky":
            check_budget(plan, launch["params"], planned)
        return 0
    if args.backend == "local":
        env = local_environment(launch, args)
        where = f"task {env['SKYPILOT_TASK_ID']}, checkpoints in {env['CHECKPOINT_ROOT']}"
        print(f"launch: running the run section of {launch['task_path']} here as {where}")
        return run_local(launch, env)
    check_budget(plan, launch["params"])  # before any money is spent
    cli = skytask.find_sky_cli()
    if spot_fallback.wanted(launch["params"]):  # watched, and moved to on-demand past a limit
        launch["env_changes"]["RUN_FOLDER"] = f"{launch['name']}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
        return spot_fallback.run(launch, args, plan, cli, lambda job, extra: sky_command(cli, job, extra))
    command = sky_command(cli, launch)
    print(f"launch: {shlex.join(command)}", flush=True)
    return subprocess.run(command).returncode


def main(argv: list[str] | None = None) -> int:
    """`python -m {{ cookiecutter.package_name }}.compute.launch ...`: the same command outside the package CLI."""
    parser = argparse.ArgumentParser(prog="{{ cookiecutter.package_name }}")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["launch", *(sys.argv[1:] if argv is None else argv)])
    try:
        return run(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        if type(err).__name__ != "BudgetExceeded":  # plan.BudgetExceeded; plan.py is optional
            raise
        print(f"budget exceeded: {err}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
