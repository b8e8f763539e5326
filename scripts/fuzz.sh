#!/usr/bin/env bash
# Builds the fuzz targets (tests/fuzz/) with clang, libFuzzer, AddressSanitizer and
# UndefinedBehaviorSanitizer into ${FUZZ_BUILD_DIR:-build-fuzz} and runs each for a bounded
# time on a copy of its committed corpus (tests/fuzz/corpus/<target>; the repository is not
# modified). Exits non-zero on any finding — a crash, a sanitizer report, an input slower than
# FUZZ_TIMEOUT, memory beyond FUZZ_RSS_MB — printing the input's path and the report. ctest
# runs it as FuzzBounded.
#   scripts/fuzz.sh                                  # every target, 20 s each
#   FUZZ_SECONDS=600 scripts/fuzz.sh model_file      # one target, longer
# Environment: FUZZ_SECONDS (per target, default 20), FUZZ_TIMEOUT (seconds per input, 10),
# FUZZ_RSS_MB (2048; also the largest single allocation), FUZZ_BUILD_DIR. New inputs the
# fuzzer found stay in $FUZZ_BUILD_DIR/runs/<target>/corpus, findings in .../artifacts.
set -euo pipefail
cd "$(dirname "$0")/.."

all_targets=(job_spec dataset worker_event model_file tokenizer)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all_targets[@]}")
seconds="${FUZZ_SECONDS:-20}"
timeout="${FUZZ_TIMEOUT:-10}"
rss_mb="${FUZZ_RSS_MB:-2048}"
build_dir="${FUZZ_BUILD_DIR:-build-fuzz}"

if ! command -v clang++ >/dev/null 2>&1; then
  echo "fuzz: clang++ not found (scripts/install-deps.sh installs clang, libclang-rt-dev, llvm)" >&2
  exit 1
fi

started=$SECONDS
cmake -S tests/fuzz/libfuzzer -B "$build_dir" -G Ninja -DCMAKE_CXX_COMPILER=clang++ >/dev/null
cmake --build "$build_dir" -j "${SLIM_JOBS:-$(nproc)}" --target "${targets[@]/%/_fuzz}"
echo "fuzz: built in $((SECONDS - started)) s"

symbolizer="$(command -v llvm-symbolizer || true)"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}${symbolizer:+:external_symbolizer_path=$symbolizer}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"

failed=()
for t in "${targets[@]}"; do
  run="$build_dir/runs/$t"
  rm -rf "$run"
  mkdir -p "$run/corpus" "$run/artifacts"
  cp tests/fuzz/corpus/"$t"/* "$run/corpus/"
  status=0
  "$build_dir/${t}_fuzz" -max_total_time="$seconds" -timeout="$timeout" -rss_limit_mb="$rss_mb" \
    -print_final_stats=1 -artifact_prefix="$run/artifacts/" "$run/corpus" >"$run/log" 2>&1 || status=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$run/log")
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$run/log")
  found=$(find "$run/artifacts" -type f | sort)
  if [ "$status" -ne 0 ] || [ -n "$found" ]; then
    echo "fuzz: $t: FINDING (exit status $status)"
    for f in $found; do echo "fuzz: $t: input: $f"; done
    echo "----- $run/log (last 80 lines) -----"
    tail -n 80 "$run/log"
    echo "-----"
    failed+=("$t")
  else
    echo "fuzz: $t: ok, ${runs:-?} inputs in ${seconds} s (${rate:-?}/s), corpus $(ls "$run/corpus" | wc -l) files"
  fi
done
echo "fuzz: total $((SECONDS - started)) s"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: findings in: ${failed[*]} (reproduce: $build_dir/<target>_fuzz <input>)" >&2
  exit 1
fi
