"""Price sources: SkyPilot's catalog files, the bundled snapshot, the user's own number."""

import json
import re
import sys
import types
from pathlib import Path

import pytest

from {{ cookiecutter.package_name }}.compute import plan, prices

# SkyPilot's vms.csv columns, in the order its AWS fetcher writes them (GpuInfo is a quoted
# dict with commas inside: the reason to read these files with the csv module).
SKY_HEADER = "InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,GpuInfo,Price,SpotPrice,Region,AvailabilityZone"


def write_catalog(root: Path, cloud: str, rows: list[str]) -> Path:
    """A SkyPilot catalog for `cloud` under `root` (used as SKY_RUNTIME_DIR)."""
    path = root / ".sky" / "catalogs" / "v8" / cloud / "vms.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([SKY_HEADER, *rows]) + "\n")
    return path


L4_INFO = "\"{'Gpus': [{'Name': 'L4', 'Manufacturer': 'NVIDIA', 'Count': 1}], 'TotalGpuMemoryInMiB': 22888}\""
AWS_ROWS = [
    f"g6.xlarge,L4,1.0,4.0,16.0,{L4_INFO},0.8048,0.3101,us-east-1,us-east-1a",
    f"g6.xlarge,L4,1.0,4.0,16.0,{L4_INFO},0.8048,0.2899,us-east-1,us-east-1b",
    f"g6.xlarge,L4,1.0,4.0,16.0,{L4_INFO},0.9000,0.4000,eu-west-1,eu-west-1a",
    "m6i.large,,,2.0,8.0,,0.096,0.04,us-east-1,us-east-1a",  # a CPU machine: not an offer
    "g6e.xlarge,L40S,1.0,4.0,32.0,,1.861,,us-east-1,us-east-1a",  # no spot price
]


def test_catalog_rows_are_parsed_with_quoted_gpu_info(tmp_path):
    write_catalog(tmp_path, "aws", AWS_ROWS)
    offers = prices.catalog_offers(["aws"], {"SKY_RUNTIME_DIR": str(tmp_path)})
    assert len(offers) == 4  # the CPU machine is skipped
    first = offers[0]
    assert (first.cloud, first.instance_type, first.accelerator, first.count) == ("aws", "g6.xlarge", "L4", 1)
    assert (first.price, first.spot_price, first.region, first.zone) == (0.8048, 0.3101, "us-east-1", "us-east-1a")
    l40s = next(o for o in offers if o.accelerator == "L40S")
    assert l40s.spot_price is None and l40s.hourly(spot=True) is None and l40s.hourly(spot=False) == 1.861


def test_catalog_wins_over_snapshot_and_filters_clouds(tmp_path):
    write_catalog(tmp_path, "aws", AWS_ROWS)
    write_catalog(tmp_path, "gcp", ["g2-standard-4,L4,1,4,16,,0.70,0.25,us-central1,us-central1-a"])
    env = {"SKY_RUNTIME_DIR": str(tmp_path)}
    offers, source = prices.load_offers(["gcp"], env)
    assert "SkyPilot catalog" in source
    assert {o.cloud for o in offers} == {"gcp"}
    # No catalog at all: the bundled snapshot, dated and labelled as not live.
    offers, source = prices.load_offers(["aws"], {"SKY_RUNTIME_DIR": str(tmp_path / "empty")})
    assert source == f"bundled price snapshot of {prices.snapshot_date()} (approximate, not live)"
    assert offers and {o.cloud for o in offers} == {"aws"}


def test_snapshot_is_dated_consistent_and_known_to_the_planner():
    assert re.fullmatch(r"20\d\d-\d\d-\d\d", prices.snapshot_date())  # from the file's header comment
    offers = prices.snapshot_offers()
    assert {"aws", "gcp", "azure", "lambda", "runpod", "vast"} <= {o.cloud for o in offers}
    for offer in offers:
        assert offer.accelerator in plan.GPUS, offer  # the planner has memory and speed for it
        assert offer.price and offer.price > 0
        assert offer.spot_price is None or 0 < offer.spot_price < offer.price, offer
    wanted = {"L4", "A10G", "L40S", "A100", "A100-80GB", "H100", "H200", "RTX4090"}
    assert wanted <= {o.accelerator for o in offers}


def test_offers_are_machines_with_their_host_and_every_gpu_count(tmp_path):
    # SkyPilot's vCPUs and MemoryGiB columns come along; a 4-GPU row is an offer of its own.
    write_catalog(tmp_path, "aws", [*AWS_ROWS, "g6e.12xlarge,L40S,4.0,48.0,384.0,,10.49,3.90,us-east-1,us-east-1a"])
    offers = prices.catalog_offers(["aws"], {"SKY_RUNTIME_DIR": str(tmp_path)})
    four = next(o for o in offers if o.count == 4)
    assert (four.accelerator, four.vcpus, four.memory_gib, four.interconnect) == ("L40S", 48.0, 384.0, None)
    assert offers[0].memory_gib == 16.0 and offers[0].vcpus == 4.0
    # The snapshot: 2, 4 and 8 of the consumer cards and of the A100 / H100 class, with host RAM
    # and how their GPUs are linked.
    snapshot = prices.snapshot_offers()
    for gpu in ("RTX4090", "L40S", "A100-80GB", "H100"):
        assert {2, 4, 8} <= {o.count for o in snapshot if o.accelerator == gpu}, gpu
    for offer in snapshot:
        assert offer.memory_gib and offer.vcpus, offer
        assert (offer.interconnect is None) == (offer.count == 1), offer
        assert offer.interconnect in (None, "pcie", "nvlink", "nvswitch"), offer
    assert all(o.interconnect == "pcie" for o in snapshot if o.accelerator == "RTX4090" and o.count > 1)


# --------------------------------------------------------------- running-job price order


def cluster_env(tmp_path, **extra) -> dict:
    return {
        "SKY_RUNTIME_DIR": str(tmp_path),
        "SKYPILOT_CLUSTER_INFO": json.dumps({"cloud": "aws", "region": "us-east-1", "zone": "us-east-1b"}),
        "GPU_MODEL": "L4",
        "GPU_COUNT": "1",
        "USE_SPOT": "true",
        **extra,
    }


def test_price_resolution_order(make_params, tmp_path):
    write_catalog(tmp_path, "aws", AWS_ROWS)
    env = cluster_env(tmp_path)

    # 1. An explicit price wins over everything.
    assert prices.resolve_hourly_price(make_params("cost.hourly_usd=2.5"), env) == (2.5, "params cost.hourly_usd")

    # 2. SkyPilot's catalog, for the cluster's zone and the spot flag.
    params = make_params()
    price, source = prices.resolve_hourly_price(params, env)
    assert price == 0.2899 and source.startswith("SkyPilot catalog: 1x L4 spot on aws/us-east-1/us-east-1b")
    price, _ = prices.resolve_hourly_price(params, {**env, "USE_SPOT": "false"})
    assert price == 0.8048

    # 3. No catalog on the machine: the bundled snapshot for the same cloud and GPU.
    env = cluster_env(tmp_path / "no-sky")
    expected = next(o for o in prices.snapshot_offers(["aws"]) if o.accelerator == "L4").spot_price
    price, source = prices.resolve_hourly_price(params, env)
    assert price == expected and source.startswith(f"bundled snapshot of {prices.snapshot_date()}")

    # 4. Nothing says where we run (your own machine): unknown, priced at 0.
    assert prices.resolve_hourly_price(params, {"SKY_RUNTIME_DIR": str(tmp_path)}) == (0.0, "unknown")
    # 5. A cloud machine no price list knows: None (never a false $0), saying what was looked for.
    price, source = prices.resolve_hourly_price(params, cluster_env(tmp_path, GPU_MODEL="B9000"))
    assert price is None and source.startswith("unknown on a cloud machine: no 1x B9000 spot row for aws/us-east-1")
    assert source.endswith("set cost.hourly_usd")


def test_empty_gpu_model_is_named_from_the_device(make_params, tmp_path):
    write_catalog(tmp_path, "aws", AWS_ROWS)
    env = cluster_env(tmp_path, GPU_MODEL="")
    price, source = prices.resolve_hourly_price(make_params(), env, device_name="NVIDIA L4")
    assert price == 0.2899 and "L4" in source
    assert prices.gpu_from_device_name("NVIDIA A100-SXM4-80GB") == "A100-80GB"
    assert prices.gpu_from_device_name("NVIDIA A100-PCIE-40GB") == "A100"
    assert prices.gpu_from_device_name("NVIDIA GeForce RTX 4090") == "RTX4090"
    assert prices.gpu_from_device_name("NVIDIA L40S") == "L40S"
    assert prices.gpu_from_device_name("NVIDIA H100 80GB HBM3") == "H100"
    assert prices.gpu_from_device_name("Tesla T4") is None


# ------------------------------------------------------------------------ own hardware


def test_energy_cost_per_hour():
    assert prices.energy_cost_per_hour(450, 0.20) == pytest.approx(0.09)
    assert prices.energy_cost_per_hour(0, 0.30) == 0


def test_measured_watts_from_nvml_or_none(monkeypatch):
    fake = types.SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetHandleByIndex=lambda index: f"gpu{index}",
        nvmlDeviceGetPowerUsage=lambda handle: 312_500,  # milliwatts
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert prices.measured_gpu_watts() == 312.5

    def no_driver():
        raise RuntimeError("NVML Shared Library Not Found")

    monkeypatch.setitem(sys.modules, "pynvml", types.SimpleNamespace(nvmlInit=no_driver))
    assert prices.measured_gpu_watts() is None
    monkeypatch.setitem(sys.modules, "pynvml", None)  # not installed: import fails
    assert prices.measured_gpu_watts() is None
