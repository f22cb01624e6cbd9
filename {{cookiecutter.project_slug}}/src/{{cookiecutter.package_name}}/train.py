"""The training recipe: LoRA / QLoRA / DoRA fine-tuning of a causal LM, top to bottom.

    setup   model + adapter, packed data, optimizer, schedule, MLflow run
    train   for each step: global batch -> micro-batches -> backward -> clip -> step
    save    the adapter (PEFT format) and the tokenizer, written atomically

Features: packed rows without cross-example attention; loss normalised by the number of
trained tokens in the whole global batch (so gradient accumulation and multi-GPU give the
same update as one big batch); the sample order is a pure function of (seed, step), so a
run can be resumed at any step; tokens/s, cost and GPU-hours logged live.
"""

from __future__ import annotations

import csv
import functools
import math
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from . import data, modeling
from .atomic import atomic_dir
from .cost import CostMeter
from .tracking import Tracker


@functools.lru_cache(maxsize=4)
def epoch_order(n_rows: int, seed: int, epoch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n_rows, generator=generator)


def rows_for_step(step: int, global_batch: int, n_rows: int, seed: int) -> list[int]:
    """Row indices of one optimizer step: consecutive slices of per-epoch shuffles."""
    rows = []
    for k in range(step * global_batch, (step + 1) * global_batch):
        epoch, position = divmod(k, n_rows)
        rows.append(int(epoch_order(n_rows, seed, epoch)[position]))
    return rows


def learning_rate_schedule(optimizer, params):
    from transformers import get_scheduler

    name = {"constant": "constant_with_warmup"}.get(params.train.lr_schedule, params.train.lr_schedule)
    return get_scheduler(name, optimizer, num_warmup_steps=params.train.warmup_steps, num_training_steps=params.train.max_steps)


def train(params, log=print) -> Path:
    """Train an adapter; returns the directory it was saved to."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    cfg = params.train
    device = modeling.resolve_device(params.compute.device)
    dtype = modeling.resolve_dtype(params.model.dtype, device)
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "no")
    accelerator = Accelerator(mixed_precision=precision, cpu=device.type == "cpu")
    world, rank = accelerator.num_processes, accelerator.process_index
    if cfg.global_batch % (cfg.micro_batch * world):
        raise ValueError(f"train.global_batch={cfg.global_batch} is not a multiple of micro_batch x processes")
    accumulation = cfg.global_batch // (cfg.micro_batch * world)

    # ------------------------------------------------------------------ setup
    set_seed(cfg.seed)
    tokenizer = modeling.load_tokenizer(params.model.base)
    model = modeling.add_adapter(modeling.load_base_model(params, accelerator.device), params)
    trainable, total = modeling.count_parameters(model)
    rows = data.load_prepared(params.data.prepared_dir, "train")
    n_rows = len(rows["input_ids"])
    trainable_params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable_params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, fused=accelerator.device.type == "cuda"
    )
    scheduler = learning_rate_schedule(optimizer, params)
    model, optimizer = accelerator.prepare(model, optimizer)

    is_main = accelerator.is_main_process
    meter = CostMeter(params.cost.hourly_usd, gpus=world if accelerator.device.type == "cuda" else 0)
    tracker = Tracker(params) if is_main else None
    if tracker:
        tracker.save_run_file(cfg.output_dir)
        tracker.mlflow.log_params({"trainable_parameters": trainable, "total_parameters": total, "processes": world})
    log(
        f"training {trainable:,} of {total:,} parameters ({params.model.method}) on {world}x {accelerator.device.type}; "
        f"{n_rows} rows, global batch {cfg.global_batch} = {cfg.micro_batch} x {accumulation} accumulation x {world} processes"
    )

    # ------------------------------------------------------------------ train
    loss_log: list[tuple[int, float]] = []
    window_tokens, window_start = 0, time.perf_counter()
    progress = tqdm(total=cfg.max_steps, desc="train", unit="step", disable=not is_main)
    status = "FAILED"
    try:
        for step in range(cfg.max_steps):
            batch_rows = rows_for_step(step, cfg.global_batch, n_rows, cfg.seed)
            labels = rows["labels"][batch_rows]
            # Normalise by the trained tokens of the whole global batch, not per micro-batch.
            trained_tokens = int((labels != data.IGNORE).sum())
            my_rows = batch_rows[rank * cfg.micro_batch * accumulation : (rank + 1) * cfg.micro_batch * accumulation]

            model.train()
            step_loss = torch.zeros((), device=accelerator.device)
            for i in range(accumulation):
                micro = my_rows[i * cfg.micro_batch : (i + 1) * cfg.micro_batch]
                batch = {key: rows[key][micro].long().to(accelerator.device) for key in ("input_ids", "labels", "position_ids")}
                # Gradients are all-reduced only on the last micro-batch of the step.
                sync = nullcontext() if i == accumulation - 1 else accelerator.no_sync(model)
                with sync:
                    # use_cache=False: with no KV cache, position ids give the block-diagonal mask.
                    out = model(**batch, use_cache=False, num_items_in_batch=trained_tokens)
                    # DDP averages gradients over processes; the loss is already a share of
                    # the global batch, so scale back to a plain sum.
                    accelerator.backward(out.loss * world)
                step_loss += out.loss.detach()
                window_tokens += int(rows["real_tokens"][micro].sum())

            grad_norm = accelerator.clip_grad_norm_(trainable_params, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            done = step + 1
            if done % cfg.log_every_steps == 0 or done == cfg.max_steps:
                loss = accelerator.reduce(step_loss, "sum").item()
                tokens = accelerator.reduce(torch.tensor(window_tokens, device=accelerator.device), "sum").item()
                tokens_per_second = tokens / max(1e-9, time.perf_counter() - window_start)
                window_tokens, window_start = 0, time.perf_counter()
                if not math.isfinite(loss):
                    raise FloatingPointError(f"loss is {loss} at step {done}; lower train.learning_rate")
                loss_log.append((done, loss))
                progress.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_per_second:,.0f}")
                if tracker:
                    tracker.log(
                        done,
                        loss=loss,
                        learning_rate=scheduler.get_last_lr()[0],
                        grad_norm=float(grad_norm),
                        tokens_per_second=tokens_per_second,
                        cost_usd=meter.cost_usd,
                        gpu_hours=meter.gpu_hours,
                    )
            progress.update(1)
        status = "FINISHED"
    finally:
        progress.close()
        if tracker and status != "FINISHED":
            tracker.finish(status)

    # ------------------------------------------------------------------ save
    adapter_dir = Path(cfg.output_dir) / "adapter"
    if is_main:
        save_adapter(accelerator.unwrap_model(model), tokenizer, adapter_dir)
        write_loss_csv(loss_log, Path(cfg.output_dir) / "train_loss.csv")
        tracker.log(cfg.max_steps, cost_usd=meter.cost_usd, gpu_hours=meter.gpu_hours)
        tracker.mlflow.log_metrics({"train_runtime_s": meter.hours * 3600, "final_loss": loss_log[-1][1]})
        tracker.finish()
        log(f"adapter saved to {adapter_dir} (MLflow run {tracker.run_id})")
    accelerator.wait_for_everyone()
    return adapter_dir


def save_adapter(model, tokenizer, adapter_dir: Path) -> None:
    """PEFT's standard adapter format plus the tokenizer, swapped in atomically."""
    with atomic_dir(adapter_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def write_loss_csv(loss_log: list[tuple[int, float]], path: Path) -> None:
    """The loss curve as a DVC plot (`dvc plots show`)."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "loss"])
        writer.writerows((step, f"{loss:.6f}") for step, loss in loss_log)
