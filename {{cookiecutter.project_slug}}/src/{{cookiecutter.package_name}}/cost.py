"""What a run costs: GPU-hours and dollars, accumulated while it trains."""

from __future__ import annotations

import time


class CostMeter:
    """Wall-clock time on this machine times its hourly price.

    `cost.hourly_usd` in params.yaml is the price of the whole machine; when it is unset the
    run is treated as free (your own machine) and only GPU-hours are counted.
    """

    def __init__(self, hourly_usd: float | None, gpus: int, clock=time.monotonic):
        self.hourly_usd = hourly_usd or 0.0
        self.gpus = gpus
        self.clock = clock
        self.started = clock()

    @property
    def hours(self) -> float:
        return (self.clock() - self.started) / 3600

    @property
    def gpu_hours(self) -> float:
        return self.hours * self.gpus

    @property
    def cost_usd(self) -> float:
        return self.hours * self.hourly_usd
