"""The loss curve as a PNG (outputs/loss.png, logged to MLflow): every logged point is a dot you
can see, a run with a single logged point included, and eval points when they are given.

The PNG is read back and its pixels checked where the figure puts each point."""

import matplotlib.image as mpimg
import numpy as np
from matplotlib.colors import to_rgb

from {{ cookiecutter.package_name }}.tracking import plots

RADIUS = 4  # pixels: a marker a reader can see; matplotlib's old "." dot reaches under 3


def marker_misses(png, figure, points, colour) -> list:
    """The points whose disc of RADIUS pixels in the PNG is not all `colour`, found where
    `figure` (drawn as the PNG was) places them."""
    image = mpimg.imread(png)[..., :3]
    width, height = figure.canvas.get_width_height()
    assert image.shape[:2] == (height, width)
    figure.canvas.draw()
    centres = figure.axes[0].transData.transform(np.asarray(points, dtype=float))
    rows, columns = np.mgrid[0:height, 0:width]
    misses = []
    for point, (x, y) in zip(points, centres, strict=True):
        # Display y runs up from the bottom; image rows run down; a pixel's centre is at +0.5.
        disc = (columns + 0.5 - x) ** 2 + (rows + 0.5 - (height - y)) ** 2 <= RADIUS**2
        if not np.allclose(image[disc], to_rgb(colour), atol=0.05):
            misses.append(point)
    return misses


def test_a_single_logged_point_is_a_visible_dot(tmp_path):
    log = [(10, 2.31)]
    png = plots.plot_loss(log, tmp_path / "loss.png", title="tiny")
    figure = plots.loss_figure(log, "tiny")
    assert marker_misses(png, figure, log, plots.TRAIN_COLOUR) == []
    assert figure.axes[0].get_legend() is None  # one series: the axis label names it
    low, high = figure.axes[0].get_xlim()
    assert [tick for tick in figure.axes[0].get_xticks() if low <= tick <= high] == [10]  # whole steps, not 9.6, 9.8, ...


def test_every_point_of_a_longer_run_has_its_marker(tmp_path):
    log = [(step, 3.0 - 0.02 * step + 0.1 * (step % 20 == 0)) for step in range(10, 110, 10)]
    png = plots.plot_loss(log, tmp_path / "loss.png", title="tiny")
    assert marker_misses(png, plots.loss_figure(log, "tiny"), log, plots.TRAIN_COLOUR) == []


def test_eval_points_are_drawn_in_their_own_colour_when_given(tmp_path):
    log = [(step, 3.0 - 0.02 * step) for step in range(10, 110, 10)]
    evals = [(30, 3.2), (100, 2.9)]  # above the training curve, clear of its markers
    png = plots.plot_loss(log, tmp_path / "loss.png", title="tiny", eval_points=evals)
    figure = plots.loss_figure(log, "tiny", evals)
    assert marker_misses(png, figure, evals, plots.EVAL_COLOUR) == []
    assert marker_misses(png, figure, log, plots.TRAIN_COLOUR) == []
    assert [t.get_text() for t in figure.axes[0].get_legend().get_texts()] == ["training loss", "eval loss"]


def test_a_run_that_logged_nothing_says_so(tmp_path):
    figure = plots.loss_figure([], "tiny")
    assert [t.get_text() for t in figure.axes[0].texts] == ["no loss logged: the run ended before train.log_every_steps"]
