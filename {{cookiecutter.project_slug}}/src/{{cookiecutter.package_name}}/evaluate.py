"""Validation loss and perplexity of the trained adapter -> metrics.json (DVC metrics)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from . import data, modeling
from .atomic import write_text_atomic
from .tracking import log_to_training_run


@torch.no_grad()
def validation_loss(model, rows: dict[str, torch.Tensor], micro_batch: int, device: torch.device) -> tuple[float, int]:
    """Mean loss per trained token over all validation rows, and that token count."""
    total, tokens = 0.0, 0
    for start in range(0, len(rows["input_ids"]), micro_batch):
        batch = {key: rows[key][start : start + micro_batch].long().to(device) for key in ("input_ids", "labels", "position_ids")}
        n = int((batch["labels"] != data.IGNORE).sum())
        # num_items_in_batch=1 makes the model return the summed (not averaged) loss.
        total += model(**batch, use_cache=False, num_items_in_batch=1).loss.float().item()
        tokens += n
    return total / max(1, tokens), tokens


def evaluate(params, log=print) -> dict:
    out_dir = Path(params.train.output_dir)
    adapter_dir = out_dir / "adapter"
    if not (adapter_dir / "adapter_config.json").is_file():
        raise data.DataError(f"{adapter_dir}: no trained adapter; run `train` first")
    device = modeling.resolve_device(params.compute.device)
    model = modeling.load_trained(params, adapter_dir, device)
    rows = data.load_prepared(params.data.prepared_dir, "val")
    loss, tokens = validation_loss(model, rows, params.train.micro_batch, device)
    metrics = {"eval_loss": round(loss, 6), "perplexity": round(math.exp(min(loss, 50)), 4), "eval_tokens": tokens}
    metrics_path = out_dir / "metrics.json"
    write_text_atomic(metrics_path, json.dumps(metrics, indent=2) + "\n")
    run_id = log_to_training_run(
        params, {"eval_loss": metrics["eval_loss"], "perplexity": metrics["perplexity"]}, [metrics_path], step=params.train.max_steps
    )
    log(f"eval_loss {metrics['eval_loss']:.4f}, perplexity {metrics['perplexity']:.2f} on {tokens} tokens -> {metrics_path}")
    if run_id:
        log(f"logged to MLflow run {run_id}")
    return metrics
