"""Paired comparison of two runs on the same held-out examples: is the change beyond noise?

Each run's `evaluate` saves its per-example scores (eval_examples.json: every held-out
answer's metrics, every validation example's loss, every held-out preference pair's
accuracy and margins). Two runs' examples are paired by id
(a hash of the example itself, so packing order does not matter). For each metric:
  delta  this run's mean minus the baseline's, over the paired examples (for losses and
         token accuracy, weighted by trained tokens, exactly as eval_loss is)
  ci95   a bootstrap 95% interval of that delta: the paired examples resampled with
         replacement 2,000 times (fixed seed: the same inputs give the same interval)
  verdict  better / worse when the whole interval is on one side of 0, else within noise
When the baseline was evaluated on other examples (another data version or split), there is
nothing to pair: the means are compared, with no interval and no verdict, and `note` says so.

The paired figures are means over the shared examples only, so they can differ from the
run's own means (its headline eval loss is over all of its examples): `quality_line`, which
`evaluate` and `report` print, says which examples each pair of figures is over.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

EXAMPLES_FILE = "eval_examples.json"  # in train.output_dir and among the run's MLflow artifacts
RESAMPLES = 2000
# Metrics where a smaller number is the better one; everything else: higher is better.
LOWER_IS_BETTER = {"eval_loss", "perplexity"}
BETTER, WORSE, NOISE = "better", "worse", "within noise"
MIN_PAIRED_SHARE = 0.5  # at least half of this run's examples must also be in the baseline's
# Rates: shown as percentages, their changes in percentage points.
PERCENT = {"token_accuracy", "exact_match", "judge_win_rate", "preference_accuracy"}


def bootstrap_delta(run: np.ndarray, base: np.ndarray, run_weights: np.ndarray | None = None,
                    base_weights: np.ndarray | None = None, resamples: int = RESAMPLES, seed: int = 0):
    """(delta of weighted means, (low, high) of its 95% bootstrap interval) for paired arrays."""
    run, base = np.asarray(run, float), np.asarray(base, float)
    wr = np.ones_like(run) if run_weights is None else np.asarray(run_weights, float)
    wb = np.ones_like(base) if base_weights is None else np.asarray(base_weights, float)
    delta = float((wr * run).sum() / wr.sum() - (wb * base).sum() / wb.sum())
    if len(run) < 2:
        return delta, None
    index = np.random.default_rng(seed).integers(0, len(run), size=(resamples, len(run)))
    # A resample may draw only zero-weight examples: count it as no change rather than divide by 0.
    with np.errstate(invalid="ignore", divide="ignore"):
        deltas = (wr * run)[index].sum(1) / wr[index].sum(1) - (wb * base)[index].sum(1) / wb[index].sum(1)
    deltas = np.nan_to_num(deltas)
    low, high = np.percentile(deltas, [2.5, 97.5])
    return delta, (float(low), float(high))


def verdict(ci95, lower_is_better: bool) -> str:
    if ci95 is None:
        return NOISE
    low, high = ci95
    if low > 0:
        return WORSE if lower_is_better else BETTER
    if high < 0:
        return BETTER if lower_is_better else WORSE
    return NOISE


def per_example_values(table: dict) -> dict[str, dict[str, tuple[float, float]]]:
    """metric -> {example id: (value, weight)} from one run's eval_examples.json."""
    values: dict[str, dict[str, tuple[float, float]]] = {}
    for row in table.get("losses", []):
        tokens = row["tokens"]
        values.setdefault("eval_loss", {})[row["id"]] = (row["loss_sum"] / tokens, tokens)
        values.setdefault("token_accuracy", {})[row["id"]] = (row["correct"] / tokens, tokens)
    for row in table.get("answers", []):
        for name, value in row["scores"].items():
            values.setdefault(name, {})[row["id"]] = (value, 1.0)
    for row in table.get("pairs", []):  # held-out preference pairs (pairs.py): one value per pair
        values.setdefault("preference_accuracy", {})[row["id"]] = (row["correct"], 1.0)
        for name in ("reward_margin", "logp_margin"):
            values.setdefault(name, {})[row["id"]] = (row[name], 1.0)
    return values


def _mean(pairs) -> float | None:
    pairs = list(pairs)
    weight = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / weight if weight else None


def compare(run_table: dict, base_table: dict, lower_is_better: set[str] = frozenset()) -> dict:
    """{metric: {value, baseline, delta, ci95, verdict, examples}} plus `paired` and `note`."""
    lower = LOWER_IS_BETTER | set(lower_is_better)
    run_values, base_values = per_example_values(run_table), per_example_values(base_table)
    quality, notes = {}, []
    for name, run_examples in run_values.items():
        base_examples = base_values.get(name)
        if not base_examples:
            continue
        common = sorted(run_examples.keys() & base_examples.keys())
        if len(common) >= 2 and len(common) >= MIN_PAIRED_SHARE * len(run_examples):
            run_v, run_w = np.array([run_examples[i] for i in common]).T
            base_v, base_w = np.array([base_examples[i] for i in common]).T
            delta, ci95 = bootstrap_delta(run_v, base_v, run_w, base_w)
            quality[name] = {
                "value": _mean(run_examples[i] for i in common), "baseline": _mean(base_examples[i] for i in common),
                "delta": delta, "ci95": list(ci95) if ci95 else None, "verdict": verdict(ci95, name in lower),
                "examples": len(common), "run_examples": len(run_examples), "paired": True,
            }
        else:
            value, baseline = _mean(run_examples.values()), _mean(base_examples.values())
            quality[name] = {"value": value, "baseline": baseline, "delta": value - baseline, "ci95": None,
                             "verdict": None, "examples": len(run_examples), "run_examples": len(run_examples),
                             "paired": False}
            notes.append(name)
    note = ""
    if notes:
        note = (f"the baseline was evaluated on other examples (another data version or split) for {', '.join(notes)}: "
                "means compared only, no interval and no verdict")
    return {"quality": quality, "paired": not notes, "note": note}


def show_value(name: str, value) -> str:
    if value is None:
        return "-"
    return f"{value:.1%}" if name in PERCENT else f"{value:.4g}"


def show_change(name: str, q: dict) -> str:
    """The delta and its 95% interval: `+0.636 [+0.51, +0.77]`, rates in points."""
    show = (lambda v: f"{v * 100:+.1f} pts") if name in PERCENT else (lambda v: f"{v:+.4g}")
    text = show(q["delta"])
    if q.get("ci95"):
        text += f" [{show(q['ci95'][0])}, {show(q['ci95'][1])}]"
    return text


def scope(q: dict) -> str:
    """Which examples a comparison's two figures are means over."""
    if not q.get("paired"):
        return "each run's own examples (not paired)"
    shared, total = q.get("examples"), q.get("run_examples")
    if total and shared and total > shared:  # then they differ from this run's headline mean
        return f"the {shared} examples both runs share (of this run's {total})"
    return f"the {shared} examples both runs share"


def quality_line(name: str, q: dict, verdict: str | None = None) -> str:
    """`  eval_loss  on the 40 examples both runs share (of this run's 52): 3.594 vs 2.958 (baseline), +0.636 [...]: worse`"""
    return (f"  {name:<16} on {scope(q)}: {show_value(name, q['value'])} vs {show_value(name, q['baseline'])} (baseline), "
            f"{show_change(name, q)}: {verdict or q['verdict'] or 'means only'}")


def read_examples(path: str | Path) -> dict | None:
    path = Path(path)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def download_examples(client, run_id: str, dst: str | Path) -> dict | None:
    """A run's eval_examples.json from MLflow; None when the run has none (evaluated before it existed)."""
    if not any(f.path == EXAMPLES_FILE for f in client.list_artifacts(run_id)):
        return None
    return read_examples(client.download_artifacts(run_id, EXAMPLES_FILE, str(dst)))


def side_by_side(run_table: dict, base_table: dict | None, count: int = 3) -> list[dict]:
    """The first `count` held-out prompts: this run's answer, the baseline's, the reference."""
    base_answers = {row["id"]: row["answer"] for row in (base_table or {}).get("answers", [])}
    rows = []
    for row in run_table.get("answers", [])[:count]:
        rows.append({"prompt": row["prompt"], "answer": row["answer"], "baseline": base_answers.get(row["id"]),
                     "reference": row["reference"]})
    return rows
