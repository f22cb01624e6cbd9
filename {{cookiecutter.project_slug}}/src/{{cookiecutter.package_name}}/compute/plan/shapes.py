"""The model's shape, what memory and FLOPs depend on: `config.json` of a local model
directory, else the local hub cache or the hub (`AutoConfig`), else a built-in table of
common models (works offline)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path

from ...config import ConfigError

LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # Llama-style


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
    max_positions: int = 0  # the longest sequence its positions allow (RoPE scaling included); 0: unknown
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


# Published config.json values (hidden, intermediate, layers, heads, kv heads, vocab, tied; max_position_embeddings).
KNOWN_SHAPES = {
    "qwen2.5-0.5b": _shape("Qwen2.5-0.5B", 896, 4864, 24, 14, 2, 151936, True, max_positions=32768),
    "qwen2.5-1.5b": _shape("Qwen2.5-1.5B", 1536, 8960, 28, 12, 2, 151936, True, max_positions=32768),
    "qwen2.5-3b": _shape("Qwen2.5-3B", 2048, 11008, 36, 16, 2, 151936, True, max_positions=32768),
    "qwen2.5-7b": _shape("Qwen2.5-7B", 3584, 18944, 28, 28, 4, 152064, False, max_positions=32768),
    "qwen2.5-14b": _shape("Qwen2.5-14B", 5120, 13824, 48, 40, 8, 152064, False, max_positions=32768),
    "qwen2.5-32b": _shape("Qwen2.5-32B", 5120, 27648, 64, 40, 8, 152064, False, max_positions=32768),
    "qwen2.5-72b": _shape("Qwen2.5-72B", 8192, 29568, 80, 64, 8, 152064, False, max_positions=32768),
    "llama-3.2-1b": _shape("Llama-3.2-1B", 2048, 8192, 16, 32, 8, 128256, True, max_positions=131072),
    "llama-3.2-3b": _shape("Llama-3.2-3B", 3072, 8192, 28, 24, 8, 128256, True, max_positions=131072),
    "llama-3.1-8b": _shape("Llama-3.1-8B", 4096, 14336, 32, 32, 8, 128256, False, max_positions=131072),
    "llama-3.1-70b": _shape("Llama-3.1-70B", 8192, 28672, 80, 64, 8, 128256, False, max_positions=131072),
    "mistral-7b": _shape("Mistral-7B-v0.3", 4096, 14336, 32, 32, 8, 32768, False, max_positions=32768),
    "gemma-2-2b": _shape("Gemma-2-2B", 2304, 9216, 26, 8, 4, 256000, True, head_dim=256, norms_per_layer=4, max_positions=8192),
    "gemma-2-9b": _shape("Gemma-2-9B", 3584, 14336, 42, 16, 8, 256000, True, head_dim=256, norms_per_layer=4, max_positions=8192),
    "phi-3.5-mini": _shape("Phi-3.5-mini", 3072, 8192, 32, 32, 32, 32064, False, fused_projections=True, max_positions=131072),
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
            max_positions=positions_allowed(config),
            source=source,
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"model.base={name!r}: {source} lacks a decoder shape ({err})") from None


def positions_allowed(config: dict) -> int:
    """The longest sequence a config's positions allow: max_position_embeddings, stretched by the
    RoPE scaling the config declares (`rope_parameters` in transformers 5, `rope_scaling` before).
    YaRN and its kin name the original length they scale (factor x original); linear and dynamic
    scaling scale max_position_embeddings itself. 0 when the config says nothing."""
    declared = int(config.get("max_position_embeddings") or 0)
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if not isinstance(rope, dict) or not declared:
        return declared
    kind = str(rope.get("rope_type") or rope.get("type") or "default")
    factor = float(rope.get("factor") or 1.0)
    if kind == "default" or factor <= 1.0:
        return declared
    original = int(rope.get("original_max_position_embeddings") or 0)
    if original:
        return max(declared, int(original * factor))
    return int(declared * factor) if kind in ("linear", "dynamic", "yarn") else declared


def load_model_shape(base: str) -> ModelShape:
    """Shape of `model.base`: local config.json, the local hub cache, the built-in table,
    and only then the hub (once it has answered a first request)."""
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
    from ...model.loading import ModelNotFound, looks_like_path, model_source

    table = f"plan's built-in table does not have it either ({', '.join(sorted({s.name for s in KNOWN_SHAPES.values()}))})"
    try:
        # A missing directory or an unreachable hub is said at once: AutoConfig would first
        # retry for half a minute.
        source = model_source(base)
    except ModelNotFound as err:
        raise ConfigError(str(err) if looks_like_path(base) else f"{err}; {table}") from None
    try:
        return shape_from_config(AutoConfig.from_pretrained(base, **source).to_dict(), base, "hub config.json")
    except Exception as err:  # gated, unknown, not a model
        what = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"model.base={base!r}: cannot read its config.json from the hub ({what}); {table}") from None
