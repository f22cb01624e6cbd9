"""Typed training parameters, read from params.yaml with `--set key=value` overrides.

params.yaml is the single source of truth: DVC tracks it, MLflow logs it flattened and the
pull-request loop diffs it. Every key is declared below; an unknown key or a bad value stops
with a message naming the key (and its line in params.yaml), before any GPU time is spent.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """Invalid parameters. The CLI prints the message and exits with code 2."""


def yaml_error(path: str | Path, err: yaml.YAMLError) -> str:
    """`file:line: not valid YAML (what)`, for every YAML file the project reads."""
    mark = getattr(err, "problem_mark", None)
    where = f"{path}:{mark.line + 1}" if mark else str(path)
    return f"{where}: not valid YAML ({getattr(err, 'problem', err)})"


def multi_gpu_problem(distributed_type: str, method: str) -> str | None:
    """Why an accelerate launch config (its distributed_type) cannot train this method, or None.

    DeepSpeed ZeRO-1/2 shard only what is trained (the adapter: a few hundred MB at most),
    so for LoRA they save next to nothing over DDP; FSDP shards the frozen base instead, 16-bit
    or 4-bit (QLoRA: its packed codes are stored in the compute dtype, model/loading.py)."""
    if distributed_type == "DEEPSPEED":
        return (
            "DeepSpeed is not supported: for LoRA use configs/accelerate/ddp.yaml (the base fits on one GPU) "
            "or configs/accelerate/fsdp.yaml (it does not)"
        )
    return None


class _Section(BaseModel):
    # Unknown keys are errors, not silently ignored typos.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelParams(_Section):
    base: str = Field(min_length=1)  # hub id (owner/name) or a local model directory
    method: Literal["lora", "qlora", "dora"] = "qlora"
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    attn_implementation: Literal["auto", "flash_attention_2", "varlen", "flex_attention", "sdpa", "eager"] = "auto"
    # An adapter to start from (a folder with adapter_model.safetensors, e.g. an SFT run's outputs/adapter,
    # or runs:/<run id> of an MLflow run that logged its adapter):
    # the policy starts from it and, for a preference objective, it is the frozen reference.
    init_adapter: str | None = None


class LoraParams(_Section):
    r: int = Field(16, gt=0)
    alpha: float = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: str | list[str] = "all-linear"


class DataParams(_Section):
    path: str = "data/raw/support.jsonl"
    # auto = detected from each file's first record; see data/shapes.py for each shape
    format: Literal["auto", "chat", "sharegpt", "instruction", "completion", "text", "preference", "implicit_preference", "kto"] = "auto"
    train_on: Literal["assistant", "all"] = "assistant"  # which tokens carry the loss
    max_length: int = Field(1024, ge=16)
    val_fraction: float = Field(0.1, gt=0, lt=1)
    seed: int = 0
    prepared_dir: str = "data/prepared"
    num_proc: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"  # tokenizing processes; auto = this machine's cores


class TrainParams(_Section):
    max_steps: int = Field(200, gt=0)
    micro_batch: int | Literal["auto"] = 4  # auto: the largest that fits on the GPU
    global_batch: int = Field(16, gt=0)  # sequences per optimizer step, across all GPUs
    learning_rate: float = Field(2e-4, gt=0)
    lr_schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = Field(10, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    optimizer: Literal["adamw", "adamw_8bit", "paged_adamw_8bit"] = "adamw"
    gradient_checkpointing: bool | Literal["auto"] = "auto"  # auto: only when needed to fit
    liger_kernels: bool | Literal["auto"] = "auto"  # auto: when installed, on a GPU
    chunked_loss: bool = True  # the loss over chunks of tokens, never all the logits (loss.py)
    offload_activations: bool | Literal["auto"] = "auto"  # checkpointed layers' inputs in host RAM; auto: when nothing else fits
    compile: bool = False  # torch.compile each decoder layer (compiles once, at the start)
    seed: int = 42
    log_every_steps: int = Field(10, gt=0)
    output_dir: str = "outputs"
    # What a step optimises (train/objectives/): sft = next-token loss on the answers; dpo = a pair loss
    # on chosen/rejected answers (preference data), preference_loss says which; kto = KTO's loss on
    # unpaired answers labelled desirable/undesirable (kto data), beta its KL strength.
    objective: Literal["sft", "dpo", "kto"] = "sft"
    preference_loss: Literal["sigmoid", "ipo", "simpo", "orpo"] = "sigmoid"
    beta: float = Field(0.1, gt=0)  # sigmoid/ipo: the KL strength; simpo: the reward scale; orpo: the odds-ratio weight
    simpo_gamma: float = Field(0.5, ge=0)  # simpo: the target reward margin
    desirable_weight: float = Field(1.0, gt=0)  # kto: weight of a desirable answer's loss
    undesirable_weight: float = Field(1.0, gt=0)  # kto: weight of an undesirable answer's loss
    precompute_reference: bool = False  # reference log-probs computed once and stored (always so with model.init_adapter)

    @model_validator(mode="after")
    def _global_batch_divides(self) -> TrainParams:
        if self.offload_activations is True and self.gradient_checkpointing is False:
            raise ValueError("offload_activations=true needs gradient_checkpointing (true or auto): only checkpointed layers offload")
        if self.micro_batch == "auto":
            return self
        if self.micro_batch <= 0:
            raise ValueError("micro_batch must be a positive number or auto")
        if self.global_batch % self.micro_batch:
            raise ValueError(
                f"global_batch ({self.global_batch}) must be a multiple of micro_batch ({self.micro_batch})"
            )
        return self


class JudgeParams(_Section):
    enabled: bool = False  # endpoint, model and key: JUDGE_BASE_URL, JUDGE_MODEL, JUDGE_API_KEY
    model: str | None = None  # JUDGE_MODEL in the environment wins
    usd_per_million_input_tokens: float | None = Field(None, ge=0)  # to count the judge's cost
    usd_per_million_output_tokens: float | None = Field(None, ge=0)
    max_examples: int = Field(50, gt=0)  # each costs two calls (both orders)


class EvalParams(_Section):
    generations: int = Field(100, ge=0)  # held-out prompts answered by the trained model
    max_new_tokens: int = Field(96, gt=0)
    batch_size: int = Field(8, gt=0)  # prompts per generate call
    metrics: list[str] = Field(default_factory=lambda: ["exact_match", "chrf", "rouge_l"])  # or module:function
    lower_is_better: list[str] = Field(default_factory=list)  # your metrics where smaller is better
    baseline_branch: str = "main"  # the newest finished run of this branch is the baseline
    judge: JudgeParams = Field(default_factory=JudgeParams)
    harness_tasks: list[str] = Field(default_factory=list)  # lm-evaluation-harness tasks (extra `harness`)
    harness_include: str | None = None  # a folder of your own task YAMLs
    harness_limit: int | None = Field(None, gt=0)  # examples per task; None = all


class CheckpointParams(_Section):
    dir: str = "checkpoints"
    every_steps: int = Field(100, gt=0)
    every_minutes: float = Field(10, gt=0)
    keep: int = Field(2, gt=0)


class TrackingParams(_Section):
    uri: str = "sqlite:///mlflow.db"  # MLFLOW_TRACKING_URI in the environment wins
    experiment: str = Field("default", min_length=1)
    system_metrics: bool = True  # CPU / memory / GPU utilisation...
    system_metrics_interval_s: float = Field(10, gt=0)  # ...sampled this often
    log_adapter: bool = True  # the trained adapter as run artifacts...
    adapter_max_mb: float = Field(200, ge=0)  # ...when it is at most this big
    flush_timeout_s: float = Field(60, ge=0)  # at the end, how long to wait for an unreachable server


class ComputeParams(_Section):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    peak_tflops: float | None = Field(None, gt=0)  # for MFU; None = look the GPU up in a table
    # On a CPU, the RAM a training step may take (micro_batch / gradient_checkpointing auto); auto = what is free
    host_ram_gib: Annotated[float, Field(gt=0)] | Literal["auto"] = "auto"
    clouds: list[str] = Field(default_factory=list)
    spot: bool = True
    # `launch` (SkyPilot): after this many recoveries of the spot job, the rest on on-demand; None = never
    max_preemptions: int | None = Field(None, ge=0)
    # ...or after this many minutes in a row waiting for spot capacity; None = wait as long as SkyPilot does
    max_spot_wait_minutes: float | None = Field(None, gt=0)


class BudgetParams(_Section):
    max_run_usd: float = Field(20, gt=0)
    max_sweep_usd: float = Field(100, gt=0)  # all variants of one `sweep` together
    deadline_hours: float | None = Field(None, gt=0)  # `plan`: the cheapest offer that finishes in time


class CostParams(_Section):
    hourly_usd: float | None = Field(None, ge=0)  # explicit price of the machine; None = look it up
    electricity_usd_per_kwh: float | None = Field(None, ge=0)  # own GPU: price its measured power draw


class ExportParams(_Section):
    # What `export` writes when no --target is given (see export/): the adapter for vLLM, the merged
    # 16-bit model, GGUF files for llama.cpp, a Modelfile for Ollama (next to the GGUF).
    targets: list[Literal["vllm", "merged", "gguf", "ollama"]] = Field(default_factory=lambda: ["vllm", "merged"])
    merged_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    gguf_types: list[Literal["F16", "BF16", "Q8_0"]] = Field(default_factory=lambda: ["F16"], min_length=1)
    check_prompts: int = Field(4, ge=0)  # held-out prompts each GGUF is read back on (0: no read-back)
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # served name; None = tracking.experiment


class Params(_Section):
    model: ModelParams
    lora: LoraParams = Field(default_factory=LoraParams)
    data: DataParams = Field(default_factory=DataParams)
    train: TrainParams = Field(default_factory=TrainParams)
    eval: EvalParams = Field(default_factory=EvalParams)
    checkpoint: CheckpointParams = Field(default_factory=CheckpointParams)
    tracking: TrackingParams = Field(default_factory=TrackingParams)
    compute: ComputeParams = Field(default_factory=ComputeParams)
    budget: BudgetParams = Field(default_factory=BudgetParams)
    cost: CostParams = Field(default_factory=CostParams)
    export: ExportParams = Field(default_factory=ExportParams)

    def flat(self) -> dict[str, Any]:
        """`section.key -> value`, the form MLflow logs and `--set` accepts."""
        return dict(_flatten(self.model_dump()))


def _flatten(tree: dict[str, Any], prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _key_lines(path: Path, text: str) -> dict[str, int]:
    """Line number (1-based) of every `section.key` in the YAML file, for error messages."""
    lines: dict[str, int] = {}

    def walk(node: yaml.Node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                dotted = f"{prefix}{key_node.value}"
                lines[dotted] = key_node.start_mark.line + 1
                walk(value_node, dotted + ".")

    root = yaml.compose(text)
    if root is not None:
        walk(root, "")
    return lines


def parse_override(assignment: str) -> tuple[list[str], Any]:
    """`train.max_steps=50` -> (["train", "max_steps"], 50); the value is parsed as YAML."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {assignment!r}: expected key=value, e.g. --set train.max_steps=50")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {key}: value {raw!r} is not valid YAML ({err.problem})") from None
    return key.strip().split("."), value


def unknown_key(dotted: str, known: list[str]) -> str:
    """`unknown key 'train.max_stepz' (did you mean 'train.max_steps'?); known: max_steps, ...`:
    the keys of its section, the closest first."""
    section, _, key = dotted.rpartition(".")
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    hint = f" (did you mean {'.'.join(filter(None, (section, close[0])))!r}?)" if close else ""
    ordered = close + [name for name in known if name not in close]
    return f"unknown key {dotted!r}{hint}" + (f"; known: {', '.join(ordered)}" if ordered else "")


def _section_keys(loc: tuple) -> list[str]:
    """The keys declared in the section at `loc` (("train",) -> TrainParams' fields)."""
    model: type[BaseModel] = Params
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def apply_override(tree: dict[str, Any], assignment: str) -> None:
    keys, value = parse_override(assignment)
    known = Params.model_fields
    node = tree
    for depth, key in enumerate(keys):
        dotted = ".".join(keys[: depth + 1])
        if key not in known:
            raise ConfigError(f"--set {'.'.join(keys)}: {unknown_key(dotted, list(known))}")
        if depth == len(keys) - 1:
            node[key] = value
            return
        annotation = known[key].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            raise ConfigError(f"--set {'.'.join(keys)}: {dotted!r} is a value, not a section")
        known = annotation.model_fields
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {'.'.join(keys)}: {dotted!r} is not a section in params.yaml")
    raise ConfigError(f"--set {'.'.join(keys)}: name a key inside the section, e.g. train.max_steps")


def load_params(path: str | Path = "params.yaml", overrides: list[str] = ()) -> Params:
    """Read and validate params.yaml, applying `key=value` overrides in order."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found (run from the project root, or pass --params)") from None
    try:
        tree = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(yaml_error(path, err)) from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (model:, train:, ...)")
    overridden = set()
    for assignment in overrides:
        apply_override(tree, assignment)
        overridden.add(".".join(parse_override(assignment)[0]))
    try:
        return Params.model_validate(tree)
    except ValidationError as err:
        lines = _key_lines(path, text)
        messages = []
        for problem in err.errors():
            dotted = ".".join(str(part) for part in problem["loc"])
            if dotted in overridden:
                where = "--set"
            else:
                where = f"{path}:{lines[dotted]}" if dotted in lines else str(path)
            if problem["type"] == "extra_forbidden":  # a typo: the section's keys, not its whole content
                messages.append(f"{where}: {unknown_key(dotted, _section_keys(problem['loc'][:-1]))}")
                continue
            # A whole section as the value says nothing the line number does not.
            got = "" if problem["type"] == "missing" or isinstance(problem["input"], dict) else f" (got {problem['input']!r})"
            messages.append(f"{where}: {dotted or 'params'}: {problem['msg']}{got}")
        raise ConfigError("\n".join(messages)) from None
