"""A stand-in for SkyPilot's `sky` command: the managed job runs on this machine.

    sky jobs launch -y -n NAME [--env KEY=VALUE ...] [--secret KEY ...] TASK.yaml
    sky jobs cancel -y -n NAME

`make setup-sky` installs it as the package `skypilot` (a wheel `skypilot_wheel` writes, found
offline through PIP_FIND_LINKS), so the workflow's own install step puts it where the project
looks for SkyPilot. A launch does what one node of a managed job does, minus the cloud:
- the task's `setup` section, with HOME a fresh "VM" folder whose ~/venv is the job's Python
  (its `scripts/pull_data.py` runs for real). That Python already holds what the setup's pip
  lines ask for: the job's own install step put the project in, editable from this very
  checkout, moments before. So ~/venv/bin/pip skips those two lines, saying so, where pip would
  find nothing to do (`vm_pip`: the same editable source and every requirement of the asked
  extras installed; no newer pip offered offline); any other pip line runs pip for real;
- the task's `run` section through the project's own local backend (`<package> launch
  --backend local`: the SKYPILOT_* variables of one node, a folder standing in for the bucket),
  with the --env values and the secrets (read from the environment by name, as SkyPilot does).
Exit codes as `sky jobs launch` gives them: 0 succeeded, 100 failed. Each call is recorded in
$ACT_SKY_LOG (arguments, and the NAMES of the secrets that were set; never values).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
import zipfile
from base64 import urlsafe_b64encode
from pathlib import Path

import yaml

HERE = Path(__file__).resolve()
FAILED = 100


def record(argv: list[str], **extra) -> None:
    log = os.environ.get("ACT_SKY_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as out:
            out.write(json.dumps({"argv": argv, "cwd": os.getcwd(), **extra}) + "\n")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sky")
    jobs = parser.add_subparsers(dest="group", required=True).add_parser("jobs")
    action = jobs.add_subparsers(dest="action", required=True)
    launch = action.add_parser("launch")
    launch.add_argument("-y", "--yes", action="store_true")
    launch.add_argument("-n", "--name", required=True)
    launch.add_argument("--env", action="append", default=[])
    launch.add_argument("--secret", action="append", default=[])
    launch.add_argument("task")
    cancel = action.add_parser("cancel")
    cancel.add_argument("-y", "--yes", action="store_true")
    cancel.add_argument("-n", "--name", required=True)
    return parser.parse_args(argv)


def launch(args: argparse.Namespace) -> int:
    task = yaml.safe_load(Path(args.task).read_text(encoding="utf-8"))
    declared = task.get("secrets") or {}
    for name in args.secret:
        if name not in declared or not os.environ.get(name):
            print(f"sky: --secret {name}: not declared by the task or not set", file=sys.stderr)
            return FAILED
    bucket = Path(os.environ["ACT_SKY_BUCKET"])
    envs = {str(k): "" if v is None else str(v) for k, v in (task.get("envs") or {}).items()}
    envs.update(item.split("=", 1) for item in args.env)
    home = Path(tempfile.mkdtemp(prefix="vm-home-", dir=bucket.parent))
    vm_venv(home / "venv")
    setup_env = {**os.environ, **envs, "HOME": str(home), "CHECKPOINT_ROOT": str(bucket), "SKYPILOT_TASK_ID": args.name}
    print(f"sky (stand-in): setup of {args.name}", flush=True)
    if subprocess.run(["bash", "-c", task.get("setup") or "true"], env=setup_env).returncode != 0:
        return FAILED
    package = os.environ["ACT_SKY_PACKAGE"]
    command = [sys.executable, "-m", package, "launch", "--backend", "local", "--task", args.task, "--name", args.name,
               "--task-id", args.name, "--checkpoint-root", str(bucket)]
    for item in args.env:
        command += ["--env", item]
    print(f"sky (stand-in): run of {args.name}", flush=True)
    code = subprocess.run(command).returncode
    return 0 if code == 0 else FAILED


def vm_venv(folder: Path) -> None:
    """~/venv of the "VM": `python` is the job's Python, `pip` is `vm_pip` in front of its pip."""
    (folder / "bin").mkdir(parents=True)
    python = shlex.quote(sys.executable)
    for name, command in {"python": python, "pip": f"{python} {shlex.quote(str(HERE))} vm-pip"}.items():
        script = folder / "bin" / name
        script.write_text(f'#!/bin/sh\nexec {command} "$@"\n')
        script.chmod(0o755)


def editable_source(name: str, extras: set[str]) -> Path | None:
    """The folder `name` is installed editable from in this Python's own venv, if every
    requirement of it and of `extras` is installed in a version it accepts; else None."""
    from importlib import metadata

    from packaging.requirements import Requirement

    try:
        dist = metadata.distribution(name)
        url = json.loads(dist.read_text("direct_url.json") or "{}")
    except (metadata.PackageNotFoundError, json.JSONDecodeError):
        return None
    if not Path(str(dist.locate_file(""))).resolve().is_relative_to(Path(sys.prefix).resolve()):
        return None  # installed elsewhere (the test environment), not by this job
    if not (url.get("dir_info") or {}).get("editable") or not url.get("url", "").startswith("file://"):
        return None
    for line in dist.requires or []:
        requirement = Requirement(line)
        if requirement.marker and not any(requirement.marker.evaluate({"extra": extra}) for extra in extras | {""}):
            continue
        try:
            if not requirement.specifier.contains(metadata.version(requirement.name), prereleases=True):
                return None
        except metadata.PackageNotFoundError:
            return None
    return Path(url["url"].removeprefix("file://")).resolve()


def vm_pip(argv: list[str]) -> int:
    """`pip` on the "VM": skip `install --upgrade pip` and `install -e DIR[extras]` where pip
    would find nothing to do; run pip for anything else."""
    import tomllib

    args = [arg for arg in argv if arg not in ("-q", "--quiet")]
    offered = [Path(p) for p in os.environ.get("PIP_FIND_LINKS", "").split()]
    if args == ["install", "--upgrade", "pip"] and os.environ.get("PIP_NO_INDEX") == "1" \
            and not any(any(folder.glob("pip-*.whl")) for folder in offered if folder.is_dir()):
        print("vm pip: offline and no pip wheel offered: pip stays as it is", flush=True)
        return 0
    if len(args) == 3 and args[:2] == ["install", "-e"]:
        source, _, extras = args[2].partition("[")
        pyproject = Path(source) / "pyproject.toml"
        if pyproject.is_file():
            name = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["name"]
            wanted = {extra.strip() for extra in extras.rstrip("]").split(",") if extra.strip()}
            if editable_source(name, wanted) == Path(source).resolve():
                print(f"vm pip: {name}{sorted(wanted)} is installed editable from {Path(source).resolve()} "
                      "with its requirements (the job's install step): nothing to do", flush=True)
                return 0
    os.execv(sys.executable, [sys.executable, "-m", "pip", *argv])
    return FAILED  # not reached


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    secrets_set = sorted(name for name in getattr(args, "secret", []) if os.environ.get(name))
    record(argv, secrets_set=secrets_set)
    if args.action == "cancel":
        print(f"sky (stand-in): cancelled {args.name}")
        return 0
    return launch(args)


# --------------------------------------------------------------------------- the wheel

ENTRY = """\
import os, sys


def main():
    # The job's `python` (PATH) has the project and PyYAML; this venv has nothing but this file.
    os.execvp("python", ["python", {script!r}, *sys.argv[1:]])
"""


def skypilot_wheel(folder: Path, version: str = "0.14.1") -> Path:
    """A wheel named skypilot==version whose `sky` console script runs this file."""
    dist = f"skypilot-{version}.dist-info"
    files = {
        "sky_standin.py": ENTRY.format(script=str(HERE)),
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: skypilot\nVersion: {version}\nSummary: test stand-in\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{dist}/entry_points.txt": "[console_scripts]\nsky = sky_standin:main\n",
    }
    rows = []
    for name, text in files.items():
        digest = urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        rows.append(f"{name},sha256={digest},{len(text.encode())}")
    files[f"{dist}/RECORD"] = "\n".join([*rows, f"{dist}/RECORD,,"]) + "\n"
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"skypilot-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return wheel


if __name__ == "__main__":
    sys.exit(vm_pip(sys.argv[2:]) if sys.argv[1:2] == ["vm-pip"] else main())
