"""The GPU table (memory, dense bf16 peak, an expected MFU, power, street price) and the memory
a plan may use on each."""

from __future__ import annotations

from dataclasses import dataclass

from ...model import flops

SAFETY_MARGIN = 0.10  # plan to use at most 90% of a GPU: estimates err, allocators fragment


@dataclass(frozen=True)
class GPU:
    """A GPU type as SkyPilot names it."""

    name: str
    memory_gib: float  # what the driver reports as total memory
    peak_bf16_tflops: float  # dense, no sparsity
    expected_mfu: float  # assumed model-FLOPs utilisation of a LoRA run (replace with yours)
    tdp_watts: float
    card_price_usd: float | None  # rough 2026 street price, for --owned; None: not sold alone


def _peak(perf_name: str, fallback: float) -> float:
    """flops.py's datasheet peak where it has one (one source of truth), else `fallback`."""
    peak = flops.PEAK_BF16_FLOPS.get(perf_name)
    return peak / 1e12 if peak else fallback


# The MFUs are assumptions: PEFT's MetaMathQA LoRA runs (unpacked, padded) reach ~25% on an
# L40S; packed rows do better. Large GPUs are harder to keep busy with small models.
GPUS = {
    gpu.name: gpu
    for gpu in (
        GPU("T4", 15.0, 65.0, 0.25, 70, None),  # 16 GB, fp16 only (no bf16): the cheapest spot GPU on most clouds
        GPU("L4", 22.5, _peak("L4", 121.0), 0.30, 72, 2500),
        GPU("A10G", 22.5, 70.0, 0.35, 300, None),  # AWS-only A10 variant at lower clocks
        GPU("A10", 22.5, 125.0, 0.35, 150, 3500),
        GPU("RTX4090", 24.0, _peak("RTX 4090", 165.2), 0.35, 450, 2000),
        GPU("L40S", 45.0, _peak("L40S", 362.1), 0.35, 350, 8000),
        GPU("A100", 39.5, _peak("A100", 312.0), 0.40, 400, None),
        GPU("A100-80GB", 79.2, _peak("A100", 312.0), 0.40, 400, 15000),
        GPU("H100", 79.6, _peak("H100", 989.4), 0.30, 700, 30000),
        GPU("H200", 140.4, _peak("H200", 989.4), 0.30, 700, 35000),
    )
}


def usable_gib(gpu: GPU) -> float:
    return gpu.memory_gib * (1 - SAFETY_MARGIN)
