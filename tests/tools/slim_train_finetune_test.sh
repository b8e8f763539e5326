#!/usr/bin/env bash
# The shipped base model (models/base-mini.safetensors, pre-trained on license texts) adapts to
# a different text: 30 steps of full fine-tuning on two of the repository's docs lower the loss
# on a third by at least 25% (measured: 4.41 -> 2.95 nats, -33%), and LoRA (rank 8) by at least
# 20% (measured: 3.19, -28%). Evaluation uses `slim-train eval` before and after. (Measured with
# the 16k-context base of models/README.md; the earlier 256-token base gave 4.97 -> 2.88, -42%,
# and LoRA 3.22, -35%, on the same docs.)
set -euo pipefail
bin="$1"; src=$(cd "$2" && pwd)
dir=$(mktemp -d); trap 'rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
base="$src/models/base-mini.safetensors"
cat "$src/docs/engine.md" "$src/docs/memory-planner.md" > "$dir/train.txt"
cp "$src/docs/model-format.md" "$dir/val.txt"
loss() { "$bin" eval --model "$1" --data "$dir/val.txt" --seq-len 256 | sed -n 's/.*"loss":\([0-9.]*\).*/\1/p'; }

cat > "$dir/full.yaml" <<EOF2
model: {base: $base}
data: {train: train.txt, validation: val.txt}
training:
  seq_len: 256
  batch_size: 8
  steps: 30
  optimizer: {name: adamw, lr: 1e-3}
  schedule: {name: cosine, warmup_steps: 5}
memory: {chunk_size: 128}
EOF2
sed -e 's/  steps: 30/  steps: 30\n  tuning: lora\n  lora: {rank: 8, alpha: 16}/' -e 's/lr: 1e-3/lr: 3e-3/' \
    "$dir/full.yaml" > "$dir/lora.yaml"

before=$(loss "$base")
"$bin" run --spec "$dir/full.yaml" --out "$dir/full" >/dev/null
"$bin" run --spec "$dir/lora.yaml" --out "$dir/lora" >/dev/null
full=$(loss "$dir/full/model.safetensors")
lora=$(loss "$dir/lora/model.safetensors")
echo "validation loss: base $before, full fine-tune $full, LoRA $lora"
awk -v b="$before" -v a="$full" 'BEGIN { exit !(a <= 0.75 * b) }' || fail "full fine-tune: $before -> $full, want -25%"
awk -v b="$before" -v a="$lora" 'BEGIN { exit !(a <= 0.80 * b) }' || fail "LoRA fine-tune: $before -> $lora, want -20%"
echo PASS
