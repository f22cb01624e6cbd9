"""The training recipe and what it keeps between restarts, one job per module:
  recipe       `train`: setup -> start_run -> the loop -> finish, top to bottom
  session      `setup`: model + adapter, packed rows, the micro-batch that fits, optimizer, accelerate
  step         one optimizer step, and which rows it trains on (a pure function of seed and step)
  objectives   what a step optimises, chosen once by train.objective: next-token (SFT) or a preference pair loss
  init_adapter model.init_adapter: the policy starts from a saved adapter
  host_fit     on a CPU: the micro-batch and checkpointing whose estimated step fits the free RAM
  sharded_fit  under FSDP on GPUs: the micro-batch and checkpointing the planner chose for the GPU's memory
  optim        the optimizer and the learning-rate schedule
  run          the bookkeeping across restarts: resume point, cost, MLflow, stop signals, checkpoint saves
  checkpoints  atomic, verified, resumable checkpoint folders; the cost of every segment
  outputs      the adapter, saved atomically in PEFT's format with its tokenizer

Imports: model, data, compute (prices, the cost meter, the plan's estimate), tracking, config, atomic.
"""

from .recipe import BudgetExceeded, Interrupted, rows_for_step, setup, train, train_step

__all__ = ["BudgetExceeded", "Interrupted", "rows_for_step", "setup", "train", "train_step"]
