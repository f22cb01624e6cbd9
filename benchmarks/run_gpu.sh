#!/usr/bin/env bash
# One prepared GPU run: the reference recipes (anchor_lora.py) and this project's trainer
# (`bench`) on the same GPU, one process per case, each with its own time limit.
#   benchmarks/run_gpu.sh            on the GPU machine (after prepare_gpu_run.sh here)
#   benchmarks/run_gpu.sh --smoke    on a CPU: the tiny shape, checks the plumbing
# Records (JSON lines) go to ${OUT:-benchmarks/out}/results.jsonl; a table is printed.
set -uo pipefail
cd "$(dirname "$0")" || exit 1
OUT="${OUT:-out}"
mkdir -p "$OUT"
results="$OUT/results.jsonl"
: > "$results"
smoke=0
[ "${1:-}" = "--smoke" ] && smoke=1
default_py=python3  # the GPU image's python, which holds torch
[ "$smoke" -eq 1 ] && [ -x ../.venv/bin/python ] && default_py=../.venv/bin/python
PY="${PY:-$default_py}"

if [ "$smoke" -eq 0 ]; then
  # One at a time: without Liger or bitsandbytes some cases still run; without pydantic none would.
  for package in pydantic bitsandbytes liger-kernel; do
    "$PY" -m pip install --quiet --no-index --find-links carry/wheels "$package" || echo "could not install $package"
  done
fi
# What RESULTS.md must state: GPU, driver and library versions.
"$PY" - > "$OUT/environment.json" <<'PYTHON'
import importlib.metadata as md, json, platform, torch
versions = {}
for name in ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "liger-kernel", "triton", "flash-attn"):
    try:
        versions[name] = md.version(name)
    except md.PackageNotFoundError:
        versions[name] = None
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
print(json.dumps({"gpu": gpu, "cuda": torch.version.cuda, "python": platform.python_version(), **versions}))
PYTHON
cat "$OUT/environment.json"
export PYTHONPATH="$PWD/carry/bench-project/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PARAMS="carry/bench-project/params.yaml"

# The GPU machine is lent for minutes: every case gets at most what is left of BUDGET_S,
# so a slow case cannot eat the time of the ones after it (and the table is always printed).
deadline=$((SECONDS + ${BUDGET_S:-540}))
time_left() {  # the case's own limit, or what is left of the budget if less; 0 = skip
  local left=$((deadline - SECONDS))
  if [ "$left" -lt 20 ]; then echo 0; elif [ "$1" -lt "$left" ]; then echo "$1"; else echo "$left"; fi
}
skipped() {
  echo "{\"case\": \"$1\", \"error\": \"skipped: the time budget (BUDGET_S) ran out\"}" >> "$results"
}

case_run() {  # limit_s, name, command...
  local limit name="$2"
  limit="$(time_left "$1")"
  shift 2
  [ "$limit" -eq 0 ] && { skipped "$name"; return; }
  echo "== $name (at most ${limit} s)"
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log" | grep '^RESULT ' | sed 's/^RESULT //' >> "$results" \
    || echo "{\"case\": \"$name\", \"error\": \"failed or timed out, see $name.log\"}" >> "$results"
}

anchor_run() {  # limit_s, name, anchor arguments...: its --out JSON, appended as records
  local limit name="$2"
  limit="$(time_left "$1")"
  shift 2
  [ "$limit" -eq 0 ] && { skipped "$name"; return; }
  echo "== $name (at most ${limit} s)"
  timeout "$limit" "$PY" carry/anchor_lora.py "$@" --out "$OUT/$name.json" > "$OUT/$name.log" 2>&1
  "$PY" -c 'import json, sys
for r in json.load(open(sys.argv[1])):
    if "variant" in r:
        print(json.dumps(r))' "$OUT/$name.json" >> "$results" \
    || echo "{\"case\": \"$name\", \"error\": \"failed or timed out, see $name.log\"}" >> "$results"
}

if [ "$smoke" -eq 1 ]; then
  anchor_run 300 anchor-tiny --smoke --variants hf_recipe,tuned
  case_run 300 ours-tiny "$PY" -m bench_project bench --params "$PARAMS" --shape tiny --seq 256 --steps 3 --global-batch 8
  case_run 300 ours-tiny-compile "$PY" -m bench_project bench --params "$PARAMS" --shape tiny --seq 256 --steps 3 --global-batch 8 \
    --compile true --variant ours_lora_compile
else
  # Ratios are what count: every figure below is measured on this GPU in this run.
  anchor_run 150 anchor-1b --models 1b --variants hf_recipe,tuned
  case_run 150 ours-1b "$PY" -m bench_project bench --params "$PARAMS" --shape 1b --seq 2048 --steps 10 --global-batch 16
  anchor_run 200 anchor-8b --models 8b --variants hf_recipe,hf_qlora
  case_run 200 ours-8b "$PY" -m bench_project bench --params "$PARAMS" --shape 8b --seq 2048 --steps 8 --global-batch 16
  # As on a 24 GB card: the allocator may hold 20 GiB, and micro_batch / checkpointing `auto` choose within that.
  case_run 200 ours-8b-qlora "$PY" -m bench_project bench --params "$PARAMS" --shape 8b --method qlora --seq 2048 --steps 6 --global-batch 8 \
    --gpu-memory-gib 20
  # Levers, one at a time against ours-1b, while the budget lasts (skipped cases are listed).
  case_run 150 ours-1b-compile "$PY" -m bench_project bench --params "$PARAMS" --shape 1b --seq 2048 --steps 10 --global-batch 16 \
    --compile true --variant ours_lora_compile
  case_run 120 ours-1b-flex "$PY" -m bench_project bench --params "$PARAMS" --shape 1b --seq 2048 --steps 10 --global-batch 16 \
    --attention flex_attention --variant ours_lora_flex
  case_run 120 ours-1b-no-liger "$PY" -m bench_project bench --params "$PARAMS" --shape 1b --seq 2048 --steps 10 --global-batch 16 \
    --liger false --variant ours_lora_no_liger
fi

"$PY" - "$results" <<'PYTHON'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
print(f"\n{'model':6} {'variant':16} {'tokens/s':>10} {'MFU':>7} {'peak GiB':>9}")
for r in rows:
    if "error" in r:
        print(f"{r.get('case', '?'):23} ERROR {r['error']}")
        continue
    mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "-"
    peak = f"{r['peak_gib']:.1f}" if r.get("peak_gib") else "-"
    print(f"{r['model']:6} {r['variant']:16} {r['tokens_per_s']:10.0f} {mfu:>7} {peak:>9}")

# The targets, from the records above (a missing record is said, never guessed).
got = {(r["model"], r["variant"]): r for r in rows if "error" not in r}
def ratio(model, ours, reference, target):
    a, b = got.get((model, ours)), got.get((model, reference))
    if not (a and b):
        return f"{model} {ours} / {reference}: not measured (a record is missing)"
    x = a["tokens_per_s"] / b["tokens_per_s"]
    verdict = f"target >= {target}x: {'met' if x >= target else 'NOT met'}" if target else "plumbing check, no target"
    return f"{model} {ours} / {reference}: {x:.2f}x ({verdict})"
print()
for model, ours, reference, target in (("1b", "ours_lora", "hf_recipe", 3), ("8b", "ours_lora", "hf_recipe", 2),
                                       ("tiny", "ours_lora", "hf_recipe", None)):
    if any(m == model for m, _ in got):
        print(ratio(model, ours, reference, target))
if ("8b", "ours_lora") in got and got["8b", "ours_lora"].get("mfu"):
    mfu = got["8b", "ours_lora"]["mfu"]
    print(f"8b ours_lora MFU: {100 * mfu:.1f}% (target >= 50%: {'met' if mfu >= 0.5 else 'NOT met'})")
if ("8b", "ours_qlora") in got:
    r = got["8b", "ours_qlora"]
    print(f"8b ours_qlora peak: {r['peak_gib']:.1f} GiB allocated, {r['peak_reserved_gib']:.1f} GiB reserved "
          f"(target <= 20 GiB: {'met' if r['peak_reserved_gib'] <= 20 else 'NOT met'})")
PYTHON
