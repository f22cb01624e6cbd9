"""How a run fits on its GPU: the micro-batch, the gradient-checkpointed layers and host offloading.

What params.yaml sets is used as given; `auto` is probed on the GPU itself with one forward +
backward at full row length per candidate, fastest choice first (`largest_that_fits`). The
planner (`plan.choose_fit`) estimates the same choices before any GPU time is spent.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..config import ConfigError
from . import attention, loading
from .batch import to_device
from .offload import offload_layer_inputs


def fits(model, rows, micro_batch: int, device: torch.device) -> bool:
    """One forward + backward at full row length: does it fit in GPU memory?"""
    model.train()  # from_pretrained leaves the layers in eval mode, where nothing is checkpointed
    try:
        batch = to_device(rows, slice(0, micro_batch), device, attention.takes_sequence_boundaries(model.config))
        model(**batch, use_cache=False).loss.backward()
        return True
    except torch.cuda.OutOfMemoryError:
        return False
    finally:
        model.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()


class Fit(NamedTuple):
    micro_batch: int
    checkpointed: int  # decoder layers with gradient checkpointing (0: none)
    offloaded: bool = False  # checkpointed layers keep their inputs in host RAM (offload.py)


def choose_micro_batch(model, rows, params, per_process: int, device: torch.device, sharded: bool,
                       cpu_choice=None, sharded_choice=None) -> Fit:
    """Micro-batch, gradient-checkpointed layers and host offloading for this run.

    What is set is used as given. On a GPU, `auto` micro-batch or checkpointing probes what
    fits (`largest_that_fits`). On a CPU a step that does not fit is no error but swapping or
    the kernel's OOM killer, so nothing is probed: `cpu_choice(candidates, checkpointing)`
    estimates it against the free RAM (train/host_fit.py); without it, `auto` means
    min(4, per process) rows and no checkpointing. Under FSDP (`sharded`) the model only fits
    once it is sharded, and a probe there would run collectives that an out-of-memory error on
    one GPU could leave hanging: on a GPU `auto` is the planner's choice for this GPU's memory,
    `sharded_choice()` (train/sharded_fit.py); elsewhere 1 row and no checkpointing.
    `offload_activations: true` checkpoints every layer and offloads; `auto` offloads only when
    the probe finds nothing else fits.
    """
    cfg = params.train
    wanted, checkpointing, offload = cfg.micro_batch, cfg.gradient_checkpointing, cfg.offload_activations
    checkpointed = 0
    if checkpointing is True or offload is True:
        checkpointed = len(loading.decoder_layers(model))
        loading.checkpoint_layers(model, checkpointed)
    if offload is True:
        offload_layer_inputs(model, device)
        checkpointing = True
    candidates = [m for m in range(per_process, 0, -1) if per_process % m == 0] if wanted == "auto" else [wanted]
    offloaded = offload is True
    if sharded:
        if sharded_choice is not None and device.type == "cuda" and "auto" in (wanted, checkpointing):
            fit = sharded_choice()
            loading.checkpoint_layers(model, fit.checkpointed)
            if fit.offloaded and not offloaded:
                offload_layer_inputs(model, device)
            return fit
        return Fit(candidates[-1], checkpointed, offloaded)
    if device.type != "cuda":
        if cpu_choice is not None and "auto" in (wanted, checkpointing):
            fit = cpu_choice(candidates, checkpointing)
            loading.checkpoint_layers(model, fit.checkpointed)
            return fit._replace(offloaded=offloaded)
        return Fit(next(m for m in candidates if m <= 4) if wanted == "auto" else wanted, checkpointed, offloaded)
    if wanted != "auto" and checkpointing != "auto":
        return Fit(wanted, checkpointed, offloaded)  # nothing left to choose
    return largest_that_fits(model, rows, candidates, checkpointing, device, offload=offload)


def largest_that_fits(model, rows, candidates: list[int], checkpointing: bool | str, device, offload: bool | str = "auto") -> Fit:
    """The fastest choice that fits, tried in this order.

    1. No checkpointing, the candidate micro-batches (divisors of the per-process batch, or
       the one set), largest first.
    2. With checkpointing `auto`, the smallest candidate with a quarter, a half, then three
       quarters of the layers checkpointed: each recomputes only what it must.
    3. Every layer checkpointed, the candidates largest first.
    4. With `offload` auto (or true), every layer checkpointed with its input in host RAM and
       its MLP in slices (offload.py), the candidates largest first.
    """
    layers = len(loading.decoder_layers(model))
    if checkpointing is not True:
        for micro_batch in candidates:
            if fits(model, rows, micro_batch, device):
                return Fit(micro_batch, 0)
    if checkpointing == "auto":
        for checkpointed in loading.partial_checkpointing(layers):
            loading.checkpoint_layers(model, checkpointed)
            if fits(model, rows, candidates[-1], device):
                return Fit(candidates[-1], checkpointed)
    if checkpointing is not False:
        loading.checkpoint_layers(model, layers)
        if offload is not True:
            for micro_batch in candidates:
                if fits(model, rows, micro_batch, device):
                    return Fit(micro_batch, layers)
        if offload is not False:
            offload_layer_inputs(model, device)
            for micro_batch in candidates:
                if fits(model, rows, micro_batch, device):
                    return Fit(micro_batch, layers, True)
            offload_layer_inputs(model, device, on=False)
    smallest = "one row" if candidates[-1] == 1 else f"train.micro_batch={candidates[-1]} rows"
    raise ConfigError(
        f"not even {smallest} of data.max_length={rows['input_ids'].shape[1]} tokens fits in GPU memory"
        f"{'' if checkpointing is not False else ' without gradient checkpointing'}"
        f"{' with activations in host RAM' if checkpointing is not False and offload is not False else ''}: lower "
        f"{'train.micro_batch or ' if candidates[-1] > 1 else ''}data.max_length"
        f"{', set train.gradient_checkpointing=auto' if checkpointing is False else ''}, or use model.method=qlora"
    )


def agree_on_micro_batch(fit: Fit, model, device) -> Fit:
    """Every process must split the batch the same way (else the gradient all-reduces of
    DDP would not pair up and the job would hang): the smallest micro-batch, with the most
    checkpointed layers (and offloading) any process needed."""
    import torch.distributed as dist

    choice = torch.tensor([-fit.micro_batch, fit.checkpointed, int(fit.offloaded)], device=device)
    dist.all_reduce(choice, op=dist.ReduceOp.MAX)
    agreed = Fit(int(-choice[0]), int(choice[1]), bool(choice[2]))
    if agreed.checkpointed != fit.checkpointed:
        loading.checkpoint_layers(model, agreed.checkpointed)
    if agreed.offloaded != fit.offloaded:
        offload_layer_inputs(model, device)
    return agreed
