"""The `evaluate` stage: how good are the trained adapter's answers, and better than main's?

1. loss: eval loss, perplexity and token accuracy on the validation rows' trained tokens
   preference pairs (when `prepare` made pairs): held-out preference accuracy and margins (pairs.py)
2. answers: greedy answers to `eval.generations` held-out prompts, scored by `eval.metrics`
3. optional: lm-evaluation-harness tasks (`eval.harness_tasks`)
4. baseline: the newest finished run of `eval.baseline_branch` in MLflow, compared example
   by example (compare.py); optional pairwise judge of the two runs' answers (judge.py)
5. outputs: metrics.json (the means: DVC metrics), eval_examples.json (every example's
   scores: what later comparisons pair), generations.jsonl, loss.png redrawn with the eval
   loss beside the training loss; all logged to the training run.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

from .. import data
from ..atomic import write_text_atomic
from ..model import loading
from ..tracking import RUN_FILE, log_to_training_run, tracking_uri
from ..tracking.plots import plot_loss, read_loss_csv
from . import compare, metrics, pairs
from .answers import example_key, generate_answers, validation_scores


def loss_metrics(per_example: list[dict]) -> dict:
    tokens = sum(e["tokens"] for e in per_example)
    loss = sum(e["loss_sum"] for e in per_example) / max(1, tokens)
    return {
        "eval_loss": round(loss, 6),
        "perplexity": round(math.exp(min(loss, 50)), 4),
        "token_accuracy": round(sum(e["correct"] for e in per_example) / max(1, tokens), 6),
        "eval_tokens": tokens,
    }


def scored_answers(generations: list[dict], scorers: dict) -> list[dict]:
    rows = []
    for g in generations:
        prompt = g.get("messages", g.get("prompt"))
        rows.append({
            "id": example_key(prompt, g.get("reference", "")),
            "prompt": prompt,
            "reference": g.get("reference", ""),
            "answer": g["generated"],
            "scores": metrics.score(scorers, prompt, g.get("reference", ""), g["generated"]),
        })
    return rows


def redraw_loss_curve(params, eval_loss: float) -> Path | None:
    """outputs/loss.png again, with the eval loss at the last step beside the training loss."""
    out = Path(params.train.output_dir)
    training = read_loss_csv(out / "train_loss.csv")
    if not training:
        return None  # an adapter trained elsewhere: no curve to add to
    return plot_loss(training, out / "loss.png", title=params.model.base, eval_points=[(params.train.max_steps, eval_loss)])


def means(answers: list[dict]) -> dict[str, float]:
    names = answers[0]["scores"] if answers else {}
    return {name: round(sum(a["scores"][name] for a in answers) / len(answers), 6) for name in names}


def this_run_id(params) -> str | None:
    path = Path(params.train.output_dir) / RUN_FILE
    return json.loads(path.read_text()).get("run_id") if path.is_file() else None


def baseline_examples(params, log) -> tuple[str | None, dict | None]:
    """(baseline run id, its eval_examples.json) from MLflow; (None, None) when there is none.

    Best effort: an unreachable server or a missing baseline costs the comparison, not the stage."""
    from mlflow import MlflowClient

    from ..tracking.runs import find_baseline

    try:
        client = MlflowClient(tracking_uri(params))
        base = find_baseline(client, params.tracking.experiment, params.eval.baseline_branch, exclude=this_run_id(params))
        if base is None:
            log(f"baseline: no finished run of `{params.eval.baseline_branch}` in experiment "
                f"'{params.tracking.experiment}' yet: nothing to compare with")
            return None, None
        with tempfile.TemporaryDirectory() as tmp:
            table = compare.download_examples(client, base.info.run_id, tmp)
    except Exception as err:  # server down, auth: the comparison is skipped, the stage goes on
        log(f"baseline: MLflow not reachable ({type(err).__name__}: {str(err).splitlines()[0][:200]}): no comparison")
        return None, None
    if table is None:
        log(f"baseline: run {base.info.run_id[:8]} has no per-example scores (evaluated before they were saved)")
    return base.info.run_id, table


def quality_lines(comparison: dict, base_run: str) -> list[str]:
    # Each line says which examples its two figures are over: when the baseline lacks some of
    # this run's examples, they are not the headline means printed above.
    lines = [f"compared with {base_run[:8]} (newest finished run of the baseline branch), this run vs baseline:"]
    lines += [compare.quality_line(name, q) for name, q in comparison["quality"].items()]
    if comparison["note"]:
        lines.append(f"  note: {comparison['note']}")
    return lines


def _validation_records(prepared_dir) -> int:
    """How many records `prepare` put in the validation split (0 when it does not say)."""
    summary = Path(prepared_dir) / "summary.json"
    if not summary.is_file():
        return 0
    val = json.loads(summary.read_text()).get("val", {})
    return int(val.get("examples", 0)) + int(val.get("dropped_too_long", 0)) + int(val.get("dropped_no_labels", 0))


def evaluate(params, log=print) -> dict:
    out_dir = Path(params.train.output_dir)
    adapter_dir = out_dir / "adapter"
    if not (adapter_dir / "adapter_config.json").is_file():
        raise data.DataError(f"{adapter_dir}: no trained adapter; run `train` first")
    scorers = metrics.resolve(params.eval.metrics)  # a typo in a metric name stops before the model loads
    prompts_file = Path(params.data.prepared_dir) / "held_out_prompts.jsonl"
    prompts = [json.loads(line) for line in prompts_file.read_text().splitlines()] if prompts_file.is_file() else []
    if len(prompts) < params.eval.generations and len(prompts) < _validation_records(params.data.prepared_dir):
        log(f"note: {prompts_file} holds {len(prompts)} prompts, eval.generations={params.eval.generations}: "
            "run `prepare` again to answer more (`dvc repro` does)")
    prompts = prompts[: params.eval.generations]
    if params.eval.harness_tasks:
        from . import harness

        tasks = harness.task_manager(params.eval.harness_tasks, params.eval.harness_include)

    device = loading.resolve_device(params.compute.device)
    model = loading.load_trained(params, adapter_dir, device)
    tokenizer = loading.load_tokenizer(str(adapter_dir))
    # No gradients here: the training micro-batch fits; `auto` is only known inside `train`,
    # so then rows of about 4k tokens (their logits stay a few GB even with a 128k vocabulary).
    rows_per_pass = params.train.micro_batch if isinstance(params.train.micro_batch, int) else max(1, 4096 // params.data.max_length)
    per_example = validation_scores(model, data.load_prepared(params.data.prepared_dir, "val"), rows_per_pass, device)
    results = loss_metrics(per_example)
    pair_table = None
    if pairs.prepared_pairs(params.data.prepared_dir):
        pair_means, pair_table = pairs.score(params, model, data.load_prepared(params.data.prepared_dir, "val"),
                                             rows_per_pass, device)
        results.update(pair_means)
    generations = generate_answers(model, tokenizer, prompts, params.eval.max_new_tokens, device, params.eval.batch_size)
    answers = scored_answers(generations, scorers)
    results.update(means(answers))
    results["eval_examples"] = len(answers)
    if params.eval.harness_tasks:
        results["harness"] = harness.run_tasks(model, tokenizer, tasks, params.eval.harness_tasks,
                                               params.eval.harness_limit, params.eval.batch_size)
    del model

    examples = {"answers": answers, "losses": per_example}
    if pair_table is not None:
        examples["pairs"] = pair_table
    base_run, base_table = baseline_examples(params, log)
    comparison = None
    if base_table is not None:
        comparison = compare.compare(examples, base_table, set(params.eval.lower_is_better))
        if params.eval.judge.enabled:
            from .judge import JudgeError, judge_runs

            try:
                examples["judge"] = judge_runs(params.eval.judge, answers, base_table.get("answers", []), base_run, log)
                results["judge_win_rate"] = round(examples["judge"]["win_rate"], 6)
                results["judge_cost_usd"] = examples["judge"]["cost_usd"]
            except JudgeError as err:
                log(f"judge: {err}: no win rate this time")

    metrics_path, examples_path = out_dir / "metrics.json", out_dir / compare.EXAMPLES_FILE
    generations_path = out_dir / "generations.jsonl"
    write_text_atomic(examples_path, json.dumps(examples, ensure_ascii=False) + "\n")
    write_text_atomic(generations_path, "".join(json.dumps(g, ensure_ascii=False) + "\n" for g in generations))
    write_text_atomic(metrics_path, json.dumps(results, indent=2) + "\n")

    table = {key: [g.get(key, "") for g in generations] for key in ("reference", "generated")}
    table["prompt"] = [json.dumps(g.get("messages", g.get("prompt")), ensure_ascii=False) for g in generations]
    for name in scorers:
        table[name] = [a["scores"][name] for a in answers]
    logged = {key: value for key, value in results.items() if isinstance(value, (int, float)) and key != "eval_tokens"}
    for task, values in results.get("harness", {}).items():
        logged.update({f"harness.{task}.{name}": value for name, value in values.items()})
    curve = redraw_loss_curve(params, results["eval_loss"])
    artifacts = [metrics_path, generations_path, examples_path] + ([curve] if curve else [])
    run_id = log_to_training_run(params, logged, artifacts, step=params.train.max_steps, tables={"generations.json": table})
    log(f"eval_loss {results['eval_loss']:.4f}, perplexity {results['perplexity']:.2f}, token accuracy "
        f"{results['token_accuracy']:.1%} on {results['eval_tokens']} tokens -> {metrics_path}")
    if pair_table is not None:
        log(f"{results['eval_pairs']} held-out pairs: preference accuracy {results['preference_accuracy']:.1%}, reward margin "
            f"{results['reward_margin']:.4g}, log-prob margin {results['logp_margin']:.4g} per token ({params.train.preference_loss})")
        if pairs.reference_note(params):
            log(pairs.reference_note(params))
    if answers:
        log(f"{len(answers)} held-out answers: " + ", ".join(f"{k} {compare.show_value(k, v)}" for k, v in means(answers).items())
            + f" -> {examples_path}")
    for task, values in results.get("harness", {}).items():
        log(f"harness {task}: " + ", ".join(f"{k} {v:.4g}" for k, v in values.items()))
    if comparison:
        for line in quality_lines(comparison, base_run):
            log(line)
    if "judge" in examples:
        judge = examples["judge"]
        interval = f" [{judge['ci95'][0]:.1%}, {judge['ci95'][1]:.1%}]" if judge["ci95"] else ""
        log(f"judge: win rate {judge['win_rate']:.1%}{interval} ({judge['verdict']}) against "
            f"{base_run[:8]} over {judge['examples']} answers, {judge['calls']} calls, ${judge['cost_usd']:.4f}")
    if run_id:
        log(f"logged to MLflow run {run_id}")
    return results
