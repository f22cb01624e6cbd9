"""The expected cost of a spot run: preemptions at an assumed rate, each costing a restart (a new
VM's setup) and half a checkpoint interval of lost steps; after `compute.max_preemptions`
recoveries the rest of the run goes on an on-demand machine of the same kind.

A first-order expectation (a steady rate, no preemption during the extra time), to show how
much a spot price should be discounted, not a forecast: spot markets differ by GPU, region
and hour, and SkyPilot keeps no record of them to fit a rate on.
"""

from __future__ import annotations

PREEMPTIONS_PER_NODE_HOUR = 0.10  # assumed: one preemption every ten hours of each spot VM


def checkpoint_interval_hours(params, compute_hours: float, steps: int) -> float:
    """Hours between checkpoints: every checkpoint.every_steps steps or every_minutes, the sooner."""
    per_step = compute_hours / max(1, steps)
    return min(params.checkpoint.every_steps * per_step, params.checkpoint.every_minutes / 60)


def expected_spot_run(offer: dict, on_demand_hourly: float | None, interval_hours: float,
                      max_preemptions: int | None) -> dict:
    """Expected preemptions, hours and dollars of `offer` (a ranked spot offer), with the fallback
    to `on_demand_hourly` after `max_preemptions` recoveries (None: spot to the end)."""
    hours, setup = offer["hours"], offer["setup_hours"]
    rate = PREEMPTIONS_PER_NODE_HOUR * offer["nodes"]
    lost = setup + interval_hours / 2  # a new VM's setup, and on average half an interval redone
    expected = rate * hours
    if max_preemptions is None or expected <= max_preemptions or on_demand_hourly is None:
        total_hours = hours + expected * lost
        return {"preemptions": round(expected, 2), "fallback_on_demand": False,
                "expected_hours": round(total_hours, 4), "expected_usd": round(offer["usd_per_hour"] * total_hours, 4)}
    # Spot until the max_preemptions-th preemption, then the remaining work on demand.
    on_spot = max_preemptions / rate
    done = max(0.0, on_spot - max_preemptions * lost - setup)
    remaining = max(0.0, hours - setup - done) + setup
    return {"preemptions": float(max_preemptions), "fallback_on_demand": True,
            "expected_hours": round(on_spot + remaining, 4),
            "expected_usd": round(offer["usd_per_hour"] * on_spot + on_demand_hourly * remaining, 4)}
