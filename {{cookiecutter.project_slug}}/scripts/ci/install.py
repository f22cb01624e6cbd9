"""Install what a CI job needs, into the Python running this script.

    python scripts/ci/install.py dvc                  # DVC only: `dvc params diff` in the decide job
    python scripts/ci/install.py project --torch cpu  # torch first (CPU build), then the project with [dev]
    python scripts/ci/install.py project --torch cuda # the default PyPI torch (CUDA), for a GPU runner

torch goes in before the project so that no resolver picks a multi-GB build on its own.
(SkyPilot has an environment of its own: `make setup-sky`.)
"""

from __future__ import annotations

import argparse
import subprocess
import sys

DVC = "dvc>=3.50,<4"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def pip(python: str, *args: str) -> None:
    command = [python, "-m", "pip", "install", "--quiet", *args]
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("dvc")
    project = sub.add_parser("project")
    project.add_argument("--torch", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args(argv)

    if args.what == "dvc":
        pip(sys.executable, DVC)
    else:
        pip(sys.executable, "--upgrade", "pip")
        pip(sys.executable, "torch", *(["--index-url", CPU_INDEX] if args.torch == "cpu" else []))
        pip(sys.executable, "-e", ".[dev]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
