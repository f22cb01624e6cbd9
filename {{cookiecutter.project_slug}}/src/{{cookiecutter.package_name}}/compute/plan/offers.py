"""Every offer as a machine, planned and priced: the strategy for it (strategy.py; several nodes
when one is not enough), dollars per RUN for spot and on-demand (a machine 3x faster at 2x the
hourly price is the cheaper one), the expected cost with preemptions (spot.py) by which the
offers are ranked, the Pareto front of dollars against hours, and the machines that cannot hold
the run, with the reason."""

from __future__ import annotations

from ...config import Params
from .. import prices
from .machines import MAX_NODES, Machine, known_machines, machine_of
from .memory import TrainSetup
from .shapes import ModelShape
from .spot import checkpoint_interval_hours, expected_spot_run
from .strategy import plan_machine

# What a ranked offer copies from its machine's plan.
PLANNED_KEYS = (
    "machine", "gpu", "gpus", "nodes", "interconnect", "strategy", "accelerate_config", "micro_batch",
    "gradient_checkpointing", "offload_activations", "memory", "peak_gib", "host_ram_gib", "host_ram_needed_gib",
    "hours", "compute_hours", "communication_hours", "setup_hours",
)


def plan_offers(shape: ModelShape, setup: TrainSetup, params: Params, work: dict,
                offers: list[prices.Offer]) -> tuple[list[dict], list[dict]]:
    """(ranked offers, cheapest first; machines excluded, with the reason)."""
    planned: dict[Machine, dict] = {}

    def plan(machine: Machine) -> dict:
        if machine not in planned:
            planned[machine] = plan_machine(shape, setup, params, work, machine)
        return planned[machine]

    ranked, excluded = [], {}
    usable = known_machines(offers)
    largest: dict[tuple, int] = {}  # the most GPUs one machine of a GPU type has on a cloud
    for offer in usable:
        largest[offer.cloud, offer.accelerator] = max(offer.count, largest.get((offer.cloud, offer.accelerator), 0))
    for offer in usable:
        entry = plan(machine_of(offer))
        # Several machines only when one is not enough: of the largest machine of its GPU on that cloud.
        several = offer.count == largest[offer.cloud, offer.accelerator]
        nodes = 2
        while several and not entry["fits"] and nodes <= MAX_NODES:
            more = plan(machine_of(offer, nodes))
            entry = more if more["fits"] else entry
            nodes *= 2
        if not entry["fits"]:
            more = f" (and on up to {MAX_NODES} such machines)" if several and MAX_NODES > 1 else ""
            excluded[entry["machine"], offer.cloud] = {"machine": entry["machine"], "cloud": offer.cloud, "gpu": entry["gpu"],
                                                       "gpus": entry["gpus"], "reason": entry["reason"] + more}
            continue
        on_demand = offer.price * entry["nodes"] if offer.price is not None else None
        for spot in (True, False):
            hourly = offer.hourly(spot)
            if hourly is None:
                continue
            hourly *= entry["nodes"]
            ranked.append({
                **{key: entry[key] for key in PLANNED_KEYS},
                "cloud": offer.cloud,
                "region": offer.region,
                "instance_type": offer.instance_type,
                "spot": spot,
                "usd_per_hour": round(hourly, 4),
                "on_demand_usd_per_hour": on_demand,
                "usd_per_run": round(hourly * entry["hours"], 4),
                "source": offer.source,
            })
    ranked = _cheapest_per_offer(ranked)
    _add_preemptions(ranked, params, work)
    # By the expected dollars: a spot offer that runs longer (or on more nodes) is preempted more
    # often, and each preemption costs a restart and lost steps; on-demand offers as planned.
    ranked.sort(key=lambda o: (o["expected_usd"], o["hours"], o["machine"], o["cloud"]))
    _mark_pareto_front(ranked)
    for rank, offer in enumerate(ranked, start=1):
        offer["rank"] = rank
    return ranked, sorted(excluded.values(), key=lambda e: (e["gpu"], e["gpus"], e["cloud"]))


def _cheapest_per_offer(ranked: list[dict]) -> list[dict]:
    """One entry per (machine, cloud, spot): the cheapest region / instance type."""
    best: dict[tuple, dict] = {}
    for offer in ranked:
        key = (offer["machine"], offer["cloud"], offer["spot"])
        if key not in best or offer["usd_per_run"] < best[key]["usd_per_run"]:
            best[key] = offer
    return list(best.values())


def _add_preemptions(ranked: list[dict], params: Params, work: dict) -> None:
    """Expected preemptions, hours and dollars (on-demand offers: as planned)."""
    max_preemptions = getattr(params.compute, "max_preemptions", None)
    for offer in ranked:
        if not offer["spot"]:
            offer.update(preemptions=0.0, fallback_on_demand=False, expected_hours=offer["hours"],
                         expected_usd=offer["usd_per_run"])
            continue
        interval = checkpoint_interval_hours(params, offer["compute_hours"] + offer["communication_hours"], work["steps"])
        offer.update(expected_spot_run(offer, offer["on_demand_usd_per_hour"], interval, max_preemptions))


def _mark_pareto_front(ranked: list[dict]) -> None:
    """`pareto`: no other offer of the same kind (spot or on-demand) is both as cheap and as fast,
    and better in one of the two. Ranked cheapest first, so one pass keeps the fastest so far."""
    for spot in (True, False):
        fastest = float("inf")
        for offer in (o for o in ranked if o["spot"] == spot):
            offer["pareto"] = offer["hours"] < fastest
            fastest = min(fastest, offer["hours"])
