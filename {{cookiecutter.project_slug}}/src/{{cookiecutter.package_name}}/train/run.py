"""The bookkeeping of one run across restarts: where it resumes, what it costs, what MLflow sees.

    start_run        the checkpoint to resume from (or none), the cost meter, the MLflow run and its params
    Run.record       a step's tokens, and its rows in the sample log
    Run.log_step     loss, learning rate, grad norm, tokens/s, MFU, cost, memory: to MLflow
    Run.stop_or_save a signal, the budget, every N steps or M minutes (all processes agree)
    Run.save_checkpoint  adapter, optimizer, schedule, RNG and this bookkeeping, atomically
    Run.finish       the adapter, the loss curve and the final metrics; the run marked COMPLETE

Only the main process talks to MLflow and writes files; every process takes part in a
checkpoint (FSDP gathers the shards) and in the stop decision.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..compute import prices
from ..compute.cost import CostMeter
from ..model import flops
from ..tracking import Tracker
from ..tracking.plots import plot_loss, write_loss_csv
from . import checkpoints
from .outputs import save_adapter
from .session import Session
from .step import StepResult


class Interrupted(Exception):
    """SIGTERM / SIGINT arrived; a checkpoint was saved. Exit code 75: safe to retry."""


class BudgetExceeded(Exception):
    """The run's cost crossed budget.max_run_usd; a checkpoint was saved. Exit code 3."""


class _StopNow(BaseException):
    """Raised by the signal handler while the model loads. A BaseException, so that no
    library's `except Exception` around a download or a file read can swallow it."""


class StopSignal:
    """A SIGTERM / SIGINT (a spot notice, Ctrl-C), from before the model loads to the last step.

    While `interruptible` work runs (loading the base: minutes for a 70B model, again on every
    restart) a signal stops it at once with Interrupted: nothing new exists to save, and a rerun
    resumes from the newest checkpoint. Afterwards the signal is remembered, and the loop
    checkpoints at the next step boundary."""

    def __init__(self):
        self.received: int | None = None
        self._at_once = False
        self.previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, signum, frame):
        self.received = signum
        if self._at_once:
            raise _StopNow(signum)

    def interruptible(self, work, *args):
        """work(*args), ended by a signal (also one that came before) with Interrupted."""
        self._at_once = True
        try:
            try:
                if self.received is not None:
                    raise _StopNow(self.received)
                return work(*args)
            finally:  # a signal that lands in here is still caught below
                self._at_once = False
        except _StopNow as stop:
            self._at_once = False
            name = signal.Signals(stop.args[0]).name
            raise Interrupted(f"stopped by {name} before the first step, while loading; nothing new to save "
                              "(rerun to resume from the newest checkpoint)") from None

    def restore(self):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


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
class Run:
    """One run's state between steps: what a checkpoint saves besides the weights, and where it goes."""

    s: Session
    run_dir: Path  # <checkpoint.dir>/<run key>: this configuration's checkpoints
    compat: dict  # what a checkpoint must match to be resumed
    recoveries: int  # restarts so far (0 on a fresh run)
    restored: checkpoints.Restored | None
    meter: CostMeter
    tracker: Tracker | None  # the main process's MLflow run; None on the others
    estimate: dict | None  # the planner's estimate for this GPU, to compare with the real time
    peak_flops: float | None  # the GPU's bf16 peak, for MFU
    loss_log: list[tuple[int, float]] = field(default_factory=list)
    tokens_seen: int = 0
    window_tokens: int = 0  # since the last logged step, this process
    window_start: float = field(default_factory=time.perf_counter)
    last_checkpoint: float = field(default_factory=time.monotonic)
    sample_log: SampleLog | None = None

    @property
    def start_step(self) -> int:
        return self.restored.step if self.restored else 0

    @property
    def segments_file(self) -> Path:
        return self.run_dir / checkpoints.SEGMENTS

    def record(self, step: int, result: StepResult) -> None:
        self.window_tokens += result.real_tokens
        self.tokens_seen += result.real_tokens * self.s.world
        if self.sample_log:
            self.sample_log.record(step, result.batch_rows)

    def log_step(self, done: int, result: StepResult) -> tuple[float, float]:
        """Loss and tokens/s over the processes since the last logged step; both to MLflow."""
        s = self.s
        loss = s.accelerator.reduce(result.loss, "sum").item()
        tokens = s.accelerator.reduce(torch.tensor(self.window_tokens, device=s.device), "sum").item()
        # The objective's own metrics (a preference run's rewards, margin, accuracy): shares of the step's means.
        objective_metrics = {name: s.accelerator.reduce(share, "sum").item() for name, share in result.metrics.items()}
        tokens_per_second = tokens / max(1e-9, time.perf_counter() - self.window_start)
        self.window_tokens, self.window_start = 0, time.perf_counter()
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss is {loss} at step {done}; lower train.learning_rate")
        self.loss_log.append((done, loss))
        # After a resume, steps redone since the checkpoint are already in MLflow.
        if self.tracker and done > self.tracker.last_logged_step:
            metrics = {
                "loss": loss,
                "learning_rate": s.scheduler.get_last_lr()[0],
                "grad_norm": float(result.grad_norm),
                "tokens_per_second": tokens_per_second,
                **objective_metrics,
                **self.meter.metrics(self.tokens_seen),  # cost_usd only when the price is known
            }
            if self.peak_flops:
                metrics["mfu"] = tokens_per_second * s.token_flops / (self.peak_flops * s.world)
            if s.device.type == "cuda":
                metrics["gpu_memory_gib"] = torch.cuda.max_memory_allocated(s.device) / 2**30
            self.tracker.log(done, **metrics)
        return loss, tokens_per_second

    def stop_or_save(self, done: int, stop: StopSignal) -> tuple[bool, bool, bool]:
        """(signalled, over budget, checkpoint due), the same on every process."""
        params = self.s.params
        signalled, over_budget = stop.received is not None, self.meter.cost_usd > params.budget.max_run_usd
        due = (done % params.checkpoint.every_steps == 0
               or time.monotonic() - self.last_checkpoint >= params.checkpoint.every_minutes * 60)
        if self.s.world > 1:
            flags = torch.tensor([signalled, over_budget, due], dtype=torch.float32, device=self.s.device)
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
            signalled, over_budget, due = flags.bool().tolist()
        return signalled, over_budget, due

    def save_checkpoint(self, step: int) -> dict[str, torch.Tensor]:
        """Every process calls it (FSDP gathers the shards); returns the adapter's weights."""
        s, cfg = self.s, self.s.params.train
        unwrapped = s.accelerator.unwrap_model(s.model)
        weights = checkpoints.trainable_state(unwrapped)
        optimizer_state = checkpoints.optimizer_state(unwrapped, s.optimizer)
        if self.tracker:
            state = {
                "mlflow_run_id": self.tracker.run_id,
                "recoveries": self.recoveries,
                "compatibility": self.compat,
                "data_position": {"step": step, "seed": cfg.seed, "rows": s.n_rows, "global_batch": cfg.global_batch},
                "tokens_seen": self.tokens_seen,
                "loss_log": self.loss_log,
            }
            started = time.perf_counter()
            checkpoints.save(self.run_dir, step, weights, optimizer_state, s.scheduler, state, s.params.checkpoint.keep)
            checkpoints.write_json_atomic(self.segments_file, self.meter.segments())
            if step > self.tracker.last_logged_step:
                self.tracker.log(step, checkpoint_seconds=time.perf_counter() - started)
        s.accelerator.wait_for_everyone()
        self.last_checkpoint = time.monotonic()
        return weights

    def close_unfinished(self, status: str) -> None:
        """A run that stopped early: its time is paid for even if no checkpoint came of it."""
        if self.tracker:
            if self.run_dir.is_dir():
                checkpoints.write_json_atomic(self.segments_file, self.meter.segments())
            self.tracker.finish(status, wait_seconds=self.s.params.tracking.flush_timeout_s)

    def finish(self, final_weights: dict[str, torch.Tensor], log) -> Path:
        """The adapter, the loss curve and the final metrics; COMPLETE marks the run done."""
        s, params = self.s, self.s.params
        cfg = params.train
        adapter_dir = Path(cfg.output_dir) / "adapter"
        if self.tracker:
            tracker = self.tracker
            save_adapter(s.accelerator.unwrap_model(s.model), final_weights, s.tokenizer, adapter_dir)
            tracker.save_run_file(cfg.output_dir)  # with the adapter it describes, never before
            write_loss_csv(self.loss_log, Path(cfg.output_dir) / "train_loss.csv")
            tracker.log_artifact(plot_loss(self.loss_log, Path(cfg.output_dir) / "loss.png", title=params.model.base))
            adapter_mb = sum(f.stat().st_size for f in adapter_dir.iterdir()) / 2**20
            if params.tracking.log_adapter and adapter_mb <= params.tracking.adapter_max_mb:
                for file in sorted(adapter_dir.iterdir()):
                    tracker.log_artifact(file)
            final = {"train_runtime_s": self.meter.hours * 3600, "tokens_seen": self.tokens_seen}
            if self.estimate and self.estimate["estimated_hours"]:  # how good was the plan on this GPU?
                final["actual_vs_estimated_time"] = sum(seg["hours"] for seg in self.meter.segments()) / self.estimate["estimated_hours"]
            if self.loss_log:
                final["final_loss"] = self.loss_log[-1][1]
            tracker.log(cfg.max_steps, **final)
            tracker.finish(wait_seconds=params.tracking.flush_timeout_s)
            (self.run_dir / checkpoints.COMPLETE).write_text(f"{tracker.run_id}\n")
            log(f"adapter saved to {adapter_dir} (MLflow run {tracker.run_id})")
        s.accelerator.wait_for_everyone()
        return adapter_dir


def start_run(s: Session, resume: str, log) -> Run:
    """Resume from the newest valid checkpoint of this configuration (or start afresh), price
    the machine, and open (or reopen) the MLflow run."""
    params = s.params
    is_main = s.accelerator.is_main_process
    fingerprint = hashlib.sha256(json.dumps(s.summary, sort_keys=True).encode()).hexdigest()[:16]
    compat = checkpoints.compatibility(params, fingerprint)
    run_dir = Path(params.checkpoint.dir) / checkpoints.run_key(compat)
    restored = resume_checkpoint(s, run_dir, compat, resume, log)
    if is_main:  # room for checkpoint.keep + 1 checkpoints? Warn with the numbers if not.
        size = checkpoints.size_for_next(run_dir, checkpoints.estimate_size(s.accelerator.unwrap_model(s.model), params.train.optimizer))
        checkpoints.warn_if_short_of_space(run_dir, params.checkpoint.keep, size, log)
    recoveries = restored.state["recoveries"] + 1 if restored else 0
    segments_file = run_dir / checkpoints.SEGMENTS
    previous_segments = json.loads(segments_file.read_text()) if restored and segments_file.is_file() else []

    peak = flops.peak_flops(s.device, params.compute.peak_tflops)
    hourly_usd, price_source = prices.machine_price(params, s.device, s.world)
    meter = CostMeter(hourly_usd, gpus=s.world if s.device.type == "cuda" else 0, previous=previous_segments, source=price_source)
    if meter.start_message(params.budget.max_run_usd):
        log(meter.start_message(params.budget.max_run_usd))
    tracker = open_tracker(s, run_dir, restored, recoveries, meter) if is_main else None
    estimate = None
    if tracker and s.device.type == "cuda":
        from ..compute import plan

        gpu_name = prices.gpu_from_device_name(torch.cuda.get_device_name(s.device))
        estimate = plan.estimate_for_gpu(params, gpu_name, hourly_usd) if gpu_name else None
    if tracker and not restored:
        log_run_params(s, tracker, estimate)
    run = Run(s=s, run_dir=run_dir, compat=compat, recoveries=recoveries, restored=restored, meter=meter, tracker=tracker,
              estimate=estimate, peak_flops=peak)
    if restored:
        run.loss_log = [tuple(x) for x in restored.state["loss_log"]]
        run.tokens_seen = restored.state["tokens_seen"]
    if is_main:
        run.sample_log = SampleLog(os.environ.get("TRAIN_SAMPLE_LOG"), run.start_step)
    return run


def resume_checkpoint(s: Session, run_dir: Path, compat: dict, resume: str, log) -> checkpoints.Restored | None:
    """The main process picks (and verifies) the checkpoint once; the others are told which."""
    choice = [checkpoints.resume_point(run_dir, resume, log) if s.accelerator.is_main_process else None]
    if s.world > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(choice)
    if choice[0] is None:
        return None
    # The PeftModel (sharded in place under FSDP) takes the weights.
    restored = checkpoints.load(choice[0], s.accelerator.unwrap_model(s.model), s.optimizer, s.scheduler, compat)
    log(f"resuming from {choice[0]} (step {restored.step})")
    return restored


def open_tracker(s: Session, run_dir: Path, restored, recoveries: int, meter: CostMeter) -> Tracker:
    """The MLflow run: the checkpoint's run when resuming, so a recovered job continues it."""
    params = s.params
    resume_run_id = restored.state.get("mlflow_run_id") if restored else None
    tags = {"recoveries": str(recoveries), **meter.tags()}
    tracker = Tracker(params, run_dir / "mlflow-spool", resume_run_id=resume_run_id, extra_tags=tags)
    if params.tracking.system_metrics:
        tracker.start_system_metrics(params.tracking.system_metrics_interval_s)
    return tracker


def log_run_params(s: Session, tracker: Tracker, estimate: dict | None) -> None:
    """What the data and the resolved settings were: logged once, when the run starts."""
    data_stats = s.summary["train"]
    tracker.log_params({
        "data.train_rows": data_stats["rows"], "data.train_examples": data_stats["examples"],
        "data.dropped_too_long": data_stats["dropped_too_long"], "data.dropped_no_labels": data_stats["dropped_no_labels"],
        "data.packing_efficiency": data_stats["packing_efficiency"],
        **(estimate or {}),
    })
    tracker.log_params({
        "trainable_parameters": s.trainable, "total_parameters": s.total, "processes": s.world,
        "resolved.frozen_bytes_per_process": s.frozen_bytes,
        "resolved.micro_batch": s.micro_batch, "resolved.accumulation": s.accumulation,
        "resolved.checkpointed_layers": s.checkpointed_layers, "resolved.liger_kernels": s.liger,
        "resolved.offload_activations": s.offloaded, "resolved.loss": s.loss,
        "resolved.compile": s.compiled,
        "resolved.dtype": str(s.dtype).removeprefix("torch."), "flops_per_token": int(s.token_flops),
    })
