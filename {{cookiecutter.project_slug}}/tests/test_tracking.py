import subprocess

from {{ cookiecutter.package_name }}.compute.cost import CostMeter
from {{ cookiecutter.package_name }}.config import load_params
from {{ cookiecutter.package_name }}.tracking import run_tags, tracking_uri

from conftest import PARAMS


def test_tags_carry_git_commit_and_dvc_data_hash(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data/set.jsonl.dvc").write_text("outs:\n- md5: 0123456789abcdef0123456789abcdef\n  path: set.jsonl\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(["git", "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()

    tags = run_tags(load_params(PARAMS, ["data.path=data/set.jsonl"]))
    assert tags["git_commit"] == head
    assert tags["git_branch"] == "main"
    assert tags["dvc_data_hash"] == "0123456789abcdef0123456789abcdef"


def test_environment_tracking_uri_wins(monkeypatch):
    params = load_params(PARAMS, ["tracking.uri=sqlite:///from-params.db"])
    assert tracking_uri(params) == "sqlite:///from-params.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking_uri(params) == "http://127.0.0.1:5999"


def test_cost_meter_prices_wall_time():
    now = [100.0]
    meter = CostMeter(hourly_usd=3.0, gpus=2, clock=lambda: now[0])
    now[0] += 1800  # half an hour later
    assert meter.cost_usd == 1.5
    assert meter.gpu_hours == 1.0
    assert CostMeter(hourly_usd=None, gpus=0, clock=lambda: now[0]).cost_usd == 0


def test_tags_on_a_cloud_vm_come_from_the_environment(tmp_path, monkeypatch):
    from {{ cookiecutter.package_name }}.tracking import run_name

    monkeypatch.chdir(tmp_path)  # no .git here, as on a SkyPilot VM
    environ = {
        "GIT_COMMIT": "abcdef1234567", "GIT_BRANCH": "feature/x", "PR_NUMBER": "12", "USE_SPOT": "true",
        "SKYPILOT_TASK_ID": "sky-managed-1", "SKYPILOT_CLUSTER_INFO": '{"cloud": "aws", "region": "us-east-1", "zone": "us-east-1a"}',
    }
    tags = run_tags(load_params(PARAMS), environ)
    assert tags["git_commit"] == "abcdef1234567" and tags["git_branch"] == "feature/x" and tags["pr"] == "12"
    assert (tags["cloud"], tags["region"], tags["zone"], tags["spot"]) == ("aws", "us-east-1", "us-east-1a", "true")
    assert tags["skypilot_task_id"] == "sky-managed-1"
    assert run_name(tags, {}) == "pr-12@abcdef1"
    assert run_name(tags, {"RUN_NAME": "nightly"}) == "nightly"
    assert run_tags(load_params(PARAMS), {"GITHUB_REF": "refs/pull/77/merge"})["pr"] == "77"
