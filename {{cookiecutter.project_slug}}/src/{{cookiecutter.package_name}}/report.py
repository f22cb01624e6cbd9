"""Compare MLflow runs: quality, speed and cost, against a baseline (main's newest run).

    {{ cookiecutter.package_name }} report                       last 10 runs, terminal table
    {{ cookiecutter.package_name }} report --pr 12 --format markdown   the PR comment body
    {{ cookiecutter.package_name }} report --format json --plots out/    JSON + PNG plots

Runs come from one `search_runs` query (paged, so it stays fast with thousands of runs);
only plots fetch per-run metric histories, for the runs shown.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

# (column, where it comes from, format, lower is better?)
COLUMNS = [
    ("eval_loss", "metric", "{:.4f}", True),
    ("perplexity", "metric", "{:.2f}", True),
    ("tokens_per_second", "metric", "{:,.0f}", False),
    ("cost_usd", "metric", "${:.2f}", True),
    ("gpu_hours", "metric", "{:.2f}", True),
    ("wall_minutes", "derived", "{:.1f}", True),
    ("gpu", "tag", "{}", None),
    ("cloud", "tag", "{}", None),
    ("spot", "tag", "{}", None),
    ("recoveries", "tag", "{}", None),
]


def run_row(run) -> dict:
    """The numbers and labels of one run, flat."""
    row = {
        "run_id": run.info.run_id,
        "run_name": run.info.run_name or run.info.run_id[:8],
        "status": run.info.status,
        "branch": run.data.tags.get("git_branch", ""),
        "pr": run.data.tags.get("pr", ""),
        "commit": run.data.tags.get("git_commit", "")[:7],
        "start_time": run.info.start_time,
    }
    for name, source, _, _ in COLUMNS:
        if source == "metric":
            row[name] = run.data.metrics.get(name)
        elif source == "tag":
            row[name] = run.data.tags.get(name, "")
    end = run.info.end_time or run.info.start_time
    row["wall_minutes"] = (end - run.info.start_time) / 60000 if run.info.start_time else None
    return row


def select_runs(client, experiment: str, pr: str | None = None, branch: str | None = None, last: int = 10,
                run_ids: list[str] | None = None) -> list:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    if run_ids:
        return [client.get_run(run_id) for run_id in run_ids]
    filters = []
    if pr:
        filters.append(f"tags.pr = '{int(pr)}'")
    if branch:
        filters.append("tags.git_branch = '{}'".format(branch.replace("'", "")))
    return list(client.search_runs([exp.experiment_id], " and ".join(filters), max_results=last, order_by=["attributes.start_time DESC"]))


def find_baseline(client, experiment: str, branch: str = "main"):
    """The newest finished run of `branch` that has an eval_loss."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = client.search_runs(
        [exp.experiment_id], f"tags.git_branch = '{branch}' and attributes.status = 'FINISHED' and metrics.eval_loss > -1",
        max_results=1, order_by=["attributes.start_time DESC"],
    )
    return runs[0] if runs else None


def delta(value, base) -> str:
    if value is None or base is None or not isinstance(value, (int, float)) or not isinstance(base, (int, float)):
        return ""
    diff = value - base
    pct = f" ({format(diff / base, '+.1%')})" if base else ""
    return f"{diff:+.4g}{pct}"


def build_report(rows: list[dict], baseline: dict | None) -> dict:
    for row in rows:
        row["delta"] = {name: delta(row.get(name), baseline.get(name)) for name, src, _, _ in COLUMNS if src != "tag"} if baseline else {}
    return {"baseline": baseline, "runs": rows}


def _cell(row: dict, name: str, fmt: str) -> str:
    value = row.get(name)
    if value is None or value == "":
        return "-"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def to_markdown(report: dict) -> str:
    names = [c[0] for c in COLUMNS]
    lines = ["| run | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
    baseline = report["baseline"]
    if baseline:
        lines.append(f"| baseline `{baseline['run_name']}` | " + " | ".join(_cell(baseline, n, f) for n, _, f, _ in COLUMNS) + " |")
    for row in report["runs"]:
        cells = []
        for name, _source, fmt, lower_better in COLUMNS:
            cell = _cell(row, name, fmt)
            change = row["delta"].get(name)
            if change and lower_better is not None:
                better = (change.startswith("-")) == lower_better
                cell += f" ({'✅' if better else '⚠️'} {change})"
            cells.append(cell)
        lines.append(f"| `{row['run_name']}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_table(report: dict) -> str:
    names = ["run"] + [c[0] for c in COLUMNS]
    rows = []
    if report["baseline"]:
        rows.append(["(baseline) " + report["baseline"]["run_name"]] + [_cell(report["baseline"], n, f) for n, _, f, _ in COLUMNS])
    for row in report["runs"]:
        rows.append([row["run_name"]] + [_cell(row, n, f) + (f" {row['delta'][n]}" if row["delta"].get(n) else "") for n, _, f, _ in COLUMNS])
    widths = [max(len(str(x)) for x in column) for column in zip(names, *rows, strict=True)]

    def render(cells):
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True))

    return "\n".join([render(names), render(["-" * w for w in widths]), *map(render, rows)]) + "\n"


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of runs no other run beats on both cost and eval loss."""
    front = []
    for i, (cost, loss) in enumerate(points):
        dominated = any(
            other_cost <= cost and other_loss <= loss and (other_cost < cost or other_loss < loss)
            for other_cost, other_loss in points
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def write_plots(client, report: dict, out_dir: Path) -> list[Path]:
    """loss_curves.png (overlaid) and cost_vs_eval_loss.png (Pareto front marked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    rows = ([report["baseline"]] if report["baseline"] else []) + report["runs"]
    figure, axes = plt.subplots(figsize=(7, 4), dpi=100)
    for row in rows:
        history = sorted(client.get_metric_history(row["run_id"], "loss"), key=lambda m: m.step)
        axes.plot([m.step for m in history], [m.value for m in history], label=row["run_name"])
    axes.set(xlabel="step", ylabel="training loss", title="Loss curves")
    axes.legend(fontsize=7)
    figure.tight_layout()
    curves = out_dir / "loss_curves.png"
    figure.savefig(curves)
    plt.close(figure)

    scored = [r for r in rows if r.get("cost_usd") is not None and r.get("eval_loss") is not None]
    points = [(r["cost_usd"], r["eval_loss"]) for r in scored]
    figure, axes = plt.subplots(figsize=(6, 4), dpi=100)
    axes.scatter([p[0] for p in points], [p[1] for p in points], color="tab:blue")
    for row, (x, y) in zip(scored, points, strict=True):
        axes.annotate(row["run_name"], (x, y), fontsize=7)
    front = pareto_front(points)
    axes.plot([points[i][0] for i in front], [points[i][1] for i in front], color="tab:red", label="Pareto front")
    axes.set(xlabel="cost (USD)", ylabel="eval loss", title="Cost vs quality")
    axes.legend(fontsize=7)
    figure.tight_layout()
    cost = out_dir / "cost_vs_eval_loss.png"
    figure.savefig(cost)
    plt.close(figure)
    return [curves, cost]


def register(commands) -> None:
    sub = commands.add_parser("report", help="compare MLflow runs (quality, speed, cost) with a baseline")
    sub.add_argument("--params", default="params.yaml")
    sub.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    sub.add_argument("--experiment", help="default: tracking.experiment from params.yaml")
    sub.add_argument("--pr", help="only runs of this pull request")
    sub.add_argument("--branch", help="only runs of this branch")
    sub.add_argument("--last", type=int, default=10, help="newest N runs (default 10)")
    sub.add_argument("--run-ids", nargs="+", help="these runs")
    sub.add_argument("--baseline", default="main", help="a run id, or a branch whose newest finished run is the baseline")
    sub.add_argument("--format", choices=["table", "markdown", "json"], default="table")
    sub.add_argument("--plots", type=Path, help="also write PNG plots into this folder")
    sub.add_argument("--sweep", metavar="ID", help="the variants of this sweep: quality, cost, Pareto front, best params")


def run(args: argparse.Namespace) -> int:
    from mlflow import MlflowClient

    from .config import load_params
    from .tracking import tracking_uri

    params = load_params(args.params, args.set)
    client = MlflowClient(tracking_uri(params))
    experiment = args.experiment or params.tracking.experiment
    if getattr(args, "sweep", None):
        return sweep_report(client, experiment, args.sweep, args.format)
    runs = select_runs(client, experiment, args.pr, args.branch, args.last, args.run_ids)
    if len(args.baseline) == 32 and all(c in "0123456789abcdef" for c in args.baseline):
        base_run = client.get_run(args.baseline)
    else:
        base_run = find_baseline(client, experiment, args.baseline)
    baseline = run_row(base_run) if base_run else None
    rows = [run_row(r) for r in runs if not base_run or r.info.run_id != base_run.info.run_id]
    report = build_report(rows, baseline)
    if args.format == "json":
        print(json.dumps(report, indent=2, default=lambda x: None if isinstance(x, float) and math.isnan(x) else str(x)))
    elif args.format == "markdown":
        print(to_markdown(report), end="")
    else:
        print(to_table(report), end="")
    if args.plots:
        for path in write_plots(client, report, args.plots):
            print(f"wrote {path}")
    return 0


def sweep_report(client, experiment: str, sweep_id: str, fmt: str) -> int:
    """`report --sweep ID`: the sweep's variants ranked, the Pareto front, the `--set` line to adopt."""
    from . import sweep

    summary = sweep.report(client, [experiment], sweep_id)
    print(json.dumps(summary, indent=2, default=str) if fmt == "json" else sweep.render_summary(summary), end="\n" if fmt == "json" else "")
    return 0 if summary["variants"] else 1
