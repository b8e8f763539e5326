#!/usr/bin/env bash
# The GPU check's rehearsal (issue 19): scripts/gpu-check.sh --device cpu with tiny sizes and the
# built binaries must run every phase and pass every check; then its report must catch what a
# GPU run could get wrong: a peak off the planner's prediction, a worker above its quota or not
# finished, a failed test, a missing measurement.
set -euo pipefail
build="$1"; src="$2"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*" >&2; cat "$dir/run/summary.jsonl" >&2 2>/dev/null || true; exit 1; }

"$src/scripts/gpu-check.sh" --device cpu --build-dir "$build" --out "$dir/run" > "$dir/run.log" 2>&1 \
  || { cat "$dir/run.log" >&2; fail "the rehearsal failed"; }
summary="$dir/run/summary.jsonl"
for p in environment identify cuda-tests benchmarks planner packing profile; do
  grep -q "\"phase\":\"$p\",\"status\":\"ok\"" "$summary" || fail "phase $p did not pass"
done
[ "$(grep -c '"check":"planner","ok":true' "$summary")" -eq 3 ] || fail "not three planner checks"
[ "$(grep -c '"check":"packing worker","ok":true' "$summary")" -ge 2 ] || fail "not two packed workers"
grep -q '"check":"profile","ok":true' "$summary" || fail "no profile"
grep -q '"check":"packing over-quota worker fails alone","ok":true' "$summary" || fail "over-quota worker"
tail -1 "$summary" | grep -q '"done":true,"ok":true' || fail "the last line does not say ok"

# The report must fail where the run went wrong. Each case edits a copy of the run's files.
report() { python3 "$src/scripts/gpu_check_report.py" --out "$1" --device cpu; }
expect_failure() {  # CASE CHECK: the report of $dir/CASE has a failing CHECK
  report "$dir/$1" > "$dir/$1.report" || fail "report crashed on case $1"
  grep -q "\"check\":\"$2\",\"ok\":false" "$dir/$1.report" || { cat "$dir/$1.report" >&2; fail "case $1: no failing $2 check"; }
}
cp -r "$dir/run" "$dir/peak-off"
python3 - "$dir/peak-off/plan.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
rows[0]["peak_bytes"] = int(rows[0]["predicted_peak_bytes"] * 1.08)
rows[0]["peak_error"] = 0.08
open(sys.argv[1], "w").write("".join(json.dumps(r) + "\n" for r in rows))
PY
expect_failure peak-off planner

cp -r "$dir/run" "$dir/unreadable"  # e.g. a ratio printed as inf
sed -i '1s/"peak_error":[^,]*/"peak_error":inf/' "$dir/unreadable/plan.jsonl"
expect_failure unreadable planner

cp -r "$dir/run" "$dir/over-quota"
events="$dir/over-quota/packing/worker0.events.jsonl"
python3 - "$events" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
quota = next(r["quota_bytes"] for r in rows if r.get("event") == "started")
for r in rows:
    if "peak_bytes" in r: r["peak_bytes"] = quota + 1
open(sys.argv[1], "w").write("".join(json.dumps(r) + "\n" for r in rows))
PY
expect_failure over-quota "packing worker"

cp -r "$dir/run" "$dir/unfinished"
grep -v '"event":"finished"' "$dir/run/packing/worker1.events.jsonl" > "$dir/unfinished/packing/worker1.events.jsonl"
expect_failure unfinished "packing worker"

cp -r "$dir/run" "$dir/over-ran"
echo 0 > "$dir/over-ran/packing/over.rc"
expect_failure over-ran "packing over-quota worker fails alone"

cp -r "$dir/run" "$dir/test-failed"
sed -i 's/"result": *"SKIPPED"/"result": "COMPLETED", "failures": [{"failure": "x"}]/' "$dir/test-failed/cuda-tests.json"
expect_failure test-failed cuda-tests

cp -r "$dir/run" "$dir/no-bench"
: > "$dir/no-bench/bench.jsonl"
expect_failure no-bench benchmarks
echo "gpu-check rehearsal and its report: ok"
