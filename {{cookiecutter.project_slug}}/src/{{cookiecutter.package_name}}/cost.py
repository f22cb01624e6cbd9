"""What a run costs: GPU-hours and dollars, accumulated live and across restarts.

Each start of the trainer is a segment, priced at the machine it actually ran on; a run
that was preempted twice has three segments. Past segments are read back on resume, so
`cost_usd` is the whole run's cost, including work redone after a preemption.
"""

from __future__ import annotations

import time


class CostMeter:
    """Wall-clock time on this machine times its hourly price, plus earlier segments.

    `hourly_usd` is the price of the whole machine; None means unknown (your own machine):
    GPU-hours are still counted, dollars are not.
    """

    def __init__(self, hourly_usd: float | None, gpus: int, previous: list[dict] = (), source: str = "", clock=time.monotonic):
        self.hourly_usd = hourly_usd or 0.0
        self.gpus = gpus
        self.source = source
        self.previous = list(previous)
        self.clock = clock
        self.started = clock()

    @property
    def hours(self) -> float:
        """This segment's wall-clock hours."""
        return (self.clock() - self.started) / 3600

    @property
    def gpu_hours(self) -> float:
        return sum(s["gpu_hours"] for s in self.previous) + self.hours * self.gpus

    @property
    def cost_usd(self) -> float:
        return sum(s["usd"] for s in self.previous) + self.hours * self.hourly_usd

    @property
    def price_per_hour(self) -> float:
        return self.hourly_usd

    def segments(self) -> list[dict]:
        """All segments so far, this one last: what segments.json keeps."""
        current = {
            "hours": round(self.hours, 6),
            "gpus": self.gpus,
            "hourly_usd": self.hourly_usd,
            "usd": round(self.hours * self.hourly_usd, 6),
            "gpu_hours": round(self.hours * self.gpus, 6),
            "price_source": self.source,
        }
        return [*self.previous, current]
