#!/usr/bin/env bash
# The test command (README, CI): installs what is missing, builds, runs every test suite.
#   scripts/test.sh                      # everything
#   scripts/test.sh -R SlimStep          # extra arguments go to ctest (here: a name filter)
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/build.sh
build_dir="${BUILD_DIR:-build}"
# Test processes run LibTorch single-threaded by default, so two at a time fill 2 cores.
cd "$build_dir"
ctest --output-on-failure -j "${SLIM_TEST_JOBS:-$(nproc)}" "$@"
