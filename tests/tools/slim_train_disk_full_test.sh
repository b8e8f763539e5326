#!/usr/bin/env bash
# A checkpoint that cannot be written — the file-size limit (RLIMIT_FSIZE: EFBIG) always, and a
# really full filesystem (a 1-checkpoint tmpfs: ENOSPC) where this user may mount one — fails
# the run with a `failed` event that says what happened and which checkpoint is kept; the kept
# checkpoint is untouched, no temporary file is left, and running again with room resumes
# from it to the same final model as an uninterrupted run.
set -euo pipefail
bin="$1"; src="$2"
dir=$(mktemp -d)
mnt="$dir/small-disk"
cleanup() { mountpoint -q "$mnt" 2>/dev/null && umount "$mnt"; rm -rf "$dir"; }
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
cat "$src"/docs/*.md > "$dir/train.txt"

cat > "$dir/job.yaml" <<EOF
model: {preset: tiny, init_seed: 5}
data: {train: $dir/train.txt}
training:
  seq_len: 128
  batch_size: 2
  steps: 60
  optimizer: {name: adamw, lr: 3e-3}
memory: {chunk_size: 32}
checkpoint: {every: 10, keep: 2}
EOF

# The reference: one uninterrupted run.
"$bin" run --spec "$dir/job.yaml" --out "$dir/ref" >/dev/null

# A run stopped by SIGTERM after its step-10 checkpoint: the starting point of both cases.
"$bin" run --spec "$dir/job.yaml" --out "$dir/start" --progress-interval 0 --events-fd 3 3>"$dir/start.events" >/dev/null &
pid=$!
for _ in $(seq 1 1200); do
  grep -q '"event":"checkpoint"' "$dir/start.events" 2>/dev/null && break
  sleep 0.05
done
kill -TERM "$pid"
set +e; wait "$pid"; rc=$?; set -e
[ "$rc" -eq 75 ] || fail "SIGTERM: exit $rc, want 75"
ckpt_bytes=$(stat -c %s "$(ls -d "$dir"/start/checkpoints/* | tail -1)")

# Runs out_dir's job with `limit` applied by the shell that starts it; checks the failure and
# that the checkpoints are byte-for-byte what they were, then resumes with room.
check_failed_write() {  # $1 name, $2 out dir, $3 expected error text, $4.. command prefix
  local name="$1" out="$2" want="$3"; shift 3
  local before; before=$(cd "$out/checkpoints" && sha256sum *)
  set +e
  "$@" "$bin" run --spec "$dir/job.yaml" --out "$out" --progress-interval 0 --events-fd 3 \
    3>"$dir/$name.events" >/dev/null 2>"$dir/$name.stderr"
  rc=$?
  set -e
  [ "$rc" -eq 1 ] || fail "$name: exit $rc, want 1 (stderr: $(cat "$dir/$name.stderr"))"
  local last; last=$(tail -1 "$dir/$name.events")
  echo "$name: $last"
  echo "$last" | grep -q '"event":"failed"' || fail "$name: last event is not 'failed': $last"
  echo "$last" | grep -q '"code":"internal"' || fail "$name: failed event lacks code internal: $last"
  echo "$last" | grep -q "checkpoint at step [0-9]* not written: .*$want" || fail "$name: message does not say why: $last"
  echo "$last" | grep -q "the newest checkpoint .*/checkpoints/.* is kept" || fail "$name: message does not name the kept checkpoint: $last"
  [ "$(cd "$out/checkpoints" && sha256sum *)" = "$before" ] || fail "$name: the checkpoints changed"
  ! ls -a "$out/checkpoints" | grep -q '\.tmp\.' || fail "$name: a temporary file was left: $(ls -a "$out/checkpoints")"
}

# 1. File-size limit: the next checkpoint is bigger than the limit (ulimit -f counts KiB).
cp -a "$dir/start" "$dir/fsize"
check_failed_write fsize "$dir/fsize" "File too large" bash -c "ulimit -f $((ckpt_bytes / 2048)); exec \"\$@\"" limit
"$bin" run --spec "$dir/job.yaml" --out "$dir/fsize" >/dev/null
cmp "$dir/ref/model.safetensors" "$dir/fsize/model.safetensors" || fail "fsize: resumed model differs from the uninterrupted run"

# 2. A full filesystem: a tmpfs with room for what is there and half a checkpoint more.
mkdir -p "$mnt"
used=$(du -sb "$dir/start" | cut -f1)
if mount -t tmpfs -o size=$((used + ckpt_bytes / 2 + 65536)) tmpfs "$mnt" 2>"$dir/mount.err"; then
  cp -a "$dir/start/." "$mnt/"
  check_failed_write enospc "$mnt" "No space left on device"
  mkdir "$dir/enospc" && cp -a "$mnt/." "$dir/enospc/"   # the kept state, moved to a disk with room
  umount "$mnt"
  "$bin" run --spec "$dir/job.yaml" --out "$dir/enospc" >/dev/null
  cmp "$dir/ref/model.safetensors" "$dir/enospc/model.safetensors" || fail "enospc: resumed model differs"
else
  echo "NOTE: full-filesystem case not run: cannot mount a tmpfs here ($(cat "$dir/mount.err"))"
fi
echo "PASS"
