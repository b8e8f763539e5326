#!/usr/bin/env bash
# The GPU check (issue 19): one prepared run for a lent GPU machine (one 10-minute command, about
# 8 minutes of work), and its rehearsal on the CPU in CI with tiny sizes (--device cpu), so that
# its logic is tested on every change. Phases run in order of value, each under a time box taken
# from what is left of the budget; a phase that fails or times out is recorded and the next one
# runs. Everything goes to $OUT (or --out DIR) as JSON lines plus one log per phase:
#   summary.jsonl   one line per phase {"phase","status","seconds","log"} and per check
#                   {"check","ok",...}; the last line is {"done": true, "ok": ...}
#   env.json, bench.jsonl, plan.jsonl, packing.jsonl, profile.jsonl, cuda-tests.json, *.log
# Exit status: 0 when every phase and check passed, 1 otherwise.
#
#   scripts/gpu-check.sh                                  # on the GPU machine: builds build-gpu/
#   scripts/gpu-check.sh --device cpu --build-dir build   # the rehearsal, with built binaries
#
# On the GPU machine it configures against the CUDA LibTorch inside PyTorch with the workarounds
# its CMake package needs (cmake/TorchCudaCompat.cmake; cuDNN and NCCL paths of the wheel),
# builds only slim-train, slim-bench and engine_cuda_test, and measures what docs/operations.md
# ("Running on GPUs") lists. Targets (H200; an H100 reads about 0.7x on memory-bound rows) are
# printed beside the measurements in summary.jsonl; they are reported, not enforced.
set -uo pipefail
cd "$(dirname "$0")/.."
src=$(pwd)

device=cuda
build_dir=""
budget=480
out="${OUT:-/tmp/slim-gpu-check}"
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device="$2"; shift 2 ;;
    --build-dir) build_dir="$2"; shift 2 ;;
    --budget) budget="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "gpu-check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case "$device" in
  cuda|cpu) ;;
  *) echo "gpu-check: --device must be cuda or cpu, got '$device'" >&2; exit 2 ;;
esac
mkdir -p "$out"
out=$(cd "$out" && pwd)
summary="$out/summary.jsonl"
: > "$summary"
start=$(date +%s)
export SLIM_CACHE_DIR="$out/cache"  # calibrations of this run only
report="python3 $src/scripts/gpu_check_report.py"

left() { echo $((budget - ($(date +%s) - start))); }

# phase NAME MAX_SECONDS COMMAND...: runs COMMAND (a shell function or program) with its output
# in NAME.log, at most MAX_SECONDS or what is left of the budget; records the outcome. Job
# control (set -m) gives each phase its own process group, so a time-out stops all of it.
set -m
phase() {
  local name="$1" max="$2"; shift 2
  local t0 status limit rc
  limit=$(left)
  [ "$max" -lt "$limit" ] && limit="$max"
  if [ "$limit" -lt 5 ]; then
    echo "{\"phase\":\"$name\",\"status\":\"skipped\",\"why\":\"budget spent\"}" >> "$summary"
    echo "gpu-check: $name skipped (budget spent)"
    return 1
  fi
  t0=$(date +%s)
  echo "gpu-check: $name (up to ${limit}s)"
  rm -f "$out/.timed-out"
  "$@" > "$out/$name.log" 2>&1 &
  local pid=$!
  (sleep "$limit"; touch "$out/.timed-out"; kill -TERM -- "-$pid"; sleep 10; kill -KILL -- "-$pid") \
    > /dev/null 2>&1 &
  local watchdog=$!
  wait "$pid"
  rc=$?
  kill -- "-$watchdog" 2>/dev/null
  wait "$watchdog" 2>/dev/null
  if [ -e "$out/.timed-out" ]; then
    status=timeout
  elif [ "$rc" -eq 0 ]; then
    status=ok
  else
    status=failed
  fi
  echo "{\"phase\":\"$name\",\"status\":\"$status\",\"rc\":$rc,\"seconds\":$(( $(date +%s) - t0 )),\"log\":\"$name.log\"}" >> "$summary"
  [ "$status" = ok ] || { echo "gpu-check: $name $status (rc $rc), last lines:"; tail -5 "$out/$name.log"; }
  [ "$status" = ok ]
}

# Sizes: the issue's on CUDA (paper-iv, bf16, AdamW); tiny ones on the CPU, same logic.
if [ "$device" = cuda ]; then
  dev=cuda:0; preset=paper-iv; precision=bf16
  bench_runs=(
    "--seq-len 16384 --mode full,subtract --chunk 4096,1024"
    "--seq-len 65536 --mode subtract --chunk 4096"
    "--seq-len 131072 --mode subtract --chunk 8192"
    "--seq-len 1048576 --mode subtract --chunk 8192 --steps 1 --warmup 1"
    "--seq-len 16384,65536,131072 --mode sdpa --steps 2"
  )
  # The 1M run again with the caching allocator's expandable segments (less fragmentation).
  expandable_run="--seq-len 1048576 --mode subtract --chunk 8192 --steps 1 --warmup 1"
  plan_args="--seq-len 65536 --quota 3GiB,6GiB,12GiB"
  profile_args="--seq-len 16384 --mode subtract --chunk 1024 --steps 1 --warmup 1"
  pack_preset=small; pack_len=16384; pack_quotas=(1GiB 2GiB 3GiB 4GiB); pack_steps=6; over_quota=1GiB
else
  dev=cpu; preset=tiny; precision=fp32
  bench_runs=(
    "--seq-len 1024 --mode full,subtract --chunk 256,64"
    "--seq-len 4096 --mode subtract --chunk 256"
    "--seq-len 512,1024 --mode sdpa"
  )
  plan_args="--seq-len 4096 --quota 6MiB,12MiB,24MiB"
  profile_args="--seq-len 1024 --mode subtract --chunk 64 --steps 1 --warmup 1 --torch-attention"
  pack_preset=tiny; pack_len=1024; pack_quotas=(8MiB 16MiB); pack_steps=3; over_quota=3MiB
  expandable_run=""
fi

# 0. Environment: versions and where the CUDA pieces are.
environment() {
  python3 - "$device" <<'EOF'
import json, os, shutil, subprocess, sys
def run(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception as e:
        return "unavailable: %s" % e
env = {"device": sys.argv[1], "cmake": run("cmake", "--version").split("\n")[0],
       "cxx": run("c++", "--version").split("\n")[0], "nproc": os.cpu_count()}
if shutil.which("nvcc"): env["nvcc"] = run("nvcc", "--version").split("\n")[-1]
if shutil.which("nvidia-smi"):
    env["gpus"] = run("nvidia-smi", "--query-gpu=name,memory.total,driver_version,compute_cap", "--format=csv,noheader")
try:
    import torch
    sp = os.path.dirname(os.path.dirname(torch.__file__))
    env.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cxx11_abi=torch._C._GLIBCXX_USE_CXX11_ABI,
               cmake_prefix=torch.utils.cmake_prefix_path,
               cudnn=[p for p in [os.path.join(sp, "nvidia/cudnn/include/cudnn.h")] if os.path.exists(p)],
               nccl=[p for p in [os.path.join(sp, "nvidia/nccl/include/nccl.h")] if os.path.exists(p)])
except ImportError:
    env["torch"] = "no python torch (Debian's LibTorch)"
print(json.dumps(env))
EOF
}
phase environment 60 environment && tail -1 "$out/environment.log" > "$out/env.json"

# 1. Configure and build (unless --build-dir names a built tree).
configure_and_build() {
  local prefix sp extra=()
  prefix=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')
  sp=$(python3 -c 'import torch,os;print(os.path.dirname(os.path.dirname(torch.__file__)))')
  # The wheel ships libcudnn.so.9 but no libcudnn.so, which FindCUDNN looks for; and its own nccl.h.
  if [ -f "$sp/nvidia/cudnn/include/cudnn.h" ]; then
    local lib
    lib=$(ls "$sp"/nvidia/cudnn/lib/libcudnn.so* 2>/dev/null | head -1)
    extra+=("-DCUDNN_INCLUDE_PATH=$sp/nvidia/cudnn/include" "-DCUDNN_LIBRARY_PATH=$lib")
  fi
  [ -f "$sp/nvidia/nccl/include/nccl.h" ] && extra+=("-DSLIM_NCCL_INCLUDE_DIR=$sp/nvidia/nccl/include")
  if command -v nvcc >/dev/null; then
    export CUDACXX=$(command -v nvcc)
    extra+=("-DCUDAToolkit_ROOT=$(dirname "$(dirname "$CUDACXX")")")
  fi
  local cap
  cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1)
  if [ -n "$cap" ]; then
    export TORCH_CUDA_ARCH_LIST="$cap"
    extra+=("-DCMAKE_CUDA_ARCHITECTURES=${cap/./}")
  fi
  local generator=()
  command -v ninja >/dev/null && generator=(-G Ninja)
  # -Werror off: a newer compiler may warn where Debian's g++ 12 does not.
  cmake -S . -B build-gpu "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DSLIM_ENGINE_ONLY=ON \
    -DSLIM_WERROR=OFF -DCMAKE_PREFIX_PATH="$prefix" "${extra[@]}" || return 1
  cmake --build build-gpu -j "$(nproc)" --target slim-train slim-bench engine_cuda_test
}
if [ -z "$build_dir" ]; then
  phase build 300 configure_and_build || { echo '{"done":true,"ok":false}' >> "$summary"; exit 1; }
  build_dir=build-gpu
fi
train="$build_dir/tools/slim-train"
bench="$build_dir/tools/slim-bench"
cuda_test="$build_dir/tests/engine/engine_cuda_test"

# 2. What the binaries were built against, the devices, and a worker's fixed footprint.
identify() {
  "$train" build-info && "$train" devices --json && "$train" footprint --device "$dev" --json
}
phase identify 90 identify

# 3. The engine on the device: exactness (random and trained weights, both modes, fp32 and bf16),
#    caps, devices, checkpoints across devices. On the CPU they skip; the rehearsal checks that
#    they are there and run.
phase cuda-tests 120 "$cuda_test" --gtest_output="json:$out/cuda-tests.json"

# 4. Speed and peak memory.
benchmarks() {
  local args
  for args in "${bench_runs[@]}"; do
    # shellcheck disable=SC2086  # the word splitting of args is intended
    "$bench" --preset "$preset" --device "$dev" --precision "$precision" --steps 3 --warmup 1 --json $args \
      || echo "{\"failed\":\"slim-bench $args\"}"
  done | tee "$out/bench.jsonl"
  if [ -n "$expandable_run" ]; then
    # shellcheck disable=SC2086
    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True "$bench" --preset "$preset" --device "$dev" \
      --precision "$precision" --json $expandable_run \
      || echo "{\"failed\":\"slim-bench expandable_segments $expandable_run\"}"
  fi | tee -a "$out/bench.jsonl"
}
phase benchmarks 240 benchmarks

# 5. The planner on this device: predicted vs measured peak for three quotas.
planner() {
  # shellcheck disable=SC2086
  "$bench" --preset "$preset" --device "$dev" --precision "$precision" --steps 2 --warmup 1 --json $plan_args \
    | tee "$out/plan.jsonl"
}
phase planner 120 planner

# 6. Packing without gRPC: concurrent `slim-train run` workers with different quotas (so
#    different planned chunk sizes) on one device, their memory watched; beside them one worker
#    whose fixed chunk size (the whole sequence) needs more than its quota, which must fail
#    alone with RESOURCE_EXHAUSTED (exit status 3) while the others finish.
packing() {
  local dir="$out/packing" i pids=() q
  mkdir -p "$dir"
  cat "$src"/docs/*.md > "$dir/train.txt"
  for i in "${!pack_quotas[@]}"; do
    q=${pack_quotas[$i]}
    cat > "$dir/worker$i.yaml" <<EOF
model: {preset: $pack_preset, init_seed: $i}
data: {train: train.txt, validation_fraction: 0}
training: {seq_len: $pack_len, batch_size: 1, steps: $pack_steps, precision: $precision}
memory: {device: $dev, quota: $q}
EOF
  done
  cat > "$dir/over.yaml" <<EOF
model: {preset: $pack_preset, init_seed: 99}
data: {train: train.txt, validation_fraction: 0}
training: {seq_len: $pack_len, batch_size: 1, steps: $pack_steps, precision: $precision}
memory: {device: $dev, quota: $over_quota, chunk_size: $pack_len}
EOF
  # Calibrate once, so the workers start together rather than calibrating side by side.
  "$train" plan --spec "$dir/worker0.yaml" > "$dir/plan.txt" || return 1
  local sampler=""
  if [ "$device" = cuda ] && command -v nvidia-smi >/dev/null; then
    (while true; do
       nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits | sed "s/^/$(date +%s.%N), /"
       sleep 0.5
     done) > "$dir/nvidia-smi.csv" 2>/dev/null &
    sampler=$!
  fi
  for i in "${!pack_quotas[@]}"; do
    "$train" run --spec "$dir/worker$i.yaml" --out "$dir/out$i" --no-resume --events-fd 3 \
      3> "$dir/worker$i.events.jsonl" > "$dir/worker$i.log" 2>&1 &
    pids+=($!)
    echo "worker $i pid $! quota ${pack_quotas[$i]}"
    echo "$i ${pack_quotas[$i]} $!" >> "$dir/workers.txt"
  done
  "$train" run --spec "$dir/over.yaml" --out "$dir/out-over" --no-resume > "$dir/over.log" 2>&1 &
  local over=$!
  local failed=0 rc
  for i in "${!pids[@]}"; do
    wait "${pids[$i]}"
    rc=$?
    echo "$rc" > "$dir/worker$i.rc"
    [ "$rc" -eq 0 ] || { echo "worker $i exited $rc"; failed=1; }
  done
  wait "$over"
  echo $? > "$dir/over.rc"
  echo "over-quota worker exited $(cat "$dir/over.rc"): $(tail -1 "$dir/over.log")"
  [ -n "$sampler" ] && kill "$sampler" 2>/dev/null
  "$train" devices --json > "$dir/devices.json"
  "$train" footprint --device "$dev" --json > "$dir/footprint.json"
  return $failed
}
phase packing 150 packing

# 7. Where a SLiM step's time goes: operators (about one kernel each on CUDA) per slice per layer.
profile() {
  # shellcheck disable=SC2086
  "$bench" --preset "$preset" --device "$dev" --precision "$precision" --json --profile $profile_args \
    | tee "$out/profile.jsonl"
}
phase profile 90 profile

# 8. The checks and the table, from what the phases wrote.
$report --out "$out" --device "$device" >> "$summary"
ok=$(python3 -c '
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
bad = [l for l in lines if l.get("status") not in (None, "ok") or l.get("ok") is False]
print("true" if not bad else "false")' "$summary")
echo "{\"done\":true,\"ok\":$ok,\"seconds\":$(( $(date +%s) - start ))}" >> "$summary"
echo "gpu-check: done in $(( $(date +%s) - start ))s, ok=$ok; $summary"
grep -v '"status":"ok"' "$summary" | grep -v '"ok":true' || true
[ "$ok" = true ]
