"""The training recipe and what it keeps between restarts:
  recipe       setup -> step -> loop -> save: the supervised fine-tuning run, top to bottom
  checkpoints  atomic, verified, resumable checkpoint folders; the cost of every segment

Imports: model, data, compute (prices and the cost meter), tracking, config, atomic.
Nothing below the CLI imports this package, so the rest of the project never pays for torch
setup code it does not run.
"""

from .recipe import BudgetExceeded, Interrupted, rows_for_step, setup, train, train_step

__all__ = ["BudgetExceeded", "Interrupted", "rows_for_step", "setup", "train", "train_step"]
