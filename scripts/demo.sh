#!/usr/bin/env bash
# The main job until the service exists: installs what is missing, builds, and benchmarks SLiM
# training steps of the `small` model on this machine — full backprop against SLiM with
# C = 512 at L = 8192, and SLiM at L = 65536 with the same peak memory.
# Extra arguments replace the default benchmark flags (see build/tools/slim-bench --help).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/build.sh
bench="${BUILD_DIR:-build}/tools/slim-bench"
if [ $# -gt 0 ]; then
  exec "$bench" "$@"
fi
"$bench" --preset small --seq-len 8192 --chunk 512 --mode full,subtract --steps 2
"$bench" --preset small --seq-len 65536 --chunk 512 --mode subtract --steps 1 --json
