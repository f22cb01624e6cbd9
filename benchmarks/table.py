"""The table of a GPU run's records (results.jsonl), then each target of the run: met, not
met, or not measured (a missing record is said, never guessed).

    python benchmarks/table.py benchmarks/out/results.jsonl
"""

import json
import sys
from pathlib import Path

# tokens/s of our trainer over the widely copied HF recipe, on the same GPU in the same run
SPEEDUP_TARGETS = {"1b": 3.0, "8b": 2.0, "tiny": None}  # tiny: the CPU plumbing check
MFU_TARGET_8B = 0.50
QLORA_8B_MAX_GIB = 20.0  # so that it fits a 24 GB card
LONGEST_MAX_GIB = 24.0  # the cap the longest-row run is held to (--gpu-memory-gib 24)


def table(rows: list[dict]) -> list[str]:
    lines = [f"{'model':6} {'variant':18} {'tokens/s':>10} {'MFU':>7} {'peak GiB':>9}"]
    for r in rows:
        if "error" in r:
            lines.append(f"{r.get('case', '?'):25} ERROR {r['error']}")
            continue
        if "refused" in r:
            lines.append(f"{r['case']:25} {'refused' if r['refused'] else 'NOT refused'} (exit {r['exit_code']}, {r['seconds']} s)")
            continue
        if "served" in r:  # vLLM serving the exported adapter (run_gpu.sh's vllm_serve_check)
            lines.append(f"{r['case']:25} {'served and answered' if r['served'] else 'NOT served'}")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "-"
        peak = f"{r['peak_gib']:.1f}" if r.get("peak_gib") else "-"
        lines.append(f"{r['model']:6} {r['variant']:18} {r['tokens_per_s']:10.0f} {mfu:>7} {peak:>9}")
    return lines


def verdict(value: float, ok: bool, target: str) -> str:
    return f"{value} (target {target}: {'met' if ok else 'NOT met'})"


def targets(rows: list[dict]) -> list[str]:
    got = {(r["model"], r["variant"]): r for r in rows if "model" in r and "error" not in r and "refused" not in r}
    lines = []
    for model, target in SPEEDUP_TARGETS.items():
        if not any(m == model for m, _ in got):  # a shape this run did not measure at all
            continue
        reference = got.get((model, "hf_recipe"))
        # The default settings (ours_lora) first, then each lever (ours_lora_<lever>).
        for ours in sorted({"ours_lora"} | {v for m, v in got if m == model and v.startswith("ours_lora")}):
            name = f"{model} {ours} / hf_recipe:"
            if (model, ours) not in got or not reference:
                lines.append(f"{name} not measured (a record is missing)")
                continue
            x = got[model, ours]["tokens_per_s"] / reference["tokens_per_s"]
            lines.append(f"{name} " + (verdict(f"{x:.2f}x", x >= target, f">= {target:g}x") if target else f"{x:.2f}x (no target)"))
    for (model, variant), r in sorted(got.items()):
        if model == "8b" and variant.startswith("ours_lora") and r.get("mfu"):
            lines.append(f"8b {variant} MFU: " + verdict(f"{100 * r['mfu']:.1f}%", r["mfu"] >= MFU_TARGET_8B, f">= {MFU_TARGET_8B:.0%}"))
    qlora = got.get(("8b", "ours_qlora"))
    if qlora:
        # Reserved memory is what the card must have (allocated plus the allocator's cache).
        reserved = qlora["peak_reserved_gib"]
        lines.append(f"8b ours_qlora peak: {qlora['peak_gib']:.1f} GiB allocated, "
                     + verdict(f"{reserved:.1f} GiB reserved", reserved <= QLORA_8B_MAX_GIB, f"<= {QLORA_8B_MAX_GIB:g} GiB"))
    longest = got.get(("8b", "ours_qlora_longest"))
    if longest:
        reserved = longest["peak_reserved_gib"]
        lines.append(f"8b QLoRA longest row of plan for 24 GB ({longest['seq']:,} tokens): "
                     + verdict(f"ran, {reserved:.1f} GiB reserved", reserved <= LONGEST_MAX_GIB, f"<= {LONGEST_MAX_GIB:g} GiB"))
    elif any(r.get("case") == "ours-8b-qlora-longest" for r in rows):
        lines.append("8b QLoRA longest row of plan for 24 GB: NOT met (failed, see its log)")
    for r in rows:
        if r.get("case") == "ours-8b-qlora-2x-longest":
            ok = r.get("refused") is True
            lines.append("8b QLoRA at twice that: " + ("refused with the reason (target met)" if ok else
                         f"NOT refused cleanly (exit {r.get('exit_code')}, target NOT met)"))
    return lines


if __name__ == "__main__":
    records = [json.loads(line) for line in Path(sys.argv[1]).read_text().splitlines() if line.strip()]
    print("\n" + "\n".join(table(records)) + "\n\n" + "\n".join(targets(records)))
