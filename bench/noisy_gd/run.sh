#!/usr/bin/env bash
# Noisy-GD benchmark (docs/BENCHMARKS.md "Noisy GD"): on Fashion-MNIST (10% public records pretrain
# the backbone, as in the demo), trains launch/examples/fashion_noisy_gd.yaml on RANKS ranks, then
# `lethe bench noisy-gd` measures in one run: test accuracy at the default epsilon, training on all
# ranks against rank 0 alone (speed-up), and deleting 1, 10 and 100 records (K_U noisy steps) against
# retraining from scratch. Prints the table, then the JSON. Usage: bench/noisy_gd/run.sh [BUILD_DIR] [RANKS]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=$(realpath "${1:-$root/build}")
ranks=${2:-2}
lethe="$build/lethe --log-level warn"
fm=${LETHE_FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
# Data, backbone and job directories live under the build directory (ignored by git); the example
# configs are copied there with their ../../data and ../../runs paths pointed at it.
work="$build/bench-noisy-gd"
mkdir -p "$work/data" "$work/runs" "$work/launch/examples"
cp "$root"/launch/examples/fashion_s3t.yaml "$root"/launch/examples/fashion_noisy_gd.yaml "$work/launch/examples/"
cd "$work"
if [ ! -f data/fashion-train.h5 ]; then
  echo "== ingest Fashion-MNIST (10% public) =="
  $lethe ingest --format idx --images "$fm/train-images-idx3-ubyte.gz" --labels "$fm/train-labels-idx1-ubyte.gz" \
    --out data/fashion-train.h5 --public-fraction 0.1 --seed 1 >/dev/null
  $lethe ingest --format idx --images "$fm/t10k-images-idx3-ubyte.gz" --labels "$fm/t10k-labels-idx1-ubyte.gz" \
    --out data/fashion-test.h5 --seed 1 >/dev/null
fi
if [ ! -f data/fashion-backbone.h5 ]; then
  echo "== pretrain the backbone on the public records =="
  $lethe pretrain --config launch/examples/fashion_s3t.yaml >runs/bench-noisy-gd-pretrain.json
fi
mpi="mpiexec --oversubscribe -np $ranks"
[ "$(id -u)" = 0 ] && mpi="$mpi --allow-run-as-root"
rm -rf runs/fashion-noisy-gd
echo "== train noisy GD ($ranks ranks) =="
$mpi $lethe train --config launch/examples/fashion_noisy_gd.yaml >runs/bench-train-noisy-gd.json
echo "== lethe bench noisy-gd ($ranks ranks) =="
$mpi $lethe bench noisy-gd --job runs/fashion-noisy-gd --deletions 1,10,100 --repetitions 3 --json runs/bench-noisy-gd.json
cat runs/bench-noisy-gd.json
