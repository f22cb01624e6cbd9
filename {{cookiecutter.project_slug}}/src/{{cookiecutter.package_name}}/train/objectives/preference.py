"""The preference objective: a pair loss over chosen and rejected answers packed side by side.

The reference is the policy's own base with the adapter switched off (no second copy of the
model), computed in the step under no_grad and without dropout; or read from log-probabilities
computed once before training (reference.py): always so when the policy starts from
model.init_adapter, whose frozen weights are then the reference. SimPO and ORPO need none.

The loss of a step is the mean over the pairs of its global batch: each micro-batch adds its
pairs' losses divided by the global batch's pair count, as the supervised loss divides by the
global batch's trained tokens; the logged rewards, margin and accuracy are shares of their
global means the same way. The pair scores (log-probabilities, rewards, the adapter-off
reference) live in model/pair_scores.py, shared with `evaluate`, and are re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...model.logps import count_pairs, sequence_logps
from ...model.pair_losses import REFERENCE_FREE
from ...model.pair_scores import adapter_off_logps, held_out_metrics, pair_terms, split_pairs

__all__ = ["PairObjective", "adapter_off_logps", "held_out_metrics", "pair_terms", "split_pairs"]


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
