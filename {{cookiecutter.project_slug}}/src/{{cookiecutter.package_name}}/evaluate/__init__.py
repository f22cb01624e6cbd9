"""The `evaluate` stage, one job per module:
  answers   loss on the validation rows, greedy answers to the held-out prompts
  stage     the stage itself: run both, write metrics.json, log to the training run
"""


def __getattr__(name: str):
    # Lazy: `report` imports the light modules here without loading torch and the model code.
    if name == "evaluate":
        from .stage import evaluate

        return evaluate
    raise AttributeError(name)


__all__ = ["evaluate"]
