#!/usr/bin/env bash
# Run HERE (with network to PyPI) before a GPU session: bakes the default project and
# downloads the wheels the GPU machine's image lacks, into benchmarks/carry/ (git-ignored,
# ~50 MB: carry it with the device run). The GPU machine itself can download nothing.
set -euo pipefail
cd "$(dirname "$0")"
PY="${PY:-../.venv/bin/python}"
rm -rf carry && mkdir -p carry/wheels
"$PY" -m cookiecutter --no-input --output-dir carry .. project_name="Bench Project" >/dev/null
# The image runs Python 3.12 on x86-64 with torch, transformers, peft, accelerate, triton.
wheels=(--quiet --python-version 3.12 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
  --platform manylinux2014_x86_64 --only-binary=:all: -d carry/wheels)
"$PY" -m pip download "${wheels[@]}" "pydantic==2.14.4"  # with its small dependencies
# Without dependencies: the image has torch and triton, which they would pull in (GBs).
"$PY" -m pip download "${wheels[@]}" --no-deps "bitsandbytes==0.50.2" "liger-kernel==0.8.5"
anchor="../../shared/bench/anchor_lora.py"
[ -f "$anchor" ] || anchor="../shared/bench/anchor_lora.py"
cp "$anchor" carry/anchor_lora.py
du -sh carry
