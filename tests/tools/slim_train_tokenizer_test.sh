#!/usr/bin/env bash
# Tokenizers travel with models (docs/model-format.md, "Tokenizer"): a tiny Llama checkpoint with
# a byte-level tokenizer.json, and one with a SentencePiece tokenizer.model, imported with
# import-hf; inspect names the tokenizer; generate reads the prompt through it; eval reports
# bits per byte over the bytes the tokens spell; a training job tokenizes its text dataset once
# and reads the cache the next time; broken tokenizers are refused by name at import; init
# --tokenizer gives a new model one.
#   slim_train_tokenizer_test.sh SLIM_TRAIN SOURCE_DIR
set -euo pipefail
train="$1"; src=$(cd "$2" && pwd)
ref="/usr/bin/python3 $src/tests/reference/hf_reference.py"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

# A byte-level BPE tokenizer.json: the 256 byte characters (GPT-2's table), then "th" (256) and
# "Ġth" (257), merges "t h" and "Ġ th"; <|endoftext|> is 258. 259 ids for a 300-id model.
/usr/bin/python3 - "$dir" <<'PY'
import json, struct, sys
d = sys.argv[1]
bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
cs = bs[:]
n = 0
for b in range(256):
    if b not in bs:
        bs.append(b); cs.append(256 + n); n += 1
char = {b: chr(c) for b, c in zip(bs, cs)}
vocab = {char[b]: b for b in range(256)}
vocab["th"] = 256; vocab["\u0120th"] = 257
tok = {"added_tokens": [{"id": 258, "content": "<|endoftext|>", "special": True}],
       "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True},
       "decoder": {"type": "ByteLevel"},
       "model": {"type": "BPE", "vocab": vocab, "merges": ["t h", "\u0120 th"]}}
json.dump(tok, open(d + "/tokenizer.json", "w"))
json.dump(dict(tok, model=dict(tok["model"], merges=["t h", "x y"])), open(d + "/broken.json", "w"))

# A SentencePiece BPE model (protobuf wire format of sentencepiece_model.proto): <unk> <s> </s>,
# the 256 byte pieces, then ▁ t h th ▁th.
def varint(v):
    out = b""
    v &= (1 << 64) - 1
    while True:
        b = v & 0x7F; v >>= 7
        out += bytes([b | (0x80 if v else 0)])
        if not v: return out
def field(num, wire, payload): return varint(num << 3 | wire) + payload
def blob(num, data): return field(num, 2, varint(len(data)) + data)
def integer(num, v): return field(num, 0, varint(v))
def real(num, f): return field(num, 5, struct.pack("<f", f))
pieces = [("<unk>", 0, 2), ("<s>", 0, 3), ("</s>", 0, 3)] + [("<0x%02X>" % b, 0, 6) for b in range(256)]
pieces += [("\u2581", -10, 1), ("t", -11, 1), ("h", -12, 1), ("th", -1, 1), ("\u2581th", -2, 1)]
model = b"".join(blob(1, blob(1, p.encode()) + real(2, s) + integer(3, t)) for p, s, t in pieces)
model += blob(2, integer(3, 2) + integer(4, len(pieces)) + integer(35, 1) + integer(40, 0) + integer(41, 1) + integer(42, 2) + integer(43, -1))
model += blob(3, blob(1, b"identity") + integer(3, 1) + integer(4, 0) + integer(5, 1))
open(d + "/tokenizer.model", "wb").write(model)
PY

$ref make "$dir/bpe" --model-type llama --vocab 300 --seed 1 > /dev/null
cp "$dir/tokenizer.json" "$dir/bpe/"
"$train" import-hf --dir "$dir/bpe" --out "$dir/bpe.safetensors" > "$dir/import.log" || fail "import: $(cat "$dir/import.log")"
grep -q "tokenizer hf-json (259 ids)" "$dir/import.log" || fail "import does not name the tokenizer: $(cat "$dir/import.log")"
# export-hf gives the tokenizer back, byte for byte, beside the weights.
"$train" export-hf --model "$dir/bpe.safetensors" --out "$dir/bpe-export" > /dev/null || fail "export-hf with a tokenizer"
cmp -s "$dir/tokenizer.json" "$dir/bpe-export/tokenizer.json" || fail "export-hf did not write the model's tokenizer.json"
"$train" inspect --model "$dir/bpe.safetensors" | grep -q "tokenizer *hf-json" || fail "inspect does not list the tokenizer"

# generate: the prompt goes through the tokenizer and comes back first, as text.
out=$("$train" generate --model "$dir/bpe.safetensors" --prompt "the then" --max-tokens 6 --temperature 0)
case "$out" in "the then"*) ;; *) fail "generate: output does not start with the prompt: $out" ;; esac
"$train" generate --model "$dir/bpe.safetensors" --prompt "the" --max-tokens 4 --ids --with-bytes > "$dir/ids.txt"
[ "$(grep -cE '^[0-9]+ ([0-9a-f]{2})+$|^[0-9]+ -$' "$dir/ids.txt")" = 4 ] || fail "generate --ids --with-bytes: $(cat "$dir/ids.txt")"

# eval: "th" × 400 is one pre-tokenized word merged into 400 tokens of 2 bytes, so bits per byte
# is half the bits per token: loss / (2 ln 2). (Per-token accounting would give loss / ln 2.)
/usr/bin/python3 -c "open('$dir/th.txt','w').write('th' * 400)"
"$train" eval --model "$dir/bpe.safetensors" --data "$dir/th.txt" --seq-len 16 --batch 8 > "$dir/eval.json"
/usr/bin/python3 - "$dir/eval.json" <<'PY' || fail "eval: $(cat "$dir/eval.json")"
import json, math, sys
r = json.load(open(sys.argv[1]))
assert r["tokens"] == 16 * 24 and r["sequences"] == 24, r       # 399 targets → 24 sequences of 16
assert r["bytes"] == 2 * r["tokens"], r
assert abs(r["bits_per_byte"] - r["loss"] / (2 * math.log(2))) < 1e-5, r
print("  eval: loss %.4f nats/token, %.4f bits/byte over %d bytes" % (r["loss"], r["bits_per_byte"], r["bytes"]))
PY

# A training job on a text dataset: tokenized at the start and cached per (dataset, tokenizer).
/usr/bin/python3 -c "open('$dir/train.txt','w').write('the then this that ' * 60)"
cat > "$dir/job.yaml" <<YAML
model: {base: $dir/bpe.safetensors}
data: {train: $dir/train.txt, validation_fraction: 0}
training: {seq_len: 16, batch_size: 2, steps: 2, optimizer: {name: adamw, lr: 1e-3}}
memory: {chunk_size: 16}
YAML
"$train" run --spec "$dir/job.yaml" --out "$dir/run" --calibration-cache "$dir/cache" > "$dir/run.log" 2>&1 || fail "run: $(tail -5 "$dir/run.log")"
entries=("$dir"/cache/tokens/*.ids)
[ ${#entries[@]} = 1 ] && [ -s "${entries[0]}" ] || fail "no tokenized dataset in the cache"
# 60 × "the then this that ": per repeat "th" "e" "Ġth" "en" ... — the count is whatever the
# tokenizer gives; the cache must hold exactly it, and the trained model keeps the tokenizer.
"$train" inspect --model "$dir/run/model.safetensors" | grep -q "tokenizer *hf-json" || fail "the trained model lost its tokenizer"
before=$(stat -c %Y.%s "${entries[0]}")
sleep 1
"$train" run --spec "$dir/job.yaml" --out "$dir/run2" --calibration-cache "$dir/cache" > "$dir/run2.log" 2>&1 || fail "second run: $(tail -5 "$dir/run2.log")"
[ "$(stat -c %Y.%s "${entries[0]}")" = "$before" ] || fail "the second run tokenized again instead of reading the cache"
cmp -s "$dir/run/model.safetensors" "$dir/run2/model.safetensors" || fail "training from the cache gave a different model"
# A damaged entry is recomputed, not trusted.
printf 'garbage' > "${entries[0]}"
"$train" run --spec "$dir/job.yaml" --out "$dir/run3" --calibration-cache "$dir/cache" > "$dir/run3.log" 2>&1 || fail "run on a damaged cache: $(tail -5 "$dir/run3.log")"
cmp -s "$dir/run/model.safetensors" "$dir/run3/model.safetensors" || fail "a damaged cache entry changed training"

# SentencePiece: tokenizer.model is imported and used the same way.
$ref make "$dir/sp" --model-type llama --vocab 300 --seed 2 > /dev/null
cp "$dir/tokenizer.model" "$dir/sp/"
"$train" import-hf --dir "$dir/sp" --out "$dir/sp.safetensors" > "$dir/import.log" || fail "sp import: $(cat "$dir/import.log")"
grep -q "tokenizer sentencepiece (264 ids)" "$dir/import.log" || fail "sp import: $(cat "$dir/import.log")"
out=$("$train" generate --model "$dir/sp.safetensors" --prompt "the th é" --max-tokens 5 --temperature 0)
case "$out" in "the th é"*) ;; *) fail "sp generate: $out" ;; esac
"$train" eval --model "$dir/sp.safetensors" --data "$dir/th.txt" --seq-len 8 > "$dir/eval.json" || fail "sp eval"
/usr/bin/python3 -c "
import json, math; r = json.load(open('$dir/eval.json'))
# '▁th' then 'th' × 399: every target token spells exactly 2 bytes of the text.
assert r['bytes'] == 2 * r['tokens'] and abs(r['bits_per_byte'] - r['loss'] / (2 * math.log(2))) < 1e-5, r
" || fail "sp eval: $(cat "$dir/eval.json")"

# Refusals at import, by name; nothing written.
expect_refusal() {  # DIR PATTERN WHAT
  if "$train" import-hf --dir "$1" --out "$dir/refused.safetensors" > /dev/null 2> "$dir/err"; then fail "$3: imported"; fi
  grep -q -- "$2" "$dir/err" || fail "$3: the error does not name '$2': $(cat "$dir/err")"
  [ ! -e "$dir/refused.safetensors" ] || fail "$3: a model file was written"
}
cp -r "$dir/bpe" "$dir/bad"; cp "$dir/broken.json" "$dir/bad/tokenizer.json"
expect_refusal "$dir/bad" "model.merges\[1\]: the merged token 'xy' is not in model.vocab" "a merge whose result is not in the vocabulary"
printf '{"model": ' > "$dir/bad/tokenizer.json"
expect_refusal "$dir/bad" "malformed JSON" "malformed JSON"
$ref make "$dir/small" --model-type llama --vocab 200 --seed 3 > /dev/null
cp "$dir/tokenizer.json" "$dir/small/"
expect_refusal "$dir/small" "the tokenizer has 259 ids but the model's vocab_size is 200" "a tokenizer larger than the model"

# init --tokenizer: a model with random weights carries the tokenizer it is given, checked the
# same way (a tokenizer larger than the config's vocabulary is refused, nothing written).
"$train" init --hf-config "$dir/bpe/config.json" --tokenizer "$dir/tokenizer.json" --out "$dir/init.safetensors" > "$dir/init.log" ||
  fail "init --tokenizer: $(cat "$dir/init.log")"
grep -q "tokenizer hf-json (259 ids)" "$dir/init.log" || fail "init does not name the tokenizer: $(cat "$dir/init.log")"
"$train" inspect --model "$dir/init.safetensors" | grep -q "tokenizer *hf-json" || fail "init's model does not carry the tokenizer"
if "$train" init --hf-config "$dir/small/config.json" --tokenizer "$dir/tokenizer.json" --out "$dir/init-small.safetensors" > /dev/null 2> "$dir/err"; then
  fail "init accepted a tokenizer larger than the model"
fi
grep -q "the tokenizer has 259 ids but the model's vocab_size is 200" "$dir/err" || fail "init's refusal: $(cat "$dir/err")"
[ ! -e "$dir/init-small.safetensors" ] || fail "a refused init wrote a model file"
echo "PASS: tokenizers travel with models"
