"""The pull-request loop run by a workflow engine: the baked project's real .github/workflows
under act (nektos/act), on real webhook payloads, on a project whose params are a user's own.

Real: the workflow files, every step script, pip (offline, from what is installed here), DVC
(a remote in a folder), the trainer on the tiny model, an `mlflow server` on 127.0.0.1.
Stand-ins (tests/actions) only for what cannot exist here: the pinned actions, GitHub's comment
API, SkyPilot's `sky` (the managed job runs on this machine) and the GPU (the CPU trains).

Scenarios, each checked as GitHub would show it (the comments on the PR, which jobs and steps
ran, the exit status):
1. a PR that changes params.yaml: decide, plan, train, one comment with quality, speed and
   cost against main's run; a second push updates that comment; ci.yml passes on it too;
2. a README-only change: the training jobs are skipped, nothing reaches SkyPilot;
3. a PR from a fork: only `decide` runs, and no secret value reaches any step that ran;
4. an over-budget change: the plan job fails saying why, nothing is launched;
5. a push to main: a baseline run, tagged main, which the next PR compares with;
6. the self-hosted runner (gpu_runner=self-hosted, and both with GPU_RUNNER=self-hosted)
   trains on this machine's CPU.

Where act differs from GitHub:
- act does not cancel a run when a newer one starts in the same `concurrency` group (it parses
  the key and runs everything): cancel-in-progress and the cancel step stay checked by reading
  the workflow (test_workflow_lint.py, the project's test_workflows.py);
- act hands secrets to every run, fork or not (GitHub gives a fork's run none): scenario 3
  therefore shows that the workflow itself keeps them from every step a fork reaches;
- `environment:` reviewers, OIDC tokens and `permissions:` are parsed, not enforced;
- a pull_request run checks out the head commit, not GitHub's merge commit.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from actions.events import pull_request, push
from actions.github_api import ApiServer, GitHubApi
from actions.harness import Act, ActEnvironment, ActResult, MlflowServer

from conftest import bake

REPO = "acme/act-check"
PACKAGE = "act_check"
MARKER = "<!-- spot-lora-report -->"
TOKEN = "ghs-act-workflow-token-3c1f"
# Every secret the workflows read, each with a value that cannot occur by chance.
SECRETS = {
    "GITHUB_TOKEN": TOKEN,
    "HF_TOKEN": "hf-act-secret-7f3a9d",
    "JUDGE_API_KEY": "judge-act-secret-51c2",
    "AWS_ACCESS_KEY_ID": "AKIAACTSECRET7F3A9D",
    "AWS_SECRET_ACCESS_KEY": "aws-act-secret-0b8e44",
    "GCP_CREDENTIALS_JSON": "gcp-act-secret-c9d1e2",
    "AZURE_CREDENTIALS": "azure-act-secret-a7b6",
    "LAMBDA_API_KEY": "lambda-act-secret-f00d",
    "RUNPOD_API_KEY": "runpod-act-secret-beef",
    "SKYPILOT_SERVICE_ACCOUNT_TOKEN": "sky-act-secret-4e4e",
}
# The parameters a new user changes first (as in test_baked_project.py), and a run of seconds on
# the tiny model, which lives inside the project so that the "VM" gets it with the workdir.
OWN_PARAMS = {
    "model.base": "models/tiny",
    "model.method": "lora",
    "model.dtype": "float32",
    "data.path": "data/raw",
    "data.max_length": "512",
    "data.num_proc": "1",
    "train.max_steps": "3",
    "train.micro_batch": "4",
    "train.global_batch": "8",
    "train.learning_rate": "1.0e-4",
    "train.warmup_steps": "1",
    "train.log_every_steps": "1",
    "eval.generations": "4",
    "eval.max_new_tokens": "8",
    "tracking.system_metrics": "false",
    "compute.device": "cpu",
}


def git(project: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=project, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"git {' '.join(args)}: {done.stderr}"
    return done.stdout.strip()


def set_param(project: Path, key: str, value: str) -> str:
    """Replace `key`'s value in params.yaml (its comment kept); return the old value."""
    path = project / "params.yaml"
    text = path.read_text()
    section, name = key.split(".")
    start = re.search(rf"^{section}:\s*$", text, re.M)
    assert start, f"params.yaml has no section {section}"
    line = re.compile(rf"^(  {name}: )([^#\n]*?)(\s*(#.*)?)$", re.M).search(text, start.end())
    assert line, f"params.yaml has no {key}"
    path.write_text(text[: line.start(2)] + value + text[line.end(2) :])
    return line.group(2)


def commit(project: Path, message: str) -> str:
    git(project, "commit", "-q", "-am", message)
    return git(project, "rev-parse", "HEAD")


class Project:
    """A baked project as its GitHub repository: commits, branches, and act runs on them."""

    def __init__(self, path: Path, act: Act, environment: ActEnvironment, api: GitHubApi):
        self.path, self.act, self.environment, self.api = path, act, environment, api

    def sha(self, ref: str = "HEAD") -> str:
        return git(self.path, "rev-parse", ref)

    def branch(self, name: str, base: str = "main") -> None:
        git(self.path, "checkout", "-q", "-B", name, base)

    def run_pr(self, number: int, workflow: str = "train.yml", head_repo: str | None = None, **kwargs) -> ActResult:
        payload = pull_request(number, self.sha("main"), self.sha(), REPO, head_repo=head_repo,
                               head_ref=git(self.path, "branch", "--show-current"))
        return self.act.run(self.path, f".github/workflows/{workflow}", "pull_request", payload, **kwargs)

    def run_push(self, before: str, **kwargs) -> ActResult:
        assert git(self.path, "branch", "--show-current") == "main"
        return self.act.run(self.path, ".github/workflows/train.yml", "push", push(before, self.sha(), REPO), **kwargs)


def make_project(root: Path, runner: str, mlflow_uri: str, api_url: str, api: GitHubApi) -> Project:
    """Bake, then do what a user does first: their own params, their data remote, commit."""
    project = bake(root, project_name="Act Check", gpu_runner=runner, github_repository=REPO)
    python = [sys.executable, "-c", f"from {PACKAGE}.tiny import build_tiny_model as b; b('models/tiny', 'data/raw/support.jsonl')"]
    built = subprocess.run(python, cwd=project, env={"PYTHONPATH": str(project / "src"), "PATH": ""}, capture_output=True,
                           text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    for key, value in {**OWN_PARAMS, "tracking.experiment": f"act-check-{runner}"}.items():
        set_param(project, key, value)
    # The remote as an absolute folder: the jobs' checkouts live elsewhere (a NAS path on a real runner).
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "remote", "modify", "storage", "url", str(root / "dvc-remote")], cwd=project, check=True)
    subprocess.run([*dvc, "push", "-q"], cwd=project, check=True, timeout=300)
    git(project, "add", "models/tiny", ".dvc/config", "params.yaml")
    git(project, "commit", "-q", "-m", "Our own params, model and data remote")
    git(project, "config", "uploadpack.allowAnySHA1InWant", "true")  # GitHub serves any commit by its sha
    environment = ActEnvironment(root / "act", PACKAGE)
    secrets = {**SECRETS, "MLFLOW_TRACKING_URI": mlflow_uri}
    return Project(project, Act(environment, REPO, api_url, secrets), environment, api)


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    with MlflowServer(tmp_path_factory.mktemp("mlflow")) as server:
        yield server.uri


@pytest.fixture(scope="module")
def github():
    api = GitHubApi(REPO, TOKEN)
    with ApiServer(api) as server:
        yield api, server.url


@pytest.fixture(scope="module")
def sky(tmp_path_factory, mlflow_uri, github) -> Project:
    api, url = github
    return make_project(tmp_path_factory.mktemp("act-sky"), "skypilot", mlflow_uri, url, api)


def finished_runs(mlflow_uri: str, experiment: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_uri)
    found = client.get_experiment_by_name(experiment)
    return [] if found is None else client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"])


def leaks(project: Project, result: ActResult) -> dict[str, list[str]]:
    """Secret name -> where its value appeared: act's log, or the environment of any Python
    process a step started (each writes its environment to a file: see the setup-python stand-in)."""
    found: dict[str, list[str]] = {}
    dumps = project.environment.env_dumps()
    for name, value in project.act.secrets.items():
        where = ["log"] if value in result.stdout or value in result.stderr else []
        where += [f"env {key} of a step's process" for dump in dumps for key, seen in dump.items() if value in seen]
        if where:
            found[name] = where
    return found


# ============================================================================ 5. push to main


@pytest.fixture(scope="module")
def baseline(sky, mlflow_uri) -> tuple[ActResult, str]:
    """A push to main that changes a training input: main's baseline run."""
    git(sky.path, "checkout", "-q", "main")
    before = sky.sha("HEAD~1")
    result = sky.run_push(before)
    print("\n".join(f"{s:6.1f} s  {job}: {step[:70]}" for job, step, s in result.durations()[:15]))
    return result, sky.sha()


def test_push_to_main_trains_a_baseline_tagged_main(sky, baseline, mlflow_uri):
    result, sha = baseline
    assert result.returncode == 0, result.explain()
    assert result.jobs() == {"decide": "success", "plan": "success", "train-sky": "success"}, result.explain()
    assert "training a new baseline" in result.log("decide")
    (launched,) = sky.environment.sky_calls()
    assert launched["argv"][:3] == ["jobs", "launch", "-y"] and "GITHUB_HEAD_REF=main" in launched["argv"]
    # The task's setup ran on the "VM"; its pip lines found the job's own install of this checkout.
    assert "nothing to do" in result.log("train-sky") and "pip stays as it is" in result.log("train-sky")
    (run,) = finished_runs(mlflow_uri, "act-check-skypilot")
    assert run.info.status == "FINISHED"
    assert run.data.tags["git_branch"] == "main" and run.data.tags["git_commit"] == sha and not run.data.tags.get("pr")
    assert run.data.metrics["eval_loss"] > 0 and "cost_usd" in run.data.metrics
    assert sky.api.requests == []  # a push gets no comment
    # The API-key clouds' step wrote their credential files from the secrets, private to the runner's user.
    keys = sky.environment.home / ".lambda_cloud/lambda_keys"
    assert keys.read_text() == f"api_key = {SECRETS['LAMBDA_API_KEY']}\n" and keys.stat().st_mode & 0o077 == 0


# ============================================================================ 1. a PR that changes params


@pytest.fixture(scope="module")
def first_push(sky, baseline):
    api = sky.api
    for i in range(101):  # a busy PR: the report's comment lands on the list's second page
        api.seed(7, f"review remark {i}" + (f" quoting {MARKER}" if i == 50 else ""), login="reviewer")
    sky.branch("tune/learning-rate")
    old = set_param(sky.path, "train.learning_rate", "x")
    set_param(sky.path, "train.learning_rate", f"{float(old) * 2:.1e}")  # derived from the project's value
    commit(sky.path, "Double the learning rate")
    sky.environment.clear_dumps()
    return sky.run_pr(7)


def test_pr_changing_params_trains_and_comments_against_main(sky, first_push, baseline):
    result = first_push
    assert result.returncode == 0, result.explain()
    assert result.jobs() == {"decide": "success", "plan": "success", "train-sky": "success", "report": "success"}
    steps = result.steps("train-sky")
    assert steps["Launch the training job (streams its log until it ends)"] == "success"
    assert "Cancel the cloud job (run cancelled, superseded, timed out or failed)" not in steps  # if: failure()
    assert "train.learning_rate" in result.log("decide")
    (comment,) = sky.api.by_bot(7)
    body = comment.body
    assert body.startswith(MARKER) and "## Training report for #7" in body and "**Trained ✅**" in body
    assert "Estimate before launch: $" in body
    assert "### Quality: " in body and "### Speed and cost" in body
    baseline_sha = baseline[1]
    assert f"| baseline `main@{baseline_sha[:7]}`" in body
    assert re.search(r"^\| `pr-7@[0-9a-f]{7}", body, re.M), body
    assert f"commit {sky.sha()[:7]}" in body
    # The plots reached the artifact, as upload-artifact would keep them.
    assert (sky.environment.artifacts / "training-report/reports/loss_curves.png").is_file()
    # The check of scenario 3 can see a secret where one is handed on: the launch step's HF_TOKEN.
    assert "env HF_TOKEN of a step's process" in leaks(sky, result).get("HF_TOKEN", [])


def test_second_push_updates_the_same_comment(sky, first_push):
    (first,) = sky.api.by_bot(7)
    first_body = first.body
    old = set_param(sky.path, "lora.r", "x")
    set_param(sky.path, "lora.r", str(int(old) * 2))
    commit(sky.path, "A larger adapter")
    result = sky.run_pr(7)
    assert result.returncode == 0, result.explain()
    assert result.jobs()["report"] == "success"
    (comment,) = sky.api.by_bot(7)
    assert comment.id == first.id and comment.updates == 1 and comment.body != first_body
    assert f"commit {sky.sha()[:7]}" in comment.body
    assert len(sky.api.on(7)) == 102  # the 101 remarks and ours: nothing else posted, nothing deleted
    listed = [url for method, url in sky.api.requests if method == "GET" and "/issues/7/comments" in url]
    assert any("page=2" in url for url in listed)


def test_ci_workflow_passes_on_the_users_params(sky, first_push):
    """ci.yml on the same pull request: install, data, SkyPilot, the project's tests, smoke.

    Its `make test` is narrowed (PYTEST_ADDOPTS) to the tests that read params.yaml's values;
    the whole suite on a user's params runs in test_baked_project.py."""
    selected = "tests/test_config.py tests/test_workflows.py -k 'config or decide' -p no:cacheprovider"
    result = sky.run_pr(7, workflow="ci.yml", env={"PYTEST_ADDOPTS": selected})
    assert result.returncode == 0, result.explain()
    assert result.jobs() == {"test": "success"}
    steps = result.steps("test")
    assert all(outcome == "success" for outcome in steps.values()) and "Smoke pipeline" in steps, steps
    plain = re.sub(r"\x1b\[[0-9;]*m", "", result.log("test"))  # pytest may colour its summary line
    summary = re.findall(r"=+ (.*\b\d+ passed\b.*) in [\d.]+s", plain)
    assert summary and "failed" not in summary[-1] and "error" not in summary[-1], summary


# ============================================================================ 2. README only


def test_readme_only_change_skips_training(sky, baseline):
    launched = len(sky.environment.sky_calls())
    sky.branch("docs/readme")
    (sky.path / "README.md").write_text((sky.path / "README.md").read_text() + "\nA note.\n")
    commit(sky.path, "Docs")
    result = sky.run_pr(8)
    assert result.returncode == 0, result.explain()
    assert result.jobs() == {"decide": "success"}  # plan, train-sky and report skipped
    assert "no training input changed" in result.log("decide")
    assert len(sky.environment.sky_calls()) == launched and sky.api.on(8) == []


# ============================================================================ 3. from a fork


def test_fork_pr_runs_no_gpu_job_and_sees_no_secret(sky, baseline):
    launched = len(sky.environment.sky_calls())
    sky.branch("fork/tune")
    old = set_param(sky.path, "train.learning_rate", "x")
    set_param(sky.path, "train.learning_rate", f"{float(old) / 2:.1e}")
    commit(sky.path, "Halve the learning rate")
    sky.environment.clear_dumps()
    result = sky.run_pr(9, head_repo="mallory/act-check")
    assert result.returncode == 0, result.explain()
    assert result.jobs() == {"decide": "success"}, result.explain()
    assert "pull request from a fork" in result.log("decide")
    assert len(sky.environment.sky_calls()) == launched and sky.api.on(9) == []
    assert sky.environment.env_dumps(), "no step's environment was recorded: the check below would prove nothing"
    assert leaks(sky, result) == {}


# ============================================================================ 4. over budget


def test_over_budget_change_fails_the_plan_and_launches_nothing(sky, baseline):
    launched = len(sky.environment.sky_calls())
    sky.branch("tune/huge")
    set_param(sky.path, "budget.max_run_usd", "1.0e-6")
    commit(sky.path, "A budget nothing fits")
    result = sky.run_pr(10)
    assert result.returncode != 0
    jobs = result.jobs()
    assert jobs["decide"] == "success" and jobs["plan"] == "failure" and "train-sky" not in jobs, result.explain()
    assert "Over budget" in result.log("plan") and "nothing was launched" in result.log("plan")
    assert len(sky.environment.sky_calls()) == launched
    # The report still runs (if: !cancelled()) and says why nothing trained.
    assert jobs["report"] == "success"
    (comment,) = sky.api.by_bot(10)
    assert "**Not trained:** the plan failed or the estimate is over budget" in comment.body


# ============================================================================ 6. the self-hosted runner


@pytest.mark.parametrize("runner", ["self-hosted", "both"])
def test_self_hosted_runner_trains_on_this_cpu(runner, tmp_path_factory, mlflow_uri, github):
    api, url = github
    project = make_project(tmp_path_factory.mktemp(f"act-{runner}"), runner, mlflow_uri, url, api)
    variables = {"GPU_RUNNER": "self-hosted"} if runner == "both" else {}
    project.branch("tune/self-hosted")
    old = set_param(project.path, "train.learning_rate", "x")
    set_param(project.path, "train.learning_rate", f"{float(old) * 3:.1e}")
    commit(project.path, "Triple the learning rate")
    number = 21 if runner == "both" else 20
    result = project.run_pr(number, variables=variables)
    assert result.returncode == 0, result.explain()
    expected = {"decide": "success", "plan": "success", "train-self-hosted": "success", "report": "success"}
    assert result.jobs() == expected, result.explain()  # with both: train-sky skipped
    assert result.steps("train-self-hosted")["Train"] == "success"
    assert project.environment.sky_calls() == []
    (run,) = finished_runs(mlflow_uri, f"act-check-{runner}")
    assert run.data.tags["pr"] == str(number) and run.data.tags["git_branch"] == "tune/self-hosted"
    assert run.data.metrics["eval_loss"] > 0
    (comment,) = api.by_bot(number)
    assert "**Trained ✅**" in comment.body and f"pr-{number}@" in comment.body
