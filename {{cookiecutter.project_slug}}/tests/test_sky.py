"""The SkyPilot tasks, checked by SkyPilot itself and by our validator.

SkyPilot runs in its own virtualenv ($SKY_PYTHON, else .venv-sky/bin/python: `make setup-sky`)
because its click pin clashes with this project's. Each test module batches its questions into
one subprocess there (importing sky takes about a second). Nothing here needs a network or
cloud credentials: the optimizer reads small fixture catalogs from a temporary SKY_RUNTIME_DIR,
and the enabled clouds are patched the way SkyPilot's own tests do (`enable_all_clouds`).

What this proves: SkyPilot accepts every task file; with these prices its optimizer picks the
cheapest spot offer (or, with `ordered`, the first GPU in our order); our validator stops the
typos SkyPilot lets through. What it cannot prove: that a cloud has capacity or quota, that
credentials and the bucket work, or what a real VM's preemption looks like (docs/launch.md).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from {{ cookiecutter.package_name }}.compute import skytask

PROJECT = Path(__file__).resolve().parents[1]
TASK_FILES = sorted((PROJECT / "sky").glob("*.yaml"))
TRAIN_TASK = PROJECT / "sky/train.yaml"


@pytest.fixture(scope="session")
def sky_home(tmp_path_factory) -> dict[str, str]:
    """A HOME / SKY_RUNTIME_DIR of its own: the user's ~/.sky is never read or written."""
    home = tmp_path_factory.mktemp("sky-home")
    return {"HOME": str(home), "SKY_RUNTIME_DIR": str(home), "SKYPILOT_DISABLE_USAGE_COLLECTION": "1"}


# --------------------------------------------------------------------------- SkyPilot's parser


@pytest.fixture(scope="session")
def parsed(sky_python, sky_home) -> dict[str, dict]:
    return skytask.skypilot_check(TASK_FILES, sky_python, env=sky_home)


def test_there_are_task_files_to_check():
    assert {p.name for p in TASK_FILES} >= {"train.yaml", "train-multinode.yaml"}


def test_skypilot_accepts_every_task_file(parsed):
    rejected = {path: entry["error"] for path, entry in parsed.items() if not entry["ok"]}
    assert not rejected
    assert len(parsed) == len(TASK_FILES)


def test_skypilot_reads_our_candidates_and_nodes(parsed):
    for path in TASK_FILES:
        config = yaml.safe_load(path.read_text())
        entry = parsed[str(path.resolve())]
        gpus = config["resources"]["accelerators"]
        clouds = config["resources"]["any_of"]
        assert entry["name"] == config["name"]
        assert entry["num_nodes"] == config.get("num_nodes", 1)
        # accelerators x any_of: one spot candidate per GPU per cloud.
        assert len(entry["candidates"]) == len(gpus) * len(clouds)
        assert all("[Spot]" in candidate for candidate in entry["candidates"])
    assert parsed[str((PROJECT / "sky/train-multinode.yaml").resolve())]["num_nodes"] > 1


def test_verify_passes_our_files_and_names_a_rejected_one(sky_python, sky_home, tmp_path):
    # skytask.verify is what the template's tests call on every bake.
    config = yaml.safe_load(TRAIN_TASK.read_text())
    config["resources"]["use_spot"] = "sometimes"  # SkyPilot's schema wants a boolean
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    found = skytask.verify([*TASK_FILES, bad], sky_python, env=sky_home)
    assert len(found) == 1, found  # our files: nothing; bad.yaml: SkyPilot's schema check
    assert found[0].startswith(f"{bad.resolve()}: SkyPilot rejects it:") and "use_spot" in found[0]


# --------------------------------------------------------------------------- the optimizer, offline

# Prices of our choosing, per GPU-hour. Lambda has no spot market: its L4, the cheapest
# on-demand GPU here, must never win a spot task. Every GPU the task lists (`plan --write`
# may change them) must appear here: test_fixture_prices_every_gpu_the_task_lists says so.
OFFERS = [
    # cloud,  instance type,     GPU,    on-demand, spot
    ("aws", "g6.xlarge", "L4", 0.80, 0.38),
    ("aws", "g5.xlarge", "A10G", 1.01, 0.42),
    ("aws", "g6e.xlarge", "L40S", 1.86, 0.71),
    ("aws", "g4dn.xlarge", "T4", 0.53, 0.21),
    ("aws", "p5.4xlarge", "H100", 6.88, 3.10),
    ("runpod", "1x_L4_SECURE", "L4", 0.43, 0.26),
    ("runpod", "1x_L40S_SECURE", "L40S", 0.86, 0.55),
    ("runpod", "1x_A100_SECURE", "A100", 1.19, 0.79),
    ("runpod", "1x_A10G_SECURE", "A10G", 0.69, 0.40),
    ("runpod", "1x_H100_SECURE", "H100", 2.39, 1.45),
    ("runpod", "1x_RTX4090_SECURE", "RTX4090", 0.69, 0.34),
    ("runpod", "1x_A100-80GB_SECURE", "A100-80GB", 1.64, 0.89),
    ("runpod", "1x_H200_SECURE", "H200", 3.59, 2.10),
    ("lambda", "gpu_1x_l4", "L4", 0.20, None),
    ("lambda", "gpu_1x_a100", "A100", 0.99, None),
    ("lambda", "gpu_1x_a10", "A10", 0.60, None),
]
CLOUDS = ["aws", "runpod", "lambda"]
COUNTS = (1, 2, 4, 8)  # every offer also comes as 2, 4 and 8 GPUs, at that multiple of the price
HEADER = [
    "InstanceType", "AcceleratorName", "AcceleratorCount", "vCPUs", "MemoryGiB", "GpuInfo",
    "Price", "SpotPrice", "Region", "AvailabilityZone",
]
ZONES = {"aws": ("us-east-1", "use1-az1"), "runpod": ("US", "US-CA-1"), "lambda": ("us-east-1", "us-east-1")}


def write_catalogs(root: Path) -> None:
    """SkyPilot's catalog CSVs (v8 schema) under <root>/.sky/catalogs/v8/. Without a .meta md5
    SkyPilot treats them as edited by hand and never replaces them with downloaded ones."""
    catalogs = root / ".sky/catalogs/v8"
    (catalogs / "common").mkdir(parents=True, exist_ok=True)
    gpus = sorted({gpu for _, _, gpu, _, _ in OFFERS})
    with (catalogs / "common/accelerators.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["AcceleratorName", "Clouds"])
        names = {"aws": "AWS", "runpod": "RunPod", "lambda": "Lambda"}
        for gpu in gpus:
            writer.writerow([gpu, str(sorted(names[c] for c, _, g, _, _ in OFFERS if g == gpu))])
    for cloud in CLOUDS:
        (catalogs / cloud).mkdir(exist_ok=True)
        region, zone = ZONES[cloud]
        with (catalogs / cloud / "vms.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(HEADER)
            for offer_cloud, instance, gpu, price, spot in OFFERS:
                if offer_cloud != cloud:
                    continue
                for n in COUNTS:
                    info = {"Gpus": [{"Name": gpu, "Manufacturer": "NVIDIA", "Count": n, "MemoryInfo": dict(SizeInMiB=24576)}]}
                    name = instance if n == 1 else f"{instance}-{n}x"
                    writer.writerow([
                        name, gpu, n, 8 * n, 32 * n, repr(info), round(price * n, 4),
                        "" if spot is None else round(spot * n, 4), region, zone,
                    ])


def cheapest(gpus: dict[str, int], spot: bool) -> tuple[str, str] | None:
    """(cloud, GPU) the optimizer should pick: the lowest hourly price among the offers for the
    task's GPUs (SkyPilot estimates every candidate at 1 hour, so the hourly price decides)."""
    offers = [((s if spot else p) * gpus[g], c, g) for c, _, g, p, s in OFFERS if g in gpus and (s is not None or not spot)]
    return min(offers)[1:] if offers else None


def picked(result: dict) -> tuple[str, str]:
    """(cloud, GPU) of an optimizer answer."""
    assert "error" not in result, result["error"]
    (gpu,) = result["gpus"]
    return result["cloud"], gpu


_OPTIMIZE = r"""
import json, sys
request = json.load(sys.stdin)
import sky
from sky import check as sky_check, optimizer
from sky.utils import registry
# As SkyPilot's tests/common_test_fixtures.py (enable_all_clouds): these clouds count as
# enabled and nothing asks a cloud for credentials.
enabled = [registry.CLOUD_REGISTRY.from_str(name) for name in request["clouds"]]
sky_check.get_cached_enabled_clouds_or_refresh = lambda *args, **kwargs: enabled
sky_check.check_capability = lambda *args, **kwargs: None
results = {}
for case, config in request["cases"].items():
    try:
        task = sky.Task.from_yaml_config(config)
        dag = sky.Dag()
        dag.add(task)
        optimizer.Optimizer.optimize(dag, quiet=True)
        best = task.best_resources
        results[case] = {"cloud": str(best.cloud).lower(), "gpus": best.accelerators, "spot": best.use_spot,
                         "instance_type": best.instance_type, "hourly": best.get_cost(3600)}
    except Exception as err:
        results[case] = {"error": f"{type(err).__name__}: {err}"}
with open(request["out"], "w") as f:
    json.dump(results, f)
"""


def task_for_fixture_clouds(config: dict) -> dict:
    """The project's task, searching the fixture's clouds instead of the ones chosen at bake time."""
    task = json.loads(json.dumps(config))
    task["resources"]["any_of"] = [{"infra": cloud} for cloud in CLOUDS]
    return task


@pytest.fixture(scope="session")
def optimized(sky_python, sky_home, tmp_path_factory) -> dict:
    """Every optimizer question, answered in one SkyPilot process."""
    root = Path(sky_home["SKY_RUNTIME_DIR"])
    write_catalogs(root)
    config = task_for_fixture_clouds(yaml.safe_load(TRAIN_TASK.read_text()))

    def variant(gpus: dict, spot: bool = True) -> dict:
        task = json.loads(json.dumps(config))
        task["resources"].update(accelerators=gpus, use_spot=spot)
        return task

    cases = {
        "spot": config,  # the project's own candidates
        "spot_l4": variant({"L4": 1}),
        "on_demand_l4": variant({"L4": 1}, spot=False),
        # Our order (A100 first) against the price order (L4 is cheaper everywhere).
        "ordered": skytask.with_ordered_candidates(variant({"L4": 1, "A100": 1}), ["A100", "L4"]),
        # Machines of several GPUs, as `plan --write` names them: the seed's 2x RTX 4090 against 1x A100 80GB.
        "machines": variant({"RTX4090": 2, "A100-80GB": 1}),
    }
    out = tmp_path_factory.mktemp("optimize") / "results.json"
    # No cloud credentials reach SkyPilot (with the aws extra installed it would ask AWS for
    # the account's zone names): the fixture catalogs are all it sees.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GOOGLE_", "CLOUDSDK_", "AZURE_"))}
    env.update(sky_home, AWS_EC2_METADATA_DISABLED="true")
    done = subprocess.run(
        [str(sky_python), "-c", _OPTIMIZE],
        input=json.dumps({"clouds": CLOUDS, "cases": cases, "out": str(out)}),
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return {"results": json.loads(out.read_text()), "gpus": config["resources"]["accelerators"]}


def run_optimizer(cases: dict, sky_python, sky_home, tmp_path) -> dict:
    """The optimizer's pick for each task config, against the fixture catalogs (written by `optimized`)."""
    out = tmp_path / "results.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GOOGLE_", "CLOUDSDK_", "AZURE_"))}
    env.update(sky_home, AWS_EC2_METADATA_DISABLED="true")
    done = subprocess.run([str(sky_python), "-c", _OPTIMIZE], input=json.dumps({"clouds": CLOUDS, "cases": cases, "out": str(out)}),
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def test_optimizer_prices_machines_of_several_gpus(optimized):
    result = optimized["results"]["machines"]
    assert picked(result) == cheapest({"RTX4090": 2, "A100-80GB": 1}, spot=True) == ("runpod", "RTX4090")
    assert result["gpus"] == {"RTX4090": 2} and result["hourly"] == pytest.approx(2 * 0.34)


def test_what_plan_writes_for_several_gpus_skypilot_accepts(optimized, sky_python, sky_home, make_params, tmp_path,
                                                            monkeypatch):
    """70B QLoRA: `plan --write` names machines of several GPUs, the FSDP config and one node;
    SkyPilot's parser reads them, and its optimizer picks one of them."""
    from {{ cookiecutter.package_name }}.compute import plan

    monkeypatch.setenv("SKY_RUNTIME_DIR", str(tmp_path / "no-sky"))  # plan from the bundled snapshot
    params = make_params("model.base=meta-llama/Llama-3.1-70B", "model.method=qlora", "model.dtype=auto",
                         "data.max_length=1024", "train.micro_batch=auto", "train.global_batch=16",
                         "train.gradient_checkpointing=auto", "compute.clouds=[]")
    task = tmp_path / "train.yaml"
    task.write_text(TRAIN_TASK.read_text())
    written = plan.write_sky_candidates(plan.make_plan(params), task, top=4)
    assert written["accelerate_config"] == "configs/accelerate/fsdp.yaml" and written["num_nodes"] == 1
    assert any(count > 1 for count in written["accelerators"].values())
    config = yaml.safe_load(task.read_text())
    assert config["resources"]["accelerators"] == written["accelerators"]
    assert config["envs"]["ACCELERATE_CONFIG"] == written["accelerate_config"] and config["num_nodes"] == 1
    # Two machines of 8 H100: num_nodes 2.
    two = {"machine": "2 nodes x 8x H100", "gpu": "H100", "gpus": 8, "nodes": 2, "spot": True, "strategy": "fsdp",
           "accelerate_config": "configs/accelerate/fsdp.yaml"}
    nodes = tmp_path / "nodes.yaml"
    nodes.write_text(TRAIN_TASK.read_text())
    assert plan.write_sky_candidates({"cheapest": two, "ranked": [two], "candidates": [two["machine"]]}, nodes)["num_nodes"] == 2
    assert skytask.verify([task, nodes], sky_python, env=sky_home) == []
    parsed = skytask.skypilot_check([task, nodes], sky_python, env=sky_home)
    assert parsed[str(nodes.resolve())]["num_nodes"] == 2
    assert len(parsed[str(task.resolve())]["candidates"]) == len(written["accelerators"]) * len(config["resources"]["any_of"])
    results = run_optimizer({"written": task_for_fixture_clouds(config)}, sky_python, sky_home, tmp_path)
    assert picked(results["written"]) == cheapest(written["accelerators"], spot=True)
    gpu = picked(results["written"])[1]
    assert results["written"]["gpus"] == {gpu: written["accelerators"][gpu]}


def test_the_train_task_joins_several_machines_into_one_job(tmp_path, monkeypatch):
    """num_nodes above 1 (what `plan --write` sets for a multi-node plan): train.yaml's run section
    starts accelerate on every machine with the rendezvous SkyPilot's variables describe, and only
    the first machine evaluates (run here with stand-in commands, as tests/test_launch.py does)."""
    from test_launch import PACKAGE, run_section

    for key in ("PR_NUMBER", "GITHUB_REF", "GITHUB_HEAD_REF", "GITHUB_REF_NAME", "GITHUB_SHA", "HF_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(PROJECT)
    node = {"SKYPILOT_NUM_NODES": "2", "SKYPILOT_NUM_GPUS_PER_NODE": "8", "SKYPILOT_NODE_IPS": "10.0.0.7\n10.0.0.9",
            "ACCELERATE_CONFIG": "configs/accelerate/fsdp.yaml"}
    code, commands = run_section(TRAIN_TASK, tmp_path, SKYPILOT_NODE_RANK="1", **node)
    assert code == 0 and [c[0] for c in commands] == [PACKAGE, "accelerate"]  # a worker does not evaluate
    flags = dict(zip(commands[1][2:14:2], commands[1][3:14:2], strict=True))
    assert flags == {
        "--config_file": "configs/accelerate/fsdp.yaml", "--num_machines": "2", "--machine_rank": "1",
        "--num_processes": "16", "--main_process_ip": "10.0.0.7", "--main_process_port": "29500",
    }
    assert commands[1][14:17] == ["-m", PACKAGE, "train"]
    code, commands = run_section(TRAIN_TASK, tmp_path, SKYPILOT_NODE_RANK="0", **node)
    assert code == 0 and [c[:2] for c in commands] == [[PACKAGE, "prepare"], [PACKAGE, "evaluate"]]  # trained already


def test_fixture_prices_every_gpu_the_task_lists():
    gpus = yaml.safe_load(TRAIN_TASK.read_text())["resources"]["accelerators"]
    missing = [gpu for gpu in gpus if gpu not in {g for _, _, g, _, _ in OFFERS}]
    assert not missing, f"add fixture offers (OFFERS) for {missing}"


def test_optimizer_picks_the_cheapest_spot_offer(optimized):
    best = optimized["results"]["spot"]
    cloud, gpu = picked(best)
    assert (cloud, gpu) == cheapest(optimized["gpus"], spot=True)
    assert best["spot"] is True
    spot_price = next(s for c, _, g, _, s in OFFERS if c == cloud and g == gpu)
    assert best["hourly"] == pytest.approx(spot_price * optimized["gpus"][gpu])


def test_spot_never_lands_on_a_cloud_without_spot(optimized):
    # On demand, Lambda's L4 is the cheapest; as spot it does not exist, so RunPod's wins. The
    # optimizer reads the fixture's spot column, not just the first cheap row.
    results = optimized["results"]
    assert picked(results["on_demand_l4"]) == ("lambda", "L4") == cheapest({"L4": 1}, spot=False)
    assert picked(results["spot_l4"]) == ("runpod", "L4") == cheapest({"L4": 1}, spot=True)
    assert results["spot_l4"]["hourly"] == pytest.approx(0.26)
    assert picked(results["spot"])[0] != "lambda"


def test_ordered_candidates_follow_our_order_not_the_price(optimized):
    # A100 first although L4 is cheaper: the first GPU in the order, on its cheapest spot cloud.
    assert cheapest({"L4": 1, "A100": 1}, spot=True) == ("runpod", "L4")
    assert picked(optimized["results"]["ordered"]) == ("runpod", "A100")
    assert optimized["results"]["ordered"]["hourly"] == pytest.approx(0.79)


# --------------------------------------------------------------------------- our validator


def load_train_task():
    return skytask.load(TRAIN_TASK)


def test_our_task_files_pass_our_rules():
    for path in TASK_FILES:
        config = skytask.check_file(path)
        recovery = config["resources"]["job_recovery"]
        assert recovery["strategy"] == "EAGER_NEXT_REGION"
        assert skytask.EXIT_PREEMPTED in recovery["recover_on_exit_codes"]


def test_misspelled_strategy_is_rejected_with_file_line_and_suggestion():
    config, lines = load_train_task()
    config["resources"]["job_recovery"]["strategy"] = "EAGER_NEXT_REGON"
    found = skytask.problems(config, lines, TRAIN_TASK)
    line = lines[("resources", "job_recovery", "strategy")]
    assert found == [
        f"{TRAIN_TASK}:{line}: resources.job_recovery.strategy: unknown strategy 'EAGER_NEXT_REGON' "
        "(did you mean 'EAGER_NEXT_REGION'?); SkyPilot knows: EAGER_NEXT_REGION, FAILOVER"
    ]


def test_unknown_job_recovery_keys_are_rejected():
    config, lines = load_train_task()
    recovery = config["resources"]["job_recovery"]
    recovery["max_restart_on_errors"] = recovery.pop("max_restarts_on_errors")  # the classic typo
    recovery["backoff_seconds"] = 30
    found = skytask.problems(config, lines, TRAIN_TASK)
    assert len(found) == 2, found
    assert "resources.job_recovery.max_restart_on_errors: unknown key (did you mean 'max_restarts_on_errors'?)" in found[0]
    assert "resources.job_recovery.backoff_seconds: unknown key; SkyPilot knows: strategy, max_restarts_on_errors" in found[1]


def test_exit_code_75_must_be_recovered():
    config, lines = load_train_task()
    config["resources"]["job_recovery"]["recover_on_exit_codes"] = [1]
    found = skytask.problems(config, lines, TRAIN_TASK)
    assert len(found) == 1 and "recover_on_exit_codes: must include 75" in found[0]
    assert found[0].startswith(f"{TRAIN_TASK}:{lines[('resources', 'job_recovery', 'recover_on_exit_codes')]}:")
    # Any SkyPilot task may leave it out; the types are still checked.
    assert skytask.problems(config, lines, TRAIN_TASK, ours=False) == []
    config["resources"]["job_recovery"]["recover_on_exit_codes"] = ["75", 300, True]
    found = skytask.problems(config, lines, TRAIN_TASK, ours=False)
    assert found and "exit codes are whole numbers 0-255 (got '75', 300, True)" in found[0]


def test_job_recovery_per_candidate_is_checked_too():
    config, lines = load_train_task()
    config["resources"]["any_of"][0]["job_recovery"] = {"strategy": "FAILOVR"}
    found = skytask.problems(config, lines, TRAIN_TASK, ours=False)
    expected = "resources.any_of[0].job_recovery.strategy: unknown strategy 'FAILOVR' (did you mean 'FAILOVER'?)"
    assert any(expected in message for message in found), found
    assert any("SkyPilot needs one for all candidates" in m for m in found)


def test_checkpoints_must_go_to_a_mount_cached_bucket():
    config, lines = load_train_task()
    root = config["envs"]["CHECKPOINT_ROOT"]
    config["file_mounts"][root]["mode"] = "MOUNT"
    found = skytask.problems(config, lines, TRAIN_TASK)
    assert len(found) == 1 and f"file_mounts.{root}.mode: must be MOUNT_CACHED (got 'MOUNT')" in found[0]
    config["envs"]["CHECKPOINT_ROOT"] = "/tmp/checkpoints"
    found = skytask.problems(config, lines, TRAIN_TASK)
    assert len(found) == 1 and "envs.CHECKPOINT_ROOT: '/tmp/checkpoints' is not a bucket under file_mounts" in found[0]


def test_use_spot_env_must_match_resources():
    config, lines = load_train_task()
    config["resources"]["use_spot"] = False
    found = skytask.problems(config, lines, TRAIN_TASK)
    assert len(found) == 1 and "envs.USE_SPOT: is 'true' but resources.use_spot is false" in found[0]


def test_a_committed_secret_value_is_rejected():
    config, lines = load_train_task()
    config["secrets"]["HF_TOKEN"] = "hf_abc123"
    found = skytask.problems(config, lines, TRAIN_TASK)
    assert len(found) == 1 and "secrets.HF_TOKEN: has a value in a committed file" in found[0]
    assert "hf_abc123" not in found[0]


def test_duplicate_keys_and_bad_yaml_name_the_line(tmp_path):
    task = tmp_path / "dup.yaml"
    task.write_text("name: a\nresources:\n  use_spot: true\n  use_spot: false\n")
    with pytest.raises(skytask.TaskError, match=rf"{task}:4: not valid YAML \(duplicate key 'use_spot'\)"):
        skytask.load(task)
    task.write_text("name: [unclosed\n")
    with pytest.raises(skytask.TaskError, match=rf"{task}:2: not valid YAML"):
        skytask.load(task)


def test_validator_cli_exits_2_with_every_problem(tmp_path):
    config, _ = load_train_task()
    config["resources"]["job_recovery"] = {"strategy": "EAGER", "recover_on_exit_codes": [75]}
    bad = tmp_path / "train.yaml"
    bad.write_text(yaml.safe_dump(config))
    assert skytask.main(["--no-skypilot", str(bad)]) == 2
    assert skytask.main(["--no-skypilot", *map(str, TASK_FILES)]) == 0


def test_missing_skypilot_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.delenv("SKY_PYTHON", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(skytask.SkyNotFound, match="make setup-sky"):
        skytask.find_sky_python(tmp_path)
    with pytest.raises(skytask.SkyNotFound, match="make setup-sky"):
        skytask.find_sky_cli(tmp_path)
    monkeypatch.setenv("SKY_PYTHON", str(tmp_path / "nope/python"))
    with pytest.raises(skytask.SkyNotFound, match="SKY_PYTHON=.*no such file"):
        skytask.find_sky_python(tmp_path)
