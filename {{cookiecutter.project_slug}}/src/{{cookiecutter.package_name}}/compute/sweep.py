"""`sweep`: many variants of params.yaml for one budget, each its own run, compared at the end.

    {{ cookiecutter.package_name }} sweep --set lora.r=8,16,32 --set train.learning_rate=1e-4,2e-4   # a grid: 6 variants
    {{ cookiecutter.package_name }} sweep --file sweeps/rank.yaml --backend local                    # a sweep file, here
    {{ cookiecutter.package_name }} sweep ... --dry-run        # the variants, their prices and the total; run nothing
    {{ cookiecutter.package_name }} report --sweep sw-1201-0958-ab12                                 # the table again, later

One job, in four steps:
1. expand: `--set key=a,b,c` (a key with several values) and the sweep file give the variants:
   every combination of the grid, times each listed variant. Each variant is validated as
   params.yaml + its overrides (an unknown key or a bad value names the variant and the key).
2. price: `plan` prices every variant on its cheapest offer; the total above --budget
   (default budget.max_sweep_usd), or any variant above budget.max_run_usd, refuses the whole
   sweep with the numbers (exit 3) before anything starts.
3. run: each variant is the task's own run section (sky/train.yaml), as `launch` runs it: a
   managed spot job per variant (`--backend sky`, up to --parallel at once, each recovering on
   its own), or here one after another (`--backend local`). Each has its own checkpoints (its
   own SKYPILOT_TASK_ID) and its own MLflow run, tagged sweep_id, sweep_variant and sweep_set.
   The spent total is read from the runs' live `cost_usd`; a variant still running counts at
   least its estimate. When the next variant would take the total over the budget it is not
   started, and the sweep ends with status `budget` (exit 3).
   Optional early stop (--early-stop MARGIN, off by default): a running variant whose training
   loss is worse than the best finished variant's at the same step by more than MARGIN (a
   fraction: 0.1 = 10%) is stopped (local: SIGTERM, so it checkpoints; sky: `sky jobs cancel`).
   The trainer logs no eval loss before it ends, so the training loss is what is compared.
4. summarise: a table of the variants by eval loss and cost, the Pareto front of cost versus
   quality marked, and the best variant's params as the `--set` line to adopt.

The local backend runs the run section itself rather than `dvc exp run --queue`: the same
script as a cloud job (one code path to trust), its own checkpoint folder per variant, and the
budget checked between two variants, which a DVC queue (workers that take the next experiment
on their own) would not let us do without killing workers.

Rerunning a sweep with the same --id skips the variants that already finished (their MLflow
runs have an eval_loss) and resumes an interrupted one from its checkpoints.

Exit codes: 0 every variant finished; 1 some variant failed; 2 bad input; 3 refused or stopped
by the budget; 75 interrupted (rerun with the same --id to continue).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import secrets
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import ConfigError, load_params, yaml_error
from . import launch, plan, skytask

SWEEP_ID = re.compile(r"[a-z][a-z0-9-]{0,30}[a-z0-9]")
SWEEP_DIR = ".cache/sweeps"  # per-variant task files, logs, summary.json (ignored by git and SkyPilot)
SERVER_SCHEMES = ("http://", "https://", "databricks")
EXIT_OK, EXIT_FAILED, EXIT_BUDGET, EXIT_INTERRUPTED = 0, 1, 3, 75
EARLIER_LAUNCH = "running (launched earlier)"


class SweepError(ConfigError):
    """A bad grid, sweep file or option: exit code 2, nothing started."""


class SweepOverBudget(plan.BudgetExceeded):
    """The variants together (or one of them) are estimated above the budget: exit code 3."""


@dataclass
class Variant:
    name: str  # v1, v2, ...: stable for the same grid, so a rerun with the same --id finds its runs
    sets: list[str]  # key=value overrides, the varying ones and the fixed ones
    varying: dict[str, str] = field(default_factory=dict)  # only the keys that differ between variants
    params: Any = None
    estimate: dict | None = None  # the plan's cheapest offer for this variant

    @property
    def set_line(self) -> str:
        return " ".join(f"--set {shlex.quote(s)}" for s in self.sets)


# ========================================================================== 1. expand


def split_values(raw: str) -> list[str]:
    """`8,16,32` -> ["8", "16", "32"]; commas inside [...], {...} or quotes stay (YAML lists)."""
    values, depth, quote, current = [], 0, "", ""
    for char in raw:
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            values.append(current)
            current = ""
            continue
        current += char
    values.append(current)
    return values


def yaml_value(value: Any) -> str:
    """A value from a sweep file, written so that `--set` parses it back to the same value."""
    if isinstance(value, str):
        return value if yaml.safe_load(value) == value else json.dumps(value)
    return json.dumps(value, separators=(",", ":"))


def grid_from_sets(sets: list[str]) -> dict[str, list[str]]:
    grid: dict[str, list[str]] = {}
    for assignment in sets:
        key, sep, raw = assignment.partition("=")
        if not sep or not key.strip():
            raise SweepError(f"--set {assignment!r}: expected key=value or key=a,b,c")
        values = split_values(raw)
        if any(not v.strip() for v in values):
            raise SweepError(f"--set {assignment!r}: an empty value in the list")
        grid[key.strip()] = values
    return grid


def read_sweep_file(path: str | Path) -> tuple[dict[str, list[str]], list[dict[str, str]]]:
    """(grid, variants) from a sweep file:

        grid:                          # every combination
          lora.r: [8, 16, 32]
          train.learning_rate: [1.0e-4, 2.0e-4]
        variants:                      # each of these (times the grid, when both are given)
          - {lora.r: 64, lora.alpha: 128}
        set: {train.max_steps: 500}    # the same for every variant
    """
    path = Path(path)
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SweepError(f"{path}: sweep file not found") from None
    except yaml.YAMLError as err:
        raise SweepError(yaml_error(path, err)) from None
    if not isinstance(tree, dict) or not tree:
        raise SweepError(f"{path}: expected a mapping with grid:, variants: and/or set:")
    unknown = sorted(set(tree) - {"grid", "variants", "set"})
    if unknown:
        raise SweepError(f"{path}: unknown key {unknown[0]!r} (a sweep file has grid:, variants: and set:)")
    fixed = tree.get("set") or {}
    if not isinstance(fixed, dict):
        _bad(path, "set")
    grid = {str(key): [yaml_value(value)] for key, value in fixed.items()}
    raw_grid = tree.get("grid") or {}
    if not isinstance(raw_grid, dict):
        _bad(path, "grid")
    for key, values in raw_grid.items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"{path}: grid.{key}: expected a non-empty list of values, e.g. [8, 16, 32]")
        grid[str(key)] = [yaml_value(v) for v in values]
    raw_variants = tree.get("variants") or []
    if not isinstance(raw_variants, list) or not all(isinstance(v, dict) and v for v in raw_variants):
        _bad(path, "variants")
    variants = [{str(k): yaml_value(v) for k, v in entry.items()} for entry in raw_variants]
    return grid, variants


def _bad(path: Path, key: str):
    shapes = {"set": "a mapping of key: value", "grid": "a mapping of key: [values]", "variants": "a list of mappings"}
    raise SweepError(f"{path}: {key}: expected {shapes[key]}")


def expand(sets: list[str], sweep_file: str | Path | None = None) -> list[Variant]:
    """The variants, in a stable order: the file's grid and list, then the command line's grid."""
    grid, listed = read_sweep_file(sweep_file) if sweep_file else ({}, [])
    grid.update(grid_from_sets(sets))  # the command line wins over the file for the same key
    keys = list(grid)
    combos = [dict(zip(keys, values, strict=True)) for values in itertools.product(*(grid[k] for k in keys))]
    overrides = [{**combo, **entry} for entry in (listed or [{}]) for combo in combos]
    if len(overrides) < 2:
        raise SweepError("a sweep needs at least two variants: give a key several values (--set lora.r=8,16) "
                         "or a sweep file with grid: / variants:")
    seen: dict[tuple, str] = {}
    variants = []
    for number, values in enumerate(overrides, start=1):
        name = f"v{number}"
        frozen = tuple(sorted(values.items()))
        if frozen in seen:
            raise SweepError(f"variants {seen[frozen]} and {name} are the same ({' '.join(f'{k}={v}' for k, v in frozen)})")
        seen[frozen] = name
        variants.append(Variant(name, [f"{k}={v}" for k, v in values.items()]))
    all_keys = dict.fromkeys(k for values in overrides for k in values)
    for variant, values in zip(variants, overrides, strict=True):
        variant.varying = {k: values.get(k, "") for k in all_keys if len({o.get(k) for o in overrides}) > 1}
    return variants


def validate(variants: list[Variant], params_path: str | Path, base_sets: list[str] = ()) -> None:
    """Each variant's params, loaded and checked: the first problem names the variant."""
    for variant in variants:
        for assignment in variant.sets:
            if re.search(r"\s", assignment):
                raise SweepError(f"{variant.name}: {assignment!r}: a value passed to a task cannot contain whitespace")
        try:
            variant.params = load_params(params_path, [*base_sets, *variant.sets])
        except ConfigError as err:
            raise SweepError(f"variant {variant.name} ({' '.join(variant.sets)}): {err}") from None


def new_sweep_id() -> str:
    """`sw-<month><day>-<hour><minute>-<4 hex>` (UTC): short, sortable, valid in job names."""
    return f"sw-{time.strftime('%m%d-%H%M', time.gmtime())}-{secrets.token_hex(2)}"


# ========================================================================== 2. price


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
        where = f"{offer.get('gpu', '?')} {'spot' if offer.get('spot') else 'on-demand'} on {offer.get('cloud', '?')}"
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


# ========================================================================== 3. run


def job_name(task_name: str, sweep_id: str, variant: str, limit: int = launch.MAX_NAME) -> str:
    """`<task>-<sweep id>-<variant>`, the task name shortened to fit SkyPilot's 63 characters."""
    tail = f"-{sweep_id}-{variant}"
    head = launch._slug(task_name) or "sweep"
    if not head[0].isalpha():
        head = f"job-{head}"
    return head[: limit - len(tail)].strip("-") + tail


def tracking_uri(params) -> str:
    """The MLflow store every variant logs to: the project's, made absolute for a local file."""
    from ..tracking import tracking_uri as configured

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


class LocalBackend:
    """One variant after another: the task's run section here, as `launch --backend local`."""

    parallel = 1
    detach_on_signal = False  # the run sections are children of this process: they stop with it

    def __init__(self, args, sweep_dir: Path):
        self.args, self.sweep_dir = args, sweep_dir

    def start(self, launched: dict, variant: Variant) -> subprocess.Popen:
        ns = argparse.Namespace(task_id=None, gpus=self.args.gpus, checkpoint_root=self.args.checkpoint_root)
        env = launch.local_environment(launched, ns)
        log = (self.sweep_dir / f"{variant.name}.log").open("ab")
        print(f"sweep: {variant.name} runs here as task {env['SKYPILOT_TASK_ID']} (log: {log.name})", flush=True)
        return launch.start_local(launched, env, stdout=log, stderr=subprocess.STDOUT)

    def stop(self, process: subprocess.Popen, launched: dict) -> None:
        """SIGTERM to the run section's group: the trainer checkpoints and exits 75."""
        self._signal(process, signal.SIGTERM)

    def interrupt(self, process: subprocess.Popen, launched: dict, signals: int) -> None:
        """The sweep was signalled: checkpoint and stop (first time), kill (after that)."""
        self._signal(process, signal.SIGTERM if signals == 1 else signal.SIGKILL)

    @staticmethod
    def _signal(process: subprocess.Popen, signum: int) -> None:
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            pass


class SkyBackend:
    """One managed spot job per variant, up to --parallel at once. Each job's `sky jobs launch`
    stays attached (it follows the job's logs through recoveries) and ends when the job does."""

    def __init__(self, args, sweep_dir: Path):
        self.args, self.sweep_dir = args, sweep_dir
        self.parallel = args.parallel
        self.cli = skytask.find_sky_cli()

    def task_file(self, launched: dict, variant: Variant) -> Path:
        """The resolved task of one variant: its envs (overrides, sweep tags) in the file."""
        config = dict(launched["resolved"])
        config["workdir"] = str(Path(config.get("workdir") or ".").resolve())  # the file is not in the project root
        path = self.sweep_dir / f"{variant.name}.yaml"
        path.write_text(launch.task_yaml(config), encoding="utf-8")
        return path

    def command(self, launched: dict, variant: Variant) -> list[str]:
        command = [*self.cli, "jobs", "launch", "-y", "-n", launched["name"]]
        for key in launched["secrets"]:
            command += ["--secret", key]  # no value: SkyPilot copies it from our environment
        return [*command, str(self.task_file(launched, variant))]

    def start(self, launched: dict, variant: Variant) -> subprocess.Popen:
        command = self.command(launched, variant)
        log = (self.sweep_dir / f"{variant.name}.log").open("ab")
        print(f"sweep: {variant.name}: {shlex.join(command)} (log: {log.name})", flush=True)
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)

    def stop(self, process: subprocess.Popen, launched: dict) -> None:
        subprocess.run([*self.cli, "jobs", "cancel", "-y", "-n", launched["name"]], stdin=subprocess.DEVNULL)

    # Managed jobs run and recover without us: a signal stops new launches and the sweep
    # returns, leaving the running jobs to finish (`report --sweep ID` shows them later).
    detach_on_signal = True

    def interrupt(self, process: subprocess.Popen, launched: dict, signals: int) -> None:
        print(f"sweep: {launched['name']} keeps running as a managed job; cancel it with "
              f"`sky jobs cancel -n {launched['name']}`", file=sys.stderr, flush=True)


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


# ========================================================================== 4. summarise


def summarise(rows: list[dict]) -> dict:
    """rows: {variant, status, sets, cost_usd, eval_loss, ...} -> the same rows ranked by eval
    loss (then cost), each with `front` (on the Pareto front of cost vs eval loss), and the best."""
    from ..report import pareto_front

    scored = [r for r in rows if r.get("cost_usd") is not None and r.get("eval_loss") is not None]
    front = {id(scored[i]) for i in pareto_front([(r["cost_usd"], r["eval_loss"]) for r in scored])}
    for row in rows:
        row["front"] = id(row) in front
    ranked = sorted(rows, key=lambda r: (r.get("eval_loss") is None, r.get("eval_loss") or 0, r.get("cost_usd") or 0))
    best = next((r for r in ranked if r.get("eval_loss") is not None), None)
    adopt = adopt_line(best, _varying_keys([r["set"] for r in rows])) if best else None
    return {"variants": ranked, "best": best, "adopt": adopt}


def rows_from_runs(runs, variants: list[Variant] | None = None, states: dict[str, str] | None = None) -> list[dict]:
    """One row per variant: its newest MLflow run, or (for variants never started) the plan."""
    newest = {}
    for run in runs:
        name = run.data.tags.get("sweep_variant", "")
        if name and (name not in newest or run.info.start_time >= newest[name].info.start_time):
            newest[name] = run
    rows = []
    names = [v.name for v in variants] if variants else sorted(newest, key=lambda n: (len(n), n))
    by_name = {v.name: v for v in variants or []}
    for name in names:
        run = newest.get(name)
        variant = by_name.get(name)
        sets = run.data.tags.get("sweep_set", "") if run else " ".join(variant.sets)
        rows.append({
            "variant": name,
            "status": (states or {}).get(name) or (run.info.status.lower() if run else "not started"),
            "set": sets,
            "run_id": run.info.run_id if run else "",
            "cost_usd": run.data.metrics.get("cost_usd") if run else None,
            "eval_loss": run.data.metrics.get("eval_loss") if run else None,
            "estimate_usd": variant.estimate["usd_per_run"] if variant and variant.estimate else None,
        })
    return rows


def render_summary(summary: dict) -> str:
    rows = summary["variants"]
    if not rows:
        return "no runs of this sweep in MLflow\n"
    varying = _varying_keys([r["set"] for r in rows])
    header = ["variant", *varying, "eval_loss", "cost", "status", "front"]
    table = []
    for row in rows:
        values = dict(a.split("=", 1) for a in row["set"].split() if "=" in a)
        table.append([row["variant"], *(values.get(k, "") for k in varying),
                      "-" if row["eval_loss"] is None else f"{row['eval_loss']:.4f}",
                      _usd(row["cost_usd"]), row["status"], "*" if row["front"] else ""])
    text = _table(header, table)
    text += "\n* = on the Pareto front: no other variant is both cheaper and better (lower eval loss)\n"
    best = summary["best"]
    if best:
        text += (f"best: {best['variant']} (eval_loss {best['eval_loss']:.4f}, {_usd(best['cost_usd'])}); adopt it with:\n"
                 f"  {adopt_line(best, varying)}\n")
    else:
        text += "no variant finished with an eval loss yet\n"
    return text


def adopt_line(row: dict, varying: list[str]) -> str:
    """The `--set` line of what this variant changed (what the sweep compared); every key
    when nothing varied."""
    sets = [a for a in row["set"].split() if a.split("=", 1)[0] in varying] or row["set"].split()
    return " ".join(f"--set {shlex.quote(a)}" for a in sets)


def _varying_keys(set_lines: list[str]) -> list[str]:
    parsed = [dict(a.split("=", 1) for a in line.split() if "=" in a) for line in set_lines]
    keys = dict.fromkeys(k for p in parsed for k in p)
    return [k for k in keys if len({p.get(k) for p in parsed}) > 1]


def report(client, experiments: list[str], sweep_id: str) -> dict:
    """`report --sweep ID`: the summary from MLflow alone."""
    check_sweep_id(sweep_id)
    ids = [e.experiment_id for name in experiments if (e := client.get_experiment_by_name(name))]
    runs = client.search_runs(ids, f"tags.sweep_id = '{sweep_id}'", max_results=1000) if ids else []
    return summarise(rows_from_runs(runs))


# ========================================================================== CLI


def check_sweep_id(sweep_id: str) -> str:
    if not SWEEP_ID.fullmatch(sweep_id):
        raise SweepError(f"--sweep/--id {sweep_id!r}: lowercase letters, digits and '-', starting with a letter, "
                         "at most 32 characters")
    return sweep_id


def register(subparsers) -> argparse.ArgumentParser:
    help_text = "run variants of params.yaml (a grid or a list) for one budget, then compare them"
    sub = subparsers.add_parser("sweep", help=help_text, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub.add_argument("--params", default="params.yaml", help="parameters file (default: params.yaml)")
    sub.add_argument("--set", action="append", default=[], metavar="KEY=V1,V2",
                     help="a key and its values (every combination is a variant); one value: the same for all")
    sub.add_argument("--file", help="a sweep file (grid:, variants:, set:)")
    sub.add_argument("--backend", choices=["sky", "local"], default="sky",
                     help="sky: a managed spot job per variant; local: one after another here")
    sub.add_argument("--parallel", type=int, default=4, metavar="N", help="sky: at most N jobs at once (default 4)")
    sub.add_argument("--budget", type=float, metavar="USD", help="for all variants together (default budget.max_sweep_usd)")
    sub.add_argument("--early-stop", type=float, metavar="MARGIN",
                     help="stop a variant whose training loss is this fraction above the best finished one's (off)")
    sub.add_argument("--id", help="sweep id (default: a new one); the same id continues a sweep")
    sub.add_argument("--dry-run", action="store_true", help="print the variants and their prices; start nothing")
    sub.add_argument("--task", default=launch.DEFAULT_TASK, help=f"task file (default: {launch.DEFAULT_TASK})")
    sub.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="set a task env in every variant")
    sub.add_argument("--checkpoint-root", default=launch.DEFAULT_CHECKPOINT_ROOT, help="local: stands in for the bucket")
    sub.add_argument("--gpus", type=int, help="local: SKYPILOT_NUM_GPUS_PER_NODE (default: the GPUs nvidia-smi lists)")
    sub.add_argument("--sweep-dir", default=SWEEP_DIR, help=f"task files, logs and summary.json (default: {SWEEP_DIR})")
    sub.add_argument("--poll-seconds", type=float, default=30, help="how often MLflow is read for live costs (default 30)")
    sub.set_defaults(handler=run)
    return sub


def run(args) -> int:
    if args.parallel < 1:
        raise SweepError("--parallel must be at least 1")
    if args.early_stop is not None and args.early_stop < 0:
        raise SweepError("--early-stop is a fraction, e.g. 0.1 for 10%")
    sweep_id = check_sweep_id(args.id) if args.id else new_sweep_id()
    variants = expand(args.set, args.file)
    validate(variants, args.params)
    base = variants[0].params
    budget = args.budget if args.budget is not None else base.budget.max_sweep_usd
    total = price(variants)
    print(f"sweep {sweep_id}: {len(variants)} variants, backend {args.backend}")
    print(price_table(variants, total, budget), end="")
    check_sweep_budget(variants, total, budget)

    uri = tracking_uri(base)
    if args.backend == "sky" and not uri.startswith(SERVER_SCHEMES):
        raise SweepError(
            f"MLflow tracking URI {uri!r}: a sky sweep reads every job's live cost from MLflow, so the jobs and "
            "this machine need one server: set tracking.uri (or MLFLOW_TRACKING_URI) to an http(s) MLflow server"
        )
    sweep_dir = Path(args.sweep_dir) / sweep_id
    sweep_dir.mkdir(parents=True, exist_ok=True)
    backend = (SkyBackend if args.backend == "sky" else LocalBackend)(args, sweep_dir)
    task_name = skytask.check_file(Path(args.task))["name"]

    def resolve(variant: Variant) -> dict:
        envs = [*args.env, f"SWEEP_ID={sweep_id}", f"SWEEP_VARIANT={variant.name}", f"SWEEP_SET={' '.join(variant.sets)}",
                f"RUN_NAME={sweep_id}/{variant.name}"]
        if not any(e.startswith("MLFLOW_TRACKING_URI=") for e in args.env):
            envs.append(f"MLFLOW_TRACKING_URI={uri}")
        ns = argparse.Namespace(task=args.task, params=args.params, set=variant.sets, env=envs,
                                name=job_name(task_name, sweep_id, variant.name))
        return launch.resolve(ns)

    if args.dry_run:
        for variant in variants:
            launched = resolve(variant)
            if args.backend == "sky":
                print(f"# {variant.name}: {shlex.join(backend.command(launched, variant))}")
            else:
                print(f"# {variant.name}: run section of {args.task} as task local-{launched['name']}: {variant.set_line}")
        return EXIT_OK

    experiments = list(dict.fromkeys(v.params.tracking.experiment for v in variants))
    ledger = Ledger(uri, experiments, sweep_id)
    sweep = Sweep(variants, sweep_id, budget, backend, ledger, resolve, args.early_stop, args.poll_seconds)
    result = sweep.run()
    try:
        runs = ledger.runs()
    except Exception as err:  # the server went away at the end: the table says what the sweep knows
        print(f"sweep: MLflow not readable ({type(err).__name__}); the table lacks the runs' results", file=sys.stderr)
        runs = []
    summary = summarise(rows_from_runs(runs, variants, result.states))
    print()
    print(render_summary(summary), end="")
    (sweep_dir / "summary.json").write_text(json.dumps({
        "sweep_id": sweep_id, "status": result.status, "spent_usd": result.spent_usd, "budget_usd": budget,
        "estimated_usd": total, **summary}, indent=2, default=str) + "\n")
    print(f"spent {_usd(result.spent_usd)} of {_usd(budget)}; `report --sweep {sweep_id}` shows this table again")
    print(result.message, file=sys.stderr if result.exit_code else sys.stdout)
    return result.exit_code


# ========================================================================== text


def _usd(value) -> str:
    if value is None:
        return "-"
    return f"${value:,.2f}" if value >= 0.1 else f"${value:.4f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows, strict=True)]

    def line(cells):
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)]) + "\n"
