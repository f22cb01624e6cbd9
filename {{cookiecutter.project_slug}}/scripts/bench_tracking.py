"""Step time of the training loop with a sick MLflow server, against no tracking at all.

    PYTHONPATH=src python scripts/bench_tracking.py [--steps 20] [--rounds 5] [--out result.json]

The same `setup` / `train_step` as `train` (tiny model, CPU, smoke settings), with a metrics
update after EVERY step (the worst case: `train.log_every_steps: 1`) through a Tracker whose
server is a local fake on 127.0.0.1 (scripts/sick_mlflow.py) that
  500   answers every request with HTTP 500,
  hang  accepts every request and never answers (the client gives up after
        MLFLOW_HTTP_REQUEST_TIMEOUT, 10 s by default),
against `none`: no Tracker at all. The cases take turns, a few steps each, for several
rounds, so that drift in the machine's load hits all of them alike; the median step time of
each is compared with `none`'s. Target: within 5%. The time spent inside `tracker.log` (the
loop's only extra work) is measured too: it does not depend on the machine's load as much.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT / "scripts"))

from sick_mlflow import SickServer  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="steps per case per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", help="write the result as JSON here")
    args = parser.parse_args()

    import torch

    from {{ cookiecutter.package_name }} import cli, data, train
    from {{ cookiecutter.package_name }}.config import load_params
    from {{ cookiecutter.package_name }}.tiny import build_tiny_model
    from {{ cookiecutter.package_name }}.tracking import Tracker

    torch.set_num_threads(1)  # steady CPU timing, whatever else the machine runs
    tmp = Path(tempfile.mkdtemp(prefix="bench-tracking-"))
    base = load_params(PROJECT / "params.yaml")
    data_path = PROJECT / base.data.path
    model = build_tiny_model(tmp / "tiny", data_path)
    params = load_params(PROJECT / "params.yaml", [
        *cli.smoke_overrides(base), f"model.base={model}", f"data.path={data_path}",
        f"data.prepared_dir={tmp / 'prepared'}", f"checkpoint.dir={tmp / 'ckpt'}", "tracking.experiment=bench-tracking",
        "train.max_steps=100000",
    ])
    data.prepare(params, log=lambda *_: None)
    session = train.setup(params)
    for step in range(3):  # warm-up: allocator, first-call overheads
        train.train_step(session, step)

    servers = {"500": SickServer("500").start(), "hang": SickServer("hang").start()}
    trackers = {"none": None}
    for name, server in servers.items():
        params.tracking.uri = server.uri
        started = time.perf_counter()
        trackers[name] = Tracker(params, tmp / f"spool-{name}")
        print(f"{name}: Tracker ready in {time.perf_counter() - started:.1f} s (its first send, before training)", flush=True)

    times: dict[str, list[float]] = {name: [] for name in trackers}
    log_calls: dict[str, list[float]] = {name: [] for name in trackers}  # the loop's only extra work
    step = 3
    for round_ in range(args.rounds):
        order = list(trackers) if round_ % 2 == 0 else list(reversed(trackers))
        for name in order:
            tracker = trackers[name]
            for _ in range(args.steps):
                started = time.perf_counter()
                result = train.train_step(session, step)
                if tracker is not None:
                    logged = time.perf_counter()
                    tracker.log(step + 1, loss=float(result.loss), grad_norm=float(result.grad_norm), tokens_per_second=1.0)
                    log_calls[name].append(time.perf_counter() - logged)
                times[name].append(time.perf_counter() - started)
                step += 1
        print(f"round {round_ + 1}/{args.rounds} done", flush=True)

    baseline = statistics.median(times["none"])
    rows = []
    for name, values in times.items():
        median = statistics.median(values)
        calls = log_calls[name]
        rows.append({"case": name, "steps": len(values), "median_step_s": round(median, 5),
                     "mean_step_s": round(statistics.fmean(values), 5), "vs_none": round(median / baseline, 4),
                     "log_call_median_ms": round(1000 * statistics.median(calls), 3) if calls else 0.0,
                     "log_call_max_ms": round(1000 * max(calls), 3) if calls else 0.0})
    result = {
        "requests_seen": {name: server.requests for name, server in servers.items()},
        "cases": rows, "target": "median step time within 5% of none",
        "met": all(r["vs_none"] <= 1.05 for r in rows),
    }
    print(f"{'case':6} {'steps':>6} {'median s':>10} {'mean s':>10} {'vs none':>8} {'log() median ms':>16} {'log() max ms':>13}")
    for r in rows:
        print(f"{r['case']:6} {r['steps']:6d} {r['median_step_s']:10.4f} {r['mean_step_s']:10.4f} {r['vs_none']:8.3f}"
              f" {r['log_call_median_ms']:16.3f} {r['log_call_max_ms']:13.3f}")
    print(f"requests the fakes saw: {result['requests_seen']}; target met: {result['met']}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for tracker in trackers.values():
        if tracker is not None:
            tracker._stop.set()  # not finish(): its final flush would wait on the sick servers
            tracker._wake.set()
    for server in servers.values():
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
