#!/usr/bin/env bash
# End-to-end check of `slim-train plan`: a feasible quota prints the plan as JSON (exit 0), an
# infeasible one prints min_quota_bytes (exit 3) and that minimum plans, bad flags exit 2.
set -euo pipefail
bin="$1"
export SLIM_CACHE_DIR
SLIM_CACHE_DIR=$(mktemp -d)
trap 'rm -rf "$SLIM_CACHE_DIR"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
field() { sed -n "s/.*\"$1\":\([^,}]*\).*/\1/p" <<<"$2" | tr -d '"'; }

out=$("$bin" plan --preset tiny --seq-len 4096 --quota 64MiB --json)
echo "feasible: $out"
[ "$(field chunk_size "$out")" -ge 16 ] || fail "no chunk_size in: $out"
mode=$(field mode "$out"); [ "$mode" = subtract ] || [ "$mode" = boundaries ] || fail "mode '$mode'"
peak=$(field predicted_peak_bytes "$out")
[ "$peak" -le $((64 * 1024 * 1024)) ] || fail "predicted peak $peak above the quota"
[ -n "$(field est_step_seconds "$out")" ] || fail "no est_step_seconds"
[ -n "$(ls "$SLIM_CACHE_DIR"/calibration)" ] || fail "calibration was not cached"

set +e
out=$("$bin" plan --preset tiny --seq-len 4096 --quota 1000 --json); rc=$?
set -e
echo "infeasible (rc=$rc): $out"
[ "$rc" -eq 3 ] || fail "exit status $rc, want 3"
min=$(field min_quota_bytes "$out")
[ "$min" -gt 1000 ] || fail "min_quota_bytes '$min'"
out=$("$bin" plan --preset tiny --seq-len 4096 --quota "$min" --json) || fail "the minimum quota $min does not plan"
echo "at the minimum: $out"

set +e
"$bin" plan --preset tiny --seq-len 4096 --quota 2XB --json 2>err.txt; rc=$?
set -e
[ "$rc" -eq 2 ] || fail "bad unit: exit status $rc, want 2"
grep -q -- "--quota" err.txt || fail "error does not name --quota: $(cat err.txt)"
set +e
"$bin" plan --preset huge --seq-len 4096 --quota 1GiB 2>err.txt; rc=$?
set -e
[ "$rc" -eq 2 ] || fail "bad preset: exit status $rc, want 2"
grep -q "preset" err.txt || fail "error does not name the preset: $(cat err.txt)"
echo PASS
