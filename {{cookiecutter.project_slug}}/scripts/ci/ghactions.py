"""What the CI step scripts need from GitHub Actions: the event, step outputs, the job summary.

Stdlib only. Everything here treats text from a pull request (file names, branch names,
parameter values) as hostile:
- outputs are written in the multi-line form with a random delimiter, so a value that
  contains a newline cannot add an output of its own (`train=true`);
- text shown in the job summary goes through `cell` / `code`, which keep it on one line and
  inside its table cell or code span;
- nothing untrusted is printed to stdout, where the runner would read `::command::` lines.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from pathlib import Path

PR_NUMBER = re.compile(r"[1-9][0-9]{0,9}")


def event() -> dict:
    """The webhook payload of the event that started the run ({} outside GitHub Actions)."""
    path = os.environ.get("GITHUB_EVENT_PATH")
    if not path:
        return {}
    return json.loads(Path(path).read_text(encoding="utf-8")) or {}


def event_name() -> str:
    return os.environ.get("GITHUB_EVENT_NAME", "")


def pull_request_number(payload: dict | None = None) -> str:
    """The PR number as digits, from PR_NUMBER or the payload; '' when this is no PR."""
    payload = event() if payload is None else payload
    number = os.environ.get("PR_NUMBER") or str((payload.get("pull_request") or {}).get("number") or "")
    if number and not PR_NUMBER.fullmatch(number):
        raise SystemExit(f"error: PR_NUMBER must be a pull request number, got {number!r}")
    return number


def set_outputs(**values: object) -> None:
    """Step outputs (`steps.<id>.outputs.<key>`); does nothing outside Actions."""
    path = os.environ.get("GITHUB_OUTPUT")
    lines = []
    for key, value in values.items():
        text = "" if value is None else str(value)
        delimiter = f"ghadelimiter_{secrets.token_hex(16)}"
        lines.append(f"{key}<<{delimiter}\n{text}\n{delimiter}\n")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write("".join(lines))


def summary(markdown: str) -> None:
    """Append to the job summary (the run's page); does nothing outside Actions."""
    path = os.environ.get("GITHUB_STEP_SUMMARY")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(markdown.rstrip("\n") + "\n\n")


def one_line(text: object, limit: int = 200) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def cell(text: object, limit: int = 200) -> str:
    """Text for a markdown table cell: one line, pipes and HTML neutralised."""
    flat = one_line(text, limit)
    return flat.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def code(text: object, limit: int = 200) -> str:
    """Text as an inline code span (for a table cell) that nothing inside it can close early:
    backticks become quotes, pipes are escaped (GitHub splits table cells even in code)."""
    flat = one_line(text, limit).replace("`", "'").replace("|", "\\|")
    return f"`{flat}`" if flat else "` `"


def run_url() -> str:
    """The page of this workflow run; '' outside Actions."""
    server, repo, run_id = (os.environ.get(k, "") for k in ("GITHUB_SERVER_URL", "GITHUB_REPOSITORY", "GITHUB_RUN_ID"))
    if not (server and repo and run_id):
        return ""
    return f"{server}/{repo}/actions/runs/{run_id}"
