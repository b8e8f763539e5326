#!/usr/bin/env bash
# The same effect without slimd: slim-bench (preset small, L = 2048, C = 256, subtract, 8 timed
# steps after 1 warm-up), one process and two at once, with OpenBLAS's default threads (every
# core) and with one thread each (OPENBLAS_NUM_THREADS=1). Writes slim-bench.txt here.
# Usage: [OUT=name] slim-bench.sh [build dir]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=$(cd "${1:-build}" && pwd)
run() {
  "$build/tools/slim-bench" --preset small --seq-len 2048 --chunk 256 --mode subtract --steps 8 --warmup 1 --json |
    tail -1 | python3 -c "import json,sys; print(json.loads(sys.stdin.read())['tokens_per_s'])"
}
{
  echo "machine: $(nproc) cores; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "one process, default threads: $(run) tokens/s"
  echo "one process, 1 thread: $(OPENBLAS_NUM_THREADS=1 run) tokens/s"
  a=$(mktemp); b=$(mktemp)
  run >"$a" & run >"$b"; wait
  echo "two processes, default threads: $(cat "$a") + $(cat "$b") tokens/s"
  OPENBLAS_NUM_THREADS=1 run >"$a" & OPENBLAS_NUM_THREADS=1 run >"$b"; wait
  echo "two processes, 1 thread each: $(cat "$a") + $(cat "$b") tokens/s"
  rm -f "$a" "$b"
} | tee "$here/${OUT:-slim-bench}.txt"
