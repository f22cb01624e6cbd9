"""Throughput benchmark of this project's trainer on a given model shape.

    {{ cookiecutter.package_name }} bench --shape 8b --method lora --seq 2048 --steps 20 --price-usd-per-hour 3.5

Builds a randomly initialised Llama-architecture model of the shape (throughput does not
depend on weight values, and nothing is downloaded), packs conversation-length synthetic
examples (lognormal, median ~350 tokens) into rows of `--seq` tokens, and runs the very
`setup` / `train_step` that `train` runs. Prints one JSON record in the reference
benchmark's format: model, variant, tokens_per_s, mfu, peak_gib, gpu (plus micro-batch,
checkpointing, Liger, dollars per million tokens).

`--gpu-memory-gib 20` caps what this process may take of a larger GPU, so `micro_batch: auto`
and `gradient_checkpointing: auto` choose as they would on a 24 GB card: the run either
fits the cap or fails, and its tokens/s are those of that choice.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time

import torch

from . import data
from .config import ConfigError, load_params
from .model import flops

# Llama-3.2-1B and Llama-3.1-8B shapes (the reference benchmark's), and a CPU-sized one.
SHAPES = {
    "1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
               num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=True),
    "8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False),
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
}


def conversation_lengths(n: int, max_length: int, seed: int = 0) -> list[int]:
    """Lognormal lengths, median ~350 tokens: what chat fine-tuning data looks like."""
    rng = random.Random(seed)
    return [max(16, min(max_length, int(rng.lognormvariate(math.log(350), 0.8)))) for _ in range(n)]


def synthetic_rows(vocab: int, max_length: int, rows_needed: int, seed: int = 0) -> tuple[dict, float]:
    """Packed rows of random tokens (every token trained), and their mean attention context."""
    generator = torch.Generator().manual_seed(seed)
    examples = []
    total = 0
    for length in conversation_lengths(rows_needed * max_length // 300 + 8, max_length, seed):
        ids = torch.randint(0, vocab, (length,), generator=generator).tolist()
        examples.append((ids, ids))
        total += length
        if total > rows_needed * max_length * 1.02:
            break
    packed = data.pack(examples, max_length, pad_id=0)
    rows = {"input_ids": packed.input_ids, "labels": packed.labels, "position_ids": packed.position_ids,
            "real_tokens": packed.real_tokens}
    return rows, packed.stats["mean_context"]


def random_model(shape: str, device: torch.device, dtype: torch.dtype, quantize: bool, attention: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=8192, rope_theta=500000.0)
    config._attn_implementation = attention
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    torch.set_default_dtype(previous)
    model.config.use_cache = False
    if quantize:
        quantize_linear_layers_nf4(model, dtype)
    return model


def quantize_linear_layers_nf4(model, compute_dtype: torch.dtype) -> None:
    """Swap the decoder's Linear layers for bitsandbytes 4-bit NF4 ones (double quantized),
    as `from_pretrained(quantization_config=...)` does for QLoRA."""
    import bitsandbytes as bnb

    for layer in model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name, child in list(parent.named_children()):
                if isinstance(child, torch.nn.Linear):
                    quantized = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=False, compute_dtype=compute_dtype,
                                                  compress_statistics=True, quant_type="nf4")
                    quantized.weight = bnb.nn.Params4bit(child.weight.data.cpu(), requires_grad=False, compress_statistics=True,
                                                         quant_type="nf4").to(child.weight.device)
                    setattr(parent, name, quantized)
    torch.cuda.empty_cache()


def run_bench(args) -> dict:
    from .model.loading import resolve_device, resolve_dtype
    from .train import setup, train_step

    overrides = [
        f"model.method={args.method}", "model.base=random", f"data.max_length={args.seq}",
        f"train.max_steps={args.warmup + args.steps}", f"train.global_batch={args.global_batch}",
        f"train.micro_batch={args.micro_batch}", f"train.gradient_checkpointing={args.checkpointing}",
        f"train.liger_kernels={args.liger}", f"train.compile={args.compile}", "lora.r=16", "lora.target_modules=all-linear",
        *(["model.attn_implementation=varlen"] if args.attention == "varlen" else []), *args.set,
    ]
    params = load_params(args.params, overrides)
    device = resolve_device(params.compute.device)
    dtype = resolve_dtype(params.model.dtype, device)
    if args.gpu_memory_gib and device.type != "cuda":
        raise ConfigError("bench --gpu-memory-gib caps a GPU's memory; this run is on the CPU")
    attention = args.attention if args.attention != "auto" else ("flash_attention_2" if _has_flash_attn(device) else "sdpa")
    # varlen: built with SDPA, switched by `setup` as in training.
    base = random_model(args.shape, device, dtype, quantize=args.method == "qlora",
                        attention="sdpa" if attention == "varlen" else attention)
    if args.gpu_memory_gib:  # after building the base: its 16-bit copy before quantizing is the benchmark's, not training's
        cap_gpu_memory(device, args.gpu_memory_gib)
    rows, mean_context = synthetic_rows(base.config.vocab_size, args.seq, (args.warmup + args.steps) * args.global_batch)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    session = setup(params, base=base, rows=rows, mean_context=mean_context)

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for step in range(args.warmup):
        train_step(session, step)
    synchronize()
    tokens, started = 0, time.perf_counter()
    for step in range(args.warmup, args.warmup + args.steps):
        tokens += train_step(session, step).real_tokens * session.world
    synchronize()
    seconds = time.perf_counter() - started
    tokens_per_s = tokens / seconds
    peak = flops.peak_flops(device, params.compute.peak_tflops)
    record = {
        "model": args.shape,
        "variant": args.variant or f"ours_{args.method}",
        "tokens_per_s": tokens_per_s,
        "mfu": tokens_per_s * session.token_flops / (peak * session.world) if peak else None,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if device.type == "cuda" else None,
        "gpu_memory_cap_gib": args.gpu_memory_gib,
        "gpu": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "seq": args.seq, "micro_batch": session.micro_batch, "global_batch": args.global_batch,
        "checkpointed_layers": session.checkpointed_layers, "offloaded": session.offloaded, "loss": session.loss, "liger": session.liger, "compile": session.compiled, "attention": attention,
        "flops_per_token": session.token_flops, "tokens": tokens, "seconds": seconds,
    }
    if args.price_usd_per_hour:
        record["usd_per_million_tokens"] = args.price_usd_per_hour / 3600 / tokens_per_s * 1e6
    return record


def cap_gpu_memory(device: torch.device, gib: float) -> None:
    """Let PyTorch's allocator hold at most `gib` of this GPU (it raises out-of-memory beyond)."""
    total = torch.cuda.get_device_properties(device).total_memory
    if gib * 2**30 > total:
        raise ConfigError(f"bench --gpu-memory-gib {gib}: this GPU has only {total / 2**30:.1f} GiB")
    torch.cuda.set_per_process_memory_fraction(gib * 2**30 / total, device)


def _has_flash_attn(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    try:
        import flash_attn  # noqa: F401

        return True
    except ImportError:
        return False


def register(commands) -> None:
    sub = commands.add_parser("bench", help="tokens/s, MFU, peak memory and $/Mtok of the trainer on a model shape")
    sub.add_argument("--params", default="params.yaml")
    sub.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    sub.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    sub.add_argument("--method", choices=["lora", "qlora", "dora"], default="lora")
    sub.add_argument("--seq", type=int, default=2048)
    sub.add_argument("--steps", type=int, default=10)
    sub.add_argument("--warmup", type=int, default=3)
    sub.add_argument("--global-batch", type=int, default=16)
    sub.add_argument("--micro-batch", default="auto")
    sub.add_argument("--checkpointing", default="auto", choices=["auto", "true", "false"])
    sub.add_argument("--liger", default="auto", choices=["auto", "true", "false"])
    sub.add_argument("--compile", default="false", choices=["true", "false"], help="torch.compile the decoder layers")
    sub.add_argument("--attention", default="auto", choices=["auto", "flash_attention_2", "varlen", "flex_attention", "sdpa", "eager"])
    sub.add_argument("--gpu-memory-gib", type=float, help="use at most this much GPU memory, as on a smaller card")
    sub.add_argument("--price-usd-per-hour", type=float, default=0.0)
    sub.add_argument("--variant", help="name of the record's variant (default ours_<method>)")


def run(args: argparse.Namespace) -> int:
    record = run_bench(args)
    print("RESULT " + json.dumps(record), flush=True)
    return 0
