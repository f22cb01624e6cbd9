"""What a preference step costs beyond a supervised one on the same rows (for `plan`).

A preference row holds both answers of its pairs, so "both completions" is already in the
rows' tokens. What is added is the reference: one more forward pass over every token
(2 x matmul parameters + attention, no backward) for the losses that have one, unless its
log-probabilities are precomputed (`train.precompute_reference`, or `model.init_adapter`,
where they are computed once over the training rows: one forward per row, not per step).
SimPO and ORPO have no reference. Memory: as a supervised step's on the same rows, since
the tokens' log-probabilities come from the chunked forward (model/loss.py); with Liger's
forward or train.chunked_loss=false the whole fp32 logits are held, and planned so.
"""

from __future__ import annotations

REFERENCE_FREE_LOSSES = ("simpo", "orpo")


def reference_forward_per_step(objective: str, loss: str, precomputed: bool) -> bool:
    """Does every step run the reference forward (adapter off) over its rows?"""
    # kto: always a reference (its loss does not take train.preference_loss)
    return (objective == "kto" or objective == "dpo" and loss not in REFERENCE_FREE_LOSSES) and not precomputed


def reference_flops_per_token(objective: str, loss: str, precomputed: bool, forward_flops_per_token: float) -> float:
    """FLOPs per trained-row token that the reference adds to a step (0 for supervised or reference-free runs)."""
    return forward_flops_per_token if reference_forward_per_step(objective, loss, precomputed) else 0.0

