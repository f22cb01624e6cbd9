"""A local S3 endpoint for the storage tests: moto's server, a real process on 127.0.0.1.

`start()` runs `moto_server -H 127.0.0.1 -p PORT` and waits until it answers; `kill()` is SIGKILL,
so the endpoint dies the way a crashed or unreachable store does: mid-request, without a word.
`start()` again brings it back on the same port.

moto keeps objects in memory only, so a plain restart would come back empty, which no real store
does. moto's recorder (MOTO_ENABLE_RECORDING) appends every request it receives to a file, and
after a restart the writes in that file are sent again, so the endpoint comes back holding what it
held: every object whose upload had reached it, as a store's disk would. (A request that had
arrived when the kill came is replayed whole: a store that finished a write its client never
heard about.) moto's own replay reads the file line by line, but concurrent uploads interleave
their lines (an entry and its newline are two writes), so the entries are read here as a stream
of JSON objects instead.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def recorded_writes(recording: Path) -> Iterator[tuple[str, str, dict[str, str], bytes | None]]:
    """(method, path with query, headers, body) of each request in moto's recording that changes
    state, in the order received; reads (GET, HEAD) and moto's own API are left out."""
    text, decoder, position = recording.read_text(encoding="utf-8"), json.JSONDecoder(), 0
    while (start := text.find('{"headers"', position)) >= 0:
        try:
            entry, position = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            position = start + 1  # a torn entry (the kill came mid-write): the next one starts later
            continue
        url = urllib.parse.urlsplit(entry["url"])
        if entry["method"] in ("GET", "HEAD") or url.path.startswith("/moto-api/"):
            continue
        body = entry.get("body") or None
        if body is not None:
            body = base64.b64decode(body) if entry.get("body_encoded") else body.encode("utf-8")
        headers = {k: v for k, v in entry["headers"].items() if k.lower() != "transfer-encoding"}
        yield entry["method"], url.path + (f"?{url.query}" if url.query else ""), headers, body


class S3Endpoint:
    """One moto server on a fixed port, which can be killed and brought back with its objects."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.recording = folder / "requests.jsonl"
        self.log = folder / "moto.log"
        self.process: subprocess.Popen | None = None

    def client_env(self) -> dict[str, str]:
        """What a client of this endpoint needs: keys moto accepts (any will do), and none of the
        machine's AWS config, profiles or instance metadata (an empty config file: botocore refuses
        /dev/null)."""
        empty = self.folder / "aws-config"
        empty.touch()
        return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_CONFIG_FILE": str(empty),
                "AWS_SHARED_CREDENTIALS_FILE": str(empty), "AWS_EC2_METADATA_DISABLED": "true"}

    def start(self, timeout: float = 30) -> None:
        moto = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which("moto_server")
        assert moto, "moto_server is not installed (pip install 'moto[server]')"
        assert not self._answers(), f"something else answers on {self.url} already"
        env = {**os.environ, "MOTO_ENABLE_RECORDING": "true", "MOTO_RECORDER_FILEPATH": str(self.recording)}
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(self.port)], env=env,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self._answers():
            assert self.process.poll() is None, f"moto_server exited with {self.process.returncode}:\n{self.says()}"
            assert time.monotonic() < deadline, f"moto_server did not answer in {timeout:.0f} s:\n{self.says()}"
            time.sleep(0.1)
        assert self.process.poll() is None, f"moto_server exited with {self.process.returncode}:\n{self.says()}"
        if self.recording.is_file() and self.recording.stat().st_size:
            self._post("/moto-api/recorder/stop-recording")  # the replay is in the file already
            import requests  # moto's own dependency; unlike urllib it adds no form Content-Type to a bare body

            for method, path, headers, body in recorded_writes(self.recording):
                # An error answer is what the request got the first time too (a bucket that existed already).
                requests.request(method, f"{self.url}{path}", headers=headers, data=body, timeout=60)
            self._post("/moto-api/recorder/start-recording")

    def kill(self) -> None:
        """SIGKILL: no goodbye to the clients, and the port refuses connections from now on."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def writes_answered(self) -> int:
        """How many PUTs the endpoint has answered with success so far (its access log, every start)."""
        if not self.log.is_file():
            return 0
        return sum(1 for line in self.log.read_text(errors="replace").splitlines() if '"PUT /' in line and '" 200 ' in line)

    def says(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.is_file() else ""

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/moto-api/data.json", timeout=2) as response:
                return response.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def _post(self, path: str, timeout: float = 30) -> None:
        request = urllib.request.Request(f"{self.url}{path}", data=b"", method="POST")
        with urllib.request.urlopen(request, timeout=timeout) as response:
            assert response.status == 200, f"{path}: HTTP {response.status}"

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def objects(self, bucket: str, prefix: str = "") -> dict[str, bytes]:
        """Every object under `prefix`, read back through the S3 API: key -> bytes."""
        client, found = self.client(), {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                found[item["Key"]] = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
        return found

    def keys(self, bucket: str, prefix: str = "") -> set[str]:
        client, found = self.client(), set()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            found.update(item["Key"] for item in page.get("Contents", []))
        return found
