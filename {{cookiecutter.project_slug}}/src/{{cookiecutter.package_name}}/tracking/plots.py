"""The loss curve, as a CSV (a DVC plot) and a PNG (for MLflow and for people without a plots
renderer): written by `train` with the training loss, and drawn again by `evaluate` with the
eval loss beside it. Here, in tracking, because both stages draw it and neither may import the other.
"""

from __future__ import annotations

import csv
from pathlib import Path

TRAIN_COLOUR, EVAL_COLOUR = "tab:blue", "tab:orange"
MARKER_SIZE = 7  # points: a run with one logged point (10 steps) still shows a dot you can see


def loss_figure(loss_log: list[tuple[int, float]], title: str, eval_points: list[tuple[int, float]] | None = None):
    """The loss curve as a matplotlib figure: a marker on every logged training point (a single
    point is a dot, not an empty frame), and the eval points, when there are any, in their own colour."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, axes = plt.subplots(figsize=(6, 3.5), dpi=100)
    axes.plot([s for s, _ in loss_log], [v for _, v in loss_log], marker="o", markersize=MARKER_SIZE,
              color=TRAIN_COLOUR, label="training loss")
    if eval_points:
        axes.plot([s for s, _ in eval_points], [v for _, v in eval_points], marker="s", markersize=MARKER_SIZE,
                  color=EVAL_COLOUR, label="eval loss")
        axes.legend(fontsize=8)
    if not loss_log and not eval_points:
        # Said in words rather than left as an empty frame.
        axes.text(0.5, 0.5, "no loss logged: the run ended before train.log_every_steps", ha="center", va="center",
                  transform=axes.transAxes)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # whole steps, even around one point
    axes.set(xlabel="step", ylabel="loss" if eval_points else "training loss", title=title)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def plot_loss(loss_log: list[tuple[int, float]], path: Path, title: str,
              eval_points: list[tuple[int, float]] | None = None) -> Path:
    """The loss curve as a PNG, for MLflow and for people without a DVC plots renderer.

    `eval_points`: (step, eval loss) pairs drawn with the training loss (`evaluate` adds the
    eval loss at the last step; the trainer has none during training).
    """
    figure = loss_figure(loss_log, title, eval_points)
    import matplotlib.pyplot as plt  # after loss_figure chose the Agg backend

    figure.savefig(path)
    plt.close(figure)
    return path


def write_loss_csv(loss_log: list[tuple[int, float]], path: Path) -> None:
    """The loss curve as a DVC plot (`dvc plots show`)."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "loss"])
        writer.writerows((step, f"{loss:.6f}") for step, loss in loss_log)


def read_loss_csv(path: Path) -> list[tuple[int, float]]:
    """What `write_loss_csv` wrote; [] when there is no such file."""
    try:
        with path.open(newline="") as f:
            return [(int(row["step"]), float(row["loss"])) for row in csv.DictReader(f)]
    except FileNotFoundError:
        return []
