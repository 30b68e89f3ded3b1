#!/usr/bin/env bash
# Issue 13's baselines on the demo's data and split, in one run (results in docs/BENCHMARKS.md,
# "Baselines"):
#   (a) the demo's network trained end to end on all non-public records, no unlearning (PyTorch);
#   (b) the S3T paper's "full training": the same PEFT on all records as one shard (1 shard, its 4
#       slices in one sequence: every adapter site and the head, the top site on every record);
#   (c) the S3T ensemble and (d) the certified noisy-GD model at epsilon 1: the demo's config
#       (launch/examples/fashion_s3t.yaml) trained afresh on 2 ranks and evaluated;
#   (e) the same linear model as (d) without noise (sigma 1e-6, lambda 0.0005, 1000 steps).
# Needs the demo's data (./scripts/demo.sh, or LETHE_DEMO_DIR) and a build (./scripts/build.sh).
# Usage: bench/baselines/run.sh [epochs for (a), default 8]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
source "$root/bench/service/config.sh"  # lethe, data; bench_requirements (sets mpi), common, s3t_config
bench_requirements
epochs=${1:-8}
out=$(realpath -m "${LETHE_BENCH_DIR:-bench-out/baselines}")
rm -rf "$out" && mkdir -p "$out" && cd "$out"
cp "$data/fashion-train.h5" train.h5  # train claims its dataset: work on a copy

{ s3t_config "$out/train.h5"; echo "noisy_gd: {}"; } > demo.yaml
{ common "$out/train.h5"; echo "s3t: {shards: 1, slices: 4, sequences: 1}"; } > full_peft.yaml
{ common "$out/train.h5"; echo "s3t: {enabled: false}"; echo "noisy_gd: {lambda: 0.0005, sigma: 0.000001, steps: 1000}"; } > noise_free.yaml

echo "== (c), (d): the demo's job, trained on 2 ranks =="
"${mpi[@]}" "$lethe" --log-level warn train --config demo.yaml --job demo-job > train-demo.json
"$lethe" --log-level warn eval --job demo-job > eval-demo.json
echo "== (b): the same PEFT on all records, one shard =="
"${mpi[@]}" "$lethe" --log-level warn train --config full_peft.yaml --job full-peft-job > train-full-peft.json
"$lethe" --log-level warn eval --job full-peft-job > eval-full-peft.json
echo "== (e): the noisy-GD model's linear model without noise =="
"${mpi[@]}" "$lethe" --log-level warn train --config noise_free.yaml --job noise-free-job > train-noise-free.json
"$lethe" --log-level warn eval --job noise-free-job > eval-noise-free.json
echo "== (a): end to end in PyTorch, $epochs epochs, 2 threads =="
/usr/bin/python3 "$root/bench/baselines/end_to_end.py" --train train.h5 --test "$data/fashion-test.h5" \
  --epochs "$epochs" --threads 2 | tee end-to-end.log
python3 - <<'PY'
import json
def model(path, name):
    return [m for m in json.load(open(path))["models"] if m["name"] == name][0]["accuracy"]
a = json.loads([l for l in open("end-to-end.log") if l.startswith("{")][-1])
rows = [("(a) end to end, no unlearning (PyTorch, %d epochs)" % a["epochs"], a["accuracy"]),
        ("(b) the same PEFT on all records, one shard (1 x 4 x 1)", model("eval-full-peft.json", "s3t")),
        ("(c) S3T ensemble, 4 x 4 x 4", model("eval-demo.json", "s3t")),
        ("(d) noisy GD, certified at epsilon 1", model("eval-demo.json", "noisy_gd")),
        ("(e) the same linear model without noise", model("eval-noise-free.json", "noisy_gd"))]
print("\nbaselines on the demo's data (test accuracy, 10,000 images)")
for name, acc in rows:
    print(f"  {name:<55} {acc:.4f}")
PY
