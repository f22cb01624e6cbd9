"""Checkpoints that survive any interruption: atomic, verified, resumable.

Layout (one folder per run configuration, so a run with other params starts afresh):

    <checkpoint.dir>/<run key>/step-00000120/   adapter.safetensors  trainable weights
                                                optimizer.pt         AdamW state
                                                scheduler.pt         learning-rate schedule
                                                rng.pt               python, numpy, torch CPU + CUDA
                                                state.json           step, tokens, MLflow run id, params
                                                manifest.json        sizes + sha256 of the above, LAST
    <checkpoint.dir>/<run key>/segments.json    cost of every segment (restart) so far
    <checkpoint.dir>/<run key>/COMPLETE         the run finished; `--resume auto` starts anew

Weights and optimizer state are stored whole (unsharded), so a checkpoint made by one
process, by DDP or by FSDP over N GPUs can be resumed by any of them.

A checkpoint is written under a temporary name, every file flushed to disk, the manifest
written last, then renamed into place: a directory named `step-*` with a manifest that
verifies is complete. Files are written whole (no appends or random writes), which a bucket
mounted by SkyPilot (MOUNT_CACHED) needs. Such a bucket uploads asynchronously, so after a
hard preemption the newest checkpoint may be partial: `latest_valid` verifies each one,
newest first, reports what it skips and falls back to the one before.

Disk space: `warn_if_short_of_space` says, with the numbers, when checkpoint.dir cannot hold
checkpoint.keep + 1 checkpoints (checked before training and after every checkpoint). A
write that fails anyway raises `atomic.WriteFailed` (exit code 74: not retried) naming the
folder, the free and the needed space; the checkpoints before it are untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import atomic

MANIFEST = "manifest.json"
STATE = "state.json"
COMPLETE = "COMPLETE"
SEGMENTS = "segments.json"


class IncompatibleCheckpoint(ValueError):
    """The checkpoint was made with params that change the result; resuming would mix runs."""


# Params whose change makes a checkpoint meaningless to continue from. Paths, logging,
# micro-batch (the global batch is what counts) and the checkpoint cadence may change.
COMPATIBILITY_KEYS = (
    "model.base", "model.method", "lora.r", "lora.alpha", "lora.dropout", "lora.target_modules",
    "data.path", "data.format", "data.train_on", "data.max_length", "data.val_fraction", "data.seed",
    "train.max_steps", "train.global_batch", "train.learning_rate", "train.lr_schedule", "train.warmup_steps",
    "train.weight_decay", "train.max_grad_norm", "train.optimizer", "train.seed",
    "train.objective", "train.preference_loss", "train.beta", "train.simpo_gamma", "model.init_adapter",
    "train.desirable_weight", "train.undesirable_weight",
)


def compatibility(params, data_fingerprint: str) -> dict:
    flat = params.flat()
    return {**{key: flat[key] for key in COMPATIBILITY_KEYS}, "prepared_data": data_fingerprint}


def run_key(compat: dict) -> str:
    """Folder name for one configuration: same params -> same folder -> resumable."""
    return hashlib.sha256(json.dumps(compat, sort_keys=True, default=str).encode()).hexdigest()[:12]


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


# --------------------------------------------------------------------------- writing


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    with path.open("rb") as f:
        os.fsync(f.fileno())


def rng_state() -> dict:
    """Every random stream the run draws from, as tensors and plain values (so that
    `torch.load(weights_only=True)` can read it back: no pickled code)."""
    version, keys, position, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "position": position, "has_gauss": has_gauss, "gauss": gauss},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy = state["numpy"]
    np.random.set_state(("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["position"], numpy["has_gauss"], numpy["gauss"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model) -> dict[str, torch.Tensor]:
    """The trainable (adapter) weights, whole and on the CPU, keyed by parameter name.

    Every process must call it: under FSDP each holds a shard, gathered here. With several
    processes only the main one receives the tensors (the others get an empty dict).
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    names = {name for name, p in model.named_parameters() if p.requires_grad}
    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
    return {k: v for k, v in get_model_state_dict(model, options=options).items() if k in names}


def optimizer_state(model, optimizer) -> dict:
    """The optimizer's state, whole and keyed by parameter name (collective, like trainable_state)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_optimizer_state_dict(model, _unwrap_optimizer(optimizer), options=options)


def _unwrap_optimizer(optimizer):
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps it


def _nbytes(value) -> int:
    """Bytes of the tensors in a (nested) state dict."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    return 0


SMALL_FILES = 64 * 1024  # scheduler, RNG, state, manifest: a generous allowance


def save(run_dir: Path, step: int, weights: dict, optimizer_state: dict, scheduler, state: dict, keep: int,
         log=print) -> Path:
    """Write checkpoint `step` atomically into run_dir; keep the newest `keep` ones.

    `weights` and `optimizer_state` come from `trainable_state` / `optimizer_state`. A write
    that fails (full disk, quota) raises WriteFailed with the free and needed space; the
    checkpoints written before are kept as they were."""
    from safetensors.torch import save_file

    final = run_dir / step_dir_name(step)
    needed = _nbytes(weights) + _nbytes(optimizer_state) + SMALL_FILES
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = run_dir / f".tmp-{step_dir_name(step)}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            save_file({name: w.contiguous() for name, w in weights.items()}, tmp / "adapter.safetensors")
            _fsync(tmp / "adapter.safetensors")
            # Through os.write: a full disk surfaces as the OSError it is.
            atomic.torch_save(optimizer_state, tmp / "optimizer.pt")
            atomic.torch_save(scheduler.state_dict(), tmp / "scheduler.pt")
            atomic.torch_save(rng_state(), tmp / "rng.pt")
            atomic.write_bytes(tmp / STATE, json.dumps({**state, "step": step}, indent=2, default=str).encode())
            files = sorted(p for p in tmp.iterdir())
            manifest = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)} for p in files}
            atomic.write_bytes(tmp / MANIFEST, json.dumps(manifest, indent=2).encode())  # last: marks it complete
            if final.exists():  # a re-done step after a crash: replace the old copy
                shutil.rmtree(final)
            tmp.rename(final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except Exception as err:
        if not atomic.is_write_error(err):
            raise
        raise atomic.write_failed(final, err, needed, f"checkpoint {final.name}") from err
    prune(run_dir, keep)
    warn_if_short_of_space(run_dir, keep, atomic.size_of(final), log)
    return final


def estimate_size(model, optimizer_name: str) -> int:
    """Bytes of one checkpoint before the first is written: the trainable weights plus the
    optimizer's state (AdamW: two moments per weight in float32; 8-bit AdamW: two bytes)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    weights = sum(p.numel() * p.element_size() for p in trainable)
    state_bytes = 8 if optimizer_name == "adamw" else 2
    return weights + sum(p.numel() for p in trainable) * state_bytes + SMALL_FILES


def space_problem(run_dir: Path, keep: int, size: int) -> str | None:
    """Why `run_dir` cannot hold keep + 1 checkpoints of `size` bytes (the newest `keep`
    plus the one being written), or None when it can."""
    present = len(list(run_dir.glob("step-*"))) if run_dir.is_dir() else 0
    missing = max(1, keep + 1 - present)
    free = atomic.free_bytes(run_dir)
    if free is None or free >= missing * size:
        return None
    return (
        f"checkpoint.dir {atomic.existing_folder(run_dir)} has {atomic.human_bytes(free)} free; "
        f"checkpoint.keep={keep} + 1 checkpoints of about {atomic.human_bytes(size)} need "
        f"{atomic.human_bytes((keep + 1) * size)} ({present} already there, {atomic.human_bytes(missing * size)} more): "
        "a checkpoint will fail to write; free some space, lower checkpoint.keep or set another checkpoint.dir"
    )


def warn_if_short_of_space(run_dir: Path, keep: int, size: int, log=print) -> bool:
    """Warn (with the numbers) when the next checkpoint will not fit; True if it will."""
    problem = space_problem(run_dir, keep, size)
    if problem:
        log(f"warning: {problem}")
    return problem is None


def size_for_next(run_dir: Path, estimate: int) -> int:
    """This run's checkpoint size: the newest one's when there is one, else the estimate."""
    newest = sorted(run_dir.glob("step-*"))[-1:] if run_dir.is_dir() else []
    return atomic.size_of(newest[0]) if newest else estimate


def prune(run_dir: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints, and leftovers of interrupted writes."""
    for leftover in run_dir.glob(".tmp-step-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    for old in sorted(run_dir.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def write_json_atomic(path: Path, value) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    data = json.dumps(value, indent=2).encode()
    try:
        atomic.write_bytes(tmp, data, sync=False)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise atomic.write_failed(path, err, len(data)) from err


# --------------------------------------------------------------------------- reading


def verify(checkpoint: Path) -> str | None:
    """None if every file in the manifest is there with its size and checksum, else why not."""
    manifest_path = checkpoint / MANIFEST
    if not manifest_path.is_file():
        return "no manifest (the write was interrupted)"
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError:
        return "unreadable manifest"
    for name, expected in manifest.items():
        path = checkpoint / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected["size"]:
            return f"{name} has {path.stat().st_size} bytes, expected {expected['size']}"
        if _sha256(path) != expected["sha256"]:
            return f"{name} does not match its checksum"
    return None


def latest_valid(run_dir: Path, log=print) -> Path | None:
    """The newest checkpoint that verifies; partial or corrupted ones are reported and skipped."""
    for checkpoint in sorted(run_dir.glob("step-*"), reverse=True):
        problem = verify(checkpoint)
        if problem is None:
            return checkpoint
        log(f"skipping checkpoint {checkpoint}: {problem}")
    return None


def resume_point(run_dir: Path, resume: str, log=print) -> Path | None:
    """Which checkpoint to continue from: `auto` (newest valid), `never`, or a path."""
    if resume not in ("auto", "never"):
        checkpoint = Path(resume)
        problem = verify(checkpoint) if checkpoint.is_dir() else "not a checkpoint directory"
        if problem:
            raise IncompatibleCheckpoint(f"--resume {checkpoint}: {problem}")
        return checkpoint
    if resume == "never" or (run_dir / COMPLETE).exists():
        # A fresh run of this configuration: old checkpoints must not be picked up later.
        # MLflow updates the previous run could not send yet are kept aside, not lost.
        spool = run_dir / "mlflow-spool"
        if any(spool.glob("[0-9]*.json")):
            kept = run_dir.parent / f"unsent-{run_dir.name}-{uuid.uuid4().hex[:6]}"
            kept.mkdir(parents=True)
            spool.rename(kept / "mlflow-spool")
            log(f"MLflow updates of an earlier run were never sent; kept in {kept} (send them with `tracking-sync`)")
        shutil.rmtree(run_dir, ignore_errors=True)
        return None
    return latest_valid(run_dir, log) if run_dir.is_dir() else None


@dataclass
class Restored:
    step: int
    state: dict
    path: Path


def load(checkpoint: Path, model, optimizer, scheduler, compat: dict) -> Restored:
    """Restore weights, optimizer, schedule and RNG from a verified checkpoint (every process)."""
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    state = json.loads((checkpoint / STATE).read_text())
    changed = {k: (state["compatibility"].get(k), v) for k, v in compat.items() if state["compatibility"].get(k) != v}
    if changed:
        detail = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
        raise IncompatibleCheckpoint(
            f"{checkpoint} was made with other params ({detail}); use --resume never or another checkpoint.dir"
        )
    weights = load_file(checkpoint / "adapter.safetensors")
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    if weights.keys() != trainable:
        raise IncompatibleCheckpoint(f"{checkpoint}: its adapter weights do not match this model's")
    # Every process loads the whole state; under FSDP each keeps its own shard of it.
    whole = StateDictOptions(full_state_dict=True, strict=False)
    set_model_state_dict(model, weights, options=whole)
    optimizer_whole = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    set_optimizer_state_dict(model, _unwrap_optimizer(optimizer), optimizer_whole, options=whole)
    scheduler.load_state_dict(torch.load(checkpoint / "scheduler.pt", weights_only=True))
    set_rng_state(torch.load(checkpoint / "rng.pt", weights_only=True))
    return Restored(step=state["step"], state=state, path=checkpoint)
