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


@torch.no_grad()
def generate_answers(model, tokenizer, prompts: list[dict], max_new_tokens: int, device: torch.device) -> list[dict]:
    """Greedy answers to held-out prompts: a quick look at what the adapter learned."""
    data.ensure_chat_template(tokenizer)
    results = []
    for prompt in prompts:
        if "messages" in prompt:
            text = data.chat.render_prompt(tokenizer, prompt["messages"])  # as training rendered it
        else:
            text = prompt["prompt"]
        inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(device)
        output = model.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
        answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        results.append({**prompt, "generated": answer.strip()})
    return results


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
