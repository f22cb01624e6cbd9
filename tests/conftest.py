"""Shared helpers for baking the template in tests.

`bake()` goes through cookiecutter's Python API (fast, returns the project path);
`bake_cli()` goes through the real `cookiecutter` command, for checking what a user sees.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from cookiecutter.main import cookiecutter


def share_the_cores(workers: int) -> None:
    """Threads per process for everything the tests start (the baked project's suite and its
    trainers, act's jobs, the demo): the cores divided among pytest-xdist's workers. Unset, every
    torch starts a thread per core, and on a 2-core machine the threads of the processes that run
    at once spin-wait on each other (three trainings took 190 s each instead of 47 s). A value set
    by hand is kept."""
    if workers <= 1 or "OMP_NUM_THREADS" in os.environ:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(max(1, cores // workers))


share_the_cores(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))


def pytest_collection_modifyitems(items):
    """The baked project's own suite is by far the longest file (about 25 minutes on 2 cores): it
    goes first, so that pytest-xdist's other worker runs every other file beside it, not after it.
    pytest-xdist keeps this order only with `--no-loadscope-reorder` (the Makefile passes it);
    otherwise it sends the files with the most tests first. A stable sort: the order within each
    file is kept, and every worker computes the same order."""
    items.sort(key=lambda item: item.path.name != "test_baked_project.py")


TEMPLATE = Path(__file__).resolve().parents[1]
CONTEXT = json.loads((TEMPLATE / "cookiecutter.json").read_text(encoding="utf-8"))
# The bin folder of the interpreter running the tests (the venv): cookiecutter, dvc and ruff live there.
VENV_BIN = Path(sys.executable).parent

TEST_ENV = {
    "GIT_AUTHOR_NAME": "Template Tests",
    "GIT_AUTHOR_EMAIL": "template-tests@example.com",
    "GIT_COMMITTER_NAME": "Template Tests",
    "GIT_COMMITTER_EMAIL": "template-tests@example.com",
    "DVC_NO_ANALYTICS": "1",
    # Behave like a fresh machine: no system/global git config (no identity, no signing, no hooks).
    "GIT_CONFIG_NOSYSTEM": "1",
}


@pytest.fixture(scope="session", autouse=True)
def _hermetic_env():
    """Git identity, no DVC analytics, no user git/cookiecutter config; restored afterwards.

    monkeypatch is function-scoped, so the session-wide environment is saved and restored by hand.
    """
    scratch = Path(tempfile.mkdtemp(prefix="cc-test-env-"))
    (scratch / "gitconfig").write_text("")
    # A private cookiecutter config: no user default_context, replay files kept out of $HOME.
    (scratch / "cookiecutter.yaml").write_text(
        f"cookiecutters_dir: {json.dumps(str(scratch / 'cookiecutters'))}\n"
        f"replay_dir: {json.dumps(str(scratch / 'replay'))}\n"
    )
    env = dict(
        TEST_ENV,
        GIT_CONFIG_GLOBAL=str(scratch / "gitconfig"),
        COOKIECUTTER_CONFIG=str(scratch / "cookiecutter.yaml"),
    )
    # The post-gen hook finds git and dvc on PATH: make sure the venv's dvc is found even when
    # pytest was started as .venv/bin/python without activating the venv.
    path = os.environ.get("PATH", "")
    if str(VENV_BIN) not in path.split(os.pathsep):
        env["PATH"] = os.pathsep.join([str(VENV_BIN), path]) if path else str(VENV_BIN)
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(scratch, ignore_errors=True)


def bake(tmp_path: Path, **answers: str) -> Path:
    """Bake the template into tmp_path with cookiecutter's Python API; return the project folder."""
    project = cookiecutter(
        str(TEMPLATE),
        no_input=True,
        output_dir=str(tmp_path),
        extra_context=answers,
    )
    return Path(project)


def bake_cli(tmp_path: Path, env: dict[str, str] | None = None, **answers: str) -> subprocess.CompletedProcess:
    """Bake through the real `cookiecutter` command in tmp_path (the output folder too).

    `env` entries are added to (and override) the current environment. Returns the finished
    process with text stdout/stderr; never raises on a non-zero exit.
    """
    command = [sys.executable, "-m", "cookiecutter", "--no-input", str(TEMPLATE)]
    command += [f"{key}={value}" for key, value in answers.items()]
    return subprocess.run(
        command,
        check=False,
        cwd=tmp_path,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def dvc_executable() -> str:
    """The dvc the hooks use (the venv's), as an absolute path."""
    found = shutil.which("dvc") or shutil.which("dvc", path=str(VENV_BIN))
    assert found, "dvc is not installed in the test environment"
    return found
