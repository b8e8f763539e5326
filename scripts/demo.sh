#!/usr/bin/env bash
# The main job until the service exists: installs what is missing, builds, then
#  1. fine-tunes the shipped base model (models/base-mini.safetensors) on this repository's docs
#     inside a 96 MiB memory quota — the planner picks the SLiM chunk size that fits — and
#     samples from the result;
#  2. benchmarks SLiM training steps of the `small` model: full backprop against SLiM with
#     C = 512 at L = 8192, and SLiM at L = 65536 with the same peak memory.
# Extra arguments replace step 2's benchmark flags (see build/tools/slim-bench --help).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/build.sh
build="${BUILD_DIR:-build}"
run_dir="$build/demo-run"
"$build/tools/slim-train" run --spec examples/finetune-docs.yaml --out "$run_dir" --no-resume
"$build/tools/slim-train" generate --model "$run_dir/model.safetensors" --prompt "The planner " \
  --max-tokens 160 --temperature 0.7 --top-k 20 --seed 1

bench="$build/tools/slim-bench"
if [ $# -gt 0 ]; then
  exec "$bench" "$@"
fi
"$bench" --preset small --seq-len 8192 --chunk 512 --mode full,subtract --steps 2
"$bench" --preset small --seq-len 65536 --chunk 512 --mode subtract --steps 1 --json
