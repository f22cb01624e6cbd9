"""What fits on each GPU: params.yaml's memory-relevant settings, the micro-batch and
checkpointing (and host offloading) the trainer would pick there (model/fit.py probes the
same choices on the GPU), alone or as one of several (DDP, FSDP), within the GPU's memory and
the pinned host RAM the machine can spare; and the longest row that fits."""

from __future__ import annotations

from dataclasses import replace

from ...config import Params
from ...model import attention, loading
from .gpus import GPU, SAFETY_MARGIN, usable_gib
from .memory import GIB, TrainSetup, per_rank_memory
from .shapes import ModelShape


def base_setup(params: Params) -> TrainSetup:
    """The memory-relevant settings of params.yaml (micro-batch and checkpointing vary per GPU)."""
    targets = params.lora.target_modules
    return TrainSetup(
        method=params.model.method,
        lora_r=params.lora.r,
        targets=targets if isinstance(targets, str) else tuple(targets),
        dropout=params.lora.dropout,
        seq_len=params.data.max_length,
        # flash-attn is not a dependency: plan for SDPA unless it was asked for by name, and for
        # varlen beyond attention.LONG_ROW_TOKENS, as training switches to it there.
        attention=attention.planned(params.model.attn_implementation, params.data.max_length),
        # Liger on `auto` depends on the GPU machine's packages: planned as loss.py's chunked loss.
        # A preference objective takes its tokens' log-probabilities from the same chunked forward
        # (model/logps.py); Liger's forward gives it the whole logits instead: planned as transformers'.
        loss=("fused" if params.train.liger_kernels is True and params.train.objective == "sft"
              else "hf" if params.train.liger_kernels is True or not params.train.chunked_loss
              else "chunked"),
        dtype_bytes=4 if params.model.dtype == "float32" else 2,
        optimizer=params.train.optimizer,
    )


def choose_fit(shape: ModelShape, setup: TrainSetup, params: Params, gpu: GPU, world: int = 1,
               sharded: bool = False, host_limit: float | None = None) -> dict:
    """Micro-batch and checkpointing on `gpu`, one of `world` GPUs (`sharded`: FSDP), as the
    trainer's `largest_that_fits` picks them.

    `auto` micro-batch: the largest divisor of this GPU's share of global_batch that fits (1
    under FSDP, as the trainer does there); `auto` checkpointing: only when not even one row
    fits without it, then on a quarter, a half or three quarters of the layers with one row,
    then on all of them. Offloading fits only when its pinned host RAM is within `host_limit`
    bytes per GPU (None: not checked).
    """
    wanted, checkpointing = params.train.micro_batch, params.train.gradient_checkpointing
    offloading = params.train.offload_activations
    if offloading is True:
        checkpointing = True
    batch = max(1, params.train.global_batch // world)
    sizes = [wanted] if wanted != "auto" else [1] if sharded else [m for m in range(batch, 0, -1) if batch % m == 0]
    layers = shape.layers
    trials = []  # (micro_batch, fraction of layers checkpointed, offload), in the trainer's order (fit.py)
    if checkpointing is not True:
        trials += [(m, 0.0, False) for m in sizes]
    if checkpointing == "auto":
        trials += [(min(sizes), count / layers, False) for count in loading.partial_checkpointing(layers)]
    if checkpointing is not False:
        if offloading is not True:
            trials += [(m, 1.0, False) for m in sizes]
        if offloading is not False:
            trials += [(m, 1.0, True) for m in sizes]
    limit = usable_gib(gpu) * GIB
    host_short = None  # the last trial that fitted the GPU but not the host
    for micro_batch, fraction, offloaded in trials:
        trial = replace(setup, micro_batch=micro_batch, checkpointing=fraction, offload=offloaded)
        memory = per_rank_memory(shape, trial, world, sharded)
        if memory.total <= limit and host_limit is not None and memory.host_offloaded > host_limit:
            host_short = memory
        elif memory.total <= limit:
            return {"fits": True, "setup": trial, "memory": memory}
    if host_short is not None:
        reason = (f"fits {gpu.name}'s memory only with layer inputs in {host_short.host_offloaded / GIB:.1f} GiB of pinned "
                  f"host RAM per GPU; the machine can spare {max(0.0, host_limit) / GIB:.1f} GiB per GPU")
        return {"fits": False, "setup": trial, "memory": memory, "reason": reason, "host_bound": True}
    with_ckpt = ("with" if trial.checkpointing else "without") + " gradient checkpointing"
    if trial.offload:
        with_ckpt += " and activations in host RAM"
    reason = (
        f"needs ~{memory.total / GIB:.1f} GiB at micro_batch {trial.micro_batch} {with_ckpt}; "
        f"{gpu.name} has {gpu.memory_gib:.1f} GiB, {usable_gib(gpu):.1f} usable with a {round(SAFETY_MARGIN * 100)}% margin"
    )
    return {"fits": False, "setup": trial, "memory": memory, "reason": reason}


def longest_row(shape: ModelShape, setup: TrainSetup, params: Params, gpu: GPU, step: int = 128,
                host_limit: float | None = None) -> dict:
    """The longest data.max_length (a multiple of `step` tokens) that fits `gpu` with one row per
    micro-batch and every lever params allows (checkpointing, host offloading, chunked loss,
    the attention training would use at that length), and never longer than the model's
    positions allow: its tokens (0 when not even `step` fit), which limit bound it ("memory",
    "host RAM" or "positions"), whether it offloads, and the pinned host RAM that takes, never more than
    `host_limit` bytes (the most any offer's machine can spare per GPU; None: not checked)."""
    one_row = params.model_copy(update={"train": params.train.model_copy(update={"micro_batch": 1})})

    def fit_at(tokens: int) -> dict:
        trial = replace(setup, seq_len=tokens, attention=attention.planned(params.model.attn_implementation, tokens))
        return choose_fit(shape, trial, one_row, gpu, host_limit=host_limit)

    def answer(tokens: int, bound: str) -> dict:
        if not tokens:
            return {"tokens": 0, "bound": bound, "offload_activations": False, "host_ram_gib": 0.0}
        best = fit_at(tokens)
        return {"tokens": tokens, "bound": bound, "offload_activations": best["setup"].offload,
                "host_ram_gib": round(best["memory"].host_offloaded / GIB, 2)}

    if shape.max_positions and fit_at(shape.max_positions)["fits"]:
        return answer(shape.max_positions, "positions")  # memory would allow more than the model can place
    ceiling = shape.max_positions or 2**24
    low, high = 0, step
    while high < ceiling and fit_at(high)["fits"]:  # double until it no longer fits, then bisect
        low, high = high, high * 2
    high = min(high, ceiling)
    while high - low > step:
        middle = (low + high) // 2 // step * step
        low, high = (middle, high) if fit_at(middle)["fits"] else (low, middle)
    # One step longer fails: on the GPU's memory, or on the host RAM its offloading would pin.
    return answer(low, "host RAM" if fit_at(low + step).get("host_bound") else "memory")
