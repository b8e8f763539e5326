#!/usr/bin/env bash
# How much the base model uses its context, which bounds what a conversion can lose (README.md
# here): its held-out loss with 4, 16, 64 and 256 tokens per sequence, and on the first 60,000
# bytes of heldout.txt once against the same text with every 300-byte piece written twice in a
# row (a model that copies — attends sharply to the earlier piece — predicts the second copy
# almost free), for the softmax model and the favor+ and relu conversions before fine-tuning.
#   BASE=build/gpt2-mini-run OUT=build/gpt2-mini-recovery bench/results/2026-12-06-conversion-recovery/context-check.sh
set -euo pipefail
train=build/tools/slim-train
base="${BASE:-build/gpt2-mini-run}"
out="${OUT:-build/gpt2-mini-recovery}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
loss() { "$train" eval --model "$1" --data "$2" --seq-len "$3" | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["loss"])'; }
for len in 4 16 64 256; do
  echo "softmax model, heldout.txt, $len tokens per sequence: $(loss "$out/softmax-base.safetensors" "$base/heldout.txt" "$len")"
done
/usr/bin/python3 - "$base/heldout.txt" "$work" <<'PY'
import sys
text = open(sys.argv[1], "rb").read()[:60000]
open(sys.argv[2] + "/once.txt", "wb").write(text)
open(sys.argv[2] + "/twice.txt", "wb").write(b"".join(text[i:i + 300] * 2 for i in range(0, len(text), 300)))
PY
for model in softmax-base favor+/converted relu/converted; do
  echo "$model: once $(loss "$out/$model.safetensors" "$work/once.txt" 256), every piece twice $(loss "$out/$model.safetensors" "$work/twice.txt" 256)"
done
