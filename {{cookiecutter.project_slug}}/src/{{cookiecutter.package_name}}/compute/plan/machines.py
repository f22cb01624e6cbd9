"""Machines, not cards: an offer is a machine (GPU type, GPUs per node, nodes, vCPUs, host RAM,
interconnect, spot and on-demand price), and how fast its GPUs talk to each other.

COMMUNICATION is the one table of communication assumptions (the README shows it, and a test
checks that the two agree). Bandwidths are NCCL "bus bandwidth" per GPU, the figure its tests
report: an all-gather of S bytes over k GPUs moves S x (k-1)/k bytes through each GPU's link.
They are assumptions, rounded down from typical measurements; replace them with your own
(`nccl-tests`' all_gather_perf on the machine) where it matters.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import prices
from .gpus import GPUS

# interconnect class: (GB/s per GPU, what it is)
COMMUNICATION = {
    "pcie": (10.0, "PCIe 4.0 x16 without peer links (consumer cards such as the RTX 4090: traffic goes through "
                   "host memory), or cloud PCIe cards behind a shared switch"),
    "nvlink": (100.0, "NVLink bridges between pairs of PCIe cards (A100 / H100 NVL)"),
    "nvswitch": (200.0, "SXM boards with NVSwitch (A100, H100, H200 HGX): every GPU at full NVLink speed"),
    "network": (6.25, "between nodes: 50 Gbit/s Ethernet of ordinary cloud VMs, shared by the node's GPUs "
                      "(EFA / InfiniBand clusters are faster; not planned)"),
}
COLLECTIVE_LATENCY_S = 30e-6  # start-up of one NCCL collective (per layer, per direction)
DATA_PARALLEL_EFFICIENCY = 0.95  # stragglers and the step's end: DDP reaches ~95% of k x one GPU
MAX_NODES = 4  # several machines only when one is not enough, and at most this many

# GPUs that come on SXM boards: 8 of them in one machine are linked by NVSwitch.
SXM_GPUS = ("A100", "A100-80GB", "H100", "H200")
SXM_INSTANCE_HINTS = ("sxm", "p4d", "p4de", "p5.", "a2-", "a3-", "nd96")


@dataclass(frozen=True)
class Machine:
    """What a plan runs on: `nodes` machines of `gpus` GPUs each, and the host around them."""

    gpu: str
    gpus: int = 1  # per node
    nodes: int = 1
    vcpus: float | None = None  # per node
    host_ram_gib: float | None = None  # per node; None: not listed (not checked)
    interconnect: str = "none"  # between the GPUs of a node: none (one GPU), pcie, nvlink, nvswitch

    @property
    def world(self) -> int:
        return self.gpus * self.nodes

    @property
    def label(self) -> str:
        node = f"{self.gpus}x {self.gpu}"
        return node if self.nodes == 1 else f"{self.nodes} nodes x {node}"

    @property
    def spec(self) -> str:
        """How SkyPilot's accelerators line names one node, as `GPU:count`."""
        return f"{self.gpu}:{self.gpus}"


def interconnect_of(offer: prices.Offer) -> str:
    """The offer's interconnect: as listed (the snapshot), else inferred from the GPU and the
    instance type (SkyPilot's catalogs do not say): SXM GPUs eight at a time or on a known SXM
    instance type have NVSwitch; anything else is assumed PCIe, the slow, safe guess."""
    if offer.count <= 1:
        return "none"
    if offer.interconnect in COMMUNICATION:
        return offer.interconnect
    instance = offer.instance_type.lower()
    if offer.accelerator in SXM_GPUS and (offer.count == 8 or any(hint in instance for hint in SXM_INSTANCE_HINTS)):
        return "nvswitch"
    return "pcie"


def machine_of(offer: prices.Offer, nodes: int = 1) -> Machine:
    return Machine(offer.accelerator, max(1, offer.count), nodes, offer.vcpus, offer.memory_gib, interconnect_of(offer))


def known_machines(offers: list[prices.Offer]) -> list[prices.Offer]:
    """The offers for GPUs the planner has figures for (memory, speed)."""
    return [offer for offer in offers if offer.accelerator in GPUS and offer.count >= 1]


def collective_seconds(machine: Machine, nbytes: float, kind: str = "all_gather") -> float:
    """Time of one collective over all of the machine's GPUs moving `nbytes` in total (the size
    of the gathered tensor, or of the tensor being all-reduced): within a node over its
    interconnect, between nodes over the network, one after the other (no overlap assumed
    between the two levels). An all-reduce moves twice what an all-gather does."""
    if machine.world <= 1 or nbytes <= 0:
        return 0.0
    factor = 2.0 if kind == "all_reduce" else 1.0
    seconds = COLLECTIVE_LATENCY_S
    if machine.gpus > 1:
        bandwidth = COMMUNICATION[machine.interconnect if machine.interconnect in COMMUNICATION else "pcie"][0]
        seconds += factor * nbytes * (machine.gpus - 1) / machine.gpus / (bandwidth * 1e9)
    if machine.nodes > 1:  # each node receives the other nodes' part through its network link
        seconds += factor * nbytes * (machine.nodes - 1) / machine.nodes / (COMMUNICATION["network"][0] * 1e9)
    return seconds


def communication_table() -> str:
    """COMMUNICATION as the markdown table the README shows."""
    rows = ["| link | GB/s per GPU | what it stands for |", "|---|---|---|"]
    rows += [f"| {name} | {speed:g} | {what} |" for name, (speed, what) in COMMUNICATION.items()]
    return "\n".join(rows)
