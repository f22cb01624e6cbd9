"""Optional lm-evaluation-harness tasks on the trained model: a guard on general ability.

`eval.harness_tasks: [hellaswag, arc_easy]` runs those tasks through lm-eval's Python API on
the model just evaluated (base + adapter, already in memory), `eval.harness_limit` examples
each. `eval.harness_include` names a folder of your own task YAMLs (lm-eval's format; a
local JSON dataset needs no download). lm-eval is the optional extra `harness`:
`pip install '.[harness]'`. Public tasks download their datasets from the Hugging Face hub.
"""

from __future__ import annotations

from ..config import ConfigError


def task_manager(tasks: list[str], include: str | None):
    """lm-eval's task index, once every task is known to be in it (checked before the model loads)."""
    try:
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise ConfigError("eval.harness_tasks needs lm-eval: pip install '.[harness]'") from None
    manager = None
    if include:  # your own tasks alone index in a moment; lm-eval's thousands take a while
        manager = TaskManager(include_path=include, include_defaults=False)
        if not set(tasks) <= set(manager.all_tasks):
            manager = None
    manager = manager or TaskManager(include_path=include)
    unknown = [task for task in tasks if task not in manager.all_tasks]
    if unknown:
        where = f" (nor in eval.harness_include={include!r})" if include else ""
        raise ConfigError(f"eval.harness_tasks: unknown task(s) {', '.join(unknown)} in lm-eval{where}")
    return manager


def run_tasks(model, tokenizer, manager, tasks: list[str], limit: int | None, batch_size: int) -> dict:
    """{task: {metric: value}}; lm-eval's `acc,none` becomes `acc` (and its stderr is dropped)."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    tokenizer.padding_side = "left"
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    output = simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager, limit=limit, log_samples=False,
                             bootstrap_iters=0)
    results = {}
    for task, values in output["results"].items():
        results[task] = {
            name.split(",")[0]: float(value) for name, value in values.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and "_stderr" not in name
            and name != "sample_len"  # how many examples, not a score
        }
    return results
