#!/usr/bin/env bash
# slim's tokenizers against implementations written elsewhere (tests/base/tokenizer_reference.mjs
# says which and how). The npm packages are installed once, at pinned versions
# (scripts/npm-tokenizers.sh), into NPM_DIR (${SLIM_TOKENIZER_NPM_CACHE} if set); later runs
# reuse them and need no network.
# Usage: tokenizer_reference_test.sh TOKENIZE_TOOL NPM_DIR
# Exit status: 0 all encodings match, 1 a difference (named), 77 (skip) no node/npm here.
set -euo pipefail
tool="$1"
npm_dir="${SLIM_TOKENIZER_NPM_CACHE:-$2}"
here="$(cd "$(dirname "$0")" && pwd)"

status=0
"$here/../../scripts/npm-tokenizers.sh" "$npm_dir" || status=$?
if [ "$status" -eq 77 ]; then
  echo "tokenizer-reference: SKIP: node and npm are needed (scripts/install-deps.sh installs them)"
  exit 77
elif [ "$status" -ne 0 ]; then
  exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
node "$here/tokenizer_reference.mjs" "$tool" "$npm_dir/node_modules" "$work"
