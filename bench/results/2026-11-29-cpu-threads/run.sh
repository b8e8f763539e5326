#!/usr/bin/env bash
# Throughput of CPU jobs packed on one slimd, with the cores divided among the workers' BLAS
# pools (--worker-cpu-threads 0, the default) and without (-1: every worker's OpenBLAS uses
# every core). For each setting: one job alone, then two at once; each job's training tokens/s
# is measured from its progress over a window after a warm-up. slimd runs from the build with
# two declared 2 GiB CPU devices, a fresh data directory and SQLite.
# Usage: [OUT=name] [WINDOW=seconds] run.sh [build dir]   (writes $OUT.txt here: results.txt,
# and a 30 s window by default)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=$(cd "${1:-build}" && pwd)
window="${WINDOW:-30}"
warmup=15
dir=$(mktemp -d)
slimd_pid=""
stop_slimd() {
  if [ -n "$slimd_pid" ]; then kill -TERM "$slimd_pid" 2>/dev/null || true; wait "$slimd_pid" 2>/dev/null || true; fi
  slimd_pid=""
}
trap 'stop_slimd; rm -rf "$dir"' EXIT
ctl() { "$build/client/slimctl" --server "unix:$dir/slimd.sock" "$@"; }
json() { python3 -c "import json,sys; d=json.loads(sys.stdin.read()); print($1)"; }

# A small-preset job on 2048-token sequences, longer than the measurement.
python3 - "$dir/data.txt" <<'PY'
import sys
words = "the memory of a causal performer grows with its chunk size not with its sequence length".split()
with open(sys.argv[1], "w") as f:
    for i in range(60000):
        f.write(" ".join(words[(i * 7 + j) % len(words)] for j in range(12)) + ".\n")
PY
cat > "$dir/job.yaml" <<YAML
model: {preset: small}
data: {train: [$dir/data.txt]}
training: {seq_len: 2048, batch_size: 1, steps: 100000, optimizer: {lr: 1e-4}}
memory: {quota: 1GiB, chunk_size: 256}
checkpoint: {every: 100000}
YAML

# tokens/s of each job named, over the same $window seconds, from their token counts
rates() {
  local t0 t1 before=() after=() id i
  t0=$(date +%s.%N)
  for id in "$@"; do before+=("$(ctl get "$id" --output json | json 'd["progress"].get("tokens", 0)')"); done
  sleep "$window"
  t1=$(date +%s.%N)
  for id in "$@"; do after+=("$(ctl get "$id" --output json | json 'd["progress"].get("tokens", 0)')"); done
  for i in "${!before[@]}"; do python3 -c "print(round((${after[$i]} - ${before[$i]}) / ($t1 - $t0), 1))"; done
}

{
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); load before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "job: preset small, seq_len 2048, batch 1, chunk 256 (subtract); window ${window} s after ${warmup} s warm-up"
  for setting in 0 -1; do
    rm -rf "$dir/data-dir"
    "$build/server/slimd" --listen "unix:$dir/slimd.sock" --data-dir "$dir/data-dir" --devices cpu:2GiB,cpu:2GiB \
      --worker-binary "$build/tools/slim-train" --metrics-address off --worker-cpu-threads "$setting" \
      >"$dir/slimd.log" 2>&1 &
    slimd_pid=$!
    for _ in $(seq 1 600); do ctl health >/dev/null 2>&1 && break; sleep 0.1; done
    a=$(ctl submit "$dir/job.yaml" --output json | json 'd["id"]')
    sleep "$warmup"
    alone=$(rates "$a")
    threads_alone=$(ctl get "$a" --output json | json 'd["progress"].get("blas_threads", 0)')
    b=$(ctl submit "$dir/job.yaml" --output json | json 'd["id"]')
    sleep "$warmup"
    mapfile -t two < <(rates "$a" "$b")
    threads_two=$(ctl get "$a" --output json | json 'd["progress"].get("blas_threads", 0)')
    echo "--worker-cpu-threads $setting: alone ${alone} tokens/s (BLAS threads $threads_alone);" \
      "two jobs: ${two[0]} + ${two[1]} = $(python3 -c "print(round(${two[0]} + ${two[1]}, 1))") tokens/s" \
      "(BLAS threads $threads_two each)"
    ctl cancel "$a" >/dev/null; ctl cancel "$b" >/dev/null
    stop_slimd
  done
  echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$here/${OUT:-results}.txt"
