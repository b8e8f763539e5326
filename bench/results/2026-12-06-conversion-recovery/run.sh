#!/usr/bin/env bash
# Issue 22's recovery table: pre-trains the softmax base model (GPT-2 layout and tokenizer,
# models/gpt2-mini), converts it to each feature map and fine-tunes each with SLiM for 1,000
# steps, recording the held-out loss. From the repository root, after scripts/build.sh:
#   BASE=build/gpt2-mini-run OUT=build/gpt2-mini-recovery bench/results/2026-12-06-conversion-recovery/run.sh
# (The recorded run used BASE=/work/runs/gpt2-mini OUT=/work/runs/recovery and took 85 minutes on
# the 2-core CPU machine: 13 for the base model, 71 for the five fine-tunes.) Copies the logs,
# the pre-training's evaluations, results.jsonl and table.md here.
set -euo pipefail
here=bench/results/2026-12-06-conversion-recovery
base="${BASE:-build/gpt2-mini-run}"
out="${OUT:-build/gpt2-mini-recovery}"
export SLIM_TRAIN=build/tools/slim-train
scripts/train-gpt2-base.sh "$base" 2>&1 | grep -v '^step ' | tee "$here/base.log"
grep -v '"progress"' "$base/pretrain.events.jsonl" > "$here/pretrain.events.jsonl"  # evaluations, checkpoints
scripts/conversion-recovery.sh "$base" "$out" 2>&1 | tee "$here/recovery.log"
cp "$out/results.jsonl" "$out/table.md" "$here/"
