"""Scores of one answer against its reference: built-in metrics and the user's own.

Every metric is `fn(prompt, reference, answer) -> number`, called once per held-out
example; the run's score is the mean. Built in, computed by well-kept libraries:
  exact_match  1 when the answer equals the reference (whitespace trimmed and collapsed), else 0
  chrf         chrF (sacrebleu's sentence chrF, 0-100): character n-gram F-score, robust to wording
  rouge_l      ROUGE-L F1 (rouge-score, 0-1): longest common subsequence of words
               (its tokenizer keeps only ASCII letters and digits: use chrf for other scripts)
Your own: `eval.metrics: [chrf, mymetrics:politeness]` imports `politeness` from the module
`mymetrics` (the project root is on the import path) and calls it with keyword arguments
prompt (the held-out prompt: a string, or the chat messages before the answer), reference
and answer (strings). It must return a number; higher is better unless the name is listed in
`eval.lower_is_better`.
"""

from __future__ import annotations

import importlib
import math
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path

from ..config import ConfigError

Metric = Callable[..., float]


def _normalise(text: str) -> str:
    return " ".join(text.split())


def exact_match(prompt, reference: str, answer: str) -> float:
    return float(_normalise(answer) == _normalise(reference))


@cache
def _chrf():
    from sacrebleu.metrics import CHRF

    return CHRF()


def chrf(prompt, reference: str, answer: str) -> float:
    return float(_chrf().sentence_score(answer, [reference]).score)


@cache
def _rouge():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"])


def rouge_l(prompt, reference: str, answer: str) -> float:
    return float(_rouge().score(reference, answer)["rougeL"].fmeasure)


BUILT_IN: dict[str, Metric] = {"exact_match": exact_match, "chrf": chrf, "rouge_l": rouge_l}


def metric_name(entry: str) -> str:
    """`chrf` -> chrf; `mymetrics:politeness` -> politeness (the name it is logged under)."""
    return entry.rpartition(":")[2]


def resolve(entries: list[str], root: str | Path = ".") -> dict[str, Metric]:
    """Metric functions by name, before any model is loaded: a typo stops the stage at once."""
    metrics: dict[str, Metric] = {}
    for entry in entries:
        if ":" not in entry:
            if entry not in BUILT_IN:
                raise ConfigError(f"eval.metrics: unknown metric {entry!r}; built in: {', '.join(BUILT_IN)}, "
                                  "or module:function for your own")
            metrics[entry] = BUILT_IN[entry]
            continue
        module_name, _, function_name = entry.partition(":")
        if str(Path(root).resolve()) not in map(str, sys.path):
            sys.path.insert(0, str(Path(root).resolve()))
        try:
            module = importlib.import_module(module_name)
        except Exception as err:  # ImportError, or an error inside the user's module
            raise ConfigError(f"eval.metrics: {entry!r}: cannot import {module_name!r} ({type(err).__name__}: {err})") from None
        function = getattr(module, function_name, None)
        if not callable(function):
            raise ConfigError(f"eval.metrics: {entry!r}: module {module_name!r} has no function {function_name!r}")
        name = metric_name(entry)
        if name in metrics:
            raise ConfigError(f"eval.metrics: two metrics are named {name!r}")
        metrics[name] = function
    return metrics


def score(metrics: dict[str, Metric], prompt, reference: str, answer: str) -> dict[str, float]:
    """Every metric for one example; a user's function that fails or returns no number is named."""
    scores = {}
    for name, function in metrics.items():
        try:
            value = function(prompt=prompt, reference=reference, answer=answer)
        except Exception as err:
            raise ConfigError(f"eval.metrics: {name} raised {type(err).__name__}: {err}") from None
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"eval.metrics: {name} returned {value!r}; it must return a finite number")
        scores[name] = float(value)
    return scores
