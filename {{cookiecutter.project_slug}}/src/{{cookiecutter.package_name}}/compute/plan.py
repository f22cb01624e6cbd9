"""`plan`: will the run fit, how long will it take, what will it cost, and on which GPU.

Everything here is an ESTIMATE, made before any GPU time is spent:
- the model's shape: `config.json` of a local model directory, else the hub
  (`AutoConfig`), else a built-in table of common models (works offline);
- peak GPU memory, broken down: base weights (16-bit, or 4-bit NF4 with double
  quantization for QLoRA), LoRA parameters + gradients + AdamW states, activations kept
  for backward (all layers, or one checkpoint per layer with gradient checkpointing, or
  those checkpoints in host RAM with offloading), the loss (all logits, or one chunk's),
  CUDA context and allocator overhead; and the longest row that fits each GPU;
- FLOPs per token (`flops.flops_per_token`, the LoRA convention) and hours on each GPU of a
  table (memory, dense bf16 peak, an expected MFU);
- dollars per run for every (GPU, cloud, spot / on-demand) offer (`prices.py`). GPUs that
  do not fit with a safety margin are excluded with the reason; the rest are ranked by
  dollars per RUN: a GPU that is 3x faster at 2x the hourly price is the cheaper one;
- `--write`: the GPU candidates line of sky/train.yaml;
- `--owned GPU`: your own card (energy, optional amortisation) against the cheapest spot
  offer, and the break-even point for buying it, in runs per month;
- `check_budget`: refuses a plan whose cheapest run exceeds `budget.max_run_usd`.

The memory model mirrors what this project's trainer keeps alive (Hugging Face
transformers + PEFT: fp32 adapters run under autocast, RMSNorm upcast to fp32, SDPA
attention with a mask for packed rows up to attention.LONG_ROW_TOKENS and varlen beyond,
the chunked loss of loss.py, host offloading of offload.py). tests/test_plan.py checks it against
published peak-memory measurements; the speed numbers rest on an assumed MFU per GPU and
should be replaced by measured ones (`tokens_per_second` and `mfu` in MLflow).
"""

from __future__ import annotations

import argparse
import json
import os
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ..config import ConfigError, Params, load_params
from ..model import attention, flops, loading, loss
from ..model.offload import MLP_TILE_TOKENS
from . import prices

GIB = 2**30

SAFETY_MARGIN = 0.10  # plan to use at most 90% of a GPU: estimates err, allocators fragment
CUDA_CONTEXT_GIB = 0.6  # CUDA context, cuBLAS workspaces, kernels: outside PyTorch's allocator
ALLOCATOR_OVERHEAD = 0.10  # caching-allocator slack on the memory that churns every step

# Time that is billed but trains nothing: VM boot, `pip install`, dataset and model download.
SETUP_MINUTES = 8.0
DOWNLOAD_BYTES_PER_S = 200e6

# Relative step time of the adapter variants against plain LoRA on the same GPU.
# QLoRA dequantizes every weight on every pass: "LoRA is about 66% faster than QLoRA"
# (https://cloud.google.com/vertex-ai/generative-ai/docs/model-garden/lora-qlora).
# DoRA: 5,850 vs 6,750 tokens/s for LoRA in PEFT's MetaMathQA benchmark (Llama-3.2-3B, L40S).
METHOD_TIME_FACTOR = {"lora": 1.0, "qlora": 1.66, "dora": 1.15}

NF4_BYTES_PER_PARAM = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit codes + 8-bit absmax per 64 + fp32 per 256 blocks

LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # Llama-style
# Attention that finds packed examples by their boundaries: no T x T mask, k and v not repeated.
UNMASKED_ATTENTION = ("flash_attention_2", "varlen")


class BudgetExceeded(Exception):
    """The cheapest estimated run costs more than `budget.max_run_usd`."""


# ============================================================================ model shape


@dataclass(frozen=True)
class ModelShape:
    """What memory and FLOPs depend on; read from config.json or the built-in table."""

    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied_embeddings: bool
    head_dim: int = 0  # 0: hidden // heads
    fused_projections: bool = False  # Phi-3: qkv_proj and gate_up_proj
    norms_per_layer: int = 2  # Gemma-2 has four
    source: str = "built-in table"

    @property
    def q_dim(self) -> int:
        return self.heads * (self.head_dim or self.hidden // self.heads)

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * (self.head_dim or self.hidden // self.heads)

    def linear_modules(self) -> list[tuple[str, int, int]]:
        """(name, in_features, out_features) of one decoder layer's linear layers."""
        h, i, q, kv = self.hidden, self.intermediate, self.q_dim, self.kv_dim
        if self.fused_projections:
            return [("qkv_proj", h, q + 2 * kv), ("o_proj", q, h), ("gate_up_proj", h, 2 * i), ("down_proj", i, h)]
        sizes = [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]
        return [(name, d_in, d_out) for name, (d_in, d_out) in zip(LINEAR_NAMES, sizes, strict=True)]

    @property
    def layer_linear_params(self) -> int:
        return sum(d_in * d_out for _, d_in, d_out in self.linear_modules())

    @property
    def embedding_params(self) -> int:
        """Input embedding plus the output head (one matrix when tied)."""
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2)

    @property
    def total_params(self) -> int:
        norms = (self.layers * self.norms_per_layer + 1) * self.hidden
        return self.layers * self.layer_linear_params + self.embedding_params + norms

    @property
    def matmul_params(self) -> int:
        """What `flops.matmul_parameters` counts on the loaded model: every Linear, lm_head included."""
        return self.layers * self.layer_linear_params + self.vocab * self.hidden


def _shape(name, hidden, intermediate, layers, heads, kv_heads, vocab, tied, **extra) -> ModelShape:
    return ModelShape(name, hidden, intermediate, layers, heads, kv_heads, vocab, tied, **extra)


# Published config.json values (hidden, intermediate, layers, heads, kv heads, vocab, tied).
KNOWN_SHAPES = {
    "qwen2.5-0.5b": _shape("Qwen2.5-0.5B", 896, 4864, 24, 14, 2, 151936, True),
    "qwen2.5-1.5b": _shape("Qwen2.5-1.5B", 1536, 8960, 28, 12, 2, 151936, True),
    "qwen2.5-3b": _shape("Qwen2.5-3B", 2048, 11008, 36, 16, 2, 151936, True),
    "qwen2.5-7b": _shape("Qwen2.5-7B", 3584, 18944, 28, 28, 4, 152064, False),
    "qwen2.5-14b": _shape("Qwen2.5-14B", 5120, 13824, 48, 40, 8, 152064, False),
    "qwen2.5-32b": _shape("Qwen2.5-32B", 5120, 27648, 64, 40, 8, 152064, False),
    "qwen2.5-72b": _shape("Qwen2.5-72B", 8192, 29568, 80, 64, 8, 152064, False),
    "llama-3.2-1b": _shape("Llama-3.2-1B", 2048, 8192, 16, 32, 8, 128256, True),
    "llama-3.2-3b": _shape("Llama-3.2-3B", 3072, 8192, 28, 24, 8, 128256, True),
    "llama-3.1-8b": _shape("Llama-3.1-8B", 4096, 14336, 32, 32, 8, 128256, False),
    "llama-3.1-70b": _shape("Llama-3.1-70B", 8192, 28672, 80, 64, 8, 128256, False),
    "mistral-7b": _shape("Mistral-7B-v0.3", 4096, 14336, 32, 32, 8, 32768, False),
    "gemma-2-2b": _shape("Gemma-2-2B", 2304, 9216, 26, 8, 4, 256000, True, head_dim=256, norms_per_layer=4),
    "gemma-2-9b": _shape("Gemma-2-9B", 3584, 14336, 42, 16, 8, 256000, True, head_dim=256, norms_per_layer=4),
    "phi-3.5-mini": _shape("Phi-3.5-mini", 3072, 8192, 32, 32, 32, 32064, False, fused_projections=True),
}
KNOWN_SHAPES["llama-3-8b"] = KNOWN_SHAPES["llama-3.1-8b"]
KNOWN_SHAPES["llama-3-70b"] = KNOWN_SHAPES["llama-3.1-70b"]
KNOWN_SHAPES["llama-3.3-70b"] = KNOWN_SHAPES["llama-3.1-70b"]


def table_key(model_id: str) -> str:
    """`meta-llama/Meta-Llama-3.1-8B-Instruct` -> `llama-3.1-8b`: the table's key for a hub id."""
    key = model_id.rstrip("/").split("/")[-1].lower()
    key = re.sub(r"^meta-", "", key)
    key = re.sub(r"-(bnb-4bit|unsloth-bnb-4bit|awq|gptq.*)$", "", key)
    key = re.sub(r"-(instruct|it|chat|base|hf)(-\d+)?$", "", key)
    key = re.sub(r"-v0\.\d+$", "", key)  # Mistral-7B-v0.3 -> mistral-7b
    return re.sub(r"-(instruct|it|chat)$", "", key)


def shape_from_config(config: dict, name: str, source: str) -> ModelShape:
    """A ModelShape from a config.json dictionary (or an AutoConfig's to_dict())."""
    config = config.get("text_config") or config  # multimodal wrappers keep the LM in text_config
    try:
        heads = int(config["num_attention_heads"])
        model_type = str(config.get("model_type", ""))
        return ModelShape(
            name=name,
            hidden=int(config["hidden_size"]),
            intermediate=int(config["intermediate_size"]),
            layers=int(config["num_hidden_layers"]),
            heads=heads,
            kv_heads=int(config.get("num_key_value_heads") or heads),
            vocab=int(config["vocab_size"]),
            tied_embeddings=bool(config.get("tie_word_embeddings", False)),
            head_dim=int(config.get("head_dim") or 0),
            fused_projections=model_type.startswith("phi3"),
            norms_per_layer=4 if model_type.startswith(("gemma2", "gemma3")) else 2,
            source=source,
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"model.base={name!r}: {source} lacks a decoder shape ({err})") from None


def load_model_shape(base: str) -> ModelShape:
    """Shape of `model.base`: local config.json, the local hub cache, the built-in table,
    and only then the hub (which may retry for half a minute when offline)."""
    local = Path(base) / "config.json"
    if local.is_file():
        return shape_from_config(json.loads(local.read_text(encoding="utf-8")), base, f"{local}")
    from transformers import AutoConfig

    try:
        return shape_from_config(AutoConfig.from_pretrained(base, local_files_only=True).to_dict(), base, "hub cache")
    except Exception:  # not downloaded yet
        pass
    known = KNOWN_SHAPES.get(table_key(base))
    if known is not None:
        return replace(known, source=f"built-in table ({known.name})")
    try:
        return shape_from_config(AutoConfig.from_pretrained(base).to_dict(), base, "hub config.json")
    except Exception:  # offline, gated, unknown
        raise ConfigError(
            f"model.base={base!r}: no local config.json, the hub is unreachable and it is not in the "
            f"built-in table ({', '.join(sorted({s.name for s in KNOWN_SHAPES.values()}))})"
        ) from None


# ============================================================================== memory


@dataclass(frozen=True)
class TrainSetup:
    """The knobs peak memory depends on, for one GPU process."""

    method: str = "lora"  # lora | qlora | dora
    lora_r: int = 16
    targets: tuple[str, ...] | str = "all-linear"
    dropout: float = 0.0
    micro_batch: int = 1
    seq_len: int = 1024
    checkpointing: float = 0.0  # the fraction of layers with gradient checkpointing (0: none, 1: all)
    attention: str = "sdpa"  # sdpa (with a mask: packed rows) | flash_attention_2 | varlen | flex_attention | eager
    # hf: transformers' fp32 logits | chunked: this project's (loss.py), one chunk's logits at a time |
    # fused: Liger, no logits kept | chunked_output: torchtune's, 16-bit logits kept, fp32 per eighth
    loss: str = "hf"
    offload: bool = False  # checkpointed layers' inputs in host RAM, MLP in slices (offload.py)
    chunk_tokens: int = 0  # tokens per loss chunk; 0: loss.chunk_tokens(vocab)
    mlp_tile: int = MLP_TILE_TOKENS  # tokens per MLP slice when offloading
    dtype_bytes: int = 2
    adapter_bytes: int = 4  # PEFT keeps adapters in fp32 on a bf16 base (autocast_adapter_dtype)
    # Mixed-precision autocast (this trainer through accelerate, HF Trainer with bf16=True): the
    # fp32 adapters' matmuls run in 16 bit and keep 16-bit inputs (measured in tests/test_plan.py).
    autocast: bool = True
    optimizer: str = "adamw"  # adamw | adamw_8bit | paged_adamw_8bit


@dataclass
class MemoryEstimate:
    """Peak GPU memory in bytes, by component."""

    base_weights: float
    adapter_and_optimizer: float
    activations: float  # kept for backward: every layer, or one checkpoint per layer
    logits_and_loss: float  # peak while the loss is computed and differentiated
    backward_working_set: float  # one layer's recomputed activations and gradients
    allocator_overhead: float
    cuda_context: float = CUDA_CONTEXT_GIB * GIB
    host_offloaded: float = 0.0  # pinned host RAM holding the layer inputs (not GPU memory)

    @property
    def dynamic(self) -> float:
        # The loss peak and the per-layer backward work happen at different moments.
        return self.activations + max(self.logits_and_loss, self.backward_working_set)

    @property
    def allocator_bytes(self) -> float:
        """What PyTorch's allocator reserves: comparable to torch.cuda.max_memory_reserved()."""
        return self.base_weights + self.adapter_and_optimizer + self.dynamic + self.allocator_overhead

    @property
    def total(self) -> float:
        """What the GPU must hold: allocator plus CUDA context (what nvidia-smi shows)."""
        return self.allocator_bytes + self.cuda_context

    def gib(self) -> dict[str, float]:
        parts = {
            "base_weights": self.base_weights,
            "adapter_and_optimizer": self.adapter_and_optimizer,
            "activations": self.activations,
            "logits_and_loss": self.logits_and_loss,
            "backward_working_set": self.backward_working_set,
            "allocator_overhead": self.allocator_overhead,
            "cuda_context": self.cuda_context,
            "peak": self.total,
            "host_ram": self.host_offloaded,
        }
        return {key: round(value / GIB, 3) for key, value in parts.items()}


def targeted_modules(shape: ModelShape, targets, strict: bool = True) -> list[tuple[str, int, int]]:
    modules = shape.linear_modules()
    if targets in ("all-linear", "all_linear", ("all-linear",)):
        return modules
    names = {targets} if isinstance(targets, str) else set(targets)
    chosen = [m for m in modules if m[0] in names]
    if not chosen and strict:
        known = ", ".join(name for name, _, _ in modules)
        raise ConfigError(f"lora.target_modules={sorted(names)} matches no linear layer of {shape.name} ({known})")
    return chosen


def weight_bytes(shape: ModelShape, setup: TrainSetup) -> float:
    """Frozen base: 16-bit, or NF4 for the decoder's linear layers (QLoRA; embeddings stay 16-bit)."""
    linear = shape.layers * shape.layer_linear_params
    other = shape.total_params - linear
    per_linear = NF4_BYTES_PER_PARAM if setup.method == "qlora" else setup.dtype_bytes
    return linear * per_linear + other * setup.dtype_bytes


def adapter_bytes(shape: ModelShape, setup: TrainSetup) -> float:
    """LoRA A and B (plus DoRA magnitudes), their gradients and AdamW's two moments."""
    modules = targeted_modules(shape, setup.targets)
    params = shape.layers * sum(setup.lora_r * (d_in + d_out) for _, d_in, d_out in modules)
    if setup.method == "dora":
        params += shape.layers * sum(d_out for _, _, d_out in modules)
    state = 2.0 if "8bit" in setup.optimizer else 2 * setup.adapter_bytes  # two moments
    return params * (setup.adapter_bytes + setup.adapter_bytes + state)


def layer_activation_bytes(shape: ModelShape, setup: TrainSetup) -> float:
    """Bytes per token one decoder layer keeps for backward (checked with saved-tensor hooks)."""
    a, h = setup.dtype_bytes, shape.hidden
    norms = shape.norms_per_layer * 4 * h  # HF RMSNorm keeps its input upcast to fp32
    lse = 4 * shape.heads  # attention's log-sum-exp, fp32 per head
    if setup.attention in UNMASKED_ATTENTION:
        attention = a * (2 * shape.q_dim + 2 * shape.kv_dim) + lse  # q, k, v, output
    else:
        # SDPA with a mask (packed rows) repeats k and v to every query head first.
        attention = a * 4 * shape.q_dim + lse
        if setup.attention == "eager":
            attention += shape.heads * setup.seq_len * (4 + a)  # fp32 softmax and its 16-bit copy
    lora = sum(_lora_activation_bytes(setup, d_in, d_out) for _, d_in, d_out in targeted_modules(shape, setup.targets))
    return norms + attention + lora + mlp_activation_bytes(shape, setup, with_lora=False)


def _lora_activation_bytes(setup: TrainSetup, d_in: int, d_out: int) -> float:
    width = setup.dtype_bytes if setup.autocast else setup.adapter_bytes
    kept = width * d_in + width * setup.lora_r  # A's input (a 16-bit cast under autocast, else an fp32 copy), A's output
    if setup.dropout > 0:
        kept += d_in  # dropout mask (1 byte per element)
    if setup.method == "dora":
        kept += (setup.dtype_bytes + setup.adapter_bytes) * d_out  # base and LoRA outputs, scaled by the magnitude
    return kept


def mlp_activation_bytes(shape: ModelShape, setup: TrainSetup, with_lora: bool = True) -> float:
    """Bytes per token the MLP (and, with_lora, its adapters) keeps: what slices of the row shrink."""
    mlp = 3 * setup.dtype_bytes * shape.intermediate  # gate output (activation input), activation output, up output
    if with_lora:
        mlp_names = ("gate_proj", "up_proj", "down_proj", "gate_up_proj")
        mlp += sum(_lora_activation_bytes(setup, d_in, d_out)
                   for name, d_in, d_out in targeted_modules(shape, setup.targets, strict=False) if name in mlp_names)
    return mlp


def logits_bytes_per_token(shape: ModelShape, setup: TrainSetup) -> float:
    """transformers: 16-bit logits, fp32 log-softmax kept for backward, its gradient and the
    gradient of its input exist together while the loss is differentiated (fp32 logits are
    not copied: 12 bytes per word, as measured in tests/test_memory.py)."""
    v = shape.vocab
    if setup.loss == "fused":  # Liger's fused linear cross-entropy never materialises the logits
        return 0.0
    logits = setup.dtype_bytes * v if setup.dtype_bytes < 4 else 0
    if setup.loss == "chunked_output":  # torchtune: 16-bit logits kept, fp32 work one chunk (of 8) at a time
        return logits + 12 * v / 8
    return logits + 12 * v


def loss_chunk_tokens(shape: ModelShape, setup: TrainSetup) -> int:
    return setup.chunk_tokens or loss.chunk_tokens(shape.vocab)


def logits_and_loss_bytes(shape: ModelShape, setup: TrainSetup) -> float:
    """Peak of the loss: all tokens' logits, or (loss.py) one chunk's plus the gradient of the
    hidden states, assembled whole from the chunks' pieces."""
    tokens = setup.micro_batch * setup.seq_len
    chunk = loss_chunk_tokens(shape, setup)
    if setup.loss != "chunked" or tokens <= chunk:
        return logits_bytes_per_token(shape, setup) * tokens
    return logits_bytes_per_token(shape, setup) * chunk + 2 * setup.dtype_bytes * shape.hidden * tokens


def checkpointed_layers(shape: ModelShape, setup: TrainSetup) -> int:
    return round(setup.checkpointing * shape.layers)


def estimate_memory(shape: ModelShape, setup: TrainSetup) -> MemoryEstimate:
    """Peak memory of one training step of `setup` on `shape`."""
    a, h, i = setup.dtype_bytes, shape.hidden, shape.intermediate
    tokens = setup.micro_batch * setup.seq_len
    per_layer = layer_activation_bytes(shape, setup)
    final_norm = 4 * h * tokens  # the last RMSNorm's fp32 input
    # SDPA and eager get a 4-D mask for packed rows: micro_batch x T x T, shared by all layers.
    mask = setup.micro_batch * setup.seq_len**2 * a if setup.attention not in attention.UNMASKED else 0
    largest = max(d_in * d_out for _, d_in, d_out in shape.linear_modules())
    transient = 0.0
    if setup.method == "qlora":
        transient += a * largest  # one weight dequantized to 16-bit for its matmul
    if setup.method == "dora":
        transient += 3 * setup.adapter_bytes * largest  # weight + B@A + their sum, for the norm
    checkpointed = checkpointed_layers(shape, setup)  # each keeps only its input
    offloaded = setup.offload and checkpointed == shape.layers
    # With offloading the MLP runs in slices of mlp_tile tokens: its share is slice-sized.
    mlp_tokens = min(tokens, setup.mlp_tile) if offloaded else tokens
    gradients = 2 * a * h * tokens + 3 * a * i * mlp_tokens  # one layer's input / intermediate gradients
    layer_inputs = checkpointed * a * h * tokens
    host = 0.0
    if offloaded:  # in host RAM; on the GPU the input being used and the one fetched ahead
        host, layer_inputs = layer_inputs, min(2, checkpointed) * a * h * tokens
    activations = (shape.layers - checkpointed) * per_layer * tokens + layer_inputs + final_norm + mask
    working = gradients + transient
    if checkpointed:  # the layer being recomputed
        mlp = mlp_activation_bytes(shape, setup)
        working += (per_layer - mlp) * tokens + mlp * mlp_tokens
    logits = logits_and_loss_bytes(shape, setup)
    estimate = MemoryEstimate(
        base_weights=weight_bytes(shape, setup),
        adapter_and_optimizer=adapter_bytes(shape, setup),
        activations=activations,
        logits_and_loss=logits,
        backward_working_set=working,
        allocator_overhead=0.0,
        host_offloaded=host,
    )
    estimate.allocator_overhead = ALLOCATOR_OVERHEAD * estimate.dynamic
    return estimate


# ================================================================================ GPUs


@dataclass(frozen=True)
class GPU:
    """A GPU type as SkyPilot names it."""

    name: str
    memory_gib: float  # what the driver reports as total memory
    peak_bf16_tflops: float  # dense, no sparsity
    expected_mfu: float  # assumed model-FLOPs utilisation of a LoRA run (replace with yours)
    tdp_watts: float
    card_price_usd: float | None  # rough 2026 street price, for --owned; None: not sold alone


def _peak(perf_name: str, fallback: float) -> float:
    """flops.py's datasheet peak where it has one (one source of truth), else `fallback`."""
    peak = flops.PEAK_BF16_FLOPS.get(perf_name)
    return peak / 1e12 if peak else fallback


# The MFUs are assumptions: PEFT's MetaMathQA LoRA runs (unpacked, padded) reach ~25% on an
# L40S; packed rows do better. Large GPUs are harder to keep busy with small models.
GPUS = {
    gpu.name: gpu
    for gpu in (
        GPU("T4", 15.0, 65.0, 0.25, 70, None),  # 16 GB, fp16 only (no bf16): the cheapest spot GPU on most clouds
        GPU("L4", 22.5, _peak("L4", 121.0), 0.30, 72, 2500),
        GPU("A10G", 22.5, 70.0, 0.35, 300, None),  # AWS-only A10 variant at lower clocks
        GPU("A10", 22.5, 125.0, 0.35, 150, 3500),
        GPU("RTX4090", 24.0, _peak("RTX 4090", 165.2), 0.35, 450, 2000),
        GPU("L40S", 45.0, _peak("L40S", 362.1), 0.35, 350, 8000),
        GPU("A100", 39.5, _peak("A100", 312.0), 0.40, 400, None),
        GPU("A100-80GB", 79.2, _peak("A100", 312.0), 0.40, 400, 15000),
        GPU("H100", 79.6, _peak("H100", 989.4), 0.30, 700, 30000),
        GPU("H200", 140.4, _peak("H200", 989.4), 0.30, 700, 35000),
    )
}


def usable_gib(gpu: GPU) -> float:
    return gpu.memory_gib * (1 - SAFETY_MARGIN)


# =========================================================================== the run


def base_setup(params: Params) -> TrainSetup:
    """The memory-relevant settings of params.yaml (micro-batch and checkpointing vary per GPU)."""
    targets = params.lora.target_modules
    return TrainSetup(
        method=params.model.method,
        lora_r=params.lora.r,
        targets=targets if isinstance(targets, str) else tuple(targets),
        dropout=params.lora.dropout,
        seq_len=params.data.max_length,
        # flash-attn is not a dependency: plan for SDPA unless it was asked for by name, and for
        # varlen beyond attention.LONG_ROW_TOKENS, as training switches to it there.
        attention=attention.planned(params.model.attn_implementation, params.data.max_length),
        # Liger on `auto` depends on the GPU machine's packages: planned as loss.py's chunked loss.
        loss="fused" if params.train.liger_kernels is True else "chunked" if params.train.chunked_loss else "hf",
        dtype_bytes=4 if params.model.dtype == "float32" else 2,
        optimizer=params.train.optimizer,
    )


def choose_fit(shape: ModelShape, setup: TrainSetup, params: Params, gpu: GPU) -> dict:
    """Micro-batch and checkpointing on `gpu`, as the trainer's `largest_that_fits` picks them.

    `auto` micro-batch: the largest divisor of global_batch that fits; `auto` checkpointing:
    only when not even one row fits without it, then on a quarter, a half or three quarters
    of the layers with one row, then on all of them.
    """
    wanted, checkpointing = params.train.micro_batch, params.train.gradient_checkpointing
    offloading = params.train.offload_activations
    if offloading is True:
        checkpointing = True
    batch = params.train.global_batch
    sizes = [wanted] if wanted != "auto" else [m for m in range(batch, 0, -1) if batch % m == 0]
    layers = shape.layers
    trials = []  # (micro_batch, fraction of layers checkpointed, offload), in the trainer's order (fit.py)
    if checkpointing is not True:
        trials += [(m, 0.0, False) for m in sizes]
    if checkpointing == "auto":
        trials += [(min(sizes), count / layers, False) for count in loading.partial_checkpointing(layers)]
    if checkpointing is not False:
        if offloading is not True:
            trials += [(m, 1.0, False) for m in sizes]
        if offloading is not False:
            trials += [(m, 1.0, True) for m in sizes]
    limit = usable_gib(gpu) * GIB
    for micro_batch, fraction, offloaded in trials:
        trial = replace(setup, micro_batch=micro_batch, checkpointing=fraction, offload=offloaded)
        memory = estimate_memory(shape, trial)
        if memory.total <= limit:
            return {"fits": True, "setup": trial, "memory": memory}
    with_ckpt = ("with" if trial.checkpointing else "without") + " gradient checkpointing"
    if trial.offload:
        with_ckpt += " and activations in host RAM"
    reason = (
        f"needs ~{memory.total / GIB:.1f} GiB at micro_batch {trial.micro_batch} {with_ckpt}; "
        f"{gpu.name} has {gpu.memory_gib:.1f} GiB, {usable_gib(gpu):.1f} usable with a {round(SAFETY_MARGIN * 100)}% margin"
    )
    return {"fits": False, "setup": trial, "memory": memory, "reason": reason}


def longest_row(shape: ModelShape, setup: TrainSetup, params: Params, gpu: GPU, step: int = 128) -> dict:
    """The longest data.max_length (a multiple of `step` tokens) that fits `gpu` with one row per
    micro-batch and every lever params allows (checkpointing, host offloading, chunked loss,
    the attention training would use at that length): its tokens (0 when not even `step` fit),
    whether it offloads, and the pinned host RAM that takes (GPU memory is the limit planned
    for; the machine must also have that RAM)."""
    one_row = params.model_copy(update={"train": params.train.model_copy(update={"micro_batch": 1})})

    def fit_at(tokens: int) -> dict:
        trial = replace(setup, seq_len=tokens, attention=attention.planned(params.model.attn_implementation, tokens))
        return choose_fit(shape, trial, one_row, gpu)

    low, high = 0, step
    while fit_at(high)["fits"] and high < 2**24:  # double until it no longer fits, then bisect
        low, high = high, high * 2
    while high - low > step:
        middle = (low + high) // 2 // step * step
        low, high = (middle, high) if fit_at(middle)["fits"] else (low, middle)
    if not low:
        return {"tokens": 0, "offload_activations": False, "host_ram_gib": 0.0}
    best = fit_at(low)
    return {"tokens": low, "offload_activations": best["setup"].offload,
            "host_ram_gib": round(best["memory"].host_offloaded / GIB, 2)}


def dataset_summary(params: Params) -> dict | None:
    """`prepare`'s summary.json when it matches the current data.max_length."""
    path = Path(params.data.prepared_dir) / "summary.json"
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if summary.get("max_length") != params.data.max_length or "train" not in summary:
        return None  # stale: prepared for another row length
    return summary


def run_workload(shape: ModelShape, params: Params, summary: dict | None) -> dict:
    """Tokens and FLOPs of the whole run: max_steps x global_batch rows of max_length tokens."""
    rows = params.train.max_steps * params.train.global_batch
    tokens = rows * params.data.max_length  # every slot of a row is computed, padding too
    train = (summary or {}).get("train") or {}
    context = train.get("mean_context") or params.data.max_length / 2
    useful = flops.flops_per_token(shape.matmul_params, shape.layers, shape.hidden, context)
    forward = 2 * shape.matmul_params + 2 * shape.layers * shape.hidden * context  # recomputed with checkpointing
    work = {
        "steps": params.train.max_steps,
        "global_batch": params.train.global_batch,
        "seq_len": params.data.max_length,
        "tokens": tokens,
        "mean_context": round(context, 1),
        "flops_per_token": useful,
        "forward_flops_per_token": forward,
        "dataset": None,
    }
    if train.get("rows"):
        work["dataset"] = {
            "rows": train["rows"],
            "tokens": train.get("tokens"),
            "epochs": round(rows / train["rows"], 2),
            "real_tokens_per_run": round(rows * train.get("tokens", 0) / train["rows"]),
        }
    return work


def hours_on(gpu: GPU, work: dict, setup: TrainSetup, shape: ModelShape) -> dict:
    """Estimated hours: setup (billed, trains nothing) plus compute at the GPU's expected MFU."""
    token_flops = work["flops_per_token"] + work["forward_flops_per_token"] * setup.checkpointing  # recomputed layers
    seconds = work["tokens"] * token_flops / (gpu.peak_bf16_tflops * 1e12 * gpu.expected_mfu)
    seconds *= METHOD_TIME_FACTOR.get(setup.method, 1.0)
    setup_s = SETUP_MINUTES * 60 + shape.total_params * 2 / DOWNLOAD_BYTES_PER_S
    return {"compute_hours": seconds / 3600, "setup_hours": setup_s / 3600, "hours": (seconds + setup_s) / 3600}


# ========================================================================= the plan


def gpu_estimate(shape: ModelShape, setup: TrainSetup, params: Params, work: dict, gpu: GPU) -> dict:
    """Fit, micro-batch, peak memory and hours of the run on one GPU type."""
    fit = choose_fit(shape, setup, params, gpu)
    entry = {
        "gpu": gpu.name,
        "memory_gib": gpu.memory_gib,
        "usable_gib": round(usable_gib(gpu), 2),
        "fits": fit["fits"],
        "reason": fit.get("reason"),
        "micro_batch": fit["setup"].micro_batch,
        "gradient_checkpointing": fit["setup"].checkpointing,
        "offload_activations": fit["setup"].offload,
        "memory": fit["memory"].gib(),
        "longest_row": longest_row(shape, setup, params, gpu),
    }
    entry.update({key: round(value, 4) for key, value in hours_on(gpu, work, fit["setup"], shape).items()})
    return entry


def make_plan(params: Params, environ=None) -> dict:
    """Memory, time and dollars per run on every GPU and offer; see the module docstring."""
    environ = os.environ if environ is None else environ
    shape = load_model_shape(params.model.base)
    summary = dataset_summary(params)
    work = run_workload(shape, params, summary)
    setup = base_setup(params)
    targeted_modules(shape, setup.targets)  # a typo in target_modules fails here, with the names

    offers, price_source = prices.load_offers(params.compute.clouds, environ)
    if not offers and params.cost.hourly_usd is not None:
        offers, price_source = prices.user_offers(params.cost.hourly_usd, GPUS), "params cost.hourly_usd"

    gpus = {gpu.name: gpu_estimate(shape, setup, params, work, gpu) for gpu in GPUS.values()}
    excluded = [{"gpu": name, "reason": entry["reason"]} for name, entry in gpus.items() if not entry["fits"]]
    ranked = rank_offers(offers, gpus)
    for name in GPUS:
        if gpus[name]["fits"] and not any(o["gpu"] == name for o in ranked):
            excluded.append({"gpu": name, "reason": f"fits, but no single-GPU offer on {_clouds(params)} in the prices"})

    preferred = [o for o in ranked if o["spot"] == params.compute.spot] or ranked
    cheapest = preferred[0] if preferred else None
    return {
        "note": "estimates, not measurements: memory within ~20% of published runs; time assumes an MFU per GPU",
        "model": {**asdict(shape), "total_params": shape.total_params, "matmul_params": shape.matmul_params},
        "setup": {k: v for k, v in asdict(setup).items() if k not in ("micro_batch", "checkpointing", "offload")},
        "work": work,
        "prices": {"source": price_source, "offers": len(offers)},
        "gpus": list(gpus.values()),
        "ranked": ranked,
        "excluded": excluded,
        "cheapest": cheapest,
        "candidates": _distinct([o["gpu"] for o in preferred]),
        "budget": {
            "max_run_usd": params.budget.max_run_usd,
            "cheapest_usd": cheapest["usd_per_run"] if cheapest else None,
            "within": bool(cheapest) and cheapest["usd_per_run"] <= params.budget.max_run_usd,
        },
        "spot": params.compute.spot,
    }


def estimate_for_gpu(params: Params, gpu_name: str, hourly_usd: float | None) -> dict | None:
    """The plan's estimate for the GPU a run actually got, priced at what it actually pays:
    logged at the start of training so that MLflow shows estimate against actual."""
    gpu = GPUS.get(gpu_name)
    if gpu is None:
        return None
    shape = load_model_shape(params.model.base)
    entry = gpu_estimate(shape, base_setup(params), params, run_workload(shape, params, dataset_summary(params)), gpu)
    estimate = {"estimated_hours": entry["hours"], "estimated_fits": entry["fits"]}
    if hourly_usd is not None:  # None: the price of this machine is unknown
        estimate["estimated_cost_usd"] = entry["hours"] * hourly_usd
    return estimate


def rank_offers(offers: list[prices.Offer], gpus: dict[str, dict]) -> list[dict]:
    """Dollars per run of every (GPU, cloud, spot / on-demand) offer for a GPU that fits,
    the cheapest region of each, cheapest first."""
    ranked = []
    for offer in offers:
        entry = gpus.get(offer.accelerator)
        if entry is None or offer.count != 1 or not entry["fits"]:
            continue  # no speed for that GPU, a multi-GPU machine (the plan is for one GPU), or too small
        for spot in (True, False):
            hourly = offer.hourly(spot)
            if hourly is None:
                continue
            ranked.append({
                "gpu": offer.accelerator,
                "cloud": offer.cloud,
                "region": offer.region,
                "instance_type": offer.instance_type,
                "spot": spot,
                "usd_per_hour": hourly,
                "hours": entry["hours"],
                "usd_per_run": round(hourly * entry["hours"], 4),
                "micro_batch": entry["micro_batch"],
                "gradient_checkpointing": entry["gradient_checkpointing"],
                "peak_gib": entry["memory"]["peak"],
                "source": offer.source,
            })
    ranked = _cheapest_per_offer(ranked)
    ranked.sort(key=lambda o: (o["usd_per_run"], o["gpu"], o["cloud"]))
    for rank, offer in enumerate(ranked, start=1):
        offer["rank"] = rank
    return ranked


def _cheapest_per_offer(ranked: list[dict]) -> list[dict]:
    """One entry per (GPU, cloud, spot): the cheapest region / instance type."""
    best: dict[tuple, dict] = {}
    for offer in ranked:
        key = (offer["gpu"], offer["cloud"], offer["spot"])
        if key not in best or offer["usd_per_run"] < best[key]["usd_per_run"]:
            best[key] = offer
    return list(best.values())


def _distinct(names: list[str]) -> list[str]:
    return list(dict.fromkeys(names))


def _clouds(params: Params) -> str:
    return ", ".join(params.compute.clouds) or "any cloud"


# ========================================================================== budget


def check_budget(plan: dict | Params, params: Params | None = None) -> float:
    """The cheapest run's dollars; BudgetExceeded (with the numbers) when above the budget.

    `check_budget(plan, params)`, or `check_budget(params)` to plan first (what `launch` does).
    """
    if params is None:
        params, plan = plan, make_plan(plan)
    cheapest = plan["cheapest"]
    if cheapest is None:
        if plan["gpus"] and not any(entry["fits"] for entry in plan["gpus"]):
            largest = max(plan["gpus"], key=lambda entry: entry["usable_gib"])
            raise ConfigError(
                f"no single GPU can hold this run ({largest['gpu']}, the largest: {largest['reason']}); use "
                "model.method=qlora or a smaller data.max_length, or shard the base over several GPUs with "
                "configs/accelerate/fsdp.yaml (this planner plans one GPU)"
            )
        reasons = "; ".join(f"{e['gpu']}: {e['reason']}" for e in plan["excluded"]) or "no prices"
        raise ConfigError(f"no GPU can run this plan ({reasons})")
    budget = params.budget.max_run_usd
    if cheapest["usd_per_run"] > budget:
        kind = "spot" if cheapest["spot"] else "on-demand"
        raise BudgetExceeded(
            f"estimated {_usd(cheapest['usd_per_run'])} per run on the cheapest offer "
            f"({cheapest['gpu']} {kind} on {cheapest['cloud']}: {cheapest['hours']:.2f} h x {_usd(cheapest['usd_per_hour'])}/h) "
            f"exceeds budget.max_run_usd={_usd(budget)}; lower train.max_steps or data.max_length, "
            f"pick a smaller model, or raise budget.max_run_usd"
        )
    return cheapest["usd_per_run"]


# ============================================================== sky/train.yaml candidates

WRITE_MARKER = "# generated by plan --write"
ACCELERATORS_LINE = re.compile(r"^(?P<indent>[ \t]*)accelerators:[ \t]*\{[^}\n]*\}[ \t]*(#.*)?$")


def write_sky_candidates(plan: dict, path: str | Path = "sky/train.yaml", top: int = 4) -> list[str]:
    """Rewrite the `accelerators: {...}` line of a SkyPilot task with the plan's best GPUs.

    Only that line changes (it gets a trailing WRITE_MARKER); every other byte of the file
    stays as it was. Returns the GPUs written.
    """
    path = Path(path)
    candidates = plan["candidates"][:top]
    if not candidates:
        raise ConfigError("no GPU fits this plan: nothing to write to " + str(path))
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found (is this project set up for SkyPilot?)") from None
    lines = data.decode("utf-8").splitlines(keepends=True)
    matches = [n for n, line in enumerate(lines) if ACCELERATORS_LINE.match(line.rstrip("\r\n"))]
    marked = [n for n in matches if WRITE_MARKER in lines[n]]
    if not matches:
        raise ConfigError(f"{path}: no `accelerators: ` line (a flow mapping of GPUs) to update")
    number = (marked or matches)[0]
    line = lines[number]
    ending = line[len(line.rstrip("\r\n")):]
    indent = ACCELERATORS_LINE.match(line.rstrip("\r\n")).group("indent")
    gpus = ", ".join(f"{name}: 1" for name in candidates)
    lines[number] = indent + "accelerators: {" + gpus + "}  " + WRITE_MARKER + ending
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes("".join(lines).encode("utf-8"))
    tmp.replace(path)
    return candidates


# ======================================================================== own GPU

DEFAULT_USD_PER_KWH = 0.17  # around the 2025 US residential average; pass yours
DEFAULT_PAYBACK_MONTHS = 24


def compare_owned(
    plan: dict,
    gpu_name: str,
    usd_per_kwh: float = DEFAULT_USD_PER_KWH,
    watts: float | None = None,
    card_price_usd: float | None = None,
    expected_runs: int | None = None,
    payback_months: float = DEFAULT_PAYBACK_MONTHS,
) -> dict:
    """A run on your own card against the cheapest spot offer.

    Energy is the card's draw (measured `watts`, else its TDP) times the run's compute hours
    times the electricity price. The card's price, spread over `expected_runs`, is the
    optional amortisation. Break-even: buying the card pays for itself after
    card price / (cloud run - energy per run) runs; per month over `payback_months`.
    """
    name = prices.canonical_gpu(gpu_name)
    if name not in GPUS:
        raise ConfigError(f"--owned {gpu_name}: unknown GPU; known: {', '.join(GPUS)}")
    gpu = GPUS[name]
    entry = next(g for g in plan["gpus"] if g["gpu"] == name)
    if not entry["fits"]:
        reason = next(e["reason"] for e in plan["excluded"] if e["gpu"] == name)
        raise ConfigError(f"--owned {name}: the run does not fit ({reason})")
    watts = watts if watts is not None else gpu.tdp_watts
    card_price = card_price_usd if card_price_usd is not None else gpu.card_price_usd
    hours = entry["compute_hours"]  # no VM to boot at home
    energy = hours * prices.energy_cost_per_hour(watts, usd_per_kwh)
    amortisation = card_price / expected_runs if (card_price and expected_runs) else 0.0
    spot = [o for o in plan["ranked"] if o["spot"]] or plan["ranked"]
    cloud = spot[0] if spot else None
    result = {
        "gpu": name,
        "hours": hours,
        "watts": watts,
        "usd_per_kwh": usd_per_kwh,
        "energy_usd": energy,
        "amortisation_usd": amortisation,
        "owned_usd_per_run": energy + amortisation,
        "card_price_usd": card_price,
        "cloud": cloud,
        "cloud_usd_per_run": cloud["usd_per_run"] if cloud else None,
        "savings_per_run_usd": None,
        "break_even_runs": None,
        "break_even_runs_per_month": None,
        "payback_months": payback_months,
    }
    if cloud and card_price:
        savings = cloud["usd_per_run"] - energy
        result["savings_per_run_usd"] = savings
        if savings > 0:
            result["break_even_runs"] = card_price / savings
            result["break_even_runs_per_month"] = card_price / savings / payback_months
    return result


# =========================================================================== output


def render_table(plan: dict, top: int = 4) -> str:
    """The plan for people: workload, memory of the best choice, ranked offers, exclusions."""
    model, work, setup = plan["model"], plan["work"], plan["setup"]
    out = [
        f"Plan for {model['name']} ({setup['method']}, r={setup['lora_r']}, {_targets(setup['targets'])})",
        "  ESTIMATES, not measurements: memory within ~20% of published runs, time from an assumed MFU.",
        f"  model shape: {model['layers']} layers, hidden {model['hidden']}, {model['total_params'] / 1e9:.2f}B params"
        f" (from {model['source']})",
        f"  trainer: {setup['loss']} loss, {setup['attention']} attention",
        f"  run: {work['steps']} steps x {work['global_batch']} rows x {work['seq_len']} tokens"
        f" = {work['tokens'] / 1e6:.1f}M tokens, {work['flops_per_token'] / 1e9:.2f} GFLOP/token",
    ]
    if work["dataset"]:
        ds = work["dataset"]
        real = ds["real_tokens_per_run"] / 1e6
        out.append(f"  dataset: {ds['rows']} packed rows, {ds['epochs']} epochs, ~{real:.1f}M real tokens")
    else:
        out.append("  dataset: not prepared yet (run `prepare` for epochs and real tokens)")
    out.append(f"  prices: {plan['prices']['source']}")

    best = plan["cheapest"]
    if best:
        entry = next(g for g in plan["gpus"] if g["gpu"] == best["gpu"])
        offloaded = ", layer inputs in host RAM" if entry["offload_activations"] else ""
        out += ["", f"Peak memory on {best['gpu']} (micro_batch {entry['micro_batch']}, "
                    f"gradient checkpointing {checkpointing_label(entry['gradient_checkpointing'], 'on', 'off')}{offloaded}):"]
        labels = {
            "base_weights": "base weights" + (" (4-bit NF4)" if setup["method"] == "qlora" else " (16-bit)"),
            "adapter_and_optimizer": "LoRA params + grads + AdamW",
            "activations": "activations kept for backward",
            "logits_and_loss": "logits + loss (peak)",
            "backward_working_set": "backward working set (1 layer)",
            "allocator_overhead": "allocator overhead",
            "cuda_context": "CUDA context",
            "peak": "peak (logits and backward set don't coexist)",
        }
        for key, label in labels.items():
            out.append(f"  {label:<46} {entry['memory'][key]:7.2f} GiB")
        if entry["memory"]["host_ram"]:
            out.append(f"  {'host RAM (pinned): offloaded layer inputs':<46} {entry['memory']['host_ram']:7.2f} GiB")

    kind = "spot" if plan["spot"] else "on-demand"
    shown = [o for o in plan["ranked"] if o["gpu"] in plan["candidates"][:top] and o["spot"] == plan["spot"]]
    out += ["", f"Offers for the {min(top, len(plan['candidates']))} best GPUs ({kind}), by dollars per run:",
            f"  {'#':>3}  {'GPU':<10} {'cloud':<7} {'region':<13} {'$/h':>6} {'mb':>3} {'ckpt':>4} "
            f"{'GiB':>6} {'hours':>6} {'$/run':>8}"]
    for position, offer in enumerate(shown, start=1):
        out.append(
            f"  {position:>3}  {offer['gpu']:<10} {offer['cloud']:<7} {offer['region'][:13]:<13} "
            f"{offer['usd_per_hour']:>6.2f} {offer['micro_batch']:>3} {checkpointing_label(offer['gradient_checkpointing'], 'yes', 'no'):>4} "
            f"{offer['peak_gib']:>6.1f} {offer['hours']:>6.2f} {offer['usd_per_run']:>8.2f}"
        )
    if not shown:
        out.append("  (none)")
    if plan["excluded"]:
        out += ["", "Excluded:"] + [f"  {e['gpu']}: {e['reason']}" for e in plan["excluded"]]
    out += ["", "Longest row that fits (micro_batch 1, with the checkpointing and offloading params allow):"]
    for g in plan["gpus"]:
        row = g["longest_row"]
        host = f" (layer inputs in {row['host_ram_gib']:.1f} GiB of pinned host RAM)" if row["offload_activations"] else ""
        out.append(f"  {g['gpu']:<10} up to {row['tokens']:>9,} tokens{host}" if row["tokens"] else f"  {g['gpu']:<10} not even 128 tokens")
    budget = plan["budget"]
    if budget["cheapest_usd"] is not None:
        verdict = "within" if budget["within"] else "OVER"
        out += ["", f"Budget: cheapest {_usd(budget['cheapest_usd'])} per run, "
                    f"{verdict} budget.max_run_usd={_usd(budget['max_run_usd'])}"]
    return "\n".join(out)


format_plan = render_table  # the name `launch --dry-run` looks for


def checkpointing_label(fraction: float, every: str, none: str) -> str:
    """0 -> none, 1 -> every, a fraction of the layers -> e.g. 25%."""
    return every if fraction == 1 else none if fraction == 0 else f"{fraction:.0%}"


def _usd(value: float) -> str:
    """Dollars with cents, or tenths of cents below a dime (energy per run is often that small)."""
    return f"${value:,.3f}" if abs(value) < 0.1 else f"${value:,.2f}"


def render_owned(owned: dict) -> str:
    lines = [
        "",
        f"Own {owned['gpu']}: {owned['hours']:.2f} h x {owned['watts']:.0f} W x ${owned['usd_per_kwh']:.3f}/kWh"
        f" = {_usd(owned['energy_usd'])} energy per run"
        + (f" + {_usd(owned['amortisation_usd'])} amortisation" if owned["amortisation_usd"] else ""),
    ]
    if owned["cloud"]:
        c = owned["cloud"]
        kind = "spot" if c["spot"] else "on-demand"
        lines.append(f"  cheapest cloud: {_usd(c['usd_per_run'])} per run ({c['gpu']} {kind} on {c['cloud']})")
    if owned["break_even_runs"]:
        lines.append(
            f"  buying it (${owned['card_price_usd']:,.0f}) pays off after {owned['break_even_runs']:.0f} runs:"
            f" {owned['break_even_runs_per_month']:.1f} runs a month over {owned['payback_months']:.0f} months"
        )
    elif owned["savings_per_run_usd"] is not None:
        lines.append("  never pays off: the energy alone costs more than the cloud run")
    else:
        lines.append("  no card price known: pass --card-price-usd for a break-even point")
    return "\n".join(lines)


def _targets(targets) -> str:
    return targets if isinstance(targets, str) else ",".join(targets)


# ============================================================================== CLI


def register(subparsers) -> argparse.ArgumentParser:
    """Add the `plan` subcommand to a CLI's subparsers."""
    help_text = "estimate memory, time and dollars per run on each GPU; pick the cheapest that fits"
    sub = subparsers.add_parser("plan", help=help_text, description=help_text)
    sub.add_argument("--params", default="params.yaml", help="parameters file (default: params.yaml)")
    sub.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a parameter")
    sub.add_argument("--json", action="store_true", help="print the whole plan as JSON")
    sub.add_argument("--write", action="store_true", help="write the best GPUs into the accelerators line of --sky-yaml")
    sub.add_argument("--sky-yaml", default="sky/train.yaml", help="SkyPilot task to update (default: sky/train.yaml)")
    sub.add_argument("--top", type=int, default=4, metavar="N", help="how many GPU types to show and write (default: 4)")
    sub.add_argument("--owned", metavar="GPU", help=f"compare with your own card ({', '.join(GPUS)})")
    sub.add_argument("--electricity-usd-per-kwh", type=float, default=DEFAULT_USD_PER_KWH, metavar="USD")
    sub.add_argument("--watts", type=float, help="measured draw of the owned card (default: its TDP)")
    sub.add_argument("--card-price-usd", type=float, help="price of the owned card (default: a rough street price)")
    sub.add_argument("--expected-runs", type=int, help="runs the card will do in its life (adds amortisation per run)")
    sub.add_argument("--payback-months", type=float, default=DEFAULT_PAYBACK_MONTHS, help="horizon for the break-even")
    sub.set_defaults(handler=run)
    return sub


def run(args) -> int:
    """`plan`: print the plan (or JSON), optionally write sky/train.yaml, then check the budget.

    Raises ConfigError for bad input and BudgetExceeded when the cheapest run is over budget
    (after printing the plan, so the numbers are visible).
    """
    if args.top < 1:
        raise ConfigError("--top must be at least 1")
    params = load_params(args.params, args.set)
    plan = make_plan(params)
    owned = None
    if args.owned:
        owned = compare_owned(
            plan, args.owned, args.electricity_usd_per_kwh, args.watts, args.card_price_usd,
            args.expected_runs, args.payback_months,
        )
    written = write_sky_candidates(plan, args.sky_yaml, args.top) if args.write else None
    if args.json:
        print(json.dumps({**plan, "owned": owned, "written": written}, indent=2))
    else:
        print(render_table(plan, args.top))
        if owned:
            print(render_owned(owned))
        if written:
            print(f"\n{args.sky_yaml}: accelerators = {', '.join(written)}")
    check_budget(plan, params)
    return 0
