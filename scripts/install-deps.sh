#!/usr/bin/env bash
# Installs the Debian packages slim needs to build and test. Idempotent: packages already
# present are skipped, so a second run does no network work. Runs as root (CI, dev machine)
# or through sudo.
set -euo pipefail

# What building slim needs: the Dockerfile's build stage installs exactly these
# (scripts/validate-deploy.sh compares the two lists).
build_packages=(
  # toolchain
  build-essential cmake ninja-build pkg-config
  # engine: LibTorch (CPU build) and a fast BLAS; without libopenblas0-pthread Debian's
  # LibTorch falls back to the reference BLAS (measured 7x slower on a chunked attention step)
  libtorch-dev libopenblas0-pthread
  # engine: Gloo's headers for c10d data-parallel groups (LibTorch links libgloo already)
  libgloo-dev
  # service: gRPC and protobuf (with the compilers), Abseil, SQLite (job store), libpqxx (the
  # PostgreSQL job store; brings libpq-dev), Prometheus client
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev
  libsqlite3-dev libpqxx-dev prometheus-cpp-dev
  # service: the HTTP server of /metrics and the status page (GNU libmicrohttpd; brings GnuTLS),
  # and libcrypt for the bcrypt password hashes of its web configuration
  libmicrohttpd-dev libcrypt-dev
  # service: OpenSSL's libcrypto for SHA-256 (gRPC links it; the headers come from libssl-dev)
  libssl-dev
  # tokenizers (base/tokenizer.h): PCRE2 for the pre-tokenizers' Unicode regular expressions,
  # ICU for Unicode normalization (NFC...), SentencePiece for tokenizer.model files
  libpcre2-dev libicu-dev libsentencepiece-dev
)
# What developing and testing it needs besides.
test_packages=(
  # faster rebuilds
  ccache
  # tests; postgresql: the server the PostgreSQL store tests start on loopback
  # (scripts/postgres-test-server.sh)
  libgtest-dev libgmock-dev python3 openssl postgresql
  # tests/server/hostile_client_test.py: a gRPC client written in Python, not in this project
  python3-grpcio python3-protobuf
  # fuzzing (scripts/fuzz.sh): clang, libFuzzer and the sanitizer runtimes (libclang_rt.*,
  # which clang only recommends), llvm-symbolizer for readable reports
  clang libclang-rt-dev llvm
  # observability and deployment checks: Prometheus (promtool, and a real server for the
  # integration test), headless Chromium for the status page
  prometheus chromium chromium-driver
)
packages=("${build_packages[@]}" "${test_packages[@]}")
# Node.js and npm for the offline Kubernetes manifest validation (scripts/validate-deploy.sh):
# Debian's packages unless a Node.js with npm is already installed (e.g. from NodeSource,
# whose nodejs package conflicts with Debian's npm).
if ! command -v npm >/dev/null 2>&1; then
  packages+=(nodejs npm)
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q
$sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
