"""Decide whether this pull request or push needs a GPU training run (the `decide` job).

    python scripts/ci/decide.py [--repo DIR]

Reads what GitHub Actions provides: GITHUB_EVENT_NAME, the webhook payload at
GITHUB_EVENT_PATH, GITHUB_BASE_REF, GITHUB_SHA and GITHUB_REPOSITORY; and GPU_RUNNER
(skypilot | self-hosted), the runner the train job will use. Writes the outputs `train`
(true | false), `reason`, `runner`, `pr`, `fork`, `base` and `head` to $GITHUB_OUTPUT and
a summary (what changed, which parameters, why) to $GITHUB_STEP_SUMMARY.

A run is needed when an input of training changed between the base and the head
(`git diff --name-only BASE...HEAD`): see TRAINING_INPUTS. A params.yaml change is read
with `dvc params diff`, so one that only touches comments or formatting trains nothing;
the parameters that did change are listed in the summary. Pull requests from forks never
train (their code must not run with this repository's cloud credentials); a manual run
(workflow_dispatch) always does, and so does a push with no previous commit to compare
with (a new branch, a force push).

Exit codes: 0 whatever the decision (so the check never hangs and never fails for a
decision), 1 when git cannot answer (e.g. a shallow clone), 2 for a bad GPU_RUNNER.
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import ghactions

# (pattern, what it is): a change to any of these can change what training produces.
TRAINING_INPUTS = (
    ("params.yaml", "parameters"),
    ("dvc.yaml", "pipeline"),
    ("dvc.lock", "pipeline lock: data and parameter versions"),
    ("*.dvc", "data version"),
    ("src/*", "training code"),
    ("pyproject.toml", "dependencies"),
    ("sky/*", "SkyPilot task"),
    ("configs/*", "launch configuration"),
    ("scripts/train_with_retries.sh", "training wrapper"),
)
RUNNERS = ("skypilot", "self-hosted")
NO_COMMIT = "0" * 40
MAX_LISTED = 30


@dataclass
class Decision:
    train: bool
    reason: str
    pr: str = ""
    fork: bool = False
    base: str = ""
    head: str = ""
    changed: list[str] = field(default_factory=list)
    triggers: list[tuple[str, str]] = field(default_factory=list)
    params: dict | None = None  # dvc params diff: file -> key -> old, new; None when not run


class GitError(Exception):
    pass


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise GitError(f"git {args[0]} failed: {done.stderr.strip()[-500:]}")
    return done.stdout


def has_commit(repo: Path, sha: str) -> bool:
    if not sha or sha == NO_COMMIT:
        return False
    return subprocess.run(["git", "cat-file", "-e", sha + "^{commit}"], cwd=repo, capture_output=True).returncode == 0


def changed_files(repo: Path, base: str, head: str) -> list[str]:
    """Paths changed on head since it forked from base (NUL-separated: any file name is safe)."""
    out = git(repo, "diff", "--name-only", "-z", f"{base}...{head}", "--")
    return [name for name in out.split("\0") if name]


def dvc_command() -> list[str] | None:
    if importlib.util.find_spec("dvc") is not None:
        return [sys.executable, "-m", "dvc"]
    found = shutil.which("dvc")
    return [found] if found else None


def params_diff(repo: Path, base: str, head: str) -> dict | None:
    """`dvc params diff --json BASE HEAD`: the parameter values that changed; None if DVC can't say."""
    command = dvc_command()
    if command is None:
        return None
    done = subprocess.run(
        [*command, "params", "diff", "--json", base, head],
        cwd=repo, capture_output=True, text=True, timeout=300, env={**os.environ, "DVC_NO_ANALYTICS": "1"},
    )
    if done.returncode != 0:
        return None
    try:
        return json.loads(done.stdout or "{}")
    except json.JSONDecodeError:
        return None


def triggers(paths: list[str]) -> list[tuple[str, str]]:
    found = []
    for path in paths:
        for pattern, what in TRAINING_INPUTS:
            if fnmatch.fnmatchcase(path, pattern):
                found.append((path, what))
                break
    return found


def compare(repo: Path, base: str, head: str, decision: Decision) -> Decision:
    """Fill in what changed between base and head, and whether that needs training."""
    merge_base = git(repo, "merge-base", base, head).strip()
    decision.base, decision.head = merge_base, git(repo, "rev-parse", head).strip()
    decision.changed = changed_files(repo, merge_base, head)
    decision.triggers = triggers(decision.changed)
    cosmetic = False
    if any(path == "params.yaml" for path, _ in decision.triggers):
        decision.params = params_diff(repo, merge_base, head)
        if decision.params is not None and not any(decision.params.values()):
            # Same values, other comments or formatting: not an experiment.
            cosmetic = True
            decision.triggers = [t for t in decision.triggers if t[0] != "params.yaml"]
    decision.train = bool(decision.triggers)
    if decision.train:
        kinds = sorted({what for _, what in decision.triggers})
        decision.reason = f"{len(decision.triggers)} training input(s) changed: {', '.join(kinds)}"
    else:
        decision.reason = "no training input changed"
        if cosmetic:
            decision.reason += " (params.yaml changed only in comments or formatting)"
    return decision


def decide(repo: Path, name: str, payload: dict) -> Decision:
    if name == "workflow_dispatch":
        return Decision(True, "manual run (workflow_dispatch)", head=os.environ.get("GITHUB_SHA", ""))
    if name == "pull_request":
        pr = payload.get("pull_request") or {}
        number = ghactions.pull_request_number(payload)
        head_repo = ((pr.get("head") or {}).get("repo") or {}).get("full_name") or ""
        this_repo = os.environ.get("GITHUB_REPOSITORY") or (payload.get("repository") or {}).get("full_name", "")
        decision = Decision(False, "", pr=number)
        base = (pr.get("base") or {}).get("sha") or ""
        if not has_commit(repo, base):
            base_ref = os.environ.get("GITHUB_BASE_REF", "")
            base = f"origin/{base_ref}" if base_ref else ""
        if not base:
            raise GitError("the pull request's base commit is not in this clone (check out with fetch-depth: 0)")
        head = (pr.get("head") or {}).get("sha") or ""
        head = head if has_commit(repo, head) else "HEAD"
        compare(repo, base, head, decision)
        if head_repo != this_repo:
            decision.fork = True
            would = "would train: " + decision.reason if decision.train else decision.reason
            decision.train = False
            decision.reason = f"pull request from a fork: GPU training runs only for branches of this repository ({would})"
        return decision
    if name == "push":
        before, after = payload.get("before") or "", payload.get("after") or os.environ.get("GITHUB_SHA", "") or "HEAD"
        if not has_commit(repo, before):
            return Decision(True, "no previous commit to compare with (new branch or force push): training a baseline",
                            head=after)
        decision = compare(repo, before, after, Decision(False, ""))
        if decision.train:
            decision.reason += ": training a new baseline"
        return decision
    return Decision(False, f"event {name or 'unknown'!r} does not train")


def render_summary(decision: Decision, runner: str) -> str:
    verdict = "train" if decision.train else "no training"
    lines = [f"### Training decision: **{verdict}**", "", ghactions.cell(decision.reason, 400), ""]
    if decision.fork:
        lines += ["Pull requests from forks never run on the GPU runners: their code must not see this "
                  "repository's cloud credentials. A maintainer can push the branch to this repository.", ""]
    if decision.triggers:
        lines += ["| changed file | is |", "| --- | --- |"]
        lines += [f"| {ghactions.code(path)} | {what} |" for path, what in decision.triggers[:MAX_LISTED]]
        if len(decision.triggers) > MAX_LISTED:
            lines.append(f"| … and {len(decision.triggers) - MAX_LISTED} more | |")
        lines.append("")
    others = len(decision.changed) - len(decision.triggers)
    if decision.changed:
        lines += [f"{len(decision.changed)} file(s) changed in all, {others} of them not training inputs.", ""]
    changes = [(f, k, v) for f, keys in (decision.params or {}).items() for k, v in keys.items()]
    if changes:
        lines += ["Parameters (`dvc params diff`):", "", "| parameter | before | after |", "| --- | --- | --- |"]
        for file, key, value in changes[:MAX_LISTED]:
            label = key if file == "params.yaml" else f"{file}:{key}"
            lines.append(f"| {ghactions.code(label)} | {ghactions.code(value.get('old'))} | {ghactions.code(value.get('new'))} |")
        lines.append("")
    if decision.train:
        lines.append(f"GPU runner: **{runner}**")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path("."), help="the git checkout (default: .)")
    args = parser.parse_args(argv)
    runner = os.environ.get("GPU_RUNNER") or "skypilot"
    if runner not in RUNNERS:
        print(f"error: GPU_RUNNER must be one of {', '.join(RUNNERS)} (the repository variable or the run's input)",
              file=sys.stderr)
        return 2
    try:
        decision = decide(args.repo, ghactions.event_name(), ghactions.event())
    except GitError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    ghactions.set_outputs(
        train=str(decision.train).lower(), reason=ghactions.one_line(decision.reason, 400), runner=runner,
        pr=decision.pr, fork=str(decision.fork).lower(), base=decision.base, head=decision.head,
    )
    ghactions.summary(render_summary(decision, runner))
    print(f"train={str(decision.train).lower()} runner={runner} ({len(decision.triggers)} training input(s) changed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
