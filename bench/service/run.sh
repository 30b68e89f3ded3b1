#!/usr/bin/env bash
# Deletion service benchmark (results in docs/BENCHMARKS.md, "Deletion service"):
#  1. end-to-end latency (request -> completed receipt) and throughput of the slice-deactivation
#     route at increasing request rates, from a separate load process (lethe_bench_load), each
#     rate against a fresh copy of a trained 4x4x4 S3T job on Fashion-MNIST;
#  2. the cost of one deletion by each route next to a full retrain, in the same run.
# Needs the demo's data (./scripts/demo.sh) and a build (./scripts/build.sh).
# Usage: bench/service/run.sh [rates...]    (default: 25 50 100 200 400 requests/s)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
source "$root/bench/service/config.sh"  # lethe, load, data; bench_requirements, common, s3t_config, serve
out=$(realpath -m "${LETHE_BENCH_DIR:-bench-out/service}")
duration=${LETHE_BENCH_DURATION:-10}
rates=("$@")
((${#rates[@]})) || rates=(25 50 100 200 400)
bench_requirements

# LETHE_BENCH_REUSE=1 keeps the trained jobs of an earlier run (training is the slow part).
[[ ${LETHE_BENCH_REUSE:-0} == 1 && -f "$out/train-noisy.json" ]] || rm -rf "$out"
mkdir -p "$out"
cd "$out"
(umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > token)

s3t_config "$out/train-s3t.h5" > s3t.yaml
common "$out/train-noisy.h5" > noisy.yaml
printf 's3t: {enabled: false}\nnoisy_gd: {}\n' >> noisy.yaml
# Deletions erase records in place: every job works on a fresh copy of the training set.
cp "$data/fashion-train.h5" train-s3t.h5
cp "$data/fashion-train.h5" train-noisy.h5

seconds_of() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$@"; }

if [[ ! -f train-noisy.json ]]; then
  echo "== train the S3T job (4x4x4, 2 ranks) and the noisy-GD job (2 ranks) =="
  "${mpi[@]}" "$lethe" --log-level warn train --config s3t.yaml --job s3t-job > train-s3t.json
  "${mpi[@]}" "$lethe" --log-level warn train --config noisy.yaml --job noisy-job > train-noisy.json.tmp
  mv train-noisy.json.tmp train-noisy.json
fi
"$lethe" inspect train-s3t.h5 --ids private | shuf --random-source=<(yes) > ids.txt

stop() { kill -TERM "$server"; wait "$server"; }
cpu_seconds() { awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$1/stat"; }  # user + system

echo "== 1. slice deactivation under load: ${rates[*]} requests/s for ${duration} s each =="
offset=0
for rate in "${rates[@]}"; do
  rm -rf job-$rate && cp -r s3t-job job-$rate && cp "$data/fashion-train.h5" train-s3t.h5
  need=$(python3 -c "import math; print(math.ceil($rate * $duration * 1.5) + 50)")
  sed -n "$((offset + 1)),$((offset + need))p" ids.txt > ids-$rate.txt
  offset=$((offset + need))
  serve job-$rate
  cpu0=$(cpu_seconds "$server")
  "$load" --url "http://127.0.0.1:$port" --token-file token --ids ids-$rate.txt --rate "$rate" \
    --duration "$duration" --concurrency 32 --poll-interval-ms 2 --json load-$rate.json | tail -n 12
  echo "service CPU: $(python3 -c "print(round($(cpu_seconds "$server") - $cpu0, 2))") s in the ${duration} s run"
  # Where the batch thread's time went (sums over the run) and the latency by second from the ledger.
  curl -sf -H "Authorization: Bearer $(cat token)" "http://127.0.0.1:$port/metrics" > metrics-$rate.txt
  grep -E '^lethe_deletion_batches_total|^lethe_deletion_phase_seconds_sum' metrics-$rate.txt
  stop
  python3 "$root/bench/service/ledger_latency.py" job-$rate --json ledger-$rate.json
done

echo "== 2. one deletion by each route, next to a full retrain =="
cp "$data/fashion-train.h5" train-s3t.h5
rm -rf route-s3t && cp -r s3t-job route-s3t
serve route-s3t
for i in 1 2 3; do
  "$lethe" --log-level warn delete --server "http://127.0.0.1:$port" --token-file token \
    --record "$(sed -n "$((offset + i))p" ids.txt)" --wait > s3t-receipt-$i.json
done
stop
t0=$(date +%s.%N)
"${mpi[@]}" "$lethe" --log-level warn retrain --job route-s3t > retrain-s3t.json
t1=$(date +%s.%N)
rm -rf route-noisy && cp -r noisy-job route-noisy
serve route-noisy
for i in 1 2 3; do
  "$lethe" --log-level warn delete --server "http://127.0.0.1:$port" --token-file token \
    --record "$(sed -n "$((offset + 10 + i))p" ids.txt)" --wait > noisy-receipt-$i.json
done
stop

python3 - "$t0" "$t1" "${rates[@]}" <<'PY'
import json, sys, datetime
t0, t1, rates = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
def ms(receipt):
    f = lambda s: datetime.datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ")
    return (f(receipt["completed_at"]) - f(receipt["submitted_at"])).total_seconds() * 1000
print("\nslice deactivation under load (request -> completed receipt)")
print(f"{'offered/s':>10} {'achieved/s':>11} {'done':>6} {'errors':>7} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8}")
summary = {"load": [], "routes": {}}
for r in rates:
    j = json.load(open(f"load-{r}.json"))
    l = j["latency"]
    print(f"{j['offered_per_s']:10.1f} {j['throughput_per_s']:11.1f} {j['completed']:6d} {j['errors']:7d} "
          f"{l['p50_ms']:8.1f} {l['p90_ms']:8.1f} {l['p99_ms']:8.1f} {l['max_ms']:8.1f}")
    summary["load"].append({"rate": float(r), **j})
s3t = [ms(json.load(open(f"s3t-receipt-{i}.json"))) for i in (1, 2, 3)]
noisy = [json.load(open(f"noisy-receipt-{i}.json")) for i in (1, 2, 3)]
noisy_ms = [ms(r) for r in noisy]
noisy_part = [m for m in noisy[0]["models"] if m["name"] == "noisy_gd"][0]
train_s3t = json.load(open("train-s3t.json"))["s3t"]["seconds"]
train_noisy = json.load(open("train-noisy.json"))
noisy_train_s = train_noisy.get("noisy_gd", {}).get("seconds", float("nan"))
print("\none deletion by each route (request -> completed receipt, median of 3) and full retrains")
print(f"  slice deactivation (S3T)      {sorted(s3t)[1]:10.1f} ms")
print(f"  noisy GD, K_U = {noisy_part['unlearning_steps']:<4d}          {sorted(noisy_ms)[1]:10.1f} ms   (epsilon {noisy_part['epsilon']:.3g}, delta {noisy_part['delta']:.3g})")
print(f"  S3T retrain of 3 truncations  {(t1 - t0) * 1000:10.1f} ms   (lethe retrain, 2 ranks)")
print(f"  S3T full training             {train_s3t * 1000:10.1f} ms   (lethe train 4x4x4, 2 ranks)")
print(f"  noisy GD full training        {noisy_train_s * 1000:10.1f} ms   (lethe train, 2 ranks)")
summary["routes"] = {"s3t_ms": s3t, "noisy_gd_ms": noisy_ms, "noisy_gd_receipt": noisy_part,
                     "s3t_retrain_after_3_ms": (t1 - t0) * 1000, "s3t_train_s": train_s3t, "noisy_train_s": noisy_train_s}
json.dump(summary, open("summary.json", "w"), indent=2)
PY
echo "bench/service: results in $out (summary.json)"
