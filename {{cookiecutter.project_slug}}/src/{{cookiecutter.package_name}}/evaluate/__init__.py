"""The `evaluate` stage, one job per module:
  answers   loss and token accuracy per validation example; greedy answers to held-out prompts
  metrics   exact match, chrF, ROUGE-L and the user's own `module:function`
  pairs     held-out preference pairs: preference accuracy, reward and log-prob margins
  compare   paired comparison with a baseline run: delta, bootstrap 95% interval, verdict
  judge     optional pairwise judge through an OpenAI-compatible endpoint
  harness   optional lm-evaluation-harness tasks
  stage     the stage itself: all of the above, metrics.json and eval_examples.json, MLflow

Imports: model, data, tracking, config, atomic. `report` compares runs with `compare`, so the
light modules (compare, metrics) must not import torch at module level.
"""


def __getattr__(name: str):
    # Lazy: `report` imports the light modules here without loading torch and the model code.
    if name == "evaluate":
        from .stage import evaluate

        return evaluate
    raise AttributeError(name)


__all__ = ["evaluate"]
