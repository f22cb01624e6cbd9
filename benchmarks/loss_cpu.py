"""CPU benchmark: tokens/s of the smoke-shape training step with transformers' loss, with the
chunked loss (the default; at this shape all tokens fit one chunk), and with the chunked loss
forced to 8 chunks per micro-batch (what recomputing each chunk's logits costs).

    rm -rf /tmp/b && python -m cookiecutter --no-input -o /tmp/b . && cd /tmp/b/support-assistant-fine-tune
    PYTHONPATH=src python ../../../<template>/benchmarks/loss_cpu.py --package support_assistant_fine_tune

The variants run interleaved, `--repeats` times each, in one process (same threads, same
allocator state); the median of each is printed with its ratio to transformers' loss.
"""

import argparse
import importlib
import json
import statistics

import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--package", required=True, help="the baked project's package name")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=8)
    cli = parser.parse_args()
    torch.set_num_threads(1)  # a shared machine: one thread is steadier than contended ones
    bench = importlib.import_module(f"{cli.package}.bench")
    loss = importlib.import_module(f"{cli.package}.loss")
    commands = argparse.ArgumentParser().add_subparsers()
    bench.register(commands)
    parser = commands.choices["bench"]
    # The smoke settings' batch shape: rows of 512 tokens, micro-batch 4, global batch 8.
    common = ["--params", cli.params, "--shape", "tiny", "--seq", "512", "--global-batch", "8", "--micro-batch", "4",
              "--steps", str(cli.steps), "--warmup", "2", "--checkpointing", "false"]
    tokens_per_micro_batch = 4 * 512
    vocab = bench.SHAPES["tiny"]["vocab_size"]
    variants = {
        "transformers_loss": (["--set", "train.chunked_loss=false"], loss.CHUNK_LOGITS_BYTES),
        "chunked_default": ([], loss.CHUNK_LOGITS_BYTES),
        "chunked_8_chunks": ([], 4 * vocab * tokens_per_micro_batch // 8),
    }
    measured = {name: [] for name in variants}
    default_budget = loss.CHUNK_LOGITS_BYTES
    for _ in range(cli.repeats):
        for name, (extra, budget) in variants.items():
            loss.CHUNK_LOGITS_BYTES = budget
            record = bench.run_bench(parser.parse_args(common + extra))
            measured[name].append(record["tokens_per_s"])
    loss.CHUNK_LOGITS_BYTES = default_budget
    reference = statistics.median(measured["transformers_loss"])
    for name, values in measured.items():
        median = statistics.median(values)
        print(json.dumps({"variant": name, "median_tokens_per_s": round(median, 1), "vs_transformers_loss": round(median / reference, 3),
                          "runs": [round(v, 1) for v in values]}))


if __name__ == "__main__":
    main()
