#!/usr/bin/python3
"""Prediction throughput of a running `lethe serve` (docs/BENCHMARKS.md, "Predictions"): the whole
test set scored by each model, through JSON (1024 rows a request, as before the binary form) and
through one binary request (uint8 rows in, float32 probabilities out), timed from this client.
Prints a table and JSON. Usage:
  bench/service/predict.py --url http://127.0.0.1:PORT --token-file TOKEN --lethe build/lethe --test data/fashion-test.h5
"""
import argparse, json, subprocess, time, urllib.request
import numpy as np


def post(url, token, body, headers):
    req = urllib.request.Request(url + "/v1/predict", data=body, method="POST",
                                 headers={"Authorization": "Bearer " + token, **headers})
    with urllib.request.urlopen(req, timeout=600) as r:
        return r.read(), r.headers


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True)
    ap.add_argument("--token-file", required=True)
    ap.add_argument("--lethe", required=True)
    ap.add_argument("--test", required=True, help="test dataset (HDF5 from lethe ingest)")
    ap.add_argument("--repeat", type=int, default=3, help="timings per case; the median is reported")
    a = ap.parse_args()
    token = open(a.token_file).read().split()[0]
    rows, labels = [], []
    with subprocess.Popen([a.lethe, "inspect", a.test, "--records"], stdout=subprocess.PIPE, text=True) as p:
        for line in p.stdout:
            r = json.loads(line)
            if not r["tombstoned"]:
                rows.append(bytes.fromhex(r["features"]))
                labels.append(r["label"])
    x = np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(len(rows), -1)
    y = np.array(labels)
    results = []
    for model in ("s3t", "noisy_gd"):
        def json_pass():
            correct = 0
            for i in range(0, len(x), 1024):
                body = json.dumps({"model": model, "inputs": x[i:i + 1024].tolist()}).encode()
                out, _ = post(a.url, token, body, {"Content-Type": "application/json"})
                correct += int((np.array([p["class"] for p in json.loads(out)["predictions"]]) == y[i:i + 1024]).sum())
            return correct / len(y)

        def binary_pass():
            out, headers = post(a.url, token, x.tobytes(), {"Content-Type": "application/octet-stream", "X-Lethe-Dtype": "uint8",
                                                           "X-Lethe-Model": model, "Accept": "application/octet-stream"})
            p = np.frombuffer(out, np.float32).reshape(len(x), int(headers["X-Lethe-Classes"]))
            return float((p.argmax(1) == y).mean())

        for name, fn in (("json", json_pass), ("binary", binary_pass)):
            times, accuracy = [], None
            for _ in range(a.repeat):
                t = time.perf_counter()
                accuracy = fn()
                times.append(time.perf_counter() - t)
            results.append({"model": model, "body": name, "rows": len(x), "seconds": float(np.median(times)),
                            "accuracy": accuracy})
    print(f"{'model':>9} {'body':>7} {'rows':>6} {'seconds':>8} {'rows/s':>9} {'accuracy':>9}")
    for r in results:
        print(f"{r['model']:>9} {r['body']:>7} {r['rows']:6d} {r['seconds']:8.3f} {r['rows'] / r['seconds']:9.0f} {r['accuracy']:9.4f}")
    both = sum(r["seconds"] for r in results if r["body"] == "binary")
    print(f"both models, binary: {both:.3f} s for {len(x)} rows")
    print(json.dumps({"results": results, "both_binary_seconds": both}))


if __name__ == "__main__":
    main()
