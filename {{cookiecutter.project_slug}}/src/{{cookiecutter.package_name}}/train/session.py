"""`setup`: everything one training process holds, built once before the first step.

    model + adapter  the base (16-bit or 4-bit), attention for packed rows, Liger kernels, LoRA / DoRA
    data             the packed rows `prepare` wrote
    fit              the micro-batch, checkpointed layers and offloading that fit (model/fit.py)
    optimizer        AdamW (fused on GPU) or 8-bit AdamW, and the learning-rate schedule
    accelerate       single device, DDP or FSDP; optional regional torch.compile
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import data
from ..config import ConfigError, multi_gpu_problem
from ..model import attention, flops, loading, loss
from ..model.fit import agree_on_micro_batch, choose_micro_batch
from . import host_fit, objectives, sharded_fit
from .init_adapter import load_init_adapter
from .objectives import reference
from .optim import learning_rate_schedule, make_optimizer


@dataclass
class Session:
    """What one training process holds: built by `setup`, advanced by `train_step`."""

    params: object
    accelerator: object
    model: torch.nn.Module
    base_config: object
    tokenizer: object
    optimizer: torch.optim.Optimizer
    scheduler: object
    rows: dict[str, torch.Tensor]
    micro_batch: int
    accumulation: int
    checkpointed_layers: int  # gradient checkpointing on this many decoder layers (0: none)
    offloaded: bool  # the checkpointed layers' inputs wait in host RAM (offload.py)
    loss: str  # chunked (loss.py) | fused (Liger) | transformers
    sharded: bool  # FSDP: every process holds a shard of the weights
    liger: bool
    compiled: bool  # torch.compile'd decoder layers
    dtype: torch.dtype
    token_flops: float
    trainable: int
    total: int
    summary: dict | None  # prepared data's summary.json (None for the benchmark's rows)
    objective: object = None  # what a step optimises (objectives/): chosen once, here
    frozen_bytes: int = 0  # the frozen base as this process holds it (under FSDP: its shard)

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def n_rows(self) -> int:
        return len(self.rows["input_ids"])

    @property
    def per_process(self) -> int:
        return self.params.train.global_batch // self.world


def check_distributed_type(accelerator, params) -> bool:
    """True under FSDP; a ConfigError for a launch config this method cannot use."""
    from accelerate.utils import DistributedType

    problem = multi_gpu_problem(accelerator.distributed_type.value, params.model.method)
    if problem:
        raise ConfigError(problem)
    return accelerator.distributed_type == DistributedType.FSDP


def cpu_choice(config, params, dtype: torch.dtype):
    """On a CPU: the micro-batch and checkpointing whose estimated step fits compute.host_ram_gib,
    or (auto) the RAM available now, with the model loaded (host_fit.py)."""
    ram = params.compute.host_ram_gib
    available = host_fit.available_ram() if ram == "auto" else ram * host_fit.GIB

    def choose(candidates: list[int], checkpointing):
        fit, need = host_fit.choose_cpu_fit(config, params, candidates, checkpointing, dtype.itemsize, available)
        print(f"on the CPU: {fit.micro_batch} rows per micro-batch, gradient checkpointing on {fit.checkpointed} layers; "
              f"a step needs about {need / host_fit.GIB:.2f} GiB of the {available / host_fit.GIB:.1f} GiB "
              f"{'free' if ram == 'auto' else 'of compute.host_ram_gib'}; the process held {host_fit.process_ram() / host_fit.GIB:.2f} GiB")
        return fit

    return choose


def sharded_choice(config, params, world: int, device: torch.device):
    """Under FSDP on a GPU: the planner's micro-batch and checkpointing for this GPU's memory (sharded_fit.py)."""
    properties = torch.cuda.get_device_properties(device)
    fit = sharded_fit.choose_sharded_fit(config, params, world, properties.name, properties.total_memory)
    print(f"FSDP over {world} GPUs: {fit.micro_batch} rows per micro-batch, gradient checkpointing on {fit.checkpointed} "
          f"layers{', layer inputs in host RAM' if fit.offloaded else ''} (the planner's choice for {properties.total_memory / 2**30:.1f} GiB)")
    return fit


def setup(params, base=None, tokenizer=None, rows=None, mean_context: float | None = None) -> Session:
    """Model + adapter, data, micro-batch, optimizer and schedule, ready for `train_step`.

    `base`, `tokenizer`, `rows` and `mean_context` default to params.model.base and the
    prepared data; the benchmark passes a randomly initialised model and synthetic rows.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    cfg = params.train
    device = loading.resolve_device(params.compute.device)
    dtype = loading.resolve_dtype(params.model.dtype, device)
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "no")
    accelerator = Accelerator(mixed_precision=precision, cpu=device.type == "cpu")
    if cfg.global_batch % accelerator.num_processes:
        raise ConfigError(f"train.global_batch={cfg.global_batch} is not a multiple of the {accelerator.num_processes} processes")
    sharded = check_distributed_type(accelerator, params)
    device = accelerator.device

    set_seed(cfg.seed)
    if tokenizer is None and base is None:
        tokenizer = loading.load_tokenizer(params.model.base)
    if base is None:
        # Under FSDP the weights stay on the CPU: accelerate moves each GPU its shard.
        base = loading.load_base_model(params, device, to_device=not sharded)
    if params.model.attn_implementation == attention.VARLEN:
        attention.use_varlen(base, device, dtype)
    elif attention.for_long_rows(base, params.model.attn_implementation, params.data.max_length, device):
        attention.use_varlen(base, device, dtype, why=f"data.max_length={params.data.max_length} is too long for a T x T mask "
                             f"and neither flash-attn nor flex attention is loaded, so {attention.VARLEN} is needed: ")
    liger = loading.apply_liger_kernels(base, cfg.liger_kernels, device)
    loss_kind = "fused" if liger else "chunked" if cfg.chunked_loss and loss.use_chunked_loss(base) else "transformers"
    n_matmul = flops.matmul_parameters(base)
    model = loading.add_adapter(base, params)
    init_weights = load_init_adapter(model, params.model.init_adapter, params) if params.model.init_adapter else None
    trainable, total = loading.count_parameters(model)
    summary = None
    if rows is None:
        rows = data.load_prepared(params.data.prepared_dir, "train")
        summary = json.loads((Path(params.data.prepared_dir) / "summary.json").read_text())
        mean_context = summary["train"]["mean_context"]
    per_process = cfg.global_batch // accelerator.num_processes
    fit = choose_micro_batch(model, rows, params, per_process, device, sharded, cpu_choice=cpu_choice(base.config, params, dtype),
                             sharded_choice=lambda: sharded_choice(base.config, params, accelerator.num_processes, device))
    if accelerator.num_processes > 1 and "auto" in (cfg.micro_batch, cfg.gradient_checkpointing):
        fit = agree_on_micro_batch(fit, model, device)
    micro_batch, checkpointed = fit.micro_batch, fit.checkpointed

    trainable_params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(cfg.optimizer, trainable_params, cfg.learning_rate, cfg.weight_decay, device)
    scheduler = learning_rate_schedule(optimizer, params)
    # FSDP replaces the parameters by sharded ones (and points the optimizer at them).
    model, optimizer = accelerator.prepare(model, optimizer)
    # After the micro-batch probe (which measures eager memory) and after FSDP's wrapping.
    if cfg.compile and not loading.compile_decoder_layers(accelerator.unwrap_model(model)):
        raise ConfigError(f"train.compile=true: no decoder layers to compile were found in model type {base.config.model_type!r}")
    config = base.config

    def reference_source():  # computed (or read back) before the first step, from the weights as they start
        key = reference.reference_key(params, summary or {}, config.to_dict(), getattr(tokenizer, "chat_template", None),
                                      reference.file_sha256(init_weights) if init_weights else None)
        return reference.load_or_compute(model, accelerator.unwrap_model(model), rows, params, key, micro_batch, device,
                                         attention.takes_sequence_boundaries(config), accelerator.is_main_process)

    objective = objectives.build(params, summary, accelerator.unwrap_model, reference_source)
    return Session(
        params=params, accelerator=accelerator, model=model, base_config=config, tokenizer=tokenizer,
        optimizer=optimizer, scheduler=scheduler, rows=rows, micro_batch=micro_batch,
        accumulation=per_process // micro_batch, checkpointed_layers=checkpointed, offloaded=fit.offloaded, loss=loss_kind, sharded=sharded, liger=liger, compiled=cfg.compile, dtype=dtype,
        token_flops=flops.flops_per_token(n_matmul, config.num_hidden_layers, config.hidden_size, mean_context or 0.0),
        trainable=trainable, total=total, summary=summary, objective=objective, frozen_bytes=local_frozen_bytes(model),
    )


def local_frozen_bytes(model) -> int:
    """Bytes of the frozen parameters this process holds: all of them, or its FSDP shards
    (a 4-bit base counts its packed codes, stored in the compute dtype)."""
    held = (p.to_local() if hasattr(p, "to_local") else p for p in model.parameters() if not p.requires_grad)
    return sum(t.numel() * t.element_size() for t in held)
