"""Merge the trained adapter into its base model: a standard Hugging Face model directory.

The base is loaded in 16-bit (never 4-bit, even after QLoRA: merging into quantized weights
would lose precision), the LoRA update is added to its weights, and the result is saved
atomically with the tokenizer, ready for `from_pretrained`, vLLM or TGI.
"""

from __future__ import annotations

from pathlib import Path

from .atomic import atomic_dir
from .model import loading


def merge(params, out_dir: str | Path, dtype: str = "bfloat16", log=print) -> Path:
    from peft import PeftModel

    adapter_dir = Path(params.train.output_dir) / "adapter"
    if not (adapter_dir / "adapter_config.json").is_file():
        from .data import DataError

        raise DataError(f"{adapter_dir}: no trained adapter; run `train` first")
    params = params.model_copy(deep=True)
    params.model.dtype = dtype
    device = loading.resolve_device(params.compute.device)
    base = loading.load_base_model(params, device, quantize=False)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.config.use_cache = True  # back to the inference default
    with atomic_dir(out_dir) as tmp:
        merged.save_pretrained(tmp)
        loading.load_tokenizer(str(adapter_dir)).save_pretrained(tmp)
    log(f"merged {params.model.base} + {adapter_dir} ({dtype}) -> {out_dir}")
    return Path(out_dir)
