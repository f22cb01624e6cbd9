"""Peak GPU memory of one training step, broken down: base weights (16-bit, or 4-bit NF4 with
double quantization for QLoRA), LoRA parameters + gradients + AdamW states, activations kept
for backward (all layers, or one checkpoint per layer with gradient checkpointing, or those
checkpoints in host RAM with offloading), the loss (all logits, or one chunk's), CUDA context
and allocator overhead; and on each of several GPUs (`per_rank_memory`: DDP keeps the whole base
on every GPU, FSDP a 1/k shard of it plus the layers being gathered). The setup is given: which
one fits a GPU is fit.py's question."""

from __future__ import annotations

from dataclasses import dataclass

from ...config import ConfigError
from ...model import attention, loss
from ...model.offload import MLP_TILE_TOKENS
from .shapes import ModelShape

GIB = 2**30

CUDA_CONTEXT_GIB = 0.6  # CUDA context, cuBLAS workspaces, kernels: outside PyTorch's allocator
ALLOCATOR_OVERHEAD = 0.10  # caching-allocator slack on the memory that churns every step

NF4_BYTES_PER_PARAM = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit codes + 8-bit absmax per 64 + fp32 per 256 blocks

# Attention that finds packed examples by their boundaries: no T x T mask, k and v not repeated.
UNMASKED_ATTENTION = ("flash_attention_2", "varlen")


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
    # Several GPUs: DDP's gradient buckets, or FSDP's gathered layers (see per_rank_memory).
    communication_buffers: float = 0.0

    @property
    def dynamic(self) -> float:
        # The loss peak and the per-layer backward work happen at different moments.
        return self.activations + max(self.logits_and_loss, self.backward_working_set)

    @property
    def allocator_bytes(self) -> float:
        """What PyTorch's allocator reserves: comparable to torch.cuda.max_memory_reserved()."""
        return (self.base_weights + self.adapter_and_optimizer + self.communication_buffers + self.dynamic
                + self.allocator_overhead)

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
            "communication_buffers": self.communication_buffers,
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


def layer_weight_bytes(shape: ModelShape, setup: TrainSetup) -> float:
    """One decoder layer's frozen linear weights as stored (what FSDP gathers per layer)."""
    per_linear = NF4_BYTES_PER_PARAM if setup.method == "qlora" else setup.dtype_bytes
    return shape.layer_linear_params * per_linear


def adapter_parameters(shape: ModelShape, setup: TrainSetup) -> int:
    """LoRA A and B (plus DoRA magnitudes) of every targeted layer: what is trained."""
    modules = targeted_modules(shape, setup.targets)
    params = shape.layers * sum(setup.lora_r * (d_in + d_out) for _, d_in, d_out in modules)
    if setup.method == "dora":
        params += shape.layers * sum(d_out for _, _, d_out in modules)
    return params


def adapter_bytes(shape: ModelShape, setup: TrainSetup) -> float:
    """LoRA A and B (plus DoRA magnitudes), their gradients and AdamW's two moments."""
    params = adapter_parameters(shape, setup)
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


def per_rank_memory(shape: ModelShape, setup: TrainSetup, world: int = 1, sharded: bool = False) -> MemoryEstimate:
    """Peak memory of one of `world` GPUs training `setup` together.

    Data parallel (DDP): every GPU holds what one GPU would, plus the buckets its adapter
    gradients are all-reduced in. Sharded (FSDP, one unit per decoder layer): the frozen base,
    the adapter and its optimizer state are split over the GPUs, and each GPU also holds, whole,
    the layer being computed and the one fetched ahead (forward and backward), and the root
    unit (embeddings, final norm, output layer) while it runs. Activations are per GPU either way.
    """
    memory = estimate_memory(shape, setup)
    if world <= 1:
        return memory
    if not sharded:
        memory.communication_buffers = adapter_parameters(shape, setup) * setup.adapter_bytes
        return memory
    other = memory.base_weights - shape.layers * layer_weight_bytes(shape, setup)  # embeddings, norms, output layer
    unsharded = 2 * layer_weight_bytes(shape, setup) + other
    memory.base_weights /= world
    memory.adapter_and_optimizer /= world
    memory.communication_buffers = unsharded * (world - 1) / world  # the gathered rest of what is sharded
    return memory
