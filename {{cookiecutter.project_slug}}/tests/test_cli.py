"""The CLI as users run it: separate processes, exit codes and one-line errors."""

import json

from conftest import run_cli


def test_unknown_override_exits_2_naming_the_key():
    result = run_cli("train", "--set", "train.max_stepz=1")
    assert result.returncode == 2
    assert "unknown key 'train.max_stepz'" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_data_exits_2_naming_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n{oops\n')
    result = run_cli("prepare", "--set", f"data.path={bad}", "--set", f"data.prepared_dir={tmp_path / 'out'}")
    assert result.returncode == 2
    assert f"{bad}:2: not valid JSON" in result.stderr
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_smoke_runs_every_stage_and_says_where_the_run_is(tmp_path, sample_data):
    # A copy of the project's params with outputs redirected into tmp.
    result = run_cli(
        "smoke",
        "--set", f"data.path={sample_data}",
        "--set", f"data.prepared_dir={tmp_path / 'prepared'}",
        "--set", f"train.output_dir={tmp_path / 'outputs'}",
        "--set", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        "--set", "train.max_steps=10",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((tmp_path / "outputs/metrics.json").read_text())
    assert metrics["eval_loss"] > 0
    assert "mlflow ui --backend-store-uri sqlite:///" in result.stdout
    assert "smoke run finished" in result.stdout


def test_unknown_model_exits_2_naming_model_base(tmp_path, sample_data):
    missing = tmp_path / "no-such-model"
    result = run_cli(
        "prepare",
        "--set", f"model.base={missing}",
        "--set", f"data.path={sample_data}",
        "--set", f"data.prepared_dir={tmp_path / 'out'}",
        HF_HUB_OFFLINE="1",
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"model.base='{missing}'" in result.stderr
    assert "Traceback" not in result.stderr
