"""The whole plan: one GPU's estimate (fit, memory, hours), every GPU, machine and offer joined
into one dictionary (`make_plan`), the cheapest offer (by a deadline, when there is one), the
estimate for the GPU a run actually got (logged by training), and `check_budget`, which refuses
a plan whose cheapest run exceeds `budget.max_run_usd` or that no offer finishes in time."""

from __future__ import annotations

import os
from dataclasses import asdict

from ...config import ConfigError, Params
from ...export.vllm import planned_warning
from .. import prices
from .fit import base_setup, choose_fit, longest_row
from .gpus import GPU, GPUS, usable_gib
from .machines import Machine, known_machines, machine_of
from .memory import TrainSetup, targeted_modules
from .offers import plan_offers
from .render import _usd, machine_kind
from .shapes import ModelShape, load_model_shape
from .speed import dataset_summary, epochs_warning, hours_on, run_workload
from .strategy import plan_machine, spare_host_per_gpu


class BudgetExceeded(Exception):
    """The cheapest estimated run costs more than `budget.max_run_usd`."""


class DeadlineMissed(BudgetExceeded):
    """No offer finishes within the deadline (`--deadline`, budget.deadline_hours): exit code 3 too."""


def gpu_estimate(shape: ModelShape, setup: TrainSetup, params: Params, work: dict, gpu: GPU,
                 host_limit: float | None = None) -> dict:
    """Fit, micro-batch, peak memory and hours of the run on one GPU type, alone; `host_limit`:
    the pinned host RAM (bytes) the roomiest machine with that GPU can spare per GPU."""
    fit = choose_fit(shape, setup, params, gpu, host_limit=host_limit)
    entry = {
        "gpu": gpu.name,
        "memory_gib": gpu.memory_gib,
        "usable_gib": round(usable_gib(gpu), 2),
        "fits": fit["fits"],
        "reason": fit.get("reason"),
        "micro_batch": fit["setup"].micro_batch,
        "gradient_checkpointing": fit["setup"].checkpointing,
        "offload_activations": fit["setup"].offload,
        "memory": fit["memory"].gib(),
        "longest_row": longest_row(shape, setup, params, gpu, host_limit=host_limit),
    }
    entry.update({key: round(value, 4) for key, value in hours_on(gpu, work, fit["setup"], shape).items()})
    return entry


def make_plan(params: Params, environ=None, deadline_hours: float | None = None) -> dict:
    """Memory, time and dollars per run on every machine and offer; see the package docstring.

    `deadline_hours` (else budget.deadline_hours): the cheapest offer that finishes in time."""
    environ = os.environ if environ is None else environ
    shape = load_model_shape(params.model.base)
    summary = dataset_summary(params)
    work = run_workload(shape, params, summary)
    setup = base_setup(params)
    targeted_modules(shape, setup.targets)  # a typo in target_modules fails here, with the names

    offers, price_source = prices.load_offers(params.compute.clouds, environ)
    if not offers and params.cost.hourly_usd is not None:
        offers, price_source = prices.user_offers(params.cost.hourly_usd, GPUS), "params cost.hourly_usd"

    ranked, excluded_machines = plan_offers(shape, setup, params, work, offers)
    host_limits = _host_limits(shape, setup, offers)
    gpus = {name: gpu_estimate(shape, setup, params, work, gpu, host_limits.get(name)) for name, gpu in GPUS.items()}
    excluded = [{"gpu": name, "reason": entry["reason"]} for name, entry in gpus.items() if not entry["fits"]]
    for name in GPUS:
        if gpus[name]["fits"] and not any(o["gpu"] == name for o in ranked):
            excluded.append({"gpu": name, "reason": f"fits one GPU, but no offer of it on {_clouds(params)} in the prices"})

    preferred = [o for o in ranked if o["spot"] == params.compute.spot] or ranked
    if deadline_hours is None:
        deadline_hours = getattr(params.budget, "deadline_hours", None)
    in_time = [o for o in preferred if deadline_hours is None or o["hours"] <= deadline_hours]
    cheapest = in_time[0] if in_time else None
    return {
        "note": "estimates, not measurements: memory within ~20% of published runs; time assumes an MFU per GPU "
                "and the interconnect speeds of the README's table",
        "model": {**asdict(shape), "total_params": shape.total_params, "matmul_params": shape.matmul_params},
        "setup": {k: v for k, v in asdict(setup).items() if k not in ("micro_batch", "checkpointing", "offload")},
        "work": work,
        "prices": {"source": price_source, "offers": len(offers)},
        "gpus": list(gpus.values()),
        "ranked": ranked,
        "excluded": excluded,
        "excluded_machines": excluded_machines,
        "cheapest": cheapest,
        "fastest": min(preferred, key=lambda o: (o["hours"], o["usd_per_run"])) if preferred else None,
        "candidates": _distinct([o["machine"] for o in in_time]),
        "deadline": _deadline(deadline_hours, preferred, cheapest),
        "budget": {
            "max_run_usd": params.budget.max_run_usd,
            "cheapest_usd": cheapest["usd_per_run"] if cheapest else None,
            "within": bool(cheapest) and cheapest["usd_per_run"] <= params.budget.max_run_usd,
        },
        "spot": params.compute.spot,
        # Things the numbers above are fine with but the run may not be: said in the table too.
        "warnings": [w for w in (epochs_warning(work), planned_warning(params)) if w],
    }


def _host_limits(shape: ModelShape, setup: TrainSetup, offers: list[prices.Offer]) -> dict[str, float]:
    """Per GPU type, the most pinned host RAM (bytes) one GPU can offload into on any offer."""
    limits: dict[str, float] = {}
    for offer in known_machines(offers):
        spare = spare_host_per_gpu(shape, setup, machine_of(offer))
        if spare is not None:
            limits[offer.accelerator] = max(spare, limits.get(offer.accelerator, spare))
    return limits


def _deadline(hours: float | None, preferred: list[dict], cheapest: dict | None) -> dict | None:
    if hours is None:
        return None
    fastest = min(preferred, key=lambda o: (o["hours"], o["usd_per_run"])) if preferred else None
    return {"hours": hours, "met": cheapest is not None,
            "short_by_hours": None if cheapest or not fastest else round(fastest["hours"] - hours, 4)}


def estimate_for_gpu(params: Params, gpu_name: str, hourly_usd: float | None, gpus: int = 1) -> dict | None:
    """The plan's estimate for the machine a run actually got (`gpus` of `gpu_name`; the
    interconnect unknown, so planned as PCIe), priced at what it actually pays: logged at the
    start of training so that MLflow shows estimate against actual."""
    gpu = GPUS.get(gpu_name)
    if gpu is None:
        return None
    shape = load_model_shape(params.model.base)
    setup, work = base_setup(params), run_workload(shape, params, dataset_summary(params))
    if gpus > 1:
        entry = plan_machine(shape, setup, params, work, Machine(gpu_name, gpus, interconnect="pcie"))
        entry.setdefault("hours", 0.0)
    else:
        entry = gpu_estimate(shape, setup, params, work, gpu)
    estimate = {"estimated_hours": entry["hours"], "estimated_fits": entry["fits"]}
    if hourly_usd is not None and entry["hours"]:  # None: the price of this machine is unknown
        estimate["estimated_cost_usd"] = entry["hours"] * hourly_usd
    return estimate


def _distinct(names: list[str]) -> list[str]:
    return list(dict.fromkeys(names))


def _clouds(params: Params) -> str:
    return ", ".join(params.compute.clouds) or "any cloud"


def check_budget(plan: dict | Params, params: Params | None = None) -> float:
    """The cheapest run's dollars; BudgetExceeded (with the numbers) when above the budget.

    `check_budget(plan, params)`, or `check_budget(params)` to plan first (what `launch` does).
    """
    if params is None:
        params, plan = plan, make_plan(plan)
    cheapest = plan["cheapest"]
    if cheapest is None:
        deadline = plan.get("deadline")
        if deadline and deadline["short_by_hours"] is not None:
            fastest = plan["fastest"]
            raise DeadlineMissed(
                f"no offer finishes within {deadline['hours']:g} h (--deadline / budget.deadline_hours): the fastest, "
                f"{fastest['machine']} {machine_kind(fastest)} on {fastest['cloud']}, takes {fastest['hours']:.2f} h, "
                f"{deadline['short_by_hours']:.2f} h too long ({_usd(fastest['usd_per_run'])}); lower train.max_steps, "
                "allow more hours, or add clouds with faster machines (compute.clouds)"
            )
        if plan["gpus"] and not any(entry["fits"] for entry in plan["gpus"]):
            largest = max(plan["gpus"], key=lambda entry: entry["usable_gib"])
            machines = plan.get("excluded_machines") or []
            biggest = max(machines, key=lambda e: (e["gpus"], GPUS[e["gpu"]].memory_gib), default=None)
            also = f"; nor can any machine in the prices ({biggest['machine']}: {biggest['reason']})" if biggest else ""
            raise ConfigError(
                f"no single GPU can hold this run ({largest['gpu']}, the largest: {largest['reason']}){also}; use "
                "model.method=qlora or a smaller data.max_length, or price machines of several GPUs (compute.clouds; "
                "configs/accelerate/fsdp.yaml shards the base over them)"
            )
        reasons = "; ".join([f"{e['gpu']}: {e['reason']}" for e in plan["excluded"]]
                            + [f"{e['machine']}: {e['reason']}" for e in plan.get("excluded_machines", [])]) or "no prices"
        raise ConfigError(f"no GPU can run this plan ({reasons})")
    budget = params.budget.max_run_usd
    if cheapest["usd_per_run"] > budget:
        raise BudgetExceeded(
            f"estimated {_usd(cheapest['usd_per_run'])} per run on the cheapest offer "
            f"({cheapest['machine']} {machine_kind(cheapest)} on {cheapest['cloud']}: {cheapest['hours']:.2f} h x "
            f"{_usd(cheapest['usd_per_hour'])}/h) "
            f"exceeds budget.max_run_usd={_usd(budget)}; lower train.max_steps or data.max_length, "
            f"pick a smaller model, or raise budget.max_run_usd"
        )
    return cheapest["usd_per_run"]
