#!/usr/bin/env bash
# How quickly each Performer feature map recovers a softmax model's quality (issue 22): converts
# the Hugging Face checkpoint scripts/train-gpt2-base.sh wrote with `slim-train import-hf
# --feature-map M` for each map, measures the held-out loss right after conversion, fine-tunes
# each converted model with SLiM (chunks shorter than the sequence) and records the held-out loss
# every EVAL_EVERY steps.
#   scripts/conversion-recovery.sh BASE_DIR OUT_DIR
# BASE_DIR: train-gpt2-base.sh's output (hf/, train.txt, heldout.txt). Writes into OUT_DIR, for
# each map M: M/converted.safetensors, M/spec.json, M/run/ (the fine-tune), M/events.jsonl; and
#   results.jsonl   one line per measurement: {"map", "step", "heldout_loss"} (nats per token over
#                   all of heldout.txt; step 0 = right after conversion)
#   table.md        the losses at REPORT_STEPS, and each one's ratio to the softmax model's
# "softmax" in MAPS fine-tunes the unconverted model the same way (chunk = sequence: softmax
# attention trains whole sequences only), the control for what the extra steps alone give.
# Settings (environment; defaults are those of bench/results/2026-12-06-conversion-recovery):
#   SLIM_TRAIN (default build/tools/slim-train), MAPS ("favor+ relu elu+1 learned softmax"),
#   FEATURES (64: features per head of favor+ and learned), SEQ_LEN (256), BATCH (2), CHUNK (64),
#   STEPS (1000), LR (1e-3, AdamW, cosine to 0.1 of it after WARMUP=30 steps), EVAL_EVERY (100),
#   REPORT_STEPS ("100 300 1000")
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
train="${SLIM_TRAIN:-$root/build/tools/slim-train}"
base="$(cd "$1" && pwd)"
for f in hf/config.json hf/model.safetensors train.txt heldout.txt; do
  [ -s "$base/$f" ] || { echo "conversion-recovery: $base/$f is missing (run scripts/train-gpt2-base.sh first)" >&2; exit 2; }
done
maps="${MAPS:-favor+ relu elu+1 learned softmax}"
features="${FEATURES:-64}"
seq_len="${SEQ_LEN:-256}"
batch="${BATCH:-2}"
chunk="${CHUNK:-64}"
steps="${STEPS:-1000}"
lr="${LR:-1e-3}"
warmup="${WARMUP:-30}"
eval_every="${EVAL_EVERY:-100}"
report_steps="${REPORT_STEPS:-100 300 1000}"
for map in $maps; do  # also names a directory under OUT_DIR, which is emptied first
  case "$map" in
    favor+|relu|elu+1|sqr|learned|softmax) ;;
    *) echo "conversion-recovery: MAPS: unknown feature map '$map' (favor+, relu, elu+1, sqr, learned, softmax)" >&2; exit 2 ;;
  esac
done
mkdir -p "$2"
out="$(cd "$2" && pwd)"
# Held-out loss of a model file over all of heldout.txt, in nats per token.
heldout_loss() {
  "$train" eval --model "$1" --data "$base/heldout.txt" --seq-len "$seq_len" |
    /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["loss"])'
}

: > "$out/results.jsonl.tmp"
record() { printf '{"map": "%s", "step": %s, "heldout_loss": %s}\n' "$1" "$2" "$3" >> "$out/results.jsonl.tmp"; }

"$train" import-hf --dir "$base/hf" --out "$out/softmax-base.safetensors" > /dev/null
softmax_loss=$(heldout_loss "$out/softmax-base.safetensors")
echo "softmax model: held-out loss $softmax_loss"

for map in $maps; do
  dir="$out/$map"
  rm -rf "$dir"; mkdir -p "$dir"
  "$train" import-hf --dir "$base/hf" --out "$dir/converted.safetensors" --feature-map "$map" \
    --features "$features"
  loss0=$(heldout_loss "$dir/converted.safetensors")
  record "$map" 0 "$loss0"
  echo "$map: held-out loss $loss0 right after conversion"
  map_chunk="$chunk"
  if [ "$map" = softmax ]; then map_chunk="$seq_len"; fi
  # The validation set is the whole held-out text, evaluated every EVAL_EVERY steps and at the end.
  cat > "$dir/spec.json" <<EOF
{"model": {"base": "converted.safetensors"},
 "data": {"train": "$base/train.txt", "validation": ["$base/heldout.txt"]},
 "training": {"seq_len": $seq_len, "batch_size": $batch, "steps": $steps,
              "optimizer": {"name": "adamw", "lr": $lr, "weight_decay": 0.01},
              "schedule": {"name": "cosine", "warmup_steps": $warmup}, "grad_clip": 1.0},
 "memory": {"chunk_size": $map_chunk, "mode": "subtract"},
 "eval": {"every": $eval_every}}
EOF
  start=$(date +%s)
  "$train" run --spec "$dir/spec.json" --out "$dir/run" --no-resume --progress-interval 60 \
    --events-fd 3 3>"$dir/events.jsonl" > "$dir/run.log"
  echo "$map: fine-tuned $steps steps in $(( $(date +%s) - start )) s"
  /usr/bin/python3 - "$dir/events.jsonl" "$map" >> "$out/results.jsonl.tmp" <<'PY'
import json, sys
events, name = sys.argv[1], sys.argv[2]
for line in open(events):
    e = json.loads(line)
    if e.get("event") == "eval":
        print(json.dumps({"map": name, "step": e["step"], "heldout_loss": e["eval_loss"]}))
PY
  # The run's last validation and `slim-train eval` of the model it wrote measure the same thing.
  final=$(heldout_loss "$dir/run/model.safetensors")
  echo "$map: held-out loss $final after $steps steps (slim-train eval of run/model.safetensors)"
done
mv "$out/results.jsonl.tmp" "$out/results.jsonl"

/usr/bin/python3 - "$out/results.jsonl" "$softmax_loss" "$report_steps" "$maps" > "$out/table.md" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
softmax = float(sys.argv[2])
steps = [0] + [int(s) for s in sys.argv[3].split()]
maps = sys.argv[4].split()
loss = {(r["map"], r["step"]): r["heldout_loss"] for r in rows}
head = ["after conversion"] + [f"after {s} steps" for s in steps[1:]]
print(f"Held-out loss, nats per token (ratio to the softmax model's {softmax:.4f}):\n")
print("| feature map | " + " | ".join(head) + " |")
print("|---|" + "---|" * len(head))
for m in maps:
    cells = []
    for s in steps:
        v = loss.get((m, s))
        cells.append("—" if v is None else f"{v:.4f} ({v / softmax:.3f})")
    name = m + (" (control: not converted)" if m == "softmax" else "")
    print(f"| {name} | " + " | ".join(cells) + " |")
last = steps[-1]
converted = [(loss[(m, last)], m) for m in maps if m != "softmax" and (m, last) in loss]
if converted:
    best, m = min(converted)
    verdict = "within" if best <= 1.1 * softmax else "not within"
    print(f"\nBest feature map after {last} steps: {m}, {best:.4f} = {best / softmax:.3f} of the "
          f"softmax model's loss ({verdict} the 10% target).")
PY
cat "$out/table.md"
