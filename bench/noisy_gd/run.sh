#!/usr/bin/env bash
# Noisy-GD benchmark (docs/BENCHMARKS.md "Noisy GD"): on Fashion-MNIST (10% public records pretrain
# the backbone, as in the demo), trains launch/examples/fashion_noisy_gd.yaml on RANKS ranks, then
# `lethe bench noisy-gd` measures in one run: test accuracy at the default epsilon, training on all
# ranks against rank 0 alone (speed-up), and deleting 1, 10 and 100 records (K_U noisy steps) against
# retraining from scratch, and one noisy step on one rank (step_ms) against one read pass over the
# same feature bytes (the memory floor). Then bench/noisy_gd/step_numpy.py times the numpy float64
# peer of that step on the same shape and thread count. Prints the table, the JSON, and the step
# side by side with the read pass and numpy. Usage: bench/noisy_gd/run.sh [BUILD_DIR] [RANKS]
# (PYTHON: the interpreter with numpy for the peer; default /usr/bin/python3, Debian's numpy on OpenBLAS)
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
python=${PYTHON:-/usr/bin/python3}
shape=$($python -c 'import json,sys; d=json.load(open(sys.argv[1])); s=d["step"]
print(s["records"], d["features"], d["classes"], s["threads"])' runs/bench-noisy-gd.json)
read -r rows features classes threads <<<"$shape"
echo "== numpy float64 peer of one step ($rows x $features, $classes classes, $threads thread(s)) =="
$python "$root/bench/noisy_gd/step_numpy.py" --rows "$rows" --features "$features" --classes "$classes" \
  --threads "$threads" --steps 25 >runs/bench-noisy-gd-numpy.json
cat runs/bench-noisy-gd-numpy.json
$python - runs/bench-noisy-gd.json runs/bench-noisy-gd-numpy.json <<'PY'
import json, sys
lethe, numpy = (json.load(open(path)) for path in sys.argv[1:3])
step, read, peer = lethe["step_ms"], lethe["read_pass_ms"], numpy["step_ms"]
print(f"# one noisy step, {lethe['step']['records']} x {lethe['features']} float64, {lethe['classes']} classes, "
      f"{lethe['step']['threads']} thread(s); median ms")
print(f"{'lethe_step_ms':>14} {'read_pass_ms':>13} {'numpy_step_ms':>14} {'step/read':>10} {'step/numpy':>11}")
print(f"{step:14.2f} {read:13.2f} {peer:14.2f} {step / read:9.2f}x {step / peer:10.2f}x")
# The step's arithmetic: 2 n d c multiply-adds (X W and X^T R), against the BLAS's DGEMM rate.
n, d, c = lethe["step"]["records"], lethe["features"], lethe["classes"]
gflops = 4 * n * d * c / step / 1e6
print(f"# the step computes {4 * n * d * c / 1e6:.0f} MFLOP: {gflops:.1f} GFLOP/s, "
      f"{gflops / numpy['dgemm_gflops']:.0%} of a 1024^3 DGEMM's {numpy['dgemm_gflops']:.1f} GFLOP/s on the same threads")
PY
