"""Compare MLflow runs: quality, speed and cost, against a baseline (main's newest run).

    {{ cookiecutter.package_name }} report                       last 10 runs, terminal table
    {{ cookiecutter.package_name }} report --pr 12 --format markdown   the PR comment body
    {{ cookiecutter.package_name }} report --format json --plots out/    JSON + PNG plots
    {{ cookiecutter.package_name }} report --smoke                       the runs of `make smoke`

First the quality of the newest run against the baseline, example by example (eval loss,
token accuracy, the answer metrics, the judge's win rate): this run, baseline, delta with a
bootstrap 95% interval, and a verdict (better / worse / within noise; see evaluate/compare.py);
then every run's means (the task metrics some shown run has, each marked with its paired
verdict), speed and cost; then a few answers side by side. JSON carries the quality of every
run shown as `quality: {metric: {value, baseline, delta, ci95, verdict, examples, run_examples}}`.
A run with no price (trained on a machine nothing priced: cost_usd 0 with price_source
"unknown"; or a cloud machine no price list names: cost_known false, no cost_usd) shows
"no price" / "unknown", never $0.00, and no cost delta; JSON says `priced: false`.

Runs come from one `search_runs` query (paged, so it stays fast with thousands of runs);
per-run downloads (the per-example scores of the newest QUALITY_RUNS runs that have them, and
metric histories for plots) are made for the runs shown only.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

from .compute import sweep
from .compute.sweep import pareto_front  # also the plots' Pareto front
from .evaluate import compare
from .tracking.runs import find_baseline, select_runs

QUALITY_RUNS = 10  # per-example scores are downloaded for at most this many runs
ANSWERS_SHOWN = 3
# Means logged by `evaluate`: compared means-only when a run has no per-example scores.
QUALITY_METRICS = ("eval_loss", "token_accuracy", "exact_match", "chrf", "rouge_l", "preference_accuracy", "reward_margin",
                   "logp_margin")
# Columns whose sign alone gets a ✅ / ⚠️: speed and cost. Quality gets its verdict from the
# paired comparison instead (a seed alone moves eval loss by more than many real changes).
MARKED = {"tokens_per_second", "cost_usd", "gpu_hours", "wall_minutes"}
RATIO_ABOVE = 1.0  # a change beyond +100% reads better as a ratio ("28.8x") than as "+2776.7%"

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
# Task metrics `evaluate` logs: shown after perplexity, each only when some shown run has it.
TASK_COLUMNS = [
    ("token_accuracy", "metric", "{:.1%}", False),
    ("exact_match", "metric", "{:.1%}", False),
    ("chrf", "metric", "{:.4g}", False),
    ("rouge_l", "metric", "{:.4g}", False),
    ("preference_accuracy", "metric", "{:.1%}", False),  # held-out preference pairs (evaluate/pairs.py)
    ("reward_margin", "metric", "{:.4g}", False),
    ("logp_margin", "metric", "{:.4g}", False),
]


def run_row(run) -> dict:
    """The numbers and labels of one run, flat."""
    row = {
        "run_id": run.info.run_id,
        "run_name": run.info.run_name or run.info.run_id[:8],
        "id": run.info.run_id[:8],  # two runs of one commit share a name
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
    # A run on a machine whose price was unknown logs no cost: "unknown", never a blank or $0.
    row["cost_known"] = run.data.tags.get("cost_known", "true") != "false"
    # One on a machine nothing priced (yours, no cost.hourly_usd) logs cost_usd 0: no price either.
    row["price_source"] = run.data.tags.get("price_source", "")
    row["priced"] = row["cost_known"] and row["price_source"] != "unknown" and row["cost_usd"] is not None
    for name in (*QUALITY_METRICS, "eval_examples", "judge_win_rate", "judge_cost_usd"):
        if name in run.data.metrics:
            row.setdefault(name, run.data.metrics[name])
    end = run.info.end_time or run.info.start_time
    row["wall_minutes"] = (end - run.info.start_time) / 60000 if run.info.start_time else None
    # What `export` wrote for this run: export_<target>_mib, and the merged model's held-out loss change.
    row["exports"] = {key: value for key, value in run.data.metrics.items() if key.startswith("export_")}
    return row


def delta(value, base, name: str = "") -> str:
    """`-0.2 (-14.3%)`; past +100% a ratio, `+27.77 (28.8x)`; rates in points, `+75.0 pts`."""
    if value is None or base is None or not isinstance(value, (int, float)) or not isinstance(base, (int, float)):
        return ""
    diff = value - base
    if diff == 0:
        return "±0"
    if name in compare.PERCENT:
        return f"{diff * 100:+.1f} pts"
    # Thousands as digits (+27,767 tokens/s), not +2.777e+04.
    shown = f"{diff:+,.0f}" if abs(diff) >= 1000 else f"{diff:+.4g}"
    if base > 0 and diff / base > RATIO_ABOVE:
        ratio = value / base
        return f"{shown} ({ratio:,.1f}x)" if ratio < 100 else f"{shown} ({ratio:,.0f}x)"
    pct = f" ({format(diff / base, '+.1%')})" if base else ""
    return f"{shown}{pct}"


def no_gpu(row: dict) -> bool:
    """A run that trained on no GPU: it logs gpu_hours 0 and has no `gpu` tag."""
    return row.get("gpu_hours") == 0 and not row.get("gpu")


def columns(rows: list[dict]) -> list[tuple]:
    """The table's columns: the numbers, plus the task metrics and tags some of these rows have
    (a run on your own CPU has no gpu, cloud or spot: three columns of "-" less)."""
    rows = [r for r in rows if r]
    present = [c for c in TASK_COLUMNS if any(isinstance(r.get(c[0]), (int, float)) for r in rows)]
    fixed = [c for c in COLUMNS if c[1] != "tag" or any(r.get(c[0]) not in (None, "") for r in rows)]
    return fixed[:2] + present + fixed[2:]


def deltas(row: dict, baseline: dict) -> dict[str, str]:
    """Each number column's change against the baseline; none for cost without a price on both."""
    changes = {name: delta(row.get(name), baseline.get(name), name) for name, src, _, _ in COLUMNS + TASK_COLUMNS
               if src != "tag"}
    if not (row.get("priced", True) and baseline.get("priced", True)):
        changes["cost_usd"] = ""  # against no price a difference means nothing
    if no_gpu(row) or no_gpu(baseline):
        changes["gpu_hours"] = ""
    return changes


def quality(row: dict, baseline: dict | None, table: dict | None, base_table: dict | None) -> tuple[dict, str]:
    """The run's quality against the baseline: paired when both have per-example scores.

    Only for runs that have them (evaluated by this version): for older runs the table's
    eval loss column is all there is."""
    if baseline is None or table is None:
        return {}, ""
    if table is not None and base_table is not None:
        result = compare.compare(table, base_table)
        scores, note = result["quality"], result["note"]
        judge = table.get("judge")
        if judge and judge.get("baseline_run") == baseline["run_id"]:
            scores["judge_win_rate"] = {
                "value": judge["win_rate"], "baseline": 0.5, "delta": judge["win_rate"] - 0.5,
                "ci95": [judge["ci95"][0] - 0.5, judge["ci95"][1] - 0.5] if judge["ci95"] else None,
                "verdict": judge["verdict"], "examples": judge["examples"], "paired": True,
                "cost_usd": judge["cost_usd"],
            }
        return scores, note
    scores = {}
    for name in QUALITY_METRICS:
        if isinstance(row.get(name), (int, float)) and isinstance(baseline.get(name), (int, float)):
            scores[name] = {"value": row[name], "baseline": baseline[name], "delta": row[name] - baseline[name],
                            "ci95": None, "verdict": None, "examples": None, "paired": False}
    return scores, "the baseline has no per-example scores (evaluated by an older version): means compared only" if scores else ""


def build_report(rows: list[dict], baseline: dict | None, tables: dict[str, dict] | None = None) -> dict:
    tables = tables or {}
    base_table = tables.get(baseline["run_id"]) if baseline else None
    for row in rows:
        row["delta"] = deltas(row, baseline) if baseline else {}
        row["quality"], row["quality_note"] = quality(row, baseline, tables.get(row["run_id"]), base_table)
        if row["run_id"] in tables:
            row["answers"] = compare.side_by_side(tables[row["run_id"]], base_table, ANSWERS_SHOWN)
    return {"baseline": baseline, "runs": rows}


def fetch_tables(client, rows: list[dict]) -> dict[str, dict]:
    """Per-example scores of the runs that have them (the newest QUALITY_RUNS of them)."""
    tables = {}
    wanted = [row for row in rows if row and row.get("eval_examples")][:QUALITY_RUNS]
    with tempfile.TemporaryDirectory() as tmp:
        for row in wanted:
            table = compare.download_examples(client, row["run_id"], Path(tmp) / row["run_id"])
            if table is not None:
                tables[row["run_id"]] = table
    return tables


def label(row: dict) -> str:
    return f"{row['run_name']} ({row['id']})"


VERDICT_MARK = {compare.BETTER: "✅ better", compare.WORSE: "⚠️ worse", compare.NOISE: "➖ within noise", None: "means only"}
# In the runs table: one mark (markdown) or word (terminal, where emoji break the alignment).
TABLE_MARK = {compare.BETTER: "✅", compare.WORSE: "⚠️", compare.NOISE: "➖"}
TABLE_WORD = {compare.BETTER: "better", compare.WORSE: "worse", compare.NOISE: "noise"}


def quality_markdown(row: dict, baseline: dict) -> list[str]:
    if not row.get("quality"):
        return []
    lines = [f"### Quality: `{label(row)}` against `{label(baseline)}`", "",
             "| metric | this run | baseline | delta [95% interval] | verdict |", "|---|---|---|---|---|"]
    for name, q in row["quality"].items():
        lines.append(f"| {name} | {compare.show_value(name, q['value'])} | {compare.show_value(name, q['baseline'])} "
                     f"| {compare.show_change(name, q)} | {VERDICT_MARK[q['verdict']]} |")
    paired = [q["examples"] for q in row["quality"].values() if q["paired"]]
    lines.append("")
    if paired:
        lines.append(f"Paired on the same held-out examples ({min(paired)}-{max(paired)} per metric): "
                     "the interval is a bootstrap of the paired differences; a verdict needs all of it on one side of 0.")
    # Figures over fewer examples than the run's own means in the table below: say so, or they look contradictory.
    partial = [f"{name} ({q['examples']} of {q['run_examples']})" for name, q in row["quality"].items()
               if q["paired"] and q.get("run_examples", 0) > q["examples"]]
    if partial:
        lines.append(f"Only the examples both runs share are compared: {', '.join(partial)}; so this run's figures "
                     "here can differ from its means over all of its examples in the table below.")
    if row.get("quality_note"):
        lines.append(f"**Note:** {row['quality_note']}.")
    judge = row["quality"].get("judge_win_rate")
    if judge:
        lines.append(f"Judge: both answer orders asked, {judge['examples']} prompts, ${judge['cost_usd']:.4f}.")
    return lines + [""]


def _md_text(text, limit: int = 600) -> str:
    if isinstance(text, list):  # chat messages: the last user turn is the question
        text = next((m["content"] for m in reversed(text) if m.get("role") == "user"), "")
    text = str(text if text is not None else "-")
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;").replace("\n", "<br>")


def answers_markdown(row: dict) -> list[str]:
    if not row.get("answers"):
        return []
    lines = [f"<details><summary>Answers side by side: the first {len(row['answers'])} held-out prompts</summary>", "",
             "| prompt | this run | baseline | reference |", "|---|---|---|---|"]
    for answer in row["answers"]:
        cells = [_md_text(answer[key]) for key in ("prompt", "answer", "baseline", "reference")]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + ["", "</details>", ""]


def _cell(row: dict, name: str, fmt: str) -> str:
    value = row.get(name)
    if name == "cost_usd" and row.get("cost_known") is False:
        return "unknown"
    if name == "cost_usd" and row.get("price_source") == "unknown":
        return "no price"  # it logged $0: nothing priced the machine, not a free run
    if name == "gpu_hours" and no_gpu(row):
        return "no GPU"
    if value is None or value == "":
        return "-"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def _verdict(row: dict, name: str) -> str | None:
    return (row.get("quality") or {}).get(name, {}).get("verdict")


def legend(shown: list[dict], markdown: bool) -> list[str]:
    """What the table's marks and words mean: only those it shows."""
    lines = []
    if any(_verdict(row, name) for row in shown for name in row.get("quality") or {}):
        marks = "✅ better, ⚠️ worse, ➖ within noise" if markdown else "better, worse, noise (within noise)"
        lines.append(f"Quality columns: {marks}: the paired verdict against the baseline, as in the quality block "
                     "(runs with per-example scores only); speed and cost are marked by the sign of the change.")
    if any(row.get("price_source") == "unknown" for row in shown):
        lines.append("no price: trained on a machine nothing priced (your own, with neither cost.hourly_usd nor "
                     "cost.electricity_usd_per_kwh set): its $0 is not a cost.")
    if any(row.get("cost_known") is False for row in shown):
        lines.append("unknown: a cloud machine no price list names (set cost.hourly_usd).")
    return lines


def export_notes(shown: list[dict]) -> list[str]:
    """One line per run that was exported: each file's size, and what merging did to the held-out loss."""
    lines = []
    for row in shown:
        figures = row.get("exports") or {}
        names = {key: key.removeprefix("export_").removesuffix("_mib") for key in figures if key.endswith("_mib")}
        names = {key: f"gguf {name[5:].upper()}" if name.startswith("gguf_") else name for key, name in names.items()}
        sizes = [f"{name} {figures[key]:,.1f} MiB" for key, name in sorted(names.items())]
        if "export_merged_loss_change_pct" in figures:
            sizes.append(f"merged held-out loss {figures['export_merged_loss_change_pct']:+.2f}% vs the adapter")
        if figures.get("export_vllm_refused"):
            sizes.append("vLLM refuses the adapter: serve the merged model")
        if sizes:
            lines.append(f"exports of {label(row)}: " + ", ".join(sizes))
    return lines


def to_markdown(report: dict) -> str:
    baseline, runs = report["baseline"], report["runs"]
    lines = quality_markdown(runs[0], baseline) if runs and baseline else []
    shown = ([baseline] if baseline else []) + runs
    cols = columns(shown)
    names = [c[0] for c in cols]
    if lines:
        with_means = any(c in cols for c in TASK_COLUMNS)
        lines += ["### Speed and cost" + (", with each run's quality means" if with_means else ""), ""]
    lines += ["| run | id | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 2)]
    if baseline:
        lines.append(f"| baseline `{baseline['run_name']}` | {baseline['id']} | "
                     + " | ".join(_cell(baseline, n, f) for n, _, f, _ in cols) + " |")
    for row in runs:
        cells = []
        for name, _source, fmt, lower_better in cols:
            cell = _cell(row, name, fmt)
            change = row["delta"].get(name)
            if change and lower_better is not None:
                if name in MARKED and change != "±0":
                    better = change.startswith("-") == lower_better
                    change = f"{'✅' if better else '⚠️'} {change}"
                elif _verdict(row, name):  # quality: the paired verdict, not the sign
                    change = f"{TABLE_MARK[_verdict(row, name)]} {change}"
                cell += f" ({change})"
            cells.append(cell)
        lines.append(f"| `{row['run_name']}` | {row['id']} | " + " | ".join(cells) + " |")
    notes = legend(shown, markdown=True) + export_notes(shown)
    if notes:
        lines += [""] + notes
    if runs:
        lines += [""] + answers_markdown(runs[0])
    return "\n".join(lines).rstrip("\n") + "\n"


def quality_text(row: dict, baseline: dict) -> str:
    if not row.get("quality"):
        return ""
    lines = [f"quality of {label(row)} against {label(baseline)} (this run vs baseline):"]
    lines += [compare.quality_line(name, q, VERDICT_MARK[q["verdict"]]) for name, q in row["quality"].items()]
    if row.get("quality_note"):
        lines.append(f"  note: {row['quality_note']}")
    return "\n".join(lines) + "\n\n"


def to_table(report: dict) -> str:
    shown = ([report["baseline"]] if report["baseline"] else []) + report["runs"]
    cols = columns(shown)
    names = ["run", "id"] + [c[0] for c in cols]
    rows = []
    if report["baseline"]:
        rows.append(["(baseline) " + report["baseline"]["run_name"], report["baseline"]["id"]]
                    + [_cell(report["baseline"], n, f) for n, _, f, _ in cols])
    for row in report["runs"]:
        cells = []
        for name, _, fmt, _ in cols:
            cell = _cell(row, name, fmt) + (f" {row['delta'][name]}" if row["delta"].get(name) else "")
            verdict = _verdict(row, name)
            cells.append(cell + (f" {TABLE_WORD[verdict]}" if verdict else ""))
        rows.append([row["run_name"], row["id"], *cells])
    widths = [max(len(str(x)) for x in column) for column in zip(names, *rows, strict=True)]

    def render(cells):
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    top = quality_text(report["runs"][0], report["baseline"]) if report["runs"] and report["baseline"] else ""
    notes = legend(shown, markdown=False) + export_notes(shown)
    return (top + "\n".join([render(names), render(["-" * w for w in widths]), *map(render, rows)]) + "\n"
            + "".join(f"{note}\n" for note in notes))


def cost_axis(costs: list[float]) -> tuple[float, float]:
    """Costs are never negative; with every run at $0 (own GPU, no price) matplotlib would centre 0."""
    return 0.0, (max(costs, default=0.0) * 1.1) or 1.0


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
        axes.plot([m.step for m in history], [m.value for m in history], label=label(row))
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
        axes.annotate(label(row), (x, y), fontsize=7)
    front = pareto_front(points)
    axes.plot([points[i][0] for i in front], [points[i][1] for i in front], color="tab:red", label="Pareto front")
    axes.set_xlim(*cost_axis([p[0] for p in points]))
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
    sub.add_argument("--smoke", action="store_true", help="the runs of `make smoke` (experiment <name>-smoke)")


def run(args: argparse.Namespace) -> int:
    from mlflow import MlflowClient

    from .config import load_params
    from .tracking import tracking_uri

    params = load_params(args.params, args.set)
    client = MlflowClient(tracking_uri(params))
    experiment = args.experiment or params.tracking.experiment
    if args.smoke:
        experiment += "-smoke"  # where smoke runs log (cli.smoke_overrides)
    if getattr(args, "sweep", None):
        return sweep_report(client, experiment, args.sweep, args.format)
    runs = select_runs(client, experiment, args.pr, args.branch, args.last, args.run_ids)
    if not runs:
        print(where_runs_are(client, experiment, args.smoke), file=sys.stderr)
    if len(args.baseline) == 32 and all(c in "0123456789abcdef" for c in args.baseline):
        base_run = client.get_run(args.baseline)
    else:
        base_run = find_baseline(client, experiment, args.baseline)
    baseline = run_row(base_run) if base_run else None
    rows = [run_row(r) for r in runs if not base_run or r.info.run_id != base_run.info.run_id]
    report = build_report(rows, baseline, fetch_tables(client, [baseline, *rows] if baseline else rows))
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


def where_runs_are(client, experiment: str, smoke: bool) -> str:
    """Why no run matched, and where runs are (smoke runs log to their own experiment)."""
    exists = client.get_experiment_by_name(experiment) is not None
    message = f"no runs match in experiment '{experiment}'" if exists else f"no experiment '{experiment}' on this server"
    other = experiment.removesuffix("-smoke") if smoke else f"{experiment}-smoke"
    if client.get_experiment_by_name(other) is not None:
        message += f"; runs are in '{other}'" + (" (drop --smoke)" if smoke else ": `make smoke` logs there, add --smoke")
    return message
def sweep_report(client, experiment: str, sweep_id: str, fmt: str) -> int:
    """`report --sweep ID`: the sweep's variants ranked, the Pareto front, the `--set` line to adopt."""
    summary = sweep.report(client, [experiment], sweep_id)
    print(json.dumps(summary, indent=2, default=str) if fmt == "json" else sweep.render_summary(summary), end="\n" if fmt == "json" else "")
    return 0 if summary["variants"] else 1
