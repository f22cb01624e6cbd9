"""What a finished run leaves in train.output_dir: the adapter, the loss curve as CSV and PNG."""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from ..atomic import atomic_dir


def save_adapter(model, weights: dict[str, torch.Tensor], tokenizer, adapter_dir: Path) -> None:
    """PEFT's standard adapter format plus the tokenizer, swapped in atomically.
    `weights`: checkpoints.trainable_state(model), whole even when the model is sharded."""
    with atomic_dir(adapter_dir) as tmp:
        model.save_pretrained(tmp, state_dict=weights)
        tokenizer.save_pretrained(tmp)


def plot_loss(loss_log: list[tuple[int, float]], path: Path, title: str) -> Path:
    """The loss curve as a PNG, for MLflow and for people without a DVC plots renderer."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 3.5), dpi=100)
    axes.plot([s for s, _ in loss_log], [v for _, v in loss_log], marker=".")
    axes.set(xlabel="step", ylabel="training loss", title=title)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def write_loss_csv(loss_log: list[tuple[int, float]], path: Path) -> None:
    """The loss curve as a DVC plot (`dvc plots show`)."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "loss"])
        writer.writerows((step, f"{loss:.6f}") for step, loss in loss_log)
