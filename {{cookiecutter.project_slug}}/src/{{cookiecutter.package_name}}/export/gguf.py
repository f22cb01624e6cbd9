"""A GGUF file of the merged model for llama.cpp and Ollama, written with the `gguf` package.

No llama.cpp build: gguf's `GGUFWriter` writes the file, its `TensorNameMap` gives each
Hugging Face tensor its llama.cpp name, and its quantizers make F16, BF16 and Q8_0. K-quants
(Q4_K_M, ...) need llama.cpp's own `llama-quantize`, run on the F16 file (its command is printed).

The families differ in a few ways, one row each in FAMILIES:
  llama, mistral  llama.cpp's `llama` architecture rotates adjacent pairs of each attention
                  head (Meta's layout); Hugging Face checkpoints rotate the two halves
                  (rotate_half). The q and k projections are permuted back to Meta's order.
  qwen2, qwen3    `qwen2` / `qwen3` use the halves layout (NeoX rope): no permutation; qwen2 has
                  q/k/v biases, qwen3 per-head q/k norms and an explicit head size.
  gemma, gemma2   Gemma's RMSNorm multiplies by (1 + weight); llama.cpp's by weight: the file
                  stores weight + 1. Explicit head size; embeddings tied to the output; gemma2
                  adds norms after attention and MLP, logit soft-capping and a sliding window.
Rope: the default rope, and Llama 3's (its frequency factors go in a `rope_freqs` tensor,
computed by transformers' own rope code); other scalings stop the export with the reason.
1-D tensors (norms, biases) stay float32, as llama.cpp expects; Q8_0 needs rows that are a
multiple of 32 values, other tensors stay F16.
"""

from __future__ import annotations

import os
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from ..data import DataError
from . import gguf_vocab

TYPES = {
    "F16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "BF16": (gguf.GGMLQuantizationType.BF16, gguf.LlamaFileType.MOSTLY_BF16),
    "Q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}


class GGUFError(DataError):
    """The model cannot be written as GGUF (an unsupported family, rope or tokenizer): exit code 2."""


@dataclass(frozen=True)
class Family:
    arch: gguf.MODEL_ARCH
    permute_qk: bool = False  # Hugging Face's rotate_half layout -> Meta's interleaved one
    norm_plus_one: bool = False  # RMSNorm(x) * (1 + w) stored as w + 1


FAMILIES = {
    "llama": Family(gguf.MODEL_ARCH.LLAMA, permute_qk=True),
    "mistral": Family(gguf.MODEL_ARCH.LLAMA, permute_qk=True),
    "qwen2": Family(gguf.MODEL_ARCH.QWEN2),
    "qwen3": Family(gguf.MODEL_ARCH.QWEN3),
    "gemma": Family(gguf.MODEL_ARCH.GEMMA, norm_plus_one=True),
    "gemma2": Family(gguf.MODEL_ARCH.GEMMA2, norm_plus_one=True),
}


def family_of(config) -> Family:
    family = FAMILIES.get(config.model_type)
    if family is None:
        raise GGUFError(f"model type {config.model_type!r}: the GGUF export writes {', '.join(sorted(FAMILIES))}")
    return family


def arch_name(family: Family) -> str:
    return gguf.MODEL_ARCH_NAMES[family.arch]


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def permute_heads(weight: np.ndarray, heads: int) -> np.ndarray:
    """Rows of each head from [first halves..., second halves...] to interleaved pairs."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def rope_parameters(config) -> dict:
    params = dict(getattr(config, "rope_parameters", None) or {})
    params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    params.setdefault("rope_type", "default")
    return params


def llama3_rope_factors(config) -> np.ndarray:
    """Llama 3's per-frequency rope factors, from transformers' own rope code: default inverse
    frequencies divided by the scaled ones (llama.cpp divides by these factors)."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    dim = head_dim(config)
    base = rope_parameters(config)["rope_theta"]
    default = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    return (default / scaled.double().numpy()).astype(np.float32)


def add_hyperparameters(writer: gguf.GGUFWriter, config, family: Family, vocab_rows: int, file_type) -> None:
    rope = rope_parameters(config)
    if rope["rope_type"] not in ("default", "llama3"):
        raise GGUFError(f"rope scaling {rope['rope_type']!r}: the GGUF export writes the default rope and Llama 3's only")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    writer.add_key_length(head_dim(config))
    writer.add_value_length(head_dim(config))
    writer.add_rope_dimension_count(head_dim(config))
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(vocab_rows)
    writer.add_file_type(file_type)
    if family.arch == gguf.MODEL_ARCH.GEMMA2:
        if config.attn_logit_softcapping is not None:
            writer.add_attn_logit_softcapping(config.attn_logit_softcapping)
        if config.final_logit_softcapping is not None:
            writer.add_final_logit_softcapping(config.final_logit_softcapping)
        writer.add_sliding_window(config.sliding_window)


def gguf_tensors(model, family: Family):
    """(llama.cpp name, float32 array) for every weight the file holds, already transformed."""
    config = model.config
    names = gguf.get_tensor_name_map(family.arch, config.num_hidden_layers)
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    tied = getattr(config, "tie_word_embeddings", False)
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp reads the output from token_embd when output.weight is absent
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise GGUFError(f"{hf_name}: no llama.cpp tensor name for it in the {arch_name(family)} architecture")
        data = tensor.detach().float().cpu().numpy()
        if family.permute_qk and ".self_attn.q_proj." in hf_name:
            data = permute_heads(data, config.num_attention_heads)
        elif family.permute_qk and ".self_attn.k_proj." in hf_name:
            data = permute_heads(data, kv_heads)
        if family.norm_plus_one and hf_name.endswith("norm.weight"):
            data = data + 1.0
        yield name, data
    if rope_parameters(config)["rope_type"] == "llama3":
        yield gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", llama3_rope_factors(config)


def encode(data: np.ndarray, kind: str) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    """The tensor in the file's type: 1-D tensors stay F32; Q8_0 only where rows split into blocks of 32."""
    qtype = TYPES[kind][0]
    if data.ndim == 1:
        return data.astype(np.float32), gguf.GGMLQuantizationType.F32
    if qtype == gguf.GGMLQuantizationType.Q8_0 and data.shape[-1] % 32:
        qtype = gguf.GGMLQuantizationType.F16
    return gguf.quants.quantize(data, qtype), qtype


def write_gguf(model, tokenizer, path: Path, kind: str = "F16", name: str = "model") -> dict:
    """Write `model` (a merged transformers model) and its tokenizer to `path` as GGUF."""
    if kind not in TYPES:
        raise GGUFError(f"GGUF type {kind!r}: the export writes {', '.join(TYPES)} (K-quants: llama-quantize on the F16 file)")
    started = time.perf_counter()
    config = model.config
    family = family_of(config)
    vocab_rows = model.get_input_embeddings().weight.shape[0]
    writer = gguf.GGUFWriter(path, arch_name(family))
    writer.add_name(name)
    add_hyperparameters(writer, config, family, vocab_rows, TYPES[kind][1])
    written = gguf_vocab.add_tokenizer(writer, tokenizer, vocab_rows)
    for tensor_name, data in gguf_tensors(model, family):
        encoded, qtype = encode(data, kind)
        writer.add_tensor(tensor_name, encoded, raw_dtype=qtype)  # quantized bytes: gguf works out the shape
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"path": str(path), "type": kind, "arch": arch_name(family), "bytes": os.path.getsize(path),
            "seconds": round(time.perf_counter() - started, 2), "tokenizer": {k: v for k, v in written.items() if k != "chat_template"}}


def quantize_command(f16_path: Path, kind: str = "Q4_K_M") -> str:
    """llama.cpp's own quantizer for the K-quants, run on the F16 file."""
    out = Path(f16_path).with_name(Path(f16_path).name.replace("-F16.gguf", f"-{kind}.gguf"))
    return shlex.join(["llama-quantize", str(f16_path), str(out), kind])
