"""Throughput accounting: FLOPs per token and model-FLOPs utilisation (MFU).

LoRA convention: the base is frozen, so a token costs 2N FLOPs forward plus 2N for the
activation gradients (no weight gradients), where N counts the base's matmul parameters.
Causal attention over a context of c tokens adds 2*L*d*c forward and twice that backward.
Recomputation from gradient checkpointing is not counted: MFU measures useful work.
"""

from __future__ import annotations

import torch

# Dense bf16 tensor-core peaks from the vendors' datasheets (FLOP/s, no sparsity).
PEAK_BF16_FLOPS = {
    "H200": 989.4e12,
    "H100": 989.4e12,  # SXM; the PCIe card is lower (756e12), matched first below
    "H100 PCIe": 756.0e12,
    "A100": 312.0e12,
    "L40S": 362.1e12,
    "L4": 121.0e12,
    "RTX 4090": 165.2e12,
}


def matmul_parameters(model) -> int:
    """Parameters of the base model's linear layers (LoRA matrices excluded)."""
    total = 0
    for name, module in model.named_modules():
        # bitsandbytes' Linear4bit subclasses nn.Linear: 4-bit bases are counted too.
        if isinstance(module, torch.nn.Linear) and "lora_" not in name:
            total += module.in_features * module.out_features
    return total


def flops_per_token(n_matmul: int, layers: int, hidden: int, context: float) -> float:
    return 4 * n_matmul + 6 * layers * hidden * context


def peak_flops(device: torch.device, override_tflops: float | None = None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key in sorted(PEAK_BF16_FLOPS, key=len, reverse=True):  # "H100 PCIe" before "H100"
        if key in name:
            return PEAK_BF16_FLOPS[key]
    return None
