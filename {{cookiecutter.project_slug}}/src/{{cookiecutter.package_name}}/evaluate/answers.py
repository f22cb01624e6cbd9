"""Loss on the validation rows (per example) and greedy answers to the held-out prompts."""

from __future__ import annotations

import hashlib
import json

import torch

from .. import data


def example_key(*parts) -> str:
    """A short, stable id for an example: the same example in another run gets the same id,
    so two runs' scores can be paired even when the rows were packed in another order."""
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False, sort_keys=True).encode()).hexdigest()[:16]


@torch.no_grad()
def validation_loss(model, rows: dict[str, torch.Tensor], micro_batch: int, device: torch.device) -> tuple[float, int]:
    """Mean loss per trained token over all validation rows, and that token count."""
    per_example = validation_scores(model, rows, micro_batch, device)
    tokens = sum(e["tokens"] for e in per_example)
    return sum(e["loss_sum"] for e in per_example) / max(1, tokens), tokens


@torch.no_grad()
def validation_scores(model, rows: dict[str, torch.Tensor], micro_batch: int, device: torch.device) -> list[dict]:
    """Per packed example: summed loss, trained tokens and correctly predicted tokens.

    Packed examples restart their position ids at 0, which is where one ends and the next
    begins; each gets an id from its token ids (the same example in another run, same id)."""
    results = []
    for start in range(0, len(rows["input_ids"]), micro_batch):
        batch = {key: rows[key][start : start + micro_batch].long().to(device) for key in ("input_ids", "labels", "position_ids")}
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        # Token t predicts token t + 1, as in the training loss.
        logits, labels = logits[:, :-1].float(), batch["labels"][:, 1:]
        trained = labels != data.IGNORE
        losses = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), labels.clamp(min=0), reduction="none"
        ) * trained
        correct = (logits.argmax(-1) == labels) & trained
        for r in range(len(labels)):
            ids, positions = batch["input_ids"][r].tolist(), batch["position_ids"][r].tolist()
            starts = [i for i, p in enumerate(positions) if p == 0] + [len(positions)]
            for begin, end in zip(starts, starts[1:], strict=False):
                # Labels are shifted by one: the example's tokens begin..end-1 are labels begin-1..end-2.
                span = slice(max(begin - 1, 0), end - 1)
                tokens = int(trained[r, span].sum())
                if tokens == 0:  # padding, or an example with nothing to train on
                    continue
                results.append({
                    "id": example_key(ids[begin:end]),
                    "loss_sum": float(losses[r, span].sum()),
                    "tokens": tokens,
                    "correct": int(correct[r, span].sum()),
                })
    return results


def prompt_text(tokenizer, example: dict) -> str:
    if "messages" in example:
        return data.chat.render_prompt(tokenizer, example["messages"])  # as training rendered it
    return example["prompt"]


@torch.no_grad()
def generate_answers(model, tokenizer, prompts: list[dict], max_new_tokens: int, device: torch.device,
                     batch_size: int = 8) -> list[dict]:
    """Greedy answers to held-out prompts, `batch_size` prompts per `generate` call."""
    data.ensure_chat_template(tokenizer)
    tokenizer.padding_side = "left"  # generation continues every prompt from its last token
    results = []
    for start in range(0, len(prompts), batch_size):
        group = prompts[start : start + batch_size]
        inputs = tokenizer([prompt_text(tokenizer, p) for p in group], return_tensors="pt", padding=True,
                           add_special_tokens=False).to(device)
        output = model.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
        for prompt, tokens in zip(group, output[:, inputs["input_ids"].shape[1] :], strict=True):
            results.append({**prompt, "generated": tokenizer.decode(tokens, skip_special_tokens=True).strip()})
    return results
