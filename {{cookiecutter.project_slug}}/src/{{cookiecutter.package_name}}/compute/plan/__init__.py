"""`plan`: will the run fit, how long will it take, what will it cost, and on which machine.

Everything here is an ESTIMATE, made before any GPU time is spent:
- the model's shape: `config.json` of a local model directory, else the hub
  (`AutoConfig`), else a built-in table of common models (works offline);
- peak GPU memory, broken down: base weights (16-bit, or 4-bit NF4 with double
  quantization for QLoRA), LoRA parameters + gradients + AdamW states, activations kept
  for backward (all layers, or one checkpoint per layer with gradient checkpointing, or
  those checkpoints in host RAM with offloading), the loss (all logits, or one chunk's),
  CUDA context and allocator overhead; and the longest row that fits each GPU;
- FLOPs per token (`flops.flops_per_token`, the LoRA convention) and hours on each GPU of a
  table (memory, dense bf16 peak, an expected MFU);
- every offer is a machine (GPU type, GPUs per node, nodes, vCPUs, host RAM, interconnect):
  one GPU, DDP over its GPUs when the model fits one, FSDP sharding the frozen base when it
  does not, several nodes when one is not enough; memory per GPU, the host RAM the machine
  must have, hours with the communication over its interconnect (machines.COMMUNICATION);
- dollars per run for every (machine, cloud, spot / on-demand) offer (`prices.py`), with the
  expected cost of spot preemptions. Machines that do not fit (GPU memory with a safety
  margin, or host RAM) are excluded with the reason; the rest are ranked by dollars per RUN
  (a machine that is 3x faster at 2x the hourly price is the cheaper one), the Pareto front
  of dollars against hours marked; `--deadline HOURS` (budget.deadline_hours) picks the
  cheapest that finishes in time, or says by how much none does;
- a warning (table and `warnings` in JSON) when the run passes over the prepared training
  rows more than MANY_EPOCHS times;
- `--write`: the best machines into sky/train.yaml (accelerators, num_nodes, ACCELERATE_CONFIG);
- `--plot PATH.png`: dollars per run against hours, one point per offer, the cheapest and
  the fastest starred;
- `--owned GPU`: your own card (energy, optional amortisation) against the cheapest spot
  offer, and the break-even point for buying it, in runs per month;
- `check_budget`: refuses a plan whose cheapest run exceeds `budget.max_run_usd`, or that no
  offer finishes by the deadline.

The memory model mirrors what this project's trainer keeps alive (Hugging Face
transformers + PEFT: fp32 adapters run under autocast, RMSNorm upcast to fp32, SDPA
attention with a mask for packed rows up to attention.LONG_ROW_TOKENS and varlen beyond,
the chunked loss of loss.py, host offloading of offload.py). tests/test_plan.py checks it against
published peak-memory measurements; the speed numbers rest on an assumed MFU per GPU and
should be replaced by measured ones (`tokens_per_second` and `mfu` in MLflow).

One job per module, each using only those above it:
  shapes    the model's shape: local config.json, the hub cache, the built-in table, the hub
  memory    peak GPU memory of one training step, by component
  gpus      the GPU table and the memory usable on each
  machines  an offer as a machine (GPUs, nodes, host RAM, interconnect); the communication table
  fit       micro-batch, checkpointing and offloading on a GPU (alone, DDP, FSDP); the longest row
  speed     tokens and FLOPs of the run (and too many epochs); hours on a GPU
  strategy  one GPU, DDP, FSDP on a machine: memory per GPU, host RAM, hours with communication
  spot      the expected cost of a spot run with preemptions and the on-demand fallback
  offers    every offer planned and priced, ranked by dollars per run, the Pareto front, exclusions
  render    the plan for people: the table, the deadline trade, the own-GPU comparison
  estimate  the whole plan (`make_plan`, `--deadline`), the estimate for the GPU a run got, `check_budget`
  owned     `--owned GPU`: your own card against the cheapest spot offer, the break-even
  plot      `--plot PATH.png`: dollars per run against hours, one point per offer
  sky_yaml  `--write`: accelerators, num_nodes and ACCELERATE_CONFIG of sky/train.yaml
  cli       the `plan` subcommand (`register`, `run`)

Imports: model (the shape facts: FLOPs, attention, loss chunks, offload tile), config, prices.
Never train: a plan is made before any training code runs.
"""

from .cli import register, run
from .estimate import BudgetExceeded, DeadlineMissed, check_budget, estimate_for_gpu, gpu_estimate, make_plan
from .fit import base_setup, choose_fit, longest_row
from .gpus import GPU, GPUS, SAFETY_MARGIN, usable_gib
from .machines import COMMUNICATION, MAX_NODES, Machine, collective_seconds, communication_table, machine_of
from .memory import (
    ALLOCATOR_OVERHEAD,
    CUDA_CONTEXT_GIB,
    GIB,
    NF4_BYTES_PER_PARAM,
    UNMASKED_ATTENTION,
    MemoryEstimate,
    TrainSetup,
    adapter_bytes,
    checkpointed_layers,
    estimate_memory,
    layer_activation_bytes,
    logits_and_loss_bytes,
    logits_bytes_per_token,
    loss_chunk_tokens,
    mlp_activation_bytes,
    per_rank_memory,
    targeted_modules,
    weight_bytes,
)
from .offers import plan_offers
from .owned import DEFAULT_PAYBACK_MONTHS, DEFAULT_USD_PER_KWH, compare_owned
from .plot import check_plot_path, plot_offers
from .render import _usd as _usd  # tests/test_plan.py formats dollars as the messages do
from .render import checkpointing_label, format_plan, render_owned, render_table
from .shapes import KNOWN_SHAPES, LINEAR_NAMES, ModelShape, load_model_shape, positions_allowed, shape_from_config, table_key
from .sky_yaml import ACCELERATORS_LINE, WRITE_MARKER, launch_candidates, write_sky_candidates
from .speed import (
    DOWNLOAD_BYTES_PER_S,
    MANY_EPOCHS,
    METHOD_TIME_FACTOR,
    SETUP_MINUTES,
    dataset_summary,
    epochs_warning,
    hours_on,
    run_workload,
)
from .spot import PREEMPTIONS_PER_NODE_HOUR, expected_spot_run
from .strategy import HOST_PER_PROCESS_GIB, HOST_RESERVED_GIB, HOST_USABLE, host_budget, plan_machine

__all__ = [
    "COMMUNICATION", "DeadlineMissed", "HOST_PER_PROCESS_GIB", "HOST_RESERVED_GIB", "HOST_USABLE", "MAX_NODES", "Machine",
    "PREEMPTIONS_PER_NODE_HOUR", "collective_seconds", "communication_table", "expected_spot_run", "host_budget",
    "launch_candidates", "machine_of", "per_rank_memory", "plan_machine", "plan_offers",
    "ACCELERATORS_LINE", "ALLOCATOR_OVERHEAD", "CUDA_CONTEXT_GIB", "DEFAULT_PAYBACK_MONTHS", "DEFAULT_USD_PER_KWH",
    "DOWNLOAD_BYTES_PER_S", "GIB", "GPU", "GPUS", "KNOWN_SHAPES", "LINEAR_NAMES", "MANY_EPOCHS", "METHOD_TIME_FACTOR",
    "NF4_BYTES_PER_PARAM", "SAFETY_MARGIN", "SETUP_MINUTES", "UNMASKED_ATTENTION", "WRITE_MARKER", "BudgetExceeded",
    "MemoryEstimate", "ModelShape", "TrainSetup", "adapter_bytes", "base_setup", "check_budget", "checkpointed_layers",
    "check_plot_path", "checkpointing_label", "choose_fit", "compare_owned", "dataset_summary", "epochs_warning",
    "estimate_for_gpu", "estimate_memory",
    "format_plan", "gpu_estimate", "hours_on", "layer_activation_bytes", "load_model_shape", "positions_allowed", "logits_and_loss_bytes",
    "logits_bytes_per_token", "longest_row", "loss_chunk_tokens", "make_plan", "mlp_activation_bytes", "plot_offers",
    "register", "render_owned", "render_table", "run", "run_workload", "shape_from_config", "table_key",
    "targeted_modules", "usable_gib", "weight_bytes", "write_sky_candidates",
]
