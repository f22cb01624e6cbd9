"""`sweep`: many variants of params.yaml for one budget, each its own run, compared at the end.

The command line: `register` adds `sweep` (the paragraph above is its description), `run` does
the four steps (expand, price, run, summarise) and writes summary.json.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from .. import launch, skytask
from .backends import LocalBackend, SkyBackend, job_name
from .pricing import check_sweep_budget, price, price_table
from .runner import EXIT_OK, Ledger, Sweep, tracking_uri
from .summary import render_summary, rows_from_runs, summarise
from .text import _usd
from .variants import SweepError, Variant, check_sweep_id, expand, new_sweep_id, validate

SWEEP_DIR = ".cache/sweeps"  # per-variant task files, logs, summary.json (ignored by git and SkyPilot)
SERVER_SCHEMES = ("http://", "https://", "databricks")
SERVER_HINT = "set tracking.uri (or MLFLOW_TRACKING_URI) to an http(s) MLflow server"


def register(subparsers) -> argparse.ArgumentParser:
    help_text = "run variants of params.yaml (a grid or a list) for one budget, then compare them"
    sub = subparsers.add_parser("sweep", help=help_text, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub.add_argument("--params", default="params.yaml", help="parameters file (default: params.yaml)")
    sub.add_argument("--set", action="append", default=[], metavar="KEY=V1,V2",
                     help="a key and its values (every combination is a variant); one value: the same for all")
    sub.add_argument("--file", help="a sweep file (grid:, variants:, set:)")
    sub.add_argument("--backend", choices=["sky", "local"], default="sky",
                     help="sky: a managed spot job per variant; local: one after another here")
    sub.add_argument("--parallel", type=int, default=4, metavar="N", help="sky: at most N jobs at once (default 4)")
    sub.add_argument("--budget", type=float, metavar="USD", help="for all variants together (default budget.max_sweep_usd)")
    sub.add_argument("--early-stop", type=float, metavar="MARGIN",
                     help="stop a variant whose training loss is this fraction above the best finished one's (off)")
    sub.add_argument("--id", help="sweep id (default: a new one); the same id continues a sweep")
    sub.add_argument("--dry-run", action="store_true", help="print the variants and their prices; start nothing")
    sub.add_argument("--task", default=launch.DEFAULT_TASK, help=f"task file (default: {launch.DEFAULT_TASK})")
    sub.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="set a task env in every variant")
    sub.add_argument("--checkpoint-root", default=launch.DEFAULT_CHECKPOINT_ROOT, help="local: stands in for the bucket")
    sub.add_argument("--gpus", type=int, help="local: SKYPILOT_NUM_GPUS_PER_NODE (default: the GPUs nvidia-smi lists)")
    sub.add_argument("--sweep-dir", default=SWEEP_DIR, help=f"task files, logs and summary.json (default: {SWEEP_DIR})")
    sub.add_argument("--poll-seconds", type=float, default=30, help="how often MLflow is read for live costs (default 30)")
    sub.set_defaults(handler=run)
    return sub


def run(args) -> int:
    if args.parallel < 1:
        raise SweepError("--parallel must be at least 1")
    if args.early_stop is not None and args.early_stop < 0:
        raise SweepError("--early-stop is a fraction, e.g. 0.1 for 10%")
    sweep_id = check_sweep_id(args.id) if args.id else new_sweep_id()
    variants = expand(args.set, args.file)
    validate(variants, args.params)
    base = variants[0].params
    budget = args.budget if args.budget is not None else base.budget.max_sweep_usd
    total = price(variants)
    print(f"sweep {sweep_id}: {len(variants)} variants, backend {args.backend}")
    print(price_table(variants, total, budget), end="")
    check_sweep_budget(variants, total, budget)

    uri = tracking_uri(base)
    needs_server = args.backend == "sky" and not uri.startswith(SERVER_SCHEMES)
    if needs_server and not args.dry_run:  # a dry run only prices and prints: it reads no costs
        raise SweepError(
            f"MLflow tracking URI {uri!r}: a sky sweep reads every job's live cost from MLflow, so the jobs and "
            "this machine need one server: " + SERVER_HINT
        )
    sweep_dir = Path(args.sweep_dir) / sweep_id
    sweep_dir.mkdir(parents=True, exist_ok=True)
    backend = (SkyBackend if args.backend == "sky" else LocalBackend)(args, sweep_dir)
    task_name = skytask.check_file(Path(args.task))["name"]

    def resolve(variant: Variant) -> dict:
        envs = [*args.env, f"SWEEP_ID={sweep_id}", f"SWEEP_VARIANT={variant.name}", f"SWEEP_SET={' '.join(variant.sets)}",
                f"RUN_NAME={sweep_id}/{variant.name}"]
        if not any(e.startswith("MLFLOW_TRACKING_URI=") for e in args.env):
            envs.append(f"MLFLOW_TRACKING_URI={uri}")
        ns = argparse.Namespace(task=args.task, params=args.params, set=variant.sets, env=envs,
                                name=job_name(task_name, sweep_id, variant.name))
        return launch.resolve(ns)

    if args.dry_run:
        for variant in variants:
            launched = resolve(variant)
            if args.backend == "sky":
                print(f"# {variant.name}: {shlex.join(backend.command(launched, variant))}")
            else:
                print(f"# {variant.name}: run section of {args.task} as task local-{launched['name']}: {variant.set_line}")
        if getattr(backend, "missing", ""):
            print(f"note: {backend.missing}")
        if needs_server:
            print(f"note: the real sweep needs an MLflow server, not {uri!r} (the jobs log their live costs to it): "
                  + SERVER_HINT)
        return EXIT_OK

    experiments = list(dict.fromkeys(v.params.tracking.experiment for v in variants))
    ledger = Ledger(uri, experiments, sweep_id)
    sweep = Sweep(variants, sweep_id, budget, backend, ledger, resolve, args.early_stop, args.poll_seconds)
    result = sweep.run()
    try:
        runs = ledger.runs()
    except Exception as err:  # the server went away at the end: the table says what the sweep knows
        print(f"sweep: MLflow not readable ({type(err).__name__}); the table lacks the runs' results", file=sys.stderr)
        runs = []
    summary = summarise(rows_from_runs(runs, variants, result.states))
    print()
    print(render_summary(summary), end="")
    (sweep_dir / "summary.json").write_text(json.dumps({
        "sweep_id": sweep_id, "status": result.status, "spent_usd": result.spent_usd, "budget_usd": budget,
        "estimated_usd": total, **summary}, indent=2, default=str) + "\n")
    print(f"spent {_usd(result.spent_usd)} of {_usd(budget)}; `report --sweep {sweep_id}` shows this table again")
    print(result.message, file=sys.stderr if result.exit_code else sys.stdout)
    return result.exit_code
