"""Under FSDP: the micro-batch and gradient checkpointing that the planner chose for this machine.

On one GPU (or under DDP) `auto` is probed with a real forward + backward per choice, and an
out-of-memory error only ends that probe (model/fit.py). Under FSDP the model fits only once it
is sharded, and an out-of-memory error on one GPU in the middle of a collective can leave the
others hanging: no probe is safe. So the choice is the planner's own (compute/plan/fit.py
`choose_fit`, sharded): the same memory model, on the memory this GPU reports, as one of
`world` processes. The plan that picked the machine and the run on it then agree: a 70B QLoRA
plan on four 24 GiB cards that needs checkpointing gets it.
"""

from __future__ import annotations

from ..compute import plan
from ..config import ConfigError
from ..model.fit import Fit


def choose_sharded_fit(base_config, params, world: int, gpu_name: str, gpu_memory_bytes: int) -> Fit:
    """The planner's micro-batch, checkpointed layers and offloading for one of `world` FSDP
    processes on a GPU of `gpu_memory_bytes` (what the driver reports as its total)."""
    shape = plan.shape_from_config(base_config.to_dict(), params.model.base, "loaded model")
    # Only the memory counts for the fit; speed and price fields are the planner's business.
    gpu = plan.GPU(gpu_name, gpu_memory_bytes / plan.GIB, 0.0, 0.0, 0.0, None)
    fit = plan.choose_fit(shape, plan.base_setup(params), params, gpu, world, sharded=True)
    if not fit["fits"]:
        raise ConfigError(f"FSDP over {world} GPUs: {fit['reason']}; lower data.max_length, or run on a machine with more or larger GPUs (`plan` lists those that fit)")
    setup = fit["setup"]
    return Fit(setup.micro_batch, round(setup.checkpointing * shape.layers), setup.offload)
