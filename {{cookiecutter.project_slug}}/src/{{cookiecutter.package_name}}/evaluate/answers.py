"""Loss on the validation rows and greedy answers to the held-out prompts."""

from __future__ import annotations

import torch

from .. import data


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
            text = tokenizer.apply_chat_template(prompt["messages"], tokenize=False, add_generation_prompt=True)
        else:
            text = prompt["prompt"]
        inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(device)
        output = model.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
        answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        results.append({**prompt, "generated": answer.strip()})
    return results
