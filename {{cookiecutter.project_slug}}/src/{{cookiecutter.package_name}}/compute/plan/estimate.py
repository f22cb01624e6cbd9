"""The whole plan: one GPU's estimate (fit, memory, hours), every GPU and offer joined into one
dictionary (`make_plan`), the estimate for the GPU a run actually got (logged by training), and
`check_budget`, which refuses a plan whose cheapest run exceeds `budget.max_run_usd`."""

from __future__ import annotations

import os
from dataclasses import asdict

from ...config import ConfigError, Params
from .. import prices
from .fit import base_setup, choose_fit, longest_row
from .gpus import GPU, GPUS, rank_offers, usable_gib
from .memory import TrainSetup, targeted_modules
from .render import _usd
from .shapes import ModelShape, load_model_shape
from .speed import dataset_summary, epochs_warning, hours_on, run_workload


class BudgetExceeded(Exception):
    """The cheapest estimated run costs more than `budget.max_run_usd`."""


def gpu_estimate(shape: ModelShape, setup: TrainSetup, params: Params, work: dict, gpu: GPU) -> dict:
    """Fit, micro-batch, peak memory and hours of the run on one GPU type."""
    fit = choose_fit(shape, setup, params, gpu)
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
        "longest_row": longest_row(shape, setup, params, gpu),
    }
    entry.update({key: round(value, 4) for key, value in hours_on(gpu, work, fit["setup"], shape).items()})
    return entry


def make_plan(params: Params, environ=None) -> dict:
    """Memory, time and dollars per run on every GPU and offer; see the package docstring."""
    environ = os.environ if environ is None else environ
    shape = load_model_shape(params.model.base)
    summary = dataset_summary(params)
    work = run_workload(shape, params, summary)
    setup = base_setup(params)
    targeted_modules(shape, setup.targets)  # a typo in target_modules fails here, with the names

    offers, price_source = prices.load_offers(params.compute.clouds, environ)
    if not offers and params.cost.hourly_usd is not None:
        offers, price_source = prices.user_offers(params.cost.hourly_usd, GPUS), "params cost.hourly_usd"

    gpus = {gpu.name: gpu_estimate(shape, setup, params, work, gpu) for gpu in GPUS.values()}
    excluded = [{"gpu": name, "reason": entry["reason"]} for name, entry in gpus.items() if not entry["fits"]]
    ranked = rank_offers(offers, gpus)
    for name in GPUS:
        if gpus[name]["fits"] and not any(o["gpu"] == name for o in ranked):
            excluded.append({"gpu": name, "reason": f"fits, but no single-GPU offer on {_clouds(params)} in the prices"})

    preferred = [o for o in ranked if o["spot"] == params.compute.spot] or ranked
    cheapest = preferred[0] if preferred else None
    return {
        "note": "estimates, not measurements: memory within ~20% of published runs; time assumes an MFU per GPU",
        "model": {**asdict(shape), "total_params": shape.total_params, "matmul_params": shape.matmul_params},
        "setup": {k: v for k, v in asdict(setup).items() if k not in ("micro_batch", "checkpointing", "offload")},
        "work": work,
        "prices": {"source": price_source, "offers": len(offers)},
        "gpus": list(gpus.values()),
        "ranked": ranked,
        "excluded": excluded,
        "cheapest": cheapest,
        "candidates": _distinct([o["gpu"] for o in preferred]),
        "budget": {
            "max_run_usd": params.budget.max_run_usd,
            "cheapest_usd": cheapest["usd_per_run"] if cheapest else None,
            "within": bool(cheapest) and cheapest["usd_per_run"] <= params.budget.max_run_usd,
        },
        "spot": params.compute.spot,
        # Things the numbers above are fine with but the run may not be: said in the table too.
        "warnings": [w for w in (epochs_warning(work),) if w],
    }


def estimate_for_gpu(params: Params, gpu_name: str, hourly_usd: float | None) -> dict | None:
    """The plan's estimate for the GPU a run actually got, priced at what it actually pays:
    logged at the start of training so that MLflow shows estimate against actual."""
    gpu = GPUS.get(gpu_name)
    if gpu is None:
        return None
    shape = load_model_shape(params.model.base)
    entry = gpu_estimate(shape, base_setup(params), params, run_workload(shape, params, dataset_summary(params)), gpu)
    estimate = {"estimated_hours": entry["hours"], "estimated_fits": entry["fits"]}
    if hourly_usd is not None:  # None: the price of this machine is unknown
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
        if plan["gpus"] and not any(entry["fits"] for entry in plan["gpus"]):
            largest = max(plan["gpus"], key=lambda entry: entry["usable_gib"])
            raise ConfigError(
                f"no single GPU can hold this run ({largest['gpu']}, the largest: {largest['reason']}); use "
                "model.method=qlora or a smaller data.max_length, or shard the base over several GPUs with "
                "configs/accelerate/fsdp.yaml (this planner plans one GPU)"
            )
        reasons = "; ".join(f"{e['gpu']}: {e['reason']}" for e in plan["excluded"]) or "no prices"
        raise ConfigError(f"no GPU can run this plan ({reasons})")
    budget = params.budget.max_run_usd
    if cheapest["usd_per_run"] > budget:
        kind = "spot" if cheapest["spot"] else "on-demand"
        raise BudgetExceeded(
            f"estimated {_usd(cheapest['usd_per_run'])} per run on the cheapest offer "
            f"({cheapest['gpu']} {kind} on {cheapest['cloud']}: {cheapest['hours']:.2f} h x {_usd(cheapest['usd_per_hour'])}/h) "
            f"exceeds budget.max_run_usd={_usd(budget)}; lower train.max_steps or data.max_length, "
            f"pick a smaller model, or raise budget.max_run_usd"
        )
    return cheapest["usd_per_run"]
