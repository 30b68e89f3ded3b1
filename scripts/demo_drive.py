#!/usr/bin/python3
"""The demo's deletion part (scripts/demo.sh runs it after training): serve the trained job,
delete a few hundred records through the HTTP API (docs/API.md), measure what it did, prove
erasure, and write a report with plots.

It reads the job's data only through the lethe CLI: the data sets through `lethe inspect FILE`
(summary) and `lethe inspect FILE --records` (every row, its features as hex), the ledger through
`lethe status --job` (counts by status and the clear values left in finished requests).

Steps, each named in the error message when it fails (the exit status is then 1):
  select      pick the records to delete (private, no byte-identical twin) and take their
              feature bytes from the training set (lethe inspect --records) before anything is deleted
  serve       mpiexec -np N lethe serve --listen 127.0.0.1:0; the port is its first JSON line
  accuracy    POST /v1/predict on the whole test set (one binary request: uint8 rows in, float32
              probabilities out, docs/API.md), both models
  singles     single-record requests, one at a time, accuracy after the last (--measure-every)
  batches     requests of several records each, one at a time, accuracy after the last
  subjects    whole-subject requests, sent at once (the service batches them)
  retrain     POST /v1/retrain: the service starts `mpiexec lethe retrain` beside itself (the S3T
              shards the deletions truncated or killed) and keeps serving; more single deletions and
              accuracy measurements while it trains, until GET /v1/retrain/{id} says completed (the
              service adopted the new models without a restart)
  stop        SIGTERM; the service must exit 0
  erasure     every file under the job directory, the training set and the backbone holds none
              of the deleted rows' bytes; the ledger holds no clear id or subject (lethe status,
              and a byte scan of the job's files)
  report      results.json (everything the report needs), then REPORT.md, accuracy.png and
              depth.png by scripts/demo_report.py, which can write them again from results.json alone

Needs the Debian interpreter (/usr/bin/python3: numpy, matplotlib); stdlib otherwise.
"""

import argparse
import concurrent.futures
import json
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

import demo_report  # scripts/demo_report.py, beside this file


class StepError(Exception):
    def __init__(self, step, message):
        super().__init__(f"step '{step}' failed: {message}")


def log(message):
    print(f"demo: {message}", flush=True)


# ---------------------------------------------------------------------------------------------
# The lethe CLI: the data sets and the ledger are read through it, never through their file layouts.

def lethe_json(lethe, step, *cli_args):
    """`lethe --log-level warn ARGS`: its JSON stdout, parsed; StepError(step) when it fails."""
    cmd = [lethe, "--log-level", "warn", *cli_args]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise StepError(step, f"`{' '.join(cmd)}` exited {p.returncode}: {p.stderr.strip()[-2000:]}")
    try:
        return json.loads(p.stdout)
    except json.JSONDecodeError as e:
        raise StepError(step, f"`{' '.join(cmd)}` printed no JSON ({e}): {p.stdout[:200]!r}")


DTYPES = {"uint8": np.uint8, "float32": np.float32}  # the stored element types; native byte order


class Records:
    """Every row of a dataset file, tombstoned ones included, in row order, from `lethe inspect FILE
    --records` (one JSON object a line, streamed): ids, subjects ("" when none), labels, public and
    tombstoned flags, and each row's stored feature bytes (`features`, a list of bytes)."""

    def __init__(self, lethe, path, step="select"):
        summary = lethe_json(lethe, step, "inspect", str(path))
        self.dtype = DTYPES.get(summary.get("feature_type"))
        if self.dtype is None:
            raise StepError(step, f"`lethe inspect {path}` reports feature type {summary.get('feature_type')!r}; "
                                  f"this script reads {', '.join(DTYPES)}")
        width = int(np.prod(summary["feature_shape"])) * np.dtype(self.dtype).itemsize
        self.ids, self.subjects, self.labels, self.public, self.tombstoned, self.features = [], [], [], [], [], []
        cmd = [lethe, "--log-level", "warn", "inspect", str(path), "--records"]
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err)
            done = False
            try:
                for n, line in enumerate(proc.stdout):
                    try:
                        r = json.loads(line)
                        row, fields = bytes.fromhex(r["features"]), (r["row"], r["id"], r["subject"], r["label"],
                                                                     r["public"], r["tombstoned"])
                    except (ValueError, KeyError, TypeError) as e:
                        raise StepError(step, f"`{' '.join(cmd)}` line {n + 1}: not a record ({type(e).__name__}: {e})")
                    if fields[0] != n or len(row) != width:
                        raise StepError(step, f"`{' '.join(cmd)}` line {n + 1}: row {fields[0]} with {len(row)} feature "
                                              f"bytes, expected row {n} with {width}")
                    self.ids.append(fields[1])
                    self.subjects.append(fields[2] or "")
                    self.labels.append(fields[3])
                    self.public.append(bool(fields[4]))
                    self.tombstoned.append(bool(fields[5]))
                    self.features.append(row)
                done = True
            finally:
                if not done and proc.poll() is None:
                    proc.kill()
                proc.stdout.close()
                rc = proc.wait()
            if rc != 0:
                err.seek(0)
                raise StepError(step, f"`{' '.join(cmd)}` exited {rc}: {err.read().decode(errors='replace').strip()[-2000:]}")
        if len(self.ids) != summary["records"]:
            raise StepError(step, f"`{' '.join(cmd)}` printed {len(self.ids)} rows; `lethe inspect {path}` "
                                  f"reports {summary['records']} records")


# ---------------------------------------------------------------------------------------------
# Data: the records to delete, their bytes, the test set.

class Data:
    def __init__(self, lethe, train_path, test_path):
        train = Records(lethe, train_path)
        self.ids, self.subjects = train.ids, train.subjects
        self.public = np.array(train.public, dtype=bool)
        self.tombstoned = np.array(train.tombstoned, dtype=bool)
        rows = train.features
        test = Records(lethe, test_path)
        if not test.features:
            raise StepError("select", f"the test set {test_path} holds no records")
        self.test_x = np.frombuffer(b"".join(test.features), dtype=test.dtype).reshape(len(test.features), -1)
        self.test_y = np.array(test.labels)
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
    need = args.singles + args.batches * args.batch_size + args.during
    if len(pool) < need:
        raise StepError("select", f"only {len(pool)} private records qualify, {need} wanted")
    rows = rng.sample(pool, need)
    singles = [[r] for r in rows[:args.singles]]
    rest = rows[args.singles:]
    batches = [rest[k * args.batch_size:(k + 1) * args.batch_size] for k in range(args.batches)]
    during = [[r] for r in rest[args.batches * args.batch_size:]]
    return singles, batches, {s: by_subject[s] for s in chosen_subjects}, during


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
        # Retrains started by POST /v1/retrain run on as many ranks as the service.
        retrain = f"{self.args.mpiexec} {{lethe}} --log-level warn retrain --job {{job}} --id {{id}} --no-wait"
        cmd = shlex.split(self.args.mpiexec) + [self.args.lethe, "serve", "--job", self.args.job,
                                                "--listen", "127.0.0.1:0", "--token-file", self.args.token,
                                                "--body-limit", str(8 << 20), "--retrain-command", retrain]
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

    def predict_binary(self, model, body, step):
        """POST /v1/predict with raw uint8 rows; (200, (float32 probabilities, classes)) or (status, error JSON)."""
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/v1/predict", data=body, method="POST",
                                     headers={"Authorization": f"Bearer {self.token}",
                                              "Content-Type": "application/octet-stream", "X-Lethe-Dtype": "uint8",
                                              "X-Lethe-Model": model, "Accept": "application/octet-stream"})
        try:
            with urllib.request.urlopen(req, timeout=600) as r:
                return r.status, (np.frombuffer(r.read(), dtype=np.float32), int(r.headers["X-Lethe-Classes"]))
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")
        except OSError as e:
            raise StepError(step, f"POST /v1/predict: {e} (service log {self.log_path})")

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
    """The whole test set in one binary POST /v1/predict (docs/API.md): uint8 rows in, float32
    probabilities out, no JSON either way."""

    def __init__(self, data):
        self.labels = data.test_y
        self.body = np.ascontiguousarray(data.test_x, dtype=np.uint8).tobytes()
        self.rows = len(data.test_x)

    def accuracy(self, service, model, live_shards):
        status, answer = service.predict_binary(model, self.body, step="accuracy")
        if status != 200:
            if model == "s3t" and live_shards == 0 and status == 503 and answer["error"]["code"] == "unavailable":
                return None  # the ensemble is down: every sequence lost its first slice
            raise StepError("accuracy", f"POST /v1/predict ({model}, {self.rows} rows) answered {status}: {answer}")
        probabilities, classes = answer
        if len(probabilities) != self.rows * classes:
            raise StepError("accuracy", f"{model}: {len(probabilities)} probabilities for {self.rows} rows x {classes} classes")
        preds = probabilities.reshape(self.rows, classes).argmax(1)
        return float((preds == self.labels).mean())


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
        if self.sampler.sample()["model_version"] != state["model_version"]:
            # A batch or a retrain's swap landed while the test set was scored: the depths above are
            # those of the start, and the two models may have been scored on different versions.
            point["label"] += ", models changed during the measurement"
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
        self.data = Data(args.lethe, args.train, args.test)
        singles, batches, subjects, during = select_records(self.data, args)
        self.subject_names = sorted(subjects)
        all_rows = [i for g in singles + batches + during for i in g] + [i for rows in subjects.values() for i in rows]
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
            f"({sum(len(r) for r in subjects.values())} records), {len(during)} records to delete during the retrain; "
            f"{len(self.patterns)} private rows to erase, "
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
                if k % args.measure_every == 0 or k == len(batches):
                    self.measure(service, f"{k} batch")
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                sent = list(pool.map(lambda s: self.submit(service, "subject", subjects[s], s), sorted(subjects)))
            for request in sent:
                self.wait(service, request, "subjects")
            self.measure(service, "subjects")
            self.timings["deletions_and_measurements_s"] = time.time() - t
            self.retrain_while_serving(service, during)
        service.stop()

        t = time.time()
        self.erasure = self.check_erasure()
        self.timings["erasure_scan_s"] = time.time() - t
        self.timings["total_s"] = time.time() - self.t0
        self.write_results()

    def retrain_while_serving(self, service, during):
        """POST /v1/retrain, then deletions and accuracy measurements while it trains, until the
        service has adopted its models (GET /v1/retrain/{id}: completed)."""
        log("retraining in the background: POST /v1/retrain; the service keeps deleting and serving")
        t = time.time()
        status, answer = service.call("POST", "/v1/retrain", raw=b"", step="retrain")
        if status != 202:
            raise StepError("retrain", f"POST /v1/retrain answered {status}: {answer}")
        retrain_id = answer["id"]
        first_version = self.sampler.sample()["model_version"]
        served = {"deletion_requests": 0, "predictions": 0, "s3t_unavailable": 0}

        def retrain_status():
            code, state = service.call("GET", f"/v1/retrain/{retrain_id}", step="retrain")
            if code != 200:
                raise StepError("retrain", f"GET /v1/retrain/{retrain_id} answered {code}: {state}")
            if state["status"] == "failed":
                raise StepError("retrain", f"retrain {retrain_id} failed: {state.get('error')}")
            return state

        for k, rows in enumerate(during, 1):
            self.wait(service, self.submit(service, "during retrain", rows), "retrain")
            served["deletion_requests"] += 1
            if k % self.args.measure_every == 0 or k == len(during):
                self.measure(service, f"{k} during retrain")
                served["predictions"] += 2
                served["s3t_unavailable"] += self.points[-1]["s3t"] is None
        while (state := retrain_status())["status"] == "running":
            if time.time() - t > 3600:
                raise StepError("retrain", f"retrain {retrain_id} still running after an hour")
            if time.time() - self.points[-1]["t"] - self.t0 > 60:
                self.measure(service, "during retrain")
                served["predictions"] += 2
                served["s3t_unavailable"] += self.points[-1]["s3t"] is None
            time.sleep(1)
        self.timings["retrain_s"] = time.time() - t
        self.retrain_span = (t - self.t0, time.time() - self.t0)
        adopted_during = [r for r in self.requests if r["kind"] == "during retrain"
                          and r["receipt"]["retrain"]["in_progress"] == [retrain_id]]
        log(f"retrain {retrain_id} adopted by the running service after {self.timings['retrain_s']:.1f} s: model "
            f"version {first_version} -> {state.get('model_version')}; {served['deletion_requests']} deletion requests "
            f"completed and {served['predictions']} test-set predictions served meanwhile")
        self.measure(service, "after retrain")
        last = lethe_json(self.args.lethe, "retrain", "status", "--job", self.args.job)["last_retrain"]
        if last is None or last.get("id") != retrain_id:
            raise StepError("retrain", f"lethe status names another last retrain than {retrain_id}: {last}")
        # results.json keeps the retrain's report less its digests.
        routes = {name: {"retrain": {k: v for k, v in r["retrain"].items() if k != "digests"},
                         "forgotten": r["forgotten"]} for name, r in last.get("routes", {}).items()}
        self.retrain = {"id": retrain_id, "status": state, "deleted_since_snapshot": last.get("deleted_since_snapshot"),
                        "routes": routes, "served_meanwhile": served,
                        "receipts_naming_it": len(adopted_during)}

    # -- results and report ----------------------------------------------------------------------
    def write_results(self):
        """results.json: everything scripts/demo_report.py needs (its docstring has the schema), then
        the report from it. No deleted id or subject goes in: requests carry their record counts only."""
        results = {"config": vars(self.args), "finished_at": time.time(), "points": self.points,
                   "depth_samples": self.samples, "retrain_span_s": list(self.retrain_span),
                   "requests": [{"kind": r["kind"], "id": r["id"], "records": len(r["rows"]),
                                 "sent": r["sent"], "seen_completed": r["seen_completed"], "receipt": r["receipt"]}
                                for r in self.requests],
                   "deleted_records": len(self.deleted_rows), "refused_records": len(self.refused_rows),
                   "erasure": self.erasure, "retrain": self.retrain, "timings_s": self.timings}
        path = self.out / "results.json"
        try:
            results.update(demo_report.derived(results))
            path.write_text(json.dumps(results, indent=1, default=str))
            # From the file, not this dict: the report the demo writes is the one results.json alone gives.
            demo_report.write_report(json.loads(path.read_text()), self.out)
        except Exception as e:
            traceback.print_exc()
            raise StepError("report", f"{type(e).__name__}: {e} (to write the report again from {path}: "
                                      f"scripts/demo_report.py --results {path} --out {self.out})")

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
        # The ledger (`lethe status`): every request finished, and no clear id, subject or idempotency
        # key left in a finished request's rows ...
        deletions = lethe_json(args.lethe, "erasure", "status", "--job", args.job).get("deletions", {})
        if "clear_values" not in deletions:
            raise StepError("erasure", f"`lethe status --job {args.job}` printed no deletions.clear_values: "
                                       "is the lethe binary older than this script?")
        counts = {k: int(deletions.get(k, 0)) for k in ("queued", "applied", "completed", "failed")}
        statuses = {k: v for k, v in sorted(counts.items()) if v}
        if counts["queued"] or counts["applied"] or deletions.get("pending"):
            raise StepError("erasure", f"the ledger has {counts['queued']} queued and {counts['applied']} applied "
                                       f"requests after every receipt completed")
        clear_records = deletions["clear_values"]["finished_record_ids"]
        clear_requests = deletions["clear_values"]["finished_subjects_or_keys"]
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
                "rows_found": 0, "row_bytes": len(self.patterns[deleted[0]]) if deleted else 0,
                "refused_public_rows_found": len(kept), "refused_public_rows": len(refused),
                "ledger_clear_record_ids": clear_records, "ledger_clear_subjects_or_keys": clear_requests,
                "ledger_statuses": statuses, "clear_tokens_found": 0, "scanned": [str(p) for p in scanned]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lethe", required=True, help="the lethe binary")
    ap.add_argument("--mpiexec", required=True, help="MPI launcher and its options, e.g. 'mpiexec -np 2'")
    ap.add_argument("--job", required=True, help="trained job directory (S3T and noisy GD)")
    ap.add_argument("--train", required=True, help="the job's training set (a lethe dataset file, with subjects)")
    ap.add_argument("--test", required=True, help="the test set (a lethe dataset file)")
    ap.add_argument("--backbone", required=True, help="the frozen backbone (scanned too)")
    ap.add_argument("--token", required=True, help="bearer token file, mode 0600")
    ap.add_argument("--out", required=True, help="report directory (results.json, REPORT.md, the plots, service logs)")
    ap.add_argument("--singles", type=int, default=16)
    # Each measurement scores both models on the whole test set (12-15 s on 2 cores): the demo
    # takes one after each kind of deletion, not one after each request.
    ap.add_argument("--measure-every", type=int, default=16,
                    help="accuracy every this many requests of a kind (singles, batches, during the retrain)")
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=10)
    ap.add_argument("--subjects", type=int, default=40)
    ap.add_argument("--during", type=int, default=12, help="single deletions while the retrain runs")
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
