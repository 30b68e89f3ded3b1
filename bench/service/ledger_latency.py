#!/usr/bin/env python3
"""Latency of a served job's deletions from its own ledger, by second of the run.

Usage: bench/service/ledger_latency.py JOB_DIR [--json FILE]

Reads JOB_DIR/ledger.sqlite read-only: each completed request's submitted_ms and completed_ms (set
by the service, so no client, HTTP or polling time is in them), and each batch's receipt for the
checkpoints it purged. Prints, per second since the first request, the count, p50, p99 and max
milliseconds and the checkpoints purged; then p50/p99 over all requests and from second 2 on.
"""
import json
import sqlite3
import sys


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main(argv):
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if len(argv) >= 2 else 2
    job = argv[1]
    out = argv[argv.index("--json") + 1] if "--json" in argv else None
    db = sqlite3.connect(f"file:{job}/ledger.sqlite?mode=ro", uri=True)
    rows = db.execute("SELECT submitted_ms, completed_ms, receipt FROM requests WHERE status = 'completed' "
                      "ORDER BY seq").fetchall()
    if not rows:
        print(f"ledger_latency: no completed request in {job}/ledger.sqlite", file=sys.stderr)
        return 1
    t0 = rows[0][0]
    seconds, batches = {}, set()
    for submitted, completed, receipt in rows:
        second = (submitted - t0) // 1000
        entry = seconds.setdefault(second, {"latency_ms": [], "checkpoints_purged": 0})
        entry["latency_ms"].append(completed - submitted)
        r = json.loads(receipt)
        if r["applied_at"] in batches:  # every request of a batch carries the batch's purges
            continue
        batches.add(r["applied_at"])
        entry["checkpoints_purged"] += sum(len(q.get("checkpoints_purged", [])) for m in r.get("models", [])
                                           for s in m.get("shards", []) for q in s.get("sequences", []))
    print(f"# {job}: {len(rows)} completed requests, latency submitted -> completed (ledger), by second of the run")
    print(f"{'second':>6} {'count':>6} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'purged':>7}")
    summary = {"job": job, "seconds": []}
    for second, e in sorted(seconds.items()):
        lat = e["latency_ms"]
        print(f"{second:6d} {len(lat):6d} {percentile(lat, .5):7d} {percentile(lat, .99):7d} {max(lat):7d} "
              f"{e['checkpoints_purged']:7d}")
        summary["seconds"].append({"second": second, "count": len(lat), "p50_ms": percentile(lat, .5),
                                   "p99_ms": percentile(lat, .99), "max_ms": max(lat),
                                   "checkpoints_purged": e["checkpoints_purged"]})
    every = [c - s for s, c, _ in rows]
    late = [c - s for s, c, _ in rows if s - t0 >= 2000]
    summary["all"] = {"p50_ms": percentile(every, .5), "p99_ms": percentile(every, .99)}
    print(f"# all: p50 {percentile(every, .5)} ms, p99 {percentile(every, .99)} ms", end="")
    if late:
        summary["from_second_2"] = {"p50_ms": percentile(late, .5), "p99_ms": percentile(late, .99)}
        print(f"; from second 2 on: p50 {percentile(late, .5)} ms, p99 {percentile(late, .99)} ms", end="")
    print()
    if out:
        with open(out, "w") as f:
            json.dump(summary, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
