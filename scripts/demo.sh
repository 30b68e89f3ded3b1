#!/usr/bin/env bash
# README's main command: installs dependencies, builds, and runs the demo on Fashion-MNIST:
# ingest (10% public), pretrain the backbone on the public part, training on 2 MPI ranks of
# S3T (4 shards x 4 slices x 4 sequences) and of the noisy-GD model beside it, evaluation of
# both, and a deletion certificate from the noisy-GD accountant. Everything it writes goes under demo-out/ (or $LETHE_DEMO_DIR).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
./scripts/setup.sh
./scripts/build.sh
lethe="$root/build/lethe"
fm=${LETHE_FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
out=$(realpath -m "${LETHE_DEMO_DIR:-demo-out}")
ranks=${LETHE_DEMO_RANKS:-2}

# The example config names its data as ../../data and its job as ../../runs, relative to itself:
# a copy under $out/launch/examples points them into $out.
mkdir -p "$out/data" "$out/runs" "$out/launch/examples"
cp launch/examples/fashion_s3t.yaml "$out/launch/examples/"
config="$out/launch/examples/fashion_s3t.yaml"
cd "$out"

echo "== 1/5 ingest Fashion-MNIST (train with a 10% public part, and test) =="
"$lethe" ingest --format idx --images "$fm/train-images-idx3-ubyte.gz" --labels "$fm/train-labels-idx1-ubyte.gz" \
  --out data/fashion-train.h5 --public-fraction 0.1 --seed 1 >/dev/null
"$lethe" ingest --format idx --images "$fm/t10k-images-idx3-ubyte.gz" --labels "$fm/t10k-labels-idx1-ubyte.gz" \
  --out data/fashion-test.h5 --seed 1 >/dev/null
"$lethe" inspect data/fashion-train.h5 | tee runs/inspect-train.json

echo "== 2/5 pretrain the backbone on the public records =="
"$lethe" pretrain --config "$config" | tee runs/pretrain.json

echo "== 3/5 S3T and noisy-GD training on $ranks MPI ranks =="
mpi=(mpiexec --oversubscribe -np "$ranks")
[[ $(id -u) -eq 0 ]] && mpi+=(--allow-run-as-root)
rm -rf runs/fashion-s3t
"${mpi[@]}" "$lethe" train --config "$config" > runs/train.json

echo "== 4/5 evaluate the S3T ensemble and the noisy-GD model on the test set =="
"$lethe" eval --job runs/fashion-s3t | tee runs/eval.json

echo "== 5/5 noisy-GD deletion certificate for 10 of the 54k training records (the config's noisy_gd) =="
"$lethe" accountant --n 54022 --lambda 0.005 --eta 1.9801980198019802 --sigma 0.01 --clip 1.4142135623730951 \
  --deleted 10 --epsilon 1 --train-steps 200 | tee runs/accountant.json

echo "demo: done; outputs in $out/runs"
