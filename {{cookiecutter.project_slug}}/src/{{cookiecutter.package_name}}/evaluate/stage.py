"""The `evaluate` stage: validation loss and perplexity of the trained adapter -> metrics.json (DVC metrics)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from .. import data, modeling
from ..atomic import write_text_atomic
from ..tracking import log_to_training_run
from .answers import generate_answers, validation_loss


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

    prompts_file = Path(params.data.prepared_dir) / "held_out_prompts.jsonl"
    prompts = [json.loads(line) for line in prompts_file.read_text().splitlines()] if prompts_file.is_file() else []
    generations = generate_answers(model, modeling.load_tokenizer(str(adapter_dir)), prompts, params.eval.max_new_tokens, device)
    generations_path = out_dir / "generations.jsonl"
    write_text_atomic(generations_path, "".join(json.dumps(g, ensure_ascii=False) + "\n" for g in generations))

    table = {key: [g.get(key, "") for g in generations] for key in ("reference", "generated")}
    table["prompt"] = [json.dumps(g.get("messages", g.get("prompt")), ensure_ascii=False) for g in generations]
    run_id = log_to_training_run(
        params,
        {"eval_loss": metrics["eval_loss"], "perplexity": metrics["perplexity"]},
        [metrics_path, generations_path],
        step=params.train.max_steps,
        tables={"generations.json": table},
    )
    log(f"eval_loss {metrics['eval_loss']:.4f}, perplexity {metrics['perplexity']:.2f} on {tokens} tokens -> {metrics_path}")
    log(f"{len(generations)} held-out answers -> {generations_path}")
    if run_id:
        log(f"logged to MLflow run {run_id}")
    return metrics
