"""The adapter merged into its base model: a standard Hugging Face model directory.

The base is loaded in 16-bit (never 4-bit, even after QLoRA: merging into quantized weights
would lose precision), the LoRA update is added to its weights, and the result is saved
atomically with the tokenizer, ready for `from_pretrained`, vLLM or TGI.

A QLoRA adapter was trained against the 4-bit base, not the 16-bit one it is merged into, so
the merged model is not exactly the model that was trained (peft#2321). `loss_comparison`
measures by how much: the held-out loss of the merged model next to the adapter's, as trained.
"""

from __future__ import annotations

from pathlib import Path

from ..atomic import atomic_dir
from ..data import DataError
from ..model import loading


def adapter_dir_of(params) -> Path:
    adapter_dir = Path(params.train.output_dir) / "adapter"
    if not (adapter_dir / "adapter_config.json").is_file():
        raise DataError(f"{adapter_dir}: no trained adapter; run `train` first")
    return adapter_dir


def merged_model(params, dtype: str):
    """(base + adapter merged in memory at `dtype`, the tokenizer saved with the adapter)."""
    from peft import PeftModel

    adapter_dir = adapter_dir_of(params)
    params = params.model_copy(deep=True)
    params.model.dtype = dtype
    device = loading.resolve_device(params.compute.device)
    base = loading.load_base_model(params, device, quantize=False)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.config.use_cache = True  # back to the inference default
    return merged.eval(), loading.load_tokenizer(str(adapter_dir))


def merge(params, out_dir: str | Path, dtype: str = "bfloat16", log=print) -> Path:
    merged, tokenizer = merged_model(params, dtype)
    with atomic_dir(out_dir) as tmp:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    log(f"merged {params.model.base} + {adapter_dir_of(params)} ({dtype}) -> {out_dir}")
    return Path(out_dir)


def loss_comparison(params, merged_dir: Path, max_rows: int | None = None) -> dict:
    """Held-out loss of the adapter (loaded as trained: 4-bit base for QLoRA) and of the merged
    model on the same validation rows, and the change in percent."""
    import torch

    from ..data import load_prepared
    from ..evaluate.answers import validation_loss

    rows = load_prepared(params.data.prepared_dir, "val")
    if max_rows is not None:
        rows = {key: value[:max_rows] for key, value in rows.items()}
    device = loading.resolve_device(params.compute.device)
    micro_batch = params.eval.batch_size
    adapter = loading.load_trained(params, adapter_dir_of(params), device).eval()
    adapter_loss, tokens = validation_loss(adapter, rows, micro_batch, device)
    del adapter
    on_merged = params.model_copy(deep=True)
    on_merged.model.base = str(merged_dir)
    merged = loading.load_base_model(on_merged, device, quantize=False).eval()
    with torch.no_grad():
        merged_loss, _ = validation_loss(merged, rows, micro_batch, device)
    return {
        "adapter_eval_loss": adapter_loss,
        "merged_eval_loss": merged_loss,
        "merged_loss_change_pct": 100 * (merged_loss - adapter_loss) / adapter_loss,
        "eval_tokens": tokens,
    }
