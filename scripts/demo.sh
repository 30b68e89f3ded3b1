#!/usr/bin/env bash
# README's main command: installs dependencies, builds, and runs the demo on Fashion-MNIST end to end:
#  1. ingest (10% public; every 6 consecutive training images belong to one subject, user-NNNNN),
#  2. pretrain the backbone on the public part (data-parallel on the MPI ranks),
#  3. train on 2 MPI ranks S3T (4 shards x 4 slices x 4 sequences) and the noisy-GD model beside it,
#  4. evaluate both, and ask the noisy-GD accountant for a deletion certificate,
#  5. serve the job (mpiexec lethe serve) and delete a few hundred records through the HTTP API
#     (single records, batches, whole subjects), measuring accuracy through /v1/predict, served depth
#     per shard, latency and each batch's epsilon; then POST /v1/retrain: the service retrains beside
#     itself (mpiexec lethe retrain) while more deletions and predictions go on, and adopts the new
#     models without stopping; stop the service (SIGTERM); scan every file for the deleted rows'
#     bytes and the ledger for clear ids (scripts/demo_drive.py). The report:
#     demo-out/report/REPORT.md with PNG plots.
# Everything it writes goes under demo-out/ (or $LETHE_DEMO_DIR); it exits non-zero, naming the step,
# when any step fails.
set -euo pipefail
started=$(date +%s.%N)
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

echo "== 1/6 ingest Fashion-MNIST (train with a 10% public part and subjects, and test) =="
# IDX files carry no owners: the demo makes every 6 consecutive training images one subject's.
awk 'BEGIN { print "id,subject"; for (i = 0; i < 60000; i++) printf "train-%d,user-%05d\n", i, int(i / 6) }' \
  > data/fashion-subjects.csv
"$lethe" ingest --format idx --images "$fm/train-images-idx3-ubyte.gz" --labels "$fm/train-labels-idx1-ubyte.gz" \
  --out data/fashion-train.h5 --force --public-fraction 0.1 --seed 1 --subjects data/fashion-subjects.csv >/dev/null
"$lethe" ingest --format idx --images "$fm/t10k-images-idx3-ubyte.gz" --labels "$fm/t10k-labels-idx1-ubyte.gz" \
  --out data/fashion-test.h5 --force --seed 1 >/dev/null
"$lethe" inspect data/fashion-train.h5 | tee runs/inspect-train.json

mpi=(mpiexec --oversubscribe -np "$ranks")
[[ $(id -u) -eq 0 ]] && mpi+=(--allow-run-as-root)

echo "== 2/6 pretrain the backbone on the public records, data-parallel on $ranks MPI ranks =="
"${mpi[@]}" "$lethe" pretrain --config "$config" --force | tee runs/pretrain.json

echo "== 3/6 S3T and noisy-GD training on $ranks MPI ranks =="
rm -rf runs/fashion-s3t
"${mpi[@]}" "$lethe" train --config "$config" > runs/train.json

echo "== 4/6 evaluate the S3T ensemble and the noisy-GD model on the test set =="
"$lethe" eval --job runs/fashion-s3t | tee runs/eval.json

echo "== 5/6 noisy-GD deletion certificate for 10 of the 54k training records (the config's noisy_gd) =="
"$lethe" accountant --n 54022 --lambda 0.005 --eta 1.9801980198019802 --sigma 0.01 --clip 1.4142135623730951 \
  --deleted 10 --epsilon 1 --train-steps 200 | tee runs/accountant.json

echo "== 6/6 delete through the service on $ranks MPI ranks, retrain while serving, prove erasure, write the report =="
# Debian's interpreter: it has numpy, h5py and matplotlib (a python3 earlier on PATH may not).
rm -rf report
(umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > runs/service-token)
/usr/bin/python3 "$root/scripts/demo_drive.py" --lethe "$lethe" --mpiexec "${mpi[*]}" --job runs/fashion-s3t \
  --train data/fashion-train.h5 --test data/fashion-test.h5 --backbone data/fashion-backbone.h5 \
  --token runs/service-token --out report --started-at "$started"

echo "demo: done; outputs in $out/runs, the report in $out/report/REPORT.md"
