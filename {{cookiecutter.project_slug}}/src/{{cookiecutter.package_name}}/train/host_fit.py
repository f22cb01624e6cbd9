"""On a CPU: the micro-batch and gradient checkpointing that fit the RAM that is free.

On a GPU, `micro_batch: auto` probes each choice with a real step and catches the
out-of-memory error (model/fit.py). On a CPU there is no such error to catch: a step that does
not fit makes the machine swap, or the kernel kills the trainer. So the choice comes from the
memory model the planner uses (compute/plan/memory.py), priced in the CPU's precision, against
the RAM the operating system says is available when training starts (MemAvailable; the loaded
model is already in use then, so what a step needs is only what comes on top of it):
activations kept for backward, the loss's peak, one layer's backward working set, and the
adapter's gradients and optimizer moments. The choices are tried in the GPU probe's order
(no checkpointing with the largest micro-batch first; then a quarter, a half, three quarters
of the layers with the smallest; then all of them) and the first whose estimate is within
RAM_SHARE of the free RAM wins.

The memory model was made for CUDA. On a CPU two more things count, both measured with
scripts/bench_cpu_memory.py (the README's table) and checked by tests/test_host_fit.py with a
real run's peak RSS: transformers maps the safetensors files, so the first step pages in the
whole frozen base (its bytes are counted as part of the step), and the step's first run adds
CPU_RUNTIME_BYTES of kernels' workspaces, allocator arenas and the modules loaded after the choice.
"""

from __future__ import annotations

from dataclasses import replace

from ..compute import plan
from ..config import ConfigError
from ..model import loading
from ..model.fit import Fit

GIB = 2**30
RAM_SHARE = 0.8  # of the available RAM: the estimate's error, and room for the rest of the machine
# Measured against the memory model (SmolLM2-135M, 256-token rows, 1 and 4 rows, with and without
# checkpointing; bench_cpu_memory.py): activations, backward work and optimizer state at up to
# 0.95x the model's, the loss at up to 2.3x (fp32 logits and their gradients, which the CPU
# allocator does not hand back between the loss and the backward pass: they add up).
CPU_FACTOR = 1.2  # on activations, backward working set, adapter and optimizer state
CPU_LOSS_FACTOR = 2.5  # on the loss's peak, added rather than overlapping the backward pass
# Workspaces and allocator arenas of the first step (measured ~256 MiB), and what the trainer
# imports after the choice (MLflow and its database layer: ~200 MiB in a real run).
CPU_RUNTIME_BYTES = 512 * 2**20


def available_ram() -> int:
    """Bytes the operating system can give without swapping (MemAvailable on Linux)."""
    import psutil

    return int(psutil.virtual_memory().available)


def process_ram() -> int:
    """This process's resident memory now (RSS)."""
    import psutil

    return int(psutil.Process().memory_info().rss)


def step_ram(shape, setup) -> float:
    """Bytes one training step adds on top of the loaded model, on a CPU: the memory model's
    activations, loss and optimizer state, the frozen weights paged in from their files, and
    the runtime's workspaces."""
    memory = plan.estimate_memory(shape, setup)
    kept = memory.adapter_and_optimizer + memory.activations + memory.backward_working_set
    return CPU_FACTOR * kept + CPU_LOSS_FACTOR * memory.logits_and_loss + memory.base_weights + CPU_RUNTIME_BYTES


def cpu_setup(base_config, params, dtype_bytes: int):
    """The planner's setup for this model and params.yaml, as the CPU runs it: no CUDA context,
    SDPA with the attention weights kept (eager-like), autocast only below fp32."""
    shape = plan.shape_from_config(base_config.to_dict(), params.model.base, "loaded model")
    setup = replace(plan.base_setup(params), dtype_bytes=dtype_bytes, autocast=dtype_bytes < 4,
                    attention="eager" if plan.base_setup(params).attention not in plan.UNMASKED_ATTENTION else "varlen")
    return shape, setup


def choose_cpu_fit(base_config, params, candidates: list[int], checkpointing: bool | str, dtype_bytes: int,
                   available: float) -> tuple[Fit, float]:
    """(the fastest Fit whose step needs at most RAM_SHARE x `available` bytes, its estimate).

    candidates: the micro-batches to try, largest first (one when params.yaml sets it);
    checkpointing: params.yaml's train.gradient_checkpointing (True, False or "auto")."""
    shape, setup = cpu_setup(base_config, params, dtype_bytes)
    layers = shape.layers
    trials: list[tuple[int, int]] = []  # (micro_batch, checkpointed layers), fastest first
    if checkpointing is not True:
        trials += [(m, 0) for m in candidates]
    if checkpointing == "auto":
        trials += [(candidates[-1], count) for count in loading.partial_checkpointing(layers)]
    if checkpointing is not False:
        trials += [(m, layers) for m in candidates]
    limit = RAM_SHARE * available
    for micro_batch, checkpointed in trials:
        need = step_ram(shape, replace(setup, micro_batch=micro_batch, checkpointing=checkpointed / layers))
        if need <= limit:
            return Fit(micro_batch, checkpointed), need
    smallest = "one row" if candidates[-1] == 1 else f"train.micro_batch={candidates[-1]} rows"
    raise ConfigError(
        f"not even {smallest} of data.max_length={params.data.max_length} tokens fits the free RAM: a step needs about "
        f"{need / GIB:.1f} GiB{' with every layer checkpointed' if checkpointing is not False else ''}, "
        f"{RAM_SHARE:.0%} of the {available / GIB:.1f} GiB available is {limit / GIB:.1f} GiB; lower data.max_length, "
        "free memory, or set compute.host_ram_gib if the machine has more to give"
    )
