#!/usr/bin/env bash
# Deletions and predictions on the demo's job (results in docs/BENCHMARKS.md, "On the demo's job"):
# the demo's model (launch/examples/fashion_s3t.yaml: S3T 4x4x4 and noisy GD beside it) trained on
# 2 ranks and served on 2 ranks (mpiexec lethe serve, as the demo does). Then, against that one
# service, in this order:
#  1. the 10,000 test images scored by both models from this client (bench/service/predict.py:
#     JSON in 1024-row requests against one binary request per model), while every shard is live;
#  2. single-record deletions one after another: 1 request/s for 30 s on one connection, so that a
#     request is sent only when the one before has its receipt; request -> completed receipt (every
#     model's route applied, checkpoints purged, bytes erased) timed by lethe_bench_load (its
#     "completed" row; "from arrival" adds the wait for the connection);
#  3. single-record deletions at 20 requests/s for 10 s, 64 connections (the noisy-GD model now
#     carries the earlier deletions, so its K_U has grown);
#  4. where a batch's time goes: the per-phase summaries of /metrics, and the last receipt's K_U.
# Needs the demo's data (./scripts/demo.sh) and a build (./scripts/build.sh).
# Usage: bench/service/demo_job.sh      (LETHE_BENCH_REUSE=1 keeps the trained job of an earlier run)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
source "$root/bench/service/config.sh"  # lethe, load, data; bench_requirements, s3t_config, serve
out=$(realpath -m "${LETHE_BENCH_DIR:-bench-out/demo-job}")
bench_requirements

[[ ${LETHE_BENCH_REUSE:-0} == 1 && -f "$out/train.json" ]] || rm -rf "$out"
mkdir -p "$out"
cd "$out"
(umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > token)
{
  s3t_config "$out/train.h5"
  echo "noisy_gd: {lambda: 0.005, sigma: 0.01, steps: 200, target_epsilon: 1}"  # as the demo's config
} > job.yaml
if [[ ! -f train.json ]]; then
  echo "== train the demo's job (S3T 4x4x4 and noisy GD, 2 ranks) =="
  cp "$data/fashion-train.h5" train.h5
  "${mpi[@]}" "$lethe" --log-level warn train --config job.yaml --job trained > train.json.tmp
  mv train.json.tmp train.json
fi
# Deletions erase records in place: the served job works on fresh copies.
rm -rf job && cp -r trained job && cp "$data/fashion-train.h5" train.h5
"$lethe" inspect train.h5 --ids private | shuf --random-source=<(yes) > ids.txt
# Arrivals are Poisson: more ids than the expected 30 and 200 (the load exits 1 when they run out).
sed -n 1,80p ids.txt > ids-single.txt
sed -n 81,480p ids.txt > ids-20.txt

serve job "${mpi[@]}"  # sets server and port; the log goes to job.log
trap 'kill -TERM $server 2>/dev/null || true' EXIT
url=http://127.0.0.1:$port

echo "== 1. the test set scored by both models (before any deletion: every shard live) =="
/usr/bin/python3 "$root/bench/service/predict.py" --url "$url" --token-file token --lethe "$lethe" \
  --test "$data/fashion-test.h5" | tee predict.txt
echo "== 2. single-record deletions one after another (1/s for 30 s, one connection) =="
"$load" --url "$url" --token-file token --ids ids-single.txt --rate 1 --duration 30 --concurrency 1 \
  --poll-interval-ms 2 --json load-single.json | tail -n 6
metrics() { curl -sf -H "Authorization: Bearer $(cat token)" "$url/metrics"; }
metrics > metrics-single.txt
echo "== 3. single-record deletions at 20/s for 10 s =="
"$load" --url "$url" --token-file token --ids ids-20.txt --rate 20 --duration 10 --concurrency 64 \
  --poll-interval-ms 2 --completion-timeout-ms 120000 --json load-20.json | tail -n 6
metrics > metrics.txt
last=$(sed -n 481p ids.txt)
"$lethe" --log-level warn delete --server "$url" --token-file token --record "$last" --wait > last-receipt.json
kill -TERM "$server"
# mpiexec reports a rank stopped by a signal as a failure even when it drained cleanly (job.log).
wait "$server" || true
trap - EXIT

python3 - <<'PY'
import json, re
print("\nsingle-record deletions on the demo's job (request -> completed receipt, ms)")
print(f"{'phase':>18} {'offered/s':>10} {'done':>5} {'errors':>7} {'p50':>7} {'p90':>7} {'p99':>7} {'max':>7}")
summary = {}
for name, path in (("one after another", "load-single.json"), ("20/s", "load-20.json")):
    j = json.load(open(path))
    l = j["latency"]
    print(f"{name:>18} {j['offered_per_s']:10.1f} {j['completed']:5d} {j['errors']:7d} {l['p50_ms']:7.1f} "
          f"{l['p90_ms']:7.1f} {l['p99_ms']:7.1f} {l['max_ms']:7.1f}")
    summary[name] = j
def phase_totals(path):
    totals = {}
    for line in open(path):
        m = re.match(r'lethe_deletion_phase_seconds_(sum|count)\{phase="([^"]+)"\} (\S+)', line)
        if m:
            totals.setdefault(m[2], {"sum": 0.0, "count": 0.0})[m[1]] = float(m[3])
    return totals
single, both = phase_totals("metrics-single.txt"), phase_totals("metrics.txt")
phases = {"one after another": {p: 1000 * t["sum"] / t["count"] for p, t in single.items() if t["count"]}, "20/s": {}}
for p, t in both.items():
    before = single.get(p, {"sum": 0.0, "count": 0.0})
    if t["count"] > before["count"]:
        phases["20/s"][p] = 1000 * (t["sum"] - before["sum"]) / (t["count"] - before["count"])
batches = {"one after another": int(single["resolve"]["count"]),
           "20/s": int(both["resolve"]["count"] - single["resolve"]["count"])}
print("\nwhere a batch's time goes (/metrics lethe_deletion_phase_seconds: mean ms per batch)")
print(f"{'phase':>16} " + " ".join(f"{name:>18}" for name in phases))
print(f"{'(batches)':>16} " + " ".join(f"{batches[name]:18d}" for name in phases))
for p in sorted(phases["one after another"], key=lambda p: -phases["one after another"][p]):
    print(f"{p:>16} " + " ".join(f"{phases[name].get(p, float('nan')):18.1f}" for name in phases))
receipt = json.load(open("last-receipt.json"))
noisy = [m for m in receipt["models"] if m["name"] == "noisy_gd"][0]
print(f"\nK_U of the next single-record deletion after these: {noisy['unlearning_steps']} "
      f"(epsilon {noisy['epsilon']:.3g})")
predict = json.loads(open("predict.txt").read().strip().splitlines()[-1])
summary.update({"phases_ms": phases, "batches": batches, "last_receipt_noisy_gd": noisy, "predict": predict})
json.dump(summary, open("summary.json", "w"), indent=2)
PY
echo "bench/service/demo_job.sh: results in $out (summary.json)"
