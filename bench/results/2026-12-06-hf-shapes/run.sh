#!/usr/bin/env bash
# Issue 21's benchmark: a GPT-2-small-shaped model (gpt2-small-4k.json: 12 layers, width 768,
# vocab 50257, tied head, 4096 learned positions; 126.8M parameters) and a Llama-shaped one with
# grouped-query attention (llama-gqa-110m.json: 12 layers, width 768, 12 query / 4 key-value
# heads, SwiGLU 2048, vocab 32000, untied), random weights, favor+ (64 features per head), at
# L = 4096 on this machine's CPU: ordinary backprop vs SLiM at C = 512 (both modes), then the
# planner at a quota 10% above SLiM's measured peak, predicted vs measured.
#   run.sh SLIM_BENCH   (from this directory; writes results.jsonl)
set -euo pipefail
bench="$1"
: > results.jsonl
for model in gpt2-small-4k llama-gqa-110m; do
  "$bench" --hf-config "$model.json" --seq-len 4096 --mode full,subtract,boundaries --chunk 512 \
    --steps 1 --warmup 1 --json | tee -a results.jsonl
  quota=$(/usr/bin/python3 -c "
import json
rows = [json.loads(l) for l in open('results.jsonl') if l.strip()]
peak = [r['peak_bytes'] for r in rows if r['preset'] == 'hf:$model' and r['mode'] == 'subtract'][-1]
print(int(peak * 1.10))")
  "$bench" --hf-config "$model.json" --seq-len 4096 --quota "$quota" --steps 1 --warmup 1 --json | tee -a results.jsonl
done
