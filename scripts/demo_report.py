#!/usr/bin/python3
"""The demo's report: REPORT.md, accuracy.png and depth.png, written from the results.json that
scripts/demo_drive.py leaves in its output directory, and from nothing else. The driver calls it at
its end; run it alone to write the report again without rerunning the demo:

  /usr/bin/python3 scripts/demo_report.py --results demo-out/report/results.json --out demo-out/report

results.json (one JSON object, written by scripts/demo_drive.py):
  config           the driver's arguments (job, mpiexec, seed, started_at, ...)
  finished_at      unix time the driver finished (the report's date; with started_at, the whole demo's time)
  points           accuracy measurements: label, deleted, t (s since the driver started), live_shards,
                   depth (per shard), s3t (null: the ensemble was down), noisy_gd, seconds
  depth_samples    GET /v1/models over time: t, deleted, model_version, live_shards, depth, noisy_records,
                   noisy_version
  retrain_span_s   [start, end] of the retrain (POST /v1/retrain until adopted), s since the driver started
  requests         one per deletion request, in completion order: kind, id, records, sent and
                   seen_completed (client unix times), receipt (the service's final receipt)
  deleted_records  private records deleted; refused_records: public records refused
  erasure          the erasure checks' counts (files, bytes, rows_checked, rows_found, row_bytes, ledger_*)
  retrain          the retrain: id, status (GET /v1/retrain/{id}), deleted_since_snapshot, routes (per model
                   what it restored, less the digests, and what its adoption forgot), served_meanwhile
                   (deletion requests, predictions, s3t_unavailable), receipts_naming_it
  timings_s        seconds per part of the driver
  batches, latency_ms  derived from requests (this script's batches() and latencies()); the report
                   computes them again from requests

Needs the Debian interpreter (/usr/bin/python3: numpy, matplotlib); stdlib otherwise.
"""

import argparse
import datetime
import json
import sys
from pathlib import Path

import numpy as np

# What the report reads from results.json; derived keys (batches, latency_ms) are computed again.
REQUIRED = ("config", "finished_at", "points", "depth_samples", "retrain_span_s", "requests", "deleted_records",
            "refused_records", "erasure", "timings_s")


def log(message):
    print(f"demo: {message}", flush=True)


def percentile(values, q):
    """Nearest-rank percentile of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, int(np.ceil(q / 100 * len(ordered))) - 1))]


def parse_time(stamp):
    return datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc).timestamp()


# ---------------------------------------------------------------------------------------------
# Tables derived from the requests' receipts.

def batches(requests):
    """One row per service batch (requests planned together share its model effects)."""
    seen = {}
    for r in requests:
        receipt = r["receipt"]
        version = receipt["model_version"]
        if version not in seen:
            noisy = next(m for m in receipt["models"] if m["name"] == "noisy_gd")
            s3t = next(m for m in receipt["models"] if m["name"] == "s3t")
            seen[version] = {"model_version": version, "requests": receipt["batch"]["requests"],
                             "records_deleted": receipt["batch"]["records_deleted"], "kinds": set(),
                             "noisy_route": noisy["route"], "K_U": noisy.get("unlearning_steps"),
                             "steps_run": noisy.get("steps_run"), "epsilon": noisy.get("epsilon"),
                             "delta": noisy.get("delta"), "certified": noisy.get("certified"),
                             "noisy_wall_s": noisy.get("wall_seconds"), "n_after": noisy.get("n_after"),
                             "shards_touched": len(s3t.get("shards", [])),
                             "shards_killed": sum(sh["full_retrain_scheduled"] for sh in s3t.get("shards", [])),
                             "applied_s": parse_time(receipt["applied_at"]) - parse_time(receipt["submitted_at"])}
        seen[version]["kinds"].add(r["kind"])
    rows = sorted(seen.values(), key=lambda b: b["model_version"])
    for b in rows:
        b["kinds"] = "+".join(sorted(b["kinds"]))
    return rows


def latencies(requests):
    """ms percentiles of request -> completed, grouped by request kind and by noisy-GD route."""
    groups = {}
    for r in requests:
        receipt = r["receipt"]
        noisy = next(m for m in receipt["models"] if m["name"] == "noisy_gd")
        sub = parse_time(receipt["submitted_at"])
        sample = ((parse_time(receipt["applied_at"]) - sub) * 1e3, (parse_time(receipt["completed_at"]) - sub) * 1e3,
                  (r["seen_completed"] - r["sent"]) * 1e3)
        for key in (f"kind: {r['kind']}", f"route: slice_deactivation + {noisy['route']}"):
            groups.setdefault(key, []).append(sample)
    table = {}
    for key, samples in sorted(groups.items()):
        col = lambda k: [s[k] for s in samples]
        table[key] = {"n": len(samples),
                      "applied_p50_ms": percentile(col(0), 50),
                      "completed_p50_ms": percentile(col(1), 50), "completed_p90_ms": percentile(col(1), 90),
                      "completed_p99_ms": percentile(col(1), 99), "completed_max_ms": max(col(1)),
                      "client_p50_ms": percentile(col(2), 50), "client_p99_ms": percentile(col(2), 99)}
    return table


def derived(results):
    """The tables results.json carries beside the raw data: {"batches": [...], "latency_ms": {...}}."""
    return {"batches": batches(results["requests"]), "latency_ms": latencies(results["requests"])}


# ---------------------------------------------------------------------------------------------
# Plots.

def plot(results, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    points = results["points"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    xs = [p["deleted"] for p in points]
    s3t = [np.nan if p["s3t"] is None else p["s3t"] for p in points]
    ax.plot(xs[:-1], s3t[:-1], "o-", label="S3T ensemble (served prefixes)")
    ax.plot(xs[:-1], [p["noisy_gd"] for p in points[:-1]], "s-", label="noisy GD (certified, ε = 1 per batch)")
    ax.plot([xs[-1]], [s3t[-1]], "o", color="C0", mfc="white", ms=9, label="S3T after the retrain's swap")
    ax.plot([xs[-1]], [points[-1]["noisy_gd"]], "s", color="C1", mfc="white", ms=9, label="noisy GD after the swap")
    down = [p["deleted"] for p, y in zip(points, s3t) if np.isnan(y)]
    if down:
        ax.plot(down, [0.03] * len(down), "x", color="C0", ms=9, label="S3T down: no live shard (503)")
    ax.set_xlabel("records deleted (private)")
    ax.set_ylabel("test accuracy (10,000 images, POST /v1/predict)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="center right", fontsize=8)
    ax.set_title("Fashion-MNIST: accuracy against deletions")
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4.5))
    samples = results["depth_samples"]
    ts = [s["t"] for s in samples]
    for k in range(len(samples[0]["depth"])):
        ax.step(ts, [s["depth"][k] + 0.04 * (k - 1.5) for s in samples], where="post", label=f"shard {k}")
    marks = [(p["t"], p["label"]) for p in points]
    for t, label in marks:
        ax.axvline(t, color="grey", lw=0.5, ls=":")
    ax.axvspan(*results["retrain_span_s"], color="grey", alpha=0.15, label="retrain running (the service kept serving)")
    ax.set_xlabel("seconds since the demo's deletion part started (dotted: accuracy measurements)")
    ax.set_ylabel("served depth (slices; 0 = dead)")
    ax.set_yticks(range(0, 5))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("S3T: surviving depth per shard over time (GET /v1/models)")
    fig.tight_layout()
    fig.savefig(out / "depth.png", dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# REPORT.md.

def markdown(results):
    args, points, requests, timings = results["config"], results["points"], results["requests"], results["timings_s"]
    batch_rows, lat = batches(requests), latencies(requests)
    before, after = points[0], points[-1]
    after_del = next((p for p in points if p["label"] == "subjects"), points[-2])
    fmt = lambda a: "down (no live shard)" if a is None else f"{a:.4f}"
    kinds = {}
    for r in requests:
        kinds.setdefault(r["kind"], [0, 0])
        kinds[r["kind"]][0] += 1
        kinds[r["kind"]][1] += r["records"]
    finished = datetime.datetime.fromtimestamp(results["finished_at"], datetime.timezone.utc)
    md = [
        "# Lethe demo: deletions through the service",
        "",
        f"Written by `scripts/demo_report.py` from the results of `scripts/demo_drive.py` ({finished:%Y-%m-%d %H:%M UTC}); "
        "the numbers come from this run. Raw data: `results.json`; service logs: `serve-*.log`.",
        "",
        "## Configuration",
        "",
        f"- Job `{args['job']}`: S3T 4 shards × 4 slices × 4 sequences (cyclic) and the noisy-GD model "
        "(softmax regression on the frozen backbone's features, target ε = 1 per deletion batch), trained on "
        "Fashion-MNIST (60,000 training images, 10% public; 10,000 test images).",
        f"- Service: `{args['mpiexec']} lethe serve --listen 127.0.0.1:0 --token-file … --body-limit 8388608` "
        f"(token file mode 0600); started in {timings['serve_start_s']:.1f} s.",
        f"- Deletions: {', '.join(f'{n} {k} request(s) ({m} records)' for k, (n, m) in kinds.items())}; "
        f"{results['deleted_records']} private records deleted, {results['refused_records']} public records of the "
        "subjects refused (`refused_public`: they pretrained the backbone). Singles and batches are sent one at a time "
        "(each waits for its receipt); the subject requests are sent together by 8 client threads. Records are "
        f"picked at random (seed {args['seed']}) among private records whose image has no byte-identical twin.",
        "- Accuracy: `POST /v1/predict` on the whole test set in one binary request (uint8 rows in, float32 probabilities out), for `s3t` and `noisy_gd`.",
        "",
        "## Accuracy against deletions",
        "",
        "![accuracy](accuracy.png)",
        "",
        "| point | deleted | S3T live shards | S3T depths | S3T accuracy | noisy-GD accuracy |",
        "|---|---|---|---|---|---|",
    ]
    for p in points:
        md.append(f"| {p['label']} | {p['deleted']} | {p['live_shards']} | {p['depth']} | {fmt(p['s3t'])} | {p['noisy_gd']:.4f} |")
    md += [
        "",
        f"Before: S3T {fmt(before['s3t'])}, noisy GD {before['noisy_gd']:.4f}. After {after_del['deleted']} deletions: "
        f"S3T {fmt(after_del['s3t'])}, noisy GD {after_del['noisy_gd']:.4f}. After the retrain "
        f"({timings['retrain_s']:.1f} s from `POST /v1/retrain` to the swap; the service never stopped): "
        f"S3T {fmt(after['s3t'])} with {after['live_shards']} live shards, noisy GD {after['noisy_gd']:.4f}.",
        "",
        "S3T forgets by slice deactivation: a deleted record's slice and every later slice of each sequence of its "
        "shard are dropped, so the served depth falls and a shard whose sequences all lost their first slice dies; "
        "the 4 × 4 × 4 job's expected capacity is about 54 uniform deletions (docs/BENCHMARKS.md), far below the "
        "few hundred deleted here, which is why the ensemble needs a retrain. Noisy GD forgets by K_U noisy "
        "steps per batch (or a retrain from scratch when that is cheaper), so its accuracy barely moves.",
        "",
    ]
    retrain = results["retrain"]
    if "served_meanwhile" in retrain:
        served = retrain["served_meanwhile"]
        s3t_route = retrain.get("routes", {}).get("s3t", {})
        restored = s3t_route.get("retrain", {})
        forgotten = s3t_route.get("forgotten", {})
        md += [
            "## Retraining while serving",
            "",
            f"`POST /v1/retrain` started retrain `{retrain['id']}` (`mpiexec lethe retrain` beside the service, "
            f"`--retrain-command`): it restored {restored.get('sequences_restored', '?')} sequences "
            f"({restored.get('steps_trained', '?')} prefix steps; shards revived: {restored.get('shards_revived', '?')}) "
            f"on the records live at its snapshot, into new checkpoint series. Meanwhile the service completed "
            f"{served['deletion_requests']} deletion requests (kind `during retrain`, one at a time, each waiting for its "
            f"receipt; {retrain['receipts_naming_it']} receipts name the running retrain) and served "
            f"{served['predictions']} whole-test-set predictions ({served['s3t_unavailable']} of them S3T 503s while no "
            f"shard was live). The service adopted the retrain in one manifest commit, after making the new models "
            f"forget the {retrain['deleted_since_snapshot']} records deleted since its snapshot (S3T shards cut at "
            f"adoption: {len(forgotten.get('shards', []))}), and served them without a restart: model version "
            f"{retrain['status'].get('model_version')}.",
            "",
        ]
    singles_k = [b["K_U"] for b in batch_rows if b["kinds"] == "single"]
    if singles_k:
        md += [f"K_U of the single-record batches, in order: {', '.join(map(str, singles_k))}. Each plan starts "
               "from the distance bound z that the earlier phases (training, deletions, their noisy steps) left "
               "in the accountant's history (trainer/accountant.h), not from a fresh model, so K_U grows from "
               "the first deletion's; the per-batch table is below.", ""]
    md += [
        "## Surviving depth per shard over time",
        "",
        "![depth](depth.png)",
        "",
        "## Deletion latency",
        "",
        "Receipt timestamps: `submitted_at` → `applied_at` (models forgot) and → `completed_at` (bytes erased, "
        "checkpoints purged); client: POST sent → completed receipt seen (polling every 20 ms). Every request goes "
        "to both models, so a route is the pair (S3T route + noisy-GD route) its batch took.",
        "",
        "| group | n | applied p50 ms | completed p50 ms | p90 | p99 | max | client p50 ms | client p99 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, l in lat.items():
        md.append(f"| {key} | {l['n']} | {l['applied_p50_ms']:.0f} | {l['completed_p50_ms']:.0f} | {l['completed_p90_ms']:.0f} | "
                  f"{l['completed_p99_ms']:.0f} | {l['completed_max_ms']:.0f} | {l['client_p50_ms']:.0f} | {l['client_p99_ms']:.0f} |")
    md += [
        "",
        "## Noisy-GD certificate per deletion batch",
        "",
        "Requests planned together share one batch; ε and δ are the batch's certificate (Rényi DP converted at δ), "
        "K_U the noisy steps it needed on the remaining records.",
        "",
        "| model version | requests | kinds | records deleted | route | K_U | steps run | ε | δ | certified | noisy-GD s | S3T shards touched / killed |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for b in batch_rows:
        eps = "—" if b["epsilon"] is None else f"{b['epsilon']:.4f}"
        if b["noisy_route"] == "full_retrain":
            eps += " (retrained from scratch)"
        delta = "—" if b["delta"] is None else f"{b['delta']:.3g}"
        wall = "—" if b["noisy_wall_s"] is None else f"{b['noisy_wall_s']:.2f}"
        md.append(f"| {b['model_version']} | {b['requests']} | {b['kinds']} | {b['records_deleted']} | {b['noisy_route']} | "
                  f"{b['K_U']} | {b['steps_run']} | {eps} | {delta} | {b['certified']} | {wall} | {b['shards_touched']} / {b['shards_killed']} |")
    e = results["erasure"]
    md += [
        "",
        "## Proof of erasure",
        "",
        f"After every receipt completed and the service stopped (SIGTERM, exit 0), every file under "
        f"{', '.join(f'`{s}`' for s in e['scanned'])} — {e['files']} files, {e['bytes'] / 1e6:.1f} MB — was scanned for "
        f"the {e['rows_checked']} deleted records' whole feature rows ({e['row_bytes']} bytes each, read from the "
        f"training set with `lethe inspect --records` before the deletions): **{e['rows_found']} found**. Controls: the "
        f"same scan found all {e['rows_checked']} rows in the training set before the deletions, and finds "
        f"{e['refused_public_rows_found']} of the {e['refused_public_rows']} refused public rows, which stay, afterwards.",
        "",
        f"Ledger (`ledger.sqlite`, docs/LEDGER.md, read through `lethe status`): requests by status {e['ledger_statuses']}; "
        f"{e['ledger_clear_record_ids']} clear record ids, {e['ledger_clear_subjects_or_keys']} clear subjects or keys; "
        f"{e['clear_tokens_found']} deleted ids or subjects found as text in any file of the job directory "
        "(database, WAL, manifests, checkpoints).",
        "",
        "## Timings",
        "",
        "| part | seconds |",
        "|---|---|",
    ]
    names = {"select_s": "read the data sets, pick the records, byte-scan control",
             "serve_start_s": "service start (mpiexec, both ranks load the job) until the port is printed",
             "deletions_and_measurements_s": "all deletions with their receipts and the accuracy measurements",
             "retrain_s": "retrain beside the service: POST /v1/retrain until the swap",
             "erasure_scan_s": "erasure and ledger scans",
             "total_s": "this part in all (scripts/demo_drive.py)"}
    for k, v in timings.items():
        md.append(f"| {names.get(k, k)} | {v:.1f} |")
    if args.get("started_at"):
        md.append(f"| whole demo up to this report (setup check, build, ingest, pretrain, train, eval, this part) | "
                  f"{results['finished_at'] - args['started_at']:.1f} |")
    md.append("| accuracy measurements (each: both models on 10,000 images) | "
              + ", ".join(f"{p['seconds']:.1f}" for p in points) + " |")
    return "\n".join(md) + "\n"


def write_report(results, out):
    """accuracy.png, depth.png and REPORT.md in `out` from the results dict (results.json's content)."""
    missing = [k for k in REQUIRED if k not in results]
    if missing:
        raise ValueError(f"results.json lacks {', '.join(missing)}: was it written by this version of "
                         "scripts/demo_drive.py?")
    if len(results["points"]) < 2 or not results["depth_samples"]:
        raise ValueError(f"results.json holds {len(results['points'])} accuracy points and "
                         f"{len(results['depth_samples'])} depth samples: the report needs 2 points and 1 sample at least")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plot(results, out)
    (out / "REPORT.md").write_text(markdown(results))
    log(f"report: {out / 'REPORT.md'}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", required=True, help="results.json written by scripts/demo_drive.py")
    ap.add_argument("--out", help="directory for REPORT.md and the plots (default: the results file's directory)")
    args = ap.parse_args()
    try:
        results = json.loads(Path(args.results).read_text())
        write_report(results, Path(args.out) if args.out else Path(args.results).parent)
    except (OSError, ValueError, KeyError, TypeError) as e:
        sys.exit(f"demo: step 'report' failed: {type(e).__name__}: {e}")


if __name__ == "__main__":
    main()
