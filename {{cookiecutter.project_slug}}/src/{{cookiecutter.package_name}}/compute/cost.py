"""What a run costs: GPU-hours and dollars, accumulated live and across restarts.

Each start of the trainer is a segment, priced at the machine it actually ran on; a run
that was preempted twice has three segments. Past segments are read back on resume, so
`cost_usd` is the whole run's cost, including work redone after a preemption.
"""

from __future__ import annotations

import time


class CostMeter:
    """Wall-clock time on this machine times its hourly price, plus earlier segments.

    `hourly_usd` is the price of the whole machine. 0 on your own machine when nothing
    prices it; None when it is unknown on a cloud machine (no catalog row, no
    cost.hourly_usd): GPU-hours are still counted, dollars are not, and `cost_known` is
    False, so the run logs no `cost_usd` rather than a false $0. `cost_usd` is then the
    cost of the segments whose price was known, a floor the budget guard still acts on.
    """

    def __init__(self, hourly_usd: float | None, gpus: int, previous: list[dict] = (), source: str = "", clock=time.monotonic):
        self.hourly_usd = hourly_usd
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
    def cost_known(self) -> bool:
        return self.hourly_usd is not None and all(s.get("usd") is not None for s in self.previous)

    @property
    def cost_usd(self) -> float:
        """Dollars so far; with an unknown price, those of the priced segments only."""
        return sum(s.get("usd") or 0.0 for s in self.previous) + self.hours * (self.hourly_usd or 0.0)

    @property
    def price_per_hour(self) -> float | None:
        return self.hourly_usd

    def start_message(self, max_run_usd: float) -> str | None:
        """What to say at the start when the budget guard cannot act (None: it can)."""
        if self.hourly_usd is not None:
            return None
        return (
            f"warning: the price of this machine is {self.source}. Its cost is logged as unknown (no cost_usd), "
            f"and the budget guard (budget.max_run_usd=${max_run_usd:.2f}) cannot stop this run for cost"
        )

    def metrics(self, tokens_seen: int) -> dict[str, float]:
        """cost_usd, gpu_hours, price_per_hour and tokens_per_dollar, leaving out what is unknown."""
        values = {"gpu_hours": self.gpu_hours}
        if self.cost_known:
            values.update(cost_usd=self.cost_usd, price_per_hour=self.hourly_usd)
            if self.cost_usd > 0:
                values["tokens_per_dollar"] = tokens_seen / self.cost_usd
        return values

    def tags(self) -> dict[str, str]:
        return {"price_source": self.source, "cost_known": str(self.cost_known).lower()}

    def segments(self) -> list[dict]:
        """All segments so far, this one last: what segments.json keeps (usd None: unknown)."""
        current = {
            "hours": round(self.hours, 6),
            "gpus": self.gpus,
            "hourly_usd": self.hourly_usd,
            "usd": None if self.hourly_usd is None else round(self.hours * self.hourly_usd, 6),
            "gpu_hours": round(self.hours * self.gpus, 6),
            "price_source": self.source,
        }
        return [*self.previous, current]
