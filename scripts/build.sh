#!/usr/bin/env bash
# Configures and builds slim into ${BUILD_DIR:-build}. Installs missing Debian packages first
# (as root, or through sudo). Extra arguments go to cmake's configure step, e.g.
#   scripts/build.sh -DSLIM_ENGINE_ONLY=ON
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${SLIM_SKIP_DEPS:-0}" != "1" ]; then
  ./scripts/install-deps.sh
fi

build_dir="${BUILD_DIR:-build}"
jobs="${SLIM_JOBS:-$(nproc)}"
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE="${CMAKE_BUILD_TYPE:-Release}" "$@"
cmake --build "$build_dir" -j "$jobs"
