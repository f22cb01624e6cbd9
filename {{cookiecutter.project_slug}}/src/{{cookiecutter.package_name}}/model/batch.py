"""One micro-batch of packed rows, moved to the training device."""

from __future__ import annotations

import torch

from . import attention

BATCH_KEYS = ("input_ids", "labels", "position_ids")


def to_device(rows: dict[str, torch.Tensor], index, device, boundaries: bool = False) -> dict:
    """One micro-batch on the device; with `boundaries`, also where each example starts
    (for varlen / flash attention, worked out here on the CPU)."""
    batch = {key: rows[key][index].long() for key in BATCH_KEYS}
    if boundaries:
        batch.update(attention.sequence_boundaries(batch["position_ids"]))
    on_device = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            if device.type == "cuda":
                # A copy from pageable memory first waits for the GPU to finish its queue; from
                # pinned memory it does not, so the CPU goes on queueing the next micro-batch.
                value = value.pin_memory()
            value = value.to(device, non_blocking=True)
        on_device[key] = value
    return on_device
