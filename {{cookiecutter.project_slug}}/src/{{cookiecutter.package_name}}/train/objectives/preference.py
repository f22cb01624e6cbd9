"""The preference objective: a pair loss over chosen and rejected answers packed side by side.

The reference is the policy's own base with the adapter switched off (no second copy of the
model), computed in the step under no_grad and without dropout; or read from log-probabilities
computed once before training (reference.py): always so when the policy starts from
model.init_adapter, whose frozen weights are then the reference. SimPO and ORPO need none.

The loss of a step is the mean over the pairs of its global batch: each micro-batch adds its
pairs' losses divided by the global batch's pair count, as the supervised loss divides by the
global batch's trained tokens; the logged rewards, margin and accuracy are shares of their
global means the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .logps import count_pairs, sequence_logps
from .losses import LOSSES, REFERENCE_FREE


def split_pairs(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[rows, 2k] per-sequence values -> (chosen, rejected), each [rows, k]."""
    return values[:, 0::2], values[:, 1::2]


def pair_terms(logps: torch.Tensor, counts: torch.Tensor, reference: torch.Tensor | None, loss: str, beta: float, gamma: float):
    """(loss, chosen reward, rejected reward) of every whole pair in the rows, flat, in row order."""
    chosen, rejected = split_pairs(logps)
    n_chosen, n_rejected = split_pairs(counts)
    whole = (n_chosen > 0) & (n_rejected > 0)  # the padding's slot is no pair
    ref_chosen, ref_rejected = (t[whole] for t in split_pairs(reference)) if reference is not None else (None, None)
    return LOSSES[loss](chosen[whole], rejected[whole], ref_chosen, ref_rejected, n_chosen[whole], n_rejected[whole], beta, gamma)


@dataclass
class PairObjective:
    loss_name: str
    beta: float
    gamma: float
    unwrap: object  # model -> the PeftModel (its adapter is switched off for the reference)
    precomputed: torch.Tensor | None = None  # [train rows, sequences] reference log-probabilities

    @property
    def needs_reference(self) -> bool:
        return self.loss_name not in REFERENCE_FREE

    def items(self, rows: dict, batch_rows: list[int]) -> int:
        """What the global batch's loss is divided by: its whole pairs."""
        return count_pairs(rows["position_ids"][batch_rows], rows["labels"][batch_rows])

    def reference_logps(self, model, batch: dict, micro: list[int], sequences: int) -> torch.Tensor | None:
        if not self.needs_reference:
            return None
        if self.precomputed is not None:
            return self.precomputed[micro, :sequences].to(batch["input_ids"].device)
        return adapter_off_logps(model, self.unwrap(model), batch, sequences)

    def loss(self, model, batch: dict, micro: list[int], items: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logps, counts = sequence_logps(model, batch)
        reference = self.reference_logps(model, batch, micro, logps.shape[1])
        losses, reward_chosen, reward_rejected = pair_terms(logps, counts, reference, self.loss_name, self.beta, self.gamma)
        reward_chosen, reward_rejected = reward_chosen.detach(), reward_rejected.detach()
        stats = {
            "reward_chosen": reward_chosen.sum() / items,
            "reward_rejected": reward_rejected.sum() / items,
            "reward_margin": (reward_chosen - reward_rejected).sum() / items,
            "preference_accuracy": (reward_chosen > reward_rejected).float().sum() / items,
        }
        return losses.sum() / items, stats


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


def held_out_metrics(model, peft_model, rows: dict, loss: str, beta: float, gamma: float, micro_batch: int, device,
                     boundaries: bool = False) -> dict:
    """Preference accuracy, mean reward margin and mean loss over every pair of `rows` (e.g. the
    validation split), with the adapter-off reference; no gradients, no dropout."""
    from ...model.batch import to_device

    was_training = peft_model.training
    peft_model.eval()
    losses, margins, correct = [], [], []
    try:
        with torch.no_grad():
            for first in range(0, len(rows["input_ids"]), micro_batch):
                batch = to_device(rows, list(range(first, min(len(rows["input_ids"]), first + micro_batch))), device, boundaries)
                logps, counts = sequence_logps(model, batch)
                reference = adapter_off_logps(model, peft_model, batch, logps.shape[1]) if loss not in REFERENCE_FREE else None
                pair_loss, chosen, rejected = pair_terms(logps, counts, reference, loss, beta, gamma)
                losses.append(pair_loss)
                margins.append(chosen - rejected)
                correct.append((chosen > rejected).float())
    finally:
        peft_model.train(was_training)
    return {"preference_accuracy": float(torch.cat(correct).mean()), "reward_margin": float(torch.cat(margins).mean()),
            "preference_loss": float(torch.cat(losses).mean()), "pairs": int(sum(len(c) for c in correct))}
