"""The base model (hub id or local directory), its precision, 4-bit loading and LoRA / DoRA."""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import ConfigError


def resolve_device(requested: str = "auto") -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def resolve_dtype(requested: str, device: torch.device) -> torch.dtype:
    """bf16 where the GPU supports it, fp16 on older GPUs, fp32 on CPU."""
    if requested != "auto":
        return getattr(torch, requested)
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def attention_candidates(requested: str, device: torch.device) -> list[str]:
    """Fastest first: flash-attention 2 on a GPU (packed rows without a T x T mask),
    then PyTorch's SDPA, then the eager reference implementation. `varlen` loads with SDPA
    (for evaluation and generation); `train` switches it on (attention.use_varlen)."""
    chain = ["flash_attention_2", "sdpa", "eager"] if device.type == "cuda" else ["sdpa", "eager"]
    if requested == "varlen":
        return ["sdpa"]
    if requested != "auto":
        return [requested]
    return chain


class ModelNotFound(ValueError):
    """model.base is neither a local model directory nor a reachable hub id."""


def _model_not_found(base: str, err: Exception) -> ModelNotFound:
    first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return ModelNotFound(f"model.base={base!r}: cannot load it ({first_line})")


def load_tokenizer(base: str):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(base)
    except (OSError, ValueError) as err:
        raise _model_not_found(base, err) from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(params, device: torch.device, quantize: bool | None = None, to_device: bool = True):
    """The frozen base model at the training dtype; 4-bit NF4 for QLoRA.
    to_device=False leaves a 16-bit model on the CPU (FSDP places the shards itself)."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = resolve_dtype(params.model.dtype, device)
    quantize = params.model.method == "qlora" if quantize is None else quantize
    kwargs = {"dtype": dtype}
    if quantize:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
        kwargs["device_map"] = {"": device}
    model = None
    for attention in attention_candidates(params.model.attn_implementation, device):
        try:
            model = AutoModelForCausalLM.from_pretrained(params.model.base, attn_implementation=attention, **kwargs)
            break
        except OSError as err:
            raise _model_not_found(params.model.base, err) from err
        except (ImportError, ValueError) as err:  # not installed / not supported by this model
            if params.model.attn_implementation != "auto":
                raise
            print(f"attention {attention} unavailable ({str(err).splitlines()[0][:120]}); trying the next")
    if model is None:
        raise ModelNotFound(f"model.base={params.model.base!r}: no attention implementation could load it")
    if not quantize and to_device:
        model.to(device)
    model.config.use_cache = False  # the KV cache only helps generation
    return model


def apply_liger_kernels(model, setting: bool | str, device: torch.device) -> bool:
    """Fused Triton kernels (RMSNorm, SwiGLU, RoPE, linear cross-entropy) when available.

    `auto` uses them on a GPU when liger-kernel is installed; `true` insists (and says why
    it cannot); `false` never.
    """
    if setting is False or (setting == "auto" and device.type != "cuda"):
        return False
    if device.type != "cuda":
        raise ConfigError("train.liger_kernels=true: Liger's Triton kernels need a GPU; use auto or false on a CPU")
    try:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    except ImportError as err:
        if setting is True:
            raise ConfigError("train.liger_kernels=true: liger-kernel is not installed (pip install liger-kernel)") from err
        return False
    if model.config.model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:  # Liger would skip it silently
        if setting is True:
            raise ConfigError(f"train.liger_kernels=true: Liger has no kernels for model type {model.config.model_type!r}")
        return False
    _apply_liger_kernel_to_instance(model=model)
    return True


def compile_decoder_layers(model) -> int:
    """torch.compile each decoder layer in place; returns how many were compiled.

    Regional compilation: the layers share one structure, so they share their compiled graphs
    (compile time hardly grows with depth), the mask building and the loss stay eager, and
    in-place `Module.compile` keeps the parameter names, so checkpoints and adapters are the
    same as without it. Pays off when fusing LoRA's dropout, scaling and additions saves more
    than the compilation costs: measure it with `bench --compile true`.
    """
    layers = decoder_layers(model)
    for layer in layers:
        layer.compile()
    return len(layers)


def decoder_layers(model) -> list[torch.nn.Module]:
    """The model's repeated blocks, in order (transformers marks them GradientCheckpointingLayer)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [module for module in model.modules() if isinstance(module, GradientCheckpointingLayer)]


def partial_checkpointing(layers: int) -> list[int]:
    """How many layers `gradient_checkpointing: auto` tries to checkpoint before all of them:
    a quarter, a half, three quarters (fewer recomputed layers, faster steps)."""
    return sorted({layers // 4, layers // 2, 3 * layers // 4} - {0, layers})


def checkpoint_layers(model, count: int) -> None:
    """Gradient checkpointing on the first `count` decoder layers and not on the others.

    A checkpointed layer keeps only its input for backward and runs its forward again there:
    less memory, more compute. For LoRA the backward pass costs about as much as the forward,
    so checkpointing every layer adds ~50% to a step's FLOPs, a quarter of them ~12%.
    """
    layers = decoder_layers(model)
    if count and not any(layer.gradient_checkpointing for layer in layers):
        # Non-reentrant checkpointing works with frozen inputs (LoRA) and 4-bit bases.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for index, layer in enumerate(layers):
        layer.gradient_checkpointing = index < count


def add_adapter(model, params):
    """Wrap the base model with trainable LoRA (or DoRA) matrices; everything else frozen."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=params.lora.r,
        lora_alpha=params.lora.alpha,
        lora_dropout=params.lora.dropout,
        target_modules=params.lora.target_modules,
        use_dora=params.model.method == "dora",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def load_trained(params, adapter_dir: str | Path, device: torch.device):
    """Base model plus a saved adapter, for evaluation and generation."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(load_base_model(params, device), str(adapter_dir))
    return model.eval()


def count_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
