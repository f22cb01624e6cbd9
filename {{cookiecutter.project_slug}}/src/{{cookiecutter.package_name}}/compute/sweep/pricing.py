"""Step 2, price: `plan` prices every variant on its cheapest offer; the total above --budget
(default budget.max_sweep_usd), or any variant above budget.max_run_usd, refuses the whole
sweep with the numbers (exit 3) before anything starts.
"""

from __future__ import annotations

from ...config import ConfigError
from .. import plan
from .text import _table, _usd
from .variants import SweepError, Variant


class SweepOverBudget(plan.BudgetExceeded):
    """The variants together (or one of them) are estimated above the budget: exit code 3."""


def price(variants: list[Variant], environ=None) -> float:
    """The plan's cheapest offer for every variant (variant.estimate); returns the total.

    A variant above budget.max_run_usd stops the sweep here, as it would stop `launch`."""
    total = 0.0
    for variant in variants:
        planned = plan.make_plan(variant.params, environ)
        try:
            plan.check_budget(planned, variant.params)
        except plan.BudgetExceeded as err:
            raise SweepOverBudget(f"variant {variant.name} ({' '.join(variant.sets)}): {err}") from None
        except ConfigError as err:
            raise SweepError(f"variant {variant.name} ({' '.join(variant.sets)}): {err}") from None
        variant.estimate = planned["cheapest"]
        total += variant.estimate["usd_per_run"]
    return total


def price_table(variants: list[Variant], total: float, budget: float) -> str:
    keys = list(variants[0].varying)
    header = ["variant", *keys, "estimate", "offer"]
    rows = []
    for v in variants:
        offer = v.estimate or {}
        machine = offer.get("machine") or offer.get("gpu", "?")  # "4x RTX4090": the whole machine, not one card
        where = f"{machine} {'spot' if offer.get('spot') else 'on-demand'} on {offer.get('cloud', '?')}"
        rows.append([v.name, *(v.varying[k] for k in keys), _usd(offer.get("usd_per_run")), where])
    verdict = "within" if total <= budget else "OVER"
    return _table(header, rows) + f"\ntotal {_usd(total)} for {len(variants)} variants: {verdict} the sweep budget {_usd(budget)}\n"


def check_sweep_budget(variants: list[Variant], total: float, budget: float) -> None:
    if total > budget:
        dearest = max(variants, key=lambda v: v.estimate["usd_per_run"])
        each = ", ".join(f"{v.name} {_usd(v.estimate['usd_per_run'])}" for v in variants)
        raise SweepOverBudget(
            f"the {len(variants)} variants are estimated at {_usd(total)} together "
            f"({each}), above the sweep budget "
            f"{_usd(budget)} (--budget, default budget.max_sweep_usd); drop variants (the dearest: {dearest.name}), "
            f"lower train.max_steps, or raise the budget"
        )
