"""A sick MLflow server on 127.0.0.1, for rehearsing outages that are not a clean "down".

    python scripts/sick_mlflow.py --mode 500            answers every request with HTTP 500
    python scripts/sick_mlflow.py --mode hang           accepts, reads the request, never answers
    python scripts/sick_mlflow.py --upstream http://127.0.0.1:5000 --mode 500
                                                        sick in front of a real server; `heal()`
                                                        (or --mode ok) forwards to it

Point MLFLOW_TRACKING_URI at the address it prints. The tests and scripts/bench_tracking.py
start it in-process (`SickServer(...).start()`) and switch `mode` while a run goes on.
"""

from __future__ import annotations

import argparse
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODES = ("500", "hang", "ok")


class SickServer:
    def __init__(self, mode: str = "500", upstream: str | None = None, port: int = 0, hang_s: float = 600):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.mode, self.upstream, self.hang_s = mode, upstream, hang_s
        self.requests = 0  # every request received
        self.in_flight = 0  # requests being held (mode "hang")
        self.lock = threading.Lock()
        self.healed = threading.Event()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.httpd.daemon_threads = True
        self.uri = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def start(self) -> SickServer:
        threading.Thread(target=self.httpd.serve_forever, name="sick-mlflow", daemon=True).start()
        return self

    def stop(self) -> None:
        self.healed.set()  # releases held requests
        self.httpd.shutdown()
        self.httpd.server_close()

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.mode = mode
        if mode == "ok":
            self.healed.set()
        else:
            self.healed.clear()

    def heal(self) -> None:
        self.set_mode("ok")

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _serve(self):
                with server.lock:
                    server.requests += 1
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if server.mode == "hang":
                    with server.lock:
                        server.in_flight += 1
                    try:
                        server.healed.wait(server.hang_s)  # the client gives up first (its timeout)
                    finally:
                        with server.lock:
                            server.in_flight -= 1
                    self.close_connection = True
                    return  # no answer at all
                if server.mode == "500" or not server.upstream:
                    self._answer(500, b'{"error_code": "INTERNAL_ERROR", "message": "the server is sick"}')
                    return
                self._forward(body)

            def _answer(self, status: int, payload: bytes, content_type: str = "application/json"):
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _forward(self, body: bytes):
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length", "connection")}
                request = urllib.request.Request(server.upstream + self.path, data=body if body else None,
                                                 headers=headers, method=self.command)
                try:
                    with urllib.request.urlopen(request, timeout=60) as response:
                        status, payload, kind = response.status, response.read(), response.headers.get("Content-Type", "")
                except urllib.error.HTTPError as err:
                    status, payload, kind = err.code, err.read(), err.headers.get("Content-Type", "")
                self._answer(status, payload, kind or "application/json")

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

        return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=MODES, default="500")
    parser.add_argument("--upstream", help="a real MLflow server to forward to in mode ok")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = SickServer(args.mode, args.upstream, args.port).start()
    print(f"sick MLflow server ({args.mode}) at {server.uri}; Ctrl-C stops it", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
