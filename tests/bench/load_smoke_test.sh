#!/usr/bin/env bash
# slim-load against a real slimd, briefly (5 s, 20 streams, 10 requests/s, 2 training jobs):
# every request succeeds, every stream receives events and ends only when the tool cancels it,
# the training speed ratio and slimd's RSS are reported, the JSON report is well formed, and the
# server is left without active jobs. Correctness only: no timing thresholds.
#   load_smoke_test.sh SLIM_LOAD SLIMD SLIM_TRAIN SLIMCTL
set -euo pipefail
load="$1"; slimd="$2"; train="$3"; ctl="$4"
dir=$(mktemp -d)
sock="unix:$dir/slimd.sock"
slimd_pid=""
cleanup() {
  [ -n "$slimd_pid" ] && kill -TERM "$slimd_pid" 2>/dev/null && wait "$slimd_pid" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; [ -f "$dir/slimd.log" ] && tail -30 "$dir/slimd.log" >&2; exit 1; }

"$slimd" --listen "$sock" --data-dir "$dir/data" --devices cpu:256MiB --worker-footprint 0 --worker-binary "$train" \
  --metrics-address off --cancel-grace 10 >"$dir/slimd.log" 2>&1 &
slimd_pid=$!
for _ in $(seq 1 600); do
  grep -q "slimd: listening on" "$dir/slimd.log" && break
  kill -0 "$slimd_pid" 2>/dev/null || fail "slimd exited"
  sleep 0.1
done
grep -q "slimd: listening on" "$dir/slimd.log" || fail "slimd did not start"

"$load" --address "$sock" --duration 5 --streams 20 --rate 10 --warmup 1 --baseline 3 --jobs-training 2 --quota 8MiB \
  --server-pid "$slimd_pid" --json-out "$dir/load.json" >"$dir/summary.txt" 2>"$dir/load.log" ||
  { cat "$dir/load.log" >&2; fail "slim-load exited with $?"; }
cat "$dir/summary.txt"
grep -q "^requests" "$dir/summary.txt" || fail "no summary on stdout"

python3 - "$dir/load.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))  # well formed, or this raises
problems = []
def check(ok, what):
    if not ok: problems.append(what)
req = r["requests"]
check(set(req) == {"CreateJob", "GetJob", "ListJobs"}, f"methods: {sorted(req)}")
total = sum(m["count"] for m in req.values())
check(total == r["requests_total"] and total >= 40, f"requests_total {r['requests_total']} vs {total}")
for name, m in req.items():
    check(m["count"] == m["ok"] and m["errors"] == {}, f"{name}: {m['ok']} of {m['count']} ok, errors {m['errors']}")
    check(m["count"] == 0 or m["latency_ms"]["max"] >= m["latency_ms"]["p99"] >= m["latency_ms"]["p50"] > 0,
          f"{name}: latency summary {m['latency_ms']}")
check(req["GetJob"]["count"] > 0, "no GetJob calls")
check(r["requests_failed"] == 0, f"requests_failed {r['requests_failed']}")
s = r["streams"]
check(s["count"] == 20 and len(s["per_stream"]) == 20, f"streams: {s['count']}")
check(s["streams_without_events"] == 0, f"{s['streams_without_events']} streams without events")
check(s["ended_before_cancel"] == 0, f"{s['ended_before_cancel']} streams ended before the tool cancelled them")
for one in s["per_stream"]:
    check(one["events"] >= 1 and one["messages"] == one["events"] + 1,
          f"stream on {one['job']}: {one['messages']} messages, {one['events']} events")
    check(one["status"] == "CANCELLED", f"stream on {one['job']} ended {one['status']}")
check(s["delivery_delay_ms"]["count"] == s["events_total"] > 0, "delivery delays: one per event")
t = r["training"]
check(len(t["jobs"]) == 2, f"training jobs: {t['jobs']}")
for job in t["jobs"]:
    for key in ("before_steps_per_s", "after_steps_per_s", "baseline_steps_per_s"):
        check(job[key] is not None and job[key] > 0, f"{key} of {job['id']}: {job[key]}")
    check(job["load_steps_per_s"] is not None and job["ratio"] is not None, f"load rate of {job}")
check(t["ratio"] is not None and t["ratio"] > 0, f"training ratio {t['ratio']}")
w = t["windows_s"]
check(w["before"][1] <= w["load"][0] and w["load"][1] <= w["after"][0], f"windows out of order: {w}")
rss = r["server_rss"]
check(rss["start_kib"] > 0 and rss["max_kib"] >= rss["max_in_load_kib"] > 0 and rss["end_kib"] > 0, f"rss {rss}")
check(len(rss["samples"]) >= 5, f"{len(rss['samples'])} RSS samples")
c = r["cleanup"]
check(c["created_jobs"] == req["CreateJob"]["ok"] and c["created_jobs_cancelled"] == c["created_jobs"],
      f"cleanup {c} vs {req['CreateJob']['ok']} created")
check(c["created_jobs_that_started"] == 0, f"{c['created_jobs_that_started']} queued jobs started")
if problems:
    print("FAIL:\n  " + "\n  ".join(problems)); sys.exit(1)
PY

# Nothing left running or queued (cancelled training jobs pass through CANCELLING).
for _ in $(seq 1 300); do
  active=$("$ctl" --server "$sock" list --output json | python3 -c '
import json, sys
print(sum(1 for j in json.load(sys.stdin).get("jobs", []) if j["state"] in ("JOB_STATE_QUEUED", "JOB_STATE_RUNNING", "JOB_STATE_CANCELLING")))')
  [ "$active" = 0 ] && break
  sleep 0.2
done
[ "$active" = 0 ] || fail "$active job(s) still active after slim-load"
echo "PASS"
