#!/usr/bin/env bash
# slimctl end to end against a real slimd: every command's happy path and error path, JSON
# output parsed and checked, exit statuses per error class, and `watch` reconnecting across a
# SIGKILL and restart of slimd.
#   slimctl_test.sh SLIMCTL SLIMD SLIM_TRAIN SOURCE_DIR
set -euo pipefail
ctl="$1"; slimd="$2"; train="$3"; src=$(cd "$4" && pwd)
dir=$(mktemp -d)
sock="unix:$dir/slimd.sock"
slimd_pid=""
cleanup() {
  [ -n "$slimd_pid" ] && kill -TERM "$slimd_pid" 2>/dev/null && wait "$slimd_pid" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; [ -f "$dir/slimd.log" ] && tail -20 "$dir/slimd.log" >&2; exit 1; }
start_slimd() {
  "$slimd" --listen "$sock" --data-dir "$dir/data" --devices cpu:64MiB --worker-footprint 0 --worker-binary "$train" --metrics-address 127.0.0.1:0 \
    --checkpoint-every 10 >>"$dir/slimd.log" 2>&1 &
  slimd_pid=$!
  for _ in $(seq 1 200); do
    "$ctl" version --server "$sock" 2>/dev/null | grep -q reachable && ! "$ctl" version --server "$sock" | grep -q unreachable && return 0
    sleep 0.1
  done
  fail "slimd did not start"
}
# Runs slimctl, expecting exit status $1; output in $out, stderr in $err.
expect() {
  local want="$1"; shift
  set +e
  out=$("$ctl" --server "$sock" "$@" 2>"$dir/err"); rc=$?
  set -e
  err=$(cat "$dir/err")
  [ "$rc" -eq "$want" ] || fail "slimctl $*: exit $rc, want $want; stderr: $err"
}
json() { python3 -c "import json,sys; d=json.loads(sys.stdin.read()); print($1)"; }

start_slimd
export SLIM_CONFIG="$dir/no-config.yaml"  # not the user's

# version, help, usage errors
expect 0 health
[ "$out" = SERVING ] || fail "health: $out"
expect 0 version --output json
[ "$(echo "$out" | json 'd["reachable"]')" = True ] || fail "version: not reachable: $out"
expect 0 --help
expect 0 submit --help
echo "$out" | grep -q "examples:" || fail "submit --help has no examples"
expect 2 frobnicate
echo "$err" | grep -q "unknown command 'frobnicate'" || fail "unknown command: $err"
expect 2 list --output xml
echo "$err" | grep -q -- "--output: unknown format 'xml'" || fail "bad output: $err"
# kubectl/gh conventions: --version, help CMD, CMD -h, -o, "did you mean".
expect 0 --version
[ "$out" = "slimctl 0.5.0 (API slim.v1)" ] || fail "--version: $out"
expect 0 help watch
echo "$out" | grep -q "usage: slimctl watch JOB" || fail "help watch: $out"
expect 0 get -h
echo "$out" | grep -q "usage: slimctl get JOB" || fail "get -h: $out"
expect 0 devices -o json
[ "$(echo "$out" | json 'len(d["devices"])')" = 1 ] || fail "devices -o json: $out"
expect 2 lst
echo "$err" | grep -q "unknown command 'lst' (did you mean 'list'?)" || fail "did you mean (command): $err"
expect 2 list --limt 3
echo "$err" | grep -q -- "unknown flag --limt (did you mean --limit?)" || fail "did you mean (flag): $err"
# Completion scripts, sourced in bash: commands, a command's flags, datasets' actions.
"$ctl" completion bash > "$dir/completion.bash"
"$ctl" completion zsh | grep -q "bashcompinit" || fail "zsh completion"
completions=$(bash -c 'source "$1"
  complete -p slimctl >/dev/null || exit 1
  COMP_WORDS=(slimctl sub); COMP_CWORD=1; _slimctl; echo "${COMPREPLY[*]}"
  COMP_WORDS=(slimctl submit --wa); COMP_CWORD=2; _slimctl; echo "${COMPREPLY[*]}"
  COMP_WORDS=(slimctl datasets up); COMP_CWORD=2; _slimctl; echo "${COMPREPLY[*]}"
  COMP_WORDS=(slimctl list --ser); COMP_CWORD=2; _slimctl; echo "${COMPREPLY[*]}"
  COMP_WORDS=(slimctl list -o w); COMP_CWORD=3; _slimctl; echo "${COMPREPLY[*]}"' _ "$dir/completion.bash")
[ "$completions" = "$(printf 'submit\n--watch\nupload\n--server\nwide')" ] || fail "bash completion: $completions"
set +e; "$ctl" list --server "unix:$dir/nobody.sock" --timeout 2 2>"$dir/err"; rc=$?; set -e
[ "$rc" -eq 6 ] || fail "unreachable server: exit $rc, want 6"
grep -q "cannot reach the server" "$dir/err" || fail "unreachable message: $(cat "$dir/err")"

# models
expect 0 models import "$src/models/base-mini.safetensors" --name base-mini --output json
base=$(echo "$out" | json 'd["id"]')
[ "$(echo "$out" | json 'd["parameters"]')" = 856832 ] || fail "models import: $out"
expect 2 models import /nonexistent.safetensors
expect 0 models list --output json
[ "$(echo "$out" | json 'len(d["models"])')" = 1 ] || fail "models list: $out"
expect 0 models get "$base"
echo "$out" | grep -q base-mini || fail "models get: $out"
expect 4 models get model-999999
expect 0 models export "$base" --out "$dir/exported.safetensors"
cmp "$dir/exported.safetensors" "$src/models/base-mini.safetensors" || fail "export differs"
"$ctl" --server "$sock" models export "$base" --out - > "$dir/stdout.safetensors" || fail "export to stdout"
cmp "$dir/stdout.safetensors" "$src/models/base-mini.safetensors" || fail "export to stdout differs"
[ ! -e ./- ] || fail "export --out - wrote a file named -"

# datasets
cat "$src"/docs/*.md > "$dir/docs.txt"
expect 0 datasets upload "$dir/docs.txt" --name docs --output json
ds=$(echo "$out" | json 'd["id"]')
[ "$(echo "$out" | json 'd["sha256"]')" = "$(sha256sum "$dir/docs.txt" | cut -d' ' -f1)" ] || fail "upload sha: $out"
expect 0 datasets upload "$dir/docs.txt" --output json   # same bytes: reused
[ "$(echo "$out" | json 'd["id"]')" = "$ds" ] || fail "identical upload not reused"
printf '{"text": "ok"}\n' > "$dir/one.jsonl"
expect 0 datasets upload "$dir/one.jsonl" --format jsonl
expect 2 datasets upload "$dir/docs.txt" --format csv
# JSONL is checked at upload (each line an object), and the message names the upload, not the
# server's files.
printf '{"text": "fine"}\nnot json at all\n' > "$dir/bad.jsonl"
expect 2 datasets upload "$dir/bad.jsonl" --format jsonl
echo "$err" | grep -qF "data: bad.jsonl:2: invalid JSON" || fail "bad JSONL upload: $err"
echo "$err" | grep -qF "$dir/data" && fail "the server's data path in a message: $err"
printf '[1, 2]\n' > "$dir/array.jsonl"
expect 2 datasets upload "$dir/array.jsonl" --format jsonl
echo "$err" | grep -qF "array.jsonl:1: expected a JSON object" || fail "JSONL array line: $err"
expect 0 datasets list --output json
[ "$(echo "$out" | json 'len(d["datasets"])')" = 2 ] || fail "datasets list: $out"
expect 0 datasets get "$ds"
expect 4 datasets get ds-999999
expect 2 datasets frob

# plan and submit
cat > "$dir/job.yaml" <<EOF
model: {base: $base}
data:
  train: [$ds]
training:
  seq_len: 256
  batch_size: 2
  steps: 30
  optimizer: {lr: 1e-3}
memory:
  quota: 48MiB
EOF
# The mini model's calibration at batch 2 needs more than this server's 64 MiB device: the plan
# says so (docs/service.md, "Calibration") ...
expect 3 plan "$dir/job.yaml"
echo "$err" | grep -qF "calibrating this model shape (batch 2) needs more than its reservation of 64.0 MiB (the whole device)" ||
  fail "calibration larger than the device: $err"
# ... having said what it waited for.
echo "$err" | grep -qF "slimctl: calibrating the memory model for this model shape on cpu (first time only" ||
  fail "no word of the calibration: $err"
# ... until an operator calibrates ahead into slimd's calibration cache.
sed "s|base: $base|base: $src/models/base-mini.safetensors|; s|train: \[$ds\]|train: [$dir/docs.txt]|" "$dir/job.yaml" > "$dir/local-job.yaml"
"$train" plan --spec "$dir/local-job.yaml" --calibration-cache "$dir/data/calibration" >/dev/null ||
  fail "calibrating ahead failed"
expect 0 plan "$dir/job.yaml" --output json
chunk=$(echo "$out" | json 'd["chunk_size"]')
[ "$chunk" -gt 0 ] || fail "plan: $out"
# The plan names ordinary backprop's peak next to SLiM's: never below it.
[ "$(echo "$out" | json 'int(d["full_backprop_peak_bytes"]) >= int(d["predicted_peak_bytes"]) > 0')" = True ] ||
  fail "plan without full backprop's peak: $out"
expect 0 plan - --output json < "$dir/job.yaml"  # the spec on stdin
[ "$(echo "$out" | json 'd["chunk_size"]')" = "$chunk" ] || fail "plan from stdin: $out"
# A plan is a dry run: local data files are described by digest, not uploaded; calibrated
# shapes are planned without a word on stderr.
printf 'text this server has never seen %s\n' "$RANDOM$RANDOM" > "$dir/unseen.txt"
sed "s|train: \[$ds\]|train: [$dir/unseen.txt]|" "$dir/job.yaml" > "$dir/unseen-job.yaml"
expect 0 datasets list -o name
datasets_before="$out"
expect 0 plan "$dir/unseen-job.yaml" -o json
[ "$(echo "$out" | json 'd["chunk_size"]')" = "$chunk" ] || fail "plan of local files: $out"
[ -z "$err" ] || fail "plan of a calibrated shape wrote to stderr: $err"
expect 0 datasets list -o name
[ "$out" = "$datasets_before" ] || fail "plan uploaded a dataset: $out"
expect 3 plan "$dir/job.yaml" --quota 1MiB
echo "$out" | grep -q "minimum" || fail "infeasible plan output: $out"
# At the smallest quota that fits, SLiM's chunks fit and full backprop does not.
expect 3 plan "$dir/job.yaml" --quota 1MiB -o json
expect 0 plan "$dir/job.yaml" --quota "$(echo "$out" | json 'd["min_quota_bytes"]')"
echo "$out" | grep -q "^full backprop (chunk size = seq_len) would peak at .*: does not fit the quota$" ||
  fail "plan text without full backprop's peak: $out"
expect 3 submit "$dir/job.yaml" --quota 1MiB
echo "$err" | grep -q "the minimum is" || fail "quota error: $err"
# Mistakes read as slim-train reports them for the same spec (one reader, docs/service.md).
expect 2 submit "$dir/job.yaml" --set training.optimizer.lr=-1
echo "$err" | grep -qF "spec: training.optimizer.lr: must be > 0, got -1" || fail "field not named: $err"
expect 2 submit "$dir/job.yaml" --set training.optimiser.lr=1
echo "$err" | grep -qF "spec: training.optimiser: unknown field (known here: " || fail "unknown field: $err"
expect 2 submit "$dir/job.yaml" --set training.steps=ten
echo "$err" | grep -qF "spec: training.steps: must be an integer" || fail "wrong type: $err"
expect 2 plan "$dir/job.yaml" --set memory.chunk_size=0.5
echo "$err" | grep -qF "spec: memory.chunk_size: must be an integer" || fail "fractional integer: $err"
printf 'model: {preset: tiny}\ndata: {train: [x.txt]}\ntraining: {seq_len: 8, steps: 1, optimiser: {lr: 1}}\nmemory: {chunk_size: 8}\n' > "$dir/typo.yaml"
set +e; "$train" run --spec "$dir/typo.yaml" --out "$dir/typo-out" 2>"$dir/train-err"; set -e
grep -qF "spec: training.optimiser: unknown field (known here: " "$dir/train-err" ||
  fail "slim-train's message differs: $(cat "$dir/train-err")"
expect 4 submit "$dir/job.yaml" --set model.base=model-999999
expect 2 submit "$dir/missing.yaml"
expect 5 submit "$dir/job.yaml" --set data_parallel.workers=2   # one device here
echo "$err" | grep -q "data_parallel.workers: 2 workers need as many cpu devices; this server has 1" ||
  fail "data-parallel job on one device: $err"

expect 0 submit "$dir/job.yaml" --name first --watch
echo "$out" | grep -q "job .* SUCCEEDED" || fail "submit --watch: $out"
expect 0 list --output json
job=$(echo "$out" | json 'd["jobs"][0]["id"]')
[ "$(echo "$out" | json 'd["jobs"][0]["state"]')" = JOB_STATE_SUCCEEDED ] || fail "list: $out"
[ "$(echo "$out" | json 'd["jobs"][0]["chunk_size"]')" = "$chunk" ] || fail "chunk size is not the plan's"
expect 0 list --state succeeded
echo "$out" | grep -q "$job" || fail "list --state: $out"
# -o name: ids only, one per line, as every command takes them; -o wide: more columns.
expect 0 list --state succeeded -o name
[ "$out" = "$job" ] || fail "list -o name: $out"
expect 0 get "$job" -o name
[ "$out" = "$job" ] || fail "get -o name: $out"
expect 0 list -o wide
echo "$out" | head -1 | grep -q "MODE .*PEAK .*REPLICA .*VAL LOSS .*TOK/S .*ETA .*OUTPUT MODEL" || fail "list -o wide: $out"
echo "$out" | grep "$job" | grep -q "model-" || fail "list -o wide has no output model: $out"
expect 0 devices -o name
[ "$out" = "cpu:0" ] || fail "devices -o name: $out"
expect 0 models list -o name
echo "$out" | grep -qx "$base" || fail "models list -o name: $out"
expect 0 datasets list -o name
echo "$out" | grep -qx "$ds" || fail "datasets list -o name: $out"
expect 2 plan "$dir/job.yaml" -o name
echo "$err" | grep -qF -- "--output name: 'plan' prints no resources" || fail "plan -o name: $err"
expect 2 submit "$dir/job.yaml" --watch -o name
expect 2 list --state sideways
expect 0 get "$job" --output json
[ "$(echo "$out" | json 'd["progress"]["step"]')" = 30 ] || fail "get: $out"
model=$(echo "$out" | json 'd["output_model"]')
expect 0 events "$job" --output json
echo "$out" | grep -q '"kind": "succeeded"' || fail "events: no succeeded"
# Streams as JSON: one object per line, each naming the job; submit --watch prints the job first.
expect 0 submit "$dir/job.yaml" --name streamed --watch -o json
echo "$out" | python3 -c '
import json, sys
lines = [json.loads(l) for l in sys.stdin.read().splitlines()]
assert "job" in lines[0] and lines[0]["job_id"] == lines[0]["job"]["id"], lines[0]
assert all(l["job_id"] == lines[0]["job_id"] and "event" in l for l in lines[1:]), "an event line without the job"
assert lines[-1]["event"]["kind"] == "succeeded", lines[-1]
' || fail "submit --watch -o json: $out"
streamed=$(echo "$out" | head -1 | json 'd["job_id"]')
expect 0 watch "$streamed" -o json
[ "$(echo "$out" | tail -1 | json 'd["event"]["kind"]')" = succeeded ] || fail "watch -o json: $out"
expect 0 events "$job"
echo "$out" | grep -q "queued" || fail "events table: $out"
expect 4 get job-999999
expect 4 events job-999999
expect 4 watch job-999999
expect 4 models export model-999999 --out "$dir/nothing.safetensors"
[ ! -e "$dir/nothing.safetensors" ] || fail "failed export left a file"
expect 5 cancel "$job"
echo "$err" | grep -q "SUCCEEDED" || fail "cancel finished job: $err"
expect 0 generate "$model" --prompt "The " --max-tokens 20 --seed 3
a="$out"
expect 0 generate "$model" --prompt "The " --max-tokens 20 --seed 3
[ "$a" = "$out" ] || fail "generation not deterministic"
expect 2 generate "$model" --prompt "x" --max-tokens 100000
expect 0 devices --output json
[ "$(echo "$out" | json 'd["devices"][0]["capacity_bytes"]')" = $((64 << 20)) ] || fail "devices: $out"

# A submit repeated with its request id returns the first submit's job (AIP-155).
expect 0 submit "$dir/job.yaml" --steps 2 --request-id first-submit-1 --output json
again=$(echo "$out" | json 'd["id"]')
expect 0 submit "$dir/job.yaml" --steps 2 --request-id first-submit-1 --output json
[ "$(echo "$out" | json 'd["id"]')" = "$again" ] || fail "a repeated request id created a second job: $out"
expect 0 watch "$again"

# logs: the worker's log whole, its tail, and -f to the job's end (issue 20, item 2).
expect 0 logs "$job"
echo "$out" | grep -q "^training on cpu" || fail "logs: $out"
echo "$out" | grep -q "^done: " || fail "logs without their end: $out"
expect 0 logs "$job" --tail 1
[ "$(echo "$out" | wc -l)" -eq 1 ] && echo "$out" | grep -q "^done: " || fail "logs --tail 1: $out"
expect 4 logs job-999999
expect 2 logs "$job" --tail -1
expect 0 submit "$dir/job.yaml" --steps 3 -o name
followed="$out"
expect 0 logs "$followed" -f
echo "$out" | grep -q "^done: " || fail "logs -f ended before the job: $out"
# slimd's own log: each job's lifecycle as logfmt lines.
grep -q "^slimd: time=[0-9T:-]*Z job=$followed event=queued state=QUEUED .*msg=\"quota " "$dir/slimd.log" ||
  fail "no lifecycle line for the queued job"
grep -q "^slimd: time=.* job=$followed event=started state=RUNNING" "$dir/slimd.log" || fail "no started line"
grep -q "^slimd: time=.* job=$followed event=succeeded state=SUCCEEDED .*msg=\"model model-" "$dir/slimd.log" ||
  fail "no succeeded line"
grep "job=$followed" "$dir/slimd.log" | grep -q "event=progress" && fail "per-step events in slimd's log"

# On a terminal (script(1) gives one): states in colour unless NO_COLOR, rows cut to its width
# ($COLUMNS where the terminal reports none); piped output is neither coloured nor cut.
on_tty() { script -qec "$(printf '%q ' "$@")" /dev/null | tr -d '\r'; }
long_name="a-dataset-name-far-too-long-for-a-sixty-column-terminal-$(printf 'x%.0s' $(seq 40))"
{ cat "$dir/docs.txt"; echo "a copy with its own bytes"; } > "$dir/long.txt"
"$ctl" --server "$sock" datasets upload "$dir/long.txt" --name "$long_name" > /dev/null || fail "long-named upload"
tty_out=$(COLUMNS=60 on_tty "$ctl" --server "$sock" datasets list)
widest=$(printf '%s\n' "$tty_out" | python3 -c 'import sys; print(max(len(l) for l in sys.stdin.read().splitlines()))')
[ "$widest" -le 60 ] || fail "datasets list on a 60-column terminal is $widest wide: $tty_out"
printf '%s' "$tty_out" | grep -q "…" || fail "the long name was not cut: $tty_out"
tty_out=$(COLUMNS=200 on_tty "$ctl" --server "$sock" list)
printf '%s' "$tty_out" | grep -q $'\033\[32mSUCCEEDED' || fail "no colour for states on a terminal: $tty_out"
tty_out=$(NO_COLOR=1 COLUMNS=200 on_tty "$ctl" --server "$sock" list)
printf '%s' "$tty_out" | grep -q $'\033' && fail "colour despite NO_COLOR: $tty_out"
expect 0 datasets list
echo "$out" | grep -qF "$long_name" || fail "piped output was cut: $out"
expect 0 list
echo "$out" | grep -q $'\033' && fail "colour in piped output: $out"

# cancel a running job; its watch exits 9
expect 0 submit "$dir/job.yaml" --steps 100000 --output json
long=$(echo "$out" | json 'd["id"]')
expect 5 datasets delete "$ds"
echo "$err" | grep -q "is used by job $long" || fail "delete in use: $err"
# Cleanup (issue 20, item 3): nothing in use is deleted.
expect 5 jobs delete "$long"
echo "$err" | grep -q "only ended jobs can be deleted" || fail "jobs delete of a running job: $err"
expect 5 models delete "$base"
echo "$err" | grep -q "is fine-tuned by job $long" || fail "models delete in use: $err"
# Ctrl-C on a watch leaves the job running and says how to re-attach.
"$ctl" --server "$sock" watch "$long" > "$dir/watch0.out" 2>&1 &
watch_pid=$!
for _ in $(seq 1 300); do grep -q "step" "$dir/watch0.out" && break; sleep 0.1; done
kill -INT "$watch_pid"
set +e; wait "$watch_pid"; rc=$?; set -e
[ "$rc" -eq 130 ] || fail "watch after Ctrl-C: exit $rc, want 130"
grep -q "stopped watching $long; the job keeps running. Re-attach with: slimctl watch $long --after [1-9]" \
  "$dir/watch0.out" || fail "no re-attach hint after Ctrl-C: $(cat "$dir/watch0.out")"
"$ctl" --server "$sock" watch "$long" > "$dir/watch1.out" 2>&1 &
watch_pid=$!
for _ in $(seq 1 300); do grep -q "step" "$dir/watch1.out" && break; sleep 0.1; done
expect 0 cancel "$long"
set +e; wait "$watch_pid"; rc=$?; set -e
[ "$rc" -eq 9 ] || fail "watch of a cancelled job: exit $rc, want 9: $(cat "$dir/watch1.out")"
# Ended jobs used the dataset: off a terminal, deleting it needs --force.
expect 5 datasets delete "$ds"
echo "$err" | grep -q "was used by [0-9]* ended jobs (.*), which could not be rerun .* (--force)" ||
  fail "delete of a dataset ended jobs used: $err"
expect 0 datasets delete "$ds" --force
expect 4 datasets delete "$ds"
# Ended jobs go with their logs and checkpoints; their output models stay until deleted.
expect 0 jobs delete "$long" "$followed"
[ "$out" = "$(printf 'deleted %s\ndeleted %s' "$long" "$followed")" ] || fail "jobs delete: $out"
[ ! -e "$dir/data/jobs/$long" ] || fail "jobs delete left the job's files"
expect 4 get "$long"
expect 4 jobs delete "$long"
expect 0 models get "$model"
expect 0 models delete "$model"
expect 4 models get "$model"
# The same file imported again is the model imported before.
expect 0 models import "$src/models/base-mini.safetensors" --name again -o name
[ "$out" = "$base" ] || fail "a second import of the same file: $out"
echo "$err" | grep -q "is already imported as $base (base-mini)" || fail "second import: $err"
# A Hugging Face checkpoint directory (a tiny Llama with grouped-query attention, written by the
# test reference): the server's slim-train converts it, keeping softmax attention or converting
# to Performer features; the same conversion again is the model imported before; the imported
# model generates; feature-map options for a model file, unknown maps and a directory that is
# not a checkpoint are refused by name.
/usr/bin/python3 "$src/tests/reference/hf_reference.py" make "$dir/hf-llama" --model-type llama --vocab 256 \
  --heads 4 --kv-heads 2 > /dev/null
expect 0 models import "$dir/hf-llama/" --output json
hf=$(echo "$out" | json 'd["id"]')
[ "$(echo "$out" | json 'd["name"]')" = hf-llama ] || fail "checkpoint import name: $out"
[ "$(echo "$out" | json 'json.loads(d["config_json"])["feature_map"] + " " + json.loads(d["config_json"])["n_kv_heads"]')" = "softmax 2" ] \
  || fail "checkpoint import config: $out"
expect 0 models import "$dir/hf-llama" --feature-map favor+ --features 8 --name hf-favor --output json
[ "$(echo "$out" | json 'json.loads(d["config_json"])["feature_map"]')" = favor+ ] || fail "conversion: $out"
[ "$(echo "$out" | json 'd["id"]')" != "$hf" ] || fail "the favor+ conversion is the softmax import"
expect 0 models import "$dir/hf-llama" -o name
[ "$out" = "$hf" ] || fail "a second import of the same checkpoint: $out"
expect 0 generate "$hf" --prompt "slim" --max-tokens 4 --seed 1
# With a tokenizer.json in the checkpoint, the model carries it and slimd's Generate streams its
# decoding (the worker decodes; slimd needs no tokenizer): ids 256..299 are " wNN" words, which
# bytes would print as '?', and the streamed words are those slim-train generate prints itself.
/usr/bin/python3 "$src/tests/reference/hf_reference.py" make "$dir/hf-tok" --model-type llama --vocab 300 > /dev/null
/usr/bin/python3 - "$dir/hf-tok/tokenizer.json" <<'PY'
import json, sys
bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
cs = bs[:]
n = 0
for b in range(256):
    if b not in bs:
        bs.append(b); cs.append(256 + n); n += 1
vocab = {chr(c): b for b, c in zip(bs, cs)}
vocab.update({"\u0120w%02d" % i: 256 + i for i in range(44)})
json.dump({"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True},
           "decoder": {"type": "ByteLevel"}, "model": {"type": "BPE", "vocab": vocab, "merges": []}}, open(sys.argv[1], "w"))
PY
expect 0 models import "$dir/hf-tok" --output json
tok=$(echo "$out" | json 'd["id"]')
[ "$(echo "$out" | json 'json.loads(d["config_json"])["tokenizer"]')" = hf-json ] || fail "tokenizer import: $out"
expect 0 generate "$tok" --prompt "the" --max-tokens 40 --seed 5
streamed="$out"
echo "$streamed" | grep -qE ' w[0-9]{2}' || fail "Generate did not decode with the model's tokenizer: $streamed"
"$train" import-hf --dir "$dir/hf-tok" --out "$dir/hf-tok.safetensors" > /dev/null
local_text=$("$train" generate --model "$dir/hf-tok.safetensors" --prompt "the" --max-tokens 40 --seed 5)
# (Bytes that are not UTF-8 reach the client as U+FFFD; the words are ASCII and must agree.)
[ "$(grep -oE ' w[0-9]{2}' <<<"$streamed")" = "$(grep -oE ' w[0-9]{2}' <<<"$local_text")" ] \
  || fail "Generate streamed '$streamed', slim-train generate printed '$local_text'"
# A GPT-2-sized vocabulary makes the embedding most of the model: its load once held the NaN
# check's full-size temporaries too (3.4 × the file), beyond Generate's reservation, so every
# Generate of such a model failed (docs/service.md, "Generation").
cat > "$dir/gpt2-vocab.json" <<'EOF'
{"model_type": "gpt2", "vocab_size": 50257, "n_embd": 64, "n_layer": 1, "n_head": 2, "n_inner": 128, "n_positions": 64}
EOF
"$train" init --hf-config "$dir/gpt2-vocab.json" --out "$dir/gpt2-vocab.safetensors" > /dev/null
expect 0 models import "$dir/gpt2-vocab.safetensors" -o name
expect 0 generate "$out" --prompt "slim" --max-tokens 8 --seed 1
expect 2 models import "$src/models/base-mini.safetensors" --feature-map favor+
echo "$err" | grep -q "only for a Hugging Face checkpoint directory" || fail "feature map for a file: $err"
expect 2 models import "$dir/hf-llama" --feature-map linear
echo "$err" | grep -q "feature_map: unknown value 'linear'" || fail "unknown feature map: $err"
mkdir "$dir/not-a-checkpoint"
expect 2 models import "$dir/not-a-checkpoint"
echo "$err" | grep -q "config.json" || fail "directory without config: $err"

# watch survives slimd being killed and restarted
expect 0 datasets upload "$dir/docs.txt" --output json
ds=$(echo "$out" | json 'd["id"]')
sed "s/train: \[.*\]/train: [$ds]/" "$dir/job.yaml" > "$dir/job2.yaml"
expect 0 submit "$dir/job2.yaml" --steps 400 --output json
again=$(echo "$out" | json 'd["id"]')
"$ctl" --server "$sock" watch "$again" --reconnect-timeout 120 > "$dir/watch2.out" 2>"$dir/watch2.err" &
watch_pid=$!
for _ in $(seq 1 600); do grep -q "checkpoint" "$dir/watch2.out" && break; sleep 0.1; done
kill -KILL "$slimd_pid"; wait "$slimd_pid" 2>/dev/null || true
start_slimd
set +e; wait "$watch_pid"; rc=$?; set -e
[ "$rc" -eq 0 ] || fail "watch across a restart: exit $rc: $(tail -5 "$dir/watch2.out") $(cat "$dir/watch2.err")"
grep -q "reconnecting" "$dir/watch2.err" || fail "watch did not reconnect: $(cat "$dir/watch2.err")"
grep -q "requeued" "$dir/watch2.out" || fail "watch missed the requeued event"
grep -q "SUCCEEDED" "$dir/watch2.out" || fail "watch did not see the end"

# A full disk, here slimd's file-size limit (writes fail with EFBIG as they do with ENOSPC on a
# full disk), ends an upload with the cause and the file named, and leaves no partial file.
limited="unix:$dir/limited.sock"
( ulimit -f 4096; exec "$slimd" --listen "$limited" --data-dir "$dir/limited" --devices cpu:64MiB --worker-footprint 0 \
    --worker-binary "$train" --metrics-address off ) >>"$dir/slimd.log" 2>&1 &
limited_pid=$!
for _ in $(seq 1 200); do "$ctl" health --server "$limited" >/dev/null 2>&1 && break; sleep 0.1; done
head -c 6000000 /dev/urandom | base64 > "$dir/big.txt"
set +e; "$ctl" --server "$limited" datasets upload "$dir/big.txt" 2>"$dir/err"; rc=$?; set -e
[ "$rc" -eq 3 ] || fail "upload past the file-size limit: exit $rc, want 3: $(cat "$dir/err")"
grep -qE "cannot write the upload to tmp/upload-[0-9-]+ in the data directory: EFBIG" "$dir/err" ||
  fail "upload past the file-size limit: $(cat "$dir/err")"
[ -z "$(ls -A "$dir/limited/tmp")" ] || fail "a partial upload was left: $(ls "$dir/limited/tmp")"
"$ctl" --server "$limited" health >/dev/null || fail "slimd unhealthy after a failed upload"
kill -TERM "$limited_pid"; wait "$limited_pid" || true
rm -f "$dir/big.txt"

# TLS and bearer tokens: a certificate made here, a tokens file with a digest only.
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$dir/key.pem" -out "$dir/cert.pem" -days 1 -subj "/CN=localhost" \
  -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" 2>/dev/null
printf 'tokens:\n  - {sha256: %s, tenant: alice, role: user}\n' "$(printf 'tok-alice' | sha256sum | cut -d' ' -f1)" \
  > "$dir/tokens.yaml"
# A key that is not the certificate's is named as such, not reported as "cannot listen".
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$dir/other-key.pem" 2>/dev/null
set +e
"$slimd" --listen 127.0.0.1:0 --data-dir "$dir/tls-bad" --metrics-address off --worker-binary "$train" \
  --tls-cert "$dir/cert.pem" --tls-key "$dir/other-key.pem" --tokens-file "$dir/tokens.yaml" 2>"$dir/err"; rc=$?
set -e
[ "$rc" -eq 2 ] || fail "slimd with a mismatched key: exit $rc"
grep -qF -- "--tls-key: $dir/other-key.pem does not match the certificate in --tls-cert" "$dir/err" ||
  fail "mismatched key not named: $(cat "$dir/err")"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$slimd" --listen "127.0.0.1:$port" --data-dir "$dir/tls-data" --metrics-address off --worker-binary "$train" \
  --tls-cert "$dir/cert.pem" --tls-key "$dir/key.pem" --tokens-file "$dir/tokens.yaml" >>"$dir/slimd.log" 2>&1 &
tls_pid=$!
sock="127.0.0.1:$port"
for _ in $(seq 1 100); do grep -q "listening on 127.0.0.1:$port (TLS)" "$dir/slimd.log" && break; sleep 0.1; done
expect 0 devices --tls --ca-cert "$dir/cert.pem" --token tok-alice
echo "$out" | grep -q "cpu:0" || fail "devices over TLS: $out"
expect 7 devices --tls --ca-cert "$dir/cert.pem"
echo "$err" | grep -q "missing bearer token" || fail "no token: $err"
expect 7 devices --tls --ca-cert "$dir/cert.pem" --token tok-bob
expect 0 health --tls --ca-cert "$dir/cert.pem"                        # health needs no token
SLIM_TOKEN=tok-alice SLIM_CA_CERT="$dir/cert.pem" expect 0 devices   # from the environment
expect 6 devices --token tok-alice --timeout 3                        # plaintext to a TLS port
kill -TERM "$tls_pid"; wait "$tls_pid" || true
# Without a tokens file slimd refuses to listen beyond loopback.
set +e; "$slimd" --listen 0.0.0.0:0 --data-dir "$dir/open-data" --metrics-address off 2>"$dir/err"; rc=$?; set -e
[ "$rc" -eq 2 ] || fail "slimd on 0.0.0.0 without tokens: exit $rc"
grep -q "tokens-file is required" "$dir/err" || fail "no explanation: $(cat "$dir/err")"
echo PASS
