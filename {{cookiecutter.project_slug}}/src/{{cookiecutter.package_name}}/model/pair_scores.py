"""Scores of preference pairs: the policy's and the reference's log-probabilities -> rewards.

Shared by training (the preference objective's loss and logged rewards) and `evaluate` (the
held-out pairs), so both read the same numbers. The reference is the same weights with the
adapter switched off (no second copy of the model); SimPO and ORPO need none.

Per held-out pair, `pair_scores` keeps:
  reward_chosen, reward_rejected  what the loss pushes apart (pair_losses.py): beta times the
                                  log-ratio to the reference, or beta times the mean log-probability
  reward_margin                   reward_chosen - reward_rejected; `correct`: it is above 0
  logp_margin                     the policy's mean log-probability per answer token, chosen minus
                                  rejected: no reference, no beta, so it compares runs of any loss
  loss                            the pair's loss
"""

from __future__ import annotations

import torch

from .batch import to_device
from .logps import sequence_logps
from .pair_losses import LOSSES, REFERENCE_FREE


def split_pairs(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[rows, 2k] per-sequence values -> (chosen, rejected), each [rows, k]."""
    return values[:, 0::2], values[:, 1::2]


def whole_pairs(counts: torch.Tensor) -> torch.Tensor:
    """[rows, k] bool: which pair slots hold a pair (the padding's slot does not)."""
    n_chosen, n_rejected = split_pairs(counts)
    return (n_chosen > 0) & (n_rejected > 0)


def pair_terms(logps: torch.Tensor, counts: torch.Tensor, reference: torch.Tensor | None, loss: str, beta: float, gamma: float):
    """(loss, chosen reward, rejected reward) of every whole pair in the rows, flat, in row order."""
    chosen, rejected = split_pairs(logps)
    n_chosen, n_rejected = split_pairs(counts)
    whole = whole_pairs(counts)
    ref_chosen, ref_rejected = (t[whole] for t in split_pairs(reference)) if reference is not None else (None, None)
    return LOSSES[loss](chosen[whole], rejected[whole], ref_chosen, ref_rejected, n_chosen[whole], n_rejected[whole], beta, gamma)


def adapter_off_logps(model, peft_model, batch: dict, sequences: int) -> torch.Tensor:
    """The reference: the same weights with the adapter switched off, no dropout, no gradient."""
    was_training = peft_model.training
    peft_model.eval()
    try:
        with torch.no_grad(), peft_model.disable_adapter():
            logps, _ = sequence_logps(model, batch, sequences)
    finally:
        peft_model.train(was_training)
    return logps


def pair_tokens(input_ids: torch.Tensor, position_ids: torch.Tensor, whole: torch.Tensor) -> list[tuple[list[int], list[int]]]:
    """(chosen token ids, rejected token ids) of every whole pair, in the order of `pair_terms`."""
    found = []
    for row in range(len(input_ids)):
        ids, positions = input_ids[row].tolist(), position_ids[row].tolist()
        starts = [i for i, p in enumerate(positions) if p == 0] + [len(positions)]
        spans = [ids[a:b] for a, b in zip(starts, starts[1:], strict=False)]
        for k in range(whole.shape[1]):
            if whole[row, k]:
                found.append((spans[2 * k], spans[2 * k + 1]))
    return found


def pair_scores(model, peft_model, rows: dict, loss: str, beta: float, gamma: float, micro_batch: int, device,
                boundaries: bool = False) -> list[dict]:
    """Every whole pair of `rows` (e.g. the validation split), scored as described above, with its
    chosen and rejected token ids (`tokens`); no gradients, no dropout."""
    was_training = peft_model.training
    peft_model.eval()
    scores = []
    try:
        with torch.no_grad():
            for first in range(0, len(rows["input_ids"]), micro_batch):
                index = list(range(first, min(len(rows["input_ids"]), first + micro_batch)))
                batch = to_device(rows, index, device, boundaries)
                logps, counts = sequence_logps(model, batch)
                reference = adapter_off_logps(model, peft_model, batch, logps.shape[1]) if loss not in REFERENCE_FREE else None
                losses, chosen, rejected = pair_terms(logps, counts, reference, loss, beta, gamma)
                whole = whole_pairs(counts)
                (c, r), (n_c, n_r) = split_pairs(logps), split_pairs(counts)
                logp_margin = c[whole] / n_c[whole] - r[whole] / n_r[whole]
                tokens = pair_tokens(rows["input_ids"][index], rows["position_ids"][index], whole.cpu())
                for i, pair in enumerate(tokens):
                    scores.append({
                        "tokens": pair, "loss": float(losses[i]), "reward_chosen": float(chosen[i]),
                        "reward_rejected": float(rejected[i]), "reward_margin": float(chosen[i] - rejected[i]),
                        "correct": float(chosen[i] > rejected[i]), "logp_margin": float(logp_margin[i]),
                    })
    finally:
        peft_model.train(was_training)
    return scores


def held_out_metrics(model, peft_model, rows: dict, loss: str, beta: float, gamma: float, micro_batch: int, device,
                     boundaries: bool = False) -> dict:
    """Preference accuracy, mean reward margin and mean loss over every pair of `rows`."""
    scores = pair_scores(model, peft_model, rows, loss, beta, gamma, micro_batch, device, boundaries)
    n = max(1, len(scores))
    return {"preference_accuracy": sum(s["correct"] for s in scores) / n,
            "reward_margin": sum(s["reward_margin"] for s in scores) / n,
            "preference_loss": sum(s["loss"] for s in scores) / n, "pairs": len(scores)}
