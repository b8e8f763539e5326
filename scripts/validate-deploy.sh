#!/usr/bin/env bash
# Validates the deployment files offline (no Docker, no cluster, no network after the first run):
#   - deploy/prometheus: `promtool check config` and `check rules`, and unit tests of every
#     alert (`promtool test rules`, with series made up below);
#   - deploy/queries.txt: every line parses as PromQL (promtool), and it matches the dashboard's
#     and the alerts' expressions in both directions;
#   - deploy/grafana/slim-dashboard.json: JSON syntax (python3 -m json.tool), datasource and
#     template variables, unique panel ids, non-overlapping layout;
#   - deploy/kubernetes (one slimd) and deploy/kubernetes-fleet (replicas, shared volume,
#     optional PostgreSQL in postgres/): every object of every *.yaml file validated against the
#     Kubernetes 1.27 JSON schemas of the npm package kubernetes-models (the ServiceMonitor
#     against the Prometheus Operator CRD schema of @kubernetes-models/prometheus-operator),
#     unknown fields refused as `kubectl --validate=strict` would, plus cross-references
#     (selectors, ports, probes, ConfigMap keys and slimd flags, command-line flags, grace
#     period); for the fleet: replicas >= 2, one ReadWriteMany claim for the data directory,
#     --database-url from a Secret, --replica-id from the pod name, the same security context,
#     probes and grace period as deploy/kubernetes, and the in-cluster PostgreSQL's Service
#     against the example connection strings (postgres.yaml's comments, docs/operations.md);
#   - deploy/compose: YAML syntax (js-yaml) and references (build context, mounted files,
#     ports, Grafana provisioning, Prometheus targets);
#   - Dockerfile: exec-form ENTRYPOINT/HEALTHCHECK, flags slimd knows, copied files exist,
#     runtime packages exist in the APT lists (when this machine has them).
# Needs promtool (Debian package prometheus), node and npm, python3. The npm packages are
# installed once into ${SLIM_NPM_CACHE:-build/npm}; later runs reuse them (a few seconds).
# Exits non-zero, naming every failure, if anything is wrong. Works from any directory.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"

npm_dir="${SLIM_NPM_CACHE:-build/npm}"
case "$npm_dir" in /*) ;; *) npm_dir="$root/$npm_dir" ;; esac
# Exact versions: kubernetes-models 5.x needs Node.js 22; 4.5.1 runs on Debian's and this
# machine's Node.js 20 and carries the Kubernetes 1.27 schemas (gRPC probes included).
npm_packages='{"kubernetes-models":"4.5.1","@kubernetes-models/prometheus-operator":"4.4.4","js-yaml":"4.1.0"}'

die() { printf 'validate-deploy: %s\n' "$*" >&2; exit 1; }
for tool in promtool node python3; do
  command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found (promtool: Debian package prometheus; node: Node.js; see scripts/install-deps.sh)"
done

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
failures=()
ok() { printf 'ok    %s\n' "$*"; }
bad() { printf 'FAIL  %s\n' "$*"; failures+=("$1"); }

# Runs a command quietly; prints its output only when it fails.
check() {
  local name="$1"; shift
  if "$@" >"$tmp/out" 2>&1; then ok "$name"; else bad "$name"; sed 's/^/      /' "$tmp/out"; fi
}

# ---- npm packages (once) -------------------------------------------------------------------------
want="{\"name\":\"slim-validate-deploy\",\"private\":true,\"dependencies\":$npm_packages}"
if [ ! -d "$npm_dir/node_modules" ] || [ "$(cat "$npm_dir/package.json" 2>/dev/null)" != "$want" ]; then
  command -v npm >/dev/null 2>&1 || die "'npm' not found: needed once to install $npm_packages"
  echo "validate-deploy: installing $npm_packages into $npm_dir"
  mkdir -p "$npm_dir"
  printf '%s' "$want" >"$npm_dir/package.json"
  rm -rf "$npm_dir/node_modules" "$npm_dir/package-lock.json"
  if ! npm install --prefix "$npm_dir" --no-audit --no-fund --loglevel=error >"$tmp/npm.log" 2>&1; then
    cat "$tmp/npm.log" >&2
    rm -f "$npm_dir/package.json"  # so that the next run tries again
    die "npm install failed"
  fi
fi

# ---- Prometheus -----------------------------------------------------------------------------------
check "promtool check config deploy/prometheus/prometheus.yml" promtool check config deploy/prometheus/prometheus.yml
check "promtool check rules deploy/prometheus/alerts.yml" promtool check rules deploy/prometheus/alerts.yml

# Unit tests of the alerts: each fires for the series that should fire it and only for them.
cat >"$tmp/alerts_test.yml" <<EOF
rule_files:
  - $root/deploy/prometheus/alerts.yml
evaluation_interval: 1m
tests:
  - name: SlimdDown fires after 2 minutes without a scrape, for the down target only
    interval: 1m
    input_series:
      - series: 'up{job="slimd", instance="a:9464"}'
        values: '1 1 0 0 0 0 0 0'
      - series: 'up{job="slimd", instance="b:9464"}'
        values: '1x7'
    promql_expr_test:
      - expr: ALERTS{alertname="SlimdDown"}
        eval_time: 1m
        exp_samples: []
      - expr: ALERTS{alertname="SlimdDown"}
        eval_time: 3m
        exp_samples:
          - labels: 'ALERTS{alertname="SlimdDown", alertstate="pending", job="slimd", instance="a:9464", severity="critical"}'
            value: 1
      - expr: ALERTS{alertname="SlimdDown"}
        eval_time: 5m
        exp_samples:
          - labels: 'ALERTS{alertname="SlimdDown", alertstate="firing", job="slimd", instance="a:9464", severity="critical"}'
            value: 1
  - name: SlimDeviceOvercommitted fires for the device whose quotas exceed its capacity
    interval: 1m
    input_series:
      - series: 'slim_device_committed_bytes{job="slimd", instance="a:9464", device="cpu:0"}'
        values: '100x10'
      - series: 'slim_device_capacity_bytes{job="slimd", instance="a:9464", device="cpu:0"}'
        values: '200x10'
      - series: 'slim_device_committed_bytes{job="slimd", instance="a:9464", device="cpu:1"}'
        values: '100 300x9'
      - series: 'slim_device_capacity_bytes{job="slimd", instance="a:9464", device="cpu:1"}'
        values: '200x10'
    promql_expr_test:
      - expr: ALERTS{alertname="SlimDeviceOvercommitted", alertstate="firing"}
        eval_time: 4m
        exp_samples: []
      - expr: ALERTS{alertname="SlimDeviceOvercommitted", alertstate="firing"}
        eval_time: 7m
        exp_samples:
          - labels: 'ALERTS{alertname="SlimDeviceOvercommitted", alertstate="firing", job="slimd", instance="a:9464", device="cpu:1", severity="critical"}'
            value: 1
  - name: SlimJobOverQuota fires for the job whose observed peak exceeds its quota
    interval: 1m
    input_series:
      - series: 'slim_job_observed_peak_bytes{job="slimd", instance="a:9464", job_id="job-000001", device="cpu:0"}'
        values: '50 150x5'
      - series: 'slim_job_quota_bytes{job="slimd", instance="a:9464", job_id="job-000001", device="cpu:0"}'
        values: '100x6'
      - series: 'slim_job_observed_peak_bytes{job="slimd", instance="a:9464", job_id="job-000002", device="cpu:0"}'
        values: '50x6'
      - series: 'slim_job_quota_bytes{job="slimd", instance="a:9464", job_id="job-000002", device="cpu:0"}'
        values: '100x6'
    promql_expr_test:
      - expr: ALERTS{alertname="SlimJobOverQuota", alertstate="firing"}
        eval_time: 3m
        exp_samples:
          - labels: 'ALERTS{alertname="SlimJobOverQuota", alertstate="firing", job="slimd", instance="a:9464", job_id="job-000001", device="cpu:0", severity="warning"}'
            value: 1
  - name: SlimJobFailed fires once per failed job, naming it and its replica, for 15 minutes
    interval: 1m
    input_series:
      # job-000003 failed on replica a at 5 minutes (the series appears then, valued at its failure time)
      - series: 'slim_job_failed_time_seconds{job="slimd", instance="a:9464", job_id="job-000003", device="cpu:0", code="RESOURCE_EXHAUSTED"}'
        values: '_x4 300x60'
      # job-000009 failed on replica b at 8 minutes
      - series: 'slim_job_failed_time_seconds{job="slimd", instance="b:9464", job_id="job-000009", device="cpu:0", code="INVALID_ARGUMENT"}'
        values: '_x7 480x60'
    promql_expr_test:
      - expr: ALERTS{alertname="SlimJobFailed"}
        eval_time: 3m
        exp_samples: []
      - expr: ALERTS{alertname="SlimJobFailed"}
        eval_time: 6m
        exp_samples:
          - labels: 'ALERTS{alertname="SlimJobFailed", alertstate="firing", job="slimd", instance="a:9464", job_id="job-000003", device="cpu:0", code="RESOURCE_EXHAUSTED", severity="warning"}'
            value: 1
      - expr: ALERTS{alertname="SlimJobFailed"}
        eval_time: 10m
        exp_samples:
          - labels: 'ALERTS{alertname="SlimJobFailed", alertstate="firing", job="slimd", instance="a:9464", job_id="job-000003", device="cpu:0", code="RESOURCE_EXHAUSTED", severity="warning"}'
            value: 1
          - labels: 'ALERTS{alertname="SlimJobFailed", alertstate="firing", job="slimd", instance="b:9464", job_id="job-000009", device="cpu:0", code="INVALID_ARGUMENT", severity="warning"}'
            value: 1
      - expr: ALERTS{alertname="SlimJobFailed"}
        eval_time: 21m
        exp_samples:
          - labels: 'ALERTS{alertname="SlimJobFailed", alertstate="firing", job="slimd", instance="b:9464", job_id="job-000009", device="cpu:0", code="INVALID_ARGUMENT", severity="warning"}'
            value: 1
      - expr: ALERTS{alertname="SlimJobFailed"}
        eval_time: 30m
        exp_samples: []
    alert_rule_test:
      - alertname: SlimJobFailed
        eval_time: 6m
        exp_alerts:
          - exp_labels: {job: slimd, instance: "a:9464", job_id: job-000003, device: "cpu:0", code: RESOURCE_EXHAUSTED, severity: warning}
            exp_annotations:
              summary: "Job job-000003 failed (RESOURCE_EXHAUSTED) on cpu:0 of a:9464"
              description: "Job job-000003 ended FAILED with RESOURCE_EXHAUSTED on cpu:0 of replica a:9464. \`slimctl get job-000003\` shows the error and \`slimctl logs job-000003\` the worker's log: bad data (INVALID_ARGUMENT), a quota too small for the model (RESOURCE_EXHAUSTED), a diverged run (lower the learning rate), or a worker that kept crashing after its retries."
  - name: SlimQueueWaitHigh fires when the 90th percentile of queue waits exceeds 10 minutes
    interval: 1m
    input_series:
      # instance a: a job placed every minute after ~1000 s in the queue
      - series: 'slim_queue_wait_seconds_bucket{job="slimd", instance="a:9464", le="0.1"}'
        values: '0x30'
      - series: 'slim_queue_wait_seconds_bucket{job="slimd", instance="a:9464", le="409.6"}'
        values: '0x30'
      - series: 'slim_queue_wait_seconds_bucket{job="slimd", instance="a:9464", le="819.2"}'
        values: '0x30'
      - series: 'slim_queue_wait_seconds_bucket{job="slimd", instance="a:9464", le="1638.4"}'
        values: '0+1x30'
      - series: 'slim_queue_wait_seconds_bucket{job="slimd", instance="a:9464", le="+Inf"}'
        values: '0+1x30'
      # instance b: every job placed at once
      - series: 'slim_queue_wait_seconds_bucket{job="slimd", instance="b:9464", le="0.1"}'
        values: '0+1x30'
      - series: 'slim_queue_wait_seconds_bucket{job="slimd", instance="b:9464", le="409.6"}'
        values: '0+1x30'
      - series: 'slim_queue_wait_seconds_bucket{job="slimd", instance="b:9464", le="819.2"}'
        values: '0+1x30'
      - series: 'slim_queue_wait_seconds_bucket{job="slimd", instance="b:9464", le="1638.4"}'
        values: '0+1x30'
      - series: 'slim_queue_wait_seconds_bucket{job="slimd", instance="b:9464", le="+Inf"}'
        values: '0+1x30'
    promql_expr_test:
      - expr: ALERTS{alertname="SlimQueueWaitHigh", alertstate="firing"}
        eval_time: 20m
        exp_samples:
          - labels: 'ALERTS{alertname="SlimQueueWaitHigh", alertstate="firing", job="slimd", instance="a:9464", severity="warning"}'
            value: 1
EOF
check "promtool test rules: alert unit tests" promtool test rules "$tmp/alerts_test.yml"

# ---- Grafana dashboard syntax ---------------------------------------------------------------------
check "python3 -m json.tool deploy/grafana/slim-dashboard.json" python3 -m json.tool deploy/grafana/slim-dashboard.json

# ---- structure and cross-references (node) ----------------------------------------------------------
# Writes $tmp/queries_rules.json (every queries.txt line as a recording rule, for promtool) and
# $tmp/runtime_packages (the Dockerfile's runtime apt packages).
cat >"$tmp/check.js" <<'EOF'
"use strict";
const fs = require("fs");
const path = require("path");
const { createRequire } = require("module");
const [root, npmDir, tmp] = process.argv.slice(2);
const req = createRequire(path.join(npmDir, "package.json"));
const yaml = req("js-yaml");

let failed = 0;
function result(name, errors) {
  if (errors.length === 0) { console.log(`ok    ${name}`); return; }
  failed++;
  console.log(`FAIL  ${name}`);
  for (const e of errors) console.log(`      ${e}`);
}
function guard(name, fn) {
  const errors = [];
  try { fn(errors); } catch (e) { errors.push(e.message.split("\n").join("\n      ")); }
  result(name, errors);
}
const read = (rel) => fs.readFileSync(path.join(root, rel), "utf8");
const norm = (s) => s.replace(/\s+/g, " ").trim();
const portOf = (addr) => Number(String(addr).split(":").pop());
const subset = (a, b) => Object.entries(a || {}).every(([k, v]) => (b || {})[k] === v);

// slimd's flags, from the --help text in server/main.cc.
const usage = read("server/main.cc").split("kUsage[] = R\"(")[1].split(")\";")[0];
const slimdFlags = new Set([...usage.matchAll(/^ {2}--([a-z][a-z-]*)\s/gm)].map((m) => m[1]));

// ---- queries.txt against the dashboard and the alerts
const sections = {};
guard("deploy/queries.txt: sections", (errors) => {
  let section = null;
  read("deploy/queries.txt").split("\n").forEach((line, i) => {
    const header = line.match(/^#\s*\[(\w+)\]\s*$/);
    if (header) { section = header[1]; sections[section] = sections[section] || []; return; }
    if (line.trim() === "" || line.trim().startsWith("#")) return;
    if (section === null) errors.push(`line ${i + 1}: a query before the first "# [section]" line`);
    else sections[section].push({ expr: norm(line), line: i + 1 });
  });
  for (const s of Object.keys(sections)) if (!["dashboard", "alerts"].includes(s)) errors.push(`unknown section [${s}]`);
  // For promtool: every query as a recording rule, so that each one is parsed.
  const rules = Object.values(sections).flat().map((q, i) => ({ record: `slim_validate_query_${i + 1}`, expr: q.expr }));
  fs.writeFileSync(path.join(tmp, "queries_rules.json"), JSON.stringify({ groups: [{ name: "queries", rules }] }));
});
let dashboard = null;
try { dashboard = JSON.parse(read("deploy/grafana/slim-dashboard.json")); } catch (e) { /* reported by json.tool */ }
const needDashboard = () => { if (!dashboard) throw new Error("skipped: the dashboard is not valid JSON"); };
const allPanels = [];
((dashboard || {}).panels || []).forEach((p) => { allPanels.push(p); (p.panels || []).forEach((q) => allPanels.push(q)); });
const variables = new Map((((dashboard || {}).templating || {}).list || []).map((v) => [v.name, v]));
const substitute = (e) => e.replace(/\$device\b/g, ".*").replace(/\$__rate_interval\b/g, "5m");
const alertsDoc = yaml.load(read("deploy/prometheus/alerts.yml"));
const alertRules = [];
for (const g of alertsDoc.groups || []) for (const r of g.rules || []) if (r.alert) alertRules.push(r);

guard("deploy/queries.txt matches the dashboard and the alerts", (errors) => {
  needDashboard();
  const dash = new Set((sections.dashboard || []).map((q) => q.expr));
  const alerts = new Set((sections.alerts || []).map((q) => q.expr));
  const used = { dashboard: new Set(), alerts: new Set() };
  for (const p of allPanels) for (const t of p.targets || []) {
    const e = norm(substitute(t.expr || ""));
    if (/\$/.test(e)) errors.push(`panel "${p.title}": ${t.refId}: a variable other than $device/$__rate_interval: ${e}`);
    else if (!dash.has(e)) errors.push(`panel "${p.title}" ${t.refId}: not in [dashboard] of deploy/queries.txt: ${e}`);
    used.dashboard.add(e);
  }
  for (const r of alertRules) {
    const e = norm(String(r.expr));
    if (!alerts.has(e)) errors.push(`alert ${r.alert}: not in [alerts] of deploy/queries.txt: ${e}`);
    used.alerts.add(e);
  }
  for (const s of ["dashboard", "alerts"]) {
    const seen = new Set();
    for (const q of sections[s] || []) {
      if (seen.has(q.expr)) errors.push(`deploy/queries.txt:${q.line}: listed twice`);
      seen.add(q.expr);
      if (!used[s].has(q.expr)) errors.push(`deploy/queries.txt:${q.line}: used by no ${s === "alerts" ? "alert" : "panel"}: ${q.expr}`);
    }
  }
});

guard("deploy/prometheus/alerts.yml: the five alerts, each with for, severity and annotations", (errors) => {
  const names = alertRules.map((r) => r.alert);
  for (const n of ["SlimDeviceOvercommitted", "SlimJobOverQuota", "SlimJobFailed", "SlimQueueWaitHigh", "SlimdDown"]) {
    if (!names.includes(n)) errors.push(`missing alert ${n}`);
  }
  for (const r of alertRules) {
    if (r.for === undefined) errors.push(`${r.alert}: no for:`);
    if (!["critical", "warning", "info"].includes((r.labels || {}).severity)) errors.push(`${r.alert}: severity label must be critical, warning or info`);
    for (const a of ["summary", "description"]) if (!(r.annotations || {})[a]) errors.push(`${r.alert}: no ${a} annotation`);
  }
});

guard("deploy/grafana/slim-dashboard.json: structure", (errors) => {
  needDashboard();
  for (const k of ["uid", "title"]) if (!dashboard[k]) errors.push(`no ${k}`);
  if (typeof dashboard.schemaVersion !== "number" || dashboard.schemaVersion < 36) errors.push("schemaVersion must be a number >= 36");
  const ds = variables.get("DS_PROMETHEUS");
  if (!ds || ds.type !== "datasource" || ds.query !== "prometheus") errors.push('no datasource variable DS_PROMETHEUS of type "prometheus"');
  const dev = variables.get("device");
  if (!dev || !String(JSON.stringify(dev.query)).includes("slim_device_capacity_bytes")) errors.push("no device variable over slim_device_capacity_bytes");
  for (const v of variables.values()) {
    if (v.type === "query" && (!v.datasource || v.datasource.uid !== "${DS_PROMETHEUS}")) errors.push(`variable ${v.name}: datasource uid must be \${DS_PROMETHEUS}`);
  }
  const ids = new Set();
  const boxes = [];
  for (const p of allPanels) {
    if (typeof p.id !== "number" || ids.has(p.id)) errors.push(`panel "${p.title}": missing or duplicate id ${p.id}`);
    ids.add(p.id);
    const g = p.gridPos || {};
    if (![g.x, g.y, g.w, g.h].every(Number.isInteger) || g.x + g.w > 24) errors.push(`panel "${p.title}": bad gridPos`);
    for (const b of boxes) {
      if (g.x < b.x + b.w && b.x < g.x + g.w && g.y < b.y + b.h && b.y < g.y + g.h) errors.push(`panel "${p.title}" overlaps "${b.title}"`);
    }
    boxes.push({ ...g, title: p.title });
    if (p.type === "row") continue;
    if (!p.targets || p.targets.length === 0) errors.push(`panel "${p.title}": no targets`);
    if (p.repeat && !variables.has(p.repeat)) errors.push(`panel "${p.title}": repeats over unknown variable ${p.repeat}`);
    for (const t of [p, ...(p.targets || [])]) {
      if (!t.datasource || t.datasource.uid !== "${DS_PROMETHEUS}") errors.push(`panel "${p.title}" ${t.refId || ""}: datasource uid must be \${DS_PROMETHEUS}`);
    }
  }
  // Fleet-correct: store-wide gauges (every replica reports the same count) are never summed
  // across replicas, and per-device series name their replica (every host has a cpu:0).
  for (const p of allPanels) {
    for (const t of p.targets || []) {
      const e = String(t.expr || "");
      if (/\bsum\b[^(]*\(\s*(slim_jobs|slim_queue_length)\b/.test(e)) errors.push(`panel "${p.title}": ${e} sums a store-wide gauge over replicas; use max`);
      if (/^slim_device_\w+\{/.test(e) && !String(t.legendFormat || "").includes("{{instance}}")) errors.push(`panel "${p.title}": ${e}: its legend must name {{instance}}`);
    }
  }
  const titles = allPanels.map((p) => p.title).join(" | ");
  for (const want of ["Quotas packed", "Observed vs predicted", "Progress", "loss", "Tokens per second", "Queue length",
                      "Queue wait", "Requests by method", "Error", "Jobs by state", "Step duration"]) {
    if (!titles.toLowerCase().includes(want.toLowerCase())) errors.push(`no panel titled like "${want}"`);
  }
});

// ---- Kubernetes
function track(value, where, seen) {
  if (value === null || typeof value !== "object") return value;
  if (Array.isArray(value)) return value.map((v, i) => track(v, `${where}/${i}`, seen));
  const copy = Object.fromEntries(Object.entries(value).map(([k, v]) => [k, track(v, `${where}/${k}`, seen)]));
  return new Proxy(copy, { get(t, k, r) { if (typeof k === "string") seen.add(`${where}/${k}`); return Reflect.get(t, k, r); } });
}
function unread(value, where, seen, out) {
  if (value === null || typeof value !== "object") return;
  if (Array.isArray(value)) { value.forEach((v, i) => unread(v, `${where}/${i}`, seen, out)); return; }
  for (const [k, v] of Object.entries(value)) {
    const p = `${where}/${k}`;
    if (!seen.has(p)) out.push(p); else unread(v, p, seen, out);
  }
}
// The model class for an object: core groups from kubernetes-models, the Prometheus Operator's
// from @kubernetes-models/prometheus-operator.
function modelClass(doc) {
  const modules = doc.apiVersion === "monitoring.coreos.com/v1"
    ? ["@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1"] : [`kubernetes-models/${doc.apiVersion}`];
  for (const m of modules) {
    try { const cls = req(m)[doc.kind]; if (cls) return cls; } catch (e) { /* next */ }
  }
  return null;
}
// Schema validation; unknown fields are the ones the compiled schema validator never read.
function validateObject(doc) {
  const Cls = modelClass(doc);
  if (!Cls) return [`no schema for ${doc.apiVersion} ${doc.kind}`];
  const plain = JSON.parse(JSON.stringify(new Cls(doc)));
  const seen = new Set();
  const errors = [];
  try { Cls.prototype.validate.call(track(plain, "", seen)); } catch (e) { errors.push(e.message); }
  const unknown = [];
  unread(plain, "", seen, unknown);
  for (const u of unknown) errors.push(`unknown field ${u}`);
  return errors;
}
// Every object of a manifest directory and its subdirectories (*.yaml, *.yml), each validated
// against its schema. Returns [{doc, file}] in file order.
function loadManifests(dir) {
  const files = [];
  const walk = (rel) => {
    for (const e of fs.readdirSync(path.join(root, rel), { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
      if (e.isDirectory()) walk(`${rel}/${e.name}`);
      else if (/\.ya?ml$/.test(e.name)) files.push(`${rel}/${e.name}`);
    }
  };
  const objects = [];
  guard(`${dir}: manifest files`, (errors) => {
    walk(dir);
    if (files.length === 0) errors.push("no *.yaml files");
  });
  for (const file of files) {
    guard(`${file}: schema`, (errors) => {
      const docs = yaml.loadAll(read(file)).filter((d) => d !== null);
      if (docs.length === 0) errors.push("no objects");
      for (const d of docs) {
        const id = `${d.kind}/${(d.metadata || {}).name}`;
        if ((d.metadata || {}).namespace) errors.push(`${id}: has a namespace (the manifests are namespace-less)`);
        for (const e of validateObject(d)) errors.push(`${id}: ${e}`);
        objects.push({ doc: d, file });
      }
    });
  }
  return objects;
}
const ofKind = (objects, kind) => objects.filter((o) => o.doc.kind === kind).map((o) => o.doc);
// slimd's flags on a container's command line: {name: value} for `--name value` and
// `--name=value` (the image's ENTRYPOINT is replaced by `command`, checked below).
function cmdFlags(c) {
  const argv = [...(c.command || []).slice(1), ...(c.args || [])].map(String);
  const flags = {};
  for (let i = 0; i < argv.length; i++) {
    const m = argv[i].match(/^--([a-z][a-z-]*)(?:=(.*))?$/s);
    if (!m) continue;
    if (m[2] !== undefined) flags[m[1]] = m[2];
    else if (i + 1 < argv.length && !argv[i + 1].startsWith("--")) flags[m[1]] = argv[++i];
    else flags[m[1]] = true;
  }
  return flags;
}
// Canonical JSON (sorted keys), to compare pieces of two manifests.
const canon = (v) => JSON.stringify(v, (k, x) => (x && typeof x === "object" && !Array.isArray(x)
  ? Object.fromEntries(Object.keys(x).sort().map((key) => [key, x[key]])) : x));

// The checks shared by one slimd and a fleet: the objects around the slimd StatefulSet, and its
// configuration file. Returns what the fleet checks need, or null when the basics are missing.
function checkSlimd(sts, svc, cm, sm, errors) {
  const pod = sts.spec.template.spec;
  const labels = sts.spec.template.metadata.labels;
  if (sts.spec.serviceName !== svc.metadata.name) errors.push(`StatefulSet: serviceName ${sts.spec.serviceName} is not the Service ${svc.metadata.name}`);
  if (!subset(sts.spec.selector.matchLabels, labels)) errors.push("StatefulSet: selector does not match its pod labels");
  if (!subset(svc.spec.selector, labels)) errors.push("Service: selector does not match the pod labels");
  if (!subset(sm.spec.selector.matchLabels, svc.metadata.labels)) errors.push("ServiceMonitor: selector does not match the Service's labels");
  const c = pod.containers.find((x) => x.name === "slimd");
  if (!c) { errors.push("StatefulSet: no container named slimd"); return null; }
  const ports = new Map((c.ports || []).map((p) => [p.name, p.containerPort]));
  for (const p of svc.spec.ports) {
    if (typeof p.targetPort === "string" && !ports.has(p.targetPort)) errors.push(`Service port ${p.name}: no container port named ${p.targetPort}`);
  }
  for (const e of sm.spec.endpoints) {
    if (!svc.spec.ports.some((p) => p.name === e.port)) errors.push(`ServiceMonitor: no Service port named ${e.port}`);
  }
  if (svc.metadata.name !== "slimd") errors.push('Service must be named slimd: it is the job label (up{job="slimd"}) through the ServiceMonitor');
  for (const probe of ["startupProbe", "readinessProbe", "livenessProbe"]) {
    const g = (c[probe] || {}).grpc;
    if (!g || g.port !== ports.get("grpc")) errors.push(`${probe}: must be a grpc probe on the grpc port ${ports.get("grpc")}`);
  }
  const gpus = Number(((c.resources || {}).limits || {})["nvidia.com/gpu"]);
  if (!(gpus >= 1)) errors.push("no nvidia.com/gpu limit");
  const gpuRequest = ((c.resources || {}).requests || {})["nvidia.com/gpu"];
  if (gpuRequest !== undefined && Number(gpuRequest) !== gpus) errors.push(`nvidia.com/gpu: request ${gpuRequest} differs from the limit ${gpus} (extended resources need them equal)`);
  const psc = pod.securityContext || {}, csc = c.securityContext || {};
  if (!(psc.runAsNonRoot || csc.runAsNonRoot) || !(psc.runAsUser || csc.runAsUser)) errors.push("securityContext: runAsNonRoot and a non-zero runAsUser required");
  // slimd's configuration: the config file from the ConfigMap, plus the command line's flags.
  if ((c.command || [])[0] !== "/usr/local/bin/slimd") errors.push("command must be /usr/local/bin/slimd: the image's ENTRYPOINT flags would win over the config file");
  const vol = (pod.volumes || []).find((v) => v.configMap && v.configMap.name === cm.metadata.name);
  if (!vol) { errors.push(`no volume of ConfigMap ${cm.metadata.name}`); return null; }
  const mount = (c.volumeMounts || []).find((m) => m.name === vol.name);
  const flags = cmdFlags(c);
  const configPath = flags.config;
  if (!mount || typeof configPath !== "string" || !configPath.startsWith(mount.mountPath + "/")) { errors.push("slimd's --config is not in the ConfigMap's mount"); return null; }
  const key = configPath.slice(mount.mountPath.length + 1);
  if (!(key in (cm.data || {}))) { errors.push(`ConfigMap has no key ${key}`); return null; }
  const config = yaml.load(cm.data[key]);
  for (const k of Object.keys(config)) if (!slimdFlags.has(k.replace(/_/g, "-"))) errors.push(`${key}: ${k} is not a slimd flag (server/main.cc)`);
  for (const f of Object.keys(flags)) if (!slimdFlags.has(f)) errors.push(`command line: --${f} is not a slimd flag (server/main.cc)`);
  // A key that is also on the command line is silently overridden there: one place per flag.
  for (const k of Object.keys(config)) {
    const f = k.replace(/_/g, "-");
    if (f !== "config" && f in flags) errors.push(`${key}: ${k} is also given on the command line (--${f}), which wins: keep it in one place`);
  }
  const effective = (name, dflt) => (name in flags ? flags[name] : name.replace(/-/g, "_") in config ? config[name.replace(/-/g, "_")] : dflt);
  for (const k of ["data_dir", "listen", "metrics_address", "devices"]) if (effective(k.replace(/_/g, "-")) === undefined) errors.push(`${key}: no ${k}`);
  const listen = effective("listen"), metrics = effective("metrics-address");
  if (portOf(listen) !== ports.get("grpc")) errors.push(`${key}: listen ${listen} is not the grpc container port`);
  if (portOf(metrics) !== ports.get("metrics")) errors.push(`${key}: metrics_address ${metrics} is not the metrics container port`);
  if (!String(listen).startsWith("0.0.0.0:") || !String(metrics).startsWith("0.0.0.0:")) errors.push(`${key}: listen on 0.0.0.0 so that probes and the Service reach slimd`);
  const devices = [].concat(effective("devices", [])).join(",").split(",").filter((d) => d);
  for (const d of devices) {
    const m = d.match(/^cuda:(\d+)/);
    if (m && !(Number(m[1]) < gpus)) errors.push(`${key}: device ${d}, but the pod has ${gpus || 0} nvidia.com/gpu (cuda:0..cuda:${gpus - 1} inside the container)`);
  }
  const grace = Number(effective("cancel-grace", 30));
  if (!(pod.terminationGracePeriodSeconds >= grace + 30)) errors.push(`terminationGracePeriodSeconds must exceed cancel_grace (${grace} s) by 30 s or more`);
  const dataDir = effective("data-dir");
  const dataMount = (c.volumeMounts || []).find((m) => m.mountPath === dataDir);
  return { pod, labels, c, ports, flags, config, key, dataDir, dataMount, gpus };
}

// ---- Kubernetes: one slimd (deploy/kubernetes)
const single = loadManifests("deploy/kubernetes");
let singleSts = null;
guard("deploy/kubernetes: references between objects", (errors) => {
  const one = (kind) => { const l = ofKind(single, kind); if (l.length !== 1) throw new Error(`expected one ${kind}, found ${l.length}`); return l[0]; };
  const sts = one("StatefulSet"), svc = one("Service"), cm = one("ConfigMap"), sm = one("ServiceMonitor");
  singleSts = sts;
  if (sts.spec.replicas !== 1) errors.push("StatefulSet: replicas must be 1 (one slimd per data directory)");
  const s = checkSlimd(sts, svc, cm, sm, errors);
  if (!s) return;
  const claims = (sts.spec.volumeClaimTemplates || []).map((v) => v.metadata.name);
  if (!s.dataMount || !claims.includes(s.dataMount.name)) errors.push(`${s.key}: data_dir ${s.dataDir} is not a volumeClaimTemplate's mount`);
  if ("database-url" in s.flags || "database_url" in s.config) errors.push("--database-url: this is the single-replica deployment (SQLite on its own volume); fleets are deploy/kubernetes-fleet");
});

// ---- Kubernetes: a fleet (deploy/kubernetes-fleet, with the optional PostgreSQL in postgres/)
const fleet = loadManifests("deploy/kubernetes-fleet");
const fleetDocs = fleet.map((o) => o.doc);
const podLabels = (sts) => sts.spec.template.metadata.labels || {};
const hasContainer = (sts, pred) => ((sts.spec.template.spec || {}).containers || []).some(pred);
let F = null;  // the fleet's slimd objects and what checkSlimd found, for the checks below
guard("deploy/kubernetes-fleet: references between objects", (errors) => {
  const slimdSets = ofKind(fleet, "StatefulSet").filter((s) => hasContainer(s, (c) => c.name === "slimd"));
  if (slimdSets.length !== 1) throw new Error(`expected one StatefulSet with a container slimd, found ${slimdSets.length}`);
  const sts = slimdSets[0];
  const svc = ofKind(fleet, "Service").find((s) => s.metadata.name === sts.spec.serviceName);
  if (!svc) throw new Error(`no Service ${sts.spec.serviceName} (the StatefulSet's serviceName)`);
  const cms = ofKind(fleet, "ConfigMap"), sms = ofKind(fleet, "ServiceMonitor");
  if (cms.length !== 1 || sms.length !== 1) throw new Error(`expected one ConfigMap and one ServiceMonitor, found ${cms.length} and ${sms.length}`);
  const s = checkSlimd(sts, svc, cms[0], sms[0], errors);
  if (!s) return;
  // Selectors of other objects: no Service or budget of another app selects slimd's pods, and
  // slimd's selects no one else's (the in-cluster PostgreSQL).
  for (const other of ofKind(fleet, "StatefulSet").filter((x) => x !== sts)) {
    if (subset(svc.spec.selector, podLabels(other))) errors.push(`Service ${svc.metadata.name}: selector also matches the pods of StatefulSet ${other.metadata.name}`);
  }
  for (const pdb of ofKind(fleet, "PodDisruptionBudget")) {
    if (!subset(pdb.spec.selector.matchLabels, s.labels)) errors.push(`PodDisruptionBudget ${pdb.metadata.name}: selector does not match slimd's pod labels`);
    if (pdb.spec.maxUnavailable === undefined && pdb.spec.minAvailable === undefined) errors.push(`PodDisruptionBudget ${pdb.metadata.name}: neither maxUnavailable nor minAvailable`);
  }
  F = { sts, svc, cm: cms[0], ...s };
});
const needFleet = () => { if (!F) throw new Error("skipped: the fleet's slimd objects are missing (above)"); };

guard("deploy/kubernetes-fleet: two or more replicas on one shared ReadWriteMany data volume", (errors) => {
  needFleet();
  const { sts, pod, dataMount, dataDir, key } = F;
  if (!(Number.isInteger(sts.spec.replicas) && sts.spec.replicas >= 2)) errors.push(`StatefulSet: replicas ${sts.spec.replicas}: a fleet has 2 or more (one slimd: deploy/kubernetes)`);
  if (sts.spec.podManagementPolicy !== "Parallel") errors.push("StatefulSet: podManagementPolicy must be Parallel (replicas do not wait for each other)");
  if (!dataMount) { errors.push(`${key}: data_dir ${dataDir} is not a volume mount of the slimd container`); return; }
  if ((sts.spec.volumeClaimTemplates || []).some((t) => t.metadata.name === dataMount.name)) {
    errors.push(`data volume ${dataMount.name} is a volumeClaimTemplate: each replica would get its own data directory; use one ReadWriteMany PersistentVolumeClaim`);
    return;
  }
  const vol = (pod.volumes || []).find((v) => v.name === dataMount.name);
  const claimName = vol && vol.persistentVolumeClaim && vol.persistentVolumeClaim.claimName;
  if (!claimName) { errors.push(`data volume ${dataMount.name} is not a persistentVolumeClaim`); return; }
  const pvc = ofKind(fleet, "PersistentVolumeClaim").find((p) => p.metadata.name === claimName);
  if (!pvc) { errors.push(`no PersistentVolumeClaim ${claimName} in deploy/kubernetes-fleet`); return; }
  if (!(pvc.spec.accessModes || []).includes("ReadWriteMany")) errors.push(`PersistentVolumeClaim ${claimName}: accessModes ${JSON.stringify(pvc.spec.accessModes)} lack ReadWriteMany: replicas on several nodes mount it`);
  if (dataMount.readOnly || dataMount.subPathExpr) errors.push(`data mount: must be read-write and the same directory in every pod (no subPathExpr)`);
});

guard("deploy/kubernetes-fleet: --database-url from a Secret, --replica-id from the pod name", (errors) => {
  needFleet();
  const { c, flags, config, key, cm } = F;
  const envRef = (flag) => {
    const v = flags[flag];
    if (v === undefined) { errors.push(`command line: no --${flag}`); return null; }
    const m = String(v).match(/^\$\(([A-Za-z_][A-Za-z0-9_]*)\)$/);
    if (!m) { errors.push(`--${flag} ${v}: a literal; must be $(VAR) of an env var`); return null; }
    const e = (c.env || []).find((x) => x.name === m[1]);
    if (!e) { errors.push(`--${flag} $(${m[1]}): no env var ${m[1]} (the kubelet would pass "$(${m[1]})" literally)`); return null; }
    return e;
  };
  const db = envRef("database-url");
  if (db) {
    const ref = (db.valueFrom || {}).secretKeyRef;
    if (!ref) errors.push(`--database-url: env ${db.name} must come from a Secret (valueFrom.secretKeyRef), not ${db.value !== undefined ? "a literal value" : JSON.stringify(db.valueFrom)}`);
    else if (ref.optional) errors.push(`--database-url: secretKeyRef ${ref.name}/${ref.key} must not be optional`);
    else F.databaseSecret = ref;
  }
  const id = envRef("replica-id");
  if (id && ((id.valueFrom || {}).fieldRef || {}).fieldPath !== "metadata.name") errors.push(`--replica-id: env ${id.name} must be the pod name (valueFrom.fieldRef.fieldPath: metadata.name)`);
  for (const k of ["database_url", "replica_id"]) if (k in config) errors.push(`${key}: ${k} must not be in the ConfigMap (${k === "database_url" ? "the password belongs in a Secret" : "it differs per pod"})`);
  for (const [k, v] of Object.entries(cm.data || {})) if (/postgres(ql)?:\/\/|\bpassword=/i.test(v)) errors.push(`ConfigMap ${cm.metadata.name} ${k}: holds a connection string`);
  for (const e of c.env || []) if (e.value !== undefined && /postgres(ql)?:\/\/|\bpassword=/i.test(e.value)) errors.push(`env ${e.name}: a literal connection string`);
});

guard("deploy/kubernetes-fleet: same security context, probes and grace period as deploy/kubernetes", (errors) => {
  needFleet();
  if (!singleSts) throw new Error("skipped: deploy/kubernetes has no StatefulSet");
  const a = singleSts.spec.template.spec, b = F.pod;
  const ca = a.containers.find((x) => x.name === "slimd") || {}, cb = F.c;
  const pairs = [["terminationGracePeriodSeconds", a.terminationGracePeriodSeconds, b.terminationGracePeriodSeconds],
                 ["pod securityContext", a.securityContext, b.securityContext],
                 ["container securityContext", ca.securityContext, cb.securityContext],
                 ["startupProbe", ca.startupProbe, cb.startupProbe],
                 ["readinessProbe", ca.readinessProbe, cb.readinessProbe],
                 ["livenessProbe", ca.livenessProbe, cb.livenessProbe]];
  for (const [what, x, y] of pairs) if (canon(x) !== canon(y)) errors.push(`${what} differs: ${canon(x)} (deploy/kubernetes) vs ${canon(y)}`);
});

// The optional PostgreSQL, and the example Secrets that connect slimd to it: the
// `kubectl create secret generic NAME --from-literal=KEY=VALUE` commands in postgres.yaml's
// comments and in docs/operations.md's "Kubernetes fleet" section.
function secretExamples(text) {
  const joined = text.replace(/\\\n[ \t]*#?[ \t]*/g, " ");
  const out = [];
  for (const m of joined.matchAll(/kubectl\b[^\n]*?\bcreate secret generic\s+([\w.-]+)([^\n]*)/g)) {
    for (const l of m[2].matchAll(/--from-literal=([\w.-]+)=(?:"([^"]*)"|'([^']*)'|(\S+))/g)) {
      out.push({ secret: m[1], key: l[1], value: l[2] ?? l[3] ?? l[4] });
    }
  }
  return out;
}
guard("deploy/kubernetes-fleet/postgres: in-cluster PostgreSQL, its Service and the example Secrets", (errors) => {
  needFleet();
  const pgSets = ofKind(fleet, "StatefulSet").filter((s) => hasContainer(s, (c) => /^postgres:/.test(c.image || "")));
  if (pgSets.length !== 1) throw new Error(`expected one StatefulSet running the postgres image, found ${pgSets.length}`);
  const pg = pgSets[0];
  const pgFile = fleet.find((o) => o.doc === pg).file;
  const c = pg.spec.template.spec.containers.find((x) => /^postgres:/.test(x.image));
  const major = Number((c.image.match(/^postgres:(\d+)/) || [])[1]);
  if (!(major >= 13)) errors.push(`${c.image}: slimd needs PostgreSQL 13 or newer`);
  if (pg.spec.replicas !== 1) errors.push("postgres StatefulSet: replicas must be 1 (no replication here)");
  const env = new Map((c.env || []).map((e) => [e.name, e]));
  const literal = (n, dflt) => (env.has(n) ? env.get(n).value : dflt);
  const user = literal("POSTGRES_USER", "postgres"), db = literal("POSTGRES_DB", user);
  const pwRef = ((env.get("POSTGRES_PASSWORD") || {}).valueFrom || {}).secretKeyRef;
  if (!pwRef) errors.push("POSTGRES_PASSWORD must come from a Secret (valueFrom.secretKeyRef)");
  // Its data on its own ReadWriteOnce volume (PGDATA inside a volumeClaimTemplate's mount).
  const pgdata = literal("PGDATA", "/var/lib/postgresql/data");
  const mount = (c.volumeMounts || []).find((m) => pgdata === m.mountPath || pgdata.startsWith(m.mountPath + "/"));
  const tmpl = mount && (pg.spec.volumeClaimTemplates || []).find((t) => t.metadata.name === mount.name);
  if (!tmpl) errors.push(`PGDATA ${pgdata} is not on a volumeClaimTemplate's mount`);
  else if (!(tmpl.spec.accessModes || []).includes("ReadWriteOnce")) errors.push(`volumeClaimTemplate ${tmpl.metadata.name}: want ReadWriteOnce`);
  if (mount && pgdata === mount.mountPath) errors.push(`PGDATA ${pgdata}: use a subdirectory of the mount (initdb refuses a volume root holding lost+found)`);
  // Its Service.
  const svc = ofKind(fleet, "Service").find((s) => s.metadata.name === pg.spec.serviceName);
  if (!svc) { errors.push(`no Service ${pg.spec.serviceName} (the postgres StatefulSet's serviceName)`); return; }
  if (!subset(svc.spec.selector, podLabels(pg))) errors.push(`Service ${svc.metadata.name}: selector does not match the postgres pod labels`);
  if (subset(svc.spec.selector, F.labels)) errors.push(`Service ${svc.metadata.name}: selector also matches slimd's pods`);
  if (!subset(pg.spec.selector.matchLabels, podLabels(pg))) errors.push("postgres StatefulSet: selector does not match its pod labels");
  const ports = new Map((c.ports || []).map((p) => [p.name, p.containerPort]));
  const sp = (svc.spec.ports || [])[0] || {};
  const target = typeof sp.targetPort === "string" ? ports.get(sp.targetPort) : (sp.targetPort || sp.port);
  if (target === undefined) errors.push(`Service ${svc.metadata.name}: targetPort ${sp.targetPort} names no port of the postgres container`);
  else if (target !== 5432) errors.push(`Service ${svc.metadata.name}: port ${sp.name} reaches container port ${target}, not the server's 5432`);
  // The example Secrets agree with the Service, the server's settings and slimd's secretKeyRef.
  const section = (read("docs/operations.md").split(/^### Kubernetes fleet\s*$/m)[1] || "").split(/^## /m)[0];
  if (!section) errors.push('docs/operations.md: no "### Kubernetes fleet" section');
  if (!F.databaseSecret) { errors.push("example Secrets not checked: slimd's --database-url does not come from a Secret (above)"); return; }
  for (const [where, text] of [[pgFile, read(pgFile)], ["docs/operations.md (Kubernetes fleet)", section]]) {
    const ex = secretExamples(text);
    const urls = ex.filter((e) => e.secret === F.databaseSecret.name && !/^\$\{?\w+\}?$/.test(e.value));
    const pws = ex.filter((e) => pwRef && e.secret === pwRef.name);
    if (urls.length === 0) errors.push(`${where}: no example \`kubectl create secret generic ${F.databaseSecret.name} --from-literal=${F.databaseSecret.key}=postgresql://...\``);
    if (pwRef && pws.length === 0) errors.push(`${where}: no example \`kubectl create secret generic ${pwRef.name} --from-literal=${pwRef.key}=...\``);
    for (const p of pws) if (p.key !== pwRef.key) errors.push(`${where}: secret ${p.secret} key ${p.key}, but postgres reads key ${pwRef.key}`);
    for (const u of urls) {
      if (u.key !== F.databaseSecret.key) errors.push(`${where}: secret ${u.secret} key ${u.key}, but slimd reads key ${F.databaseSecret.key}`);
      let url;
      try { url = new URL(u.value); } catch (e) { errors.push(`${where}: not a URL: ${u.value}`); continue; }
      const host = url.hostname, port = Number(url.port || 5432);
      if (!["postgresql:", "postgres:"].includes(url.protocol)) errors.push(`${where}: ${u.value}: not a postgresql:// URL`);
      if (host !== svc.metadata.name && !host.startsWith(svc.metadata.name + ".")) errors.push(`${where}: URL host ${host} is not the Service ${svc.metadata.name}`);
      if (port !== sp.port) errors.push(`${where}: URL port ${port} is not the Service's port ${sp.port}`);
      if (decodeURIComponent(url.username) !== user) errors.push(`${where}: URL user ${url.username} is not POSTGRES_USER ${user}`);
      if (decodeURIComponent(url.pathname.slice(1)) !== db) errors.push(`${where}: URL database ${url.pathname.slice(1)} is not POSTGRES_DB ${db}`);
      if (!url.searchParams.has("connect_timeout")) errors.push(`${where}: URL without connect_timeout (an unreachable host blocks for minutes)`);
      const pw = decodeURIComponent(url.password);
      if (pws.length && !pws.some((p) => p.value === pw)) errors.push(`${where}: URL password ${pw} is not the one given to secret ${pwRef.name} (${pws.map((p) => p.value).join(", ")})`);
    }
  }
});

// ---- docker compose
guard("deploy/compose: docker-compose.yml and Grafana provisioning", (errors) => {
  const dir = path.join(root, "deploy/compose");
  const compose = yaml.load(read("deploy/compose/docker-compose.yml"));
  const services = compose.services || {};
  for (const s of ["slimd", "prometheus", "grafana"]) if (!services[s]) errors.push(`no service ${s}`);
  if (errors.length) return;
  const named = new Set(Object.keys(compose.volumes || {}));
  const mounts = {};
  for (const [name, s] of Object.entries(services)) {
    if (!s.image && !s.build) errors.push(`${name}: no image or build`);
    for (const v of s.volumes || []) {
      const [src, dst] = String(v).split(":");
      if (src.startsWith(".") || src.startsWith("/")) {
        if (!fs.existsSync(path.resolve(dir, src))) errors.push(`${name}: mounts ${src}, which does not exist`);
      } else if (!named.has(src)) errors.push(`${name}: volume ${src} is not declared under volumes:`);
      mounts[`${name}:${dst}`] = path.resolve(dir, src);
    }
  }
  const build = services.slimd.build;
  const context = path.resolve(dir, typeof build === "string" ? build : build.context);
  if (!fs.existsSync(path.join(context, (build && build.dockerfile) || "Dockerfile"))) errors.push("slimd: no Dockerfile in the build context");
  const published = (services.slimd.ports || []).map((p) => String(p).split(":").pop());
  for (const p of ["50051", "9464"]) if (!published.includes(p)) errors.push(`slimd: port ${p} not published`);
  if (!(services.slimd.volumes || []).some((v) => String(v).split(":")[1] === "/var/lib/slim")) errors.push("slimd: no volume at /var/lib/slim");
  if (!services.slimd.stop_grace_period) errors.push("slimd: no stop_grace_period (Docker's 10 s cuts the workers' checkpoints short)");
  // Prometheus: its config is deploy/prometheus, and it scrapes the slimd service.
  if (mounts["prometheus:/etc/prometheus"] !== path.join(root, "deploy/prometheus")) errors.push("prometheus: deploy/prometheus is not mounted at /etc/prometheus");
  const prom = yaml.load(read("deploy/prometheus/prometheus.yml"));
  const scrape = (prom.scrape_configs || []).find((s) => s.job_name === "slimd");
  const targets = scrape ? scrape.static_configs.flatMap((s) => s.targets) : [];
  if (!targets.includes("slimd:9464")) errors.push("prometheus.yml: no job slimd scraping slimd:9464");
  if (!(prom.rule_files || []).length) errors.push("prometheus.yml: no rule_files");
  // Grafana: provisioning mounted; the datasource points at the prometheus service; the
  // dashboard provider's folder holds the mounted dashboard JSON.
  const prov = mounts["grafana:/etc/grafana/provisioning"];
  if (!prov) { errors.push("grafana: provisioning not mounted at /etc/grafana/provisioning"); return; }
  const dsFile = yaml.load(fs.readFileSync(path.join(prov, "datasources/prometheus.yml"), "utf8"));
  const ds = (dsFile.datasources || []).find((d) => d.type === "prometheus");
  if (!ds || ds.name !== "Prometheus" || !/^http:\/\/prometheus:9090\/?$/.test(ds.url)) errors.push("datasources/prometheus.yml: need a prometheus datasource named Prometheus at http://prometheus:9090");
  const dbFile = yaml.load(fs.readFileSync(path.join(prov, "dashboards/slim.yml"), "utf8"));
  const provider = (dbFile.providers || [])[0];
  const folder = provider && provider.options && provider.options.path;
  const inFolder = Object.entries(mounts).filter(([k, src]) => k.startsWith(`grafana:${folder}/`) && src === path.join(root, "deploy/grafana/slim-dashboard.json"));
  if (!folder || inFolder.length !== 1) errors.push(`dashboards/slim.yml: deploy/grafana/slim-dashboard.json is not mounted into the provider's folder ${folder}`);
  if (!(services.grafana.volumes || []).some((v) => String(v).includes("slim-dashboard.json") && String(v).endsWith(":ro"))) errors.push("grafana: the dashboard JSON must be mounted read-only");
});

// ---- Dockerfiles
// A Dockerfile as lines (continuations joined, comments and blanks dropped), its stages, and the
// packages an apt-get install of a stage names.
const dockerfile = (rel) => {
  const lines = read(rel).replace(/\\\n/g, " ").split("\n").map((l) => l.trim()).filter((l) => l && !l.startsWith("#"));
  const starts = lines.map((l, i) => (/^FROM /i.test(l) ? i : -1)).filter((i) => i >= 0);
  const stages = starts.map((s, k) => lines.slice(s, k + 1 < starts.length ? starts[k + 1] : lines.length));
  return { lines, stages };
};
const aptPackages = (stage) => stage.filter((l) => /apt-get install/.test(l))
  .flatMap((l) => l.split("apt-get install")[1].split("&&")[0].split(/\s+/))
  .filter((w) => w && !w.startsWith("-") && !w.includes("$"));
// install-deps.sh's build_packages=( ... ), comments dropped.
const buildPackages = read("scripts/install-deps.sh").split("build_packages=(")[1].split("\n)")[0]
  .split("\n").map((l) => l.replace(/#.*/, "")).join(" ").split(/\s+/).filter(Boolean);

// The runtime stage both images share: entrypoint, health check, ports, volume, user, binaries.
const checkRuntime = (rel, stage, errors) => {
  const instr = (name) => stage.filter((l) => l.toUpperCase().startsWith(name + " ")).map((l) => l.slice(name.length + 1).trim());
  const json = (s, what) => { try { const v = JSON.parse(s); if (Array.isArray(v)) return v; } catch (e) { /* below */ } errors.push(`${rel}: ${what} is not exec form (a JSON array): ${s}`); return []; };
  const entry = json((instr("ENTRYPOINT")[0] || ""), "ENTRYPOINT");
  if (entry[0] !== "/usr/local/bin/slimd") errors.push(`${rel}: ENTRYPOINT must start /usr/local/bin/slimd`);
  for (const a of entry.slice(1)) if (a.startsWith("--") && !slimdFlags.has(a.slice(2).split("=")[0])) errors.push(`${rel}: ENTRYPOINT: slimd has no flag ${a}`);
  const health = (instr("HEALTHCHECK")[0] || "").split(/\bCMD\s+/)[1] || "";
  const hc = json(health, "HEALTHCHECK CMD");
  if (hc[0] !== "/usr/local/bin/slimctl" || !hc.includes("--timeout")) errors.push(`${rel}: HEALTHCHECK must run /usr/local/bin/slimctl with --timeout`);
  const expose = instr("EXPOSE").join(" ").split(/\s+/);
  for (const p of ["50051", "9464"]) if (!expose.includes(p)) errors.push(`${rel}: EXPOSE lacks ${p}`);
  if (!instr("VOLUME").some((v) => v.includes("/var/lib/slim"))) errors.push(`${rel}: no VOLUME /var/lib/slim`);
  const user = (instr("USER").pop() || "0").split(":")[0];
  if (user === "0" || user === "root") errors.push(`${rel}: runtime USER must not be root`);
  for (const c of stage.filter((l) => /^COPY /i.test(l) && !/--from=/i.test(l))) {
    for (const src of c.split(/\s+/).slice(1, -1)) if (!src.startsWith("--") && !fs.existsSync(path.join(root, src))) errors.push(`${rel}: COPY ${src}: no such file`);
  }
  const bin = stage.filter((l) => /^COPY --from=/i.test(l)).join(" ");
  for (const b of ["build/server/slimd", "build/client/slimctl", "build/tools/slim-train"]) if (!bin.includes(b)) errors.push(`${rel}: runtime stage does not copy ${b}`);
  const pkgs = aptPackages(stage);
  if (pkgs.length === 0) errors.push(`${rel}: runtime stage installs no packages`);
  return pkgs;
};

guard("Dockerfile: stages, entrypoint, healthcheck, copied files; build stage = install-deps.sh's build_packages", (errors) => {
  const { stages } = dockerfile("Dockerfile");
  if (stages.length < 2 || !/debian:bookworm\b/.test(stages[0][0]) || !/debian:bookworm-slim\b/.test(stages[stages.length - 1][0])) errors.push("want a debian:bookworm build stage and a debian:bookworm-slim runtime stage");
  const built = aptPackages(stages[0]);
  for (const p of buildPackages) if (!built.includes(p)) errors.push(`build stage lacks ${p} (scripts/install-deps.sh build_packages)`);
  for (const p of built) if (!buildPackages.includes(p)) errors.push(`build stage installs ${p}, which install-deps.sh's build_packages lacks`);
  const pkgs = checkRuntime("Dockerfile", stages[stages.length - 1], errors);
  fs.writeFileSync(path.join(tmp, "runtime_packages"), pkgs.join("\n") + "\n");
});

guard("Dockerfile.cuda: the same runtime stage; build_packages but Debian's LibTorch, OpenBLAS and Gloo", (errors) => {
  const { stages } = dockerfile("Dockerfile.cuda");
  if (stages.length < 2) { errors.push("want a build and a runtime stage"); return; }
  const built = aptPackages(stages[0]);
  const own = ["libtorch-dev", "libopenblas0-pthread", "libgloo-dev"];  // the LibTorch archive's
  for (const p of buildPackages) if (!own.includes(p) && !built.includes(p)) errors.push(`build stage lacks ${p}`);
  for (const p of own) if (built.includes(p)) errors.push(`build stage installs Debian's ${p} beside the CUDA LibTorch`);
  if (!stages[0].some((l) => /CMAKE_PREFIX_PATH=\/opt\/libtorch/.test(l))) errors.push("build stage does not build against /opt/libtorch");
  const pkgs = checkRuntime("Dockerfile.cuda", stages[stages.length - 1], errors);
  if (pkgs.includes("libtorch1.13")) errors.push("runtime stage installs Debian's CPU LibTorch");
  fs.appendFileSync(path.join(tmp, "runtime_packages"), pkgs.filter((p) => !read("Dockerfile").includes(p)).join("\n") + "\n");
});

// Every slim image the deployment files name is built by a Dockerfile here, which says so in
// its header ("docker build [-f FILE] -t slim:TAG .").
guard("deploy/: every slim image is built by a Dockerfile of the repository", (errors) => {
  const built = new Set();
  for (const f of fs.readdirSync(root).filter((n) => /^Dockerfile(\..+)?$/.test(n))) {
    for (const m of read(f).matchAll(/docker build\b[^\n]*?-t\s+(slim(?::[\w.-]+)?)\s/g)) {
      built.add(m[1].includes(":") ? m[1] : `${m[1]}:latest`);
    }
  }
  const named = [];
  const walk = (rel) => {
    for (const e of fs.readdirSync(path.join(root, rel), { withFileTypes: true })) {
      if (e.isDirectory()) walk(`${rel}/${e.name}`);
      else if (/\.ya?ml$/.test(e.name)) {
        for (const m of read(`${rel}/${e.name}`).matchAll(/^\s*image:\s*["']?([^\s"']+)/gm)) {
          if (/^slim(:|$)/.test(m[1])) named.push([`${rel}/${e.name}`, m[1].includes(":") ? m[1] : `${m[1]}:latest`]);
        }
      }
    }
  };
  walk("deploy");
  if (named.length === 0) errors.push("no slim image named under deploy/");
  for (const [file, image] of named) if (!built.has(image)) errors.push(`${file}: image ${image} is built by no Dockerfile here (built: ${[...built].join(", ")})`);
});

process.exit(failed ? 1 : 0);
EOF
if node "$tmp/check.js" "$root" "$npm_dir" "$tmp" >"$tmp/node.out" 2>&1; then
  cat "$tmp/node.out"
else
  cat "$tmp/node.out"
  failures+=("structure checks (node)")
fi

# Every query of deploy/queries.txt parses (each one a recording rule for promtool).
if [ -f "$tmp/queries_rules.json" ]; then
  check "promtool: every line of deploy/queries.txt parses as PromQL" promtool check rules "$tmp/queries_rules.json"
else
  bad "deploy/queries.txt not read"
fi

# The runtime packages exist (needs APT lists: skipped on a machine that never ran apt-get update).
if [ -s "$tmp/runtime_packages" ] && compgen -G "/var/lib/apt/lists/*_Packages*" >/dev/null && command -v apt-cache >/dev/null; then
  missing=()
  while read -r p; do apt-cache show "$p" >/dev/null 2>&1 || missing+=("$p"); done <"$tmp/runtime_packages"
  if [ ${#missing[@]} -eq 0 ]; then
    ok "Dockerfile: runtime packages exist in APT ($(tr '\n' ' ' <"$tmp/runtime_packages"))"
  else
    bad "Dockerfile: runtime packages unknown to APT: ${missing[*]}"
  fi
else
  echo "skip  Dockerfile runtime packages: no APT package lists here (run apt-get update)"
fi

if [ ${#failures[@]} -ne 0 ]; then
  printf 'validate-deploy: %d check(s) failed:\n' "${#failures[@]}" >&2
  printf '  %s\n' "${failures[@]}" >&2
  exit 1
fi
echo "validate-deploy: all checks passed"
