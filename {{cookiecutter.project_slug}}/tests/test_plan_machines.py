"""Machines, not cards: offers of several GPUs and nodes, the strategy for each (one GPU, DDP,
FSDP), memory per GPU, host RAM, communication, the deadline trade and the expected cost of
spot preemptions. Offline: the bundled price snapshot, or small SkyPilot-format catalogs."""

import argparse
import json
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from {{ cookiecutter.package_name }}.compute import plan, prices
from {{ cookiecutter.package_name }}.config import ConfigError

PROJECT = Path(__file__).resolve().parents[1]
GIB = 2**30
SKY_HEADER = "InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,GpuInfo,Price,SpotPrice,Region,AvailabilityZone"
REAL = ("model.dtype=auto", "data.max_length=1024", "train.micro_batch=auto", "train.global_batch=16",
        "train.gradient_checkpointing=auto", "compute.spot=true")
SEVENTY_B_QLORA = ("model.base=meta-llama/Llama-3.1-70B", "model.method=qlora", *REAL)
EIGHT_B_LORA = ("model.base=meta-llama/Llama-3.1-8B", "model.method=lora", *REAL)


@pytest.fixture
def snapshot(tmp_path, monkeypatch):
    """No SkyPilot catalog on this machine: the bundled snapshot is the price list."""
    monkeypatch.setenv("SKY_RUNTIME_DIR", str(tmp_path / "no-sky"))


def write_catalog(root: Path, cloud: str, rows: list[str]) -> None:
    path = root / ".sky" / "catalogs" / "v8" / cloud / "vms.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([SKY_HEADER, *rows]) + "\n")


def first_per_machine(result: dict, spot: bool = True) -> dict[str, dict]:
    """The cheapest offer of each machine (ranked is cheapest first)."""
    found: dict[str, dict] = {}
    for offer in result["ranked"]:
        if offer["spot"] == spot:
            found.setdefault(offer["machine"], offer)
    return found


# =================================================================== the 70B QLoRA targets


def test_70b_qlora_is_offered_on_sharded_consumer_cards_beside_one_big_gpu(make_params, snapshot):
    params = make_params(*SEVENTY_B_QLORA, "compute.clouds=[]")
    result = plan.make_plan(params)
    assert result["prices"]["source"].startswith("bundled price snapshot")
    machines = first_per_machine(result)
    # The seed's 70B row: 2x A100 80GB at least, 4x or 8x RTX 4090, beside one H100 / H200.
    for label in ("2x A100-80GB", "4x RTX4090", "8x RTX4090"):
        assert label in machines, sorted(machines)
    assert "1x H100" in machines and "1x H200" in machines
    assert machines["4x RTX4090"]["strategy"] == machines["8x RTX4090"]["strategy"] == "fsdp"
    assert machines["1x H100"]["strategy"] == "single"
    for offer in result["ranked"]:
        assert offer["peak_gib"] <= plan.usable_gib(plan.GPUS[offer["gpu"]]), offer["machine"]
    assert [o["expected_usd"] for o in result["ranked"]] == sorted(o["expected_usd"] for o in result["ranked"])
    # One 24 GB card cannot hold it: excluded with the reason.
    assert any(e["gpu"] == "RTX4090" and "needs ~" in e["reason"] for e in result["excluded"])

    # The FSDP share, by its own arithmetic: a quarter of the NF4 base on each of 4 GPUs, plus
    # the rest of two gathered layers and of the root unit (embeddings, output layer, norm).
    shape = plan.KNOWN_SHAPES["llama-3.1-70b"]
    linear = shape.layers * shape.layer_linear_params
    nf4 = 0.5 + 1 / 64 + 4 / (64 * 256)
    other = (shape.total_params - linear) * 2
    four = machines["4x RTX4090"]["memory"]
    assert four["base_weights"] == pytest.approx((linear * nf4 + other) / 4 / GIB, abs=1e-3)
    assert four["communication_buffers"] == pytest.approx((2 * shape.layer_linear_params * nf4 + other) * 3 / 4 / GIB,
                                                          abs=1e-3)
    eight = machines["8x RTX4090"]["memory"]
    assert eight["base_weights"] == pytest.approx(four["base_weights"] / 2, abs=1e-3)
    # Host RAM: the first process holds the whole 4-bit base while it shards it, plus each process.
    needed = ((linear * nf4 + other) + 4 * plan.HOST_PER_PROCESS_GIB * GIB) / GIB
    assert machines["4x RTX4090"]["host_ram_needed_gib"] == pytest.approx(needed, abs=0.1)


def test_the_seeds_comparison_two_4090s_against_one_a100_in_one_plan(make_params, snapshot):
    params = make_params(*EIGHT_B_LORA, "compute.clouds=[]", "train.max_steps=1000")
    result = plan.make_plan(params)
    machines = first_per_machine(result)
    two, a100 = machines["2x RTX4090"], machines["1x A100"]
    assert (two["strategy"], a100["strategy"]) == ("ddp", "single")
    # Data parallel: one GPU's compute for the same micro-batch and checkpointing, halved, at 95%.
    setup = replace(plan.base_setup(params), micro_batch=two["micro_batch"], checkpointing=two["gradient_checkpointing"])
    one_gpu = plan.hours_on(plan.GPUS["RTX4090"], result["work"], setup, plan.load_model_shape(params.model.base))
    assert two["compute_hours"] == pytest.approx(one_gpu["compute_hours"] / 2 / 0.95, rel=1e-3)
    assert 0 < two["communication_hours"] < 0.01 * two["compute_hours"]  # the adapter's gradients are a few MB
    # What training logs as its estimate on the machine it got: the same numbers.
    logged = plan.estimate_for_gpu(params, "RTX4090", two["usd_per_hour"], gpus=2)
    assert logged["estimated_hours"] == two["hours"]
    assert logged["estimated_cost_usd"] == pytest.approx(two["usd_per_run"], rel=1e-3)
    # Side by side in the table: dollars and hours of each.
    text = plan.render_table(result, top=len(result["candidates"]))
    for offer in (two, a100):
        row = next(line for line in text.splitlines() if line[7:25].strip() == offer["machine"]
                   and offer["cloud"] in line)
        cells = row.split()
        assert f"{offer['hours']:.2f}" in cells and f"{offer['usd_per_run']:.2f}" in cells


def seventy_b_config():
    """Llama 3.1 70B's config.json, as the trainer reads it from the loaded model."""
    from transformers import LlamaConfig

    shape = plan.KNOWN_SHAPES["llama-3.1-70b"]
    return LlamaConfig(hidden_size=shape.hidden, num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                       num_key_value_heads=shape.kv_heads, intermediate_size=shape.intermediate, vocab_size=shape.vocab,
                       tie_word_embeddings=False, max_position_embeddings=131072)


def test_under_fsdp_the_trainer_takes_the_micro_batch_and_checkpointing_its_plan_chose(make_params, snapshot):
    from {{ cookiecutter.package_name }}.train import sharded_fit

    params = make_params(*SEVENTY_B_QLORA, "compute.clouds=[]")
    four = first_per_machine(plan.make_plan(params))["4x RTX4090"]
    # What a 4090 reports as its total memory, on each of the 4 processes.
    fit = sharded_fit.choose_sharded_fit(seventy_b_config(), params, 4, "NVIDIA GeForce RTX 4090", 25_386_352_640)
    assert fit.micro_batch == four["micro_batch"] == 1
    assert fit.checkpointed == round(four["gradient_checkpointing"] * 80)
    # 1024-token rows of a 70B model do not fit a 24 GB card's share without it: the plan counted on it.
    assert fit.checkpointed > 0
    # Two such cards cannot hold the 4-bit base at all: refused before training, with the planner's reason.
    with pytest.raises(ConfigError, match=r"FSDP over 2 GPUs: needs ~[\d.]+ GiB .* more or larger GPUs"):
        sharded_fit.choose_sharded_fit(seventy_b_config(), params, 2, "NVIDIA GeForce RTX 4090", 25_386_352_640)


# ======================================================================== the deadline


def cli_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="test")
    plan.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["plan", *argv])


def test_a_deadline_buys_several_gpus_and_none_takes_the_cheapest(make_params, snapshot, tmp_path, capsys):
    # 20M tokens of 8B LoRA: 1,221 steps x 16 rows x 1,024 tokens.
    params = make_params(*EIGHT_B_LORA, "compute.clouds=[]", "train.max_steps=1221")
    assert plan.run_workload(plan.load_model_shape(params.model.base), params, None)["tokens"] == 20_004_864
    cheapest = plan.make_plan(params)["cheapest"]
    assert cheapest["gpus"] * cheapest["nodes"] == 1  # no deadline: the single cheapest machine
    hurried = plan.make_plan(params, deadline_hours=0.25)
    best = hurried["cheapest"]
    assert best["gpus"] > 1 and best["hours"] <= 0.25 < cheapest["hours"]
    in_time = [o for o in hurried["ranked"] if o["spot"] and o["hours"] <= 0.25]
    assert best == min(in_time, key=lambda o: o["usd_per_run"]) and best["usd_per_run"] > cheapest["usd_per_run"]
    assert hurried["deadline"] == {"hours": 0.25, "met": True, "short_by_hours": None}
    assert set(hurried["candidates"]) == {o["machine"] for o in in_time}
    assert (f"Deadline 0.25 h: {best['machine']} on {best['cloud']}, {best['hours']:.2f} h for "
            f"${best['usd_per_run']:,.2f}; without it {cheapest['machine']}") in plan.render_table(hurried)
    # params.yaml says the same as --deadline, and the CLI passes it on.
    same = plan.make_plan(make_params(*EIGHT_B_LORA, "compute.clouds=[]", "train.max_steps=1221",
                                      "budget.deadline_hours=0.25", "budget.max_run_usd=100"))
    assert same["cheapest"] == best
    path = tmp_path / "params-deadline.yaml"
    path.write_text(yaml.safe_dump(params.model_copy(update={"budget": params.budget.model_copy(
        update={"max_run_usd": 100})}).model_dump()))
    assert plan.run(cli_args("--params", str(path), "--deadline", "0.25", "--json")) == 0
    assert json.loads(capsys.readouterr().out)["cheapest"]["machine"] == best["machine"]


def test_a_deadline_nothing_meets_says_by_how_much(make_params, snapshot, tmp_path):
    params = make_params(*EIGHT_B_LORA, "compute.clouds=[]", "train.max_steps=1221")
    result = plan.make_plan(params, deadline_hours=0.1)  # setup alone takes longer
    fastest = result["fastest"]
    assert result["cheapest"] is None and result["deadline"]["met"] is False
    assert result["deadline"]["short_by_hours"] == pytest.approx(fastest["hours"] - 0.1, abs=1e-4)
    with pytest.raises(plan.DeadlineMissed) as refused:
        plan.check_budget(result, params)
    assert isinstance(refused.value, plan.BudgetExceeded)  # exit code 3, as over budget
    assert (f"no offer finishes within 0.1 h (--deadline / budget.deadline_hours): the fastest, {fastest['machine']} spot "
            f"on {fastest['cloud']}, takes {fastest['hours']:.2f} h, {fastest['hours'] - 0.1:.2f} h too long") in str(refused.value)
    with pytest.raises(ConfigError, match="--deadline 0: give the hours"):
        plan.run(cli_args("--params", str(PROJECT / "params.yaml"), "--deadline", "0"))


# ============================================================================ host RAM


def test_machines_without_the_host_ram_are_excluded_with_the_reason(make_params, tmp_path, monkeypatch):
    root = tmp_path / "sky"
    # The same 8x RTX 4090 machine with 48 GiB of RAM (too little to load the 4-bit base once)
    # on one cloud and 512 GiB on the other.
    write_catalog(root, "runpod", ["8x_RTX4090_SECURE,RTX4090,8,128,48,,5.52,2.80,US,"])
    write_catalog(root, "vast", ["8x-RTX4090,RTX4090,8,128,512,,3.20,2.00,US,"])
    monkeypatch.setenv("SKY_RUNTIME_DIR", str(root))
    result = plan.make_plan(make_params(*SEVENTY_B_QLORA, "compute.clouds=[runpod, vast]"))
    assert {(o["machine"], o["cloud"]) for o in result["ranked"]} == {("8x RTX4090", "vast")}
    (refused,) = result["excluded_machines"]
    assert (refused["machine"], refused["cloud"]) == ("8x RTX4090", "runpod")
    usable = 48 * plan.HOST_USABLE - plan.HOST_RESERVED_GIB
    assert "FSDP needs ~" in refused["reason"] and f"the machine has 48 GiB, {usable:.0f} usable" in refused["reason"]
    assert "Machines of several GPUs excluded:\n  8x RTX4090 on runpod: " in plan.render_table(result)


def test_the_longest_row_never_pins_more_host_ram_than_a_machine_has(make_params, tmp_path, monkeypatch):
    def longest_on_h200(ram_gib: int) -> dict:
        root = tmp_path / f"sky-{ram_gib}"
        write_catalog(root, "runpod", [f"1x_H200_SECURE,H200,1,24,{ram_gib},,3.59,2.10,US,"])
        monkeypatch.setenv("SKY_RUNTIME_DIR", str(root))
        result = plan.make_plan(make_params(*SEVENTY_B_QLORA, "compute.clouds=[runpod]"))
        return next(g for g in result["gpus"] if g["gpu"] == "H200")["longest_row"]

    roomy, tight = longest_on_h200(2048), longest_on_h200(64)
    spare = 64 * plan.HOST_USABLE - plan.HOST_RESERVED_GIB - plan.HOST_PER_PROCESS_GIB  # one process
    assert roomy["offload_activations"] and roomy["host_ram_gib"] > spare
    # 64 GiB: offloading a row longer than checkpointing alone allows would pin more than that.
    assert tight["bound"] == "host RAM" and 0 <= tight["host_ram_gib"] <= spare
    assert 0 < tight["tokens"] < roomy["tokens"]


# ==================================================================== communication


def test_collectives_take_bytes_over_the_links_in_the_readme_table():
    pcie = plan.Machine("RTX4090", gpus=4, interconnect="pcie")
    bandwidth = plan.COMMUNICATION["pcie"][0] * 1e9
    assert plan.collective_seconds(pcie, 1e9) == pytest.approx(30e-6 + 1e9 * 3 / 4 / bandwidth)
    assert plan.collective_seconds(pcie, 1e9, "all_reduce") == pytest.approx(30e-6 + 2e9 * 3 / 4 / bandwidth)
    two_nodes = plan.Machine("H100", gpus=8, nodes=2, interconnect="nvswitch")
    expected = 30e-6 + 1e9 * 7 / 8 / (plan.COMMUNICATION["nvswitch"][0] * 1e9) + 1e9 / 2 / (plan.COMMUNICATION["network"][0] * 1e9)
    assert plan.collective_seconds(two_nodes, 1e9) == pytest.approx(expected)
    assert plan.collective_seconds(plan.Machine("H100"), 1e9) == 0.0
    # The interconnect of a catalog row: listed, else eight SXM GPUs or an SXM instance type, else PCIe.
    offer = prices.Offer("aws", "p4d.24xlarge", "A100", 8, "us-east-1", "", 21.9, 8.5, "test")
    assert plan.machine_of(offer).interconnect == "nvswitch"
    assert plan.machine_of(replace(offer, instance_type="gpu_4x_a100", count=4)).interconnect == "pcie"
    assert plan.machine_of(replace(offer, count=4, interconnect="nvlink")).interconnect == "nvlink"
    readme = (PROJECT / "README.md").read_text(encoding="utf-8")
    assert plan.communication_table() in readme  # the table the README shows is the one planned with


# ========================================================================= preemptions


def test_the_expected_spot_cost_counts_restarts_then_falls_back_on_demand(make_params, snapshot):
    offer = {"hours": 10.0, "setup_hours": 0.2, "nodes": 1, "usd_per_hour": 1.0}
    rate = plan.PREEMPTIONS_PER_NODE_HOUR
    lost = 0.2 + 0.5 / 2  # a new VM's setup and half of a 0.5 h checkpoint interval
    spot = plan.expected_spot_run(offer, 3.0, 0.5, None)
    assert spot["preemptions"] == pytest.approx(rate * 10)
    assert spot["expected_hours"] == pytest.approx(10 + rate * 10 * lost)
    assert spot["expected_usd"] == pytest.approx(1.0 * (10 + rate * 10 * lost)) and not spot["fallback_on_demand"]
    # At most 0 recoveries: the whole run on demand (a fresh VM's setup included).
    assert plan.expected_spot_run(offer, 3.0, 0.5, 0)["expected_usd"] == pytest.approx(3.0 * 10)
    # 30 h expects 3 preemptions; after the first, the rest on demand: spot until it (1 / rate
    # hours, of which one restart and the setup did no work), then the remaining work plus a setup.
    longer = {**offer, "hours": 30.0}
    once = plan.expected_spot_run(longer, 3.0, 0.5, 1)
    on_spot = 1 / rate
    remaining = 30.0 - 0.2 - (on_spot - lost - 0.2) + 0.2
    assert once["fallback_on_demand"] and once["preemptions"] == 1
    assert once["expected_hours"] == pytest.approx(on_spot + remaining, abs=1e-3)
    assert once["expected_usd"] == pytest.approx(1.0 * on_spot + 3.0 * remaining, abs=1e-3)
    # In the plan: every spot offer carries it; with compute.max_preemptions, long runs fall back.
    params = make_params(*EIGHT_B_LORA, "compute.clouds=[]", "train.max_steps=20000", "compute.max_preemptions=0",
                         "budget.max_run_usd=1000")
    result = plan.make_plan(params)
    for o in result["ranked"]:
        if o["spot"]:
            assert o["fallback_on_demand"] is (o["on_demand_usd_per_hour"] is not None)
        else:
            assert (o["expected_usd"], o["preemptions"]) == (o["usd_per_run"], 0.0)
    assert "then on-demand after compute.max_preemptions" in plan.render_table(result)
