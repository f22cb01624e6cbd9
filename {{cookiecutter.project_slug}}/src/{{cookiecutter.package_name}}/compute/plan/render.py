"""The plan for people: workload, peak memory of the best choice, ranked offers, exclusions,
the longest rows and the budget; the own-GPU comparison. Reads the plan's dictionary only."""

from __future__ import annotations

import textwrap


def render_table(plan: dict, top: int = 4) -> str:
    """The plan for people: workload, memory of the best choice, ranked offers, exclusions."""
    model, work, setup = plan["model"], plan["work"], plan["setup"]
    out = [
        f"Plan for {model['name']} ({setup['method']}, r={setup['lora_r']}, {_targets(setup['targets'])})",
        "  ESTIMATES, not measurements: memory within ~20% of published runs, time from an assumed MFU.",
        f"  model shape: {model['layers']} layers, hidden {model['hidden']}, {model['total_params'] / 1e9:.2f}B params"
        f" (from {model['source']})",
        f"  trainer: {setup['loss']} loss, {setup['attention']} attention",
        f"  run: {work['steps']} steps x {work['global_batch']} rows x {work['seq_len']} tokens"
        f" = {work['tokens'] / 1e6:.1f}M tokens, {work['flops_per_token'] / 1e9:.2f} GFLOP/token",
    ]
    if work["dataset"]:
        ds = work["dataset"]
        real = ds["real_tokens_per_run"] / 1e6
        out.append(f"  dataset: {ds['rows']} packed rows, {ds['epochs']} epochs, ~{real:.1f}M real tokens")
    else:
        out.append("  dataset: not prepared yet (run `prepare` for epochs and real tokens)")
    for warning in plan.get("warnings", []):
        out.append(textwrap.fill(warning, width=100, initial_indent="  WARNING: ", subsequent_indent="    "))
    out.append(f"  prices: {plan['prices']['source']}")

    best = plan["cheapest"]
    if best:
        offloaded = ", layer inputs in host RAM" if best["offload_activations"] else ""
        out += ["", f"Peak memory per GPU on {best['machine']} ({STRATEGY_LABELS[best['strategy']]}, micro_batch "
                    f"{best['micro_batch']}, gradient checkpointing "
                    f"{checkpointing_label(best['gradient_checkpointing'], 'on', 'off')}{offloaded}):"]
        labels = {
            "base_weights": "base weights" + (" (4-bit NF4)" if setup["method"] == "qlora" else " (16-bit)")
                            + (f", 1/{best['gpus'] * best['nodes']} shard" if best["strategy"] == "fsdp" else ""),
            "adapter_and_optimizer": "LoRA params + grads + AdamW",
            "communication_buffers": "gathered layers" if best["strategy"] == "fsdp" else "gradient buckets",
            "activations": "activations kept for backward",
            "logits_and_loss": "logits + loss (peak)",
            "backward_working_set": "backward working set (1 layer)",
            "allocator_overhead": "allocator overhead",
            "cuda_context": "CUDA context",
            "peak": "peak (logits and backward set don't coexist)",
        }
        for key, label in labels.items():
            if key == "communication_buffers" and best["strategy"] == "single":
                continue
            out.append(f"  {label:<46} {best['memory'][key]:7.2f} GiB")
        if best["memory"]["host_ram"]:
            out.append(f"  {'host RAM (pinned): offloaded layer inputs':<46} {best['memory']['host_ram']:7.2f} GiB")
        if best["host_ram_gib"]:
            out.append(f"  host RAM of the machine: ~{best['host_ram_needed_gib']:.0f} GiB needed of "
                       f"{best['host_ram_gib']:.0f} GiB")

    # The kind the plan picked from: the asked one, else (no offer of it in the prices) the other.
    spot = best["spot"] if best else plan["spot"]
    shown = [o for o in plan["ranked"] if o["machine"] in plan["candidates"][:top] and o["spot"] == spot]
    out += ["", _offers_heading(shown, spot, plan["spot"], len(plan["candidates"]), top),
            f"  {'#':>3}  {'machine':<18} {'how':<5} {'cloud':<7} {'region':<11} {'$/h':>6} {'mb':>3} {'ckpt':>4} "
            f"{'GiB/GPU':>7} {'hours':>6} {'$/run':>8} {'expected':>8}"]
    for position, offer in enumerate(shown, start=1):
        out.append(
            f"  {position:>3}  {offer['machine']:<18} {STRATEGY_LABELS[offer['strategy']]:<5} {offer['cloud']:<7} "
            f"{offer['region'][:11]:<11} {offer['usd_per_hour']:>6.2f} {offer['micro_batch']:>3} "
            f"{checkpointing_label(offer['gradient_checkpointing'], 'yes', 'no'):>4} "
            f"{offer['peak_gib']:>7.1f} {offer['hours']:>6.2f} {offer['usd_per_run']:>8.2f} {offer['expected_usd']:>8.2f}"
            + (" *" if offer.get("pareto") else "")
        )
    if not shown:
        out.append("  (none)")
    else:
        out.append(f"  hours include ~{shown[0]['setup_hours'] * 60:.0f} min of setup per run (VM start, install, model "
                   "download), billed but not training")
        if spot:
            out.append("  expected: with spot preemptions at an assumed rate (restart + half a checkpoint interval each"
                       + (", then on-demand after compute.max_preemptions" if any(o["fallback_on_demand"] for o in shown)
                          else "") + ")")
        out.append("  *: on the Pareto front of dollars against hours (nothing else is both cheaper and faster)")
    out += _deadline_lines(plan)
    if plan["excluded"]:
        out += ["", "Excluded:"] + [f"  {e['gpu']}: {e['reason']}" for e in plan["excluded"]]
    several = [e for e in plan.get("excluded_machines", []) if e["gpus"] > 1]
    if several:
        out += ["", "Machines of several GPUs excluded:"] + [f"  {e['machine']} on {e['cloud']}: {e['reason']}"
                                                              for e in several]
    out += ["", "Longest row that fits (micro_batch 1, with the checkpointing and offloading params allow):"]
    for g in plan["gpus"]:
        row = g["longest_row"]
        host = f" (layer inputs in {row['host_ram_gib']:.1f} GiB of pinned host RAM)" if row["offload_activations"] else ""
        limit = {"positions": ", limited by the model's positions",
                 "host RAM": ", limited by the host RAM of the roomiest machine with it"}.get(row.get("bound"),
                                                                                            ", limited by GPU memory")
        out.append(f"  {g['gpu']:<10} up to {row['tokens']:>9,} tokens{host}{limit}" if row["tokens"]
                   else f"  {g['gpu']:<10} not even 128 tokens")
    budget = plan["budget"]
    if budget["cheapest_usd"] is not None:
        verdict = "within" if budget["within"] else "OVER"
        out += ["", f"Budget: cheapest {_usd(budget['cheapest_usd'])} per run, "
                    f"{verdict} budget.max_run_usd={_usd(budget['max_run_usd'])}"]
    return "\n".join(out)


format_plan = render_table  # the name `launch --dry-run` looks for

STRATEGY_LABELS = {"single": "1 GPU", "ddp": "DDP", "fsdp": "FSDP"}


def machine_kind(offer: dict) -> str:
    return "spot" if offer["spot"] else "on-demand"


def _deadline_lines(plan: dict) -> list[str]:
    """The deadline trade: the cheapest in time against the cheapest at all, or by how much none is."""
    deadline = plan.get("deadline")
    if not deadline:
        return []
    if not deadline["met"]:
        fastest = plan["fastest"]
        return ["", f"Deadline {deadline['hours']:g} h: no offer finishes in time; the fastest, {fastest['machine']} "
                    f"on {fastest['cloud']}, takes {fastest['hours']:.2f} h ({deadline['short_by_hours']:.2f} h too long)"]
    best = plan["cheapest"]
    kind = [o for o in plan["ranked"] if o["spot"] == best["spot"]]
    overall = kind[0] if kind else best
    line = (f"Deadline {deadline['hours']:g} h: {best['machine']} on {best['cloud']}, {best['hours']:.2f} h for "
            f"{_usd(best['usd_per_run'])}")
    if overall is not best:
        line += (f"; without it {overall['machine']} on {overall['cloud']} would take {overall['hours']:.2f} h for "
                 f"{_usd(overall['usd_per_run'])}")
    return ["", line]


def _offers_heading(shown: list[dict], spot: bool, asked_spot: bool, fitting: int, top: int) -> str:
    """What the offers table holds, counted: one row per machine and cloud, so more rows than machines."""
    if not shown:
        return "Offers, by dollars per run:"
    kind = "spot" if spot else "on-demand"
    machines = len({o["machine"] for o in shown})
    which = "the cheapest machine" if machines == 1 else f"the {machines} cheapest machines"
    more = f" (--top {fitting} shows all {fitting})" if fitting > top else ""
    other = f" (no {'spot' if asked_spot else 'on-demand'} offer in the prices)" if spot != asked_spot else ""
    return f"{len(shown)} {kind} {'offer' if len(shown) == 1 else 'offers'}{other} on {which}{more}, " \
           "one row per machine and cloud, by dollars per run:"


def checkpointing_label(fraction: float, every: str, none: str) -> str:
    """0 -> none, 1 -> every, a fraction of the layers -> e.g. 25%."""
    return every if fraction == 1 else none if fraction == 0 else f"{fraction:.0%}"


def _usd(value: float) -> str:
    """Dollars with cents, or tenths of cents below a dime (energy per run is often that small)."""
    return f"${value:,.3f}" if abs(value) < 0.1 else f"${value:,.2f}"


def render_owned(owned: dict) -> str:
    lines = [
        "",
        f"Own {owned['gpu']}: {owned['hours']:.2f} h x {owned['watts']:.0f} W x ${owned['usd_per_kwh']:.3f}/kWh"
        f" = {_usd(owned['energy_usd'])} energy per run"
        + (f" + {_usd(owned['amortisation_usd'])} amortisation" if owned["amortisation_usd"] else ""),
    ]
    if owned["cloud"]:
        c = owned["cloud"]
        kind = "spot" if c["spot"] else "on-demand"
        lines.append(f"  cheapest cloud: {_usd(owned['cloud_usd_per_run'])} per run, preemptions expected "
                     f"({c['gpu']} {kind} on {c['cloud']})")
    if owned["break_even_runs"]:
        lines.append(
            f"  buying it (${owned['card_price_usd']:,.0f}) pays off after {owned['break_even_runs']:.0f} runs:"
            f" {owned['break_even_runs_per_month']:.1f} runs a month over {owned['payback_months']:.0f} months"
        )
    elif owned["savings_per_run_usd"] is not None:
        lines.append("  never pays off: the energy alone costs more than the cloud run")
    else:
        lines.append("  no card price known: pass --card-price-usd for a break-even point")
    return "\n".join(lines)


def _targets(targets) -> str:
    return targets if isinstance(targets, str) else ",".join(targets)
