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
        entry = next(g for g in plan["gpus"] if g["gpu"] == best["gpu"])
        offloaded = ", layer inputs in host RAM" if entry["offload_activations"] else ""
        out += ["", f"Peak memory on {best['gpu']} (micro_batch {entry['micro_batch']}, "
                    f"gradient checkpointing {checkpointing_label(entry['gradient_checkpointing'], 'on', 'off')}{offloaded}):"]
        labels = {
            "base_weights": "base weights" + (" (4-bit NF4)" if setup["method"] == "qlora" else " (16-bit)"),
            "adapter_and_optimizer": "LoRA params + grads + AdamW",
            "activations": "activations kept for backward",
            "logits_and_loss": "logits + loss (peak)",
            "backward_working_set": "backward working set (1 layer)",
            "allocator_overhead": "allocator overhead",
            "cuda_context": "CUDA context",
            "peak": "peak (logits and backward set don't coexist)",
        }
        for key, label in labels.items():
            out.append(f"  {label:<46} {entry['memory'][key]:7.2f} GiB")
        if entry["memory"]["host_ram"]:
            out.append(f"  {'host RAM (pinned): offloaded layer inputs':<46} {entry['memory']['host_ram']:7.2f} GiB")

    # The kind the plan picked from: the asked one, else (no offer of it in the prices) the other.
    spot = best["spot"] if best else plan["spot"]
    shown = [o for o in plan["ranked"] if o["gpu"] in plan["candidates"][:top] and o["spot"] == spot]
    out += ["", _offers_heading(shown, spot, plan["spot"], len(plan["candidates"]), top),
            f"  {'#':>3}  {'GPU':<10} {'cloud':<7} {'region':<13} {'$/h':>6} {'mb':>3} {'ckpt':>4} "
            f"{'GiB':>6} {'hours':>6} {'$/run':>8}"]
    for position, offer in enumerate(shown, start=1):
        out.append(
            f"  {position:>3}  {offer['gpu']:<10} {offer['cloud']:<7} {offer['region'][:13]:<13} "
            f"{offer['usd_per_hour']:>6.2f} {offer['micro_batch']:>3} {checkpointing_label(offer['gradient_checkpointing'], 'yes', 'no'):>4} "
            f"{offer['peak_gib']:>6.1f} {offer['hours']:>6.2f} {offer['usd_per_run']:>8.2f}"
        )
    if not shown:
        out.append("  (none)")
    else:
        setup_hours = next(g["setup_hours"] for g in plan["gpus"] if g["gpu"] == shown[0]["gpu"])
        out.append(f"  hours include ~{setup_hours * 60:.0f} min of setup per run (VM start, install, model download), "
                   "billed but not training")
    if plan["excluded"]:
        out += ["", "Excluded:"] + [f"  {e['gpu']}: {e['reason']}" for e in plan["excluded"]]
    out += ["", "Longest row that fits (micro_batch 1, with the checkpointing and offloading params allow):"]
    for g in plan["gpus"]:
        row = g["longest_row"]
        host = f" (layer inputs in {row['host_ram_gib']:.1f} GiB of pinned host RAM)" if row["offload_activations"] else ""
        limit = ", limited by the model's positions" if row.get("bound") == "positions" else ", limited by GPU memory"
        out.append(f"  {g['gpu']:<10} up to {row['tokens']:>9,} tokens{host}{limit}" if row["tokens"]
                   else f"  {g['gpu']:<10} not even 128 tokens")
    budget = plan["budget"]
    if budget["cheapest_usd"] is not None:
        verdict = "within" if budget["within"] else "OVER"
        out += ["", f"Budget: cheapest {_usd(budget['cheapest_usd'])} per run, "
                    f"{verdict} budget.max_run_usd={_usd(budget['max_run_usd'])}"]
    return "\n".join(out)


format_plan = render_table  # the name `launch --dry-run` looks for


def _offers_heading(shown: list[dict], spot: bool, asked_spot: bool, fitting: int, top: int) -> str:
    """What the offers table holds, counted: one row per GPU and cloud, so more rows than GPUs."""
    if not shown:
        return "Offers, by dollars per run:"
    kind = "spot" if spot else "on-demand"
    gpus = len({o["gpu"] for o in shown})
    which = "the cheapest GPU" if gpus == 1 else f"the {gpus} cheapest GPUs"
    more = f" (--top {fitting} shows all {fitting})" if fitting > top else ""
    other = f" (no {'spot' if asked_spot else 'on-demand'} offer in the prices)" if spot != asked_spot else ""
    return f"{len(shown)} {kind} {'offer' if len(shown) == 1 else 'offers'}{other} on {which}{more}, " \
           "one row per GPU and cloud, by dollars per run:"


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
        lines.append(f"  cheapest cloud: {_usd(c['usd_per_run'])} per run ({c['gpu']} {kind} on {c['cloud']})")
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
