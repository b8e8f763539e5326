#!/usr/bin/env bash
# End-to-end data parallelism with real `slim-train run` processes (Gloo on CPU):
#  1. two ranks meeting over tcp:// train what one worker trains with the same global batch:
#     losses within 1e-6 and final weights within 1e-4 (AdamW; relative, norm-wise — why these
#     bounds: tests/engine/data_parallel_test.cc); rank 0 alone reports the job and writes files;
#  2. SIGTERM to rank 1 alone stops both after the same step (exit 75) with rank 0's
#     checkpoint; both rerun (file:// this time) and resume to the same final model, byte for
#     byte, as an uninterrupted two-rank run;
#  3. a SIGKILLed rank makes the other exit non-zero with a message naming the failure;
#  4. inconsistent flags fail with exit status 2 and a message naming the flag or field.
set -euo pipefail
bin="$1"; src="$2"
# A LibTorch without Gloo's headers (PyTorch's CUDA wheels) builds slim without data parallelism
# on CPU: nothing to test then (exit 77 = skipped, SKIP_RETURN_CODE in CMakeLists.txt).
if ! "$bin" build-info | grep -q '"gloo"'; then
  echo "SKIP: this slim-train has no Gloo backend ($("$bin" build-info))"
  exit 77
fi
dir=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; for f in "$dir"/*.log; do echo "--- $f" >&2; tail -5 "$f" >&2; done; exit 1; }
compare="python3 $src/tests/tools/compare_runs.py"
# Two ranks share this machine's cores: one BLAS thread each.
export OPENBLAS_NUM_THREADS=1
cat "$src"/docs/*.md > "$dir/train.txt"
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# The value of "key" in the last event line of kind $2 in file $1.
field() { grep "\"event\":\"$2\"" "$1" | tail -1 | sed -n "s/.*\"$3\":\"\{0,1\}\([^,\"}]*\).*/\1/p"; }
# Waits until file $1 has a line matching $2 (the run being watched is process $3).
wait_for() {
  for _ in $(seq 1 1200); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    kill -0 "$3" 2>/dev/null || fail "process $3 ended before '$2' appeared in $1"
    sleep 0.05
  done
  fail "'$2' never appeared in $1"
}

cat > "$dir/single.yaml" <<'EOF'
model:
  preset: tiny
  init_seed: 3
data:
  train: train.txt
  validation_fraction: 0.1
training:
  seq_len: 128
  batch_size: 4
  grad_accum: 2
  steps: 30
  grad_clip: 0.5
  optimizer: {name: adamw, lr: 3e-3, weight_decay: 0.01}
  schedule: {name: cosine, warmup_steps: 5}
memory:
  chunk_size: 32
eval: {every: 15, max_sequences: 8}
checkpoint: {every: 10, keep: 2}
EOF
sed 's/^eval:/data_parallel: {workers: 2}\neval:/' "$dir/single.yaml" > "$dir/dp.yaml"

# Starts rank $1 of 2 on spec $2, output dir $3, init URL $4, events to $5.events; logs to
# $5.log; the pid is left in $started.
start_rank() {
  "$bin" run --spec "$2" --out "$3" --dist-rank "$1" --dist-world-size 2 --dist-init "$4" --dist-timeout 60 \
    --progress-interval 0 --events-fd 3 3>"$5.events" >"$5.log" 2>&1 &
  started=$!
  pids+=("$started")
}
# Waits for process $1 and checks its exit status is $2.
expect_exit() {
  set +e; wait "$1"; local rc=$?; set -e
  [ "$rc" -eq "$2" ] || fail "$3: exit $rc, want $2"
}

# 1. One worker, then two ranks over TCP (rank 1 starts first and waits for rank 0's store).
"$bin" run --spec "$dir/single.yaml" --out "$dir/single" --progress-interval 0 --events-fd 3 \
  3>"$dir/single.events" >"$dir/single.log"
url="tcp://127.0.0.1:$(free_port)"
start_rank 1 "$dir/dp.yaml" "$dir/dp" "$url" "$dir/dp1"; r1=$started
start_rank 0 "$dir/dp.yaml" "$dir/dp" "$url" "$dir/dp0"; r0=$started
expect_exit "$r0" 0 "rank 0"
expect_exit "$r1" 0 "rank 1"
[ "$(grep -c '"event":"progress"' "$dir/dp0.events")" -eq 30 ] || fail "rank 0: expected 30 progress events"
[ "$(grep -c '"event":"eval"' "$dir/dp0.events")" -eq 2 ] || fail "rank 0: expected 2 eval events"
[ "$(field "$dir/dp0.events" started world_size)" = 2 ] || fail "rank 0's started event lacks world_size 2"
[ "$(wc -l < "$dir/dp1.events")" -eq 1 ] || fail "rank 1 reported more than its start: $(cat "$dir/dp1.events")"
[ "$(field "$dir/dp1.events" started rank)" = 1 ] || fail "rank 1's started event lacks rank 1"
grep -q "done at step 30; rank 0 wrote $dir/dp/model.safetensors" "$dir/dp1.log" || fail "rank 1 did not report the end"
[ "$(ls "$dir/dp/checkpoints" | wc -l)" -eq 2 ] || fail "expected the 2 newest checkpoints: $(ls "$dir/dp/checkpoints")"
$compare losses "$dir/dp0.events" "$dir/single.events" 1e-6 || fail "two ranks: losses differ from one worker's"
$compare models "$dir/dp/model.safetensors" "$dir/single/model.safetensors" 1e-4 \
  || fail "two ranks: final weights differ from one worker's"
# The same comparison fails for a run that is not the same (it can fail).
sed 's/lr: 3e-3/lr: 2.9e-3/' "$dir/single.yaml" > "$dir/other.yaml"
"$bin" run --spec "$dir/other.yaml" --out "$dir/other" >/dev/null
! $compare models "$dir/other/model.safetensors" "$dir/single/model.safetensors" 1e-4 2>/dev/null \
  || fail "a different learning rate passed the weight comparison"

# 2. SIGTERM to rank 1 alone: both stop after the same step; resuming matches an uninterrupted
#    two-rank run bit for bit (the same shares summed in the same order).
sed 's/steps: 30/steps: 200/' "$dir/dp.yaml" > "$dir/long.yaml"
url="tcp://127.0.0.1:$(free_port)"
start_rank 0 "$dir/long.yaml" "$dir/ref" "$url" "$dir/ref0"; r0=$started
start_rank 1 "$dir/long.yaml" "$dir/ref" "$url" "$dir/ref1"; r1=$started
expect_exit "$r0" 0 "uninterrupted rank 0"
expect_exit "$r1" 0 "uninterrupted rank 1"
start_rank 0 "$dir/long.yaml" "$dir/cut" "file://$dir/init-1" "$dir/cut0"; r0=$started
start_rank 1 "$dir/long.yaml" "$dir/cut" "file://$dir/init-1" "$dir/cut1"; r1=$started
wait_for "$dir/cut0.events" '"step":5,' "$r0"
kill -TERM "$r1"
expect_exit "$r0" 75 "stopped rank 0"
expect_exit "$r1" 75 "stopped rank 1"
tail -1 "$dir/cut0.events" | grep -q '"event":"stopped"' || fail "rank 0's last event is not 'stopped'"
stopped_at=$(field "$dir/cut0.events" stopped step)
[ "$stopped_at" -lt 200 ] || fail "stopped at $stopped_at"
[ -f "$(field "$dir/cut0.events" stopped path)" ] || fail "the stop checkpoint does not exist"
grep -q "stopped at step $stopped_at with the group" "$dir/cut1.log" || fail "rank 1 did not stop at step $stopped_at"
start_rank 0 "$dir/long.yaml" "$dir/cut" "file://$dir/init-2" "$dir/resume0"; r0=$started
start_rank 1 "$dir/long.yaml" "$dir/cut" "file://$dir/init-2" "$dir/resume1"; r1=$started
expect_exit "$r0" 0 "resumed rank 0"
expect_exit "$r1" 0 "resumed rank 1"
[ "$(field "$dir/resume0.events" started resumed_from_step)" = "$stopped_at" ] || fail "rank 0 did not resume from $stopped_at"
[ "$(field "$dir/resume1.events" started resumed_from_step)" = "$stopped_at" ] || fail "rank 1 did not resume from $stopped_at"
cmp "$dir/ref/model.safetensors" "$dir/cut/model.safetensors" || fail "the resumed group's model differs"
echo "SIGTERM to rank 1: both stopped at step $stopped_at, resumed, final model identical"

# 3. SIGKILL one rank: the other fails with a clear message instead of waiting.
url="tcp://127.0.0.1:$(free_port)"
start_rank 0 "$dir/long.yaml" "$dir/killed" "$url" "$dir/kill0"; r0=$started
start_rank 1 "$dir/long.yaml" "$dir/killed" "$url" "$dir/kill1"; r1=$started
wait_for "$dir/kill0.events" '"step":3,' "$r0"
kill -KILL "$r1"
set +e; wait "$r1"; wait "$r0"; rc=$?; set -e
[ "$rc" -ne 0 ] && [ "$rc" -ne 75 ] || fail "rank 0 exited $rc after its peer was killed"
grep -q "slim-train (rank 0 of 2): data-parallel .* failed on rank 0 of 2: another rank exited, failed or did not answer" \
  "$dir/kill0.log" || fail "rank 0's error does not name the failure: $(tail -2 "$dir/kill0.log")"
grep -q '"event":"failed"' "$dir/kill0.events" || fail "rank 0 reported no failed event"
echo "SIGKILL to rank 1: rank 0 exited $rc: $(grep -m1 -o 'data-parallel.*' "$dir/kill0.log")"

# 4. Inconsistent flags.
expect_bad() {  # name, expected stderr text, arguments...
  local name="$1" text="$2"; shift 2
  set +e; "$bin" run "$@" >/dev/null 2>"$dir/err"; local rc=$?; set -e
  [ "$rc" -eq 2 ] || fail "$name: exit $rc, want 2 ($(cat "$dir/err"))"
  grep -qF -- "$text" "$dir/err" || fail "$name: stderr lacks '$text': $(cat "$dir/err")"
}
expect_bad "workers without ranks" "data_parallel.workers: 2 workers run as one slim-train process per rank" \
  --spec "$dir/dp.yaml" --out "$dir/bad"
expect_bad "world size differs" "dist-world-size: 2 differs from the spec's data_parallel.workers 1" \
  --spec "$dir/single.yaml" --out "$dir/bad" --dist-rank 0 --dist-world-size 2 --dist-init "file://$dir/init-bad"
expect_bad "rank out of range" "--dist-rank: must be in 0..1, got 2" \
  --spec "$dir/dp.yaml" --out "$dir/bad" --dist-rank 2 --dist-world-size 2 --dist-init "file://$dir/init-bad"
expect_bad "no init" "--dist-init: '' must be tcp://HOST:PORT or file://PATH" \
  --spec "$dir/dp.yaml" --out "$dir/bad" --dist-rank 0 --dist-world-size 2
echo PASS
