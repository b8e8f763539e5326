#!/usr/bin/env bash
# Operator counts of a SLiM step on the ATen attention path CUDA runs (forced on the CPU), and the
# CPU step time of a GPT-2-vocabulary model (sizing issue 22's recovery runs). From the repo root:
#   bench/results/2026-12-06-op-profile/run.sh > bench/results/2026-12-06-op-profile/results.jsonl
set -euo pipefail
bench=build/tools/slim-bench
here=bench/results/2026-12-06-op-profile
for args in "--seq-len 4096 --mode full" "--seq-len 4096 --mode subtract --chunk 1024" \
            "--seq-len 16384 --mode subtract --chunk 8192"; do
  # shellcheck disable=SC2086
  $bench --preset paper-iv --precision bf16 --steps 1 --warmup 0 --json --profile --torch-attention $args
done
$bench --hf-config $here/gpt2-50k-vocab.json --seq-len 256 --batch 8 --mode sdpa --steps 2 --warmup 1 --json
