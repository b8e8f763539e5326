#!/usr/bin/env bash
# Full vs LoRA fine-tuning on the `small` preset (issue 4's benchmark note): peak tensor memory
# and tokens/s of a SLiM step (AdamW update included) with C = 512 and with full backprop.
# Debian 12, 2 cores, OpenBLAS pthread. Usage: run.sh [build dir]  (writes *.jsonl here)
set -euo pipefail
here=$(dirname "$0"); bench="${1:-build}/tools/slim-bench"
for tuning in full lora; do
  "$bench" --preset small --seq-len 8192 --chunk 512 --mode subtract,full --tuning "$tuning" --lora-rank 8 \
    --steps 3 --warmup 1 --json | tee "$here/small-L8192-$tuning.jsonl"
done
