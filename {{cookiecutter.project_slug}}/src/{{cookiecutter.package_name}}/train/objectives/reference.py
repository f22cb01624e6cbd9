"""Reference log-probabilities computed once, stored beside the prepared data, reused.

With `train.precompute_reference: true`, or whenever the policy starts from
`model.init_adapter` (the reference is then that adapter, frozen, which after the first step
exists nowhere else), every training sequence's reference log-probability is computed before
the first step, in eval mode and without gradients: the base with the adapter switched off,
or the initial adapter as loaded.

They are stored in `<data.prepared_dir>.reference/<key>/` (beside the prepared folder, not in
it: DVC owns that one), where the key is a hash of what they depend on: the prepared data
(its summary.json), the base model (its name, config, method and dtype), the initial adapter
(its weights' sha256) and the chat template. A later run or a restart with the same key reads
them back; a restart after a preemption never recomputes them (the policy has moved on, so it
could not). A different key is a different folder: computed anew, never mistaken for another.
The folder is written whole or not at all (atomic.atomic_dir), its key.json checked on load.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from ...atomic import atomic_dir
from ...model.batch import to_device
from ...model.logps import sequence_logps, sequences_per_row

LOGPS = "logps.npy"
KEY = "key.json"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def reference_key(params, summary: dict, base_config: dict, chat_template: str | None, init_adapter_sha: str | None) -> dict:
    """What the reference log-probabilities depend on; its hash names their folder."""
    return {
        "data": hashlib.sha256(json.dumps(summary, sort_keys=True).encode()).hexdigest(),
        "base": params.model.base,
        "base_config": hashlib.sha256(json.dumps(base_config, sort_keys=True, default=str).encode()).hexdigest(),
        "method": params.model.method,
        "dtype": params.model.dtype,
        "init_adapter": init_adapter_sha,
        "template": hashlib.sha256((chat_template or "").encode()).hexdigest(),
    }


def folder_for(prepared_dir: str | Path, key: dict) -> Path:
    prepared = Path(prepared_dir)
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return prepared.with_name(prepared.name + ".reference") / name


def load(folder: Path, key: dict, rows: int) -> torch.Tensor | None:
    """The stored log-probabilities when their key and row count match; else None."""
    if not (folder / KEY).is_file() or not (folder / LOGPS).is_file():
        return None
    if json.loads((folder / KEY).read_text()) != key:
        return None
    logps = torch.from_numpy(np.load(folder / LOGPS, allow_pickle=False))
    return logps if len(logps) == rows else None


def compute(model, peft_model, rows: dict, micro_batch: int, device, boundaries: bool, adapter_off: bool) -> torch.Tensor:
    """Every row's per-sequence reference log-probabilities, [rows, sequences] fp32."""
    sequences = sequences_per_row(rows["position_ids"])
    out = torch.zeros(len(rows["input_ids"]), sequences)
    was_training = peft_model.training
    peft_model.eval()
    try:
        for first in range(0, len(out), micro_batch):
            index = list(range(first, min(len(out), first + micro_batch)))
            batch = to_device(rows, index, device, boundaries)
            with torch.no_grad(), peft_model.disable_adapter() if adapter_off else nullcontext():
                logps, _ = sequence_logps(model, batch, sequences)
            out[index] = logps.cpu()
    finally:
        peft_model.train(was_training)
    return out


def load_or_compute(model, peft_model, rows: dict, params, key: dict, micro_batch: int, device, boundaries: bool,
                    is_main: bool, log=print) -> torch.Tensor:
    """The stored reference log-probabilities for `key`, computed and stored first if missing."""
    folder = folder_for(params.data.prepared_dir, key)
    stored = load(folder, key, len(rows["input_ids"]))
    if stored is not None:
        log(f"reference log-probabilities: reusing {folder}")
        return stored
    adapter_off = key["init_adapter"] is None
    log(f"reference log-probabilities: computing them once for {len(rows['input_ids'])} rows "
        f"({'base, adapter off' if adapter_off else 'the initial adapter, frozen'}) -> {folder}")
    logps = compute(model, peft_model, rows, micro_batch, device, boundaries, adapter_off)
    if is_main:
        with atomic_dir(folder) as tmp:
            np.save(tmp / LOGPS, logps.numpy())
            (tmp / KEY).write_text(json.dumps(key, indent=2, sort_keys=True) + "\n")
    return logps
