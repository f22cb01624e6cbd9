"""Webhook payloads, shaped as GitHub sends them (only the fields the workflows and act read)."""

from __future__ import annotations


def repository(full_name: str) -> dict:
    owner, name = full_name.split("/")
    return {"full_name": full_name, "name": name, "owner": {"login": owner}, "default_branch": "main"}


def pull_request(number: int, base_sha: str, head_sha: str, repo: str, head_repo: str | None = None,
                 head_ref: str = "feature", action: str = "synchronize") -> dict:
    """A `pull_request` event; `head_repo` other than `repo` is a pull request from a fork."""
    head_repo = head_repo or repo
    return {
        "action": action,
        "number": number,
        "pull_request": {
            "number": number,
            "title": "Try other parameters `$(touch PWNED)`",  # hostile text: must reach no shell
            "head": {"sha": head_sha, "ref": head_ref, "repo": repository(head_repo), "label": f"{head_repo}:{head_ref}"},
            "base": {"sha": base_sha, "ref": "main", "repo": repository(repo)},
        },
        "repository": repository(repo),
        "sender": {"login": head_repo.split("/")[0]},
    }


def push(before: str, after: str, repo: str, branch: str = "main") -> dict:
    return {"ref": f"refs/heads/{branch}", "before": before, "after": after, "repository": repository(repo),
            "head_commit": {"id": after}, "sender": {"login": repo.split("/")[0]}}
