import subprocess

from {{ cookiecutter.package_name }}.config import load_params
from {{ cookiecutter.package_name }}.cost import CostMeter
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
