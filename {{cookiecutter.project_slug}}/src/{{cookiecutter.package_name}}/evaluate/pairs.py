"""Held-out preference pairs: does the adapter prefer the chosen answer, and by how much?

Run by `evaluate` when `prepare` made pairs (summary.json `"data": "pairs"`), on the validation
pairs, with the run's own `train.preference_loss`, `beta` and `simpo_gamma`:
  preference_accuracy  share of pairs whose chosen reward is above the rejected one
  reward_margin        mean chosen reward minus rejected reward, the reward as the loss defines it
                       (model/pair_scores.py): for sigmoid and IPO against the reference, the base
                       model with the adapter switched off; for SimPO and ORPO beta times the mean
                       log-probability per answer token (no reference)
  logp_margin          mean of the policy's log-probability per answer token, chosen minus rejected:
                       no reference and no beta, so runs with different losses or betas compare on it
  preference_loss      the mean pair loss
Each pair is kept in eval_examples.json (`pairs`) under an id made of its tokens, so compare.py
pairs two runs' pairs and bootstraps the differences as it does for the answers' scores.

With `model.init_adapter` the training reference was that adapter; here the reference is the
base with the adapter off, so for sigmoid / IPO the reward margin is against the base model.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..model.pair_losses import REFERENCE_FREE
from ..model.pair_scores import pair_scores
from .answers import example_key

METRICS = ("preference_accuracy", "reward_margin", "logp_margin")  # what compare.py pairs


def prepared_pairs(prepared_dir) -> bool:
    """Did `prepare` make preference pairs?"""
    summary = Path(prepared_dir) / "summary.json"
    return summary.is_file() and json.loads(summary.read_text()).get("data") == "pairs"


def score(params, model, rows: dict, micro_batch: int, device) -> tuple[dict, list[dict]]:
    """(means for metrics.json, one row per pair for eval_examples.json)."""
    cfg = params.train
    scored = pair_scores(model, model, rows, cfg.preference_loss, cfg.beta, cfg.simpo_gamma, micro_batch, device)
    table = [{"id": example_key(*s["tokens"]), "correct": s["correct"], "reward_margin": s["reward_margin"],
              "logp_margin": s["logp_margin"], "loss": s["loss"]} for s in scored]
    n = max(1, len(table))
    means = {
        "preference_accuracy": round(sum(p["correct"] for p in table) / n, 6),
        "reward_margin": round(sum(p["reward_margin"] for p in table) / n, 6),
        "logp_margin": round(sum(p["logp_margin"] for p in table) / n, 6),
        "preference_loss": round(sum(p["loss"] for p in table) / n, 6),
        "eval_pairs": len(table),
    }
    return means, table


def reference_note(params) -> str | None:
    if params.model.init_adapter and params.train.preference_loss not in REFERENCE_FREE:
        return ("note: the held-out reward margin is against the base model (adapter off), not the "
                f"initial adapter {params.model.init_adapter} that training used as its reference")
    return None
