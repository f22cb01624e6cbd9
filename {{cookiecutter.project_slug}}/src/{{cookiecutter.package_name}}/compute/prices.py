"""GPU prices: what an hour on a (GPU, cloud, spot or on-demand) offer costs.

What it does
- `load_offers`: the offers to plan with, from the first source that has any:
    1. SkyPilot's catalog files, `$SKY_RUNTIME_DIR/.sky/catalogs/v8/<cloud>/vms.csv`
       (default `~/.sky/...`): the prices SkyPilot's optimizer itself uses. SkyPilot
       downloads them on first use (`sky show-gpus`, `sky launch`);
    2. the bundled snapshot `price_snapshot.csv`: hand-entered planning figures with a
       date, NOT live prices (spot prices move by the hour), for machines of 1, 2, 4 and 8
       GPUs with their vCPUs, host RAM and interconnect;
    3. `cost.hourly_usd` from params.yaml, applied to every GPU (the plan then only
       compares speed).
- `resolve_hourly_price`: the price of the machine a RUNNING job is on: an explicit
  `cost.hourly_usd`, else SkyPilot's catalog for the cloud / region / zone in
  `SKYPILOT_CLUSTER_INFO` and the `GPU_MODEL`, `GPU_COUNT`, `USE_SPOT` variables the task
  YAML passes, else the bundled snapshot. Off the cloud with none of these: 0 with source
  "unknown" (your own machine). On a cloud machine (a SkyPilot job) with none: None, with a
  source that says what was missing: the run logs its cost as unknown, never as $0.
- `energy_cost_per_hour` and `measured_gpu_watts` (NVML, when nvidia-ml-py is installed)
  for a GPU you own.

Catalog files are read with the csv module: SkyPilot itself lives in a separate
environment (its pins conflict with this project's), so it cannot be imported here.
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

CATALOG_VERSION = "v8"  # SkyPilot's catalog schema version (sky/skylet/constants.py, 0.14)
SNAPSHOT_FILE = "price_snapshot.csv"

# Accelerator names differ between clouds in SkyPilot's catalogs; these mean the same card
# for planning (memory and speed within a few percent).
ALIASES = {
    "H100-SXM": "H100",
    "H100-MEGA": "H100",
    "A100-80GB-SXM": "A100-80GB",
    "RTX-4090": "RTX4090",
}


@dataclass(frozen=True)
class Offer:
    """One way to rent a machine: on-demand price, and spot price when there is one."""

    cloud: str
    instance_type: str
    accelerator: str  # canonical name, see ALIASES
    count: int
    region: str
    zone: str
    price: float | None  # USD per hour, on-demand
    spot_price: float | None  # USD per hour, spot / interruptible
    source: str
    # The machine around the GPUs (SkyPilot's vCPUs and MemoryGiB columns; None: not listed) and
    # how its GPUs talk to each other (the snapshot's Interconnect column; None: inferred by plan).
    vcpus: float | None = None
    memory_gib: float | None = None
    interconnect: str | None = None

    def hourly(self, spot: bool) -> float | None:
        return self.spot_price if spot else self.price

    def as_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------ reading CSV


def canonical_gpu(name: str) -> str:
    name = (name or "").strip()
    return ALIASES.get(name, name)


def _price(text: str | None) -> float | None:
    """A catalog price cell; empty, NaN or non-positive means "not offered"."""
    try:
        value = float(text) if text not in (None, "") else None
    except ValueError:
        return None
    if value is None or value != value or value <= 0:  # value != value: NaN
        return None
    return value


def _amount(text: str | None) -> float | None:
    """A vCPUs or MemoryGiB cell: a positive number, else None (not listed)."""
    try:
        value = float(text) if text not in (None, "") else None
    except ValueError:
        return None
    return value if value is not None and value == value and value > 0 else None


def _count(text: str | None) -> int:
    try:
        return int(float(text or 0))
    except ValueError:
        return 0


def read_offers_csv(lines, source: str, cloud: str | None = None) -> list[Offer]:
    """Offers from SkyPilot-format rows; rows without an accelerator are CPU machines, skipped.
    Every GPU count is an offer (1x, 2x, 4x, 8x machines): the planner decides how to use them.

    `cloud` names the cloud for a per-cloud catalog file; the snapshot has a Cloud column.
    Lines starting with '#' are comments (the snapshot's header).
    """
    rows = csv.DictReader(line for line in lines if line.strip() and not line.lstrip().startswith("#"))
    offers = []
    for row in rows:
        accelerator = canonical_gpu(row.get("AcceleratorName", ""))
        if not accelerator:
            continue
        offer = Offer(
            cloud=(cloud or row.get("Cloud", "")).strip().lower(),
            instance_type=(row.get("InstanceType") or "").strip(),
            accelerator=accelerator,
            count=_count(row.get("AcceleratorCount")),
            region=(row.get("Region") or "").strip(),
            zone=(row.get("AvailabilityZone") or "").strip(),
            price=_price(row.get("Price")),
            spot_price=_price(row.get("SpotPrice")),
            source=source,
            vcpus=_amount(row.get("vCPUs")),
            memory_gib=_amount(row.get("MemoryGiB")),
            interconnect=(row.get("Interconnect") or "").strip().lower() or None,
        )
        if offer.price is not None or offer.spot_price is not None:
            offers.append(offer)
    return offers


# ------------------------------------------------------------------- SkyPilot catalog


def catalog_dir(environ=os.environ) -> Path:
    """Where SkyPilot keeps its catalogs: `$SKY_RUNTIME_DIR/.sky/catalogs/v8` (default ~)."""
    root = environ.get("SKY_RUNTIME_DIR") or os.path.expanduser("~")
    return Path(root) / ".sky" / "catalogs" / CATALOG_VERSION


def catalog_offers(clouds: list[str] = (), environ=os.environ) -> list[Offer]:
    """Every GPU offer in the SkyPilot catalog files present, for `clouds` (all when empty)."""
    root = catalog_dir(environ)
    if not root.is_dir():
        return []
    wanted = {c.lower() for c in clouds}
    offers = []
    for path in sorted(root.glob("*/vms.csv")):
        cloud = path.parent.name.lower()
        if wanted and cloud not in wanted:
            continue
        with path.open(encoding="utf-8", newline="") as lines:
            offers += read_offers_csv(lines, f"SkyPilot catalog {path}", cloud=cloud)
    return offers


# ------------------------------------------------------------------ bundled snapshot


def _snapshot_lines() -> list[str]:
    return resources.files(__package__).joinpath(SNAPSHOT_FILE).read_text(encoding="utf-8").splitlines()


def snapshot_date() -> str:
    """The date in the snapshot's header comment (`# snapshot_date: YYYY-MM-DD`)."""
    for line in _snapshot_lines():
        if line.startswith("# snapshot_date:"):
            return line.split(":", 1)[1].strip()
    return "undated"


def snapshot_offers(clouds: list[str] = ()) -> list[Offer]:
    wanted = {c.lower() for c in clouds}
    source = f"bundled price snapshot of {snapshot_date()} (approximate, not live)"
    offers = read_offers_csv(_snapshot_lines(), source)
    return [o for o in offers if not wanted or o.cloud in wanted]


def load_offers(clouds: list[str] = (), environ=os.environ) -> tuple[list[Offer], str]:
    """(offers, where they came from): SkyPilot's catalog if present, else the snapshot.

    When SkyPilot's catalog is there it is the only source: mixing its prices with the
    snapshot's would compare numbers of different ages.
    """
    offers = catalog_offers(clouds, environ)
    if offers:
        return offers, f"SkyPilot catalog in {catalog_dir(environ)}"
    offers = snapshot_offers(clouds)
    if offers:
        return offers, f"bundled price snapshot of {snapshot_date()} (approximate, not live)"
    return [], "none"


def user_offers(hourly_usd: float, gpus) -> list[Offer]:
    """The last resort: the user's `cost.hourly_usd` for every GPU (same price everywhere)."""
    return [
        Offer("user", "", gpu, 1, "", "", hourly_usd, None, "params cost.hourly_usd")
        for gpu in gpus
    ]


# ------------------------------------------------------------ price of a running job


def gpu_from_device_name(device_name: str) -> str | None:
    """SkyPilot's name for a CUDA device name: "NVIDIA A100-SXM4-80GB" -> "A100-80GB"."""
    name = device_name.upper()
    if "A100" in name:
        return "A100-80GB" if "80G" in name else "A100"
    for key in ("H200", "H100", "L40S", "A10G", "RTX4090"):
        if key in name.replace(" ", "").replace("GEFORCE", ""):
            return key
    if re.search(r"\bL4\b", name):
        return "L4"
    if re.search(r"\bA10\b", name):
        return "A10"
    return None


def _local_gpu() -> str | None:
    try:
        import torch

        return gpu_from_device_name(torch.cuda.get_device_name(0)) if torch.cuda.is_available() else None
    except Exception:  # no torch build with CUDA, no driver
        return None


def _truthy(text: str | None) -> bool:
    return (text or "").strip().lower() in {"1", "true", "yes", "on"}


def _cluster_info(environ) -> dict | None:
    raw = environ.get("SKYPILOT_CLUSTER_INFO")
    if not raw:
        return None
    try:
        info = json.loads(raw)
    except json.JSONDecodeError:
        return None
    return info if isinstance(info, dict) else None


def _matching(offers: list[Offer], gpu: str, count: int, region: str, zone: str, spot: bool) -> list[Offer]:
    found = [
        o for o in offers
        if o.accelerator == gpu and o.count == count and o.hourly(spot) is not None
        and (not region or o.region == region)
    ]
    # Catalogs list spot prices per zone; on-demand rows may have no zone.
    in_zone = [o for o in found if zone and o.zone == zone]
    return in_zone or found


UNKNOWN_ON_CLOUD = "unknown on a cloud machine"


def resolve_hourly_price(params, environ=os.environ, device_name: str | None = None) -> tuple[float | None, str]:
    """(USD per hour, source) for the machine this process runs on.

    Order: explicit `cost.hourly_usd` > SkyPilot catalog (cloud/region/zone from
    SKYPILOT_CLUSTER_INFO, GPU from GPU_MODEL / GPU_COUNT / USE_SPOT) > bundled snapshot
    for the same cloud and GPU. Then, off the cloud: (0.0, "unknown"); on a SkyPilot VM:
    (None, "unknown on a cloud machine: <what was looked for>"). With GPU_MODEL empty the
    GPU is named from `device_name` (torch.cuda.get_device_name) or the local CUDA device.
    """
    if params.cost.hourly_usd is not None:
        return float(params.cost.hourly_usd), "params cost.hourly_usd"
    info = _cluster_info(environ)
    if not info or str(info.get("cloud") or "").lower() in ("", "local"):  # `launch --backend local`: your machine
        return 0.0, "unknown"
    # The task YAML may leave GPU_MODEL empty: then the GPU itself says what it is.
    gpu = canonical_gpu(environ.get("GPU_MODEL", "")) or (device_name and gpu_from_device_name(device_name)) or _local_gpu()
    if not gpu:
        named = environ.get("GPU_MODEL") or device_name or "no GPU"
        return None, f"{UNKNOWN_ON_CLOUD}: no price list names this machine's GPU ({named}); set cost.hourly_usd"
    cloud = str(info.get("cloud", "")).lower()
    region, zone = str(info.get("region") or ""), str(info.get("zone") or "")
    count = _count(environ.get("GPU_COUNT") or "1") or 1
    spot = _truthy(environ.get("USE_SPOT"))
    kind = "spot" if spot else "on-demand"
    where = "/".join(part for part in (cloud, region, zone) if part)

    found = _matching(catalog_offers([cloud], environ), gpu, count, region, zone, spot)
    if found:
        best = min(found, key=lambda o: o.hourly(spot))
        return best.hourly(spot), f"SkyPilot catalog: {count}x {gpu} {kind} on {where} ({best.instance_type})"
    # The snapshot has one region per cloud: match the cloud and GPU, and the region if listed.
    snapshot = [o for o in snapshot_offers([cloud]) if o.accelerator == gpu and o.count == count]
    found = _matching(snapshot, gpu, count, region, zone, spot) or [o for o in snapshot if o.hourly(spot)]
    if found:
        best = min(found, key=lambda o: o.hourly(spot))
        return best.hourly(spot), f"bundled snapshot of {snapshot_date()}: {count}x {gpu} {kind} on {best.cloud}/{best.region}"
    return None, (f"{UNKNOWN_ON_CLOUD}: no {count}x {gpu} {kind} row for {where or 'this cloud'} in SkyPilot's catalog "
                  f"({catalog_dir(environ)}) or the bundled snapshot; set cost.hourly_usd")


# ---------------------------------------------------------------------- own hardware


def energy_cost_per_hour(watts: float, usd_per_kwh: float) -> float:
    """Electricity for one hour at a steady draw of `watts`."""
    return watts / 1000 * usd_per_kwh


def measured_gpu_watts(index: int = 0) -> float | None:
    """The GPU's current power draw from NVML, or None without a GPU or nvidia-ml-py."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # no driver, no GPU: NVML raises its own error types
        return None
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        return pynvml.nvmlDeviceGetPowerUsage(handle) / 1000  # milliwatts
    except Exception:
        return None
    finally:
        pynvml.nvmlShutdown()


def machine_price(params, device, world: int) -> tuple[float | None, str]:
    """USD per hour of the machine a training run is on, and where that figure came from.

    cost.hourly_usd, else SkyPilot's catalog / the bundled snapshot for the cloud, region and
    GPU of a SkyPilot job, else, on your own GPU with cost.electricity_usd_per_kwh set, the
    measured power draw (NVML) times the electricity price; else unknown: 0 on your own
    machine, None on a cloud machine (its cost is then logged as unknown, not as $0).
    `device` is the torch device the run trains on; `world` its number of processes.
    """
    import torch

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    hourly, source = resolve_hourly_price(params, device_name=device_name)
    kwh_price = params.cost.electricity_usd_per_kwh
    if source == "unknown" and device.type == "cuda" and kwh_price is not None:
        watts = measured_gpu_watts() or 0.0
        return energy_cost_per_hour(watts * world, kwh_price), f"energy: {watts:.0f} W x {world} GPU(s) at ${kwh_price}/kWh"
    return hourly, source
