"""The planner: memory against published measurements, ranking by dollars per run, the
exclusions, `--write`, the CLI path, the budget guard and the own-GPU arithmetic. Machines of
several GPUs, the deadline and host RAM: tests/test_plan_machines.py."""

import argparse
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml

from {{ cookiecutter.package_name }}.compute import plan
from {{ cookiecutter.package_name }}.config import ConfigError
from {{ cookiecutter.package_name }}.model import flops

PROJECT = Path(__file__).resolve().parents[1]
PARAMS = PROJECT / "params.yaml"
GIB = 2**30
SKY_HEADER = "InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,GpuInfo,Price,SpotPrice,Region,AvailabilityZone"


def write_catalog(root: Path, cloud: str, rows: list[str]) -> None:
    path = root / ".sky" / "catalogs" / "v8" / cloud / "vms.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([SKY_HEADER, *rows]) + "\n")


@pytest.fixture
def catalog(tmp_path, monkeypatch) -> Path:
    """A small SkyPilot catalog: L4 is the cheapest per hour, L40S is 3x as fast for 2x the price."""
    root = tmp_path / "sky-runtime"
    write_catalog(root, "aws", [
        "g6.xlarge,L4,1,4,16,,0.80,0.30,us-east-1,us-east-1a",
        "g6e.xlarge,L40S,1,4,32,,1.86,0.60,us-east-1,us-east-1a",
        "g6e.12xlarge,L40S,4,48,384,,10.49,3.40,us-east-1,us-east-1a",  # 4 GPUs: a machine of its own
        "p5.4xlarge,H100,1,16,256,,6.88,2.95,us-east-1,us-east-1a",
    ])
    write_catalog(root, "runpod", ["1x_RTX4090_SECURE,RTX4090,1,16,62,,0.69,0.34,US,"])
    monkeypatch.setenv("SKY_RUNTIME_DIR", str(root))
    return root


def real_model(make_params, *overrides):
    """Params for a real-size model (shape from the built-in table: the tests are offline)."""
    return make_params(
        "model.base=Qwen/Qwen2.5-1.5B-Instruct", "model.method=lora", "model.dtype=auto",
        "data.max_length=1024", "train.micro_batch=auto", "train.global_batch=16",
        "train.gradient_checkpointing=auto", "compute.clouds=[aws, runpod]", "compute.spot=true", *overrides,
    )


# ================================================================ memory vs published runs
#
# Each row: a published peak-memory measurement of a well-known LoRA / QLoRA setup, the
# settings it was taken with, and the estimator's answer. Every number below is PyTorch's
# peak reserved memory (no CUDA context), so it is compared with `allocator_bytes`.
#
# Not in the table, on purpose:
# - Unsloth's "Hugging Face + FA2" max-context tables: measured with 2024 transformers,
#   whose loss kept more fp32 copies of the logits than today's;
# - torchtune's 8B LoRA row on an A6000 (30.3 GiB): its activation-checkpointing setting
#   is not stated, and compiled (torch.compile) activations are not modelled;
# - FSDP / DeepSpeed per-GPU numbers (70B, 405B): their settings (wrapping, offload, prefetch)
#   are not stated; the FSDP share is tested against its own arithmetic in test_plan_machines.py.
# - The QLoRA paper's Guanaco figures are the 4-bit models' sizes, not training peaks.

LLAMA_3B = plan.KNOWN_SHAPES["llama-3.2-3b"]
LLAMA_8B = plan.KNOWN_SHAPES["llama-3.1-8b"]
RESULTS = "https://github.com/huggingface/peft/blob/{}/method_comparison/MetaMathQA/results/lora--llama-3.2-3B-{}.json"
# PEFT MetaMathQA settings (default_training_params.json): bf16 base, fp32 adapters
# (autocast_adapter_dtype), batch 4, max_seq_length 768, no gradient checkpointing, SDPA with
# a padding mask, AdamW, lora_dropout 0, transformers' loss; L40S. The published number is
# `accelerator_memory_max` = torch.cuda.max_memory_reserved() over the run (utils.py
# log_results); evaluation is inference with a KV cache and needs less than training.
# Assumption: the peak step is a full batch of 4 x 768 tokens (bucketing groups the longest
# samples; the dataset is filtered to fit 768 tokens).
PEFT = dict(micro_batch=4, seq_len=768, checkpointing=False, attention="sdpa", loss="hf", dropout=0.0)
# torchtune README "Memory and training speed" (Llama 3.1 8B, 1x RTX 4090): batch size 2,
# packed to 2048 tokens, torch.compile on. Assumptions: the recipes' single-device configs
# (recipes/configs/llama3_1/8B_{lora,qlora}_single_device.yaml: activation checkpointing
# on, lora_dropout 0, rank 8, CEWithChunkedOutputLoss, which compiled keeps only the bf16
# logits), bf16 adapters and AdamW states, the peak being reserved memory. torchtune's NF4
# quantizes only LoRA-targeted layers; its QLoRA config targets all of them, as bitsandbytes.
TORCHTUNE_README = "https://github.com/pytorch/torchtune/blob/0031bfb080bd35ec533c412df883cf2bf7bf7fe4/README.md"
TORCHTUNE = dict(micro_batch=2, seq_len=2048, checkpointing=True, attention="flash_attention_2", loss="chunked_output",
                 dropout=0.0, adapter_bytes=2)

PUBLISHED = [
    # (what, shape, setup, published peak reserved GiB, source)
    ("Llama-3.2-3B LoRA r32 q,v", LLAMA_3B,
     plan.TrainSetup(method="lora", lora_r=32, targets=("q_proj", "v_proj"), **PEFT),
     22_273_851_392 / GIB, RESULTS.format("0a179c1e8659ab4f7df0369b9b03943cfe470ff1", "rank32")),
    ("Llama-3.2-3B LoRA r64 q,v", LLAMA_3B,
     plan.TrainSetup(method="lora", lora_r=64, targets=("q_proj", "v_proj"), **PEFT),
     22_540_189_696 / GIB, RESULTS.format("18e07f189c06cbc6472e4e3ec180358319de8175", "rank64")),
    ("Llama-3.2-3B LoRA r10 MLP", LLAMA_3B,
     plan.TrainSetup(method="lora", lora_r=10, targets=("gate_proj", "up_proj", "down_proj"), **PEFT),
     24_712_839_168 / GIB, RESULTS.format("1948110ce61086030772abf36aa9396c5c3e6739", "rank10-target-mlp")),
    ("Llama-3.2-3B DoRA r32 q,v", LLAMA_3B,
     plan.TrainSetup(method="dora", lora_r=32, targets=("q_proj", "v_proj"), **PEFT),
     24_540_872_704 / GIB, RESULTS.format("52903c83d95bb68cf7f3217b9b6cd528799b24fc", "rank32-dora")),
    ("Llama-3.1-8B LoRA r8 q,v,o+MLP, AC", LLAMA_8B,
     plan.TrainSetup(method="lora", lora_r=8, targets=("q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
                     **TORCHTUNE),
     16.2, TORCHTUNE_README),
    ("Llama-3.1-8B QLoRA r8 all linear, AC", LLAMA_8B,
     plan.TrainSetup(method="qlora", lora_r=8, targets="all-linear", **TORCHTUNE),
     7.4, TORCHTUNE_README),
]


@pytest.mark.parametrize("what, shape, setup, published_gib, source", PUBLISHED, ids=[r[0] for r in PUBLISHED])
def test_memory_estimate_within_20_percent_of_published_peak(what, shape, setup, published_gib, source):
    estimated_gib = plan.estimate_memory(shape, setup).allocator_bytes / GIB
    error = (estimated_gib - published_gib) / published_gib
    print(f"{what}: published {published_gib:.2f} GiB, estimated {estimated_gib:.2f} GiB, error {100 * error:+.1f}% ({source})")
    assert abs(error) <= 0.20, f"{what}: {estimated_gib:.2f} GiB vs published {published_gib:.2f} GiB ({100 * error:+.1f}%)"


def test_shape_table_matches_a_published_parameter_count():
    # PEFT's benchmark logs Llama-3.2-3B's parameters: 3,221,924,864 total with 9,175,040 LoRA ones.
    assert LLAMA_3B.total_params == 3_221_924_864 - 9_175_040
    setup = plan.TrainSetup(method="lora", lora_r=32, targets=("q_proj", "v_proj"), **PEFT)
    adapter_params = plan.adapter_bytes(LLAMA_3B, setup) / 16  # fp32 weights + grads + 2 AdamW moments
    assert adapter_params == 9_175_040


def test_activation_formula_matches_what_autograd_saves(tmp_path):
    """Bytes per token one decoder layer saves for backward, counted with saved-tensor hooks on
    a small bf16 Llama with PEFT adapters (CPU; the layer-0 exceptions cancel in the difference
    between a 3-layer and a 2-layer model), under bf16 autocast as the trainer runs (accelerate's
    mixed precision) and without it."""
    import contextlib

    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    def saved_bytes_per_token(layers: int, targets: list[str], autocast: bool) -> float:
        torch.manual_seed(0)
        config = LlamaConfig(hidden_size=256, intermediate_size=704, num_hidden_layers=layers, num_attention_heads=4,
                             num_key_value_heads=2, vocab_size=1000, attn_implementation="sdpa")
        model = get_peft_model(LlamaForCausalLM(config).to(torch.bfloat16), LoraConfig(r=8, target_modules=targets))
        model.train()
        frozen = {p.untyped_storage().data_ptr() for p in model.parameters()}
        saved: dict[int, int] = {}

        def keep(tensor):
            if tensor.untyped_storage().data_ptr() not in frozen:
                saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
            return tensor

        ids = torch.randint(0, 1000, (2, 128))
        mixed = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
        with mixed, torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
            model(input_ids=ids, labels=ids, use_cache=False)
        return sum(saved.values()) / ids.numel()

    shape = plan.ModelShape("probe", 256, 704, 3, 4, 2, 1000, False)
    for targets in (["q_proj", "v_proj"], list(plan.LINEAR_NAMES)):
        for autocast in (True, False):
            measured = saved_bytes_per_token(3, targets, autocast) - saved_bytes_per_token(2, targets, autocast)
            # No mask here, so SDPA keeps k and v unrepeated: the flash-attention branch.
            setup = plan.TrainSetup(lora_r=8, targets=tuple(targets), attention="flash_attention_2", autocast=autocast)
            estimated = plan.layer_activation_bytes(shape, setup)
            assert estimated == pytest.approx(measured, rel=0.03), (targets, autocast, estimated, measured)


def test_checkpointing_quantization_and_micro_batch_move_memory_the_right_way():
    shape = plan.KNOWN_SHAPES["qwen2.5-7b"]
    lora = plan.TrainSetup(method="lora", micro_batch=4, seq_len=2048)
    base = plan.estimate_memory(shape, lora)
    full = plan.estimate_memory(shape, replace(lora, checkpointing=1.0)).activations
    assert full < base.activations / 10
    half = plan.estimate_memory(shape, replace(lora, checkpointing=0.5)).activations
    assert half == pytest.approx((base.activations + full) / 2, rel=0.01)  # half the layers keep everything
    qlora = plan.estimate_memory(shape, replace(lora, method="qlora"))
    # NF4 with double quantization (~4.13 bits) for the decoder's linear layers; embeddings, lm_head
    # and norms stay 16-bit, as bitsandbytes leaves them.
    linear = shape.layers * shape.layer_linear_params
    assert qlora.base_weights == linear * (0.5 + 1 / 64 + 4 / (64 * 256)) + (shape.total_params - linear) * 2
    assert base.base_weights == shape.total_params * 2
    assert plan.estimate_memory(shape, replace(lora, micro_batch=8)).activations == pytest.approx(2 * base.activations, rel=0.01)
    assert plan.estimate_memory(shape, replace(lora, loss="fused")).logits_and_loss == 0


# ======================================================================== shape and FLOPs


def test_local_config_shape_and_flops_agree_with_the_loaded_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    shape = plan.load_model_shape(str(tiny_model_dir))
    assert shape.source.endswith("config.json")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert shape.total_params == sum(p.numel() for p in model.parameters())
    assert shape.matmul_params == flops.matmul_parameters(model)  # the trainer's MFU counts the same FLOPs


def test_hub_id_falls_back_to_the_builtin_table_offline():
    shape = plan.load_model_shape("meta-llama/Meta-Llama-3.1-8B-Instruct")
    assert (shape.hidden, shape.layers, shape.kv_heads, shape.vocab) == (4096, 32, 8, 128256)
    assert shape.source.startswith("built-in table")
    assert plan.table_key("mistralai/Mistral-7B-Instruct-v0.3") == "mistral-7b"
    assert plan.table_key("google/gemma-2-9b-it") == "gemma-2-9b"
    with pytest.raises(ConfigError, match="model.base='nobody/unknown-13b'"):
        plan.load_model_shape("nobody/unknown-13b")


def test_run_flops_use_perf_and_the_prepared_dataset(make_params):
    from {{ cookiecutter.package_name }} import data

    params = make_params("train.max_steps=30", "train.global_batch=8")
    data.prepare(params, log=lambda *_: None)
    summary = json.loads((Path(params.data.prepared_dir) / "summary.json").read_text())
    shape = plan.load_model_shape(params.model.base)
    work = plan.run_workload(shape, params, plan.dataset_summary(params))
    context = summary["train"]["mean_context"]
    assert work["flops_per_token"] == flops.flops_per_token(shape.matmul_params, shape.layers, shape.hidden, context)
    assert work["tokens"] == 30 * 8 * params.data.max_length
    assert work["dataset"]["epochs"] == round(30 * 8 / summary["train"]["rows"], 2)
    # A summary prepared for another row length is stale: ignored.
    assert plan.dataset_summary(make_params("data.max_length=256")) is None


# ================================================================= ranking and exclusion


def test_ranked_by_dollars_per_run_not_per_hour(make_params, catalog):
    result = plan.make_plan(real_model(make_params, "train.max_steps=2000"))
    assert result["prices"]["source"].startswith("SkyPilot catalog")
    spot = {o["gpu"]: o for o in result["ranked"] if o["spot"] and o["cloud"] == "aws" and o["gpus"] == 1}
    l4, l40s = spot["L4"], spot["L40S"]
    assert l4["usd_per_hour"] < l40s["usd_per_hour"]  # L4 is cheaper per hour...
    assert l40s["usd_per_run"] < l4["usd_per_run"]  # ...but slower, so it costs more per run
    assert l40s["rank"] < l4["rank"]
    assert result["candidates"].index("1x L40S") < result["candidates"].index("1x L4")
    for offer in result["ranked"]:
        assert offer["usd_per_run"] == pytest.approx(offer["usd_per_hour"] * offer["hours"], rel=1e-3)
    assert [o["expected_usd"] for o in result["ranked"]] == sorted(o["expected_usd"] for o in result["ranked"])
    # The 4-GPU machine is an offer too: data parallel (the model fits one GPU), faster than one L40S.
    four = next(o for o in result["ranked"] if o["instance_type"] == "g6e.12xlarge" and o["spot"])
    assert (four["machine"], four["gpus"], four["strategy"]) == ("4x L40S", 4, "ddp")
    assert four["compute_hours"] < l40s["compute_hours"] / 3 and four["usd_per_hour"] == 3.40


def test_short_runs_go_to_the_cheapest_hour(make_params, catalog):
    # Ten steps: setup time dominates, so the cheapest hour is the cheapest run.
    result = plan.make_plan(real_model(make_params, "train.max_steps=10"))
    assert result["cheapest"]["gpu"] == "L4" and result["cheapest"]["usd_per_hour"] == 0.30


def test_gpus_that_do_not_fit_are_excluded_with_the_reason(make_params, catalog):
    params = real_model(make_params, "model.base=Qwen/Qwen2.5-14B-Instruct", "data.max_length=4096")
    result = plan.make_plan(params)
    excluded = {e["gpu"]: e["reason"] for e in result["excluded"]}
    gpus = {g["gpu"]: g for g in result["gpus"]}
    for name in ("L4", "RTX4090", "A10G"):  # 24 GB cards cannot hold a 16-bit 14B model
        assert not gpus[name]["fits"]
        peak = gpus[name]["memory"]["peak"]
        assert peak > gpus[name]["usable_gib"]
        assert f"needs ~{peak:.1f} GiB at micro_batch 1 with gradient checkpointing" in excluded[name]
        assert f"{name} has {plan.GPUS[name].memory_gib:.1f} GiB" in excluded[name]
        assert all(o["machine"] != f"1x {name}" for o in result["ranked"])  # several of them may: not one
    assert gpus["H100"]["fits"] and any(o["gpu"] == "H100" for o in result["ranked"])
    # Fits, but the catalog has no offer for it on these clouds: said as much.
    assert "fits one GPU, but no offer of it on aws, runpod" in excluded["A100-80GB"]


def test_fixed_micro_batch_and_checkpointing_are_respected(make_params, catalog):
    params = real_model(make_params, "train.micro_batch=2", "train.gradient_checkpointing=true")
    for entry in plan.make_plan(params)["gpus"]:
        assert (entry["micro_batch"], entry["gradient_checkpointing"]) == (2, True)


def test_a_24gb_card_checkpoints_only_the_layers_it_must(make_params, catalog):
    """8B QLoRA at 2048 tokens: one row does not fit a 24 GB card without checkpointing, but
    does with some of the layers checkpointed, which is faster than checkpointing them all."""
    params = real_model(make_params, "model.base=meta-llama/Llama-3.1-8B", "model.method=qlora", "data.max_length=2048")
    shape = plan.load_model_shape(params.model.base)
    l4 = next(entry for entry in plan.make_plan(params)["gpus"] if entry["gpu"] == "L4")
    assert l4["fits"] and l4["micro_batch"] == 1
    assert 0 < l4["gradient_checkpointing"] < 1 and l4["memory"]["peak"] <= l4["usable_gib"]
    fewer = round(l4["gradient_checkpointing"] * shape.layers) - shape.layers // 4  # the next smaller try
    fewer_setup = replace(plan.base_setup(params), micro_batch=1, checkpointing=fewer / shape.layers)
    assert plan.estimate_memory(shape, fewer_setup).total / plan.GIB > l4["usable_gib"]
    everything = plan.make_plan(real_model(make_params, "model.base=meta-llama/Llama-3.1-8B", "model.method=qlora",
                                           "data.max_length=2048", "train.gradient_checkpointing=true"))
    l4_all = next(entry for entry in everything["gpus"] if entry["gpu"] == "L4")
    assert l4["compute_hours"] < l4_all["compute_hours"]  # less recomputation
    assert f" {plan.checkpointing_label(l4['gradient_checkpointing'], 'yes', 'no')}" in plan.render_table(plan.make_plan(params), top=9)


def test_user_price_is_the_last_resort(make_params, tmp_path, monkeypatch):
    monkeypatch.setenv("SKY_RUNTIME_DIR", str(tmp_path / "none"))
    params = real_model(make_params, "compute.clouds=[kubernetes]", "cost.hourly_usd=1.5")
    result = plan.make_plan(params)
    assert result["prices"]["source"] == "params cost.hourly_usd"
    assert {o["usd_per_hour"] for o in result["ranked"]} == {1.5}
    assert result["cheapest"]["gpu"] == "H100"  # same price everywhere: the fastest GPU wins
    no_prices = plan.make_plan(real_model(make_params, "compute.clouds=[kubernetes]"))
    with pytest.raises(ConfigError, match="no GPU can run this plan"):
        plan.check_budget(no_prices, params)


def test_a_run_no_machine_holds_points_to_qlora_and_fsdp(make_params, catalog):
    # 70B in 16 bit (141 GB): no single GPU holds it; 2 of the 4-GPU L40S machines, sharded, do.
    params = make_params("model.base=meta-llama/Llama-3.1-70B", "model.method=lora", "compute.clouds=[aws, runpod]",
                         "train.global_batch=16", "model.dtype=auto", "data.max_length=1024")
    result = plan.make_plan(params)
    assert not any(entry["fits"] for entry in result["gpus"])
    assert {(o["machine"], o["strategy"]) for o in result["ranked"]} >= {("2 nodes x 4x L40S", "fsdp")}
    assert plan.check_budget(result, params) > 0
    qlora = make_params("model.base=meta-llama/Llama-3.1-70B", "model.method=qlora")
    assert plan.check_budget(plan.make_plan(qlora), qlora) > 0  # the advice below holds: QLoRA fits
    # Only one-GPU L4 machines in the prices: nothing holds it, even four of them.
    write_catalog(catalog, "aws", ["g6.xlarge,L4,1,4,16,,0.80,0.30,us-east-1,us-east-1a"])
    write_catalog(catalog, "runpod", ["1x_L4_SECURE,L4,1,12,50,,0.43,0.22,US,"])
    result = plan.make_plan(params)
    assert result["ranked"] == []
    with pytest.raises(ConfigError) as refused:
        plan.check_budget(result, params)
    message = str(refused.value)
    assert message.startswith("no single GPU can hold this run (H200, the largest: needs ~")
    assert "nor can any machine in the prices (1x L4: 1 GPU needs ~" in message
    assert "(and on up to 4 such machines)" in message
    assert "model.method=qlora" in message and "configs/accelerate/fsdp.yaml" in message


# ================================================================ sky/train.yaml --write


def sky_task(tmp_path) -> Path:
    """A copy of the baked sky/train.yaml (pruned when gpu_runner is self-hosted: then its
    resources block, verbatim from the template)."""
    source = PROJECT / "sky" / "train.yaml"
    text = source.read_text() if source.is_file() else (
        "resources:\n  use_spot: true\n  # Any of these GPUs\n"
        "  accelerators: {L4: 1, A10G: 1, L40S: 1, A100: 1}\n  disk_size: 100\n"
    )
    copy = tmp_path / "train.yaml"
    copy.write_text(text)
    return copy


def test_write_changes_only_the_lines_it_owns(make_params, catalog, tmp_path):
    task = sky_task(tmp_path)
    before = task.read_bytes().decode().splitlines(keepends=True)
    result = plan.make_plan(real_model(make_params, "train.max_steps=2000"))
    written = plan.write_sky_candidates(result, task, top=2)
    chosen = plan.launch_candidates(result, top=2)
    assert written["accelerators"] == {o["gpu"]: o["gpus"] for o in chosen} and len(chosen) == 2
    assert chosen[0] == result["cheapest"]
    after = task.read_bytes().decode().splitlines(keepends=True)
    assert len(after) == len(before)
    changed = [n for n, (old, new) in enumerate(zip(before, after, strict=True)) if old != new]
    gpus = ", ".join(f"{gpu}: {count}" for gpu, count in written["accelerators"].items())
    expected = {"  accelerators: {" + gpus + "}  " + plan.WRITE_MARKER + "\n"}
    if PROJECT.joinpath("sky", "train.yaml").is_file():  # the baked task has num_nodes and ACCELERATE_CONFIG
        expected.add("num_nodes: 1  " + plan.WRITE_MARKER + "\n")
        if written["accelerate_config"]:
            expected.add(f"  ACCELERATE_CONFIG: {written['accelerate_config']}  " + plan.WRITE_MARKER + "\n")
    assert {after[n] for n in changed} == expected
    assert all(before[n].lstrip().startswith(("accelerators: {", "num_nodes:", "ACCELERATE_CONFIG:")) for n in changed)
    # Writing again replaces the marked lines; the file stays otherwise byte-identical.
    plan.write_sky_candidates(result, task, top=1)
    again = task.read_bytes().decode().splitlines(keepends=True)
    assert [n for n, (old, new) in enumerate(zip(before, again, strict=True)) if old != new] == changed
    assert all(again[n].count(plan.WRITE_MARKER) == 1 for n in changed)


def test_write_refuses_a_task_without_the_line(make_params, catalog, tmp_path):
    task = tmp_path / "other.yaml"
    task.write_text("resources:\n  accelerators: L4:1\n")
    result = plan.make_plan(real_model(make_params))
    with pytest.raises(ConfigError, match="no `accelerators: ` line"):
        plan.write_sky_candidates(result, task)
    assert task.read_text() == "resources:\n  accelerators: L4:1\n"


# =========================================================================== the CLI path


def cli_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="test")
    plan.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["plan", *argv])


def params_file(make_params, tmp_path, *extra) -> str:
    """A params.yaml holding real_model(...): what `plan --params` reads."""
    path = tmp_path / "params-plan.yaml"
    path.write_text(yaml.safe_dump(real_model(make_params, *extra).model_dump()))
    return str(path)


def test_cli_json_output(make_params, catalog, tmp_path, capsys):
    args = cli_args("--params", params_file(make_params, tmp_path, "train.max_steps=2000"), "--json")
    assert args.handler is plan.run
    assert plan.run(args) == 0
    output = json.loads(capsys.readouterr().out)
    assert output["model"]["name"] in ("Qwen2.5-1.5B", "Qwen/Qwen2.5-1.5B-Instruct")  # table, or a cached hub config
    assert output["model"]["hidden"] == 1536
    assert output["ranked"][0] == output["cheapest"]
    assert output["budget"]["within"] is True
    assert {"L4", "L40S"} <= {o["gpu"] for o in output["ranked"]}
    assert output["owned"] is None and output["written"] is None


def test_cli_table_write_and_bad_input(make_params, catalog, tmp_path, capsys):
    task = sky_task(tmp_path)
    params = params_file(make_params, tmp_path, "train.max_steps=2000")
    assert plan.run(cli_args("--params", params, "--write", "--sky-yaml", str(task), "--top", "3")) == 0
    text = capsys.readouterr().out
    assert "ESTIMATES, not measurements" in text and "by dollars per run" in text
    assert f"{task}: accelerators = " in text
    assert plan.WRITE_MARKER in task.read_text()
    with pytest.raises(ConfigError, match="unknown key 'train.max_stepz'"):
        plan.run(cli_args("--params", str(PARAMS), "--set", "train.max_stepz=1"))
    with pytest.raises(ConfigError, match="--owned B9000: unknown GPU"):
        plan.run(cli_args("--params", params, "--owned", "B9000"))


# ====================================================================== what the table says


def offer_rows(text: str) -> tuple[str, list[list[str]], str]:
    """(heading, rows as [position, machine, how, cloud, ...the rest split], the line after the
    rows) of the offers table; machine and how are fixed-width columns (they hold spaces)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if "by dollars per run:" in line)
    end = next(i for i in range(start + 2, len(lines)) if not lines[i].strip()[:1].isdigit())
    rows = [[line[:5].strip(), line[7:25].strip(), line[26:31].strip(), *line[32:].split()] for line in lines[start + 2:end]]
    return lines[start], rows, lines[end]


def test_the_offers_heading_counts_the_rows_and_gpus_it_shows(make_params, catalog):
    # L4 on two clouds: more rows than GPUs, which the old "Offers for the N best GPUs" hid.
    write_catalog(catalog, "runpod", ["1x_RTX4090_SECURE,RTX4090,1,16,62,,0.69,0.34,US,",
                                      "1x_L4_SECURE,L4,1,12,50,,0.44,0.22,US,"])
    result = plan.make_plan(real_model(make_params, "train.max_steps=2000"))
    heading, rows, _ = offer_rows(plan.render_table(result, top=2))
    machines = {row[1] for row in rows}
    assert len(machines) == 2 and len(rows) > len(machines)
    assert all(row[3] in ("aws", "runpod") for row in rows)
    fitting = len(result["candidates"])
    assert heading == (f"{len(rows)} spot offers on the 2 cheapest machines (--top {fitting} shows all {fitting}), "
                       "one row per machine and cloud, by dollars per run:")
    # Every spot offer of those two machines is a row, cheapest first.
    expected = [o for o in result["ranked"] if o["spot"] and o["machine"] in machines]
    assert [(row[1], row[3]) for row in rows] == [(o["machine"], o["cloud"]) for o in expected]
    heading, rows, _ = offer_rows(plan.render_table(result, top=1))
    assert len({row[1] for row in rows}) == 1 and heading.startswith(f"{len(rows)} spot offer")
    assert f" on the cheapest machine (--top {fitting} shows all {fitting})," in heading


def test_the_table_says_the_hours_include_setup(make_params, catalog):
    result = plan.make_plan(real_model(make_params, "train.max_steps=2000"))
    shape = plan.load_model_shape("Qwen/Qwen2.5-1.5B-Instruct")
    minutes = plan.SETUP_MINUTES + shape.total_params * 2 / plan.DOWNLOAD_BYTES_PER_S / 60
    _, rows, after = offer_rows(plan.render_table(result))
    assert after == (f"  hours include ~{minutes:.0f} min of setup per run (VM start, install, model download), "
                     "billed but not training")
    entry = next(o for o in result["ranked"] if o["machine"] == rows[0][1])
    assert entry["hours"] == pytest.approx(entry["compute_hours"] + entry["communication_hours"] + minutes / 60,
                                           abs=1e-3)  # the rows' hours hold it


def test_many_epochs_over_a_small_dataset_are_warned_with_the_levers(make_params, capsys):
    from {{ cookiecutter.package_name }} import data

    params = make_params("train.global_batch=8")
    data.prepare(params, log=lambda *_: None)
    rows = json.loads((Path(params.data.prepared_dir) / "summary.json").read_text())["train"]["rows"]
    steps = (plan.MANY_EPOCHS * rows) // 8 + 5  # just over the threshold
    many = plan.make_plan(make_params("train.global_batch=8", f"train.max_steps={steps}"))
    epochs = round(steps * 8 / rows, 2)
    assert many["work"]["dataset"]["epochs"] == epochs > plan.MANY_EPOCHS
    assert many["work"]["dataset"]["many_epochs"] is True
    (warning,) = many["warnings"]
    one_epoch = round(rows / 8)
    assert warning.startswith(f"{epochs} epochs: {steps} steps x 8 rows = {steps * 8:,} rows over {rows:,} prepared "
                              "training rows")
    assert f"lower train.max_steps ({one_epoch} steps is one epoch" in warning and "add data (data.path)" in warning
    table = plan.render_table(many)
    assert "  WARNING: " + warning[:60] in table and " ".join(table.split()).count(warning) == 1  # wrapped, whole
    # The JSON carries the same: what a script reads.
    path = Path(params.data.prepared_dir).parent / "params-epochs.yaml"
    path.write_text(yaml.safe_dump(make_params("train.global_batch=8", f"train.max_steps={steps}").model_dump()))
    plan.run(cli_args("--params", str(path), "--json"))
    output = json.loads(capsys.readouterr().out)
    assert output["warnings"] == [warning] and output["work"]["dataset"]["many_epochs"] is True
    # At the threshold or below: no warning.
    few = plan.make_plan(make_params("train.global_batch=8", f"train.max_steps={(plan.MANY_EPOCHS * rows) // 8}"))
    assert few["warnings"] == [] and few["work"]["dataset"]["many_epochs"] is False
    assert "WARNING" not in plan.render_table(few)


def test_plot_draws_one_point_per_offer_with_the_cheapest_and_fastest(make_params, catalog, tmp_path, capsys):
    import matplotlib.image
    from PIL import Image

    result = plan.make_plan(real_model(make_params, "train.max_steps=2000"))
    path = tmp_path / "plots" / "offers.png"
    plotted = plan.plot_offers(result, path)
    assert plotted["drawn"] == len(plotted["points"]) == len(result["ranked"]) > 4  # spot and on-demand, every cloud
    assert {(p["machine"], p["cloud"], p["spot"]) for p in plotted["points"]} == {
        (o["machine"], o["cloud"], o["spot"]) for o in result["ranked"]}
    assert plotted["cheapest"]["usd_per_run"] == result["ranked"][0]["usd_per_run"]
    fastest = min(o["hours"] for o in result["ranked"])
    assert plotted["fastest"]["hours"] == fastest and plotted["fastest"]["machine"] == "4x L40S"  # 4 x 362 TFLOP/s
    assert path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 300 and image.size[1] > 200
    assert matplotlib.image.imread(path).ndim == 3  # decodes to pixels
    # The CLI: the path and the count in the table's output and in the JSON.
    params = params_file(make_params, tmp_path, "train.max_steps=2000")
    again = tmp_path / "cli.png"
    assert plan.run(cli_args("--params", params, "--plot", str(again))) == 0
    assert f"{again}: dollars per run against hours, {len(result['ranked'])} offers" in capsys.readouterr().out
    assert again.stat().st_size > 0
    assert plan.run(cli_args("--params", params, "--json", "--plot", str(again))) == 0
    assert json.loads(capsys.readouterr().out)["plot"] == {"path": str(again), "points": len(result["ranked"])}
    # A wrong name fails before any planning, naming the flag.
    with pytest.raises(ConfigError, match=r"--plot .*offers.pdf: the picture is a PNG"):
        plan.run(cli_args("--params", params, "--plot", str(tmp_path / "offers.pdf")))
    folder = tmp_path / "folder.png"
    folder.mkdir()
    with pytest.raises(ConfigError, match=r"--plot .*folder.png: a directory"):
        plan.run(cli_args("--params", params, "--plot", str(folder)))


# =============================================================================== budget


def test_check_budget_refuses_with_the_numbers(make_params, catalog):
    params = real_model(make_params, "train.max_steps=2000", "budget.max_run_usd=0.05")
    result = plan.make_plan(params)
    cheapest = result["cheapest"]
    assert cheapest["usd_per_run"] > 0.05
    with pytest.raises(plan.BudgetExceeded) as refused:
        plan.check_budget(result, params)
    message = str(refused.value)
    assert f"{plan._usd(cheapest['usd_per_run'])} per run" in message
    assert "budget.max_run_usd=$0.050" in message
    assert f"{cheapest['machine']} spot on {cheapest['cloud']}" in message
    # `launch` calls it with the params alone; a generous budget passes and returns the cost.
    generous = real_model(make_params, "train.max_steps=2000", "budget.max_run_usd=100")
    assert plan.check_budget(generous) == pytest.approx(cheapest["usd_per_run"])


def test_cli_prints_the_plan_then_refuses_over_budget(make_params, catalog, tmp_path, capsys):
    params = params_file(make_params, tmp_path, "train.max_steps=2000", "budget.max_run_usd=0.05")
    with pytest.raises(plan.BudgetExceeded):
        plan.run(cli_args("--params", params, "--json"))
    assert json.loads(capsys.readouterr().out)["budget"]["within"] is False


# ============================================================================= own GPU


def test_owned_card_break_even_arithmetic(make_params, catalog):
    result = plan.make_plan(real_model(make_params, "train.max_steps=2000"))
    owned = plan.compare_owned(result, "RTX4090", usd_per_kwh=0.25, watts=400, card_price_usd=1800, payback_months=12)
    hours = next(g for g in result["gpus"] if g["gpu"] == "RTX4090")["compute_hours"]
    energy = hours * 400 / 1000 * 0.25
    cloud = min(o["expected_usd"] for o in result["ranked"] if o["spot"])
    assert owned["energy_usd"] == pytest.approx(energy)
    assert owned["cloud_usd_per_run"] == pytest.approx(cloud)
    assert owned["break_even_runs"] == pytest.approx(1800 / (cloud - energy))
    assert owned["break_even_runs_per_month"] == pytest.approx(1800 / (cloud - energy) / 12)
    assert owned["amortisation_usd"] == 0
    # Amortised over 600 runs, each run also carries 1800 / 600 dollars of card.
    amortised = plan.compare_owned(result, "RTX4090", usd_per_kwh=0.25, watts=400, card_price_usd=1800, expected_runs=600)
    assert amortised["owned_usd_per_run"] == pytest.approx(energy + 3.0)
    # Electricity so dear the card never pays off.
    dear = plan.compare_owned(result, "RTX4090", usd_per_kwh=1000, watts=400, card_price_usd=1800)
    assert dear["savings_per_run_usd"] < 0 and dear["break_even_runs"] is None
    assert "never pays off" in plan.render_owned(dear)


def test_owned_card_that_cannot_hold_the_run(make_params, catalog):
    params = real_model(make_params, "model.base=Qwen/Qwen2.5-14B-Instruct", "data.max_length=4096")
    with pytest.raises(ConfigError, match="--owned RTX4090: the run does not fit"):
        plan.compare_owned(plan.make_plan(params), "RTX4090")


def test_estimate_for_the_gpu_a_run_got_matches_the_plan(make_params):
    from {{ cookiecutter.package_name }}.compute.plan import estimate_for_gpu, make_plan

    params = make_params()
    estimate = estimate_for_gpu(params, "L4", hourly_usd=0.5)
    entry = next(g for g in make_plan(params)["gpus"] if g["gpu"] == "L4")
    assert estimate["estimated_hours"] == entry["hours"] > 0
    assert estimate["estimated_cost_usd"] == pytest.approx(entry["hours"] * 0.5)
    assert estimate_for_gpu(params, "not-a-gpu", 1.0) is None


def test_positions_allowed_follow_the_declared_rope_scaling():
    assert plan.positions_allowed({"max_position_embeddings": 8192}) == 8192
    yarn = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}
    assert plan.positions_allowed({"max_position_embeddings": 32768, "rope_scaling": yarn}) == 131072
    llama3 = {"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 8192}  # transformers 5's key
    assert plan.positions_allowed({"max_position_embeddings": 131072, "rope_parameters": llama3}) == 131072
    assert plan.positions_allowed({"max_position_embeddings": 4096, "rope_scaling": {"type": "linear", "factor": 2.0}}) == 8192
    assert plan.positions_allowed({"max_position_embeddings": 4096, "rope_scaling": {"rope_type": "default"}}) == 4096
    assert plan.positions_allowed({}) == 0


def test_the_longest_row_stops_at_the_models_positions(make_params):
    params = make_params("model.base=google/gemma-2-2b", "model.dtype=auto", "model.method=lora")
    shape, h100 = plan.KNOWN_SHAPES["gemma-2-2b"], plan.GPUS["H100"]
    capped = plan.longest_row(shape, plan.base_setup(params), params, h100)
    assert capped["tokens"] == shape.max_positions == 8192 and capped["bound"] == "positions"
    # Without the cap, memory alone allows far more: the cap is what bound it.
    free = plan.longest_row(replace(shape, max_positions=0), plan.base_setup(params), params, h100)
    assert free["tokens"] > 8192 and free["bound"] == "memory"
    # On a card where memory runs out first, memory is named.
    small = plan.longest_row(replace(shape, max_positions=10**7), plan.base_setup(params), params, plan.GPUS["T4"])
    assert 0 < small["tokens"] < 10**7 and small["bound"] == "memory"


def test_a_preference_run_is_planned_with_its_logits_in_chunks_unless_liger_or_asked_otherwise(make_params):
    """The preference step takes its tokens' log-probabilities from the chunked forward
    (model/logps.py): planned like a supervised step. With Liger's forward, or
    train.chunked_loss=false, it holds the whole logits: for a 128k vocabulary at 4096 tokens, GiBs."""
    common = ("model.base=meta-llama/Llama-3.1-8B", "data.max_length=4096")
    sft = replace(plan.base_setup(make_params(*common)), micro_batch=1)
    dpo = replace(plan.base_setup(make_params(*common, "train.objective=dpo")), micro_batch=1)
    whole_dpo = replace(plan.base_setup(make_params(*common, "train.objective=dpo", "train.chunked_loss=false")), micro_batch=1)
    kto = replace(plan.base_setup(make_params(*common, "train.objective=kto", "train.liger_kernels=true")), micro_batch=1)
    fused_sft = plan.base_setup(make_params(*common, "train.liger_kernels=true"))
    assert (sft.loss, dpo.loss, whole_dpo.loss, kto.loss, fused_sft.loss) == ("chunked", "chunked", "hf", "hf", "fused")
    shape = plan.KNOWN_SHAPES["llama-3.1-8b"]
    assert plan.estimate_memory(shape, dpo).total == plan.estimate_memory(shape, sft).total
    whole = plan.logits_bytes_per_token(shape, whole_dpo) * 4096
    assert plan.logits_and_loss_bytes(shape, whole_dpo) == plan.logits_and_loss_bytes(shape, kto) == whole
    assert whole > 4 * plan.logits_and_loss_bytes(shape, dpo) and whole > 5 * 2**30
    # In the peak (with the allocator's overhead on top): the difference is at least the logits'.
    grown = plan.estimate_memory(shape, whole_dpo).total - plan.estimate_memory(shape, dpo).total
    assert whole - plan.logits_and_loss_bytes(shape, dpo) <= grown <= 1.2 * whole