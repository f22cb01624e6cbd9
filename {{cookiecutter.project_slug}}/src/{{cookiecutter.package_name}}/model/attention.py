"""Attention over packed rows: each example attends only to itself, and no T x T mask is built.

`model.attn_implementation: varlen` is PyTorch's own variable-length FlashAttention
(`torch.nn.attention.varlen`, torch 2.10+, CUDA GPUs): flash speed for packed rows without
the flash-attn package, which many GPU images lack. The model loads with SDPA, which
evaluation and generation keep; `train` switches it to `varlen` (`use_varlen`).

The examples' boundaries in a batch (`cu_seq_lens`, `max_length`) are worked out on the CPU
when the batch is made (`sequence_boundaries`) and passed to the model, so that no layer has
to find them on the GPU: finding them there makes the CPU wait for the GPU in every layer.
transformers' flash_attention_2 takes the same arguments and is spared that search too.
"""

from __future__ import annotations

import functools
import inspect

import torch

from ..config import ConfigError

VARLEN = "varlen"
TAKES_SEQUENCE_BOUNDARIES = (VARLEN, "flash_attention_2")
# Paths that find packed examples without a T x T mask (flex builds a block mask).
UNMASKED = (VARLEN, "flash_attention_2", "flex_attention")
# Rows longer than this never get a T x T mask on a GPU: one row's 16-bit mask would be
# 128 MiB at 8k tokens, 12 GiB at 80k. `auto` switches to varlen for them (train and plan).
LONG_ROW_TOKENS = 8192


def planned(requested: str, max_length: int) -> str:
    """The attention the planner plans a GPU run with: what is asked for; for `auto`, SDPA
    (with its mask) up to LONG_ROW_TOKENS, varlen beyond (as `for_long_rows` makes training do)."""
    if requested != "auto":
        return requested
    return VARLEN if max_length > LONG_ROW_TOKENS else "sdpa"


def for_long_rows(model, requested: str, max_length: int, device: torch.device) -> bool:
    """Whether training must switch the loaded model to varlen: rows longer than
    LONG_ROW_TOKENS on a GPU with a masked attention. A ConfigError, with the reason, when the
    attention was set by name to one that builds the mask."""
    loaded = model.config._attn_implementation
    if device.type != "cuda" or max_length <= LONG_ROW_TOKENS or loaded in UNMASKED:
        return False
    if requested != "auto":
        gib = max_length**2 * 2 / 2**30
        raise ConfigError(
            f"model.attn_implementation={requested} builds a {max_length} x {max_length} mask for packed rows "
            f"({gib:.1f} GiB per row) at data.max_length={max_length}: use auto or varlen, flash_attention_2 or flex_attention"
        )
    return True


def sequence_boundaries(position_ids: torch.Tensor) -> dict:
    """Where each example starts in the flattened batch, from its position ids (which restart
    at 0 for every example, and for the padding at the end of a row)."""
    flat = position_ids.reshape(-1)
    starts = (flat == 0).nonzero().view(-1)
    cu_seq_lens = torch.cat([starts, torch.tensor([flat.numel()])]).to(torch.int32)
    longest = int(cu_seq_lens.diff().max())
    return {"cu_seq_lens_q": cu_seq_lens, "cu_seq_lens_k": cu_seq_lens, "max_length_q": longest, "max_length_k": longest}


def takes_sequence_boundaries(config) -> bool:
    return config._attn_implementation in TAKES_SEQUENCE_BOUNDARIES


def varlen_attn(*args, **kwargs):
    """torch.nn.attention.varlen.varlen_attn, imported when first used (torch 2.10+)."""
    from torch.nn.attention.varlen import varlen_attn as kernel

    return kernel(*args, **kwargs)


def use_varlen(model, device: torch.device, dtype: torch.dtype, why: str = "") -> None:
    """Switch a loaded model's attention to `varlen`, or say why it cannot run here (after `why`)."""
    try:
        _use_varlen(model, device, dtype)
    except ConfigError as err:
        raise ConfigError(f"{why}{err}") from None


def _use_varlen(model, device: torch.device, dtype: torch.dtype) -> None:
    from transformers import AttentionInterface

    if device.type != "cuda":
        raise ConfigError(f"model.attn_implementation={VARLEN}: PyTorch's variable-length FlashAttention runs on CUDA GPUs only")
    if dtype not in (torch.float16, torch.bfloat16):
        raise ConfigError(f"model.attn_implementation={VARLEN}: FlashAttention needs model.dtype bfloat16 or float16, not {dtype}")
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError as err:
        raise ConfigError(f"model.attn_implementation={VARLEN} needs torch 2.10 or newer (this is {torch.__version__})") from err
    if getattr(model.config, "attention_dropout", 0.0):
        raise ConfigError(f"model.attn_implementation={VARLEN} has no attention dropout, and this model's config asks for "
                          f"{model.config.attention_dropout}: use sdpa or flash_attention_2")
    AttentionInterface.register(VARLEN, varlen_attention_forward)
    model.set_attn_implementation(VARLEN)


@functools.cache  # asked in every layer's forward; the answer is fixed per torch version
def _grouped_query_support() -> bool:
    from torch.nn.attention.varlen import varlen_attn as kernel

    return "enable_gqa" in inspect.signature(kernel).parameters


def varlen_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                             cu_seq_lens_q=None, max_length_q=None, sliding_window=None, **kwargs):
    """transformers' attention-function signature: query / key / value are (batch, heads, tokens,
    head_dim); returns (batch, tokens, heads, head_dim) and no attention weights."""
    if cu_seq_lens_q is None or max_length_q is None:
        raise ValueError(f"{VARLEN} attention needs the batch's example boundaries: pass **sequence_boundaries(position_ids)")
    for unsupported in ("softcap", "s_aux"):  # Gemma 2's logit soft-capping, gpt-oss's attention sinks
        if kwargs.get(unsupported) is not None:
            raise ValueError(f"{VARLEN} attention has no {unsupported}, which this model uses: use sdpa or flash_attention_2")
    batch, heads, tokens, head_dim = query.shape
    kv_heads = key.shape[1]
    if query.dtype == torch.float32 and torch.is_autocast_enabled(query.device.type):  # FlashAttention takes 16-bit only
        dtype = torch.get_autocast_dtype(query.device.type)
        query, key, value = query.to(dtype), key.to(dtype), value.to(dtype)
    q = query.transpose(1, 2).reshape(batch * tokens, heads, head_dim)
    k = key.transpose(1, 2).reshape(batch * tokens, kv_heads, head_dim)
    v = value.transpose(1, 2).reshape(batch * tokens, kv_heads, head_dim)
    extra = {}
    if kv_heads != heads:  # grouped-query attention: older torch wants as many key / value heads as query heads
        if _grouped_query_support():
            extra["enable_gqa"] = True
        else:
            k, v = k.repeat_interleave(heads // kv_heads, dim=1), v.repeat_interleave(heads // kv_heads, dim=1)
    cu_seq_lens = cu_seq_lens_q.to(query.device, non_blocking=True)
    # Causal, each token sees its own example's earlier tokens only: window (-1, 0), or the
    # model's sliding window (itself and sliding_window - 1 tokens before it, as flash-attn counts).
    window = (sliding_window - 1 if sliding_window else -1, 0)
    out = varlen_attn(q, k, v, cu_seq_lens, cu_seq_lens, max_length_q, max_length_q, scale=scaling, window_size=window, **extra)
    return out.view(batch, tokens, heads, head_dim), None
