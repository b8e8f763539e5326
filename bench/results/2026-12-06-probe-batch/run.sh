#!/bin/bash
# The oversized plan of issue 18 (PlanJob of a tiny-preset spec at batch 50 and 4000 with a
# 4 GiB quota), against one slimd with one 2 GiB CPU device: the answer, its time, and slimd's
# own peak resident memory (VmHWM) before and after. The calibration runs in a slim-train
# process inside a device reservation, capped at it (docs/service.md, "Calibration"), with its
# probes at batch min(B, 8) (kCalibrationMaxProbeBatch, engine/memory_model.h).
# Usage (from the repository root): bench/results/2026-12-06-probe-batch/run.sh BUILD_DIR
set -euo pipefail
build=$1
repo=$(pwd)
work=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
"$build/server/slimd" --data-dir "$work/data" --devices cpu:2GiB --listen "unix:$work/sock" --metrics-address off \
  --port-file "$work/port" > "$work/slimd.log" 2>&1 &
pid=$!
for _ in $(seq 100); do [ -s "$work/port" ] && break; sleep 0.1; done
hwm() { awk '/^VmHWM/ {printf "%.1f", $2 / 1024}' "/proc/$pid/status"; }
echo "slimd VmHWM at start: $(hwm) MiB"
for batch in 50 4000; do
  cat > "$work/spec.yaml" <<SPEC
model: {preset: tiny}
data: {train: [$repo/README.md]}
training: {seq_len: 2048, batch_size: $batch, steps: 10}
memory: {quota: 4GiB}
SPEC
  t0=$(date +%s.%N)
  set +e
  answer=$("$build/client/slimctl" --server "unix:$work/sock" --timeout 600 plan "$work/spec.yaml" 2>&1)
  rc=$?
  set -e
  t1=$(date +%s.%N)
  printf 'batch %s: exit %s after %.1f s; slimd VmHWM %s MiB\n  %s\n' "$batch" "$rc" "$(echo "$t1 - $t0" | bc)" \
    "$(hwm)" "$(echo "$answer" | grep -v 'is dataset' | tr '\n' ' ')"
done
