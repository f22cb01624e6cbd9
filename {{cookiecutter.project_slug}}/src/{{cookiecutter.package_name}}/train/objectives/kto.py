"""The KTO objective: unpaired answers labelled desirable or undesirable (Ethayarajh et al., 2024).

Rows come from data/kto.py: per record, sequence 2k is its answer and sequence 2k + 1 the same
prompt with another record's answer (a mismatched completion); the labels are read beside the
rows. With r = log pi(y|x) - log pi_ref(y|x) (summed over the answer's trained tokens) and the
reference the adapter switched off (or precomputed, as for the pair losses), we follow TRL's
KTOTrainer (loss_type "kto"):

  z     = the KL reference point: the mean over the micro-batch's mismatched sequences of
          log pi(y'|x) - log pi_ref(y'|x), clamped at 0 and without gradient
  loss  = desirable_weight   * (1 - sigmoid(beta * (r - z)))   for a desirable answer
          undesirable_weight * (1 - sigmoid(beta * (z - r)))   for an undesirable one

and the step's loss is the mean over its global batch's records, as the pair losses are. The
reference point is estimated per micro-batch (TRL's per-device batch); TRL also averages it over
the processes, here each process keeps its own estimate.

Logged (shares of the step's means): `kl` (z), `signed_reward` (beta * r, negated for the
undesirable answers: above 0 is the answer's label's side) and `label_accuracy` (the share on it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...model.logps import count_pairs, sequence_logps
from ...model.pair_scores import adapter_off_logps


def kto_terms(logps: torch.Tensor, reference: torch.Tensor, labels: torch.Tensor, beta: float,
              desirable_weight: float, undesirable_weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, reward) of every record of the rows, flat in row order, and the KL reference point.

    logps, reference: [rows, 2k] per-sequence log-probabilities; labels: [rows, k] 1 / 0, -1 for no record."""
    present = labels >= 0
    ratios = (logps - reference)[:, 0::2][present]
    kl_ratios = (logps - reference)[:, 1::2][present]
    desirable = labels[present] == 1
    kl = kl_ratios.mean().detach().clamp(min=0) if len(kl_ratios) else logps.new_zeros(())
    losses = torch.where(desirable, desirable_weight * (1 - torch.sigmoid(beta * (ratios - kl))),
                         undesirable_weight * (1 - torch.sigmoid(beta * (kl - ratios))))
    return losses, beta * ratios, kl


def slot_labels(labels: torch.Tensor, micro: list[int], slots: int) -> torch.Tensor:
    """The micro-batch's rows' labels, one per pair slot of its sequences (-1 where there is no record)."""
    rows = labels[micro]
    if rows.shape[1] >= slots:
        return rows[:, :slots]
    return torch.cat([rows, rows.new_full((len(micro), slots - rows.shape[1]), -1)], dim=1)


@dataclass
class KTOObjective:
    beta: float
    desirable_weight: float
    undesirable_weight: float
    unwrap: object  # model -> the PeftModel (its adapter is switched off for the reference)
    labels: torch.Tensor  # [train rows, most records in a row] int8: 1 desirable, 0 undesirable, -1 none
    precomputed: torch.Tensor | None = None  # [train rows, sequences] reference log-probabilities
    needs_reference: bool = True

    def items(self, rows: dict, batch_rows: list[int]) -> int:
        """What the global batch's loss is divided by: its records (each one a whole pair of sequences)."""
        return count_pairs(rows["position_ids"][batch_rows], rows["labels"][batch_rows])

    def loss(self, model, batch: dict, micro: list[int], items: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logps, _ = sequence_logps(model, batch)
        if self.precomputed is not None:
            reference = self.precomputed[micro, : logps.shape[1]].to(logps.device)
        else:
            reference = adapter_off_logps(model, self.unwrap(model), batch, logps.shape[1])
        labels = slot_labels(self.labels, micro, logps.shape[1] // 2).to(logps.device)
        losses, rewards, kl = kto_terms(logps, reference, labels, self.beta, self.desirable_weight, self.undesirable_weight)
        signed = torch.where(labels[labels >= 0] == 1, rewards, -rewards).detach()
        stats = {"kl": kl * len(losses) / items, "signed_reward": signed.sum() / items,
                 "label_accuracy": (signed > 0).float().sum() / items}
        return losses.sum() / items, stats
