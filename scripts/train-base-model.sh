#!/usr/bin/env bash
# Re-creates the shipped demo base model, models/base-mini.safetensors, by pre-training the
# `mini` preset with slim-train on the license texts of Debian's base-files package
# (models/base-mini.yaml). About 10 minutes on 2 CPU cores.
#   scripts/train-base-model.sh [OUT_DIR]      # default: build/base-mini-run
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build.sh
out="${1:-${BUILD_DIR:-build}/base-mini-run}"
mkdir -p "$(dirname "$out")"
"${BUILD_DIR:-build}/tools/slim-train" run --spec models/base-mini.yaml --out "$out" --no-resume \
  --events-fd 3 3>"$out.events.jsonl"
cp "$out/model.safetensors" models/base-mini.safetensors
sha256sum models/base-mini.safetensors
