"""`sweep`: variants expanded and validated, priced against one budget before anything starts,
run one after another here (the task's real run section, the tiny model, a real `mlflow
server`), stopped before a variant that would cross the budget, and summarised with the
Pareto front. The sky backend is tested up to `sky jobs launch` (a stand-in that records its
arguments and logs a run to MLflow as a job would) and SkyPilot's own parser and optimizer
on the task files it wrote; no cloud is called.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from {{ cookiecutter.package_name }}.cli import smoke_overrides
from {{ cookiecutter.package_name }}.compute import skytask, sweep
from {{ cookiecutter.package_name }}.config import load_params

from conftest import run_cli

PROJECT = Path(__file__).resolve().parents[1]
PARAMS = PROJECT / "params.yaml"
SKY_HEADER = "InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,GpuInfo,Price,SpotPrice,Region,AvailabilityZone"


@pytest.fixture
def prices(tmp_path) -> dict[str, str]:
    """A SkyPilot catalog with one spot L4 at $0.01/h: what `plan` prices every variant with."""
    root = tmp_path / "sky-runtime"
    path = root / ".sky/catalogs/v8/aws/vms.csv"
    path.parent.mkdir(parents=True)
    path.write_text(f"{SKY_HEADER}\ng6.xlarge,L4,1,4,16,,0.80,0.01,us-east-1,us-east-1a\n")
    return {"SKY_RUNTIME_DIR": str(root), "HOME": str(tmp_path)}


def tiny_sets(tmp: Path, tiny_model_dir: Path, sample_data: Path, *extra: str) -> list[str]:
    """`--set` arguments of a short tiny-model run, the same for every variant."""
    sets = [*smoke_overrides(load_params(PARAMS)), f"model.base={tiny_model_dir}", f"data.path={sample_data}",
            f"data.prepared_dir={tmp / 'prepared'}", "train.max_steps=2", "train.global_batch=4",
            "train.log_every_steps=1",
            "eval.generations=0", "tracking.system_metrics=false", "tracking.log_adapter=false", *extra]
    return [arg for s in sets for arg in ("--set", s)]


def sweep_cli(tmp: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return run_cli("sweep", "--checkpoint-root", str(tmp / "bucket"), "--sweep-dir", str(tmp / "sweeps"),
                   "--poll-seconds", "0.5", *args, CUDA_VISIBLE_DEVICES="", **env)


def runs_of(uri: str, sweep_id: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    return list(client.search_runs(ids, f"tags.sweep_id = '{sweep_id}'"))


def dominated(point, others) -> bool:
    return any(o[0] <= point[0] and o[1] <= point[1] and o != point for o in others)


# --------------------------------------------------------------------------- expanding


def test_a_grid_is_every_combination_in_a_stable_order():
    variants = sweep.expand(["lora.r=8,16,32", "train.learning_rate=1e-4,2e-4", "train.max_steps=50"])
    assert [v.name for v in variants] == ["v1", "v2", "v3", "v4", "v5", "v6"]
    assert variants[0].sets == ["lora.r=8", "train.learning_rate=1e-4", "train.max_steps=50"]
    assert variants[5].sets == ["lora.r=32", "train.learning_rate=2e-4", "train.max_steps=50"]
    assert variants[3].varying == {"lora.r": "16", "train.learning_rate": "2e-4"}  # the fixed key is not "varying"
    # Commas inside a YAML list are part of one value.
    listed = sweep.expand(["lora.target_modules=[q_proj,v_proj],all-linear"])
    assert [v.sets for v in listed] == [["lora.target_modules=[q_proj,v_proj]"], ["lora.target_modules=all-linear"]]


def test_a_sweep_file_gives_a_grid_a_list_and_fixed_values(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text("grid:\n  lora.r: [8, 16]\nvariants:\n  - {train.learning_rate: 1.0e-4}\n  - {lora.dropout: 0.1}\n"
                    "set:\n  lora.target_modules: [q_proj, v_proj]\n")
    variants = sweep.expand(["train.max_steps=20"], path)
    assert [v.sets for v in variants] == [
        ["lora.target_modules=[\"q_proj\",\"v_proj\"]", "lora.r=8", "train.max_steps=20", "train.learning_rate=0.0001"],
        ["lora.target_modules=[\"q_proj\",\"v_proj\"]", "lora.r=16", "train.max_steps=20", "train.learning_rate=0.0001"],
        ["lora.target_modules=[\"q_proj\",\"v_proj\"]", "lora.r=8", "train.max_steps=20", "lora.dropout=0.1"],
        ["lora.target_modules=[\"q_proj\",\"v_proj\"]", "lora.r=16", "train.max_steps=20", "lora.dropout=0.1"],
    ]
    sweep.validate(variants, PARAMS)  # every value parses back to what the file said
    assert variants[0].params.lora.target_modules == ["q_proj", "v_proj"]
    assert variants[0].params.train.learning_rate == 1e-4


def test_bad_sweeps_name_the_variant_the_file_and_the_key(tmp_path):
    with pytest.raises(sweep.SweepError, match="at least two variants"):
        sweep.expand(["lora.r=8"])
    with pytest.raises(sweep.SweepError, match="variants v1 and v2 are the same"):
        sweep.expand(["lora.r=8,8"])
    variants = sweep.expand(["lora.r=8,-1"])
    with pytest.raises(sweep.SweepError, match=r"variant v2 \(lora.r=-1\): --set: lora.r: Input should be greater than 0"):
        sweep.validate(variants, PARAMS)
    with pytest.raises(sweep.SweepError, match="variant v1 .*unknown key 'lora.rank'"):
        sweep.validate(sweep.expand(["lora.rank=8,16"]), PARAMS)
    path = tmp_path / "sweep.yaml"
    path.write_text("grids:\n  lora.r: [8, 16]\n")
    with pytest.raises(sweep.SweepError, match=f"{path}: unknown key 'grids'"):
        sweep.expand([], path)
    path.write_text("grid:\n  lora.r: 8\n")
    with pytest.raises(sweep.SweepError, match="grid.lora.r: expected a non-empty list"):
        sweep.expand([], path)
    path.write_text("grid: [\n")
    with pytest.raises(sweep.SweepError, match=f"{path}:2: not valid YAML"):
        sweep.expand([], path)


def test_job_names_fit_skypilot_and_keep_the_variant():
    name = sweep.job_name("t" * 80, "sw-1201-0958-ab12", "v12")
    assert len(name) <= 63 and name.endswith("-sw-1201-0958-ab12-v12") and name[0].isalpha()


def test_early_stop_compares_the_training_loss_at_the_same_step():
    best = {10: 2.0, 20: 1.5}
    assert sweep.worse_than_best({10: 2.1}, best, margin=0.1) is None  # 5% worse: within the margin
    assert sweep.worse_than_best({10: 2.1, 20: 1.8}, best, margin=0.1) == (20, 1.8, 1.5)
    assert sweep.worse_than_best({30: 9.0}, best, margin=0.1) is None  # no step in common yet


def test_the_front_and_the_line_to_adopt():
    rows = [
        {"variant": "v1", "status": "finished", "set": "lora.r=8 train.max_steps=9", "cost_usd": 1.0, "eval_loss": 2.0},
        {"variant": "v2", "status": "finished", "set": "lora.r=16 train.max_steps=9", "cost_usd": 2.0, "eval_loss": 1.5},
        {"variant": "v3", "status": "finished", "set": "lora.r=32 train.max_steps=9", "cost_usd": 3.0, "eval_loss": 1.8},
        {"variant": "v4", "status": "not started", "set": "lora.r=64 train.max_steps=9", "cost_usd": None, "eval_loss": None},
    ]
    summary = sweep.summarise(rows)
    assert [r["variant"] for r in summary["variants"]] == ["v2", "v3", "v1", "v4"]  # by eval loss; unscored last
    assert {r["variant"] for r in summary["variants"] if r["front"]} == {"v1", "v2"}  # v3 is dearer AND worse than v2
    assert summary["adopt"] == "--set lora.r=16"
    text = sweep.render_summary(summary)
    assert "best: v2 (eval_loss 1.5000, $2.00); adopt it with:\n  --set lora.r=16\n" in text


# --------------------------------------------------------------------------- the budget


def test_over_budget_sweep_is_refused_with_the_numbers_before_anything_starts(tmp_path, prices, tiny_model_dir,
                                                                             sample_data):
    sets = tiny_sets(tmp_path, tiny_model_dir, sample_data)
    variants = sweep.expand(["lora.r=2,4,8"])
    sweep.validate(variants, PARAMS, sets[1::2])
    total = sweep.price(variants, prices)  # the same fixture catalog the CLI gets
    each = variants[0].estimate["usd_per_run"]
    assert variants[0].estimate["gpu"] == "L4" and each > 0
    budget = round(total * 0.8, 6)
    result = sweep_cli(tmp_path, "--backend", "local", "--set", "lora.r=2,4,8", *sets, "--budget", str(budget), **prices)
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    message = result.stderr
    assert f"the 3 variants are estimated at {sweep._usd(total)} together" in message
    assert f"v1 {sweep._usd(each)}" in message and f"above the sweep budget {sweep._usd(budget)}" in message
    assert "OVER the sweep budget" in result.stdout  # the table of prices is printed first
    assert not (tmp_path / "bucket").exists() and not (tmp_path / "sweeps").exists()  # nothing started


def test_a_variant_above_the_run_budget_refuses_the_sweep(tmp_path, prices, tiny_model_dir, sample_data):
    sets = tiny_sets(tmp_path, tiny_model_dir, sample_data, "budget.max_run_usd=0.0001")
    result = sweep_cli(tmp_path, "--backend", "local", "--set", "lora.r=2,4", *sets, **prices)
    assert result.returncode == 3
    assert "variant v1 (lora.r=2" in result.stderr and "exceeds budget.max_run_usd" in result.stderr


def test_the_sweep_stops_before_a_variant_that_would_cross_the_budget(tmp_path, prices, tiny_model_dir, sample_data):
    """Estimated at a fraction of a cent each, but the machine really costs $1 a second: after
    the first variant the next one would cross the $0.50 budget, so it is not started."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sets = tiny_sets(tmp_path, tiny_model_dir, sample_data, "cost.hourly_usd=3600", "budget.max_run_usd=100000",
                     f"tracking.uri={uri}")
    result = sweep_cli(tmp_path, "--backend", "local", "--set", "lora.r=2,4,8", *sets, "--budget", "0.5",
                       "--id", "sw-budget-test", **prices)
    assert result.returncode == 3, result.stdout[-3000:] + result.stderr[-3000:]
    assert "sweep sw-budget-test: stopped by the budget: $" in result.stderr
    assert "v2 (estimated $0.00" in result.stderr and "so v2, v3 not started" in result.stderr
    (run,) = runs_of(uri, "sw-budget-test")
    assert run.data.tags["sweep_variant"] == "v1" and run.data.metrics["cost_usd"] > 0.5
    summary = json.loads((tmp_path / "sweeps/sw-budget-test/summary.json").read_text())
    assert summary["status"] == "budget"
    assert {r["variant"]: r["status"] for r in summary["variants"]} == {"v1": "finished", "v2": "not started",
                                                                        "v3": "not started"}


# --------------------------------------------------------------------------- three real variants


def test_three_variants_run_here_into_one_mlflow_server(tmp_path, prices, tiny_model_dir, sample_data, mlflow_server):
    sets = tiny_sets(tmp_path, tiny_model_dir, sample_data, "cost.hourly_usd=3.6", f"tracking.uri={mlflow_server.uri}")
    result = sweep_cli(tmp_path, "--backend", "local", "--set", "lora.r=2,4,8", *sets, "--id", "sw-three", **prices)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "sweep sw-three: complete" in result.stdout

    runs = runs_of(mlflow_server.uri, "sw-three")
    by_variant = {run.data.tags["sweep_variant"]: run for run in runs}
    assert sorted(by_variant) == ["v1", "v2", "v3"] and len(runs) == 3  # one run per variant
    for name, r in zip(["v1", "v2", "v3"], ["2", "4", "8"], strict=True):
        run = by_variant[name]
        assert run.info.status == "FINISHED" and run.data.params["lora.r"] == r
        assert run.data.tags["sweep_set"].split()[0] == f"lora.r={r}"
        assert run.data.metrics["eval_loss"] > 0 and run.data.metrics["cost_usd"] > 0
    # Each variant has its own checkpoints and outputs (its own task id).
    task_dirs = sorted(p.name for p in (tmp_path / "bucket").iterdir())
    assert len(task_dirs) == 3 and all(d.endswith(("-sw-three-v1", "-sw-three-v2", "-sw-three-v3")) for d in task_dirs)
    for task_dir in (tmp_path / "bucket").iterdir():
        assert (task_dir / "outputs/adapter/adapter_model.safetensors").is_file()

    # The table: ranked by eval loss, the front marked, the best one's --set line.
    points = {n: (run.data.metrics["cost_usd"], run.data.metrics["eval_loss"]) for n, run in by_variant.items()}
    front = {n for n, p in points.items() if not dominated(p, list(points.values()))}
    best = min(points, key=lambda n: points[n][1])
    report = run_cli("report", "--sweep", "sw-three", "--format", "json", *sets)
    assert report.returncode == 0, report.stderr
    summary = json.loads(report.stdout)
    assert [r["variant"] for r in summary["variants"]] == sorted(points, key=lambda n: points[n][1])
    assert {r["variant"] for r in summary["variants"] if r["front"]} == front and best in front
    assert summary["best"]["variant"] == best and summary["adopt"] == f"--set lora.r={by_variant[best].data.params['lora.r']}"
    text = run_cli("report", "--sweep", "sw-three", *sets).stdout
    assert f"adopt it with:\n  {summary['adopt']}\n" in text and text in result.stdout  # the same table as at the end
    for line in text.splitlines()[2:5]:
        assert line.rstrip().endswith("*") == (line.split()[0] in front)

    # The same id again: every variant is already finished, nothing is trained twice.
    again = sweep_cli(tmp_path, "--backend", "local", "--set", "lora.r=2,4,8", *sets, "--id", "sw-three", **prices)
    assert again.returncode == 0 and again.stdout.count("already finished") == 3
    assert len(runs_of(mlflow_server.uri, "sw-three")) == 3


# --------------------------------------------------------------------------- the sky backend


FAKE_SKY = r'''
import json, os, sys, time

argv = sys.argv[1:]
# Started: noted before the slow imports, so that two jobs launched together start together
# even on a loaded machine.
with open(os.environ["SKY_LOG"], "a") as f:
    f.write(json.dumps({"argv": argv, "start": time.time()}) + "\n")
import yaml
from mlflow import MlflowClient

if argv[:2] == ["jobs", "launch"]:
    # What the job would do, in short: one MLflow run with the task's tags, its cost and eval loss.
    envs = yaml.safe_load(open(argv[-1]))["envs"]
    overrides = dict(a.split("=", 1) for a in envs["TRAIN_OVERRIDES"].split() if "=" in a)
    client = MlflowClient(envs["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name(overrides["tracking.experiment"])
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(overrides["tracking.experiment"])
    tags = {"sweep_id": envs["SWEEP_ID"], "sweep_variant": envs["SWEEP_VARIANT"], "sweep_set": envs["SWEEP_SET"]}
    run = client.create_run(experiment_id, tags=tags)
    r = int(overrides["lora.r"])
    time.sleep({2: 1, 4: 4, 8: 6, 16: 1}[r])  # v1 ends first, v2 while v3 runs
    client.log_metric(run.info.run_id, "cost_usd", float(os.environ["JOB_COST_USD"]))
    client.log_metric(run.info.run_id, "eval_loss", 3.0 - r / 10)
    client.set_terminated(run.info.run_id)
with open(os.environ["SKY_LOG"], "a") as f:
    f.write(json.dumps({"argv": argv, "end": time.time()}) + "\n")
'''


@pytest.fixture
def fake_sky(tmp_path) -> dict[str, str]:
    """SKY_PYTHON pointing at a folder whose `sky` records its arguments and plays a job."""
    bin_dir = tmp_path / "sky-env/bin"
    bin_dir.mkdir(parents=True)
    script = bin_dir / "sky"
    script.write_text(f"#!{sys.executable}\n{FAKE_SKY}")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    (bin_dir / "python").symlink_to(sys.executable)
    return {"SKY_PYTHON": str(bin_dir / "python"), "SKY_LOG": str(tmp_path / "sky-calls.jsonl")}


def test_sky_backend_launches_one_job_per_variant_in_parallel_within_the_budget(tmp_path, prices, fake_sky,
                                                                               tiny_model_dir, sample_data,
                                                                               mlflow_server, sky_python):
    """4 variants estimated at E each, at most 2 at once, a budget of 5E; each job really costs
    2.25E. v1 and v2 start together; when v1 ends, 2.25E + E (v2, running) + E (v3) fits, so v3
    starts; when v2 ends, 4.5E + E (v3, running) + E (v4) does not: v4 is never launched."""
    sets = tiny_sets(tmp_path, tiny_model_dir, sample_data, f"tracking.uri={mlflow_server.uri}")
    variants = sweep.expand(["lora.r=2,4,8,16"])
    sweep.validate(variants, PARAMS, sets[1::2])
    sweep.price(variants, prices)
    each = variants[0].estimate["usd_per_run"]
    assert all(v.estimate["usd_per_run"] == each for v in variants)
    result = sweep_cli(tmp_path, "--backend", "sky", "--parallel", "2", "--set", "lora.r=2,4,8,16", *sets,
                       "--budget", str(5 * each), "--id", "sw-sky", "--env", "HF_TOKEN_NOTE=x", **prices, **fake_sky,
                       HF_TOKEN="hf_secret_value", JOB_COST_USD=str(2.25 * each))
    assert result.returncode == 3, result.stdout[-3000:] + result.stderr[-3000:]
    calls = [json.loads(line) for line in Path(fake_sky["SKY_LOG"]).read_text().splitlines()]
    starts = {c["argv"][4]: c["start"] for c in calls if "start" in c}
    ends = {c["argv"][4]: c["end"] for c in calls if "end" in c}
    assert len(starts) == 3  # N variants launched = 3 `sky jobs launch` calls, v4 never
    names = sorted(starts, key=starts.get)
    assert [n.rsplit("-", 1)[1] for n in names] == ["v1", "v2", "v3"]
    assert starts[names[1]] < ends[names[0]]  # v1 and v2 at the same time
    assert starts[names[2]] >= min(ends[names[0]], ends[names[1]])  # v3 only when one of them had ended
    assert "sweep sw-sky: stopped by the budget" in result.stderr
    assert "v4 (estimated" in result.stderr and "so v4 not started" in result.stderr
    assert "hf_secret_value" not in json.dumps(calls)

    launches = [c["argv"] for c in calls if "start" in c]
    task_files = [Path(argv[-1]) for argv in launches]
    assert all(argv[:5] == ["jobs", "launch", "-y", "-n", argv[4]] for argv in launches)
    assert all(argv[argv.index("--secret") + 1] == "HF_TOKEN" for argv in launches)
    for path, r in zip(sorted(task_files), ["2", "4", "8"], strict=True):
        envs = yaml.safe_load(path.read_text())["envs"]
        assert envs["SWEEP_ID"] == "sw-sky" and envs["SWEEP_VARIANT"] == path.stem
        assert envs["TRAIN_OVERRIDES"].startswith(f"--set lora.r={r} --set ")
        assert envs["MLFLOW_TRACKING_URI"] == mlflow_server.uri and envs["HF_TOKEN_NOTE"] == "x"
    # SkyPilot's own parser accepts every task file the sweep wrote, with the project's candidates.
    home = {"HOME": str(tmp_path), "SKY_RUNTIME_DIR": str(tmp_path / "sky-runtime"), "SKYPILOT_DISABLE_USAGE_COLLECTION": "1"}
    parsed = skytask.skypilot_check(task_files, sky_python, env=home)
    assert all(entry["ok"] for entry in parsed.values()), parsed
    project_task = yaml.safe_load((PROJECT / "sky/train.yaml").read_text())
    for entry in parsed.values():
        assert len(entry["candidates"]) == len(project_task["resources"]["accelerators"]) * len(project_task["resources"]["any_of"])
    # ... and its optimizer picks the cheapest spot offer for each, as for sky/train.yaml itself.
    optimized = optimize(sky_python, tmp_path, task_files)
    assert all(result == optimized[str(task_files[0])] for result in optimized.values()), optimized
    assert optimized[str(task_files[0])]["spot"] is True

    text = run_cli("report", "--sweep", "sw-sky", *sets).stdout
    assert "adopt it with:\n  --set lora.r=8\n" in text  # the stand-in's eval loss falls with r: v3 is best


def optimize(sky_python: Path, tmp_path: Path, task_files: list[Path]) -> dict:
    """SkyPilot's optimizer on the task files, offline, on test_sky's fixture catalogs."""
    import test_sky

    root = tmp_path / "sky-optimize"
    test_sky.write_catalogs(root)
    cases = {str(p): test_sky.task_for_fixture_clouds(yaml.safe_load(p.read_text())) for p in task_files}
    out = tmp_path / "optimized.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GOOGLE_", "CLOUDSDK_", "AZURE_"))}
    env.update(HOME=str(root), SKY_RUNTIME_DIR=str(root), SKYPILOT_DISABLE_USAGE_COLLECTION="1", AWS_EC2_METADATA_DISABLED="true")
    done = subprocess.run([str(sky_python), "-c", test_sky._OPTIMIZE], capture_output=True, text=True, timeout=300, env=env,
                          input=json.dumps({"clouds": test_sky.CLOUDS, "cases": cases, "out": str(out)}))
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


EARLY_STOP_SKY = r'''
import json, os, sys, time
import yaml
from mlflow import MlflowClient

argv = sys.argv[1:]
with open(os.environ["SKY_LOG"], "a") as f:
    f.write(json.dumps({"argv": argv}) + "\n")
cancelled = os.path.join(os.environ["SKY_STATE"], "cancelled-")
if argv[:2] == ["jobs", "cancel"]:
    open(cancelled + argv[-1], "w").close()
elif argv[:2] == ["jobs", "launch"]:
    # A job logging its training loss every step, ended by `sky jobs cancel`: v1 learns, v2 does not.
    envs = yaml.safe_load(open(argv[-1]))["envs"]
    overrides = dict(a.split("=", 1) for a in envs["TRAIN_OVERRIDES"].split() if "=" in a)
    client = MlflowClient(envs["MLFLOW_TRACKING_URI"])
    name = overrides["tracking.experiment"]
    experiment = client.get_experiment_by_name(name)
    run = client.create_run(experiment.experiment_id if experiment else client.create_experiment(name),
                            tags={"sweep_id": envs["SWEEP_ID"], "sweep_variant": envs["SWEEP_VARIANT"],
                                  "sweep_set": envs["SWEEP_SET"]})
    good = envs["SWEEP_VARIANT"] == "v1"
    for step in range(1, 41):
        client.log_metric(run.info.run_id, "loss", (2.0 if good else 3.0) / step, step=step)
        client.log_metric(run.info.run_id, "cost_usd", 0.001 * step, step=step)
        if os.path.exists(cancelled + argv[argv.index("-n") + 1]):
            client.set_terminated(run.info.run_id, "KILLED")
            sys.exit(1)
        time.sleep(0.02 if good else 0.5)
    client.log_metric(run.info.run_id, "eval_loss", 1.0 if good else 1.5)
    client.set_terminated(run.info.run_id)
'''


def test_early_stop_cancels_a_variant_worse_than_the_best_at_the_same_step(tmp_path, prices, fake_sky, tiny_model_dir,
                                                                          sample_data, mlflow_server):
    Path(fake_sky["SKY_PYTHON"]).parent.joinpath("sky").write_text(f"#!{sys.executable}\n{EARLY_STOP_SKY}")
    sets = tiny_sets(tmp_path, tiny_model_dir, sample_data, f"tracking.uri={mlflow_server.uri}")
    result = sweep_cli(tmp_path, "--backend", "sky", "--parallel", "1", "--set", "lora.r=2,4", *sets,
                       "--early-stop", "0.2", "--id", "sw-early", **prices, **fake_sky, SKY_STATE=str(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    calls = [json.loads(line)["argv"] for line in Path(fake_sky["SKY_LOG"]).read_text().splitlines()]
    v2 = sweep.job_name("support-assistant-fine-tune-train", "sw-early", "v2")
    assert [c[:2] for c in calls] == [["jobs", "launch"], ["jobs", "launch"], ["jobs", "cancel"]]
    assert calls[2] == ["jobs", "cancel", "-y", "-n", calls[1][calls[1].index("-n") + 1]] and calls[2][-1].endswith("-v2")
    assert "sweep: stopping v2 early: training loss" in result.stdout and "more than 20% above v1's" in result.stdout
    assert v2.endswith("-sw-early-v2")
    (stopped,) = [r for r in runs_of(mlflow_server.uri, "sw-early") if r.data.tags["sweep_variant"] == "v2"]
    assert stopped.info.status == "KILLED" and "eval_loss" not in stopped.data.metrics
    assert "adopt it with:\n  --set lora.r=2\n" in result.stdout


def test_a_sky_sweep_needs_a_tracking_server(tmp_path, prices, fake_sky, tiny_model_dir, sample_data):
    sets = tiny_sets(tmp_path, tiny_model_dir, sample_data, f"tracking.uri=sqlite:///{tmp_path / 'x.db'}")
    result = sweep_cli(tmp_path, "--backend", "sky", "--set", "lora.r=2,4", *sets, **prices, **fake_sky)
    assert result.returncode == 2 and "a sky sweep reads every job's live cost from MLflow" in result.stderr
    assert not Path(fake_sky["SKY_LOG"]).exists()


def test_a_dry_run_prices_and_prints_without_a_tracking_server(tmp_path, prices, fake_sky, tiny_model_dir, sample_data):
    """The default SQLite tracking URI: a real sky sweep is refused (above), a dry run is not."""
    uri = f"sqlite:///{tmp_path / 'x.db'}"
    sets = tiny_sets(tmp_path, tiny_model_dir, sample_data, f"tracking.uri={uri}")
    variants = sweep.expand(["lora.r=2,4"])
    sweep.validate(variants, PARAMS, sets[1::2])
    total = sweep.price(variants, prices)
    result = sweep_cli(tmp_path, "--backend", "sky", "--set", "lora.r=2,4", *sets, "--id", "sw-dry", "--dry-run",
                       **prices, **fake_sky)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    for variant, r in zip(variants, ["2", "4"], strict=True):
        price = sweep._usd(variant.estimate["usd_per_run"])
        # The offer is the whole machine the plan priced ("1x L4 spot on aws"), not one card of it.
        kind = "spot" if variant.estimate["spot"] else "on-demand"
        offer = f"{variant.estimate['machine']} {kind} on {variant.estimate['cloud']}"
        assert any(line.split()[:3] == [variant.name, r, price] and line.rstrip().endswith(offer)
                   for line in out.splitlines() if line.strip()), out
        assert f"# {variant.name}: " in out and "jobs launch -y -n " in out and f"-sw-dry-{variant.name} " in out
    assert f"total {sweep._usd(total)} for 2 variants: within the sweep budget" in out
    assert f"note: the real sweep needs an MLflow server, not {uri!r}" in out
    assert not Path(fake_sky["SKY_LOG"]).exists()  # nothing launched
    assert not (tmp_path / "x.db").exists()  # and MLflow never opened


def test_a_dry_run_prints_the_sky_command_without_skypilot(tmp_path, monkeypatch):
    """SkyPilot is needed to launch, not to show what would be launched (as `launch --dry-run`)."""
    monkeypatch.delenv("SKY_PYTHON", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # no `sky` on PATH
    monkeypatch.chdir(tmp_path)  # no .venv-sky here
    args = argparse.Namespace(parallel=1, dry_run=True)
    backend = sweep.SkyBackend(args, tmp_path)
    assert backend.cli == ["sky"] and backend.missing.startswith("SkyPilot not found")
    with pytest.raises(skytask.SkyNotFound):
        sweep.SkyBackend(argparse.Namespace(parallel=1, dry_run=False), tmp_path)


def test_time_is_not_spent_polling_when_a_job_ends(tmp_path):
    """_wait returns as soon as a process ends, not after the whole poll interval."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    s = sweep.Sweep([], "sw-x", 1.0, None, None, None, poll_seconds=30)
    started = time.monotonic()
    s._wait({"v1": (process, {}, None)})
    assert time.monotonic() - started < 10
