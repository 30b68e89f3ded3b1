#!/usr/bin/env bash
# Retrain while serving under load (results in docs/BENCHMARKS.md, "Retrain while serving"): trains
# the demo's 4x4x4 S3T job (2 ranks), serves it, kills 3 of its 4 shards by deleting random records,
# then measures a retrain started by POST /v1/retrain under a steady load of deletions and
# predictions (bench/service/retrain_load.py says what it reports).
# Needs the demo's data (./scripts/demo.sh) and a build (./scripts/build.sh).
# Usage: bench/service/retrain.sh [deletions per second]    (default 50)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
source "$root/bench/service/config.sh"  # lethe, load, data; bench_requirements, common, s3t_config
out=$(realpath -m "${LETHE_BENCH_DIR:-bench-out/retrain}")
rate=${1:-50}
bench_requirements

# LETHE_BENCH_REUSE=1 keeps the trained job of an earlier run (training is the slow part).
[[ ${LETHE_BENCH_REUSE:-0} == 1 && -f "$out/train-s3t.json" ]] || rm -rf "$out"
mkdir -p "$out"
cd "$out"
(umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > token)
s3t_config "$out/train-s3t.h5" > s3t.yaml
if [[ ! -f train-s3t.json ]]; then
  echo "== train the S3T job (4x4x4, 2 ranks) =="
  cp "$data/fashion-train.h5" train-s3t.h5
  "${mpi[@]}" "$lethe" --log-level warn train --config s3t.yaml --job s3t-job > train-s3t.json.tmp
  mv train-s3t.json.tmp train-s3t.json
  cp train-s3t.h5 train-s3t.pristine.h5
fi
# measure NAME RATE LIVE: one run on fresh copies of the job and its training set (deletions erase
# records in place and change the job), LIVE shards left live before the retrain.
measure() {
  cp train-s3t.pristine.h5 train-s3t.h5
  rm -rf job && cp -r s3t-job job
  "$lethe" inspect train-s3t.h5 --ids private | shuf --random-source=<(yes) > ids.txt
  /usr/bin/python3 "$root/bench/service/retrain_load.py" --lethe "$lethe" --load "$load" --job job --ids ids.txt \
    --test "$data/fashion-test.h5" --token token --out "$1" --rate "$2" --live-shards "$3" | tee "$1.txt"
}
echo "== 1. retrain while serving $rate deletions/s (from 1 live shard) and predictions throughout =="
measure load "$rate" 1
# At that rate the ensemble's capacity (about 54 deletions) lasts about a second: S3T answers 503
# throughout. The prediction latency of a served ensemble while a retrain trains beside it:
echo "== 2. retrain while serving predictions only (3 live shards, one dead) =="
measure predict 0 3
