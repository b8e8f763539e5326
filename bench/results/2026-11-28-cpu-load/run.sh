#!/usr/bin/env bash
# Load benchmark of slimd (issue 9) on loopback: 2 tiny training jobs, 200 WatchJob streams on
# them, 50 requests/s of CreateJob / GetJob / ListJobs (weights 1:8:1) for 60 s, between two
# 15 s baselines without load (after a 10 s warm-up). slimd runs from the build with its
# defaults, one declared 1 GiB CPU device and a fresh data directory; slim-load samples its RSS.
# Writes $OUT.json and $OUT.txt here (OUT=results by default).
# Usage: [SLIMD=path] [SLIMD_FLAGS="..."] [OUT=name] run.sh [build dir] [extra slim-load flags...]
#   e.g. SLIMD_FLAGS="--worker-nice 0" OUT=ablation-worker-nice-0 run.sh build
# The environment passes through to slimd and its workers (e.g. OPENBLAS_NUM_THREADS=1).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=$(cd "${1:-build}" && pwd)
shift || true
slimd="${SLIMD:-$build/server/slimd}"
out="$here/${OUT:-results}"
dir=$(mktemp -d)
slimd_pid=""
cleanup() {
  [ -n "$slimd_pid" ] && kill -TERM "$slimd_pid" 2>/dev/null && wait "$slimd_pid" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

# shellcheck disable=SC2086  # SLIMD_FLAGS is a list of flags
"$slimd" --listen 127.0.0.1:0 --port-file "$dir/port" --data-dir "$dir/data" --devices cpu:1GiB \
  --worker-binary "$build/tools/slim-train" --metrics-address 127.0.0.1:0 ${SLIMD_FLAGS:-} >"$dir/slimd.log" 2>&1 &
slimd_pid=$!
for _ in $(seq 1 600); do [ -f "$dir/port" ] && break; sleep 0.1; done
[ -f "$dir/port" ] || { cat "$dir/slimd.log"; exit 1; }

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs);" \
  "OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-unset} SLIMD_FLAGS=${SLIMD_FLAGS:-none}; before: $(uptime)" | tee "$out.txt"
"$build/bench/load/slim-load" --address "127.0.0.1:$(cat "$dir/port")" --server-pid "$slimd_pid" \
  --duration 60 --streams 200 --rate 50 --mix 1,8,1 --jobs-training 2 --warmup 10 --baseline 15 \
  --json-out "$out.json" "$@" | tee -a "$out.txt"
echo "after: $(uptime)" | tee -a "$out.txt"
