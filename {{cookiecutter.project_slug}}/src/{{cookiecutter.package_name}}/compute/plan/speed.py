"""How long the run takes: its tokens and FLOPs per token (`flops.flops_per_token`, the LoRA
convention; `prepare`'s summary.json for the mean context and the epochs), and hours on a GPU
at the table's expected MFU, plus the setup that is billed but trains nothing. The MFUs are
assumptions: replace them with measured ones (`tokens_per_second` and `mfu` in MLflow)."""

from __future__ import annotations

import json
from pathlib import Path

from ...config import Params
from ...model import flops, preference_cost
from .gpus import GPU
from .memory import TrainSetup
from .shapes import ModelShape

# Time that is billed but trains nothing: VM boot, `pip install`, dataset and model download.
SETUP_MINUTES = 8.0
DOWNLOAD_BYTES_PER_S = 200e6

# More passes over the training rows than this and a LoRA run mostly memorises them: the
# eval loss turns up while the training loss keeps falling. The plan warns (it does not refuse:
# a deliberate overfit, e.g. a smoke test, is allowed).
MANY_EPOCHS = 10

# Relative step time of the adapter variants against plain LoRA on the same GPU.
# QLoRA dequantizes every weight on every pass: "LoRA is about 66% faster than QLoRA"
# (https://cloud.google.com/vertex-ai/generative-ai/docs/model-garden/lora-qlora).
# DoRA: 5,850 vs 6,750 tokens/s for LoRA in PEFT's MetaMathQA benchmark (Llama-3.2-3B, L40S).
METHOD_TIME_FACTOR = {"lora": 1.0, "qlora": 1.66, "dora": 1.15}


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
        # A preference step's reference forward (none when precomputed or reference-free).
        "reference_flops_per_token": preference_cost.reference_flops_per_token(
            params.train.objective, params.train.preference_loss,
            params.train.precompute_reference or bool(params.model.init_adapter), forward),
        "dataset": None,
    }
    if train.get("rows"):
        epochs = rows / train["rows"]
        work["dataset"] = {
            "rows": train["rows"],
            "examples": train.get("examples"),
            "tokens": train.get("tokens"),
            "epochs": round(epochs, 2),
            "real_tokens_per_run": round(rows * train.get("tokens", 0) / train["rows"]),
            "many_epochs": epochs > MANY_EPOCHS,
            "many_epochs_above": MANY_EPOCHS,
            "steps_per_epoch": round(train["rows"] / params.train.global_batch, 2),
        }
    return work


def epochs_warning(work: dict) -> str | None:
    """The run passes over the prepared training rows more than MANY_EPOCHS times: the numbers
    and the levers, or None."""
    ds = work["dataset"]
    if not ds or not ds["many_epochs"]:
        return None
    examples = f" ({ds['examples']} examples)" if ds.get("examples") else ""
    one_epoch = max(1, round(ds["steps_per_epoch"]))
    return (
        f"{ds['epochs']} epochs: {work['steps']} steps x {work['global_batch']} rows = "
        f"{work['steps'] * work['global_batch']:,} rows over {ds['rows']:,} prepared training rows{examples}, "
        f"more than {ds['many_epochs_above']} passes, so the adapter will likely memorise the data; "
        f"lower train.max_steps ({one_epoch} steps is one epoch, {3 * one_epoch} is three) "
        f"or add data (data.path)"
    )


def hours_on(gpu: GPU, work: dict, setup: TrainSetup, shape: ModelShape) -> dict:
    """Estimated hours: setup (billed, trains nothing) plus compute at the GPU's expected MFU."""
    token_flops = work["flops_per_token"] + work["forward_flops_per_token"] * setup.checkpointing  # recomputed layers
    token_flops += work.get("reference_flops_per_token", 0.0)  # a preference step's reference forward
    seconds = work["tokens"] * token_flops / (gpu.peak_bf16_tflops * 1e12 * gpu.expected_mfu)
    seconds *= METHOD_TIME_FACTOR.get(setup.method, 1.0)
    setup_s = SETUP_MINUTES * 60 + shape.total_params * 2 / DOWNLOAD_BYTES_PER_S
    return {"compute_hours": seconds / 3600, "setup_hours": setup_s / 3600, "hours": (seconds + setup_s) / 3600}
