#!/usr/bin/env bash
# S3T benchmark (docs/BENCHMARKS.md "S3T training"): Fashion-MNIST, 4x4x4 S3T vs the 1x1x1 full
# baseline vs the backbone's head alone, and Lethe's throughput vs the straightforward PyTorch peer
# (bench/s3t/s3t_pytorch.py) on the same config, in one run. Usage: bench/s3t/run.sh [BUILD_DIR] [RANKS]
# (LETHE_BENCH_EPOCHS: epochs per step of the throughput pair, default 1).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=$(realpath -m "${1:-$root/build}")  # absolute: the script works from $build/bench-s3t
ranks=${2:-1}
fm=${LETHE_FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}  # the PyTorch peer reads the IDX files
# Data, backbone and job directories live under the build directory; the example configs are
# copied there with their ../../data and ../../runs paths pointed at it.
source "$root/bench/fashion_work.sh"
fashion_work "$build" bench-s3t "$ranks"  # cd there; $lethe, $mpi
for f in "$root"/launch/examples/fashion_*.yaml; do cp "$f" launch/examples/; done
echo "== pretrain (public records, $ranks ranks) =="
$mpi $lethe pretrain --config launch/examples/fashion_s3t.yaml --force | tee runs/bench-pretrain.json
for job in full s3t; do
  rm -rf "runs/fashion-$job"
  echo "== train $job ($ranks ranks) =="
  $mpi $lethe train --config "launch/examples/fashion_$job.yaml" | tee "runs/bench-train-$job.json" \
    | python3 -c 'import json,sys; d=json.load(sys.stdin); d["s3t"].pop("digests"); print(json.dumps(d, indent=1))'
  echo "== eval $job =="
  $lethe eval --job "runs/fashion-$job" | tee "runs/bench-eval-$job.json" | head -3
done
# Throughput, Lethe against the peer on the same work: the demo's S3T config with
# ${LETHE_BENCH_EPOCHS:-1} epoch(s) per step (the peer runs the frozen convolutions for every sample of
# every step: the demo's 5 epochs would take it about 23 minutes on one core).
${PYTHON:-/usr/bin/python3} - "${LETHE_BENCH_EPOCHS:-1}" <<'PY'
import sys, yaml
c = yaml.safe_load(open("launch/examples/fashion_s3t.yaml"))
c["training"]["epochs"] = int(sys.argv[1])
c["job_dir"] = "../../runs/fashion-s3t-throughput"
yaml.safe_dump(c, open("launch/examples/fashion_s3t_throughput.yaml", "w"))
PY
rm -rf runs/fashion-s3t-throughput
echo "== throughput: train s3t with ${LETHE_BENCH_EPOCHS:-1} epoch(s) per step ($ranks ranks) =="
$mpi $lethe train --config launch/examples/fashion_s3t_throughput.yaml > runs/bench-train-throughput.json
$lethe eval --job runs/fashion-s3t-throughput > runs/bench-eval-throughput.json
echo "== throughput: PyTorch peer on the same config (full forward pass every step) =="
${PYTHON:-/usr/bin/python3} "$root/bench/s3t/s3t_pytorch.py" --config launch/examples/fashion_s3t_throughput.yaml \
  --images "$fm/train-images-idx3-ubyte.gz" --labels "$fm/train-labels-idx1-ubyte.gz" \
  --test-images "$fm/t10k-images-idx3-ubyte.gz" --test-labels "$fm/t10k-labels-idx1-ubyte.gz" | tee runs/bench-pytorch.json
${PYTHON:-/usr/bin/python3} - <<'PY'
import json
lethe = json.load(open("runs/bench-train-throughput.json"))["s3t"]
acc = [m for m in json.load(open("runs/bench-eval-throughput.json"))["models"] if m["name"] == "s3t"][0]["accuracy"]
peer = json.load(open("runs/bench-pytorch.json"))
print(f"throughput: Lethe {lethe['samples']} samples in {lethe['seconds']:.1f} s = {lethe['samples_per_second']:.0f}/s "
      f"(accuracy {acc:.4f}); PyTorch peer {peer['samples']} samples in {peer['seconds']:.1f} s = "
      f"{peer['samples_per_second']:.0f}/s (accuracy {peer['accuracy']:.4f}); ratio "
      f"{lethe['samples_per_second'] / peer['samples_per_second']:.2f}x")
PY
