"""Step 4, summarise: a table of the variants by eval loss and cost, the Pareto front of cost
versus quality marked, and the best variant's params as the `--set` line to adopt; from the
sweep's MLflow runs alone for `report --sweep ID`.
"""

from __future__ import annotations

import shlex

from .text import _table, _usd
from .variants import Variant, check_sweep_id


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


def summarise(rows: list[dict]) -> dict:
    """rows: {variant, status, sets, cost_usd, eval_loss, ...} -> the same rows ranked by eval
    loss (then cost), each with `front` (on the Pareto front of cost vs eval loss), and the best."""
    scored = [r for r in rows if r.get("cost_usd") is not None and r.get("eval_loss") is not None]
    front = {id(scored[i]) for i in pareto_front([(r["cost_usd"], r["eval_loss"]) for r in scored])}
    for row in rows:
        row["front"] = id(row) in front
    ranked = sorted(rows, key=lambda r: (r.get("eval_loss") is None, r.get("eval_loss") or 0, r.get("cost_usd") or 0))
    best = next((r for r in ranked if r.get("eval_loss") is not None), None)
    adopt = adopt_line(best, _varying_keys([r["set"] for r in rows])) if best else None
    return {"variants": ranked, "best": best, "adopt": adopt}


def rows_from_runs(runs, variants: list[Variant] | None = None, states: dict[str, str] | None = None) -> list[dict]:
    """One row per variant: its newest MLflow run, or (for variants never started) the plan."""
    newest = {}
    for run in runs:
        name = run.data.tags.get("sweep_variant", "")
        if name and (name not in newest or run.info.start_time >= newest[name].info.start_time):
            newest[name] = run
    rows = []
    names = [v.name for v in variants] if variants else sorted(newest, key=lambda n: (len(n), n))
    by_name = {v.name: v for v in variants or []}
    for name in names:
        run = newest.get(name)
        variant = by_name.get(name)
        sets = run.data.tags.get("sweep_set", "") if run else " ".join(variant.sets)
        rows.append({
            "variant": name,
            "status": (states or {}).get(name) or (run.info.status.lower() if run else "not started"),
            "set": sets,
            "run_id": run.info.run_id if run else "",
            "cost_usd": run.data.metrics.get("cost_usd") if run else None,
            "eval_loss": run.data.metrics.get("eval_loss") if run else None,
            "estimate_usd": variant.estimate["usd_per_run"] if variant and variant.estimate else None,
        })
    return rows


def render_summary(summary: dict) -> str:
    rows = summary["variants"]
    if not rows:
        return "no runs of this sweep in MLflow\n"
    varying = _varying_keys([r["set"] for r in rows])
    header = ["variant", *varying, "eval_loss", "cost", "status", "front"]
    table = []
    for row in rows:
        values = dict(a.split("=", 1) for a in row["set"].split() if "=" in a)
        table.append([row["variant"], *(values.get(k, "") for k in varying),
                      "-" if row["eval_loss"] is None else f"{row['eval_loss']:.4f}",
                      _usd(row["cost_usd"]), row["status"], "*" if row["front"] else ""])
    text = _table(header, table)
    text += "\n* = on the Pareto front: no other variant is both cheaper and better (lower eval loss)\n"
    best = summary["best"]
    if best:
        text += (f"best: {best['variant']} (eval_loss {best['eval_loss']:.4f}, {_usd(best['cost_usd'])}); adopt it with:\n"
                 f"  {adopt_line(best, varying)}\n")
    else:
        text += "no variant finished with an eval loss yet\n"
    return text


def adopt_line(row: dict, varying: list[str]) -> str:
    """The `--set` line of what this variant changed (what the sweep compared); every key
    when nothing varied."""
    sets = [a for a in row["set"].split() if a.split("=", 1)[0] in varying] or row["set"].split()
    return " ".join(f"--set {shlex.quote(a)}" for a in sets)


def _varying_keys(set_lines: list[str]) -> list[str]:
    parsed = [dict(a.split("=", 1) for a in line.split() if "=" in a) for line in set_lines]
    keys = dict.fromkeys(k for p in parsed for k in p)
    return [k for k in keys if len({p.get(k) for p in parsed}) > 1]


def report(client, experiments: list[str], sweep_id: str) -> dict:
    """`report --sweep ID`: the summary from MLflow alone."""
    check_sweep_id(sweep_id)
    ids = [e.experiment_id for name in experiments if (e := client.get_experiment_by_name(name))]
    runs = client.search_runs(ids, f"tags.sweep_id = '{sweep_id}'", max_results=1000) if ids else []
    return summarise(rows_from_runs(runs))
