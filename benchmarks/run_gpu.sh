#!/usr/bin/env bash
# One prepared GPU run: the reference recipes (anchor_lora.py) and this project's trainer
# (`bench`) on the same GPU, one process per case, each with its own time limit.
#   benchmarks/run_gpu.sh            on the GPU machine (after prepare_gpu_run.sh here)
#   benchmarks/run_gpu.sh --smoke    on a CPU: the tiny shape, checks the plumbing
#   benchmarks/run_gpu.sh --longest  on the GPU machine: only the longest-row checks
# Records (JSON lines) go to ${OUT:-benchmarks/out}/results.jsonl; a table is printed.
set -uo pipefail
cd "$(dirname "$0")" || exit 1
OUT="${OUT:-out}"
mkdir -p "$OUT"
results="$OUT/results.jsonl"
: > "$results"
smoke=0
[ "${1:-}" = "--smoke" ] && smoke=1
longest_only=0
[ "${1:-}" = "--longest" ] && longest_only=1
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

refused_run() {  # limit_s, name, command...: must stop by itself, with the exit code and message of a refusal
  local limit name="$2" started=$SECONDS status
  limit="$(time_left "$1")"
  shift 2
  [ "$limit" -eq 0 ] && { skipped "$name"; return; }
  echo "== $name (at most ${limit} s, must be refused)"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  status=$?
  local refused=false
  # Exit 2 is the CLI's bad-input code; 124 would be a hang cut short by timeout.
  [ "$status" -eq 2 ] && grep -q "fits in GPU memory" "$OUT/$name.log" && refused=true
  echo "{\"case\": \"$name\", \"refused\": $refused, \"exit_code\": $status, \"seconds\": $((SECONDS - started))}" >> "$results"
}

longest_row_checks() {
  # The longest row plan promises for a 24 GB card (RTX4090 row: 8B QLoRA r32, all linear
  # layers, one row), run with the allocator capped at 24 GiB; twice that must be refused
  # with the reason, not hang.
  local longest
  longest="$("$PY" -m bench_project plan --params "$PARAMS" --json --set model.base=meta-llama/Llama-3.1-8B \
    --set model.method=qlora --set model.dtype=auto --set lora.r=32 --set lora.target_modules=all-linear 2>/dev/null \
    | "$PY" -c 'import json, sys; print(next(g["longest_row"]["tokens"] for g in json.load(sys.stdin)["gpus"] if g["gpu"] == "RTX4090"))')"
  echo "plan: longest row on a 24 GB card: ${longest:-?} tokens"
  [ -n "$longest" ] || { echo '{"case": "ours-8b-qlora-longest", "error": "plan gave no longest row"}' >> "$results"; return; }
  case_run 300 ours-8b-qlora-longest "$PY" -m bench_project bench --params "$PARAMS" --shape 8b --method qlora --seq "$longest" \
    --steps 1 --warmup 1 --global-batch 1 --gpu-memory-gib 24 --set lora.r=32 --variant ours_qlora_longest
  refused_run 240 ours-8b-qlora-2x-longest "$PY" -m bench_project bench --params "$PARAMS" --shape 8b --method qlora \
    --seq $((2 * longest)) --steps 1 --warmup 1 --global-batch 1 --gpu-memory-gib 24 --set lora.r=32 --variant ours_qlora_2x_longest
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

# ---- vLLM serves an exported adapter (`export --target vllm`): vLLM needs a GPU, so this is the only
# place the exported adapter and the printed `vllm serve` line run. Skipped, and said so, where vllm
# is not installed. The tiny model is trained a few steps, exported, served, and asked one question.
vllm_serve_check() {
  local limit name=vllm-serve-export project=carry/bench-project port=8765 server command
  limit="$(time_left 300)"
  [ "$limit" -eq 0 ] && { skipped "$name"; return; }
  "$PY" -c 'import vllm' 2>/dev/null \
    || { echo "{\"case\": \"$name\", \"error\": \"skipped: vllm is not installed here\"}" >> "$results"; return; }
  echo "== $name (at most ${limit} s)"
  ( cd "$project" && timeout "$limit" "$PY" -m bench_project smoke --set train.max_steps=20 \
      && timeout "$limit" "$PY" -m bench_project export --smoke --target vllm ) > "$OUT/$name.log" 2>&1 \
    || { echo "{\"case\": \"$name\", \"error\": \"train or export failed, see $name.log\"}" >> "$results"; return; }
  # The exact line export printed, with a port of our own.
  command="$("$PY" -c 'import json, sys; print(next(r["command"] for r in json.load(open(sys.argv[1])) if r["target"] == "vllm"))' \
    "$project/outputs/smoke/export/exports.json")"
  echo "$command --port $port" >> "$OUT/$name.log"
  (cd "$project" && eval "timeout $limit $command --port $port") >> "$OUT/$name.log" 2>&1 &
  server=$!
  local served=false answer=""
  for _ in $(seq 1 "$limit"); do
    if answer="$(curl -sf "http://127.0.0.1:$port/v1/completions" -H 'Content-Type: application/json' \
        -d '{"model": "bench-project-smoke", "prompt": "My invoice is wrong.", "max_tokens": 8}')"; then
      served=true; break
    fi
    kill -0 "$server" 2>/dev/null || break
    sleep 1
  done
  kill "$server" 2>/dev/null; wait "$server" 2>/dev/null
  echo "$answer" >> "$OUT/$name.log"
  echo "{\"case\": \"$name\", \"served\": $served}" >> "$results"
}

if [ "$longest_only" -eq 1 ]; then
  longest_row_checks
elif [ "$smoke" -eq 1 ]; then
  anchor_run 300 anchor-tiny --smoke --variants hf_recipe,tuned
  case_run 300 ours-tiny "$PY" -m bench_project bench --params "$PARAMS" --shape tiny --seq 256 --steps 3 --global-batch 8
  case_run 300 ours-tiny-compile "$PY" -m bench_project bench --params "$PARAMS" --shape tiny --seq 256 --steps 3 --global-batch 8 \
    --compile true --variant ours_lora_compile
else
  # Ratios are what count: every figure below is measured on this GPU in this run.
  anchor_run 150 anchor-1b --models 1b --variants hf_recipe,tuned
  case_run 150 ours-1b "$PY" -m bench_project bench --params "$PARAMS" --shape 1b --seq 2048 --steps 10 --global-batch 16
  anchor_run 150 anchor-8b --models 8b --variants hf_recipe
  case_run 200 ours-8b "$PY" -m bench_project bench --params "$PARAMS" --shape 8b --seq 2048 --steps 8 --global-batch 16
  # As on a 24 GB card: the allocator may hold 20 GiB, and micro_batch / checkpointing `auto` choose within that.
  case_run 200 ours-8b-qlora "$PY" -m bench_project bench --params "$PARAMS" --shape 8b --method qlora --seq 2048 --steps 6 --global-batch 8 \
    --gpu-memory-gib 20
  longest_row_checks
  # Levers, one at a time against ours-1b / ours-8b, while the budget lasts (skipped cases are listed).
  case_run 120 ours-1b-varlen "$PY" -m bench_project bench --params "$PARAMS" --shape 1b --seq 2048 --steps 10 --global-batch 16 \
    --attention varlen --variant ours_lora_varlen
  case_run 200 ours-8b-varlen "$PY" -m bench_project bench --params "$PARAMS" --shape 8b --seq 2048 --steps 8 --global-batch 16 \
    --attention varlen --variant ours_lora_varlen
  # The HF QLoRA reference writes and reloads a 16 GB checkpoint: slow, and no target needs it.
  anchor_run 200 anchor-8b-qlora --models 8b --variants hf_qlora
  case_run 150 ours-1b-compile "$PY" -m bench_project bench --params "$PARAMS" --shape 1b --seq 2048 --steps 10 --global-batch 16 \
    --compile true --variant ours_lora_compile
  case_run 120 ours-1b-flex "$PY" -m bench_project bench --params "$PARAMS" --shape 1b --seq 2048 --steps 10 --global-batch 16 \
    --attention flex_attention --variant ours_lora_flex
  case_run 120 ours-1b-no-liger "$PY" -m bench_project bench --params "$PARAMS" --shape 1b --seq 2048 --steps 10 --global-batch 16 \
    --liger false --variant ours_lora_no_liger
  vllm_serve_check
fi

"$PY" table.py "$results"
