#!/usr/bin/env bash
# Builds the libFuzzer targets of fuzz/ with clang into build-fuzz/ and runs each (issue 14;
# fuzz/README.md): first every input of fuzz/regressions/<target>/ once, then fuzzing for
# FUZZ_SECONDS from a copy of fuzz/corpus/<target>/. Exits non-zero when any input crashes, leaks,
# hits undefined behaviour, runs out of memory or time, naming each input.
#   ./scripts/fuzz.sh                              every target, 60 s each
#   FUZZ_SECONDS=300 ./scripts/fuzz.sh fuzz_ingest_csv
# FUZZ_SECONDS=0 only replays regressions and the seed corpus. FUZZ_JOBS targets run at once
# (default: the number of cores). Work and findings go to build-fuzz/runs/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
seconds=${FUZZ_SECONDS:-60}
jobs=${FUZZ_JOBS:-$(nproc)}
build_dir=${FUZZ_BUILD_DIR:-build-fuzz}
all_targets=(fuzz_deletion_request fuzz_http_request fuzz_ingest_csv fuzz_ingest_idx fuzz_job_config)
targets=("$@")
((${#targets[@]})) || targets=("${all_targets[@]}")

./scripts/setup.sh  # clang, libclang-rt-14-dev (libFuzzer, ASan, UBSan) and llvm (llvm-symbolizer) among them
generator=()
if command -v ninja >/dev/null && [[ ! -f "$build_dir/Makefile" ]]; then generator=(-G Ninja); fi
cmake -S fuzz -B "$build_dir" "${generator[@]}" -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ >/dev/null
nice -n 10 cmake --build "$build_dir" --parallel "$(nproc)" --target "${targets[@]}"

export ASAN_OPTIONS="detect_leaks=1:allocator_may_return_null=0"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
# Per input: 10 s and 2 GiB of memory; one allocation over 1 GiB is a finding too (inputs are small).
limits=(-timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=1024)

# One target: replay, then fuzz. Writes <work>/result: "target seconds executions corpus findings".
run_target() {
  local target=$1 work="$root/$build_dir/runs/$1"
  local binary="$root/$build_dir/$target"
  rm -rf "$work" && mkdir -p "$work/corpus" "$work/artifacts"
  cp "$root/fuzz/corpus/$target/"* "$work/corpus/"
  local regressions=()
  if [[ -d "$root/fuzz/regressions/$target" ]]; then
    mapfile -t regressions < <(find "$root/fuzz/regressions/$target" -type f ! -name '*.md' | sort)
  fi
  for input in "${regressions[@]}"; do
    if ! "$binary" "${limits[@]}" "$input" >"$work/regression-$(basename "$input").log" 2>&1; then
      echo "$input" >>"$work/findings"
    fi
  done
  local start=$SECONDS executions=0
  if ((seconds > 0)); then
    # Fork mode with ignore_*: one finding does not end the run; each is saved under artifacts/.
    "$binary" "${limits[@]}" -fork=1 -ignore_crashes=1 -ignore_ooms=1 -ignore_timeouts=1 \
      -max_total_time="$seconds" -artifact_prefix="$work/artifacts/" "$work/corpus" >"$work/fuzz.log" 2>&1 || true
    executions=$(grep -oE '^#[0-9]+' "$work/fuzz.log" | tail -1 | tr -d '#' || true)
  else
    "$binary" "${limits[@]}" -runs=0 -artifact_prefix="$work/artifacts/" "$work/corpus" >"$work/fuzz.log" 2>&1 || true
  fi
  find "$work/artifacts" -type f >>"$work/findings"
  echo "$target $((SECONDS - start)) ${executions:-0} $(find "$work/corpus" -type f | wc -l) $(grep -c . "$work/findings" || true)" \
    >"$work/result"
}

running=0
for target in "${targets[@]}"; do
  if ((running >= jobs)); then wait -n || true; running=$((running - 1)); fi
  run_target "$target" &
  running=$((running + 1))
done
wait

status=0
printf '%-24s %8s %12s %8s %9s\n' target seconds executions corpus findings
for target in "${targets[@]}"; do
  work="$root/$build_dir/runs/$target"
  read -r name secs execs corpus found <"$work/result"
  printf '%-24s %8s %12s %8s %9s\n' "$name" "$secs" "$execs" "$corpus" "$found"
  if ((found > 0)); then
    status=1
    while read -r input; do echo "fuzz: $target: crashing input: $input (log: $work/)" >&2; done <"$work/findings"
  fi
done
if ((status != 0)); then
  echo "fuzz: FAILED. Reproduce with: $build_dir/<target> <input>; fuzz/README.md says how to minimise it and keep it" >&2
  exit 1
fi
echo "fuzz: no findings"
