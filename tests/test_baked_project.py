"""The default bake as a user meets it: installed, its own params, its own tests and linter.

These run the baked project's real code on its tiny model (nothing is downloaded). `make smoke`
and DVC's pipeline are in test_baked_pipeline.py: another file, so that pytest-xdist runs them
beside this file's long suite.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TEMPLATE, bake

PACKAGE = "baked_check"


def run(*command: str, cwd: Path, timeout: int = 600, **env: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        list(command), cwd=cwd, capture_output=True, text=True, timeout=timeout,
        # COLUMNS: pytest's one-line summary of a failure is cut to the terminal's width.
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1", "COLUMNS": "240", **env},
    )
    # pytest's failures first (they come before its durations and summary), then the end of the output.
    failures = result.stdout[result.stdout.find("= FAILURES ="):][:6000] if "= FAILURES =" in result.stdout else ""
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{failures}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


# What a new user changes first, committed as their own: the project's suite (its CI on every pull
# request) must pass on the user's params.yaml, not only on the template's defaults.
USERS_OWN_PARAMS = [
    (r"^  method: \w+", "  method: lora"),
    (r"^  learning_rate: .*$", "  learning_rate: 1.0e-4"),  # the value the template's tests once "changed" to
    (r"^  path: data/raw/support\.jsonl", "  path: data/raw"),  # a folder of their own files
]


def use_own_params(project: Path) -> None:
    path = project / "params.yaml"
    text = path.read_text()
    for pattern, line in USERS_OWN_PARAMS:
        text, count = re.subn(pattern, line, text, count=1, flags=re.M)
        assert count == 1, f"params.yaml has no line matching {pattern}"
    path.write_text(text)
    run("git", "commit", "-q", "-am", "Our own params", cwd=project)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The default bake (another name, so it cannot clash with a demo install), pip-installed,
    with the parameters a user changes first changed and committed."""
    project = bake(tmp_path_factory.mktemp("baked"), project_name="Baked Check")
    use_own_params(project)
    run(sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "-e", ".", cwd=project)
    return project


def test_console_script_is_installed(installed):
    script = Path(sys.executable).parent / PACKAGE
    result = run(str(script), "--help", cwd=installed)
    for command in ("prepare", "train", "evaluate", "smoke"):
        assert command in result.stdout


def test_baked_test_suite_passes(installed):
    # The baked suite trains the tiny model for real many times: about 15 minutes on 2 cores,
    # through its README's `make test` (a process per core, a test file to each).
    # Its export tests run llama.cpp from the node-llama-cpp the template's `make install` put in .ci/node.
    node_modules = os.environ.get("NODE_LLAMA_CPP_MODULES") or str(TEMPLATE / ".ci/node/node_modules")
    result = run("make", "test", f"PYTHON={sys.executable}", cwd=installed, timeout=2400,
                 PYTEST_ADDOPTS="-q -p no:cacheprovider --durations=15 --tb=short", NODE_LLAMA_CPP_MODULES=node_modules)
    print(result.stdout[-3000:])  # the slowest tests, in CI's log
    # pytest's summary line; make may print "Leaving directory" after it when run from make.
    summaries = re.findall(r"^=*\s*(.*\b(\d+) passed\b.*) in [\d.]+s\b.*$", result.stdout, re.M)
    assert summaries, result.stdout[-3000:]
    summary, passed = summaries[-1][0], int(summaries[-1][1])
    assert passed >= 30 and "failed" not in summary and "skipped" not in summary, summary


def test_make_lint_passes_on_the_baked_project(installed):
    result = run("make", "lint", f"PYTHON={sys.executable}", cwd=installed)
    assert "All checks passed!" in result.stdout
