"""The pull request's sticky comment: this PR's runs against main's baseline (the `report` job).

    python scripts/ci/comment.py --pr 12 --dry-run                 # print the body
    python scripts/ci/comment.py --pr 12 --plots reports --post    # + PNG plots; create or update the comment

The body is a hidden marker (MARKER), a heading, how the run went (--train-result,
--plan-result, --estimate: given by the workflow), the table of `{{ cookiecutter.package_name }} report --pr N
--format markdown`: the quality block (each metric of the PR's newest run against the newest
finished run of main on the same held-out examples: delta, bootstrap 95% interval, verdict),
then speed and cost (eval loss, perplexity, tokens/s, cost, GPU hours, wall time, GPU, cloud,
spot, recoveries, each with its delta), then a few answers side by side; and a link to the
workflow run, whose artifacts hold the plots (no image leaves GitHub).

`--post` keeps ONE comment per pull request: it lists the PR's comments through the REST
API ($GITHUB_API_URL, $GITHUB_REPOSITORY, $GITHUB_TOKEN; urllib, no shell, no gh), updates
the first one that has the marker AND was written by the workflow's own account
(--bot-login), and creates one only if there is none. A comment by anyone else that quotes
the marker is never touched.

Exit codes: 0 done; 1 the report could not be built (the comment says so and is still
posted); 2 bad usage (no PR number, token or repository); 3 the GitHub API refused.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import ghactions

PACKAGE = "{{ cookiecutter.package_name }}"
MARKER = "<!-- spot-lora-report -->"
MAX_BODY = 60_000  # GitHub refuses comments over 65,536 characters
PER_PAGE, MAX_PAGES = 100, 50
REPOSITORY = re.compile(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+")
STATUS = {
    "success": "Trained ✅",
    "failure": "Training failed ❌: see the train job's log. The table shows what the run logged before it stopped.",
    "cancelled": "Training was cancelled.",
    "skipped": "Not trained: the train job did not run (approval not given, or skipped).",
}


# ------------------------------------------------------------------------------- the body


def report(command_args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", PACKAGE, "report", *command_args], capture_output=True, text=True,
                          timeout=600)


def build_body(args) -> tuple[str, bool]:
    """The comment's markdown, and whether the report could be built."""
    common = ["--pr", args.pr, "--baseline", args.baseline, "--last", str(args.last), "--params", args.params]
    for assignment in args.set:
        common += ["--set", assignment]
    table = report([*common, "--format", "markdown"])
    ok = table.returncode == 0
    if ok and args.plots:
        plots = report([*common, "--format", "json", "--plots", str(args.plots)])
        ok = plots.returncode == 0
        if not ok:
            table = plots
    lines = [MARKER, f"## Training report for #{args.pr}", ""]
    if args.plan_result == "failure":
        lines.append("**Not trained:** the plan failed or the estimate is over budget (see the plan job).")
    elif args.train_result in STATUS:
        lines.append(f"**{STATUS[args.train_result]}**")
    if args.estimate:
        lines.append(f"Estimate before launch: {ghactions.cell(args.estimate, 300)}")
    lines.append("")
    if ok:
        lines += [table.stdout.rstrip(), "",
                  f"Baseline: the newest finished run of `{ghactions.cell(args.baseline)}`. Quality verdicts come from "
                  "the same held-out examples, paired: better or worse only when the whole 95% interval is on one side "
                  "of 0. Speed and cost: ✅ better than the baseline, ⚠️ worse; the change follows in brackets."]
    else:
        error = (table.stderr or table.stdout).strip()[-1500:].replace("```", "'''")
        lines += ["**The comparison could not be built:**", "", "```text", error, "```"]
    url = ghactions.run_url()
    if url:
        plots = " Loss curves and cost against eval loss are in its `training-report` artifact." if args.plots else ""
        lines += ["", f"[Workflow run]({url}).{plots}"]
    commit = os.environ.get("HEAD_SHA") or os.environ.get("GITHUB_SHA", "")
    footer = f"commit {commit[:7]} · " if re.fullmatch(r"[0-9a-f]{7,40}", commit) else ""
    lines += ["", f"<sub>{footer}this comment is updated in place on every training run of this pull request</sub>"]
    body = "\n".join(lines) + "\n"
    if len(body) > MAX_BODY:
        body = body[: MAX_BODY - 40] + "\n\n… (cut: too long for a comment)\n"
    return body, ok


# ----------------------------------------------------------------------- the GitHub API


class ApiError(Exception):
    pass


class GitHub:
    """The few REST calls a sticky comment needs."""

    def __init__(self, api_url: str, repository: str, token: str):
        parsed = urllib.parse.urlparse(api_url)
        local = parsed.hostname in ("127.0.0.1", "localhost", "::1")
        if parsed.scheme != "https" and not (parsed.scheme == "http" and local):
            raise ApiError(f"GITHUB_API_URL must be https (http only on this machine): {api_url!r}")
        if not REPOSITORY.fullmatch(repository):
            raise ApiError(f"GITHUB_REPOSITORY must be owner/name: {repository!r}")
        self.base, self.repository, self.token = api_url.rstrip("/"), repository, token

    def call(self, method: str, path: str, payload: dict | None = None):
        request = urllib.request.Request(
            f"{self.base}{path}",
            method=method,
            data=None if payload is None else json.dumps(payload).encode(),
            headers={
                "Authorization": f"Bearer {self.token}",
                "Accept": "application/vnd.github+json",
                "X-GitHub-Api-Version": "2022-11-28",
                "User-Agent": f"{PACKAGE}-pr-report",
                **({"Content-Type": "application/json"} if payload is not None else {}),
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as err:
            detail = err.read().decode(errors="replace")[:300]
            raise ApiError(f"{method} {path}: HTTP {err.code} {detail}") from None
        except urllib.error.URLError as err:
            raise ApiError(f"{method} {path}: {err.reason}") from None

    def find_comment(self, pr: str, author: str) -> int | None:
        """The first comment with the marker written by `author`; None if there is none."""
        for page in range(1, MAX_PAGES + 1):
            comments = self.call("GET", f"/repos/{self.repository}/issues/{pr}/comments?per_page={PER_PAGE}&page={page}")
            for comment in comments or []:
                if MARKER in (comment.get("body") or "") and (comment.get("user") or {}).get("login") == author:
                    return int(comment["id"])
            if not comments or len(comments) < PER_PAGE:
                return None
        return None

    def upsert(self, pr: str, body: str, author: str) -> tuple[str, dict]:
        existing = self.find_comment(pr, author)
        if existing is not None:
            return "updated", self.call("PATCH", f"/repos/{self.repository}/issues/comments/{existing}", {"body": body})
        return "created", self.call("POST", f"/repos/{self.repository}/issues/{pr}/comments", {"body": body})


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pr", help="pull request number (default: PR_NUMBER or the event's)")
    parser.add_argument("--plots", type=Path, help="write the PNG plots into this folder (upload it as an artifact)")
    parser.add_argument("--baseline", default="main", help="branch whose newest finished run is the baseline")
    parser.add_argument("--last", type=int, default=5, help="this PR's newest N runs (default 5)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed to `report`")
    parser.add_argument("--train-result", default="", help="the train job's result (success, failure, ...)")
    parser.add_argument("--plan-result", default="", help="the plan job's result")
    parser.add_argument("--estimate", default="", help="the plan's one-line estimate")
    parser.add_argument("--bot-login", default="github-actions[bot]", help="the account whose comment is updated")
    parser.add_argument("--out", type=Path, help="also write the body to this file")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--dry-run", action="store_true", help="print the body, post nothing")
    mode.add_argument("--post", action="store_true", help="create or update the sticky comment")
    args = parser.parse_args(argv)

    try:
        args.pr = args.pr or ghactions.pull_request_number()
    except SystemExit as err:
        print(err, file=sys.stderr)
        return 2
    if not args.pr or not ghactions.PR_NUMBER.fullmatch(args.pr):
        print("error: no pull request number (--pr or PR_NUMBER)", file=sys.stderr)
        return 2
    body, ok = build_body(args)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(body, encoding="utf-8")
    ghactions.summary(body)
    if args.dry_run:
        print(body, end="")
        return 0 if ok else 1
    token, repository = os.environ.get("GITHUB_TOKEN", ""), os.environ.get("GITHUB_REPOSITORY", "")
    if not token or not repository:
        print("error: --post needs GITHUB_TOKEN and GITHUB_REPOSITORY", file=sys.stderr)
        return 2
    try:
        github = GitHub(os.environ.get("GITHUB_API_URL") or "https://api.github.com", repository, token)
        action, comment = github.upsert(args.pr, body, args.bot_login)
    except ApiError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    print(f"{action} comment {comment.get('id', '?') if isinstance(comment, dict) else '?'} on #{args.pr}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
