#!/usr/bin/env bash
# Re-creates the shipped demo base model, models/base-mini.safetensors, by pre-training the
# `mini` preset with slim-train on the license texts of Debian's base-files package, in three
# stages of growing sequence length (models/README.md):
#   1. models/base-mini.yaml      256 tokens, from random weights
#   2. models/base-mini-4k.yaml   4096 tokens, continuing stage 1 (full fine-tuning)
#   3. models/base-mini-16k.yaml  16,384 tokens, continuing stage 2, on the concatenated text
# then evaluates the model at 256, 1024, 4096 and 16,384 tokens. About 30 minutes on 2 CPU cores.
#   scripts/train-base-model.sh [OUT_DIR]      # default: build/base-mini-run
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build.sh
train="${BUILD_DIR:-build}/tools/slim-train"
out="${1:-${BUILD_DIR:-build}/base-mini-run}"
mkdir -p "$out"
stage() {  # stage N SPEC: runs SPEC (copied into $out, so its relative paths are $out's) in $out/stageN
  cp "$2" "$out/stage$1.yaml"
  "$train" run --spec "$out/stage$1.yaml" --out "$out/stage$1" --no-resume \
    --events-fd 3 3>"$out/stage$1.events.jsonl"
}
licenses=(Apache-2.0 Artistic BSD CC0-1.0 GFDL-1.2 GFDL-1.3 GPL-1 GPL-2 GPL-3 LGPL-2 LGPL-2.1
          LGPL-3 MPL-1.1 MPL-2.0)
(cd /usr/share/common-licenses && cat "${licenses[@]}") > "$out/licenses-0.txt"
for skip in 4096 8192 12288; do
  tail -c +$((skip + 1)) "$out/licenses-0.txt" > "$out/licenses-$skip.txt"
done

stage 1 models/base-mini.yaml
stage 2 models/base-mini-4k.yaml
stage 3 models/base-mini-16k.yaml
cp "$out/stage3/model.safetensors" models/base-mini.safetensors
sha256sum models/base-mini.safetensors
# Mean loss (nats per byte) by context length, on the whole license text (trained on) and on
# perl-base's copyright file (not trained on).
for data in "$out/licenses-0.txt" /usr/share/doc/perl-base/copyright; do
  for len in 256 1024 4096 16384; do
    echo "$data L=$len $("$train" eval --model models/base-mini.safetensors --data "$data" \
                          --seq-len "$len" --chunk 512)"
  done
done
