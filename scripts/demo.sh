#!/usr/bin/env bash
# The main job: installs what is missing, builds, then
#  1. starts slimd with its embedded defaults (SQLite store and files under build/demo-slimd,
#     the CPU as its device) on a private socket;
#  2. through slimctl: imports the shipped base model, plans and fine-tunes it on this
#     repository's docs at 16,384 tokens per sequence inside a 96 MiB memory quota, where full
#     backprop would need about 1.6 GiB (the planner picks the SLiM chunk size that fits; local
#     files are uploaded as datasets), follows the job to completion, prints the validation loss
#     at that length before and after, and samples from the fine-tuned model;
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
spec=examples/finetune-docs.slimctl.yaml
# The chunk size that fits the quota, and what full backprop (chunk size = seq_len) would need.
ctl plan "$spec" --set "model.base=$base"
# The created job's id from submit's own answer (not the newest job: others may submit too).
job=$(ctl submit "$spec" --set "model.base=$base" --name docs-lora --output json |
      sed -n 's/^ "id": "\(job-[0-9]*\)",*$/\1/p')
ctl watch "$job"
ctl get "$job"
model=$(ctl get "$job" --output json | sed -n 's/^ *"output_model": "\(.*\)",*$/\1/p')
# Validation loss at the job's length before (the base model) and after (the job's output),
# with slim-train eval on the spec's validation file.
len=$(sed -n 's/^ *seq_len: *\([0-9]*\).*/\1/p' "$spec")
val=$(sed -n 's/^ *validation: *\[\.\.\/\(.*\)\].*/\1/p' "$spec")
ctl models export "$model" --out "$data/tuned.safetensors" > /dev/null
val_loss() { "$build/tools/slim-train" eval --model "$1" --data "$val" --seq-len "$len" --chunk 512 |
             sed -n 's/.*"loss":\([0-9.]*\).*/\1/p'; }
echo "validation loss on $val at L = $len (nats per byte): base $(val_loss models/base-mini.safetensors)," \
     "fine-tuned $(val_loss "$data/tuned.safetensors")"
ctl generate "$model" --prompt "The planner " --max-tokens 160 --temperature 0.7 --top-k 20 --seed 1
kill -TERM "$slimd_pid"; wait "$slimd_pid" || true
trap - EXIT

bench="$build/tools/slim-bench"
if [ $# -gt 0 ]; then
  exec "$bench" "$@"
fi
"$bench" --preset small --seq-len 8192 --chunk 512 --mode full,subtract --steps 2
"$bench" --preset small --seq-len 65536 --chunk 512 --mode subtract --steps 1 --json
