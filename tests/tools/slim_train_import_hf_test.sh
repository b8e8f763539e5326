#!/usr/bin/env bash
# slim-train import-hf against the independent reference (tests/reference/hf_reference.py, the
# published GPT-2 and Llama definitions in plain Python): tiny checkpoints in the Hugging Face
# layout — every model type, grouped- and multi-query attention, attention biases, tied and
# untied heads, F32/F16/BF16, one file and shards, GPT-2's unprefixed names and mask buffers —
# imported with softmax attention give the reference's logits to 1e-4 (fp32); a Performer
# conversion imports and runs; refused configs and broken checkpoints fail naming the cause.
#   slim_train_import_hf_test.sh SLIM_TRAIN SOURCE_DIR
set -euo pipefail
train="$1"; src=$(cd "$2" && pwd)
ref="/usr/bin/python3 $src/tests/reference/hf_reference.py"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
tokens=3,1,4,1,5,9,2,6,5,3,5,8,9,7,9,3

# max|slim − reference| / max|reference| over every logit, ≤ 1e-4.
compare() {
  /usr/bin/python3 - "$1" "$2" "$3" <<'PY'
import json, sys
want = json.load(open(sys.argv[1]))["logits"]
got = json.load(open(sys.argv[2]))["logits"]
assert len(got) == len(want) and all(len(g) == len(w) for g, w in zip(got, want)), "shapes differ"
scale = max(abs(x) for row in want for x in row)
err = max(abs(g - w) for gr, wr in zip(got, want) for g, w in zip(gr, wr))
print(f"  {sys.argv[3]}: max |slim - reference| / max |reference| = {err / scale:.2e} (logits up to {scale:.2f})")
sys.exit(0 if err <= 1e-4 * scale else 1)
PY
}

n=0
while read -r type args; do
  n=$((n + 1))
  ckpt="$dir/ckpt$n"
  $ref make "$ckpt" --model-type "$type" --std 0.2 --seed "$n" $args > /dev/null
  "$train" import-hf --dir "$ckpt" --out "$ckpt.safetensors" > "$dir/import.log" || fail "$type $args: $(cat "$dir/import.log")"
  $ref logits "$ckpt" --tokens "$tokens" --out "$ckpt.want.json"
  "$train" logits --model "$ckpt.safetensors" --tokens "$tokens" > "$ckpt.got.json"
  compare "$ckpt.want.json" "$ckpt.got.json" "$type $args" || fail "$type $args: logits differ from the reference"
done <<'CASES'
gpt2 --dtype f32
gpt2 --no-tie --dtype bf16 --shards 3 --no-prefix --with-mask-buffers --activation gelu
llama --heads 4 --kv-heads 2 --dtype bf16 --shards 2
llama --heads 4 --kv-heads 4 --attention-bias --tie --dtype f16
mistral --heads 4 --kv-heads 1 --dtype f32
qwen2 --heads 4 --kv-heads 2 --dtype bf16 --shards 2
qwen2 --heads 2 --kv-heads 1 --tie --layers 3
CASES

# Export is import's inverse: an imported model (gpt2, llama with GQA, qwen2) exported to the
# Hugging Face layout gives the reference's logits when the reference reads the export, and the
# same model file back when imported again.
for e in 1 3 6; do
  "$train" export-hf --model "$dir/ckpt$e.safetensors" --out "$dir/export$e" > "$dir/export.log" \
    || fail "export $e: $(cat "$dir/export.log")"
  $ref logits "$dir/export$e" --tokens "$tokens" --out "$dir/export$e.want.json"
  compare "$dir/export$e.want.json" "$dir/ckpt$e.got.json" "export of case $e, read by the reference" \
    || fail "export $e: the reference computes other logits from the exported checkpoint"
  "$train" import-hf --dir "$dir/export$e" --out "$dir/reimport$e.safetensors" > /dev/null
  "$train" logits --model "$dir/reimport$e.safetensors" --tokens "$tokens" > "$dir/reimport$e.json"
  cmp -s "$dir/reimport$e.json" "$dir/ckpt$e.got.json" || fail "export $e: importing the export changed the logits"
done
# A Performer model has no Hugging Face type: refused by name, nothing written.
"$train" import-hf --dir "$dir/ckpt3" --out "$dir/relu.safetensors" --feature-map relu > /dev/null
if "$train" export-hf --model "$dir/relu.safetensors" --out "$dir/no-export" 2> "$dir/export.err"; then
  fail "a relu model exported"
fi
grep -q "feature_map: relu attention has no Hugging Face model type" "$dir/export.err" || fail "export refusal: $(cat "$dir/export.err")"
[ ! -e "$dir/no-export" ] || fail "a refused export left a directory"

# A Performer conversion (favor+, 8 features per head) imports the same weights and runs.
"$train" import-hf --dir "$dir/ckpt3" --out "$dir/favor.safetensors" --feature-map favor+ --features 8 > "$dir/import.log"
grep -q "attention favor+" "$dir/import.log" || fail "conversion: $(cat "$dir/import.log")"
"$train" logits --model "$dir/favor.safetensors" --tokens "$tokens" > "$dir/favor.json"
/usr/bin/python3 -c "
import json, math, sys
got = json.load(open('$dir/favor.json'))['logits']; want = json.load(open('$dir/ckpt3.want.json'))['logits']
assert all(math.isfinite(x) for r in got for x in r), 'non-finite logits'
assert got != want, 'favor+ gave exactly the softmax logits'
" || fail "the favor+ conversion does not run"

# Refusals, each naming its cause; nothing is written.
expect_refusal() {  # DIR PATTERN WHAT
  if "$train" import-hf --dir "$1" --out "$dir/refused.safetensors" > /dev/null 2> "$dir/err"; then
    fail "$3: imported"
  fi
  grep -q -- "$2" "$dir/err" || fail "$3: the error does not name '$2': $(cat "$dir/err")"
  [ ! -e "$dir/refused.safetensors" ] || fail "$3: a model file was written"
}
cp -r "$dir/ckpt3" "$dir/scaled"
/usr/bin/python3 - "$dir/scaled/config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1])); c["rope_scaling"] = {"type": "linear", "factor": 2.0}
json.dump(c, open(sys.argv[1], "w"))
PY
expect_refusal "$dir/scaled" "rope_scaling" "rope scaling"
cp -r "$dir/ckpt3" "$dir/wide"
/usr/bin/python3 - "$dir/wide/config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1])); c["vocab_size"] += 1
json.dump(c, open(sys.argv[1], "w"))
PY
expect_refusal "$dir/wide" "has shape" "a config that does not match its weights"
cp -r "$dir/ckpt3" "$dir/partial"
rm "$dir/partial/model-00002-of-00002.safetensors"
expect_refusal "$dir/partial" "model-00002-of-00002.safetensors" "a missing shard"
mkdir "$dir/empty"
expect_refusal "$dir/empty" "config.json" "no config"
cp "$dir/ckpt3/config.json" "$dir/empty/"
expect_refusal "$dir/empty" "no model.safetensors" "no weights"
echo "PASS: $n checkpoints match the reference"
