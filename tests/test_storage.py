"""Storage on the S3 protocol: a project made with `dvc_remote=s3` and an S3-compatible endpoint (the
answer a Cloudflare R2, MinIO or Backblaze B2 user gives), against moto's S3 server on 127.0.0.1
(tests/s3_endpoint.py), and the same endpoint killed mid-transfer.

Everything here is real: the baked project's Makefile, the `dvc` CLI with DVC's S3 plugin, an
`mlflow server` started by `make mlflow-server` keeping its artifacts in the bucket, training and
evaluation of the tiny model. The bucket is read back through the S3 API (boto3), never through the
project's own code. moto stands in for the store; what it cannot show is a real store's latency,
throttling or consistency, and R2's or B2's own quirks (their regions, their key formats).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from s3_endpoint import S3Endpoint, free_port

from conftest import bake, bake_cli

BUCKET = "spot-lora-data"
PKG = "storage_check"
MAKE = shutil.which("make")


def environment(endpoint: S3Endpoint, project: Path, **extra: str) -> dict[str, str]:
    """A user's shell: the store's keys, the project's package importable, nothing downloaded."""
    return {**os.environ, **endpoint.client_env(), "PYTHONPATH": str(project / "src"), "HF_HUB_OFFLINE": "1",
            "MLFLOW_DISABLE_TELEMETRY": "true", "OMP_NUM_THREADS": "1", "PATH": f"{Path(sys.executable).parent}{os.pathsep}"
            f"{os.environ.get('PATH', '')}", **extra}


def run(*command: str, cwd: Path, env: dict[str, str], timeout: int = 600, ok: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(list(command), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if ok:
        assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def dvc_key(md5: str, prefix: str = "dvc") -> str:
    """Where DVC 3 keeps an object in the remote: files/md5/<2 chars>/<the rest>."""
    return f"{prefix}/files/md5/{md5[:2]}/{md5[2:]}"


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


# The tiny model and a short schedule: only the storage paths matter here.
TINY = {
    "model": {"method": "lora", "dtype": "float32"},
    "data": {"max_length": 512, "num_proc": 1},
    "train": {"max_steps": 6, "micro_batch": 4, "global_batch": 8, "log_every_steps": 2},
    "eval": {"generations": 4, "max_new_tokens": 16},
    "checkpoint": {"every_steps": 3},
    "compute": {"device": "cpu"},
    "tracking": {"system_metrics": False, "flush_timeout_s": 5},
}


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory):
    store = S3Endpoint(tmp_path_factory.mktemp("s3"))
    store.start()
    store.client().create_bucket(Bucket=BUCKET)
    yield store
    store.kill()


@pytest.fixture(scope="module")
def project(tmp_path_factory, endpoint) -> Path:
    """Baked as an R2 or MinIO user would: dvc_remote=s3, the bucket, the store's endpoint; then the
    tiny model in params.yaml, committed."""
    project = bake(tmp_path_factory.mktemp("baked"), project_name="Storage Check", dvc_remote="s3",
                   dvc_remote_url=f"s3://{BUCKET}/dvc", s3_endpoint_url=endpoint.url)
    env = environment(endpoint, project)
    tiny = project / ".cache/tiny-model"
    run(sys.executable, "-m", PKG, "tiny-model", "--out", str(tiny), cwd=project, env=env)
    params = yaml.safe_load((project / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section].update(values)
    params["model"]["base"] = str(tiny)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run("git", "commit", "-q", "-am", "The tiny model", cwd=project, env=env)
    return project


@pytest.fixture(scope="module")
def mlflow_server(project, endpoint, tmp_path_factory):
    """`make mlflow-server` as docs/storage.md shows it, the bucket and the endpoint filled in: its URL."""
    doc = (project / "docs/storage.md").read_text()
    line = next(line for line in doc.splitlines() if line.startswith("make mlflow-server "))
    port = free_port()
    command = (line.replace("s3://my-bucket/", f"s3://{BUCKET}/").replace("https://<account id>.r2.cloudflarestorage.com", endpoint.url)
               + f" MLFLOW_PORT={port} PYTHON={sys.executable}")
    log = tmp_path_factory.mktemp("mlflow") / "server.log"
    with log.open("wb") as out:
        server = subprocess.Popen(["bash", "-c", command], cwd=project, env=environment(endpoint, project), stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert server.poll() is None, f"$ {command}\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                break
        except OSError:
            assert time.monotonic() < deadline, f"the MLflow server did not answer:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
    yield url
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)


def run_artifacts(endpoint: S3Endpoint, run_id: str) -> dict[str, bytes]:
    """A run's artifacts as the bucket holds them: file name -> bytes."""
    return {key.rsplit("/", 1)[1]: data for key, data in endpoint.objects(BUCKET, "mlflow/").items()
            if f"/{run_id}/artifacts/" in key}


# --------------------------------------------------------------------------------------------
# The answer: checked before anything is generated, and written into .dvc/config.
# --------------------------------------------------------------------------------------------
REFUSED = {
    "the bucket in the endpoint (as R2's dashboard shows it)": {"s3_endpoint_url": "https://abc123.r2.cloudflarestorage.com/my-bucket"},
    "not http(s)": {"s3_endpoint_url": "ftp://minio.example.com:9000"},
    "no host": {"s3_endpoint_url": "https://"},
    "credentials in it": {"s3_endpoint_url": "https://key:secret@minio.example.com"},
    "a port that is not a number": {"s3_endpoint_url": "http://minio.example.com:90x0"},
    "shell characters in the host": {"s3_endpoint_url": "http://minio;touch${IFS}pwned"},
    "an endpoint for a gs remote": {"s3_endpoint_url": "https://minio.example.com", "dvc_remote": "gs"},
}


@pytest.mark.parametrize("answers", REFUSED.values(), ids=REFUSED.keys())
def test_bad_endpoint_answers_are_refused_cleanly(answers, tmp_path):
    result = bake_cli(tmp_path, **{"dvc_remote": "s3", **answers})
    errors = [line for line in (result.stderr + result.stdout).splitlines() if line.startswith("error: ")]
    assert result.returncode != 0 and errors, result.stderr + result.stdout
    assert errors[0].startswith("error: s3_endpoint_url: "), errors
    assert list(tmp_path.iterdir()) == [], "a project folder was left behind"


def test_dataset_pushes_and_pulls_through_the_endpoint(project, endpoint):
    env = environment(endpoint, project)
    remote = run("dvc", "config", "remote.storage.endpointurl", cwd=project, env=env).stdout.strip()
    assert remote == endpoint.url
    dataset = project / "data/raw/support.jsonl"
    original = dataset.read_bytes()
    run(MAKE, "push", cwd=project, env=env)
    # Read back through the S3 API: the object DVC names by the file's md5, holding the file's bytes.
    assert endpoint.objects(BUCKET, dvc_key(md5_of(dataset))) == {dvc_key(md5_of(dataset)): original}

    shutil.rmtree(project / ".dvc/cache")
    dataset.unlink()
    run("dvc", "pull", "data/raw/support.jsonl.dvc", cwd=project, env=env)
    assert dataset.read_bytes() == original


def test_pipeline_runs_against_the_bucket_and_mlflow_keeps_its_artifacts_there(project, endpoint, mlflow_server):
    """`dvc repro` trains with an MLflow server whose artifacts live in the bucket; `make push` sends the
    outputs; then, with the local cache and outputs gone, `dvc exp run --pull` and `dvc repro --pull`
    take them back from the bucket and rerun only what changed."""
    env = environment(endpoint, project, MLFLOW_TRACKING_URI=mlflow_server)
    run("dvc", "repro", cwd=project, env=env)
    run(MAKE, "push", cwd=project, env=env)
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    cached = {out["path"]: out["md5"] for stage in lock["stages"].values() for out in stage.get("outs", [])
              if out["path"] in ("data/prepared", "outputs/adapter")}
    assert set(cached) == {"data/prepared", "outputs/adapter"}
    keys = endpoint.keys(BUCKET, "dvc/")
    assert {dvc_key(md5) for md5 in cached.values()} <= keys, sorted(keys)[:20]  # the folders' .dir listings

    # The training run's artifacts: in the bucket, byte for byte what training and evaluation wrote.
    run_id = json.loads((project / "outputs/mlflow_run.json").read_text())["run_id"]
    artifacts = run_artifacts(endpoint, run_id)
    adapter = project / "outputs/adapter/adapter_model.safetensors"
    assert artifacts.get("adapter_model.safetensors") == adapter.read_bytes(), sorted(artifacts)
    assert artifacts.get("eval_examples.json") == (project / "outputs/eval_examples.json").read_bytes()  # per-example scores
    assert artifacts.get("metrics.json") == (project / "outputs/metrics.json").read_bytes()
    assert artifacts.get("loss.png", b"").startswith(b"\x89PNG")
    assert {"adapter_config.json", "generations.json", "generations.jsonl"} <= set(artifacts)

    trained = adapter.read_bytes()
    for path in (".dvc/cache", "data/prepared", "outputs/adapter"):
        shutil.rmtree(project / path)
    experiment = run("dvc", "exp", "run", "--pull", "-S", "eval.max_new_tokens=8", cwd=project, env=env)
    ran = re.findall(r"Running stage '(\w+)'", experiment.stdout)
    assert ran == ["evaluate"], experiment.stdout[-3000:]  # prepare and train came from the bucket
    assert adapter.read_bytes() == trained

    for path in (".dvc/cache", "data/prepared", "outputs/adapter"):
        shutil.rmtree(project / path)
    again = run("dvc", "repro", "--pull", cwd=project, env=env)
    assert "Running stage" not in again.stdout, again.stdout[-3000:]
    assert adapter.read_bytes() == trained


def test_endpoint_dies_during_dvc_push(project, endpoint):
    """The store is killed (SIGKILL) after 20 of 300 files of a push have landed.

    Measured on a 2-core machine under load 9: `make push` (the Makefile's AWS_MAX_ATTEMPTS=3,
    AWS_RETRY_MODE=standard) failed 12.6 s after the kill (14.1 s in a run by hand), naming the
    endpoint it could not reach; the same push by hand with botocore's defaults kept retrying each
    file and failed after 553 s. The store came back holding 22 of the 300 files; the rerun pushed
    exactly the 279 objects that were missing (278 files and the folder's .dir listing), and the
    bucket then held every file whole (the counts are printed: `pytest -s`)."""
    env = environment(endpoint, project)
    batch = project / "data/batch"
    batch.mkdir()
    for i in range(300):
        (batch / f"part-{i:03d}.bin").write_bytes(hashlib.sha256(f"{i}".encode()).digest() * 256)  # 8 KB each, all different
    run("dvc", "add", "data/batch", cwd=project, env=env)
    files = {dvc_key(md5_of(path)): path.read_bytes() for path in batch.iterdir()}

    answered = endpoint.writes_answered()
    push = subprocess.Popen([MAKE, "push"], cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    while endpoint.writes_answered() < answered + 20:
        assert push.poll() is None, f"the push ended before the store was killed:\n{push.stdout.read()[-3000:]}"
        time.sleep(0.05)
    endpoint.kill()
    killed = time.monotonic()
    output, _ = push.communicate(timeout=300)
    to_error = time.monotonic() - killed
    assert push.returncode != 0, output[-3000:]
    assert "Could not connect to the endpoint URL" in output and endpoint.url in output, output[-3000:]
    assert "failed to push data to the cloud" in output, output[-3000:]
    assert to_error < 60, f"the push took {to_error:.0f} s to give up"

    endpoint.start()  # back, with every write that had reached it
    in_store = endpoint.keys(BUCKET, "dvc/")
    held = in_store & set(files)
    cache = project / ".dvc/cache/files/md5"
    missing = {f"dvc/files/md5/{p.parent.name}/{p.name}" for p in cache.glob("*/*")} - in_store
    rerun = run(MAKE, "push", cwd=project, env=env)
    pushed = int(re.search(r"(\d+) files? pushed", rerun.stdout).group(1))
    stored = endpoint.objects(BUCKET, "dvc/files/md5/")
    assert {key: stored.get(key) for key in files} == files  # every file, whole
    assert len(held) >= 20 and pushed == len(missing), (len(held), pushed, len(missing))  # what was missing, no more
    status = run("dvc", "status", "--cloud", cwd=project, env=env).stdout
    assert "in sync" in status, status
    print(f"\ndvc push: error {to_error:.1f} s after the kill; {len(held)} of {len(files)} files held by the store "
          f"after it came back; the rerun pushed {pushed} (the rest and the .dir listing)")


def test_endpoint_dies_during_mlflow_artifact_uploads(project, endpoint, mlflow_server):
    """The store is killed once the training run exists on the MLflow server, before its artifacts
    (adapter, loss curve, then evaluation's per-example scores) are uploaded.

    Training and evaluation both finish (exit 0): metrics reach the server, which is up; the artifact
    uploads fail and wait in the run's spool, and training waits for them only `tracking.flush_timeout_s`
    (5 s here) at its very end. One upload against the dead store gets the server's error in seconds
    (measured 1.8 s and 2.3 s on a 2-core machine under load 9; the server has AWS_MAX_ATTEMPTS=3
    from the Makefile); training and its wait took 60 s, as without the fault. Once the store is
    back, `tracking-sync` sends every pending update: all 11 artifacts (adapter, loss curve, metrics,
    per-example scores, generations) land whole, the run is FINISHED, and the earlier run's artifacts
    are still there (timings printed: `pytest -s`)."""
    from mlflow import MlflowClient

    env = environment(endpoint, project, MLFLOW_TRACKING_URI=mlflow_server)
    where = ["--set", "checkpoint.dir=checkpoints-fault", "--set", "train.output_dir=outputs-fault"]
    before = endpoint.objects(BUCKET, "mlflow/")  # the earlier run's artifacts (test_pipeline_runs_...)

    if not (project / "data/prepared/train").exists():  # left by test_pipeline_runs_... when it ran first
        run(sys.executable, "-m", PKG, "prepare", cwd=project, env=env)
    started = time.monotonic()
    train = subprocess.Popen([sys.executable, "-m", PKG, "train", *where], cwd=project, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    spool_state = project / "checkpoints-fault"
    run_id = None
    while run_id is None:
        assert train.poll() is None, f"training ended before its run existed:\n{train.stdout.read()[-3000:]}"
        for state in spool_state.glob("*/mlflow-spool/run.json"):
            run_id = json.loads(state.read_text() or "{}").get("run_id")
        time.sleep(0.1)
    endpoint.kill()
    output, _ = train.communicate(timeout=600)
    trained_in = time.monotonic() - started
    assert train.returncode == 0, output[-3000:]
    assert "MLflow unreachable (" in output and "updates kept in" in output, output[-3000:]

    # What the spool's sender meets on each try (the project's client asks once, MLFLOW_HTTP_REQUEST_MAX_RETRIES=0):
    # the server's answer to an upload while the store is dead, after its own bounded retries.
    probe = urllib.request.Request(f"{mlflow_server}/api/2.0/mlflow-artifacts/artifacts/probe/{run_id}.json", data=b"{}",
                                   method="PUT")
    tried = time.monotonic()
    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.urlopen(probe, timeout=300)
    one_upload = time.monotonic() - tried
    assert answer.value.code >= 500 and one_upload < 30, f"HTTP {answer.value.code} after {one_upload:.0f} s"

    client = MlflowClient(mlflow_server)
    evaluated = run(sys.executable, "-m", PKG, "evaluate", *where, cwd=project, env=env)
    assert "evaluation results kept in" in evaluated.stdout, evaluated.stdout[-3000:]
    # Training was not held up: its metrics reached the server; the run waits for its artifacts.
    assert [m.step for m in client.get_metric_history(run_id, "loss")], "no loss reached MLflow"
    assert client.get_run(run_id).info.status == "RUNNING"

    endpoint.start()
    synced = run(sys.executable, "-m", PKG, "tracking-sync", *where, cwd=project, env=env)
    assert "1 spool(s) sent, 0 still pending" in synced.stdout, synced.stdout
    artifacts = run_artifacts(endpoint, run_id)
    out = project / "outputs-fault"
    assert artifacts.get("adapter_model.safetensors") == (out / "adapter/adapter_model.safetensors").read_bytes(), sorted(artifacts)
    assert artifacts.get("eval_examples.json") == (out / "eval_examples.json").read_bytes()
    assert artifacts.get("metrics.json") == (out / "metrics.json").read_bytes()
    assert artifacts.get("loss.png", b"").startswith(b"\x89PNG") and "generations.json" in artifacts
    assert client.get_run(run_id).info.status == "FINISHED"
    after = endpoint.objects(BUCKET, "mlflow/")
    assert {key: after.get(key) for key in before} == before  # what the store held before it died, still whole
    print(f"\nMLflow artifacts: train ran {trained_in:.1f} s with the store dead; one upload failed in {one_upload:.1f} s; "
          f"tracking-sync then sent {len(artifacts)} artifacts")


def test_storage_doc_moves_a_project_to_an_s3_compatible_store(endpoint, tmp_path):
    """docs/storage.md's DVC commands, run in a project made with the default (local) remote, with the
    bucket, endpoint and keys filled in: its data lands in the store."""
    project = bake(tmp_path, project_name="Moving Check")
    env = environment(endpoint, project)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        env.pop(name)  # the doc puts the keys in .dvc/config.local
    doc = (project / "docs/storage.md").read_text()
    block = doc.split("## Point DVC at the store", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("  #", 1)[0].strip() for line in block.strip().splitlines()]
    assert commands[0].startswith("pip install") and commands[-1] == "dvc push", commands
    fill = {"s3://my-bucket/": f"s3://{BUCKET}/moved/", "https://<account id>.r2.cloudflarestorage.com": endpoint.url,
            "<key id>": "testing", "<secret>": "testing"}
    for command in commands[1:]:  # pip install: the venv has DVC's S3 plugin
        for placeholder, value in fill.items():
            command = command.replace(placeholder, value)
        run("bash", "-c", command, cwd=project, env=env)
    dataset = project / "data/raw/support.jsonl"
    assert endpoint.objects(BUCKET, dvc_key(md5_of(dataset), "moved/dvc")) == {dvc_key(md5_of(dataset), "moved/dvc"): dataset.read_bytes()}
    assert "config.local" in run("git", "status", "--porcelain", "--ignored", cwd=project, env=env).stdout
    assert "testing" not in (project / ".dvc/config").read_text()  # the keys stay out of the committed config
