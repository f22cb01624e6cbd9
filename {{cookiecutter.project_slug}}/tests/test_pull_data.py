"""scripts/pull_data.py, as the SkyPilot tasks' setup runs it: the real dvc CLI, a local remote.

A VM gets the workdir upload; a dataset left out of it must come from the DVC remote, and it
must be the one data.path names (after the task's TRAIN_OVERRIDES), not a fixed file.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PARAMS

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "pull_data.py"


def run(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "DVC_NO_ANALYTICS": "1", **env})


def dvc(*args: str, cwd: Path) -> None:
    done = run(sys.executable, "-m", "dvc", *args, cwd=cwd)
    assert done.returncode == 0, done.stderr


@pytest.fixture
def vm_workdir(tmp_path) -> tuple[Path, Path]:
    """A project whose own dataset folder was pushed to a DVC remote, then left out of the upload."""
    project = tmp_path / "project"
    (project / "data/ours").mkdir(parents=True)
    shutil.copy(PARAMS, project / "params.yaml")
    records = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
    (project / "data/ours/a.jsonl").write_text(records)
    (project / "data/ours/b.jsonl").write_text(records * 2)
    assert run("git", "init", "-q", cwd=project).returncode == 0
    dvc("init", "-q", cwd=project)
    dvc("remote", "add", "-d", "store", str(tmp_path / "remote"), cwd=project)
    dvc("add", "-q", "data/ours", cwd=project)
    dvc("push", "-q", cwd=project)
    shutil.rmtree(project / "data/ours")
    shutil.rmtree(project / ".dvc/cache")  # a fresh VM has no cache either
    shutil.rmtree(project / ".git")  # nor a .git (the upload leaves it out)
    return project, tmp_path / "remote"


def test_pulls_the_folder_data_path_names_from_the_overrides(vm_workdir):
    project, _ = vm_workdir
    done = run(sys.executable, str(SCRIPT), cwd=project, TRAIN_OVERRIDES="--set data.path=data/ours --set lora.r=8")
    assert done.returncode == 0, done.stderr
    assert "dvc pull data/ours" in done.stdout
    assert sorted(p.name for p in (project / "data/ours").iterdir()) == ["a.jsonl", "b.jsonl"]
    assert len((project / "data/ours/b.jsonl").read_text().splitlines()) == 2
    again = run(sys.executable, str(SCRIPT), "--set", "data.path=data/ours", cwd=project)
    assert again.returncode == 0 and "here already" in again.stdout


def test_a_folder_in_git_with_dvc_tracked_files_is_pulled(tmp_path):
    # data.path: data/raw, where git has data/raw/support.jsonl.dvc and DVC has the file: a fresh
    # checkout (a CI runner's, uploaded as the workdir) has the folder without the data.
    project = tmp_path / "project"
    (project / "data/raw").mkdir(parents=True)
    shutil.copy(PARAMS, project / "params.yaml")
    (project / "data/raw/support.jsonl").write_text('{"messages": []}\n')
    assert run("git", "init", "-q", cwd=project).returncode == 0
    dvc("init", "-q", cwd=project)
    dvc("remote", "add", "-d", "store", str(tmp_path / "remote"), cwd=project)
    dvc("add", "-q", "data/raw/support.jsonl", cwd=project)
    dvc("push", "-q", cwd=project)
    (project / "data/raw/support.jsonl").unlink()
    done = run(sys.executable, str(SCRIPT), "--set", "data.path=data/raw", cwd=project)
    assert done.returncode == 0, done.stderr
    assert "dvc pull data/raw/support.jsonl.dvc" in done.stdout
    assert (project / "data/raw/support.jsonl").read_text() == '{"messages": []}\n'


def test_a_path_dvc_does_not_know_is_a_clear_error(vm_workdir):
    project, _ = vm_workdir
    done = run(sys.executable, str(SCRIPT), "--set", "data.path=data/typo.jsonl", cwd=project)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "data.path=data/typo.jsonl is not on this machine" in done.stderr and "dvc add data/typo.jsonl" in done.stderr


def test_a_hub_dataset_is_left_to_prepare(vm_workdir):
    project, _ = vm_workdir
    done = run(sys.executable, str(SCRIPT), "--set", "data.path=hf:owner/name@train", cwd=project)
    assert done.returncode == 0 and "a hub dataset" in done.stdout
