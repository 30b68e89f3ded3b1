#!/usr/bin/python3
"""Retraining while serving, under load (docs/BENCHMARKS.md, "Retrain while serving"): a running
`lethe serve` on a trained S3T job takes a steady stream of deletions (lethe_bench_load, one record
a request) and of predictions (a client posting test rows to /v1/predict), while a retrain that
POST /v1/retrain started trains beside it and is adopted. Reports, for before the retrain, during
it and after the swap: deletions offered, completed and failed with latency p50/p99 (request to
completed receipt), predictions answered, failed and their latency p50/p99; and the time from the
retrain's start to the swap.

Before the measurement it deletes random private records in small batches until at most
--live-shards shards are live (the retrain then trains those shards again from scratch). S3T
answers 503 `unavailable` while no shard is live (nothing to serve, by design): such answers are
counted apart, never as failures.

Usage (bench/service/retrain.sh prepares the job and runs this):
  bench/service/retrain_load.py --lethe build/lethe --load build/lethe_bench_load --job JOB \
    --ids IDS --test fashion-test.h5 --token TOKEN --out DIR [--rate 50]
"""
import argparse
import json
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np


def percentile(values, q):
    return float(np.percentile(values, q)) if values else float("nan")


class Service:
    def __init__(self, lethe, job, token, log):
        self.proc = subprocess.Popen([lethe, "serve", "--job", job, "--listen", "127.0.0.1:0", "--token-file", token],
                                     stdout=subprocess.PIPE, stderr=open(log, "w"), text=True)
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"retrain_load: the service exited before listening; see {log}")
        self.url = f"http://127.0.0.1:{json.loads(line)['port']}"
        self.token = Path(token).read_text().split()[0]

    def call(self, method, path, body=None, raw=None, headers=None):
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Authorization": "Bearer " + self.token,
                                              "Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def json(self, method, path, body=None):
        status, out = self.call(method, path, body)
        return status, json.loads(out or b"{}")

    def stop(self):
        self.proc.terminate()
        return self.proc.wait(120)


class Predictor(threading.Thread):
    """POST /v1/predict of `rows` test rows (binary) every `interval` seconds; each answer timed and
    tagged with the phase it started in."""

    def __init__(self, service, rows, interval):
        super().__init__(daemon=True)
        self.service, self.body, self.rows, self.interval = service, rows.tobytes(), len(rows), interval
        self.phase, self.results, self.stopping = "before", [], threading.Event()

    def run(self):
        headers = {"Content-Type": "application/octet-stream", "X-Lethe-Dtype": "uint8", "X-Lethe-Model": "s3t"}
        while not self.stopping.wait(self.interval):
            phase, t = self.phase, time.perf_counter()
            try:
                status, out = self.service.call("POST", "/v1/predict", raw=self.body, headers=headers)
                unavailable = status == 503 and json.loads(out)["error"]["code"] == "unavailable"
            except OSError:
                status, unavailable = 0, False
            self.results.append({"phase": phase, "status": status, "unavailable": unavailable,
                                 "ms": (time.perf_counter() - t) * 1000})


def live_shards(service):
    status, models = service.json("GET", "/v1/models")
    if status != 200:
        raise SystemExit(f"retrain_load: GET /v1/models answered {status}: {models}")
    return next(m for m in models["models"] if m["name"] == "s3t")["live_shards"], models


def run_load(args, service, ids, seconds, label, out):
    if args.rate <= 0:  # predictions only
        time.sleep(seconds)
        return {"arrivals": 0, "completed": 0, "errors": 0, "latency": {"count": 0, "p50_ms": float("nan"), "p99_ms": float("nan")}}
    path = out / f"ids-{label}.txt"
    path.write_text("\n".join(ids) + "\n")
    report = out / f"load-{label}.json"
    p = subprocess.run([args.load, "--url", service.url, "--token-file", args.token, "--ids", str(path), "--rate",
                        str(args.rate), "--duration", str(seconds), "--concurrency", "16", "--poll-interval-ms", "5",
                        "--json", str(report)], capture_output=True, text=True)
    if not report.exists():
        raise SystemExit(f"retrain_load: lethe_bench_load wrote no report ({p.returncode}): {p.stderr[-2000:]}")
    return json.loads(report.read_text())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in ("lethe", "load", "job", "ids", "test", "token", "out"):
        ap.add_argument("--" + name, required=True)
    ap.add_argument("--rate", type=float, default=50, help="deletions per second (0: predictions only)")
    ap.add_argument("--chunk", type=float, default=15, help="seconds per load run; the retrain spans several")
    ap.add_argument("--live-shards", type=int, default=1, help="kill shards until at most this many are live")
    ap.add_argument("--predict-rows", type=int, default=256)
    ap.add_argument("--predict-interval", type=float, default=0.25)
    a = ap.parse_args()
    args, out = a, Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    ids = [line for line in Path(a.ids).read_text().split() if line]
    test_rows = []
    with subprocess.Popen([a.lethe, "inspect", a.test, "--records"], stdout=subprocess.PIPE, text=True) as p:
        for line in p.stdout:
            test_rows.append(bytes.fromhex(json.loads(line)["features"]))
            if len(test_rows) == a.predict_rows:
                break
    rows = np.frombuffer(b"".join(test_rows), dtype=np.uint8).reshape(len(test_rows), -1)

    service = Service(a.lethe, a.job, a.token, out / "serve.log")
    # Kill shards: random private records, 5 a request, until at most --live-shards are live.
    used = 0
    while live_shards(service)[0] > a.live_shards:
        status, answer = service.json("POST", "/v1/deletions", {"records": ids[used:used + 5]})
        used += 5
        if status != 202:
            raise SystemExit(f"retrain_load: POST /v1/deletions answered {status}: {answer}")
        while service.json("GET", answer["receipt"])[1]["status"] not in ("completed", "failed"):
            time.sleep(0.01)
    live_before, _ = live_shards(service)
    print(f"# {used} records deleted first: {live_before} of 4 shards live")

    predictor = Predictor(service, rows, a.predict_interval)
    predictor.start()
    per_chunk = int(max(a.rate, 0) * a.chunk * 1.2) + 20
    take = lambda: ids[used:used + per_chunk]
    loads = {"before": [], "during": [], "after": []}
    loads["before"].append(run_load(args, service, take(), a.chunk, "before", out))
    used += per_chunk

    predictor.phase = "during"
    t0 = time.time()
    status, started = service.json("POST", "/v1/retrain", {})
    if status != 202:
        raise SystemExit(f"retrain_load: POST /v1/retrain answered {status}: {started}")
    retrain_id, swap_s, state = started["id"], None, {}
    done = threading.Event()

    def watch():
        nonlocal swap_s, state
        while True:
            code, state = service.json("GET", f"/v1/retrain/{retrain_id}")
            if code != 200 or state["status"] != "running":
                swap_s = time.time() - t0
                predictor.phase = "after"
                done.set()
                return
            time.sleep(0.1)

    threading.Thread(target=watch, daemon=True).start()
    k = 0
    while not done.is_set():
        loads["during"].append(run_load(args, service, take(), a.chunk, f"during-{k}", out))
        used += per_chunk
        k += 1
    if state.get("status") != "completed":
        raise SystemExit(f"retrain_load: retrain {retrain_id} ended {state}")
    loads["after"].append(run_load(args, service, take(), a.chunk, "after", out))
    used += per_chunk
    predictor.stopping.set()
    predictor.join()
    live_after, models = live_shards(service)
    rc = service.stop()

    summary = {"rate": a.rate, "records_deleted_first": used, "live_shards_before": live_before,
               "live_shards_after": live_after, "retrain_id": retrain_id, "retrain_start_to_swap_s": swap_s,
               "retrain": state, "model_version_after": models["model_version"], "service_exit": rc, "phases": {}}
    print(f"retrain {retrain_id}: POST /v1/retrain to the swap {swap_s:.1f} s; live shards {live_before} -> {live_after}; "
          f"service exit {rc}")
    print(f"{'phase':8} {'deletions':>9} {'done':>6} {'failed':>6} {'p50 ms':>8} {'p99 ms':>8} | "
          f"{'predicts':>8} {'200':>5} {'503':>5} {'failed':>6} {'p50 ms':>8} {'p99 ms':>8}")
    for phase in ("before", "during", "after"):
        runs = loads[phase]
        arrivals = sum(r["arrivals"] for r in runs)
        completed = sum(r["completed"] for r in runs)
        errors = sum(r["errors"] for r in runs)
        # Each run's percentiles weighted by its completions (the runs are of equal length).
        weights = [max(r["latency"]["count"], 1) for r in runs]
        p50 = float(np.average([r["latency"]["p50_ms"] for r in runs], weights=weights)) if completed else float("nan")
        p99 = max((r["latency"]["p99_ms"] for r in runs), default=float("nan"))
        preds = [r for r in predictor.results if r["phase"] == phase]
        ok = [r["ms"] for r in preds if r["status"] == 200]
        unavailable = sum(r["unavailable"] for r in preds)
        failed = len(preds) - len(ok) - unavailable
        summary["phases"][phase] = {"deletion_runs": len(runs), "arrivals": arrivals, "completed": completed,
                                    "errors": errors, "deletion_p50_ms": p50, "deletion_p99_ms_max_of_runs": p99,
                                    "predictions": len(preds), "predictions_ok": len(ok),
                                    "predictions_unavailable": unavailable, "predictions_failed": failed,
                                    "prediction_p50_ms": percentile(ok, 50), "prediction_p99_ms": percentile(ok, 99)}
        print(f"{phase:8} {arrivals:9d} {completed:6d} {errors:6d} {p50:8.1f} {p99:8.1f} | {len(preds):8d} {len(ok):5d} "
              f"{unavailable:5d} {failed:6d} {percentile(ok, 50):8.1f} {percentile(ok, 99):8.1f}")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"# {out / 'summary.json'}")


if __name__ == "__main__":
    main()
