#!/usr/bin/env bash
# Issue 16's evidence. Two parts, written next to this script:
#  1. table.txt — the step-1 loss of the shipped base model fine-tuned as in
#     examples/finetune-docs.yaml (LoRA, seq_len 1024, batch 4, AdamW) with one step, for
#     C = 1024 (ordinary backprop) and C = 64 (boundaries), C = 256 and 64 (subtract), through
#     `slim-train run`. Every row must be equal (before the fix subtract gave 4.8801 and 5.1025).
#  2. bench-<name>.jsonl — slim-bench, preset small, L = 8192 and 65,536, C = 512, subtract and
#     boundaries (and full backprop at 8192), 3 timed steps after 1 warm-up, for each build
#     given: the fixed one and, to compare, one built from the commit before the fix.
# Usage: run.sh BUILD_DIR [OLD_BUILD_DIR]   (run it on an otherwise idle machine)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
build=$(cd "$1" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

{
  echo "# slim-train run, 1 step, $(git -C "$repo" rev-parse --short HEAD), $(date -u +%FT%TZ)"
  for row in "1024 boundaries" "64 boundaries" "256 subtract" "64 subtract"; do
    set -- $row
    sed -e "s#\.\./#$repo/#g" -e "s/steps: 40/steps: 1/" -e "s/warmup_steps: 5/warmup_steps: 0/" \
        -e "/quota: 96MiB/d" -e "s/chunk_size: auto/chunk_size: $1\n  mode: $2/" \
        "$repo/examples/finetune-docs.yaml" > "$work/spec-$1-$2.yaml"
    loss=$("$build/tools/slim-train" run --spec "$work/spec-$1-$2.yaml" --out "$work/run-$1-$2" \
             --no-resume --progress-interval 0 2>&1 | sed -n 's/^step 1\/1  loss \([0-9.]*\).*/\1/p')
    echo "chunk_size $1 mode $2: step-1 loss $loss"
  done
} | tee "$here/table.txt"

bench() {  # bench NAME BUILD
  "$2/tools/slim-bench" --preset small --seq-len 8192 --chunk 512 --mode subtract,boundaries,full \
    --steps 3 --warmup 1 --json | tee "$here/bench-$1.jsonl"
  "$2/tools/slim-bench" --preset small --seq-len 65536 --chunk 512 --mode subtract,boundaries \
    --steps 3 --warmup 1 --json | tee -a "$here/bench-$1.jsonl"
}
bench fixed "$build"
if [ $# -ge 2 ]; then bench before "$(cd "$2" && pwd)"; fi
