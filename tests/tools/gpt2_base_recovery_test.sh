#!/usr/bin/env bash
# The softmax base model pipeline and the conversion-recovery measurement at toy size
# (scripts/train-gpt2-base.sh, scripts/conversion-recovery.sh; the full-size run is
# bench/results/2026-12-06-conversion-recovery): a GPT-2-layout model with GPT-2's real tokenizer
# (vocabulary 50,257, d_model 16, one layer) pre-trained for a few steps on Perl's documentation,
# exported in the Hugging Face layout, then converted to each feature map and fine-tuned.
# Checks: the export holds config.json, model.safetensors and the tokenizer it was trained with;
# pre-training lowered the held-out loss; importing the export back gives the loss the training
# run measured (export and import lose nothing); every map has its losses at 0 and after the
# steps, the softmax control starts exactly at the base model's loss and the converted ones do
# not; a run's last validation equals `slim-train eval` of the model it wrote; a missing base and
# an unknown map are refused by name.
#   gpt2_base_recovery_test.sh SLIM_TRAIN SOURCE_DIR NPM_DIR
# Exit status 77 (skip) without node/npm (the tokenizer is built from an npm package).
set -euo pipefail
train="$1"; src=$(cd "$2" && pwd); npm_dir="$3"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "SKIP: node and npm are needed (scripts/install-deps.sh installs them)"; exit 77
fi
py=/usr/bin/python3
json_get() { $py -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {}, {"d": d}))' "$@"; }

cat > "$dir/config.json" <<'EOF'
{"model_type": "gpt2", "vocab_size": 50257, "n_positions": 64, "n_embd": 16, "n_layer": 1,
 "n_head": 2, "n_inner": 32, "activation_function": "gelu_new", "tie_word_embeddings": true}
EOF
cat > "$dir/pretrain.yaml" <<'EOF'
model: {base: init.safetensors}
data: {train: train.txt, validation: [heldout.txt]}
training:
  seq_len: 32
  batch_size: 2
  steps: 8
  optimizer: {name: adamw, lr: 1e-2}
memory: {chunk_size: 32}
EOF
base="$dir/base"
SLIM_TRAIN="$train" NPM_DIR="$npm_dir" HF_CONFIG="$dir/config.json" SPEC="$dir/pretrain.yaml" MAX_FILES=60 \
  "$src/scripts/train-gpt2-base.sh" "$base" > "$dir/base.log" 2>&1 || fail "train-gpt2-base.sh: $(cat "$dir/base.log")"

for f in config.json model.safetensors tokenizer.json; do
  [ -s "$base/hf/$f" ] || fail "the export has no $f: $(ls "$base/hf")"
done
cmp -s "$base/hf/tokenizer.json" "$base/tokenizer.json" || fail "the export's tokenizer.json is not the one trained with"
[ "$(json_get "$base/tokenizer.json" 'len(d["model"]["vocab"]) + len(d["added_tokens"])')" = 50257 ] || fail "tokenizer.json does not hold GPT-2's 50,257 tokens"
[ "$(json_get "$base/hf/config.json" '(d["model_type"], d["vocab_size"], d["n_embd"])')" = "('gpt2', 50257, 16)" ] ||
  fail "hf/config.json: $(cat "$base/hf/config.json")"
[ -s "$base/heldout.txt" ] && [ "$(wc -c < "$base/train.txt")" -gt "$(wc -c < "$base/heldout.txt")" ] ||
  fail "text: train.txt $(wc -c < "$base/train.txt") bytes, heldout.txt $(wc -c < "$base/heldout.txt")"
grep -q "^perl-modules-5.36 " "$base/text-source.txt" || fail "text-source.txt: $(cat "$base/text-source.txt")"

# Pre-training learned something, and the export carries exactly the trained model.
init_loss=$("$train" eval --model "$base/init.safetensors" --data "$base/heldout.txt" --seq-len 32 | $py -c 'import json,sys; print(json.load(sys.stdin)["loss"])')
exported_loss=$(json_get "$base/softmax-eval.json" 'd["loss"]')
run_loss=$($py -c 'import json,sys; print([json.loads(l) for l in open(sys.argv[1]) if "\"eval\"" in l][-1]["eval_loss"])' "$base/pretrain.events.jsonl")
$py - "$init_loss" "$exported_loss" "$run_loss" <<'PY' || fail "losses: init $init_loss, exported $exported_loss, training run's last validation $run_loss"
import sys
init, exported, run = map(float, sys.argv[1:])
assert exported < init - 0.5, "pre-training did not lower the held-out loss"
assert abs(exported - run) < 1e-4 * run, "the exported model's loss is not the trained one's"
PY

out="$dir/recovery"
SLIM_TRAIN="$train" SEQ_LEN=32 CHUNK=8 BATCH=2 STEPS=4 EVAL_EVERY=2 REPORT_STEPS="2 4" FEATURES=8 LR=1e-2 WARMUP=0 \
  "$src/scripts/conversion-recovery.sh" "$base" "$out" > "$dir/recovery.log" 2>&1 || fail "conversion-recovery.sh: $(cat "$dir/recovery.log")"
$py - "$out/results.jsonl" "$exported_loss" <<'PY' || fail "results.jsonl: $(cat "$out/results.jsonl")"
import json, math, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
softmax = float(sys.argv[2])
maps = ["favor+", "relu", "elu+1", "learned", "softmax"]
loss = {(r["map"], r["step"]): r["heldout_loss"] for r in rows}
for m in maps:
    for s in (0, 2, 4):
        assert (m, s) in loss and math.isfinite(loss[(m, s)]), f"{m} has no loss at step {s}"
assert abs(loss[("softmax", 0)] - softmax) < 1e-4 * softmax, "the softmax control does not start at the base's loss"
# (At toy size attention barely matters yet: the maps differ from softmax in the 4th-6th digit.)
for m in maps[:-1]:
    assert loss[(m, 0)] != softmax, f"{m} right after conversion computes the softmax model's loss"
PY
for m in favor+ relu elu+1 learned softmax; do
  grep -q "^| $m" "$out/table.md" || fail "table.md has no row for $m: $(cat "$out/table.md")"
done
grep -q "Best feature map after 4 steps" "$out/table.md" || fail "table.md names no best map: $(cat "$out/table.md")"
learned_run=$($py -c 'import json,sys; print([json.loads(l) for l in open(sys.argv[1])][-1]["eval_loss"])' <(grep '"eval"' "$out/learned/events.jsonl"))
learned_eval=$("$train" eval --model "$out/learned/run/model.safetensors" --data "$base/heldout.txt" --seq-len 32 | $py -c 'import json,sys; print(json.load(sys.stdin)["loss"])')
$py -c 'import sys; a, b = map(float, sys.argv[1:]); assert abs(a - b) < 1e-4 * a' "$learned_run" "$learned_eval" ||
  fail "learned: the run's last validation $learned_run, slim-train eval of its model $learned_eval"

# A base directory without the checkpoint is refused by name, and nothing is written.
mkdir "$dir/empty"
if "$src/scripts/conversion-recovery.sh" "$dir/empty" "$dir/nothing" > "$dir/refused.log" 2>&1; then fail "an empty base was accepted"; fi
grep -q "hf/config.json is missing" "$dir/refused.log" || fail "refusal does not name the file: $(cat "$dir/refused.log")"
[ ! -e "$dir/nothing" ] || fail "a refused run created its output directory"
# So is a map name that is not a feature map (each names a directory the script empties).
if MAPS="favor+ ../x" "$src/scripts/conversion-recovery.sh" "$base" "$dir/nothing" > "$dir/refused.log" 2>&1; then fail "MAPS '../x' was accepted"; fi
grep -q "MAPS: unknown feature map '../x'" "$dir/refused.log" || fail "MAPS refusal: $(cat "$dir/refused.log")"
[ ! -e "$dir/nothing" ] || fail "a refused run created its output directory"
echo "PASS: base $exported_loss (from $init_loss), recovery table:"; cat "$out/table.md"
