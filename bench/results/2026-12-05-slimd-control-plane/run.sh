#!/bin/bash
# slimd as a control plane (issue 17): PlanJob latency cold (first calibration) and warm, and
# slimd's resident memory, for two builds. Usage (from the repository root):
#   bench/results/2026-12-05-slimd-control-plane/run.sh OLD_BUILD NEW_BUILD [ROUNDS]
# Each round starts a fresh slimd per build (alternating, so machine noise hits both), with
# --devices cpu:1GiB, and times `slimctl plan` on a tiny-preset spec:
#   cold    the first plan: calibrates this model shape
#   warm    the same plan again
#   quota2  another quota: calibration cached, but a new plan (new build: a slim-train process)
# RSS (VmRSS of slimd) is read idle after start, and after the three plans.
set -euo pipefail
old=$1 new=$2 rounds=${3:-3}
repo=$(pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat > "$work/spec.yaml" <<SPEC
model: {preset: tiny}
data: {train: [$repo/README.md]}
training: {seq_len: 512, batch_size: 2, steps: 10}
memory: {quota: 4MiB}
SPEC
now() { date +%s.%N; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
run_one() {  # BUILD LABEL
  local b=$1 label=$2 d="$work/data-$2"
  rm -rf "$d"; mkdir -p "$d"
  "$b/server/slimd" --data-dir "$d" --devices cpu:1GiB --listen "unix:$d/sock" --metrics-address 127.0.0.1:0 \
      --port-file "$d/port" > "$d/slimd.log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do [ -s "$d/port" ] && break; sleep 0.1; done
  sleep 2
  local rss_idle; rss_idle=$(rss_kib $pid)
  local ctl=("$b/client/slimctl" --server "unix:$d/sock" --timeout 600)
  local t0 t1 t2 t3
  t0=$(now); "${ctl[@]}" plan "$work/spec.yaml" > /dev/null
  t1=$(now); "${ctl[@]}" plan "$work/spec.yaml" > /dev/null
  t2=$(now); "${ctl[@]}" plan "$work/spec.yaml" --quota 6MiB > /dev/null
  t3=$(now)
  local rss_after; rss_after=$(rss_kib $pid)
  kill $pid; wait $pid 2>/dev/null || true
  printf '%s cold_s=%.3f warm_s=%.3f quota2_s=%.3f rss_idle_mib=%.1f rss_after_plans_mib=%.1f\n' "$label" \
      "$(echo "$t1 - $t0" | bc)" "$(echo "$t2 - $t1" | bc)" "$(echo "$t3 - $t2" | bc)" \
      "$(echo "$rss_idle / 1024" | bc -l)" "$(echo "$rss_after / 1024" | bc -l)"
}
for r in $(seq "$rounds"); do
  run_one "$old" "round$r old"
  run_one "$new" "round$r new"
done
