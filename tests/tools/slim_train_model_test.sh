#!/usr/bin/env bash
# End-to-end: `slim-train init` writes a model file, `generate` is deterministic for a seed,
# `eval` reports loss and bits per byte (a random byte model: about ln 256 = 5.55 nats), and
# bad inputs exit 2 with an error naming the file.
set -euo pipefail
bin="$1"; src="$2"
dir=$(mktemp -d); trap 'rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

"$bin" init --preset tiny --out "$dir/m.safetensors" --seed 3
a=$("$bin" generate --model "$dir/m.safetensors" --prompt "The " --max-tokens 30 --seed 5 | od -An -tx1)
b=$("$bin" generate --model "$dir/m.safetensors" --prompt "The " --max-tokens 30 --seed 5 | od -An -tx1)
c=$("$bin" generate --model "$dir/m.safetensors" --prompt "The " --max-tokens 30 --seed 6 | od -An -tx1)
[ "$a" = "$b" ] || fail "same seed gave different text"
[ "$a" != "$c" ] || fail "different seeds gave the same text"
[ "$(wc -w <<<"$a")" -eq 35 ] || fail "expected the 4-byte prompt + 30 tokens + newline, got: $a"

out=$("$bin" eval --model "$dir/m.safetensors" --data "$src/README.md" --seq-len 128 --chunk 32)
echo "eval: $out"
loss=$(sed -n 's/.*"loss":\([0-9.]*\).*/\1/p' <<<"$out")
awk -v l="$loss" 'BEGIN { exit !(l > 5.0 && l < 6.2) }' || fail "loss $loss is not near ln 256"
grep -q '"bits_per_byte":' <<<"$out" || fail "no bits_per_byte"

set +e
"$bin" eval --model "$dir/m.safetensors" --data "$dir/absent.txt" --seq-len 128 2>"$dir/err"; rc=$?
set -e
[ "$rc" -eq 2 ] || fail "missing data: exit $rc, want 2"
grep -q "absent.txt: cannot open" "$dir/err" || fail "error does not name the file: $(cat "$dir/err")"
head -c 100 "$dir/m.safetensors" > "$dir/cut.safetensors"
set +e
"$bin" generate --model "$dir/cut.safetensors" --prompt x 2>"$dir/err"; rc=$?
set -e
[ "$rc" -eq 2 ] || fail "truncated model: exit $rc, want 2"
grep -q "cut.safetensors" "$dir/err" || fail "error does not name the model file: $(cat "$dir/err")"
echo PASS
