#!/usr/bin/env bash
# Observability end to end with the real tools:
#  1. slimd (two declared CPU devices) runs two jobs; a real Prometheus (Debian's `prometheus`)
#     on loopback scrapes its /metrics with the alert rules of deploy/prometheus/alerts.yml;
#  2. every dashboard query of deploy/queries.txt returns data; every alert rule is loaded and
#     evaluates healthily, and every series an alert expression reads exists;
#  3. the status page, loaded in headless Chromium, shows the running jobs; a screenshot is
#     written to $SLIM_ARTIFACTS (default: the test's working directory).
#   observability_test.sh SLIMCTL SLIMD SLIM_TRAIN SOURCE_DIR
set -euo pipefail
ctl="$1"; slimd="$2"; train="$3"; src=$(cd "$4" && pwd)
artifacts="${SLIM_ARTIFACTS:-$(pwd)}"
dir=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; tail -20 "$dir/slimd.log" >&2 || true; tail -20 "$dir/prometheus.log" >&2 || true; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

sock="unix:$dir/slimd.sock"
"$slimd" --listen "$sock" --data-dir "$dir/data" --devices cpu:512MiB,cpu:512MiB --worker-binary "$train" \
  --metrics-address 127.0.0.1:0 --max-retries 0 > "$dir/slimd.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 200); do grep -q "metrics on http" "$dir/slimd.log" && break; sleep 0.1; done
metrics=$(sed -n 's|.*metrics on http://\([0-9.:]*\)/metrics.*|\1|p' "$dir/slimd.log")
[ -n "$metrics" ] || fail "slimd did not report its metrics address"
ctl() { "$ctl" --server "$sock" "$@"; }

# Prometheus on loopback, scraping every second, with the project's alert rules.
prom_port=$(free_port)
cat > "$dir/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $src/deploy/prometheus/alerts.yml
scrape_configs:
  # One slimd scraped as two replicas of a fleet (instances a and b): store-wide series appear
  # twice, as they do in a real fleet, and the dashboard must not count them twice.
  - job_name: slimd
    static_configs:
      - targets: ["$metrics"]
        labels: {replica: a}
      - targets: ["$metrics"]
        labels: {replica: b}
    relabel_configs:
      - source_labels: [replica]
        target_label: instance
EOF
prometheus --config.file="$dir/prometheus.yml" --storage.tsdb.path="$dir/tsdb" \
  --web.listen-address="127.0.0.1:$prom_port" > "$dir/prometheus.log" 2>&1 &
pids+=($!)

# Two jobs that run for a while, and one RPC that fails (NOT_FOUND) for the error-rate panels.
ctl models import "$src/models/base-mini.safetensors" --name base > /dev/null
cat "$src"/docs/*.md > "$dir/docs.txt"
cat > "$dir/job.yaml" <<EOF
model: {preset: tiny}
data: {train: [docs.txt]}
training: {seq_len: 256, batch_size: 2, steps: 100000, optimizer: {lr: 1e-3}}
memory: {quota: 8MiB}
EOF
ctl submit "$dir/job.yaml" --name one > /dev/null
ctl submit "$dir/job.yaml" --name two --quota 12MiB > /dev/null
ctl get job-999999 > /dev/null 2>&1 || true
for _ in $(seq 1 300); do [ "$(ctl list --state running --output json | grep -c '"id": "job-')" -eq 2 ] && break; sleep 0.1; done
# A third job whose worker is killed (no retries here): FAILED, for the failure alert and the
# status page's error line.
doomed=$(ctl submit "$dir/job.yaml" --name doomed --quota 8MiB -o name)
for _ in $(seq 1 300); do [ -s "$dir/data/jobs/$doomed/worker.pid" ] && break; sleep 0.1; done
kill -KILL "$(cat "$dir/data/jobs/$doomed/worker.pid")"
for _ in $(seq 1 300); do ctl get "$doomed" | grep -q "state: *FAILED" && break; sleep 0.1; done
ctl get "$doomed" | grep -q "state: *FAILED" || fail "the killed worker's job did not fail: $(ctl get "$doomed")"

# Let Prometheus scrape for a while and evaluate the rules.
python3 - "$prom_port" "$src/deploy/queries.txt" "$doomed" <<'EOF'
import json, re, sys, time, urllib.parse, urllib.request
port, queries_file, doomed = sys.argv[1], sys.argv[2], sys.argv[3]
base = f"http://127.0.0.1:{port}/api/v1/"
def get(path, **params):
    url = base + path + ("?" + urllib.parse.urlencode(params) if params else "")
    return json.loads(urllib.request.urlopen(url, timeout=10).read())
# Wait until Prometheus is up and has scraped slimd at least 15 times.
deadline = time.time() + 120
while True:
    try:
        r = get("query", query='count_over_time(up{job="slimd"}[1m])')
        if r["data"]["result"] and float(r["data"]["result"][0]["value"][1]) >= 15:
            break
    except Exception:
        pass
    if time.time() > deadline:
        sys.exit("FAIL: Prometheus did not scrape slimd")
    time.sleep(1)

section, failures, checked = None, [], 0
for line in open(queries_file):
    line = line.strip()
    m = re.match(r"#\s*\[(\w+)\]", line)
    if m:
        section = m.group(1)
        continue
    if not line or line.startswith("#"):
        continue
    if section == "dashboard":
        r = get("query", query=line)
        checked += 1
        if r["status"] != "success" or not r["data"]["result"]:
            failures.append(f"no data: {line}")
    elif section == "alerts":
        # An alert condition holds only when something is wrong; what must hold now is that
        # every series it reads exists.
        for selector in re.findall(r"\b((?:slim_\w+|up)(?:\{[^}]*\})?)", line):
            r = get("query", query=selector)
            checked += 1
            if not r["data"]["result"]:
                failures.append(f"alert reads a missing series: {selector} (in {line})")
# Fleet-correct: each dashboard query over a store-wide gauge gives what one replica's series
# alone gives (the same slimd is scraped as instances a and b).
store_wide = re.compile(r"\b(slim_jobs|slim_queue_length)\b(\{[^}]*\})?")
def one_replica(query):
    return store_wide.sub(lambda m: m.group(1) + ("{" + m.group(2)[1:-1] + ',instance="a"}' if m.group(2) else '{instance="a"}'), query)
def values(query):
    return sorted((json.dumps(r["metric"], sort_keys=True), r["value"][1]) for r in get("query", query=query)["data"]["result"])
fleet_checked, section = 0, None
for line in open(queries_file):
    line = line.strip()
    m = re.match(r"#\s*\[(\w+)\]", line)
    if m:
        section = m.group(1)
    if section != "dashboard" or line.startswith("#") or not store_wide.search(line):
        continue
    both, alone = values(line), values(one_replica(line))
    fleet_checked += 1
    if both != alone:
        failures.append(f"counts a store-wide gauge once per replica: {line}: {both} vs one replica's {alone}")
if fleet_checked < 3:
    failures.append(f"only {fleet_checked} store-wide dashboard queries checked against one replica")
rules = get("rules")["data"]["groups"]
alerts = [rule for g in rules for rule in g["rules"] if rule["type"] == "alerting"]
if len(alerts) < 5:
    failures.append(f"only {len(alerts)} alert rules loaded")
for rule in alerts:
    if rule.get("health") != "ok":
        failures.append(f"alert {rule['name']}: health {rule.get('health')} {rule.get('lastError', '')}")
# The failed job has an alert of its own, naming it and the replica (instance) it ran on.
named = {(a["labels"].get("job_id"), a["labels"].get("instance")) for a in get("alerts")["data"]["alerts"]
         if a["labels"].get("alertname") == "SlimJobFailed" and a["state"] == "firing"}
if {(doomed, "a"), (doomed, "b")} - named:
    failures.append(f"SlimJobFailed does not name {doomed} on both scraped replicas: {sorted(named)}")
if failures:
    sys.exit("FAIL:\n  " + "\n  ".join(failures))
print(f"{checked} queries returned data; {fleet_checked} store-wide ones counted once across two replicas; {len(alerts)} alert rules healthy")
EOF

# The status page in headless Chromium: it shows the bars' legend and both running jobs; keep a
# screenshot.
page="http://$metrics/"
dom=$(timeout 120 chromium --headless --no-sandbox --disable-gpu --disable-dev-shm-usage --dump-dom "$page" 2>/dev/null)
echo "$dom" | grep -q "slimd status" || fail "status page did not load"
echo "$dom" | grep -q 'class="legend"' || fail "status page lacks the legend of its bars"
for job in job-000001 job-000002; do
  echo "$dom" | grep -q "$job" || fail "status page lacks $job"
done
[ "$(echo "$dom" | grep -c 'RUNNING')" -ge 2 ] || fail "status page does not show two running jobs"
echo "$dom" | grep -q "$doomed" && echo "$dom" | grep -q "FAILED" || fail "status page lacks the failed job"
mkdir -p "$artifacts"
timeout 120 chromium --headless --no-sandbox --disable-gpu --disable-dev-shm-usage --window-size=1200,700 \
  --screenshot="$artifacts/status-page.png" "$page" > /dev/null 2>&1
[ -s "$artifacts/status-page.png" ] || fail "no screenshot"
echo "screenshot: $artifacts/status-page.png"
echo PASS
