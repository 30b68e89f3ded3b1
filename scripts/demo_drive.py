#!/usr/bin/python3
"""The demo's deletion part (scripts/demo.sh runs it after training): serve the trained job,
delete a few hundred records through the HTTP API (docs/API.md), measure what it did, prove
erasure, and write a report with plots.

Steps, each named in the error message when it fails (the exit status is then 1):
  select      pick the records to delete (private, no byte-identical twin) and take their
              feature bytes from the HDF5 dataset before anything is deleted
  serve       mpiexec -np N lethe serve --listen 127.0.0.1:0; the port is its first JSON line
  accuracy    POST /v1/predict on the whole test set (1024 rows a request), both models
  singles     single-record requests, one at a time, accuracy every few deletions
  batches     requests of several records each, one at a time
  subjects    whole-subject requests, sent at once (the service batches them)
  stop        SIGTERM; the service must exit 0
  retrain     mpiexec lethe retrain --job (the S3T shards the deletions truncated or killed)
  erasure     every file under the job directory, the training set and the backbone holds none
              of the deleted rows' bytes; the ledger holds no clear id or subject
  report      REPORT.md, accuracy.png, depth.png, results.json

Needs the Debian interpreter (/usr/bin/python3: numpy, h5py, matplotlib); stdlib otherwise.
"""

import argparse
import concurrent.futures
import datetime
import json
import os
import random
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import h5py
import numpy as np


class StepError(Exception):
    def __init__(self, step, message):
        super().__init__(f"step '{step}' failed: {message}")


def log(message):
    print(f"demo: {message}", flush=True)


def percentile(values, q):
    """Nearest-rank percentile of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, int(np.ceil(q / 100 * len(ordered))) - 1))]


def parse_time(stamp):
    return datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc).timestamp()


# ---------------------------------------------------------------------------------------------
# Data: the records to delete, their bytes, the test set.

class Data:
    def __init__(self, train_path, test_path):
        with h5py.File(train_path, "r") as f:
            self.features = f["features"][:].reshape(len(f["labels"]), -1)
            chars = f["id_chars"][:].tobytes()
            offsets = f["id_offsets"][:]
            self.ids = [chars[offsets[i]:offsets[i + 1]].decode() for i in range(len(offsets) - 1)]
            self.public = f["public"][:].astype(bool)
            self.tombstoned = f["tombstoned"][:].astype(bool)
            schars = f["subject_chars"][:].tobytes()
            soff, slen = f["subject_offsets"][:], f["subject_lengths"][:]
            self.subjects = [schars[soff[i]:soff[i] + slen[i]].decode() for i in range(len(slen))]
        with h5py.File(test_path, "r") as f:
            self.test_x = f["features"][:].reshape(len(f["labels"]), -1)
            self.test_y = f["labels"][:]
        rows = [r.tobytes() for r in self.features]
        counts = {}
        for r in rows:
            counts[r] = counts.get(r, 0) + 1
        # A row with a byte-identical twin elsewhere in the set could not be proven erased.
        self.unique = np.array([counts[r] == 1 for r in rows])
        self.row_bytes = rows


def select_records(data, args):
    """Single records, batches and subjects: disjoint, live, deletable and provable."""
    rng = random.Random(args.seed)
    by_subject = {}
    for i, s in enumerate(data.subjects):
        if s:
            by_subject.setdefault(s, []).append(i)
    if not by_subject:
        raise StepError("select", "the training set has no subjects; ingest it with --subjects (scripts/demo.sh does)")
    ok = lambda i: data.unique[i] and not data.tombstoned[i]
    subjects = [s for s, rows in sorted(by_subject.items())
                if all(ok(i) for i in rows) and any(not data.public[i] for i in rows)]
    if len(subjects) < args.subjects:
        raise StepError("select", f"only {len(subjects)} subjects qualify, {args.subjects} wanted")
    chosen_subjects = rng.sample(subjects, args.subjects)
    taken = {i for s in chosen_subjects for i in by_subject[s]}
    pool = [i for i in range(len(data.ids)) if ok(i) and not data.public[i] and i not in taken]
    need = args.singles + args.batches * args.batch_size
    if len(pool) < need:
        raise StepError("select", f"only {len(pool)} private records qualify, {need} wanted")
    rows = rng.sample(pool, need)
    singles = [[r] for r in rows[:args.singles]]
    rest = rows[args.singles:]
    batches = [rest[k * args.batch_size:(k + 1) * args.batch_size] for k in range(args.batches)]
    return singles, batches, {s: by_subject[s] for s in chosen_subjects}


# ---------------------------------------------------------------------------------------------
# Byte scans.

def files_under(paths):
    for p in paths:
        p = Path(p)
        if p.is_dir():
            yield from sorted(q for q in p.rglob("*") if q.is_file())
        elif p.is_file():
            yield p


def scan_bytes(paths, patterns):
    """{pattern index: [(file, offset)]} for every whole-pattern occurrence."""
    found = {}
    for f in files_under(paths):
        blob = f.read_bytes()
        for k, pat in enumerate(patterns):
            at = blob.find(pat)
            while at >= 0:
                found.setdefault(k, []).append((str(f), at))
                at = blob.find(pat, at + 1)
    return found


# ---------------------------------------------------------------------------------------------
# The service.

class Service:
    running = set()  # started and not yet stopped: killed on the way out when a step fails

    def __init__(self, args, name):
        self.args, self.name = args, name
        self.log_path = Path(args.out) / f"serve-{name}.log"

    def start(self):
        cmd = shlex.split(self.args.mpiexec) + [self.args.lethe, "serve", "--job", self.args.job,
                                                "--listen", "127.0.0.1:0", "--token-file", self.args.token,
                                                "--body-limit", str(8 << 20)]
        self.t0 = time.time()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=open(self.log_path, "w"), text=True)
        line = [None]
        reader = threading.Thread(target=lambda: line.__setitem__(0, self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(120)
        if not line[0]:
            self.proc.kill()
            raise StepError("serve", f"`{' '.join(cmd)}` printed no port within 120 s (exit {self.proc.poll()}); "
                                     f"see {self.log_path}")
        Service.running.add(self)
        self.port = json.loads(line[0])["port"]
        self.token = Path(self.args.token).read_text().split()[0]
        self.startup_s = time.time() - self.t0
        log(f"service ({self.name}) on 127.0.0.1:{self.port} after {self.startup_s:.1f} s; log {self.log_path}")
        return self

    def call(self, method, path, body=None, raw=None, step="http"):
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
                                     headers={"Authorization": f"Bearer {self.token}",
                                              "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=600) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")
        except OSError as e:
            raise StepError(step, f"{method} {path}: {e} (service log {self.log_path})")

    def rank0(self):
        """Rank 0's pid: mpiexec answers a forwarded SIGTERM with exit 1 however the ranks end, so
        the signal goes to rank 0, which drains, stops the other ranks and exits 0 (docs/API.md)."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        for pid in children:
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"OMPI_COMM_WORLD_RANK=0" in env or b"PMIX_RANK=0" in env:
                return int(pid)
        if not children:
            raise StepError("stop", f"mpiexec (pid {self.proc.pid}) has no child processes: did the service crash? "
                                    f"see {self.log_path}")
        raise StepError("stop", f"no child of mpiexec (pid {self.proc.pid}) has OMPI_COMM_WORLD_RANK=0 in its environment")

    def kill(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        Service.running.discard(self)

    def stop(self):
        Service.running.discard(self)
        os.kill(self.rank0(), signal.SIGTERM)
        try:
            rc = self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise StepError("stop", f"the service did not exit within 120 s of SIGTERM; see {self.log_path}")
        if rc != 0:
            raise StepError("stop", f"the service exited with status {rc} after SIGTERM; see {self.log_path}")
        if "stopped cleanly" not in self.log_path.read_text():
            raise StepError("stop", f"the service exited 0 but did not log 'stopped cleanly'; see {self.log_path}")
        log(f"service ({self.name}) stopped cleanly after SIGTERM")


class DepthSampler:
    """GET /v1/models every `interval` seconds (and on demand): served depth per shard over time."""

    def __init__(self, service, t0, samples, deleted=0, interval=1.0):
        self.service, self.t0, self.samples, self.interval = service, t0, samples, interval
        self.stopping, self.error = threading.Event(), None
        self.deleted = deleted
        self.thread = threading.Thread(target=self.run, daemon=True)

    def sample(self):
        status, models = self.service.call("GET", "/v1/models", step="depth")
        if status != 200:
            raise StepError("depth", f"GET /v1/models answered {status}: {models}")
        s3t = next(m for m in models["models"] if m["name"] == "s3t")
        noisy = next(m for m in models["models"] if m["name"] == "noisy_gd")
        self.samples.append({"t": time.time() - self.t0, "deleted": self.deleted,
                             "model_version": models["model_version"], "live_shards": s3t["live_shards"],
                             "depth": [sh["depth"] if sh["live"] else 0 for sh in s3t["shards"]],
                             "noisy_records": noisy["records"], "noisy_version": noisy["version"]})
        return self.samples[-1]

    def run(self):
        try:
            while not self.stopping.wait(self.interval):
                self.sample()
        except StepError as e:
            self.error = e

    def __enter__(self):
        self.sample()
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        self.thread.join()
        if exc[0] is None:
            if self.error:
                raise self.error
            self.sample()


# ---------------------------------------------------------------------------------------------
# Accuracy through /v1/predict.

class Evaluator:
    def __init__(self, data, batch=1024):
        self.labels = data.test_y
        # Encode each batch's rows once: the bodies differ only in "model".
        self.bodies = []
        for i in range(0, len(data.test_x), batch):
            rows = data.test_x[i:i + batch]
            self.bodies.append((i, len(rows), "[" + ",".join("[" + ",".join(map(str, r)) + "]" for r in rows.tolist()) + "]"))

    def accuracy(self, service, model, live_shards):
        correct = 0
        for start, n, inputs in self.bodies:
            status, answer = service.call("POST", "/v1/predict", raw=f'{{"model":"{model}","inputs":{inputs}}}'.encode(),
                                          step="accuracy")
            if status != 200:
                if model == "s3t" and live_shards == 0 and status == 503 and answer["error"]["code"] == "unavailable":
                    return None  # the ensemble is down: every sequence lost its first slice
                raise StepError("accuracy", f"POST /v1/predict ({model}, rows {start}..{start + n - 1}) answered {status}: {answer}")
            preds = [p["class"] for p in answer["predictions"]]
            if len(preds) != n:
                raise StepError("accuracy", f"{model}: {len(preds)} predictions for {n} rows")
            correct += int((np.array(preds) == self.labels[start:start + n]).sum())
        return correct / len(self.labels)


# ---------------------------------------------------------------------------------------------
# The run.

class Run:
    def __init__(self, args):
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.requests = []       # one per HTTP deletion request: kind, rows, client times, receipt
        self.points = []         # accuracy against deletions
        self.timings = {}
        self.samples = []        # GET /v1/models over time
        self.t0 = time.time()

    # -- deletions -----------------------------------------------------------------------------
    def submit(self, service, kind, rows=None, subject=None):
        body = {"subject": subject} if subject else {"records": [self.data.ids[i] for i in rows]}
        sent = time.time()
        status, answer = service.call("POST", "/v1/deletions", body, step=kind)
        if status != 202:
            raise StepError(kind, f"POST /v1/deletions answered {status}: {answer}")
        return {"kind": kind, "rows": rows, "subject": subject, "sent": sent, "id": answer["id"],
                "url": answer["receipt"]}

    def wait(self, service, request, step, timeout=600):
        deadline = time.time() + timeout
        while time.time() < deadline:
            status, receipt = service.call("GET", request["url"], step=step)
            if status != 200:
                raise StepError(step, f"GET {request['url']} answered {status}: {receipt}")
            if receipt["status"] in ("completed", "failed"):
                request["seen_completed"] = time.time()
                request["receipt"] = receipt
                if receipt["status"] == "failed":
                    raise StepError(step, f"request {request['id']} failed: {receipt.get('error')}")
                self.check_receipt(request, step)
                self.requests.append(request)
                return receipt
            time.sleep(0.02)
        raise StepError(step, f"request {request['id']} did not complete within {timeout} s")

    def check_receipt(self, request, step):
        receipt, rows = request["receipt"], request["rows"]
        outcomes = {}
        for r in receipt["records"]:
            outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
        expect = {"deleted": sum(not self.data.public[i] for i in rows)}
        if any(self.data.public[i] for i in rows):
            expect["refused_public"] = sum(bool(self.data.public[i]) for i in rows)
        if outcomes != expect:
            raise StepError(step, f"request {request['id']}: outcomes {outcomes}, expected {expect}")
        if receipt["records_erased"] != expect["deleted"]:
            raise StepError(step, f"request {request['id']}: {receipt['records_erased']} records erased, "
                                  f"expected {expect['deleted']}")
        names = {m["name"] for m in receipt["models"]}
        if names != {"s3t", "noisy_gd"}:
            raise StepError(step, f"request {request['id']}: receipt covers models {sorted(names)}, expected s3t and noisy_gd")
        self.deleted_rows.extend(i for i in rows if not self.data.public[i])
        self.refused_rows.extend(i for i in rows if self.data.public[i])
        self.sampler.deleted = len(self.deleted_rows)

    def measure(self, service, label):
        state = self.sampler.sample()
        t = time.time()
        point = {"label": label, "deleted": len(self.deleted_rows), "t": t - self.t0,
                 "live_shards": state["live_shards"], "depth": state["depth"],
                 "s3t": self.evaluator.accuracy(service, "s3t", state["live_shards"]),
                 "noisy_gd": self.evaluator.accuracy(service, "noisy_gd", state["live_shards"])}
        point["seconds"] = time.time() - t
        self.points.append(point)
        s3t = "down (no live shard)" if point["s3t"] is None else f"{point['s3t']:.4f}"
        log(f"accuracy after {point['deleted']:3d} deletions ({label}): S3T {s3t} "
            f"[{state['live_shards']} live shards, depths {state['depth']}], noisy GD {point['noisy_gd']:.4f} "
            f"({point['seconds']:.1f} s)")

    def mpi_run(self, step, *lethe_args):
        cmd = shlex.split(self.args.mpiexec) + [self.args.lethe, "--log-level", "warn", *lethe_args]
        t = time.time()
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            raise StepError(step, f"`{' '.join(cmd)}` exited {p.returncode}: {p.stderr.strip()[-2000:]}")
        return json.loads(p.stdout), time.time() - t

    # -- the whole thing -------------------------------------------------------------------------
    def run(self):
        args = self.args
        t = time.time()
        self.data = Data(args.train, args.test)
        singles, batches, subjects = select_records(self.data, args)
        self.subject_names = sorted(subjects)
        all_rows = [i for g in singles + batches for i in g] + [i for rows in subjects.values() for i in rows]
        self.patterns = {i: self.data.row_bytes[i] for i in all_rows if not self.data.public[i]}
        # Control: the scanner finds every chosen row in the training set before the deletions.
        found = scan_bytes([args.train], list(self.patterns.values()))
        if len(found) != len(self.patterns):
            raise StepError("select", f"the byte scan found only {len(found)} of {len(self.patterns)} chosen rows in "
                                      f"{args.train} before any deletion: the scan or the bytes are wrong")
        self.evaluator = Evaluator(self.data)
        self.deleted_rows, self.refused_rows = [], []
        self.timings["select_s"] = time.time() - t
        log(f"chose {len(singles)} single records, {len(batches)} batches of {args.batch_size}, {len(subjects)} subjects "
            f"({sum(len(r) for r in subjects.values())} records); {len(self.patterns)} private rows to erase, "
            f"all found by the byte scan beforehand")

        service = Service(args, "deletions").start()
        self.timings["serve_start_s"] = service.startup_s
        with DepthSampler(service, self.t0, self.samples) as self.sampler:
            self.measure(service, "before")
            t = time.time()
            for k, rows in enumerate(singles, 1):
                self.wait(service, self.submit(service, "single", rows), "singles")
                if k % args.measure_every == 0 or k == len(singles):
                    self.measure(service, f"{k} single")
            for k, rows in enumerate(batches, 1):
                self.wait(service, self.submit(service, "batch", rows), "batches")
                self.measure(service, f"{k} batch")
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                sent = list(pool.map(lambda s: self.submit(service, "subject", subjects[s], s), sorted(subjects)))
            for request in sent:
                self.wait(service, request, "subjects")
            self.measure(service, "subjects")
            self.timings["deletions_and_measurements_s"] = time.time() - t
        service.stop()

        log("retraining the truncated S3T sequences (service stopped: lethe retrain takes the job lock)")
        t = time.time()
        self.retrain, self.timings["retrain_s"] = self.mpi_run("retrain", "retrain", "--job", args.job)
        self.retrain_span = (t - self.t0, time.time() - self.t0)
        service = Service(args, "after-retrain").start()
        with DepthSampler(service, self.t0, self.samples, len(self.deleted_rows)) as self.sampler:
            self.measure(service, "after retrain")
        service.stop()

        t = time.time()
        self.erasure = self.check_erasure()
        self.timings["erasure_scan_s"] = time.time() - t
        self.timings["total_s"] = time.time() - self.t0
        Report(self).write()

    # -- erasure ---------------------------------------------------------------------------------
    def check_erasure(self):
        args = self.args
        scanned = [args.job, args.train, args.backbone]
        files = list(files_under(scanned))
        deleted = sorted(set(self.deleted_rows))
        if set(deleted) != set(self.patterns):
            raise StepError("erasure", f"{len(deleted)} rows were deleted but {len(self.patterns)} were meant to be")
        found = scan_bytes(scanned, [self.patterns[i] for i in deleted])
        if found:
            where = "; ".join(f"{self.data.ids[deleted[k]]} at {hits[0][0]}:{hits[0][1]}" for k, hits in list(found.items())[:5])
            raise StepError("erasure", f"{len(found)} of {len(deleted)} deleted rows still have their bytes on disk: {where}")
        # Control: refused (public) rows stay, and the same scan finds them.
        refused = sorted(set(self.refused_rows))
        kept = scan_bytes([args.train], [self.data.row_bytes[i] for i in refused])
        if len(kept) != len(refused):
            raise StepError("erasure", f"the scan found {len(kept)} of the {len(refused)} refused public rows, which must stay")
        # The ledger: no clear id, subject or idempotency key in its rows ...
        db = sqlite3.connect(f"file:{Path(args.job) / 'ledger.sqlite'}?mode=ro", uri=True)
        clear_records = db.execute("SELECT count(*) FROM request_records WHERE record_id IS NOT NULL").fetchone()[0]
        clear_requests = db.execute("SELECT count(*) FROM requests WHERE subject IS NOT NULL OR idempotency_key IS NOT NULL").fetchone()[0]
        statuses = dict(db.execute("SELECT status, count(*) FROM requests GROUP BY status").fetchall())
        db.close()
        if clear_records or clear_requests:
            raise StepError("erasure", f"the ledger keeps {clear_records} clear record ids and {clear_requests} clear "
                                       f"subjects/keys after every request completed")
        # ... nor in the bytes of any file of the job (free pages, WAL), as a whole token.
        ids = {self.data.ids[i] for i in deleted}
        names = set(self.subject_names)
        token = re.compile(rb"(?<![\w-])((?:train|user)-\d+)(?![\w-])")
        clear_hits = []
        for f in files_under([args.job]):
            for m in token.finditer(f.read_bytes()):
                value = m.group(1).decode()
                if value in ids or value in names:
                    clear_hits.append((str(f), value))
        if clear_hits:
            raise StepError("erasure", f"{len(clear_hits)} clear deleted ids/subjects in the job's files, e.g. {clear_hits[:3]}")
        log(f"erasure: 0 of {len(deleted)} deleted rows found in {len(files)} files "
            f"({sum(f.stat().st_size for f in files) / 1e6:.1f} MB); ledger: 0 clear ids, statuses {statuses}")
        return {"files": len(files), "bytes": sum(f.stat().st_size for f in files), "rows_checked": len(deleted),
                "rows_found": 0, "refused_public_rows_found": len(kept), "refused_public_rows": len(refused),
                "ledger_clear_record_ids": clear_records, "ledger_clear_subjects_or_keys": clear_requests,
                "ledger_statuses": statuses, "clear_tokens_found": 0, "scanned": [str(p) for p in scanned]}


# ---------------------------------------------------------------------------------------------
# The report.

class Report:
    def __init__(self, run):
        self.run, self.out = run, run.out

    def batches(self):
        """One row per service batch (requests planned together share its model effects)."""
        seen = {}
        for r in self.run.requests:
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

    def latencies(self):
        """ms percentiles of request -> completed, grouped by request kind and by noisy-GD route."""
        groups = {}
        for r in self.run.requests:
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

    def plot(self):
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        points = self.run.points
        fig, ax = plt.subplots(figsize=(8, 4.5))
        xs = [p["deleted"] for p in points]
        s3t = [np.nan if p["s3t"] is None else p["s3t"] for p in points]
        ax.plot(xs[:-1], s3t[:-1], "o-", label="S3T ensemble (served prefixes)")
        ax.plot(xs[:-1], [p["noisy_gd"] for p in points[:-1]], "s-", label="noisy GD (certified, ε = 1 per batch)")
        ax.plot([xs[-1]], [s3t[-1]], "o", color="C0", mfc="white", ms=9, label="S3T after lethe retrain")
        ax.plot([xs[-1]], [points[-1]["noisy_gd"]], "s", color="C1", mfc="white", ms=9, label="noisy GD after the restart")
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
        fig.savefig(self.out / "accuracy.png", dpi=110)
        plt.close(fig)

        fig, ax = plt.subplots(figsize=(8, 4.5))
        samples = self.run.samples
        ts = [s["t"] for s in samples]
        for k in range(len(samples[0]["depth"])):
            ax.step(ts, [s["depth"][k] + 0.04 * (k - 1.5) for s in samples], where="post", label=f"shard {k}")
        marks = [(p["t"], p["label"]) for p in points]
        for t, label in marks:
            ax.axvline(t, color="grey", lw=0.5, ls=":")
        ax.axvspan(*self.run.retrain_span, color="grey", alpha=0.15, label="service stopped: lethe retrain")
        ax.set_xlabel("seconds since the demo's deletion part started (dotted: accuracy measurements)")
        ax.set_ylabel("served depth (slices; 0 = dead)")
        ax.set_yticks(range(0, 5))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title("S3T: surviving depth per shard over time (GET /v1/models)")
        fig.tight_layout()
        fig.savefig(self.out / "depth.png", dpi=110)
        plt.close(fig)

    def write(self):
        run, args = self.run, self.run.args
        self.plot()
        batches, lat = self.batches(), self.latencies()
        results = {"config": vars(args), "points": run.points, "batches": batches, "latency_ms": lat,
                   "erasure": run.erasure, "retrain": {k: v for k, v in run.retrain.items() if k != "digests"},
                   "timings_s": run.timings, "depth_samples": run.samples,
                   "requests": [{"kind": r["kind"], "id": r["id"], "records": len(r["rows"]),
                                 "receipt": r["receipt"]} for r in run.requests]}
        (self.out / "results.json").write_text(json.dumps(results, indent=1, default=str))
        before, after_del, after = run.points[0], run.points[-2], run.points[-1]
        fmt = lambda a: "down (no live shard)" if a is None else f"{a:.4f}"
        kinds = {}
        for r in run.requests:
            kinds.setdefault(r["kind"], [0, 0])
            kinds[r["kind"]][0] += 1
            kinds[r["kind"]][1] += len(r["rows"])
        md = [
            "# Lethe demo: deletions through the service",
            "",
            f"Written by `scripts/demo_drive.py` ({datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}); "
            "the numbers come from this run. Raw data: `results.json`; service logs: `serve-*.log`.",
            "",
            "## Configuration",
            "",
            f"- Job `{args.job}`: S3T 4 shards × 4 slices × 4 sequences (cyclic) and the noisy-GD model "
            "(softmax regression on the frozen backbone's features, target ε = 1 per deletion batch), trained on "
            "Fashion-MNIST (60,000 training images, 10% public; 10,000 test images).",
            f"- Service: `{args.mpiexec} lethe serve --listen 127.0.0.1:0 --token-file … --body-limit 8388608` "
            f"(token file mode 0600); started in {run.timings['serve_start_s']:.1f} s.",
            f"- Deletions: {', '.join(f'{n} {k} request(s) ({m} records)' for k, (n, m) in kinds.items())}; "
            f"{len(run.deleted_rows)} private records deleted, {len(run.refused_rows)} public records of the subjects "
            "refused (`refused_public`: they pretrained the backbone). Singles and batches are sent one at a time "
            "(each waits for its receipt); the subject requests are sent together by 8 client threads. Records are "
            f"picked at random (seed {args.seed}) among private records whose image has no byte-identical twin.",
            "- Accuracy: `POST /v1/predict` on the whole test set, 1024 rows a request, for `s3t` and `noisy_gd`.",
            "",
            "## Accuracy against deletions",
            "",
            "![accuracy](accuracy.png)",
            "",
            "| point | deleted | S3T live shards | S3T depths | S3T accuracy | noisy-GD accuracy |",
            "|---|---|---|---|---|---|",
        ]
        for p in run.points:
            md.append(f"| {p['label']} | {p['deleted']} | {p['live_shards']} | {p['depth']} | {fmt(p['s3t'])} | {p['noisy_gd']:.4f} |")
        md += [
            "",
            f"Before: S3T {fmt(before['s3t'])}, noisy GD {before['noisy_gd']:.4f}. After {after_del['deleted']} deletions: "
            f"S3T {fmt(after_del['s3t'])}, noisy GD {after_del['noisy_gd']:.4f}. After `lethe retrain` "
            f"({run.timings['retrain_s']:.1f} s on the service's ranks, the service stopped for it): S3T {fmt(after['s3t'])}, "
            f"noisy GD {after['noisy_gd']:.4f}.",
            "",
            "S3T forgets by slice deactivation: a deleted record's slice and every later slice of each sequence of its "
            "shard are dropped, so the served depth falls and a shard whose sequences all lost their first slice dies; "
            "the 4 × 4 × 4 job's expected capacity is about 54 uniform deletions (docs/BENCHMARKS.md), far below the "
            "few hundred deleted here, which is why the ensemble needs `lethe retrain`. Noisy GD forgets by K_U noisy "
            "steps per batch (or a retrain from scratch when that is cheaper), so its accuracy barely moves.",
            "",
        ]
        singles_k = [b["K_U"] for b in batches if b["kinds"] == "single"]
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
        for b in batches:
            eps = "—" if b["epsilon"] is None else f"{b['epsilon']:.4f}"
            if b["noisy_route"] == "full_retrain":
                eps += " (retrained from scratch)"
            delta = "—" if b["delta"] is None else f"{b['delta']:.3g}"
            wall = "—" if b["noisy_wall_s"] is None else f"{b['noisy_wall_s']:.2f}"
            md.append(f"| {b['model_version']} | {b['requests']} | {b['kinds']} | {b['records_deleted']} | {b['noisy_route']} | "
                      f"{b['K_U']} | {b['steps_run']} | {eps} | {delta} | {b['certified']} | {wall} | {b['shards_touched']} / {b['shards_killed']} |")
        e = run.erasure
        md += [
            "",
            "## Proof of erasure",
            "",
            f"After every receipt completed and the service stopped (SIGTERM, exit 0), every file under "
            f"{', '.join(f'`{s}`' for s in e['scanned'])} — {e['files']} files, {e['bytes'] / 1e6:.1f} MB — was scanned for "
            f"the {e['rows_checked']} deleted records' whole feature rows (784 bytes each, read from the HDF5 dataset "
            f"before the deletions): **{e['rows_found']} found**. Controls: the same scan found all {e['rows_checked']} "
            f"rows in the training set before the deletions, and finds {e['refused_public_rows_found']} of the "
            f"{e['refused_public_rows']} refused public rows, which stay, afterwards.",
            "",
            f"Ledger (`ledger.sqlite`, docs/LEDGER.md): requests by status {e['ledger_statuses']}; "
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
                 "retrain_s": "lethe retrain (service stopped)", "erasure_scan_s": "erasure and ledger scans",
                 "total_s": "this part in all (scripts/demo_drive.py)"}
        for k, v in run.timings.items():
            md.append(f"| {names.get(k, k)} | {v:.1f} |")
        if args.started_at:
            md.append(f"| whole demo up to this report (setup check, build, ingest, pretrain, train, eval, this part) | "
                      f"{time.time() - args.started_at:.1f} |")
        md.append("| accuracy measurements (each: both models on 10,000 images) | "
                  + ", ".join(f"{p['seconds']:.1f}" for p in run.points) + " |")
        (self.out / "REPORT.md").write_text("\n".join(md) + "\n")
        log(f"report: {self.out / 'REPORT.md'}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lethe", required=True, help="the lethe binary")
    ap.add_argument("--mpiexec", required=True, help="MPI launcher and its options, e.g. 'mpiexec -np 2'")
    ap.add_argument("--job", required=True, help="trained job directory (S3T and noisy GD)")
    ap.add_argument("--train", required=True, help="the job's training set (HDF5, with subjects)")
    ap.add_argument("--test", required=True, help="the test set (HDF5)")
    ap.add_argument("--backbone", required=True, help="the frozen backbone (scanned too)")
    ap.add_argument("--token", required=True, help="bearer token file, mode 0600")
    ap.add_argument("--out", required=True, help="report directory")
    ap.add_argument("--singles", type=int, default=16)
    ap.add_argument("--measure-every", type=int, default=8, help="accuracy every this many single deletions")
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=10)
    ap.add_argument("--subjects", type=int, default=40)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--started-at", type=float, help="unix time the demo started (scripts/demo.sh), for the report")
    args = ap.parse_args()
    if Path(args.token).stat().st_mode & 0o077:
        sys.exit(f"demo: {args.token} must be mode 0600 (the service refuses a token readable by others)")
    try:
        Run(args).run()
    except StepError as e:
        sys.exit(f"demo: {e}")
    finally:
        for service in list(Service.running):
            service.kill()


if __name__ == "__main__":
    main()
