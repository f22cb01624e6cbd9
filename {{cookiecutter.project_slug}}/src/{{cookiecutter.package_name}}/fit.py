"""How a run fits on its GPU: the micro-batch and the gradient-checkpointed layers.

What params.yaml sets is used as given; `auto` is probed on the GPU itself with one forward +
backward at full row length per candidate, fastest choice first (`largest_that_fits`). The
planner (`plan.choose_fit`) estimates the same choices before any GPU time is spent.
"""

from __future__ import annotations

import torch

from . import attention, modeling
from .batch import to_device
from .config import ConfigError


def fits(model, rows, micro_batch: int, device: torch.device) -> bool:
    """One forward + backward at full row length: does it fit in GPU memory?"""
    try:
        batch = to_device(rows, slice(0, micro_batch), device, attention.takes_sequence_boundaries(model.config))
        model(**batch, use_cache=False).loss.backward()
        return True
    except torch.cuda.OutOfMemoryError:
        return False
    finally:
        model.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()


def choose_micro_batch(model, rows, params, per_process: int, device: torch.device, sharded: bool) -> tuple[int, int]:
    """(micro_batch, number of gradient-checkpointed layers) for this run.

    What is set is used as given. On a GPU, `auto` micro-batch or checkpointing probes what
    fits (`largest_that_fits`). On a CPU, `auto` means min(4, per process) rows and no
    checkpointing. Under FSDP (`sharded`) the model only fits once it is sharded, and a probe
    there would run collectives that an out-of-memory error on one GPU could leave hanging:
    `auto` means 1 row and no checkpointing.
    """
    wanted, checkpointing = params.train.micro_batch, params.train.gradient_checkpointing
    checkpointed = 0
    if checkpointing is True:
        checkpointed = len(modeling.decoder_layers(model))
        modeling.checkpoint_layers(model, checkpointed)
    candidates = [m for m in range(per_process, 0, -1) if per_process % m == 0] if wanted == "auto" else [wanted]
    if sharded:
        return candidates[-1], checkpointed
    if device.type != "cuda":
        return next(m for m in candidates if m <= 4) if wanted == "auto" else wanted, checkpointed
    if wanted != "auto" and checkpointing != "auto":
        return wanted, checkpointed  # nothing left to choose
    return largest_that_fits(model, rows, candidates, checkpointing, device)


def largest_that_fits(model, rows, candidates: list[int], checkpointing: bool | str, device) -> tuple[int, int]:
    """(micro_batch, checkpointed layers): the fastest choice that fits, tried in this order.

    1. No checkpointing, the candidate micro-batches (divisors of the per-process batch, or
       the one set), largest first.
    2. With checkpointing `auto`, the smallest candidate with a quarter, a half, then three
       quarters of the layers checkpointed: each recomputes only what it must.
    3. Every layer checkpointed, the candidates largest first.
    """
    layers = len(modeling.decoder_layers(model))
    if checkpointing is not True:
        for micro_batch in candidates:
            if fits(model, rows, micro_batch, device):
                return micro_batch, 0
    if checkpointing == "auto":
        for checkpointed in modeling.partial_checkpointing(layers):
            modeling.checkpoint_layers(model, checkpointed)
            if fits(model, rows, candidates[-1], device):
                return candidates[-1], checkpointed
    if checkpointing is not False:
        modeling.checkpoint_layers(model, layers)
        for micro_batch in candidates:
            if fits(model, rows, micro_batch, device):
                return micro_batch, layers
    smallest = "one row" if candidates[-1] == 1 else f"train.micro_batch={candidates[-1]} rows"
    raise ConfigError(
        f"not even {smallest} of data.max_length={rows['input_ids'].shape[1]} tokens fits in GPU memory"
        f"{'' if checkpointing is not False else ' without gradient checkpointing'}: lower "
        f"{'train.micro_batch or ' if candidates[-1] > 1 else ''}data.max_length"
        f"{', set train.gradient_checkpointing=auto' if checkpointing is False else ''}, or use model.method=qlora"
    )


def agree_on_micro_batch(micro_batch: int, checkpointed: int, model, device) -> tuple[int, int]:
    """Every process must split the batch the same way (else the gradient all-reduces of
    DDP would not pair up and the job would hang): the smallest micro-batch, with the most
    checkpointed layers any process needed."""
    import torch.distributed as dist

    choice = torch.tensor([-micro_batch, checkpointed], device=device)
    dist.all_reduce(choice, op=dist.ReduceOp.MAX)
    if int(choice[1]) != checkpointed:
        modeling.checkpoint_layers(model, int(choice[1]))
    return int(-choice[0]), int(choice[1])
