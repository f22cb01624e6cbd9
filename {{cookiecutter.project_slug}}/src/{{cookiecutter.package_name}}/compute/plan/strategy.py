"""How to use a machine, and what it takes: one GPU; data parallel (DDP) over its k GPUs when the
model fits one; FSDP, which shards the frozen base (LoRA or QLoRA) over them, when it does not
or when that is faster; several nodes when one machine is not enough (the caller tries them).
For each: memory per GPU (memory.per_rank_memory), the host RAM the machine must have, and
hours with the communication that is not hidden behind compute (machines.COMMUNICATION).

Host RAM of a node: HOST_RESERVED_GIB for the system, HOST_PER_PROCESS_GIB for each training
process (Python, torch and the CUDA libraries, the prepared rows, the safetensors file being
read), the pinned layer inputs of offloading, and under FSDP the whole base once, as stored,
in the first process (accelerate's cpu_ram_efficient_loading reads it there and sends each
GPU its shard). Only HOST_USABLE of the listed RAM is planned for.
"""

from __future__ import annotations

from ...config import Params
from .fit import choose_fit
from .gpus import GPUS
from .machines import COLLECTIVE_LATENCY_S, DATA_PARALLEL_EFFICIENCY, Machine, collective_seconds
from .memory import GIB, TrainSetup, adapter_parameters, weight_bytes
from .shapes import ModelShape
from .speed import hours_on

HOST_RESERVED_GIB = 4.0
HOST_PER_PROCESS_GIB = 5.0
HOST_USABLE = 0.90

STRATEGY_NAMES = {"single": "1 GPU", "ddp": "DDP", "fsdp": "FSDP"}
ACCELERATE_CONFIGS = {"ddp": "configs/accelerate/ddp.yaml", "fsdp": "configs/accelerate/fsdp.yaml"}


def host_budget(machine: Machine) -> float | None:
    """Bytes of host RAM per node the plan may use; None when the offer does not list its RAM."""
    if machine.host_ram_gib is None:
        return None
    return (machine.host_ram_gib * HOST_USABLE - HOST_RESERVED_GIB) * GIB


def fixed_host_bytes(shape: ModelShape, setup: TrainSetup, machine: Machine, sharded: bool) -> float:
    """Host RAM of the first node before any offloading: its processes, and FSDP's loaded base."""
    held = machine.gpus * HOST_PER_PROCESS_GIB * GIB
    if sharded:
        held += weight_bytes(shape, setup)
    return held


def spare_host_per_gpu(shape: ModelShape, setup: TrainSetup, machine: Machine) -> float | None:
    """Pinned host RAM one GPU of `machine` may offload into, alone or under DDP."""
    budget = host_budget(machine)
    if budget is None:
        return None
    return (budget - fixed_host_bytes(shape, setup, machine, sharded=False)) / machine.gpus


def plan_machine(shape: ModelShape, setup: TrainSetup, params: Params, work: dict, machine: Machine) -> dict:
    """The cheapest way to run on `machine` (the fastest strategy that fits: the price per hour
    is the machine's whichever way it is used), or why nothing fits, as a plan entry."""
    entry = {"machine": machine.label, "gpu": machine.gpu, "gpus": machine.gpus, "nodes": machine.nodes,
             "interconnect": machine.interconnect, "host_ram_gib": machine.host_ram_gib, "fits": False}
    world, batch = machine.world, params.train.global_batch
    if batch % world:
        return {**entry, "reason": f"train.global_batch={batch} is not a multiple of its {world} GPUs"}
    budget = host_budget(machine)
    options, reasons = [], []
    for strategy in ("single",) if world == 1 else ("ddp", "fsdp"):
        sharded = strategy == "fsdp"
        fixed = fixed_host_bytes(shape, setup, machine, sharded)
        if budget is not None and fixed > budget:
            reasons.append(f"{STRATEGY_NAMES[strategy]} needs ~{fixed / GIB:.0f} GiB of host RAM before any offloading "
                           f"(processes{', the base loaded once' if sharded else ''}); the machine has "
                           f"{machine.host_ram_gib:.0f} GiB, {budget / GIB:.0f} usable")
            continue
        spare = None if budget is None else (budget - fixed) / machine.gpus
        fit = choose_fit(shape, setup, params, GPUS[machine.gpu], world, sharded, spare)
        if not fit["fits"]:
            reasons.append(f"{STRATEGY_NAMES[strategy]} {fit['reason']}")
            continue
        chosen, memory = fit["setup"], fit["memory"]
        options.append({
            **entry,
            "fits": True,
            "strategy": strategy,
            "accelerate_config": ACCELERATE_CONFIGS.get(strategy),
            "micro_batch": chosen.micro_batch,
            "gradient_checkpointing": chosen.checkpointing,
            "offload_activations": chosen.offload,
            "memory": memory.gib(),
            "peak_gib": round(memory.total / GIB, 2),
            "host_ram_needed_gib": round((fixed + memory.host_offloaded * machine.gpus) / GIB, 1),
            **time_on(machine, work, chosen, shape, sharded),
        })
    if not options:
        return {**entry, "reason": "; ".join(reasons)}
    return min(options, key=lambda option: option["hours"])


def time_on(machine: Machine, work: dict, setup: TrainSetup, shape: ModelShape, sharded: bool) -> dict:
    """Hours on `machine`: one GPU's compute split over its GPUs (at DATA_PARALLEL_EFFICIENCY),
    plus what communication adds. DDP all-reduces the adapter's gradients once per step. FSDP
    gathers every layer's weights before its forward and again before its backward, for every
    micro-batch; the next layer is fetched while this one computes, so only gathering slower
    than computing adds time."""
    one = hours_on(GPUS[machine.gpu], work, setup, shape)
    world = machine.world
    compute = one["compute_hours"] * 3600 / world / (DATA_PARALLEL_EFFICIENCY if world > 1 else 1.0)
    communication = 0.0
    if world > 1:
        gradients = adapter_parameters(shape, setup) * setup.adapter_bytes
        communication += work["steps"] * collective_seconds(machine, gradients, "all_reduce")
    if sharded:
        micro_steps = work["steps"] * max(1, work["global_batch"] // (world * setup.micro_batch))
        gather = 2 * (collective_seconds(machine, weight_bytes(shape, setup)) + shape.layers * COLLECTIVE_LATENCY_S)
        communication += micro_steps * max(0.0, gather - compute / micro_steps)
    seconds = compute + communication + one["setup_hours"] * 3600
    return {
        "compute_hours": round(compute / 3600, 4),
        "communication_hours": round(communication / 3600, 4),
        "setup_hours": round(one["setup_hours"], 4),
        "hours": round(seconds / 3600, 4),
    }
