"""Optional pairwise judge: which of two answers is better, asked of an OpenAI-compatible endpoint.

Off by default (`eval.judge.enabled`). Where to ask comes from the environment (CI secrets):
  JUDGE_BASE_URL  e.g. https://api.openai.com/v1 (the `/chat/completions` route is added);
                  https, or http only on this machine
  JUDGE_API_KEY   sent as a bearer token
  JUDGE_MODEL     the judge model (or eval.judge.model)
Each held-out prompt is asked twice, this run's answer first and then second, so a judge that
prefers a position cancels out. An example scores 1 (this run preferred both times), 0.5
(split or tie) or 0; the win rate is the mean, with a bootstrap 95% interval: above 0.5 as a
whole, this run's answers are better. Tokens reported by the endpoint are counted and priced
with eval.judge.usd_per_million_*_tokens.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request

import numpy as np

from .compare import BETTER, NOISE, WORSE, bootstrap_delta

SYSTEM = (
    "You compare two answers to the same request. Judge helpfulness and correctness; the reference "
    "answer shows what a good answer contains. Reply with one letter only: A if answer A is better, "
    "B if answer B is better, T if they are equally good."
)


class JudgeError(Exception):
    pass


def endpoint(settings, environ=os.environ) -> tuple[str, str, str]:
    """(chat completions URL, API key, model), refusing a key sent in the clear to another machine."""
    base = environ.get("JUDGE_BASE_URL", "").rstrip("/")
    model = environ.get("JUDGE_MODEL") or settings.model
    if not base or not model:
        raise JudgeError("eval.judge.enabled needs JUDGE_BASE_URL and JUDGE_MODEL (or eval.judge.model)")
    parsed = urllib.parse.urlparse(base)
    local = parsed.hostname in ("127.0.0.1", "localhost", "::1")
    if parsed.scheme != "https" and not (parsed.scheme == "http" and local):
        raise JudgeError(f"JUDGE_BASE_URL must be https (http only on this machine): {base!r}")
    return f"{base}/chat/completions", environ.get("JUDGE_API_KEY", ""), model


def render_prompt(prompt) -> str:
    if isinstance(prompt, list):
        return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)
    return str(prompt)


def ask(url: str, key: str, model: str, prompt, reference: str, first: str, second: str) -> tuple[str, dict]:
    """'A', 'B' or 'T', and the endpoint's token usage."""
    question = (f"Request:\n{render_prompt(prompt)}\n\nReference answer:\n{reference}\n\n"
                f"Answer A:\n{first}\n\nAnswer B:\n{second}\n\nWhich is better: A, B or T?")
    payload = {"model": model, "temperature": 0, "max_tokens": 1,
               "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]}
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST", headers={
        "Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            reply = json.loads(response.read())
    except urllib.error.HTTPError as err:
        raise JudgeError(f"{url}: HTTP {err.code} {err.read().decode(errors='replace')[:200]}") from None
    except (urllib.error.URLError, TimeoutError, json.JSONDecodeError) as err:
        raise JudgeError(f"{url}: {getattr(err, 'reason', err)}") from None
    try:
        text = reply["choices"][0]["message"]["content"] or ""
    except (KeyError, IndexError, TypeError):
        raise JudgeError(f"{url}: not a chat completion: {str(reply)[:200]}") from None
    letter = text.strip()[:1].upper()
    return (letter if letter in ("A", "B") else "T"), reply.get("usage") or {}


def judge_runs(settings, answers: list[dict], base_answers: list[dict], base_run: str, log=print,
               environ=os.environ) -> dict:
    """Win rate of `answers` over the baseline's answers to the same prompts (paired by id)."""
    url, key, model = endpoint(settings, environ)
    base_by_id = {row["id"]: row["answer"] for row in base_answers}
    pairs = [row for row in answers if row["id"] in base_by_id][: settings.max_examples]
    if not pairs:
        raise JudgeError("the baseline answered none of these prompts")
    scores, tokens_in, tokens_out, calls = [], 0, 0, 0
    for row in pairs:
        ours, theirs = row["answer"], base_by_id[row["id"]]
        first, usage_1 = ask(url, key, model, row["prompt"], row["reference"], ours, theirs)
        second, usage_2 = ask(url, key, model, row["prompt"], row["reference"], theirs, ours)
        calls += 2
        for usage in (usage_1, usage_2):
            tokens_in += int(usage.get("prompt_tokens", 0))
            tokens_out += int(usage.get("completion_tokens", 0))
        # Our answer was A the first time and B the second.
        points = {"A": 1.0, "T": 0.5, "B": 0.0}[first] + {"B": 1.0, "T": 0.5, "A": 0.0}[second]
        scores.append(points / 2)
    delta, ci = bootstrap_delta(np.array(scores), np.full(len(scores), 0.5))
    ci95 = [0.5 + ci[0], 0.5 + ci[1]] if ci else None
    verdict = NOISE if ci95 is None or ci95[0] <= 0.5 <= ci95[1] else BETTER if ci95[0] > 0.5 else WORSE
    price_in = settings.usd_per_million_input_tokens or 0.0
    price_out = settings.usd_per_million_output_tokens or 0.0
    return {
        "baseline_run": base_run, "model": model, "examples": len(scores), "win_rate": 0.5 + delta, "ci95": ci95,
        "verdict": verdict, "scores": dict(zip((row["id"] for row in pairs), scores, strict=True)), "calls": calls,
        "input_tokens": tokens_in, "output_tokens": tokens_out,
        "cost_usd": round((tokens_in * price_in + tokens_out * price_out) / 1e6, 6),
        "priced": settings.usd_per_million_input_tokens is not None,
    }
