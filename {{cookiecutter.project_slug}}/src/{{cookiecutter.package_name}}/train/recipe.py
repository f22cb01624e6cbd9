"""The training recipe: LoRA / QLoRA / DoRA fine-tuning of a causal LM, top to bottom.

    setup   model + adapter, packed data, micro-batch, optimizer, schedule, MLflow run
    train   for each step: global batch -> micro-batches -> backward -> clip -> step
    save    the adapter (PEFT format) and the tokenizer, written atomically

Features
- packed rows without cross-example attention (position ids restart per example);
- loss normalised by the trained tokens of the whole global batch, so gradient
  accumulation and any number of GPUs give the update of one big batch;
- the sample order is a pure function of (seed, step): a run can resume at any step;
- single GPU, DDP or FSDP through `accelerate launch` (configs/accelerate/); checkpoints
  hold whole tensors, so a run may resume on another number of GPUs;
- the loss over chunks of the tokens, never the whole rows x tokens x vocabulary logits
  (loss.py), or Liger's fused linear cross-entropy when installed on a GPU;
- `micro_batch: auto` finds the largest micro-batch that fits, gradient checkpointing
  only when nothing fits without it (and on as few layers as will do), then layer inputs
  in host RAM (offload.py) for rows too long for the GPU (fit.py); Liger fused kernels
  when installed;
- optional regional torch.compile of the decoder layers (`train.compile`);
- AdamW (fused on GPU) or 8-bit / paged 8-bit AdamW from bitsandbytes;
- checkpoints every N steps / M minutes, on SIGTERM or SIGINT (a spot notice, Ctrl-C) and
  at the end; `resume="auto"` continues from the newest valid one, bitwise as if never
  interrupted (on CPU), in the same MLflow run, with the cost of every segment counted;
- a budget guard: crossing budget.max_run_usd saves a checkpoint and stops;
- loss, learning rate, grad norm, tokens/s, MFU, cost and GPU-hours logged live.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import math
import os
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import data
from ..atomic import atomic_dir
from ..compute.cost import CostMeter
from ..config import ConfigError, multi_gpu_problem
from ..model import attention, flops, loading, loss
from ..model.batch import to_device
from ..model.fit import agree_on_micro_batch, choose_micro_batch
from ..tracking import Tracker
from . import checkpoints


class Interrupted(Exception):
    """SIGTERM / SIGINT arrived; a checkpoint was saved. Exit code 75: safe to retry."""


class BudgetExceeded(Exception):
    """The run's cost crossed budget.max_run_usd; a checkpoint was saved. Exit code 3."""


class StopSignal:
    """Remembers a SIGTERM / SIGINT so the loop can checkpoint at the next step boundary."""

    def __init__(self):
        self.received: int | None = None
        self.previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, signum, frame):
        self.received = signum

    def restore(self):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


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


def machine_price(params, device: torch.device, world: int) -> tuple[float | None, str]:
    """USD per hour of the machine this run is on, and where that figure came from.

    cost.hourly_usd, else SkyPilot's catalog / the bundled snapshot for the cloud, region and
    GPU of a SkyPilot job, else, on your own GPU with cost.electricity_usd_per_kwh set, the
    measured power draw (NVML) times the electricity price; else unknown: 0 on your own
    machine, None on a cloud machine (its cost is then logged as unknown, not as $0).
    """
    from ..compute import prices

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    hourly, source = prices.resolve_hourly_price(params, device_name=device_name)
    kwh_price = params.cost.electricity_usd_per_kwh
    if source == "unknown" and device.type == "cuda" and kwh_price is not None:
        watts = prices.measured_gpu_watts() or 0.0
        return prices.energy_cost_per_hour(watts * world, kwh_price), f"energy: {watts:.0f} W x {world} GPU(s) at ${kwh_price}/kWh"
    return hourly, source


class SampleLog:
    """Audit trail of the rows each step trained on (TRAIN_SAMPLE_LOG=path): proves that a
    resumed run neither skips nor repeats data. One line per step, appended."""

    def __init__(self, path: str | None, start_step: int):
        self.file = open(path, "a") if path else None  # noqa: SIM115 - lives as long as the run
        if self.file:
            self.file.write(f"start {start_step}\n")
            self.file.flush()

    def record(self, step: int, rows: list[int]) -> None:
        if self.file:
            self.file.write(f"{step} {' '.join(map(str, rows))}\n")
            self.file.flush()


@dataclass
class Session:
    """What one training process holds: built by `setup`, advanced by `train_step`."""

    params: object
    accelerator: object
    model: torch.nn.Module
    base_config: object
    tokenizer: object
    optimizer: torch.optim.Optimizer
    scheduler: object
    rows: dict[str, torch.Tensor]
    micro_batch: int
    accumulation: int
    checkpointed_layers: int  # gradient checkpointing on this many decoder layers (0: none)
    offloaded: bool  # the checkpointed layers' inputs wait in host RAM (offload.py)
    loss: str  # chunked (loss.py) | fused (Liger) | transformers
    sharded: bool  # FSDP: every process holds a shard of the weights
    liger: bool
    compiled: bool  # torch.compile'd decoder layers
    dtype: torch.dtype
    token_flops: float
    trainable: int
    total: int
    summary: dict | None  # prepared data's summary.json (None for the benchmark's rows)

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def n_rows(self) -> int:
        return len(self.rows["input_ids"])

    @property
    def per_process(self) -> int:
        return self.params.train.global_batch // self.world


def check_distributed_type(accelerator, params) -> bool:
    """True under FSDP; a ConfigError for a launch config this method cannot use."""
    from accelerate.utils import DistributedType

    problem = multi_gpu_problem(accelerator.distributed_type.value, params.model.method)
    if problem:
        raise ConfigError(problem)
    return accelerator.distributed_type == DistributedType.FSDP


def setup(params, base=None, tokenizer=None, rows=None, mean_context: float | None = None) -> Session:
    """Model + adapter, data, micro-batch, optimizer and schedule, ready for `train_step`.

    `base`, `tokenizer`, `rows` and `mean_context` default to params.model.base and the
    prepared data; the benchmark passes a randomly initialised model and synthetic rows.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    cfg = params.train
    device = loading.resolve_device(params.compute.device)
    dtype = loading.resolve_dtype(params.model.dtype, device)
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "no")
    accelerator = Accelerator(mixed_precision=precision, cpu=device.type == "cpu")
    if cfg.global_batch % accelerator.num_processes:
        raise ConfigError(f"train.global_batch={cfg.global_batch} is not a multiple of the {accelerator.num_processes} processes")
    sharded = check_distributed_type(accelerator, params)
    device = accelerator.device

    set_seed(cfg.seed)
    if tokenizer is None and base is None:
        tokenizer = loading.load_tokenizer(params.model.base)
    if base is None:
        # Under FSDP the weights stay on the CPU: accelerate moves each GPU its shard.
        base = loading.load_base_model(params, device, to_device=not sharded)
    if params.model.attn_implementation == attention.VARLEN:
        attention.use_varlen(base, device, dtype)
    elif attention.for_long_rows(base, params.model.attn_implementation, params.data.max_length, device):
        attention.use_varlen(base, device, dtype, why=f"data.max_length={params.data.max_length} is too long for a T x T mask "
                             f"and neither flash-attn nor flex attention is loaded, so {attention.VARLEN} is needed: ")
    liger = loading.apply_liger_kernels(base, cfg.liger_kernels, device)
    loss_kind = "fused" if liger else "chunked" if cfg.chunked_loss and loss.use_chunked_loss(base) else "transformers"
    n_matmul = flops.matmul_parameters(base)
    model = loading.add_adapter(base, params)
    trainable, total = loading.count_parameters(model)
    summary = None
    if rows is None:
        rows = data.load_prepared(params.data.prepared_dir, "train")
        summary = json.loads((Path(params.data.prepared_dir) / "summary.json").read_text())
        mean_context = summary["train"]["mean_context"]
    per_process = cfg.global_batch // accelerator.num_processes
    fit = choose_micro_batch(model, rows, params, per_process, device, sharded)
    if accelerator.num_processes > 1 and "auto" in (cfg.micro_batch, cfg.gradient_checkpointing):
        fit = agree_on_micro_batch(fit, model, device)
    micro_batch, checkpointed = fit.micro_batch, fit.checkpointed

    trainable_params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(cfg.optimizer, trainable_params, cfg.learning_rate, cfg.weight_decay, device)
    scheduler = learning_rate_schedule(optimizer, params)
    # FSDP replaces the parameters by sharded ones (and points the optimizer at them).
    model, optimizer = accelerator.prepare(model, optimizer)
    # After the micro-batch probe (which measures eager memory) and after FSDP's wrapping.
    if cfg.compile and not loading.compile_decoder_layers(accelerator.unwrap_model(model)):
        raise ConfigError(f"train.compile=true: no decoder layers to compile were found in model type {base.config.model_type!r}")
    config = base.config
    return Session(
        params=params, accelerator=accelerator, model=model, base_config=config, tokenizer=tokenizer,
        optimizer=optimizer, scheduler=scheduler, rows=rows, micro_batch=micro_batch,
        accumulation=per_process // micro_batch, checkpointed_layers=checkpointed, offloaded=fit.offloaded, loss=loss_kind, sharded=sharded, liger=liger, compiled=cfg.compile, dtype=dtype,
        token_flops=flops.flops_per_token(n_matmul, config.num_hidden_layers, config.hidden_size, mean_context or 0.0),
        trainable=trainable, total=total, summary=summary,
    )


@dataclass
class StepResult:
    batch_rows: list[int]  # the global batch, every process
    loss: torch.Tensor  # this process's share of the global mean loss (sum over processes = loss)
    grad_norm: torch.Tensor
    real_tokens: int  # non-padding tokens this process trained on


def train_step(s: Session, step: int) -> StepResult:
    """One optimizer step: the global batch -> this process's micro-batches -> update."""
    cfg = s.params.train
    batch_rows = rows_for_step(step, cfg.global_batch, s.n_rows, cfg.seed)
    # Normalise by the trained tokens of the whole global batch, not per micro-batch.
    trained_tokens = int((s.rows["labels"][batch_rows] != data.IGNORE).sum())
    rank = s.accelerator.process_index
    my_rows = batch_rows[rank * s.per_process : (rank + 1) * s.per_process]

    s.model.train()
    step_loss = torch.zeros((), device=s.device)
    for i in range(s.accumulation):
        micro = my_rows[i * s.micro_batch : (i + 1) * s.micro_batch]
        batch = to_device(s.rows, micro, s.device, attention.takes_sequence_boundaries(s.base_config))
        # Gradients are all-reduced only on the last micro-batch of the step.
        sync = nullcontext() if i == s.accumulation - 1 else s.accelerator.no_sync(s.model)
        with sync:
            # use_cache=False: with no KV cache, position ids give the block-diagonal mask.
            out = s.model(**batch, use_cache=False, num_items_in_batch=trained_tokens)
            # DDP averages gradients over processes; the loss is already a share of the
            # global batch, so scale back to a plain sum.
            s.accelerator.backward(out.loss * s.world)
        step_loss += out.loss.detach()

    # All parameters (the frozen ones have no gradient): accelerate's FSDP clipping expects them all.
    grad_norm = s.accelerator.clip_grad_norm_(s.model.parameters(), cfg.max_grad_norm)
    s.optimizer.step()
    s.scheduler.step()
    s.optimizer.zero_grad(set_to_none=True)
    return StepResult(batch_rows, step_loss, grad_norm, int(s.rows["real_tokens"][my_rows].sum()))


def train(params, resume: str = "auto", log=print) -> Path:
    """Train an adapter; returns the directory it was saved to.

    resume: "auto" (newest valid checkpoint of this configuration), "never", or a path.
    """
    from tqdm.auto import tqdm

    cfg = params.train
    # ------------------------------------------------------------------ setup
    s = setup(params)
    accelerator, model, optimizer, scheduler = s.accelerator, s.model, s.optimizer, s.scheduler
    world, device, n_rows = s.world, s.device, s.n_rows
    if not accelerator.is_main_process:
        log = lambda *_: None  # noqa: E731 - one process speaks for all

    # --------------------------------------------------------------- resume
    summary = s.summary
    fingerprint = hashlib.sha256(json.dumps(summary, sort_keys=True).encode()).hexdigest()[:16]
    compat = checkpoints.compatibility(params, fingerprint)
    run_dir = Path(params.checkpoint.dir) / checkpoints.run_key(compat)
    restored = None
    # The main process picks (and verifies) the checkpoint once; the others are told which.
    choice = [checkpoints.resume_point(run_dir, resume, log) if accelerator.is_main_process else None]
    if world > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(choice)
    start_from = choice[0]
    unwrapped = accelerator.unwrap_model(model)  # the PeftModel (sharded in place under FSDP)
    if start_from is not None:
        restored = checkpoints.load(start_from, unwrapped, optimizer, scheduler, compat)
        log(f"resuming from {start_from} (step {restored.step})")
    start_step = restored.step if restored else 0
    if accelerator.is_main_process:  # room for checkpoint.keep + 1 checkpoints? Warn with the numbers if not.
        size = checkpoints.size_for_next(run_dir, checkpoints.estimate_size(unwrapped, cfg.optimizer))
        checkpoints.warn_if_short_of_space(run_dir, params.checkpoint.keep, size, log)
    recoveries = restored.state["recoveries"] + 1 if restored else 0
    segments_file = run_dir / checkpoints.SEGMENTS
    previous_segments = json.loads(segments_file.read_text()) if restored and segments_file.is_file() else []

    peak = flops.peak_flops(device, params.compute.peak_tflops)
    is_main = accelerator.is_main_process
    hourly_usd, price_source = machine_price(params, device, world)
    meter = CostMeter(hourly_usd, gpus=world if device.type == "cuda" else 0, previous=previous_segments, source=price_source)
    if meter.start_message(params.budget.max_run_usd):
        log(meter.start_message(params.budget.max_run_usd))
    tracker = None
    if is_main:
        resume_run_id = restored.state.get("mlflow_run_id") if restored else None
        tags = {"recoveries": str(recoveries), **meter.tags()}
        tracker = Tracker(params, run_dir / "mlflow-spool", resume_run_id=resume_run_id, extra_tags=tags)
        tracker.save_run_file(cfg.output_dir)
        if params.tracking.system_metrics:
            tracker.start_system_metrics(params.tracking.system_metrics_interval_s)
    estimate = None
    if tracker and device.type == "cuda":
        from ..compute import plan, prices

        gpu_name = prices.gpu_from_device_name(torch.cuda.get_device_name(device))
        estimate = plan.estimate_for_gpu(params, gpu_name, hourly_usd) if gpu_name else None
    if tracker and not restored:
        data_stats = summary["train"]
        tracker.log_params({
            "data.train_rows": data_stats["rows"], "data.train_examples": data_stats["examples"],
            "data.dropped_too_long": data_stats["dropped_too_long"], "data.dropped_no_labels": data_stats["dropped_no_labels"],
            "data.packing_efficiency": data_stats["packing_efficiency"],
            **(estimate or {}),
        })
        tracker.log_params({
            "trainable_parameters": s.trainable, "total_parameters": s.total, "processes": world,
            "resolved.micro_batch": s.micro_batch, "resolved.accumulation": s.accumulation,
            "resolved.checkpointed_layers": s.checkpointed_layers, "resolved.liger_kernels": s.liger,
            "resolved.offload_activations": s.offloaded, "resolved.loss": s.loss,
            "resolved.compile": s.compiled,
            "resolved.dtype": str(s.dtype).removeprefix("torch."), "flops_per_token": int(s.token_flops),
        })
    log(
        f"training {s.trainable:,} of {s.total:,} parameters ({params.model.method}) on {world}x {device.type}{' (FSDP)' if s.sharded else ''}; "
        f"{n_rows} rows, global batch {cfg.global_batch} = {s.micro_batch} x {s.accumulation} accumulation x {world} processes"
        f"{f', gradient checkpointing on {s.checkpointed_layers} of {s.base_config.num_hidden_layers} layers' if s.checkpointed_layers else ''}{', their inputs in host RAM' if s.offloaded else ''}, {s.loss} loss{', Liger kernels' if s.liger else ''}{', compiled layers' if s.compiled else ''}"
    )

    def save_checkpoint(step: int) -> dict[str, torch.Tensor]:
        """Every process calls it (FSDP gathers the shards); returns the adapter's weights."""
        weights = checkpoints.trainable_state(unwrapped)
        optimizer_state = checkpoints.optimizer_state(unwrapped, optimizer)
        if is_main:
            state = {
                "mlflow_run_id": tracker.run_id,
                "recoveries": recoveries,
                "compatibility": compat,
                "data_position": {"step": step, "seed": cfg.seed, "rows": n_rows, "global_batch": cfg.global_batch},
                "tokens_seen": tokens_seen,
                "loss_log": loss_log,
            }
            started = time.perf_counter()
            checkpoints.save(run_dir, step, weights, optimizer_state, scheduler, state, params.checkpoint.keep)
            checkpoints.write_json_atomic(segments_file, meter.segments())
            if step > tracker.last_logged_step:
                tracker.log(step, checkpoint_seconds=time.perf_counter() - started)
        accelerator.wait_for_everyone()
        return weights

    # ------------------------------------------------------------------ train
    loss_log: list[tuple[int, float]] = [tuple(x) for x in restored.state["loss_log"]] if restored else []
    tokens_seen = restored.state["tokens_seen"] if restored else 0
    window_tokens, window_start = 0, time.perf_counter()
    last_checkpoint = time.monotonic()
    sample_log = SampleLog(os.environ.get("TRAIN_SAMPLE_LOG"), start_step) if is_main else None
    stop = StopSignal()
    progress = tqdm(total=cfg.max_steps, initial=start_step, desc="train", unit="step", disable=not is_main)
    status = "FAILED"
    try:
        for step in range(start_step, cfg.max_steps):
            result = train_step(s, step)
            step_loss, grad_norm = result.loss, result.grad_norm
            window_tokens += result.real_tokens
            tokens_seen += result.real_tokens * world

            done = step + 1
            if sample_log:
                sample_log.record(step, result.batch_rows)
            if done % cfg.log_every_steps == 0 or done == cfg.max_steps:
                loss = accelerator.reduce(step_loss, "sum").item()
                tokens = accelerator.reduce(torch.tensor(window_tokens, device=device), "sum").item()
                tokens_per_second = tokens / max(1e-9, time.perf_counter() - window_start)
                window_tokens, window_start = 0, time.perf_counter()
                if not math.isfinite(loss):
                    raise FloatingPointError(f"loss is {loss} at step {done}; lower train.learning_rate")
                loss_log.append((done, loss))
                progress.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_per_second:,.0f}")
                # After a resume, steps redone since the checkpoint are already in MLflow.
                if tracker and done > tracker.last_logged_step:
                    metrics = {
                        "loss": loss,
                        "learning_rate": scheduler.get_last_lr()[0],
                        "grad_norm": float(grad_norm),
                        "tokens_per_second": tokens_per_second,
                        **meter.metrics(tokens_seen),  # cost_usd only when the price is known
                    }
                    if peak:
                        metrics["mfu"] = tokens_per_second * s.token_flops / (peak * world)
                    if device.type == "cuda":
                        metrics["gpu_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
                    tracker.log(done, **metrics)
            progress.update(1)

            # Checkpoint on a signal, on the budget, every N steps or M minutes (all ranks agree).
            signalled, over_budget = stop.received is not None, meter.cost_usd > params.budget.max_run_usd
            due = done % params.checkpoint.every_steps == 0 or time.monotonic() - last_checkpoint >= params.checkpoint.every_minutes * 60
            if world > 1:
                flags = torch.tensor([signalled, over_budget, due], dtype=torch.float32, device=device)
                torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
                signalled, over_budget, due = flags.bool().tolist()
            if signalled or over_budget or (due and done < cfg.max_steps):
                save_checkpoint(done)
                last_checkpoint = time.monotonic()
            if signalled:
                status = "KILLED"
                raise Interrupted(f"stopped by signal at step {done}; checkpoint saved in {run_dir} (rerun to resume)")
            if over_budget:
                status = "KILLED"
                raise BudgetExceeded(
                    f"cost ${meter.cost_usd:.2f} crossed budget.max_run_usd=${params.budget.max_run_usd:.2f} at step {done}; "
                    f"checkpoint saved in {run_dir}"
                )
        final_weights = save_checkpoint(cfg.max_steps)  # also what the adapter is saved from
        status = "FINISHED"
    finally:
        stop.restore()
        progress.close()
        if tracker and status != "FINISHED":
            if run_dir.is_dir():  # the time spent is paid for even if no checkpoint came of it
                checkpoints.write_json_atomic(segments_file, meter.segments())
            tracker.finish(status, wait_seconds=params.tracking.flush_timeout_s)

    # ------------------------------------------------------------------ save
    adapter_dir = Path(cfg.output_dir) / "adapter"
    if is_main:
        save_adapter(unwrapped, final_weights, s.tokenizer, adapter_dir)
        write_loss_csv(loss_log, Path(cfg.output_dir) / "train_loss.csv")
        tracker.log_artifact(plot_loss(loss_log, Path(cfg.output_dir) / "loss.png", title=params.model.base))
        adapter_mb = sum(f.stat().st_size for f in adapter_dir.iterdir()) / 2**20
        if params.tracking.log_adapter and adapter_mb <= params.tracking.adapter_max_mb:
            for file in sorted(adapter_dir.iterdir()):
                tracker.log_artifact(file)
        final = {"train_runtime_s": meter.hours * 3600, "tokens_seen": tokens_seen}
        if estimate and estimate["estimated_hours"]:  # how good was the plan on this GPU?
            final["actual_vs_estimated_time"] = sum(s["hours"] for s in meter.segments()) / estimate["estimated_hours"]
        if loss_log:
            final["final_loss"] = loss_log[-1][1]
        tracker.log(cfg.max_steps, **final)
        tracker.finish(wait_seconds=params.tracking.flush_timeout_s)
        (run_dir / checkpoints.COMPLETE).write_text(f"{tracker.run_id}\n")
        log(f"adapter saved to {adapter_dir} (MLflow run {tracker.run_id})")
    accelerator.wait_for_everyone()
    return adapter_dir


def save_adapter(model, weights: dict[str, torch.Tensor], tokenizer, adapter_dir: Path) -> None:
    """PEFT's standard adapter format plus the tokenizer, swapped in atomically.
    `weights`: checkpoints.trainable_state(model), whole even when the model is sharded."""
    with atomic_dir(adapter_dir) as tmp:
        model.save_pretrained(tmp, state_dict=weights)
        tokenizer.save_pretrained(tmp)


def plot_loss(loss_log: list[tuple[int, float]], path: Path, title: str) -> Path:
    """The loss curve as a PNG, for MLflow and for people without a DVC plots renderer."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 3.5), dpi=100)
    axes.plot([s for s, _ in loss_log], [v for _, v in loss_log], marker=".")
    axes.set(xlabel="step", ylabel="training loss", title=title)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def write_loss_csv(loss_log: list[tuple[int, float]], path: Path) -> None:
    """The loss curve as a DVC plot (`dvc plots show`)."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "loss"])
        writer.writerows((step, f"{loss:.6f}") for step, loss in loss_log)
