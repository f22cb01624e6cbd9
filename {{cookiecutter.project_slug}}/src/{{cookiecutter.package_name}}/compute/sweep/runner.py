"""Step 3, run: the Sweep starts variants while the budget allows, watches their cost in MLflow
(the Ledger), stops the ones worse than the best (--early-stop), and ends with one status (a Result).

The spent total is read from the runs' live `cost_usd`; a variant still running counts at
least its estimate. When the next variant would take the total over the budget it is not
started, and the sweep ends with status `budget` (exit 3).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .text import _usd
from .variants import Variant

EXIT_OK, EXIT_FAILED, EXIT_BUDGET, EXIT_INTERRUPTED = 0, 1, 3, 75
EARLIER_LAUNCH = "running (launched earlier)"


def tracking_uri(params) -> str:
    """The MLflow store every variant logs to: the project's, made absolute for a local file."""
    from ...tracking import tracking_uri as configured

    uri = configured(params)
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    return uri


@dataclass
class Outcome:
    """What MLflow says about one variant's run."""

    run_id: str = ""
    status: str = ""
    cost_usd: float | None = None
    eval_loss: float | None = None

    @property
    def finished(self) -> bool:
        return self.status == "FINISHED" and self.eval_loss is not None


class Ledger:
    """The sweep's runs in MLflow: live cost, results, training-loss histories."""

    def __init__(self, uri: str, experiments: list[str], sweep_id: str):
        from mlflow import MlflowClient

        self.client = MlflowClient(uri)
        self.experiments, self.sweep_id = experiments, sweep_id

    def runs(self) -> list:
        ids = [e.experiment_id for name in self.experiments if (e := self.client.get_experiment_by_name(name))]
        if not ids:
            return []
        return list(self.client.search_runs(ids, f"tags.sweep_id = '{self.sweep_id}'", max_results=1000,
                                            order_by=["attributes.start_time ASC"]))

    def outcomes(self) -> dict[str, Outcome]:
        """Per variant: its newest run. Never raises: an unreachable server means no news."""
        try:
            runs = self.runs()
        except Exception as err:  # MLflow raises its own and requests' errors; the sweep goes on
            print(f"sweep: MLflow not readable right now ({type(err).__name__}); using estimates", file=sys.stderr)
            return {}
        found = {}
        for run in runs:
            metrics = run.data.metrics
            found[run.data.tags.get("sweep_variant", "")] = Outcome(
                run.info.run_id, run.info.status, metrics.get("cost_usd"), metrics.get("eval_loss"))
        return found

    def loss_history(self, run_id: str) -> dict[int, float]:
        try:
            return {m.step: m.value for m in self.client.get_metric_history(run_id, "loss")}
        except Exception:
            return {}


def worse_than_best(running: dict[int, float], best: dict[int, float], margin: float) -> tuple[int, float, float] | None:
    """(step, loss, best loss) when the running variant's newest training loss is more than
    `margin` (a fraction) above the best variant's at the same step; else None."""
    common = sorted(set(running) & set(best))
    if not common:
        return None
    step = common[-1]
    if running[step] > best[step] * (1 + margin):
        return step, running[step], best[step]
    return None


@dataclass
class Result:
    status: str  # complete | budget | interrupted
    exit_code: int
    spent_usd: float
    message: str
    states: dict[str, str]


class Sweep:
    """Starts variants while the budget allows, watches their cost, ends with one status."""

    def __init__(self, variants: list[Variant], sweep_id: str, budget: float, backend, ledger: Ledger,
                 resolve, early_stop: float | None = None, poll_seconds: float = 30):
        self.variants, self.sweep_id, self.budget = variants, sweep_id, budget
        self.backend, self.ledger, self.resolve = backend, ledger, resolve
        self.early_stop, self.poll_seconds = early_stop, poll_seconds
        self.states = {v.name: "pending" for v in variants}
        self.outcomes: dict[str, Outcome] = {}
        self.signals: list[int] = []

    def committed(self, running: dict) -> float:
        """Spent so far: each run's live cost_usd; one still running counts at least its estimate,
        one without a cost in MLflow (not started, or the server unreachable) its estimate."""
        total = 0.0
        for variant in self.variants:
            state = self.states[variant.name]
            if state in ("pending", "not started"):
                continue
            actual = self.outcomes.get(variant.name, Outcome()).cost_usd
            estimate = variant.estimate["usd_per_run"]
            if variant.name in running or state == EARLIER_LAUNCH:
                total += max(actual or 0.0, estimate)
            else:
                total += actual if actual is not None else estimate
        return total

    def run(self) -> Result:
        self.outcomes = self.ledger.outcomes()
        for variant in self.variants:  # a rerun with the same id: finished variants stay finished
            outcome = self.outcomes.get(variant.name, Outcome())
            if outcome.finished:
                self.states[variant.name] = "finished"
                print(f"sweep: {variant.name} already finished in MLflow run {outcome.run_id}")
            elif outcome.status == "RUNNING" and self.backend.detach_on_signal:
                # A managed job launched before this sweep process was interrupted: still going.
                self.states[variant.name] = EARLIER_LAUNCH
                print(f"sweep: {variant.name} is still running as launched before (MLflow run {outcome.run_id})")
        pending = [v for v in self.variants if self.states[v.name] == "pending"]
        running: dict[str, tuple[subprocess.Popen, dict, Variant]] = {}
        stopped_for_budget = None
        handled = 0
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            while True:
                self._reap(running)
                self.outcomes = self.ledger.outcomes() or self.outcomes
                if self.early_stop is not None:
                    self._early_stop(running)
                if len(self.signals) > handled:  # each signal is passed on once
                    handled = len(self.signals)
                    for process, launched, _ in running.values():
                        self.backend.interrupt(process, launched, handled)
                while pending and not self.signals and stopped_for_budget is None and len(running) < self.backend.parallel:
                    variant = pending[0]
                    spent = self.committed(running)
                    if spent + variant.estimate["usd_per_run"] > self.budget:
                        stopped_for_budget = (variant, spent)
                        break
                    pending.pop(0)
                    launched = self.resolve(variant)
                    running[variant.name] = (self.backend.start(launched, variant), launched, variant)
                    self.states[variant.name] = "running"
                if not running and (not pending or self.signals or stopped_for_budget):
                    break
                if self.signals and self.backend.detach_on_signal:
                    break
                self._wait(running)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        self.outcomes = self.ledger.outcomes() or self.outcomes
        spent = self.committed({})
        if self.signals:
            self._mark(pending, "not started")
            left = f"; still running: {', '.join(running)}" if running else ""
            return Result("interrupted", EXIT_INTERRUPTED, spent,
                          f"sweep {self.sweep_id}: interrupted{left}; rerun with --id {self.sweep_id} to continue "
                          f"(finished variants are kept, an interrupted one resumes from its checkpoints)", self.states)
        if stopped_for_budget:
            variant, before = stopped_for_budget
            self._mark(pending, "not started")
            names = ", ".join(v.name for v in pending)
            return Result("budget", EXIT_BUDGET, spent,
                          f"sweep {self.sweep_id}: stopped by the budget: {_usd(before)} of {_usd(self.budget)} spent "
                          f"(a running variant counted at least at its estimate); "
                          f"{variant.name} (estimated {_usd(variant.estimate['usd_per_run'])}) would cross it, so "
                          f"{names} not started", self.states)
        failed = [name for name, state in self.states.items() if state.startswith("failed")]
        if failed:
            return Result("complete", EXIT_FAILED, spent,
                          f"sweep {self.sweep_id}: complete, {len(failed)} of {len(self.variants)} variants failed "
                          f"({', '.join(failed)}; their logs are in {self.backend.sweep_dir})", self.states)
        return Result("complete", EXIT_OK, spent, f"sweep {self.sweep_id}: complete, spent {_usd(spent)} of "
                      f"{_usd(self.budget)}", self.states)

    def _mark(self, variants: list[Variant], state: str) -> None:
        for variant in variants:
            self.states[variant.name] = state

    def _on_signal(self, signum, _frame) -> None:
        self.signals.append(signum)
        if len(self.signals) == 1:
            print("sweep: stopping: no new variant starts", file=sys.stderr, flush=True)

    def _reap(self, running: dict) -> None:
        for name, (process, _launched, _variant) in list(running.items()):
            code = process.poll()
            if code is None:
                continue
            del running[name]
            if self.states[name] == "stopped early":
                pass
            elif code == 0:
                self.states[name] = "finished"
            elif code == EXIT_INTERRUPTED:
                self.states[name] = "interrupted"
            else:
                self.states[name] = f"failed (exit {code})"
            print(f"sweep: {name} {self.states[name]}", flush=True)

    def _early_stop(self, running: dict) -> None:
        done = [(o.eval_loss, n) for n, o in self.outcomes.items() if o.finished and n in self.states]
        if not done:
            return
        best_name = min(done)[1]
        best = self.ledger.loss_history(self.outcomes[best_name].run_id)
        for name, (process, launched, _variant) in running.items():
            outcome = self.outcomes.get(name)
            if self.states[name] == "stopped early" or not outcome or not outcome.run_id:
                continue
            worse = worse_than_best(self.ledger.loss_history(outcome.run_id), best, self.early_stop)
            if worse:
                step, loss, best_loss = worse
                print(f"sweep: stopping {name} early: training loss {loss:.4f} at step {step}, "
                      f"more than {self.early_stop * 100:.0f}% above {best_name}'s {best_loss:.4f}", flush=True)
                self.states[name] = "stopped early"
                self.backend.stop(process, launched)

    def _wait(self, running: dict) -> None:
        """Until a variant ends or it is time to look at MLflow again."""
        deadline = time.monotonic() + self.poll_seconds
        while time.monotonic() < deadline and not self.signals:
            if any(process.poll() is not None for process, _, _ in running.values()):
                return
            time.sleep(0.2)
