"""A stand-in for the part of GitHub's REST API the workflows call: issue comments.

    POST  /repos/{owner}/{name}/issues/{number}/comments    create (201)
    GET   /repos/{owner}/{name}/issues/{number}/comments    list, oldest first, `per_page` (max 100)
                                                            and `page`, with a `Link` header
    PATCH /repos/{owner}/{name}/issues/comments/{id}        update the body

Only the workflow's token is accepted (401 otherwise, as GitHub answers a bad token), and a
comment made with it is written by `github-actions[bot]`, the account GitHub shows for
`github.token`. Comments by people can be seeded to fill pages. Every request is recorded.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

BOT = "github-actions[bot]"
LIST = re.compile(r"/repos/([\w.-]+/[\w.-]+)/issues/([1-9][0-9]*)/comments")
ONE = re.compile(r"/repos/([\w.-]+/[\w.-]+)/issues/comments/([1-9][0-9]*)")


@dataclass
class Comment:
    id: int
    issue: int
    body: str
    login: str
    updates: int = 0

    def as_json(self, base: str, repository: str) -> dict:
        return {"id": self.id, "body": self.body, "user": {"login": self.login, "type": "Bot" if self.login == BOT else "User"},
                "html_url": f"https://github.com/{repository}/pull/{self.issue}#issuecomment-{self.id}",
                "url": f"{base}/repos/{repository}/issues/comments/{self.id}"}


@dataclass
class GitHubApi:
    repository: str
    token: str
    comments: list[Comment] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)
    _next_id: int = 9000
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def seed(self, issue: int, body: str, login: str) -> None:
        with self._lock:
            self._next_id += 1
            self.comments.append(Comment(self._next_id, issue, body, login))

    def on(self, issue: int) -> list[Comment]:
        return [c for c in self.comments if c.issue == issue]

    def by_bot(self, issue: int) -> list[Comment]:
        return [c for c in self.on(issue) if c.login == BOT]

    def handle(self, method: str, url: str, headers, payload: dict | None, base: str) -> tuple[int, object, dict]:
        """(status, JSON body, extra headers) for one request."""
        self.requests.append((method, url))
        if headers.get("Authorization") != f"Bearer {self.token}":
            return 401, {"message": "Bad credentials"}, {}
        parsed = urlparse(url)
        listing, single = LIST.fullmatch(parsed.path), ONE.fullmatch(parsed.path)
        repository = (listing or single).group(1) if (listing or single) else ""
        if repository != self.repository:
            return 404, {"message": "Not Found"}, {}
        with self._lock:
            if listing and method == "GET":
                return self._list(int(listing.group(2)), parse_qs(parsed.query), base, parsed.path)
            if listing and method == "POST":
                if not isinstance(payload, dict) or not isinstance(payload.get("body"), str):
                    return 422, {"message": "body is required"}, {}
                self._next_id += 1
                comment = Comment(self._next_id, int(listing.group(2)), payload["body"], BOT)
                self.comments.append(comment)
                return 201, comment.as_json(base, repository), {}
            if single and method == "PATCH":
                found = [c for c in self.comments if c.id == int(single.group(2))]
                if not found:
                    return 404, {"message": "Not Found"}, {}
                if found[0].login != BOT:
                    return 403, {"message": "Resource not accessible by integration"}, {}
                found[0].body, found[0].updates = payload["body"], found[0].updates + 1
                return 200, found[0].as_json(base, repository), {}
        return 405, {"message": "Method not allowed"}, {}

    def _list(self, issue: int, query: dict, base: str, path: str) -> tuple[int, object, dict]:
        per_page = min(int((query.get("per_page") or ["30"])[0]), 100)
        page = int((query.get("page") or ["1"])[0])
        comments = self.on(issue)
        last = max(1, -(-len(comments) // per_page))
        chunk = comments[(page - 1) * per_page : page * per_page]
        links = []
        if page < last:
            links += [f'<{base}{path}?per_page={per_page}&page={page + 1}>; rel="next"',
                      f'<{base}{path}?per_page={per_page}&page={last}>; rel="last"']
        if page > 1:
            links += [f'<{base}{path}?per_page={per_page}&page=1>; rel="first"',
                      f'<{base}{path}?per_page={per_page}&page={page - 1}>; rel="prev"']
        headers = {"Link": ", ".join(links)} if links else {}
        return 200, [c.as_json(base, self.repository) for c in chunk], headers


class ApiServer:
    """GitHubApi served on 127.0.0.1 (a free port) in a thread; a context manager."""

    def __init__(self, api: GitHubApi):
        self.api = api
        served = api

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _any(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    payload = json.loads(raw) if raw else None
                except json.JSONDecodeError:
                    payload = None
                base = f"http://{self.headers.get('Host')}"
                status, data, extra = served.handle(method, self.path, self.headers, payload, base)
                body = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                for key, value in extra.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):  # noqa: N802 (http.server's names)
                self._any("GET")

            def do_POST(self):  # noqa: N802
                self._any("POST")

            def do_PATCH(self):  # noqa: N802
                self._any("PATCH")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ApiServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
