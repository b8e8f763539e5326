#!/usr/bin/env bash
# The main job: installs what is missing, builds, then
#  1. starts slimd with its embedded defaults (SQLite store and files under build/demo-slimd,
#     the CPU as its device) on a private socket;
#  2. through slimctl: imports the shipped base model, fine-tunes it on this repository's docs
#     inside a 96 MiB memory quota (the planner picks the SLiM chunk size that fits; local
#     files are uploaded as datasets), follows the job to completion, and samples from the
#     fine-tuned model;
#  3. stops slimd (SIGTERM) and benchmarks SLiM training steps of the `small` model: full
#     backprop against SLiM with C = 512 at L = 8192, and SLiM at L = 65536 with the same peak.
# Extra arguments replace step 3's benchmark flags (see build/tools/slim-bench --help).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/build.sh
build="${BUILD_DIR:-build}"
data="$build/demo-slimd"
rm -rf "$data"
mkdir -p "$data"
sock="unix:$(pwd)/$data/slimd.sock"
"$build/server/slimd" --listen "$sock" --data-dir "$data" --metrics-address 127.0.0.1:0 > "$data/slimd.log" 2>&1 &
slimd_pid=$!
trap 'kill -TERM $slimd_pid 2>/dev/null; wait $slimd_pid 2>/dev/null || true' EXIT
ctl() { "$build/client/slimctl" --server "$sock" "$@"; }
for _ in $(seq 1 100); do ctl version 2>/dev/null | grep -q ": reachable" && break; sleep 0.1; done
head -1 "$data/slimd.log"

base=$(ctl models import models/base-mini.safetensors --name base-mini --output json |
       sed -n 's/^ *"id": "\(.*\)",*$/\1/p')
echo "imported the base model as $base"
# The created job's id from submit's own answer (not the newest job: others may submit too).
job=$(ctl submit examples/finetune-docs.slimctl.yaml --set "model.base=$base" --name docs-lora --output json |
      sed -n 's/^ "id": "\(job-[0-9]*\)",*$/\1/p')
ctl watch "$job"
ctl get "$job"
model=$(ctl get "$job" --output json | sed -n 's/^ *"output_model": "\(.*\)",*$/\1/p')
ctl generate "$model" --prompt "The planner " --max-tokens 160 --temperature 0.7 --top-k 20 --seed 1
kill -TERM "$slimd_pid"; wait "$slimd_pid" || true
trap - EXIT

bench="$build/tools/slim-bench"
if [ $# -gt 0 ]; then
  exec "$bench" "$@"
fi
"$bench" --preset small --seq-len 8192 --chunk 512 --mode full,subtract --steps 2
"$bench" --preset small --seq-len 65536 --chunk 512 --mode subtract --steps 1 --json
