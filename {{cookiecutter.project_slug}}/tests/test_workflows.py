"""The pull-request training loop (.github/workflows/train.yml), tested without GitHub.

The workflow's steps are scripts (scripts/ci/); here they run as a runner runs them, in a
simulated GitHub Actions environment: a webhook payload at GITHUB_EVENT_PATH (a pull request
from a branch of this repository, one from a fork, a push to main), GITHUB_OUTPUT and
GITHUB_STEP_SUMMARY files, the usual GITHUB_* variables. Real components throughout:
- decide.py on a real git repository (a copy of this project) with real commits, and the
  real `dvc params diff`;
- plan_step.py and launch_step.py through the project's real `plan` and `launch` commands;
  the local backend trains the tiny model for real and logs to a real MLflow server;
- comment.py builds its body from a real MLflow server, and keeps its comment sticky against
  a small fake of GitHub's REST API (http.server on 127.0.0.1).
The rendered train.yml itself is checked for the security properties the loop relies on.

What only GitHub can prove (environments and their reviewers, OIDC, the real API, runner
labels, concurrency cancelling) is listed in docs/pull-request-training.md.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

PROJECT = Path(__file__).resolve().parents[1]
CI = PROJECT / "scripts/ci"
WORKFLOW = PROJECT / ".github/workflows/train.yml"
RUNNER = "{{ cookiecutter.gpu_runner }}"
USES_SKY = RUNNER in ("skypilot", "both")
REPO = "acme/support-bot"
MARKER = "<!-- spot-lora-report -->"
EXPR = "$" + "{" * 2  # a GitHub expression opener, spelled so the template leaves it alone
GIT_ID = ["-c", "user.name=Workflow Tests", "-c", "user.email=workflow-tests@example.com", "-c", "commit.gpgsign=false"]
# Variables a real runner sets; removed first, so the tests run the same inside GitHub Actions.
GITHUB_VARIABLES = ("PR_NUMBER", "GITHUB_HEAD_REF", "GITHUB_BASE_REF", "GITHUB_REF", "GITHUB_REF_NAME", "GITHUB_SHA",
                    "GITHUB_TOKEN", "GITHUB_API_URL", "HEAD_SHA", "GPU_RUNNER", "SKY_PYTHON", "HF_TOKEN")


def expression(inner: str) -> str:
    """`<opener> inner <closer>`: a GitHub expression as the rendered workflow spells it."""
    return f"{EXPR} {inner} " + "}" * 2


# ============================================================================ a simulated runner


def parse_outputs(text: str) -> list[tuple[str, str]]:
    """$GITHUB_OUTPUT as the runner reads it: `key=value` or `key<<DELIMITER` ... `DELIMITER`."""
    pairs, lines, i = [], text.split("\n"), 0
    while i < len(lines):
        line = lines[i]
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            key, delimiter = line.split("<<", 1)
            end = lines.index(delimiter, i + 1)
            pairs.append((key, "\n".join(lines[i + 1 : end])))
            i = end + 1
        elif "=" in line:
            key, value = line.split("=", 1)
            pairs.append((key, value))
            i += 1
        else:
            i += 1
    return pairs


class Runner:
    """One job's environment: the event payload, GITHUB_OUTPUT, GITHUB_STEP_SUMMARY, RUNNER_TEMP."""

    def __init__(self, root: Path, event_name: str, payload: dict, **env: str):
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        (root / "event.json").write_text(json.dumps(payload))
        self.output_file, self.summary_file = root / "output.txt", root / "summary.md"
        self.output_file.write_text("")
        self.summary_file.write_text("")
        (root / "runner-temp").mkdir(exist_ok=True)
        base = {k: v for k, v in os.environ.items() if k not in GITHUB_VARIABLES}
        self.env = {
            **base,
            "GITHUB_ACTIONS": "true",
            "GITHUB_EVENT_NAME": event_name,
            "GITHUB_EVENT_PATH": str(root / "event.json"),
            "GITHUB_OUTPUT": str(self.output_file),
            "GITHUB_STEP_SUMMARY": str(self.summary_file),
            "GITHUB_REPOSITORY": REPO,
            "GITHUB_SERVER_URL": "https://github.com",
            "GITHUB_RUN_ID": "4242",
            "GITHUB_RUN_ATTEMPT": "1",
            "RUNNER_TEMP": str(root / "runner-temp"),
            "MLFLOW_DISABLE_TELEMETRY": "true",
            **env,
        }

    def run(self, script: str, *args: str, cwd: Path = PROJECT, timeout: int = 600) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(CI / script), *args], cwd=cwd, env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def output_pairs(self) -> list[tuple[str, str]]:
        return parse_outputs(self.output_file.read_text())

    def outputs(self) -> dict[str, str]:
        return dict(self.output_pairs())

    def summary(self) -> str:
        return self.summary_file.read_text()


def repository(full_name: str) -> dict:
    return {"full_name": full_name}


def pr_payload(number: int, base: str, head: str, head_repo: str = REPO, head_ref: str = "feature/x") -> dict:
    return {
        "action": "synchronize",
        "number": number,
        "pull_request": {
            "number": number,
            "title": "Lower the learning rate `$(touch PWNED)`",
            "head": {"sha": head, "ref": head_ref, "repo": repository(head_repo)},
            "base": {"sha": base, "ref": "main", "repo": repository(REPO)},
        },
        "repository": repository(REPO),
    }


def push_payload(before: str, after: str) -> dict:
    return {"ref": "refs/heads/main", "before": before, "after": after, "repository": repository(REPO)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def explain(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}"


# ============================================================================ decide.py


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", *GIT_ID, *args], cwd=repo, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def commit_on(repo: Path, branch: str, message: str, change) -> str:
    git(repo, "checkout", "-q", "-B", branch, "main")
    change(repo)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    sha = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "-q", "main")
    return sha


def edit(path: str, old: str, new: str):
    def change(repo: Path) -> None:
        target = repo / path
        text = target.read_text(encoding="utf-8")
        assert old in text, f"{old!r} not in {path}"
        target.write_text(text.replace(old, new, 1), encoding="utf-8")

    return change


def lowered_learning_rate(params_text: str) -> tuple[float, float]:
    """The project's own learning rate and half of it: a change whatever the project's value is
    (the tests must pass on a user's params.yaml, not only on the template's defaults)."""
    old = float(yaml.safe_load(params_text)["train"]["learning_rate"])
    return old, float(f"{old / 2:.1e}")


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A copy of this project as a fresh git repo (main), with one branch per kind of change."""
    path = tmp_path_factory.mktemp("repo") / "project"
    skip = shutil.ignore_patterns(".git", ".venv", ".cache", "outputs", "checkpoints", "prepared", "prepared-smoke",
                                  "mlflow.db", "mlruns", "mlartifacts", "__pycache__", "*.egg-info", ".pytest_cache",
                                  ".ruff_cache", "tmp", "cache")
    shutil.copytree(PROJECT, path, ignore=skip)
    git(path, "init", "-q", "-b", "main")
    if not (path / ".dvc").is_dir():
        subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=path, check=True)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "main")
    params = (path / "params.yaml").read_text(encoding="utf-8")
    learning_rate = re.search(r"^  learning_rate: .*$", params, re.M).group(0)
    old_rate, new_rate = lowered_learning_rate(params)
    shas = {
        "main": git(path, "rev-parse", "HEAD"),
        "params": commit_on(path, "lower-lr", "Lower the learning rate",
                            edit("params.yaml", learning_rate, f"  learning_rate: {new_rate:.1e}")),
        "readme": commit_on(path, "docs", "Docs", edit("README.md", "## First steps", "## First steps (edited)")),
        "comments": commit_on(path, "comments", "Reword a comment",
                              edit("params.yaml", "# Every knob of the pipeline.", "# All the knobs of the pipeline.")),
        "data": commit_on(path, "new-data", "New data version", edit("data/raw/support.jsonl.dvc", "md5: ", "md5: 00")),
    }

    def hostile(repo_dir: Path) -> None:
        # A training input whose name tries to add outputs and to break out of the summary.
        (repo_dir / "src" / "evil\ntrain=false\nrunner=self-hosted`|<b>x.py").write_text("# nothing\n")

    shas["hostile"] = commit_on(path, "hostile", "Hostile file name", hostile)
    return path, shas


def decide(repo_dir: Path, tmp_path: Path, event: str, payload: dict, **env: str) -> tuple[Runner, subprocess.CompletedProcess]:
    runner = Runner(tmp_path / "decide", event, payload, GITHUB_SHA=payload.get("after") or "", **env)
    return runner, runner.run("decide.py", "--repo", str(repo_dir), cwd=repo_dir)


def test_decide_trains_a_pull_request_that_changes_a_parameter(repo, tmp_path):
    path, shas = repo
    runner, result = decide(path, tmp_path, "pull_request", pr_payload(7, shas["main"], shas["params"]),
                            GITHUB_BASE_REF="main", GITHUB_HEAD_REF="lower-lr")
    assert result.returncode == 0, explain(result)
    out = runner.outputs()
    assert out["train"] == "true" and out["fork"] == "false" and out["pr"] == "7"
    assert out["runner"] == "skypilot"  # GPU_RUNNER unset: the default
    assert out["base"] == shas["main"] and out["head"] == shas["params"]
    assert "parameters" in out["reason"]
    summary = runner.summary()
    assert "Training decision: **train**" in summary
    assert "| `params.yaml` | parameters |" in summary
    old_rate, new_rate = lowered_learning_rate((path / "params.yaml").read_text(encoding="utf-8"))
    assert f"| `train.learning_rate` | `{old_rate!r}` | `{new_rate!r}` |" in summary  # from dvc params diff


def test_decide_skips_a_readme_only_change(repo, tmp_path):
    path, shas = repo
    runner, result = decide(path, tmp_path, "pull_request", pr_payload(8, shas["main"], shas["readme"]))
    assert result.returncode == 0, explain(result)
    out = runner.outputs()
    assert out["train"] == "false" and out["reason"] == "no training input changed"
    assert "Training decision: **no training**" in runner.summary()
    assert "1 file(s) changed in all, 1 of them not training inputs" in runner.summary()


def test_decide_skips_a_params_change_of_comments_only(repo, tmp_path):
    path, shas = repo
    runner, result = decide(path, tmp_path, "pull_request", pr_payload(9, shas["main"], shas["comments"]))
    assert result.returncode == 0, explain(result)
    out = runner.outputs()
    assert out["train"] == "false"
    assert out["reason"] == "no training input changed (params.yaml changed only in comments or formatting)"


def test_decide_trains_a_new_data_version(repo, tmp_path):
    path, shas = repo
    runner, result = decide(path, tmp_path, "pull_request", pr_payload(10, shas["main"], shas["data"]))
    assert result.returncode == 0, explain(result)
    assert runner.outputs()["train"] == "true"
    assert "data version" in runner.outputs()["reason"]
    assert "| `data/raw/support.jsonl.dvc` | data version |" in runner.summary()


def test_decide_never_trains_a_pull_request_from_a_fork(repo, tmp_path):
    path, shas = repo
    payload = pr_payload(11, shas["main"], shas["params"], head_repo="mallory/support-bot")
    runner, result = decide(path, tmp_path, "pull_request", payload)
    assert result.returncode == 0, explain(result)
    out = runner.outputs()
    assert out["train"] == "false" and out["fork"] == "true"
    assert out["reason"].startswith("pull request from a fork") and "would train" in out["reason"]
    assert "never run on the GPU runners" in runner.summary()


def test_decide_trains_a_baseline_on_push_to_main(repo, tmp_path):
    path, shas = repo
    runner, result = decide(path, tmp_path, "push", push_payload(shas["main"], shas["params"]), GITHUB_REF_NAME="main")
    assert result.returncode == 0, explain(result)
    out = runner.outputs()
    assert out["train"] == "true" and out["pr"] == "" and out["reason"].endswith("training a new baseline")
    # A push with nothing to compare with (a new branch, a force push) trains too.
    runner, result = decide(path, tmp_path / "new", "push", push_payload("0" * 40, shas["readme"]))
    assert result.returncode == 0, explain(result)
    assert runner.outputs()["train"] == "true" and "no previous commit" in runner.outputs()["reason"]
    # And one that changes no training input does not.
    runner, result = decide(path, tmp_path / "docs", "push", push_payload(shas["main"], shas["readme"]))
    assert runner.outputs()["train"] == "false"


def test_decide_trains_on_a_manual_run_with_the_chosen_runner(repo, tmp_path):
    path, shas = repo
    runner, result = decide(path, tmp_path, "workflow_dispatch", {"inputs": dict(runner="self-hosted")},
                            GPU_RUNNER="self-hosted")
    assert result.returncode == 0, explain(result)
    assert runner.outputs()["train"] == "true" and runner.outputs()["runner"] == "self-hosted"


def test_decide_refuses_an_unknown_runner(repo, tmp_path):
    path, shas = repo
    runner, result = decide(path, tmp_path, "pull_request", pr_payload(12, shas["main"], shas["params"]),
                            GPU_RUNNER="laptop; rm -rf /")
    assert result.returncode == 2
    assert "GPU_RUNNER must be one of skypilot, self-hosted" in result.stderr
    assert runner.output_pairs() == []


def test_decide_outputs_and_summary_survive_a_hostile_file_name(repo, tmp_path):
    path, shas = repo
    runner, result = decide(path, tmp_path, "pull_request", pr_payload(13, shas["main"], shas["hostile"]))
    assert result.returncode == 0, explain(result)
    keys = [key for key, _ in runner.output_pairs()]
    assert sorted(keys) == sorted(["train", "reason", "runner", "pr", "fork", "base", "head"])  # nothing injected
    assert runner.outputs()["train"] == "true" and runner.outputs()["runner"] == "skypilot"
    listed = [line for line in runner.summary().splitlines() if "evil" in line]
    # One line, one cell: no newline, the backtick cannot close the code span, the pipe is escaped.
    assert listed == ["| `src/evil train=false runner=self-hosted'\\|<b>x.py` | training code |"]
    assert "evil" not in result.stdout  # and it never reached stdout, where the runner reads commands


# ============================================================================ plan_step.py


def test_plan_step_posts_the_estimate(tmp_path):
    runner = Runner(tmp_path, "pull_request", pr_payload(20, "a" * 40, "b" * 40))
    result = runner.run("plan_step.py")
    assert result.returncode == 0, explain(result)
    out = runner.outputs()
    assert out["within"] == "true" and out["gpu"] and float(out["usd"]) > 0 and float(out["hours"]) > 0
    assert float(out["usd"]) <= float(out["budget"])
    assert out["estimate"].startswith("$") and out["gpu"] in out["estimate"]
    summary = runner.summary()
    assert "### Estimate:" in summary and "(within budget)" in summary
    assert "| # | GPU | cloud | spot | $/hour | hours | $/run | micro-batch |" in summary
    assert summary.count("\n| 1 | ") == 1


def test_plan_step_summary_carries_the_plans_warnings(tmp_path, tiny_model_dir, sample_data):
    # 5,000 steps over the small sample: the plan warns about the epochs; the pull request must see it.
    sets = [f"model.base={tiny_model_dir}", f"data.path={sample_data}", f"data.prepared_dir={tmp_path / 'prepared'}",
            "train.max_steps=5000", "budget.max_run_usd=100000"]
    arguments = [arg for assignment in sets for arg in ("--set", assignment)]
    prepared = subprocess.run([sys.executable, "-m", "{{ cookiecutter.package_name }}", "prepare", *arguments],
                              cwd=PROJECT, capture_output=True, text=True, timeout=600)
    assert prepared.returncode == 0, prepared.stderr[-2000:]
    runner = Runner(tmp_path / "plan", "pull_request", pr_payload(23, "a" * 40, "b" * 40))
    result = runner.run("plan_step.py", *arguments)
    assert result.returncode == 0, explain(result)
    assert "**Warning:** " in runner.summary() and " epochs: 5000 steps x " in runner.summary()


def test_plan_step_fails_an_over_budget_run(tmp_path):
    runner = Runner(tmp_path, "pull_request", pr_payload(21, "a" * 40, "b" * 40))
    result = runner.run("plan_step.py", "--set", "budget.max_run_usd=0.001")
    assert result.returncode == 3, explain(result)
    assert "::error title=Over budget::" in result.stdout
    assert runner.outputs()["within"] == "false"
    assert "(over budget)" in runner.summary() and "Nothing was launched" in runner.summary()


def test_plan_step_names_a_bad_parameter(tmp_path):
    runner = Runner(tmp_path, "pull_request", pr_payload(22, "a" * 40, "b" * 40))
    result = runner.run("plan_step.py", "--set", "train.no_such_knob=1")
    assert result.returncode == 2, explain(result)
    assert "no_such_knob" in result.stderr and "the plan failed" in runner.summary()
    assert runner.output_pairs() == []
{%- if cookiecutter.gpu_runner != 'self-hosted' %}


# ============================================================================ launch_step.py


def tiny_sets(tmp_path: Path, tiny_model_dir: Path, sample_data: Path, experiment: str, steps: int = 4) -> list[str]:
    """`--set` arguments for a run of a few seconds: the tiny model, paths in tmp_path."""
    from {{ cookiecutter.package_name }}.cli import smoke_overrides
    from {{ cookiecutter.package_name }}.config import load_params

    sets = [*smoke_overrides(load_params(PROJECT / "params.yaml")), f"model.base={tiny_model_dir}", f"data.path={sample_data}",
            f"data.prepared_dir={tmp_path / 'prepared'}", f"train.max_steps={steps}", "eval.generations=0",
            f"tracking.experiment={experiment}"]
    return [arg for assignment in sets for arg in ("--set", assignment)]


def test_launch_step_local_trains_the_tiny_model_and_tags_the_run(tmp_path, tiny_model_dir, sample_data, mlflow_server):
    from mlflow import MlflowClient

    experiment, sha = f"pr-loop-{uuid.uuid4().hex[:8]}", "c0ffee" + "1" * 34
    runner = Runner(tmp_path, "pull_request", pr_payload(31, "a" * 40, sha), PR_NUMBER="31", GITHUB_SHA=sha,
                    GITHUB_HEAD_REF="feature/lower-lr", MLFLOW_TRACKING_URI=mlflow_server.uri, CUDA_VISIBLE_DEVICES="")
    result = runner.run("launch_step.py", "--backend", "local", "--checkpoint-root", str(tmp_path / "bucket"),
                        *tiny_sets(tmp_path, tiny_model_dir, sample_data, experiment))
    assert result.returncode == 0, explain(result)

    task = yaml.safe_load((PROJECT / "sky/train.yaml").read_text())["name"]
    out = runner.outputs()
    assert out["job_name"] == f"{task}-pr31-c0ffee1" and out["backend"] == "local" and out["exit_code"] == "0"
    assert f"### Training job `{task}-pr31-c0ffee1`" in runner.summary() and "Exit code 0: finished" in runner.summary()
    assert (tmp_path / "bucket" / out["job_name"] / "outputs/metrics.json").is_file()

    client = MlflowClient(mlflow_server.uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1
    tags, metrics = runs[0].data.tags, runs[0].data.metrics
    assert tags["pr"] == "31" and tags["git_branch"] == "feature/lower-lr" and tags["git_commit"] == sha
    assert metrics["eval_loss"] > 0 and "cost_usd" in metrics

    # The cancel step after a local run has no cloud job to stop.
    cancel = runner.run("launch_step.py", "--cancel")
    assert cancel.returncode == 0 and "stopped with the job" in cancel.stdout


@pytest.fixture
def fake_sky(tmp_path) -> tuple[Path, Path]:
    """A stand-in `sky` beside SKY_PYTHON: records its arguments and environment, exits 0."""
    bin_dir, record = tmp_path / "sky-venv/bin", tmp_path / "sky-calls.jsonl"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").symlink_to(sys.executable)
    script = bin_dir / "sky"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        f"with open({str(record)!r}, 'a') as out:\n"
        "    env = {k: os.environ.get(k) for k in ('HF_TOKEN', 'SKYPILOT_API_SERVER_ENDPOINT')}\n"
        "    out.write(json.dumps({'argv': sys.argv[1:], 'env': env}) + '\\n')\n"
    )
    script.chmod(0o755)
    return bin_dir / "python", record


def calls(record: Path) -> list[dict]:
    return [json.loads(line) for line in record.read_text().splitlines()] if record.is_file() else []


def test_launch_step_sky_launches_by_name_and_cancel_finds_the_job(tmp_path, fake_sky):
    sky_python, record = fake_sky
    branch = "feat/$(touch PWNED);`id`"
    sha = "abcdef0" + "2" * 33
    runner = Runner(tmp_path, "pull_request", pr_payload(42, "a" * 40, sha), PR_NUMBER="42", GITHUB_SHA=sha,
                    GITHUB_HEAD_REF=branch, GITHUB_RUN_ATTEMPT="2", SKY_PYTHON=str(sky_python),
                    HF_TOKEN="hf-secret-value", SKYPILOT_API_SERVER_ENDPOINT="", MLFLOW_TRACKING_URI="https://mlflow.example")
    result = runner.run("launch_step.py", "--backend", "sky")
    assert result.returncode == 0, explain(result)
    task = yaml.safe_load((PROJECT / "sky/train.yaml").read_text())["name"]
    name = f"{task}-pr42-abcdef0-a2"  # a re-run (attempt 2) gets a job of its own
    assert runner.outputs()["job_name"] == name

    (launched,) = calls(record)
    argv = launched["argv"]
    assert argv[:5] == ["jobs", "launch", "-y", "-n", name] and argv[-1] == "sky/train.yaml"
    envs = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--env"]
    assert {"PR_NUMBER=42", f"GITHUB_SHA={sha}", f"GITHUB_HEAD_REF={branch}",
            "MLFLOW_TRACKING_URI=https://mlflow.example"} <= set(envs)  # the branch as one literal argument
    assert "--secret" in argv and argv[argv.index("--secret") + 1] == "HF_TOKEN"
    assert "hf-secret-value" not in " ".join(argv)  # by name, never by value
    assert launched["env"] == {"HF_TOKEN": "hf-secret-value", "SKYPILOT_API_SERVER_ENDPOINT": None}  # '' dropped
    assert not list(PROJECT.rglob("PWNED")) and not list(tmp_path.rglob("PWNED"))

    cancel = runner.run("launch_step.py", "--cancel")
    assert cancel.returncode == 0, explain(cancel)
    assert calls(record)[-1]["argv"] == ["jobs", "cancel", "-y", "-n", name]
    assert f"### Training job `{name}` cancelled" in runner.summary()


def test_launch_step_sky_refuses_an_over_budget_run_before_sky(tmp_path, fake_sky):
    sky_python, record = fake_sky
    runner = Runner(tmp_path, "push", push_payload("a" * 40, "b" * 40), GITHUB_SHA="b" * 40, GITHUB_REF_NAME="main",
                    SKY_PYTHON=str(sky_python))
    result = runner.run("launch_step.py", "--backend", "sky", "--set", "budget.max_run_usd=0.001")
    assert result.returncode == 3, explain(result)
    assert "budget" in result.stderr and calls(record) == []
    assert "Exit code 3: budget exceeded" in runner.summary()


def test_cancel_without_a_launch_does_nothing(tmp_path):
    runner = Runner(tmp_path, "pull_request", pr_payload(43, "a" * 40, "b" * 40))
    result = runner.run("launch_step.py", "--cancel")
    assert result.returncode == 0 and "nothing to cancel" in result.stdout
{%- endif %}


# ============================================================================ comment.py: the body


@pytest.fixture(scope="module")
def compared_runs(mlflow_server, tmp_path_factory) -> str:
    """main's baseline and one run of PR 12, logged through MlflowClient; the experiment's name."""
    from mlflow import MlflowClient

    client, experiment = MlflowClient(mlflow_server.uri), f"pr-comment-{uuid.uuid4().hex[:8]}"
    experiment_id = client.create_experiment(experiment)
    runs = [
        ("main@aaaaaaa", {"git_branch": "main", "git_commit": "a" * 40, "gpu": "NVIDIA L4", "cloud": "aws", "spot": "true",
                          "recoveries": "0"},
         {"eval_loss": 2.0, "perplexity": 7.389, "tokens_per_second": 1000.0, "cost_usd": 1.0, "gpu_hours": 0.5}),
        ("pr-12@bbbbbbb", {"git_branch": "lower-lr", "pr": "12", "git_commit": "b" * 40, "gpu": "NVIDIA L4", "cloud": "gcp",
                           "spot": "true", "recoveries": "1"},
         {"eval_loss": 1.5, "perplexity": 4.482, "tokens_per_second": 1200.0, "cost_usd": 1.5, "gpu_hours": 0.75}),
    ]
    # Per-example scores as `evaluate` saves them: the PR's answers are exact where main's are not.
    exact = {"main@aaaaaaa": [0.0] * 12 + [1.0] * 4, "pr-12@bbbbbbb": [1.0] * 16}
    for name, tags, metrics in runs:
        run = client.create_run(experiment_id, run_name=name, tags=tags)
        for step in range(3):
            client.log_metric(run.info.run_id, "loss", metrics["eval_loss"] + 1 - step * 0.3, step=step)
        for key, value in metrics.items():
            client.log_metric(run.info.run_id, key, value)
        answers = [{"id": f"p{i}", "prompt": f"question {i}", "reference": f"answer {i}",
                    "answer": f"answer {i}" if e else "no idea", "scores": {"exact_match": e}} for i, e in enumerate(exact[name])]
        table = tmp_path_factory.mktemp("examples") / "eval_examples.json"
        table.write_text(json.dumps({"answers": answers, "losses": []}))
        client.log_artifact(run.info.run_id, str(table))
        client.log_metric(run.info.run_id, "eval_examples", len(answers))
        client.set_terminated(run.info.run_id, "FINISHED")
    return experiment


def comment_runner(tmp_path: Path, mlflow_server, **env: str) -> Runner:
    return Runner(tmp_path, "pull_request", pr_payload(12, "a" * 40, "b" * 40), PR_NUMBER="12", HEAD_SHA="b" * 40,
                  MLFLOW_TRACKING_URI=mlflow_server.uri, **env)


def test_comment_body_compares_the_pr_with_main_from_a_real_mlflow_server(tmp_path, mlflow_server, compared_runs):
    runner = comment_runner(tmp_path, mlflow_server)
    result = runner.run("comment.py", "--dry-run", "--train-result", "success", "--estimate", "$1.20 per run on L4",
                        "--plots", str(tmp_path / "plots"), "--set", f"tracking.experiment={compared_runs}")
    assert result.returncode == 0, explain(result)
    body = result.stdout
    assert body.startswith(MARKER + "\n## Training report for #12\n")
    assert "**Trained ✅**" in body and "Estimate before launch: $1.20 per run on L4" in body
    baseline = next(line for line in body.splitlines() if line.startswith("| baseline `main@aaaaaaa`"))
    assert "2.0000" in baseline and "$1.00" in baseline
    row = next(line for line in body.splitlines() if line.startswith("| `pr-12@bbbbbbb`"))
    assert "1.5000 (-0.5 (-25.0%))" in row  # eval loss: its verdict comes from the quality block
    assert "$1.50 (⚠️ +0.5 (+50.0%))" in row  # cost: higher is worse
    assert "1,200 (✅ +200 (+20.0%))" in row  # tokens/s: higher is better
    assert "| gcp |" in row and "| 1 |" in row  # cloud, recoveries
    # The quality block first: paired on the same held-out prompts, with an interval and a verdict.
    quality = body.index("### Quality: `pr-12@bbbbbbb (")
    assert quality < body.index("### Speed and cost") < body.index("<details><summary>Answers side by side")
    exact = next(line for line in body.splitlines() if line.startswith("| exact_match |"))
    assert exact.startswith("| exact_match | 100.0% | 25.0% | +75.0 pts [") and exact.endswith("| ✅ better |")
    assert "| question 0 | answer 0 | no idea | answer 0 |" in body
    assert "[Workflow run](https://github.com/acme/support-bot/actions/runs/4242)." in body
    assert "`training-report` artifact" in body and "commit bbbbbbb" in body
    assert "http" not in body.replace("https://github.com/acme/support-bot/actions/runs/4242", "")  # no image hosts
    for plot in ("loss_curves.png", "cost_vs_eval_loss.png"):
        assert (tmp_path / "plots" / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert runner.summary().strip() == body.strip()


def test_comment_body_says_when_nothing_was_trained(tmp_path, mlflow_server, compared_runs):
    runner = comment_runner(tmp_path, mlflow_server)
    result = runner.run("comment.py", "--dry-run", "--plan-result", "failure", "--train-result", "skipped",
                        "--set", f"tracking.experiment={compared_runs}")
    assert result.returncode == 0, explain(result)
    assert "**Not trained:** the plan failed or the estimate is over budget" in result.stdout


def test_comment_body_reports_an_unreachable_mlflow(tmp_path, mlflow_server):
    runner = comment_runner(tmp_path, mlflow_server)
    runner.env.update(MLFLOW_TRACKING_URI=f"http://127.0.0.1:{free_port()}", MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
                      MLFLOW_HTTP_REQUEST_TIMEOUT="5")
    result = runner.run("comment.py", "--dry-run")
    assert result.returncode == 1
    assert result.stdout.startswith(MARKER) and "**The comparison could not be built:**" in result.stdout


# ============================================================================ comment.py: sticky, via a fake API


class FakeGitHub:
    """The three comment endpoints of GitHub's REST API, in memory, on 127.0.0.1."""

    TOKEN = "test-token"

    def __init__(self, comments: list[dict]):
        self.comments, self.requests, self.next_id = comments, [], 1000
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def reply(self, status: int, data) -> None:
                body = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def handle_any(self, method: str) -> None:
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                payload = json.loads(self.rfile.read(length)) if length else None
                fake.requests.append((method, self.path, payload))
                if self.headers.get("Authorization") != f"Bearer {fake.TOKEN}":
                    return self.reply(401, {"message": "Bad credentials"})
                if method == "GET" and url.path == f"/repos/{REPO}/issues/12/comments":
                    query = parse_qs(url.query)
                    per_page, page = int(query["per_page"][0]), int(query["page"][0])
                    return self.reply(200, fake.comments[(page - 1) * per_page : page * per_page])
                if method == "POST" and url.path == f"/repos/{REPO}/issues/12/comments":
                    fake.next_id += 1
                    comment = {"id": fake.next_id, "body": payload["body"], "user": dict(login="github-actions[bot]")}
                    fake.comments.append(comment)
                    return self.reply(201, comment)
                match = re.fullmatch(rf"/repos/{REPO}/issues/comments/(\d+)", url.path)
                if method == "PATCH" and match:
                    comment = next((c for c in fake.comments if c["id"] == int(match.group(1))), None)
                    if comment is None:
                        return self.reply(404, {"message": "Not Found"})
                    comment["body"] = payload["body"]
                    return self.reply(200, comment)
                return self.reply(404, {"message": "Not Found"})

            def do_GET(self):
                self.handle_any("GET")

            def do_POST(self):
                self.handle_any("POST")

            def do_PATCH(self):
                self.handle_any("PATCH")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeGitHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def methods(self) -> list[str]:
        return [method for method, _, _ in self.requests]


def post_comment(tmp_path: Path, mlflow_server, api: FakeGitHub, experiment: str, token: str = FakeGitHub.TOKEN):
    runner = comment_runner(tmp_path, mlflow_server, GITHUB_API_URL=api.url, GITHUB_TOKEN=token)
    return runner.run("comment.py", "--post", "--train-result", "success", "--set", f"tracking.experiment={experiment}")


def human(comment_id: int, body: str, login: str = "alice") -> dict:
    return {"id": comment_id, "body": body, "user": dict(login=login)}


def test_sticky_comment_is_created_then_updated_in_place(tmp_path, mlflow_server, compared_runs):
    with FakeGitHub([human(1, "Looks good")]) as api:
        first = post_comment(tmp_path / "1", mlflow_server, api, compared_runs)
        assert first.returncode == 0, explain(first)
        assert api.methods() == ["GET", "POST"] and "created comment 1001 on #12" in first.stdout
        second = post_comment(tmp_path / "2", mlflow_server, api, compared_runs)
        assert second.returncode == 0, explain(second)
        assert api.methods() == ["GET", "POST", "GET", "PATCH"] and "updated comment 1001" in second.stdout
        assert api.requests[-1][1] == f"/repos/{REPO}/issues/comments/1001"
    ours = [c for c in api.comments if MARKER in c["body"]]
    assert len(ours) == 1 and "| `pr-12@bbbbbbb`" in ours[0]["body"]
    assert api.comments[0] == human(1, "Looks good")


def test_sticky_comment_found_on_a_later_page(tmp_path, mlflow_server, compared_runs):
    comments = [human(i, f"comment {i}") for i in range(1, 101)]
    comments.append(human(500, f"{MARKER}\nold report", login="github-actions[bot]"))
    with FakeGitHub(comments) as api:
        result = post_comment(tmp_path, mlflow_server, api, compared_runs)
        assert result.returncode == 0, explain(result)
    assert api.methods() == ["GET", "GET", "PATCH"]
    assert "page=2" in api.requests[1][1] and api.requests[2][1].endswith("/issues/comments/500")
    assert api.comments[-1]["body"].startswith(MARKER + "\n## Training report for #12")


def test_a_comment_by_someone_else_quoting_the_marker_is_never_edited(tmp_path, mlflow_server, compared_runs):
    quoted = human(7, f"why does the bot write {MARKER}?", login="mallory")
    with FakeGitHub([quoted]) as api:
        result = post_comment(tmp_path, mlflow_server, api, compared_runs)
        assert result.returncode == 0, explain(result)
    assert api.methods() == ["GET", "POST"]
    assert api.comments[0] == human(7, f"why does the bot write {MARKER}?", login="mallory")


def test_a_refused_token_fails_the_step(tmp_path, mlflow_server, compared_runs):
    with FakeGitHub([]) as api:
        result = post_comment(tmp_path, mlflow_server, api, compared_runs, token="wrong")
    assert result.returncode == 3 and "HTTP 401" in result.stderr
    assert api.methods() == ["GET"] and api.comments == []


# ============================================================================ the workflow file


def workflow() -> dict:
    data = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as True
    return data


def steps(job: dict) -> list[dict]:
    return job.get("steps") or []


GPU_JOBS = {"skypilot": ["train-sky"], "self-hosted": ["train-self-hosted"], "both": ["train-sky", "train-self-hosted"]}


def test_workflow_triggers_and_concurrency():
    data = workflow()
    assert set(data["on"]) == {"pull_request", "push", "workflow_dispatch"}
    assert data["on"]["push"]["branches"] == ["main"]
    code = [line.split("#")[0] for line in WORKFLOW.read_text(encoding="utf-8").splitlines()]
    assert not any("pull_request_target" in line or "workflow_run" in line for line in code)
    assert data["concurrency"]["group"] == "train-" + expression("github.event.pull_request.number || github.ref")
    assert data["concurrency"]["cancel-in-progress"] == expression("github.event_name == 'pull_request'")
    assert set(data["jobs"]) == {"decide", "plan", "report", *GPU_JOBS[RUNNER]}


def test_workflow_least_privilege_permissions():
    data = workflow()
    assert data["permissions"] == {}
    for job_id, job in data["jobs"].items():
        assert isinstance(job.get("permissions"), dict), f"{job_id} has no permissions of its own"
        writes = {scope for scope, level in job["permissions"].items() if level == "write"}
        expected = {"pull-requests"} if job_id == "report" else {"id-token"} if job_id == "train-sky" else set()
        assert writes == expected, job_id
        assert job["permissions"].get("contents") == "read", job_id


def test_gpu_jobs_are_gated_and_never_run_for_forks():
    data = workflow()
    fork_guard = "github.event.pull_request.head.repo.full_name == github.repository"
    assert "if" not in data["jobs"]["decide"]  # always runs: a required check never hangs
    for job_id in GPU_JOBS[RUNNER]:
        job = data["jobs"][job_id]
        assert job["environment"] == "gpu-training"
        # GitHub-hosted jobs are killed at 6 h: the cap must come first, so the cancel step runs.
        assert isinstance(job["timeout-minutes"], int) and 0 < job["timeout-minutes"] <= (345 if job_id == "train-sky" else 720)
        assert fork_guard in job["if"] and "needs.decide.outputs.train == 'true'" in job["if"]
        assert set(job["needs"]) == {"decide", "plan"}
    assert fork_guard in data["jobs"]["report"]["if"] and "!cancelled()" in data["jobs"]["report"]["if"]
    if USES_SKY:
        cancel = steps(data["jobs"]["train-sky"])[-1]
        assert "cancelled()" in cancel["if"] and cancel["run"] == "python scripts/ci/launch_step.py --cancel"
    if RUNNER != "skypilot":
        assert data["jobs"]["train-self-hosted"]["runs-on"] == ["self-hosted", "gpu"]


def test_workflow_actions_are_pinned_and_checkouts_keep_no_credentials():
    text = WORKFLOW.read_text(encoding="utf-8")
    pinned = re.findall(r"uses: ([\w.-]+/[\w.-]+)@([0-9a-f]{40})  # v\d+\.\d+\.\d+", text)
    assert len(pinned) == text.count("uses:") >= 9
    for job in workflow()["jobs"].values():
        for step in steps(job):
            if step.get("uses", "").startswith("actions/checkout@"):
                assert step["with"]["persist-credentials"] is False


def test_workflow_never_puts_an_expression_in_a_shell_command():
    untrusted = ("github.event.pull_request.title", "github.event.pull_request.body", "github.head_ref",
                 "github.event.pull_request.head.ref", "inputs.")
    for job_id, job in workflow()["jobs"].items():
        for step in steps(job):
            if "run" not in step:
                continue
            assert EXPR not in step["run"], f"{job_id}: {step['run']}"
            assert "\n" not in step["run"].strip(), f"{job_id}: one line per step, the rest in a script"
            assert re.fullmatch(r"python scripts/ci/[a-z_]+\.py( .*)?|make [a-z-]+( PYTHON=python)?", step["run"]), step["run"]
            script = re.match(r"python (scripts/ci/[a-z_]+\.py)", step["run"])
            assert script is None or (PROJECT / script.group(1)).is_file(), step["run"]
    # Untrusted text is not used at all, except the run's input, which goes through env only.
    text = WORKFLOW.read_text(encoding="utf-8")
    assert not any(name in text for name in untrusted[:4])
    for line in text.splitlines():
        if "inputs." in line and EXPR in line:
            assert line.strip().startswith("GPU_RUNNER: "), line


def test_report_job_posts_with_mains_code_and_uploads_plots_as_artifacts():
    job = workflow()["jobs"]["report"]
    assert job["permissions"] == {"contents": "read", "pull-requests": "write"}
    checkout, *_ = steps(job)
    assert checkout["with"]["ref"] == expression("github.event.pull_request.base.sha")
    post = next(s for s in steps(job) if "comment.py" in s.get("run", ""))
    assert post["run"].startswith("python scripts/ci/comment.py --post --plots reports")
    assert post["env"]["GITHUB_TOKEN"] == expression("github.token")
    upload = steps(job)[-1]
    assert upload["uses"].startswith("actions/upload-artifact@") and upload["with"]["path"] == "reports/"
