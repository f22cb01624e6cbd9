"""The `plan` subcommand: print the plan (or JSON), optionally write sky/train.yaml and compare
an owned card, then check the budget."""

from __future__ import annotations

import argparse
import json

from ...config import ConfigError, load_params
from .estimate import check_budget, make_plan
from .gpus import GPUS
from .owned import DEFAULT_PAYBACK_MONTHS, DEFAULT_USD_PER_KWH, compare_owned
from .plot import check_plot_path, plot_offers
from .render import render_owned, render_table
from .sky_yaml import write_sky_candidates


def register(subparsers) -> argparse.ArgumentParser:
    """Add the `plan` subcommand to a CLI's subparsers."""
    help_text = "estimate memory, time and dollars per run on each machine; pick the cheapest that fits (by a deadline)"
    sub = subparsers.add_parser("plan", help=help_text, description=help_text)
    sub.add_argument("--params", default="params.yaml", help="parameters file (default: params.yaml)")
    sub.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a parameter")
    sub.add_argument("--json", action="store_true", help="print the whole plan as JSON")
    sub.add_argument("--deadline", type=float, metavar="HOURS",
                     help="the cheapest plan that finishes within HOURS (default: budget.deadline_hours)")
    sub.add_argument("--write", action="store_true",
                     help="write the best machines into --sky-yaml (accelerators, num_nodes, ACCELERATE_CONFIG)")
    sub.add_argument("--sky-yaml", default="sky/train.yaml", help="SkyPilot task to update (default: sky/train.yaml)")
    sub.add_argument("--top", type=int, default=4, metavar="N", help="how many machines to show and write (default: 4)")
    sub.add_argument("--plot", metavar="PATH.png", help="also draw dollars per run against hours, one point per offer, as a PNG")
    sub.add_argument("--owned", metavar="GPU", help=f"compare with your own card ({', '.join(GPUS)})")
    sub.add_argument("--electricity-usd-per-kwh", type=float, default=DEFAULT_USD_PER_KWH, metavar="USD")
    sub.add_argument("--watts", type=float, help="measured draw of the owned card (default: its TDP)")
    sub.add_argument("--card-price-usd", type=float, help="price of the owned card (default: a rough street price)")
    sub.add_argument("--expected-runs", type=int, help="runs the card will do in its life (adds amortisation per run)")
    sub.add_argument("--payback-months", type=float, default=DEFAULT_PAYBACK_MONTHS, help="horizon for the break-even")
    sub.set_defaults(handler=run)
    return sub


def run(args) -> int:
    """`plan`: print the plan (or JSON), optionally write sky/train.yaml, then check the budget.

    Raises ConfigError for bad input and BudgetExceeded when the cheapest run is over budget
    (after printing the plan, so the numbers are visible).
    """
    if args.top < 1:
        raise ConfigError("--top must be at least 1")
    if args.deadline is not None and not args.deadline > 0:
        raise ConfigError(f"--deadline {args.deadline:g}: give the hours the run may take, a number above 0")
    if args.plot:
        check_plot_path(args.plot)
    params = load_params(args.params, args.set)
    plan = make_plan(params, deadline_hours=args.deadline)
    owned = None
    if args.owned:
        owned = compare_owned(
            plan, args.owned, args.electricity_usd_per_kwh, args.watts, args.card_price_usd,
            args.expected_runs, args.payback_months,
        )
    written = write_sky_candidates(plan, args.sky_yaml, args.top) if args.write else None
    # No offer at all: nothing to draw, and check_budget below says why.
    plotted = plot_offers(plan, args.plot) if args.plot and plan["ranked"] else None
    if args.json:
        plot = {"path": plotted["path"], "points": len(plotted["points"])} if plotted else None
        print(json.dumps({**plan, "owned": owned, "written": written, "plot": plot}, indent=2))
    else:
        print(render_table(plan, args.top))
        if owned:
            print(render_owned(owned))
        if written:
            gpus = ", ".join(f"{gpu}: {count}" for gpu, count in written["accelerators"].items())
            config = f", ACCELERATE_CONFIG = {written['accelerate_config']}" if written["accelerate_config"] else ""
            print(f"\n{args.sky_yaml}: accelerators = " + "{" + gpus + "}" + f", num_nodes = {written['num_nodes']}{config}")
        if plotted:
            print(f"\n{plotted['path']}: dollars per run against hours, {len(plotted['points'])} offers, "
                  "the cheapest and the fastest starred")
    check_budget(plan, params)
    return 0
