"""One optimizer step, and which rows it trains on.

The sample order is a pure function of (seed, step): consecutive slices of per-epoch
shuffles. A run resumed at any step reads exactly the rows an uninterrupted run would.
"""

from __future__ import annotations

import functools
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from ..model import attention
from ..model.batch import to_device
from .session import Session


@functools.lru_cache(maxsize=4)
def epoch_order(n_rows: int, seed: int, epoch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n_rows, generator=generator)


def rows_for_step(step: int, global_batch: int, n_rows: int, seed: int) -> list[int]:
    """Row indices of one optimizer step: consecutive slices of per-epoch shuffles."""
    rows = []
    for k in range(step * global_batch, (step + 1) * global_batch):
        epoch, position = divmod(k, n_rows)
        rows.append(int(epoch_order(n_rows, seed, epoch)[position]))
    return rows


@dataclass
class StepResult:
    batch_rows: list[int]  # the global batch, every process
    loss: torch.Tensor  # this process's share of the global mean loss (sum over processes = loss)
    grad_norm: torch.Tensor
    real_tokens: int  # non-padding tokens this process trained on
    metrics: dict = field(default_factory=dict)  # the objective's own (rewards, accuracy): this process's shares of their means


def train_step(s: Session, step: int) -> StepResult:
    """One optimizer step: the global batch -> this process's micro-batches -> update."""
    cfg = s.params.train
    batch_rows = rows_for_step(step, cfg.global_batch, s.n_rows, cfg.seed)
    # Normalise by the whole global batch (its trained tokens, or its pairs), not per micro-batch.
    items = s.objective.items(s.rows, batch_rows)
    rank = s.accelerator.process_index
    my_rows = batch_rows[rank * s.per_process : (rank + 1) * s.per_process]

    s.model.train()
    step_loss = torch.zeros((), device=s.device)
    metrics: dict[str, torch.Tensor] = {}
    for i in range(s.accumulation):
        micro = my_rows[i * s.micro_batch : (i + 1) * s.micro_batch]
        batch = to_device(s.rows, micro, s.device, attention.takes_sequence_boundaries(s.base_config))
        # Gradients are all-reduced only on the last micro-batch of the step.
        sync = nullcontext() if i == s.accumulation - 1 else s.accelerator.no_sync(s.model)
        with sync:
            # use_cache=False (inside the objective): with no KV cache, position ids give the block-diagonal mask.
            loss, shares = s.objective.loss(s.model, batch, micro, items)
            # DDP averages gradients over processes; the loss is already a share of the
            # global batch, so scale back to a plain sum.
            s.accelerator.backward(loss * s.world)
        step_loss += loss.detach()
        for name, share in shares.items():
            metrics[name] = metrics.get(name, 0) + share

    # All parameters (the frozen ones have no gradient): accelerate's FSDP clipping expects them all.
    grad_norm = s.accelerator.clip_grad_norm_(s.model.parameters(), cfg.max_grad_norm)
    s.optimizer.step()
    s.scheduler.step()
    s.optimizer.zero_grad(set_to_none=True)
    return StepResult(batch_rows, step_loss, grad_norm, int(s.rows["real_tokens"][my_rows].sum()), metrics)
