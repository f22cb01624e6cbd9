"""What a user sees when model.base cannot be loaded: a mistyped directory, a hub that cannot be
reached, offline mode without the model. Through the CLI, as users run it: exit code 2 and one
line, at once, instead of a hub error about repo ids or minutes of retries."""

import shutil
import time

import pytest

from {{ cookiecutter.package_name }}.model.loading import ModelNotFound, looks_like_path, model_source

from conftest import PARAMS, free_port, run_cli

# transformers retries each file five times on a connection error, sleeping 1+2+4+8+8 s: an
# unreachable hub used to cost 26 s (plan) to over two minutes (prepare with a cached model).
ONE_PROBE_S = 20


def outputs(tmp_path) -> list[str]:
    """--set options that keep every output of a command inside tmp_path."""
    return ["--params", str(PARAMS),
            "--set", f"data.prepared_dir={tmp_path / 'prepared'}",
            "--set", f"train.output_dir={tmp_path / 'outputs'}",
            "--set", f"checkpoint.dir={tmp_path / 'checkpoints'}",
            "--set", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"]


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.fixture
def dead_hub(monkeypatch, tmp_path) -> str:
    """No HF_HUB_OFFLINE, an empty cache (HF_HOME) and a hub at a closed port: a machine without
    network (a refused connection is retried as a failed DNS lookup is). Returns the hub's URL."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("HF_ENDPOINT", url)
    return url


def test_what_counts_as_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for path in ("./models/smol", "../smol", "/srv/models/smol", "~/models/smol", "models/base/smol"):
        assert looks_like_path(path), path
    assert not looks_like_path("Qwen/Qwen2.5-0.5B-Instruct")
    assert not looks_like_path("models/smol")
    (tmp_path / "models").mkdir()  # `models/smol` beside a models/ folder means that folder
    assert looks_like_path("models/smol")


def test_a_missing_directory_is_said_with_what_is_there(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models/smollm2").mkdir(parents=True)
    (tmp_path / "model.safetensors").write_bytes(b"")

    def error(base):
        with pytest.raises(ModelNotFound) as err:
            model_source(base)
        return str(err.value)

    assert error("models/smol") == "model.base='models/smol': no such directory (did you mean 'models/smollm2'?)"
    assert error("./modls/smollm2") == "model.base='./modls/smollm2': no such directory (did you mean './models'?)"
    assert error("./weights/x") == "model.base='./weights/x': no such directory (no folder like 'weights' in the current folder)"
    assert error(f"{tmp_path}/models/7b") == f"model.base='{tmp_path}/models/7b': no such directory (no folder like '7b' in {tmp_path}/models)"
    assert error("./model.safetensors") == (
        "model.base='./model.safetensors': ./model.safetensors is a file, not a model directory (the folder with config.json)"
    )


@pytest.mark.parametrize("command", ["prepare", "train"])
def test_a_mistyped_model_directory_is_named_with_the_closest_that_exists(tmp_path, tiny_model_dir, sample_data, command):
    shutil.copytree(tiny_model_dir, tmp_path / "models/smollm2")
    result = run_cli(command, *outputs(tmp_path), "--set", "model.base=./models/smol", "--set", f"data.path={sample_data}",
                     cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert errors(result.stderr) == ["error: model.base='./models/smol': no such directory (did you mean './models/smollm2'?)"]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["prepare", "train", "plan"])
def test_an_unreachable_hub_fails_once_saying_how_to_work_offline(tmp_path, sample_data, dead_hub, command):
    started = time.monotonic()
    result = run_cli(command, *outputs(tmp_path), "--set", "model.base=acme/no-such-model", "--set", f"data.path={sample_data}")
    elapsed = time.monotonic() - started
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Retrying" not in result.stderr and elapsed < ONE_PROBE_S, (elapsed, result.stderr[-2000:])  # one probe, no retries
    [error] = errors(result.stderr)
    assert error.startswith(f"error: model.base='acme/no-such-model': the Hugging Face Hub is unreachable ({dead_hub}: ")
    assert "the model is not in the local cache; to work offline, set model.base to a local model directory, " in error
    assert "(`hf download acme/no-such-model`) and set HF_HUB_OFFLINE=1" in error
    if command == "plan":  # plan has a table of common shapes too
        assert "plan's built-in table does not have it either (" in error


def cache(hf_home, model_dir, files=None):
    """The hub cache's own layout for acme/tiny, as `hf download acme/tiny` leaves it (`files`:
    only those, as `plan` leaves config.json alone)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = hf_home / "hub/models--acme--tiny"
    shutil.copytree(model_dir, repo / "snapshots" / commit, ignore=None if files is None else
                    lambda folder, names: [name for name in names if name not in files])
    (repo / "refs").mkdir()
    (repo / "refs/main").write_text(commit)


def test_a_cached_model_is_loaded_at_once_when_the_hub_is_unreachable(tmp_path, tiny_model_dir, sample_data, dead_hub):
    cache(tmp_path / "hf", tiny_model_dir)
    result = run_cli("prepare", *outputs(tmp_path), "--set", "model.base=acme/tiny", "--set", f"data.path={sample_data}")
    assert result.returncode == 0, result.stderr[-2000:]
    # One probe, then only the cache: transformers alone tried each file six times, for minutes.
    assert "Retrying" not in result.stderr, result.stderr[-2000:]
    assert f"the Hugging Face Hub is unreachable ({dead_hub}: " in result.stdout
    assert "acme/tiny comes from the local cache (HF_HUB_OFFLINE=1 skips this check)" in result.stdout
    assert (tmp_path / "prepared/summary.json").is_file()


def test_a_model_partly_in_the_cache_says_so_when_the_hub_is_unreachable(tmp_path, tiny_model_dir, sample_data, dead_hub):
    cache(tmp_path / "hf", tiny_model_dir, files={"config.json"})
    result = run_cli("prepare", *outputs(tmp_path), "--set", "model.base=acme/tiny", "--set", f"data.path={sample_data}")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Retrying" not in result.stderr, result.stderr[-2000:]
    assert errors(result.stderr) == [
        "error: model.base='acme/tiny': the Hugging Face Hub is unreachable and the local cache holds only part of the model; "
        "to work offline, set model.base to a local model directory, or download the model once with network access "
        "(`hf download acme/tiny`) and set HF_HUB_OFFLINE=1"
    ]


def test_offline_mode_without_the_model_in_the_cache_says_what_to_do(tmp_path, sample_data, dead_hub):
    result = run_cli("prepare", *outputs(tmp_path), "--set", "model.base=acme/no-such-model", "--set", f"data.path={sample_data}",
                     HF_HUB_OFFLINE="1")
    assert result.returncode == 2, result.stderr[-2000:]
    assert errors(result.stderr) == [
        f"error: model.base='acme/no-such-model': not in the local Hugging Face cache ({tmp_path / 'hf/hub'}) and "
        "HF_HUB_OFFLINE=1 keeps it from being downloaded; download it once with network access "
        "(`hf download acme/no-such-model`), or set model.base to a local model directory"
    ]
