"""`sweep`: many variants of params.yaml for one budget, each its own run, compared at the end.

    {{ cookiecutter.package_name }} sweep --set lora.r=8,16,32 --set train.learning_rate=1e-4,2e-4   # a grid: 6 variants
    {{ cookiecutter.package_name }} sweep --file sweeps/rank.yaml --backend local                    # a sweep file, here
    {{ cookiecutter.package_name }} sweep ... --dry-run        # the variants, their prices and the total; run nothing
    {{ cookiecutter.package_name }} report --sweep sw-1201-0958-ab12                                 # the table again, later

One job, in four steps, a module each:
1. expand (variants): `--set key=a,b,c` (a key with several values) and the sweep file give the
   variants: every combination of the grid, times each listed variant. Each variant is validated
   as params.yaml + its overrides (an unknown key or a bad value names the variant and the key).
2. price (pricing): `plan` prices every variant on its cheapest offer; the total above --budget
   (default budget.max_sweep_usd), or any variant above budget.max_run_usd, refuses the whole
   sweep with the numbers (exit 3) before anything starts.
3. run (runner, backends): each variant is the task's own run section (sky/train.yaml), as
   `launch` runs it: a managed spot job per variant (`--backend sky`, up to --parallel at once,
   each recovering on its own), or here one after another (`--backend local`). Each has its own
   checkpoints (its own SKYPILOT_TASK_ID) and its own MLflow run, tagged sweep_id, sweep_variant
   and sweep_set. The spent total is read from the runs' live `cost_usd`; a variant still running
   counts at least its estimate. When the next variant would take the total over the budget it is
   not started, and the sweep ends with status `budget` (exit 3).
   Optional early stop (--early-stop MARGIN, off by default): a running variant whose training
   loss is worse than the best finished variant's at the same step by more than MARGIN (a
   fraction: 0.1 = 10%) is stopped (local: SIGTERM, so it checkpoints; sky: `sky jobs cancel`).
   The trainer logs no eval loss before it ends, so the training loss is what is compared.
4. summarise (summary): a table of the variants by eval loss and cost, the Pareto front of cost
   versus quality marked, and the best variant's params as the `--set` line to adopt.

The local backend runs the run section itself rather than `dvc exp run --queue`: the same
script as a cloud job (one code path to trust), its own checkpoint folder per variant, and the
budget checked between two variants, which a DVC queue (workers that take the next experiment
on their own) would not let us do without killing workers.

Rerunning a sweep with the same --id skips the variants that already finished (their MLflow
runs have an eval_loss) and resumes an interrupted one from its checkpoints.

Exit codes: 0 every variant finished; 1 some variant failed; 2 bad input; 3 refused or stopped
by the budget; 75 interrupted (rerun with the same --id to continue).

Modules:
  variants  `--set a,b` grids and sweep files expanded into Variants, validated; sweep ids
  pricing   each variant's price (its cheapest offer), the price table, the budget check
  backends  LocalBackend (the run section here) and SkyBackend (a managed spot job); job names
  runner    Sweep (launches, watches, stops early, ends with a Result), Ledger (the runs in MLflow)
  summary   rows from the MLflow runs, ranked; the Pareto front, the table, the `--set` line to adopt
  text      dollars and plain-text tables
  cli       the `sweep` command: register, run

Imports: ..launch, ..plan, ..skytask, ...config, ...tracking. Never report or train: `report
--sweep` and report's plots import this package (pareto_front), not the other way round.
"""

from .backends import LocalBackend, SkyBackend, job_name
from .cli import SERVER_SCHEMES, SWEEP_DIR, register, run
from .pricing import SweepOverBudget, check_sweep_budget, price, price_table
from .runner import (
    EARLIER_LAUNCH,
    EXIT_BUDGET,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    Ledger,
    Outcome,
    Result,
    Sweep,
    tracking_uri,
    worse_than_best,
)
from .summary import adopt_line, pareto_front, render_summary, report, rows_from_runs, summarise
from .text import _usd as _usd  # tests compare printed amounts with it
from .variants import (
    SWEEP_ID,
    SweepError,
    Variant,
    check_sweep_id,
    expand,
    grid_from_sets,
    new_sweep_id,
    read_sweep_file,
    split_values,
    validate,
    yaml_value,
)

__all__ = [
    "EARLIER_LAUNCH", "EXIT_BUDGET", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "SERVER_SCHEMES", "SWEEP_DIR",
    "SWEEP_ID", "Ledger", "LocalBackend", "Outcome", "Result", "SkyBackend", "Sweep", "SweepError", "SweepOverBudget",
    "Variant", "adopt_line", "check_sweep_budget", "check_sweep_id", "expand", "grid_from_sets", "job_name",
    "new_sweep_id", "pareto_front", "price", "price_table", "read_sweep_file", "register", "render_summary", "report",
    "rows_from_runs", "run", "split_values", "summarise", "tracking_uri", "validate", "worse_than_best", "yaml_value",
]
