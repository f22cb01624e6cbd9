"""The training recipe: LoRA / QLoRA / DoRA fine-tuning of a causal LM, top to bottom.

    setup      model + adapter, packed data, micro-batch, optimizer, schedule   (session.py)
    start_run  resume point, the machine's price, the MLflow run                 (run.py)
    loop       for each step: global batch -> micro-batches -> backward -> clip -> step  (step.py);
               log, then checkpoint on a signal, the budget or the schedule      (run.py)
    finish     the adapter (PEFT format) and the tokenizer, written atomically   (outputs.py)

Features
- packed rows without cross-example attention (position ids restart per example);
- loss normalised by the trained tokens of the whole global batch, so gradient
  accumulation and any number of GPUs give the update of one big batch;
- the sample order is a pure function of (seed, step): a run can resume at any step;
- single GPU, DDP or FSDP through `accelerate launch` (configs/accelerate/); checkpoints
  hold whole tensors, so a run may resume on another number of GPUs;
- the loss over chunks of the tokens, never the whole rows x tokens x vocabulary logits
  (model/loss.py), or Liger's fused linear cross-entropy when installed on a GPU;
- `micro_batch: auto` finds the largest micro-batch that fits, gradient checkpointing
  only when nothing fits without it (and on as few layers as will do), then layer inputs
  in host RAM (model/offload.py) for rows too long for the GPU (model/fit.py); Liger fused kernels
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

from pathlib import Path

from .run import BudgetExceeded, Interrupted, StopSignal, start_run
from .session import setup
from .step import rows_for_step, train_step

__all__ = ["BudgetExceeded", "Interrupted", "rows_for_step", "setup", "train", "train_step"]


def train(params, resume: str = "auto", log=print) -> Path:
    """Train an adapter; returns the directory it was saved to.

    resume: "auto" (newest valid checkpoint of this configuration), "never", or a path.
    """
    from tqdm.auto import tqdm

    cfg = params.train
    # Before loading: a spot notice can come while the base model loads (minutes for 70B).
    stop = StopSignal()
    try:
        s = stop.interruptible(setup, params)
    except BaseException:
        stop.restore()
        raise
    if not s.accelerator.is_main_process:
        log = lambda *_: None  # noqa: E731 - one process speaks for all
    run = start_run(s, resume, log)
    log(describe(s))
    from ..export.vllm import planned_warning

    if warning := planned_warning(params):  # before the steps: the GPU time is not spent yet
        log(f"warning: {warning}")

    progress = tqdm(total=cfg.max_steps, initial=run.start_step, desc="train", unit="step", disable=not s.accelerator.is_main_process)
    status = "FAILED"
    try:
        for step in range(run.start_step, cfg.max_steps):
            result = train_step(s, step)
            run.record(step, result)
            done = step + 1
            if done % cfg.log_every_steps == 0 or done == cfg.max_steps:
                loss, tokens_per_second = run.log_step(done, result)
                progress.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_per_second:,.0f}")
            progress.update(1)

            signalled, over_budget, due = run.stop_or_save(done, stop)
            if signalled or over_budget or (due and done < cfg.max_steps):
                run.save_checkpoint(done)
            if signalled:
                status = "KILLED"
                raise Interrupted(f"stopped by signal at step {done}; checkpoint saved in {run.run_dir} (rerun to resume)")
            if over_budget:
                status = "KILLED"
                raise BudgetExceeded(
                    f"cost ${run.meter.cost_usd:.2f} crossed budget.max_run_usd=${params.budget.max_run_usd:.2f} at step {done}; "
                    f"checkpoint saved in {run.run_dir}"
                )
        final_weights = run.save_checkpoint(cfg.max_steps)  # also what the adapter is saved from
        status = "FINISHED"
    finally:
        stop.restore()
        progress.close()
        if status != "FINISHED":
            run.close_unfinished(status)
    return run.finish(final_weights, log)


def describe(s) -> str:
    """One line: what trains, on what, in which batches, with which memory savers."""
    params, cfg, world = s.params, s.params.train, s.world
    return (
        f"training {s.trainable:,} of {s.total:,} parameters ({params.model.method}) on {world}x {s.device.type}{' (FSDP)' if s.sharded else ''}; "
        f"{s.n_rows} rows, global batch {cfg.global_batch} = {s.micro_batch} x {s.accumulation} accumulation x {world} processes"
        f"{f', gradient checkpointing on {s.checkpointed_layers} of {s.base_config.num_hidden_layers} layers' if s.checkpointed_layers else ''}"
        f"{', their inputs in host RAM' if s.offloaded else ''}, {s.loss} loss{', Liger kernels' if s.liger else ''}"
        f"{', compiled layers' if s.compiled else ''}"
    )
