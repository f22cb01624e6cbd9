"""Fetch the dataset that data.path names when this machine does not have it: `dvc pull <path>`.

The SkyPilot tasks run it in `setup`: the workdir upload normally brings the data along, and a
dataset left out of it (too big, or ignored) comes from the DVC remote instead. It follows
params.yaml and the task's TRAIN_OVERRIDES (`--set data.path=...`), so the VM trains on the
data the run names, not on a fixed file.

    python scripts/pull_data.py [--params params.yaml] [--set data.path=data/mine ...]

Exit 0: the data is here (already, or pulled), or it is a hub dataset (`hf:...`, downloaded by
`prepare`). Exit 2: it is not here and DVC could not fetch it (the message says why).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from {{ cookiecutter.package_name }}.config import ConfigError, load_params


def overrides_from_env(value: str) -> list[str]:
    """`--set a=1 --set b=2` (the task's TRAIN_OVERRIDES) -> ["a=1", "b=2"]."""
    words = value.split()
    return [words[i + 1] for i, word in enumerate(words[:-1]) if word == "--set"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params, overrides_from_env(os.environ.get("TRAIN_OVERRIDES", "")) + args.set)
    except ConfigError as err:
        print(f"pull_data: {err}", file=sys.stderr)
        return 2
    path = str(params.data.path)
    if path.startswith("hf:"):
        print(f"data.path={path}: a hub dataset; `prepare` downloads it")
        return 0
    # A folder kept in git that holds DVC-tracked files (data/raw/support.jsonl.dvc) is here only
    # when those files are: a fresh checkout has the folder and the .dvc files, not the data.
    missing = sorted(str(f) for f in Path(path).rglob("*.dvc") if not f.with_suffix("").exists()) if Path(path).is_dir() else []
    if Path(path).exists() and not missing:
        print(f"data.path={path}: here already")
        return 0
    dvc = [sys.executable, "-m", "dvc"]
    if not Path(".git").exists():  # the VM's workdir has no .git (see .skyignore)
        subprocess.run([*dvc, "config", "--local", "core.no_scm", "true"], check=False)
    print(f"data.path={path}: not here; dvc pull {' '.join(missing) or path}", flush=True)
    pulled = subprocess.run([*dvc, "pull", "--", *(missing or [path])])  # an argument list: no shell sees the path
    if pulled.returncode != 0 or not Path(path).exists() or any(not Path(m).with_suffix("").exists() for m in missing):
        print(f"pull_data: data.path={path} is not on this machine and `dvc pull {path}` could not fetch it: "
              f"track it with `dvc add {path}` and `dvc push` it to the project's remote, or upload it with the workdir",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
