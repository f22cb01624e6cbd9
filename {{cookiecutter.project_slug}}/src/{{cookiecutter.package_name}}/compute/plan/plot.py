"""`plan --plot PATH`: dollars per run against hours, one point per offer (machine, cloud, spot or
on-demand), the cheapest and the fastest marked, as a PNG. Reads the plan's dictionary only."""

from __future__ import annotations

from pathlib import Path

from ...config import ConfigError


def check_plot_path(path: str | Path) -> Path:
    """Checked before the plan is made, so a wrong name fails at once, not after the table."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ConfigError(f"--plot {path}: the picture is a PNG; give a path ending in .png")
    if path.is_dir():
        raise ConfigError(f"--plot {path}: a directory; give a file name ending in .png")
    return path


def plot_offers(plan: dict, path: str | Path) -> dict:
    """Write the PNG; returns what was plotted: the points, the two marked ones, and `drawn`,
    the points matplotlib actually holds (so a test checks the picture, not just the input)."""
    path = check_plot_path(path)
    points = [{key: offer[key] for key in ("machine", "gpu", "cloud", "spot", "hours", "usd_per_run", "expected_usd")}
              for offer in plan["ranked"]]
    if not points:
        raise ConfigError(f"--plot {path}: no offer to plot (no GPU that fits has a price)")
    cheapest = min(points, key=lambda p: (p["expected_usd"], p["hours"]))  # as the plan ranks them
    fastest = min(points, key=lambda p: (p["hours"], p["usd_per_run"]))  # the cheapest of the fastest GPU's offers

    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=100)
    drawn = 0
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for number, machine in enumerate(dict.fromkeys(p["machine"] for p in points)):
        colour = colours[number % len(colours)]
        for spot in (True, False):
            mine = [p for p in points if p["machine"] == machine and p["spot"] == spot]
            if not mine:
                continue
            # Spot filled, on-demand hollow: the same GPU's two prices side by side.
            dots = axes.scatter([p["hours"] for p in mine], [p["usd_per_run"] for p in mine], s=36, zorder=2,
                                color=colour if spot else "none", edgecolors=colour,
                                label=f"{machine} {'spot' if spot else 'on-demand'}")
            drawn += len(dots.get_offsets())
    marked = [("cheapest", cheapest), ("fastest", fastest)] if cheapest != fastest else [("cheapest and fastest", cheapest)]
    for row, (which, point) in enumerate(marked):
        axes.scatter([point["hours"]], [point["usd_per_run"]], s=160, marker="*", color="black", zorder=3)
        # The labels sit in the empty top left (the setup band), arrows to their stars: no point is hidden.
        axes.annotate(f"{which}: {point['machine']} {'spot' if point['spot'] else 'on-demand'} on {point['cloud']}, "
                      f"{point['hours']:.2f} h, ${point['usd_per_run']:,.2f}",
                      (point["hours"], point["usd_per_run"]), xytext=(0.02, 0.95 - 0.09 * row),
                      textcoords="axes fraction", fontsize=8, va="top", zorder=4,
                      bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.9},
                      arrowprops={"arrowstyle": "->", "color": "black", "lw": 0.8})
    setup = _setup_hours(plan)
    if setup:
        axes.axvspan(0, setup, color="grey", alpha=0.15, zorder=1, label=f"setup, ~{setup * 60:.0f} min (billed)")
    # From zero: the eye compares lengths, and a run is never free or instant.
    axes.set_xlim(0, max(p["hours"] for p in points) * 1.15)
    axes.set_ylim(0, max(p["usd_per_run"] for p in points) * 1.15)
    axes.set(xlabel="hours per run (setup included)", ylabel="dollars per run",
             title=f"{plan['model']['name']}: {len(points)} offers (spot filled, on-demand hollow)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, format="png", bbox_inches="tight")  # the legend sits outside the axes
    except OSError as err:
        raise ConfigError(f"--plot {path}: cannot write it ({err.strerror or err})") from None
    finally:
        plt.close(figure)
    return {"path": str(path), "points": points, "cheapest": cheapest, "fastest": fastest, "drawn": drawn}


def _setup_hours(plan: dict) -> float:
    """The setup every offer's hours include (the same on every GPU: boot, install, download)."""
    return max((g.get("setup_hours", 0.0) for g in plan["gpus"]), default=0.0)
