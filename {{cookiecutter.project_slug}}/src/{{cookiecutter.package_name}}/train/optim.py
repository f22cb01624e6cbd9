"""The optimizer and the learning-rate schedule."""

from __future__ import annotations

import torch


def make_optimizer(name: str, parameters, lr: float, weight_decay: float, device: torch.device):
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay, fused=device.type == "cuda")
    import bitsandbytes as bnb

    optimizer = {"adamw_8bit": bnb.optim.AdamW8bit, "paged_adamw_8bit": bnb.optim.PagedAdamW8bit}[name]
    return optimizer(parameters, lr=lr, weight_decay=weight_decay)


def learning_rate_schedule(optimizer, params):
    from transformers import get_scheduler

    name = {"constant": "constant_with_warmup"}.get(params.train.lr_schedule, params.train.lr_schedule)
    return get_scheduler(name, optimizer, num_warmup_steps=params.train.warmup_steps, num_training_steps=params.train.max_steps)
