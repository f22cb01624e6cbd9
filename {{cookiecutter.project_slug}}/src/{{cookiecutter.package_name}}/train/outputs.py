"""The adapter a finished run leaves in train.output_dir (the loss curve is tracking/plots.py's)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..atomic import atomic_dir


def save_adapter(model, weights: dict[str, torch.Tensor], tokenizer, adapter_dir: Path) -> None:
    """PEFT's standard adapter format plus the tokenizer, swapped in atomically.
    `weights`: checkpoints.trainable_state(model), whole even when the model is sharded."""
    with atomic_dir(adapter_dir) as tmp:
        model.save_pretrained(tmp, state_dict=weights)
        tokenizer.save_pretrained(tmp)
