#!/usr/bin/env bash
# One-call GPU check for the device machine (CUDA LibTorch inside PyTorch, no gRPC): builds
# the engine, its tests and tools against that LibTorch, runs the engine tests, then the
# slim-bench GPU measurements of issue 2 (preset paper-iv, bf16 autocast). JSON lines and logs
# go to ${OUT:-/tmp/slim-gpu}. Usage on the device machine:  scripts/gpu-check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp/slim-gpu}"
mkdir -p "$out"
prefix=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')
# -Werror off: a newer compiler may warn where g++ 12 does not; the build must not stop on it.
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DSLIM_ENGINE_ONLY=ON \
  -DSLIM_WERROR=OFF -DCMAKE_PREFIX_PATH="$prefix" 2>&1 | tee "$out/configure.log" | tail -3
cmake --build build-gpu -j "$(nproc)" 2>&1 | tee "$out/build.log" | tail -3
(cd build-gpu && ctest -j 8 --output-on-failure 2>&1 | tee "$out/ctest.log" | tail -5)
bench=build-gpu/tools/slim-bench
common=(--preset paper-iv --device cuda --precision bf16 --steps 3 --warmup 2 --json)
{
  "$bench" "${common[@]}" --seq-len 16384 --mode full,subtract --chunk 4096,1024
  "$bench" "${common[@]}" --seq-len 65536 --mode subtract --chunk 8192
  "$bench" "${common[@]}" --seq-len 1048576 --mode subtract --chunk 8192 --steps 1 --warmup 1
} 2>&1 | tee "$out/bench-cuda.jsonl"
