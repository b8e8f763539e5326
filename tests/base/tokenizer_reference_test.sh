#!/usr/bin/env bash
# slim's tokenizers against implementations written elsewhere (tests/base/tokenizer_reference.mjs
# says which and how). The npm packages are installed once, at pinned versions, into NPM_DIR
# (${SLIM_TOKENIZER_NPM_CACHE} if set); later runs reuse them and need no network.
# Usage: tokenizer_reference_test.sh TOKENIZE_TOOL NPM_DIR
# Exit status: 0 all encodings match, 1 a difference (named), 77 (skip) no node/npm here.
set -euo pipefail
tool="$1"
npm_dir="${SLIM_TOKENIZER_NPM_CACHE:-$2}"
here="$(cd "$(dirname "$0")" && pwd)"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "tokenizer-reference: SKIP: node and npm are needed (scripts/install-deps.sh installs them)"
  exit 77
fi

# Exact versions, checked with `npm view`: @huggingface/tokenizers is Hugging Face's own JS port
# of tokenizers; gpt-tokenizer ships GPT-2's ranks (r50k_base); llama3-tokenizer-js and
# llama-tokenizer-js ship Llama 3's and Llama 2's vocabularies and merges.
packages='{"@huggingface/tokenizers":"0.2.0","gpt-tokenizer":"4.0.0","llama3-tokenizer-js":"1.2.0","llama-tokenizer-js":"1.2.2"}'
want="{\"name\":\"slim-tokenizer-reference\",\"private\":true,\"type\":\"module\",\"dependencies\":$packages}"
if [ ! -d "$npm_dir/node_modules" ] || [ "$(cat "$npm_dir/package.json" 2>/dev/null)" != "$want" ]; then
  echo "tokenizer-reference: installing $packages into $npm_dir"
  mkdir -p "$npm_dir"
  printf '%s' "$want" >"$npm_dir/package.json"
  rm -rf "$npm_dir/node_modules" "$npm_dir/package-lock.json"
  if ! npm install --prefix "$npm_dir" --no-audit --no-fund --loglevel=error; then
    rm -f "$npm_dir/package.json"  # so that the next run tries again
    echo "tokenizer-reference: npm install failed" >&2
    exit 1
  fi
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
node "$here/tokenizer_reference.mjs" "$tool" "$npm_dir/node_modules" "$work"
