"""The base model (hub id or local directory), its precision, 4-bit loading and LoRA / DoRA."""

from __future__ import annotations

import difflib
import os
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


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _model_not_found(base: str, err: Exception, source: dict | None = None) -> ModelNotFound:
    if source:  # from the cache, the hub being unreachable, and the cache lacks a file (`plan` fetches only config.json)
        return ModelNotFound(
            f"model.base={base!r}: the Hugging Face Hub is unreachable and the local cache holds only part of the model; "
            f"{offline_advice(base)}"
        )
    return ModelNotFound(f"model.base={base!r}: cannot load it ({_first_line(err)})")


def offline_advice(base: str) -> str:
    return (
        "to work offline, set model.base to a local model directory, or download the model once with network access "
        f"(`hf download {base}`) and set HF_HUB_OFFLINE=1"
    )


def looks_like_path(base: str) -> bool:
    """Whether model.base is meant as a local directory rather than a hub id (`owner/name`):
    it starts with /, ./, ../ or ~, has more parts than a hub id, or its first part is a folder
    here (`models/smol` next to a `models/` folder). transformers sends anything that is not an
    existing directory to the hub, which answers a mistyped path with a repo-id error."""
    if base.startswith(("/", "./", "../", "~")) or base in (".", "..") or os.path.isabs(base) or "\\" in base:
        return True
    parts = base.split("/")
    return len(parts) > 2 or (len(parts) == 2 and Path(parts[0]).is_dir())


def _missing_directory(base: str) -> str:
    """`model.base=...: no such directory`, naming the closest folder that does exist."""
    parts = [part for part in base.replace("\\", "/").split("/") if part]
    prefix = "/" if base.startswith("/") else ""
    # The deepest existing folder on the way, and the first part missing below it.
    depth = 0
    while depth < len(parts) and Path(prefix + "/".join(parts[: depth + 1])).expanduser().is_dir():
        depth += 1
    if depth < len(parts) and Path(prefix + "/".join(parts[: depth + 1])).expanduser().exists():
        return f"model.base={base!r}: {prefix + '/'.join(parts[: depth + 1])} is a file, not a model directory (the folder with config.json)"
    parent = Path(prefix + "/".join(parts[:depth]) or ".").expanduser()
    try:
        siblings = sorted(child.name for child in parent.iterdir() if child.is_dir() and not child.name.startswith("."))
    except OSError:  # unreadable
        siblings = []
    close = difflib.get_close_matches(parts[depth], siblings, n=1, cutoff=0.5)
    if close:
        hint = f"did you mean {prefix + '/'.join([*parts[:depth], close[0]])!r}?"
    else:
        where = prefix + "/".join(parts[:depth])
        hint = f"no folder like {parts[depth]!r} in {'the current folder' if where in ('', '.') else where}"
    return f"model.base={base!r}: no such directory ({hint})"


# The hub's reachability, probed once per process and endpoint: (endpoint, base) -> why not, or None.
_HUB_PROBES: dict[tuple[str, str], str | None] = {}
_FROM_CACHE_SAID: set[tuple[str, str]] = set()  # the note that the cache stands in, once per model


def hub_unreachable(base: str) -> str | None:
    """Why the Hugging Face Hub cannot be reached, or None when it answers (whatever it answers).

    One request of at most HF_HUB_ETAG_TIMEOUT seconds (10 by default): without it, an
    unreachable hub costs minutes of transformers' retries (five per file, backing off to 8 s)
    before the same conclusion. Online it costs one small request."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError

    key = (constants.ENDPOINT, base)
    if key not in _HUB_PROBES:
        try:
            HfApi().model_info(base, timeout=constants.HF_HUB_ETAG_TIMEOUT)
            _HUB_PROBES[key] = None
        except (HfHubHTTPError, ValueError):  # it answered (not found, gated...) or the id is malformed: transformers says which
            _HUB_PROBES[key] = None
        except Exception as err:  # the HTTP client's transport errors (refused, DNS, timeout, proxy, TLS); their classes are the client's
            _HUB_PROBES[key] = f"{constants.ENDPOINT}: {_first_line(err)}"
    return _HUB_PROBES[key]


def _in_hub_cache(base: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(base, "config.json"), str)
    except ValueError:  # not a valid hub id
        return False


def model_source(base: str) -> dict:
    """The `from_pretrained` options for model.base, once it is known that it can be loaded:
    {} as a rule, {"local_files_only": True} when the hub is unreachable and the local cache
    has the model. Raises ModelNotFound, with what to do, for a local directory that does not
    exist and for a hub id that can be neither downloaded nor found in the cache."""
    if Path(base).expanduser().is_dir():
        return {}
    if looks_like_path(base):
        raise ModelNotFound(_missing_directory(base))
    from huggingface_hub import constants, is_offline_mode

    cached = _in_hub_cache(base)
    if is_offline_mode():
        if cached:
            return {}
        raise ModelNotFound(
            f"model.base={base!r}: not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE=1 "
            f"keeps it from being downloaded; download it once with network access (`hf download {base}`), "
            "or set model.base to a local model directory"
        )
    problem = hub_unreachable(base)
    if problem is None:
        return {}
    if not cached:
        raise ModelNotFound(f"model.base={base!r}: the Hugging Face Hub is unreachable ({problem}) "
                            f"and the model is not in the local cache; {offline_advice(base)}")
    if (constants.ENDPOINT, base) not in _FROM_CACHE_SAID:
        _FROM_CACHE_SAID.add((constants.ENDPOINT, base))
        print(f"the Hugging Face Hub is unreachable ({problem}): {base} comes from the local cache "
              "(HF_HUB_OFFLINE=1 skips this check)")
    return {"local_files_only": True}


def load_tokenizer(base: str):
    from transformers import AutoTokenizer

    source = model_source(base)
    try:
        tokenizer = AutoTokenizer.from_pretrained(base, **source)
    except (OSError, ValueError) as err:
        raise _model_not_found(base, err, source) from err
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
            # The packed 4-bit codes stored as the compute dtype (two per byte either way): FSDP
            # flattens and shards only tensors of the model's dtype; the default uint8 storage
            # crashes it or trains with a loss of 0 (accelerate #3983).
            bnb_4bit_quant_storage=dtype,
        )
        kwargs["device_map"] = {"": device if to_device else "cpu"}
    source = model_source(params.model.base)
    model = None
    for attention in attention_candidates(params.model.attn_implementation, device):
        try:
            model = AutoModelForCausalLM.from_pretrained(params.model.base, attn_implementation=attention, **source, **kwargs)
            break
        except OSError as err:
            raise _model_not_found(params.model.base, err, source) from err
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
