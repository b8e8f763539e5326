#!/usr/bin/env bash
# Reproduces the CPU measurements in this folder (Debian 12, 2 cores, OpenBLAS pthread).
# Usage: bench/results/2026-11-28-cpu/run.sh [build dir]   (writes *.jsonl next to this file)
set -euo pipefail
here=$(dirname "$0"); bench="${1:-build}/tools/slim-bench"
export SLIM_CACHE_DIR=$(mktemp -d)
# Issue 2: SLiM vs full backprop at L = 8192, and the same chunk at L = 65536.
"$bench" --preset small --seq-len 8192 --chunk 512 --mode full,subtract,boundaries --steps 3 --warmup 1 --json \
  | tee "$here/engine-small-L8192.jsonl"
"$bench" --preset small --seq-len 65536 --chunk 512 --mode subtract --steps 1 --warmup 1 --json \
  | tee "$here/engine-small-L65536.jsonl"
# Thread policy evidence: LibTorch intra-op threads = all cores vs slim's default of 1.
"$bench" --preset small --seq-len 8192 --chunk 512 --mode subtract,full --steps 2 --warmup 1 --threads 2 --json \
  | tee "$here/threads-2.jsonl"
# Issue 3: planner predictions vs measurements (calibrated on this machine first).
"$bench" --preset small --seq-len 2048,8192 --quota 80MiB,150MiB,400MiB,1GiB --steps 2 --warmup 1 --json \
  | tee "$here/planner-small.jsonl"
"$bench" --preset tiny --batch 2 --seq-len 4096 --quota 2MiB,8MiB,32MiB --steps 2 --warmup 1 --json \
  | tee "$here/planner-tiny.jsonl"
rm -rf "$SLIM_CACHE_DIR"
