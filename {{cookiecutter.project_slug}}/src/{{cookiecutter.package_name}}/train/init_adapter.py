"""`model.init_adapter`: start training from a saved adapter (e.g. a supervised run's outputs/adapter).

The adapter's weights are loaded into the fresh LoRA matrices that `lora.*` describes; its own
adapter_config.json must describe the same ones (rank, alpha, target modules, DoRA), or the
run stops naming the key that differs. A preference run's reference is then this adapter, frozen
(train/objectives/reference.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..config import ConfigError

WEIGHTS = "adapter_model.safetensors"


def _targets(value) -> object:
    return sorted(value) if isinstance(value, list | tuple | set) else value


def check_config(folder: Path, params) -> None:
    config_file = folder / "adapter_config.json"
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

    folder = Path(path)
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
