"""The estimate before any GPU money is spent (the `plan` job).

    python scripts/ci/plan_step.py [--params params.yaml] [--set key=value ...] [--top 5]

Runs `{{ cookiecutter.package_name }} plan --json` (an argument list, no shell), then writes the estimate to
$GITHUB_STEP_SUMMARY (the cheapest offers: GPU, cloud, spot, dollars per hour, hours,
dollars per run; GPUs that do not fit, and why) and to $GITHUB_OUTPUT: `gpu`, `cloud`,
`spot`, `hours`, `usd`, `budget`, `within`, `estimate` (one line, for the PR comment).

Exit codes: 0 within budget; 3 when the cheapest run is estimated above
budget.max_run_usd (with a message saying by how much and what to change); 2 when the plan
itself fails (bad parameters, a model it cannot size), with its message.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import ghactions

PACKAGE = "{{ cookiecutter.package_name }}"
EXIT_INVALID, EXIT_BUDGET = 2, 3


def run_plan(params: str, sets: list[str]) -> tuple[int, dict | None, str]:
    command = [sys.executable, "-m", PACKAGE, "plan", "--json", "--params", params]
    for assignment in sets:
        command += ["--set", assignment]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    try:
        plan = json.loads(done.stdout) if done.stdout.strip() else None
    except json.JSONDecodeError:
        plan = None
    return done.returncode, plan, done.stderr


def usd(value: float | None) -> str:
    if value is None:
        return "-"
    return f"${value:,.2f}" if value >= 0.995 else f"${value:.3f}"


def one_line_estimate(plan: dict) -> str:
    best, budget = plan.get("cheapest"), plan["budget"]
    if not best:
        return "no GPU offer fits this run"
    kind = "spot" if best["spot"] else "on-demand"
    return (f"{usd(best['usd_per_run'])} per run on {best.get('machine', best['gpu'])} ({kind}, {best['cloud']}), "
            f"{best['hours']:.2f} h; budget {usd(budget['max_run_usd'])}")


def render_summary(plan: dict, top: int, over: bool) -> str:
    best, budget = plan.get("cheapest"), plan["budget"]
    title = "over budget" if over else "within budget"
    lines = [f"### Estimate: {ghactions.cell(one_line_estimate(plan), 300)} ({title})", ""]
    if over:
        lines += [f"**The cheapest run is estimated at {usd(budget.get('cheapest_usd'))}, above budget.max_run_usd = "
                  f"{usd(budget['max_run_usd'])}.** Nothing was launched. Lower `train.max_steps` or `data.max_length`, "
                  "pick a smaller model, or raise `budget.max_run_usd` in params.yaml.", ""]
    ranked = plan.get("ranked") or []
    if ranked:
        lines += ["| # | GPU | cloud | spot | $/hour | hours | $/run | micro-batch |", "|---|---|---|---|---|---|---|---|"]
        for offer in ranked[:top]:
            lines.append(
                f"| {offer['rank']} | {ghactions.cell(offer.get('machine', offer['gpu']))} | {ghactions.cell(offer['cloud'])} | "
                f"{'yes' if offer['spot'] else 'no'} | {usd(offer['usd_per_hour'])} | {offer['hours']:.2f} | "
                f"{usd(offer['usd_per_run'])} | {offer.get('micro_batch', '-')} |"
            )
        lines.append("")
    excluded = plan.get("excluded") or []
    if excluded:
        lines.append("Left out: " + "; ".join(f"{ghactions.cell(e['gpu'])}: {ghactions.cell(e['reason'], 160)}"
                                              for e in excluded[:8]))
        lines.append("")
    work = plan.get("work") or {}
    if best:
        lines.append(f"{work.get('steps', '?')} steps × {work.get('global_batch', '?')} sequences × "
                     f"{work.get('seq_len', '?')} tokens; peak memory {best.get('peak_gib', 0):.1f} GiB on {best['gpu']}.")
    for warning in plan.get("warnings") or []:  # e.g. many epochs over a small dataset
        lines.append(f"**Warning:** {ghactions.cell(warning, 400)}")
    source = (plan.get("prices") or {}).get("source", "")
    lines.append(f"Prices: {ghactions.cell(source)}. {ghactions.cell(plan.get('note', ''), 300)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--top", type=int, default=5, help="offers shown in the summary (default 5)")
    args = parser.parse_args(argv)

    code, plan, stderr = run_plan(args.params, args.set)
    if plan is None or "budget" not in plan:
        message = stderr.strip()[-2000:] or f"`{PACKAGE} plan` exited with {code} and printed no plan"
        ghactions.summary("### Estimate: the plan failed\n\n```text\n" + message.replace("```", "'''") + "\n```")
        print(message, file=sys.stderr)
        return code if code not in (0, EXIT_BUDGET) else EXIT_INVALID
    over = not plan["budget"].get("within") or code == EXIT_BUDGET
    best = plan.get("cheapest") or {}
    ghactions.set_outputs(
        gpu=best.get("gpu", ""), cloud=best.get("cloud", ""), spot=str(bool(best.get("spot"))).lower(),
        hours=f"{best.get('hours', 0):.3f}", usd=f"{best.get('usd_per_run', 0):.4f}",
        budget=f"{plan['budget']['max_run_usd']:.2f}", within=str(not over).lower(),
        estimate=one_line_estimate(plan),
    )
    ghactions.summary(render_summary(plan, args.top, over))
    print(one_line_estimate(plan))
    if over:
        print(f"::error title=Over budget::estimated {usd(plan['budget'].get('cheapest_usd'))} per run exceeds "
              f"budget.max_run_usd={usd(plan['budget']['max_run_usd'])}; nothing was launched")
        return EXIT_BUDGET
    if code != 0:
        print(stderr.strip()[-2000:], file=sys.stderr)
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
