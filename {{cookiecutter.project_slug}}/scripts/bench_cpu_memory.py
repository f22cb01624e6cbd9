"""Host RAM of training steps on a CPU, measured, beside the estimate `micro_batch: auto` uses
there (train/host_fit.py): how CPU_FACTOR was chosen, and the check that it still holds.

    OMP_NUM_THREADS=2 python scripts/bench_cpu_memory.py --model DIR --max-length 512 \\
        --micro-batch 1 2 --checkpointing 0 30

Each configuration runs in a fresh process: the model and the trainer are set up (micro-batch
and checkpointed layers as given), the peak-RSS mark is reset (/proc/self/clear_refs), two
optimizer steps run on synthetic packed rows, and the step's RAM is the peak RSS minus the RSS
before the first step. Linux only (VmHWM). Prints a markdown table: measured, estimated
(host_fit.step_ram, CPU_FACTOR included) and measured / estimate, which must stay below 1.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

MIB = 2**20


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def run_one(args) -> dict:
    import importlib
    from dataclasses import replace

    import torch
    from transformers import AutoModelForCausalLM

    bench = importlib.import_module(f"{args.package}.bench")
    config = importlib.import_module(f"{args.package}.config")
    host_fit = importlib.import_module(f"{args.package}.train.host_fit")
    loading = importlib.import_module(f"{args.package}.model.loading")
    train = importlib.import_module(f"{args.package}.train")
    root = Path(__file__).resolve().parents[1]
    params = config.load_params(root / "params.yaml", [
        f"model.base={args.model}", "model.method=lora", "model.dtype=float32", "compute.device=cpu",
        f"data.max_length={args.max_length}", f"train.micro_batch={args.micro_batch}", f"train.global_batch={args.micro_batch}",
        f"train.gradient_checkpointing={'true' if args.checkpointed else 'false'}", "train.liger_kernels=false",
    ])
    base = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, attn_implementation="sdpa")
    base.config.use_cache = False
    rows, mean_context = bench.synthetic_rows(base.config.vocab_size, args.max_length, 4 * args.micro_batch)
    session = train.setup(params, base=base, rows=rows, mean_context=mean_context)
    if args.checkpointed:  # the setup checkpointed every layer: keep only the first N
        loading.checkpoint_layers(session.model, args.checkpointed)
    Path("/proc/self/clear_refs").write_text("5\n")  # the peak-RSS mark starts again from here
    before = rss_kib("VmRSS")
    for step in range(2):
        train.train_step(session, step)
    peak = rss_kib("VmHWM")
    shape, setup = host_fit.cpu_setup(base.config, params, 4)
    layers = base.config.num_hidden_layers
    estimate = host_fit.step_ram(shape, replace(setup, micro_batch=args.micro_batch, checkpointing=args.checkpointed / layers))
    return {"micro_batch": args.micro_batch, "checkpointed": args.checkpointed, "tokens": args.micro_batch * args.max_length,
            "before_mib": before / 1024, "step_mib": (peak - before) / 1024, "estimate_mib": estimate / MIB}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a local model directory")
    parser.add_argument("--package", default=None, help="the project's package (default: the one under src/)")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--micro-batch", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--checkpointing", type=int, nargs="+", default=[0], help="checkpointed layers (0: none)")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args()
    if args.package is None:
        src = Path(__file__).resolve().parents[1] / "src"
        args.package = next(p.parent.name for p in src.glob("*/__init__.py"))
    if args.one:
        args.micro_batch, args.checkpointed = args.micro_batch[0], args.checkpointing[0]
        print(json.dumps(run_one(args)))
        return 0
    print("| micro-batch x tokens | checkpointed layers | RSS before (MiB) | step, measured (MiB) | estimate (MiB) | measured / estimate |")
    print("|---|---|---|---|---|---|")
    worst = 0.0
    for micro_batch in args.micro_batch:
        for checkpointed in args.checkpointing:
            command = [sys.executable, __file__, "--one", "--model", args.model, "--package", args.package,
                       "--max-length", str(args.max_length), "--micro-batch", str(micro_batch), "--checkpointing", str(checkpointed)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                print(done.stderr[-3000:], file=sys.stderr)
                return 1
            r = json.loads(done.stdout.strip().splitlines()[-1])
            ratio = r["step_mib"] / r["estimate_mib"]
            worst = max(worst, ratio)
            print(f"| {micro_batch} x {args.max_length} | {checkpointed} | {r['before_mib']:.0f} | {r['step_mib']:.0f} | "
                  f"{r['estimate_mib']:.0f} | {ratio:.2f} |", flush=True)
    print(f"\nworst measured / estimate: {worst:.2f} (must stay below 1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
