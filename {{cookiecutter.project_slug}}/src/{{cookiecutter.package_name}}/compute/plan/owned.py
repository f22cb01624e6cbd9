"""`--owned GPU`: your own card (energy, optional amortisation) against the cheapest spot
offer, and the break-even point for buying it, in runs per month."""

from __future__ import annotations

from ...config import ConfigError
from .. import prices
from .gpus import GPUS

DEFAULT_USD_PER_KWH = 0.17  # around the 2025 US residential average; pass yours
DEFAULT_PAYBACK_MONTHS = 24


def compare_owned(
    plan: dict,
    gpu_name: str,
    usd_per_kwh: float = DEFAULT_USD_PER_KWH,
    watts: float | None = None,
    card_price_usd: float | None = None,
    expected_runs: int | None = None,
    payback_months: float = DEFAULT_PAYBACK_MONTHS,
) -> dict:
    """A run on your own card against the cheapest spot offer.

    Energy is the card's draw (measured `watts`, else its TDP) times the run's compute hours
    times the electricity price. The card's price, spread over `expected_runs`, is the
    optional amortisation. Break-even: buying the card pays for itself after
    card price / (cloud run - energy per run) runs; per month over `payback_months`.
    """
    name = prices.canonical_gpu(gpu_name)
    if name not in GPUS:
        raise ConfigError(f"--owned {gpu_name}: unknown GPU; known: {', '.join(GPUS)}")
    gpu = GPUS[name]
    entry = next(g for g in plan["gpus"] if g["gpu"] == name)
    if not entry["fits"]:
        reason = next(e["reason"] for e in plan["excluded"] if e["gpu"] == name)
        raise ConfigError(f"--owned {name}: the run does not fit ({reason})")
    watts = watts if watts is not None else gpu.tdp_watts
    card_price = card_price_usd if card_price_usd is not None else gpu.card_price_usd
    hours = entry["compute_hours"]  # no VM to boot at home
    energy = hours * prices.energy_cost_per_hour(watts, usd_per_kwh)
    amortisation = card_price / expected_runs if (card_price and expected_runs) else 0.0
    spot = [o for o in plan["ranked"] if o["spot"]] or plan["ranked"]
    cloud = spot[0] if spot else None
    result = {
        "gpu": name,
        "hours": hours,
        "watts": watts,
        "usd_per_kwh": usd_per_kwh,
        "energy_usd": energy,
        "amortisation_usd": amortisation,
        "owned_usd_per_run": energy + amortisation,
        "card_price_usd": card_price,
        "cloud": cloud,
        "cloud_usd_per_run": cloud["expected_usd"] if cloud else None,  # with its expected preemptions
        "savings_per_run_usd": None,
        "break_even_runs": None,
        "break_even_runs_per_month": None,
        "payback_months": payback_months,
    }
    if cloud and card_price:
        savings = cloud["expected_usd"] - energy
        result["savings_per_run_usd"] = savings
        if savings > 0:
            result["break_even_runs"] = card_price / savings
            result["break_even_runs_per_month"] = card_price / savings / payback_months
    return result
