"""`model.init_adapter`: start training from a saved adapter (e.g. a supervised run's outputs/adapter).

The adapter is a folder, or `runs:/<run id>` (a finished run's adapter files in MLflow, at the
tracking.uri of params.yaml): those are downloaded once into train.output_dir/init_adapter/<run id>,
atomically, so a run on another machine (a spot VM, a CI runner) can start from it.

The adapter's weights are loaded into the fresh LoRA matrices that `lora.*` describes; its own
adapter_config.json must describe the same ones (rank, alpha, target modules, DoRA), or the
run stops naming the key that differs. A preference run's reference is then this adapter, frozen
(train/objectives/reference.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..atomic import atomic_dir
from ..config import ConfigError

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
RUN_PREFIX = "runs:/"


def adapter_folder(value: str, params) -> Path:
    """The folder `model.init_adapter` names, downloaded first when it is an MLflow run."""
    if not value.startswith(RUN_PREFIX):
        return Path(value)
    run_id, _, subpath = value[len(RUN_PREFIX):].strip("/").partition("/")
    if not run_id:
        raise ConfigError(f"model.init_adapter: {value!r} names no run: write runs:/<run id> (the run id MLflow shows)")
    folder = Path(params.train.output_dir) / "init_adapter" / run_id / subpath
    if (folder / WEIGHTS).is_file() and (folder / CONFIG).is_file():
        return folder  # downloaded before (a resumed run, or a second preference run)
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        with atomic_dir(folder) as tmp:
            for name in (CONFIG, WEIGHTS):
                local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"{subpath}/{name}".lstrip("/"),
                                                            dst_path=str(tmp / ".download"), tracking_uri=params.tracking.uri)
                Path(local).rename(tmp / name)
            shutil.rmtree(tmp / ".download", ignore_errors=True)
    except (MlflowException, OSError) as err:
        first = str(getattr(err, "message", err)).splitlines()[0]
        raise ConfigError(f"model.init_adapter: no adapter in MLflow run {value} at tracking.uri={params.tracking.uri} "
                          f"({first}); a finished `train` run logs its adapter there unless tracking.log_adapter is false") from None
    return folder


def _targets(value) -> object:
    return sorted(value) if isinstance(value, list | tuple | set) else value


def check_config(folder: Path, params) -> None:
    config_file = folder / CONFIG
    if not config_file.is_file():
        raise ConfigError(f"model.init_adapter: {folder} has no adapter_config.json (a PEFT adapter folder, e.g. outputs/adapter)")
    saved = json.loads(config_file.read_text())
    wanted = {"lora.r": (saved.get("r"), params.lora.r), "lora.alpha": (saved.get("lora_alpha"), params.lora.alpha),
              "lora.target_modules": (_targets(saved.get("target_modules")), _targets(params.lora.target_modules)),
              "model.method": (bool(saved.get("use_dora")), params.model.method == "dora")}
    for key, (theirs, ours) in wanted.items():
        if key == "lora.target_modules" and ours == "all-linear":
            continue  # PEFT saves the resolved module names
        if key == "lora.alpha" and theirs is not None and float(theirs) == float(ours):
            continue
        if theirs != ours:
            raise ConfigError(f"model.init_adapter: {folder} was trained with {key}={theirs!r}, params say {ours!r}: "
                              f"set {key} to the adapter's")


def load_init_adapter(model, path: str, params) -> Path:
    """Copy the adapter at `path` into `model`'s (a PeftModel's) trainable matrices; returns its weights file."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    folder = adapter_folder(path, params)
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise ConfigError(f"model.init_adapter: {weights} not found (an adapter folder, e.g. outputs/adapter of a finished run)")
    check_config(folder, params)
    state = load_file(weights)
    try:
        result = set_peft_model_state_dict(model, state)
    except RuntimeError as err:  # shapes that do not fit
        raise ConfigError(f"model.init_adapter: {folder} does not fit this model ({str(err).splitlines()[0]})") from None
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise ConfigError(f"model.init_adapter: {folder} has weights this model has no place for: {', '.join(unexpected[:3])}")
    return weights
