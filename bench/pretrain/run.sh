#!/usr/bin/env bash
# Pretraining on MPI ranks (docs/BENCHMARKS.md, "Pretraining on MPI ranks"): the demo's backbone
# (launch/examples/fashion_s3t.yaml) pretrained, in one run, (1) in one process with whole batches
# (pretrain.micro_batches: 1, the demo before pretraining went data-parallel), (2) in one process
# with the demo's 2 micro-batches, (3) on 2 MPI ranks with 2 micro-batches (the demo). (2) and (3)
# must train the same backbone: the script fails when their losses or head accuracies differ.
# Usage: bench/pretrain/run.sh [BUILD_DIR] (LETHE_BENCH_EPOCHS: pretraining epochs, default the config's).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=$(realpath -m "${1:-$root/build}")
source "$root/bench/fashion_work.sh"
fashion_work "$build" bench-pretrain 2  # cd there; $lethe, $mpi
run() {  # NAME MICRO_BATCHES LAUNCHER...
  local name=$1 micro=$2; shift 2
  local config=launch/examples/$name.yaml
  ${PYTHON:-/usr/bin/python3} - "$root/launch/examples/fashion_s3t.yaml" "$config" "$micro" "${LETHE_BENCH_EPOCHS:-}" <<'PY'
import sys, yaml
source, target, micro, epochs = sys.argv[1:]
config = yaml.safe_load(open(source))
config["pretrain"]["micro_batches"] = int(micro)
if epochs:
    config["pretrain"]["epochs"] = int(epochs)
# The example's ../../data paths point at $work/data from the copy; each variant its own backbone.
config["backbone"] = f"../../data/{target.split('/')[-1][:-5]}-backbone.h5"
yaml.safe_dump(config, open(target, "w"), sort_keys=False)
PY
  local start end
  start=$(date +%s.%N)
  "$@" $lethe pretrain --config "$config" --force > "$name.json"
  end=$(date +%s.%N)
  python3 - "$name" "$start" "$end" <<'PY'
import json, sys
name, start, end = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
r = json.load(open(f"{name}.json"))
r["wall_seconds"] = end - start
json.dump(r, open(f"{name}.json", "w"), indent=1)
print(f"{name}: {r.get('ranks')} rank(s), training {r['seconds']:.1f} s, whole command {r['wall_seconds']:.1f} s, "
      f"final loss {r['final_loss']:.6f}, head accuracy {r['head_accuracy']:.4f}")
PY
}
run one-rank-whole-batches 1
run one-rank-2-micro 2
run two-ranks-2-micro 2 $mpi
python3 - <<'PY'
import json, sys
a, b, c = (json.load(open(f"{n}.json")) for n in ("one-rank-whole-batches", "one-rank-2-micro", "two-ranks-2-micro"))
if (b["final_loss"], b["head_accuracy"]) != (c["final_loss"], c["head_accuracy"]):
    sys.exit(f"2 ranks trained another backbone than 1 rank with the same micro-batches: {b} vs {c}")
print(f"training loop: 2 ranks {a['seconds'] / c['seconds']:.2f}x faster than whole batches on 1 rank, "
      f"{b['seconds'] / c['seconds']:.2f}x faster than the same micro-batches on 1 rank; "
      f"whole command {a['wall_seconds'] / c['wall_seconds']:.2f}x")
PY
