#!/usr/bin/env python3
"""The numpy float64 peer of one noisy-GD step (docs/BENCHMARKS.md "Noisy GD", bench/noisy_gd/run.sh).

One full-batch step of L2-regularized softmax regression, as `lethe bench noisy-gd` times it on one
rank (its `step_ms`): logits = X W, softmax, residual P - Y, the per-example clip scale
min(1, M / (||x|| ||p - y||)), G = X^T R / n + lambda W, then W <- W - eta G + sqrt(2 eta) sigma xi.
A competent numpy version: two BLAS GEMMs on the whole array, the softmax in place, the feature
norms computed once outside the timed step (the features do not change between steps).

It runs on random data of the shape given (rows x features float64, `classes` classes; rows of
unit norm with a bias column, like Lethe's normalized features): the time of a step depends on
the shape and the thread count, not on the values. BLAS and OpenMP threads are held to --threads
(set before numpy loads). Prints one JSON object with the median milliseconds over --steps steps.
Run it with the system python (Debian's numpy on the same libblas.so.3 as libtorch: OpenBLAS).
"""
import argparse
import json
import os
import sys
import time

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--rows", type=int, default=54022, help="records n (default: Fashion-MNIST's non-public ones)")
parser.add_argument("--features", type=int, default=129, help="columns d, the bias input included")
parser.add_argument("--classes", type=int, default=10)
parser.add_argument("--steps", type=int, default=25, help="timed steps (at least 20), after 2 warm-up steps")
parser.add_argument("--threads", type=int, default=1, help="BLAS/OpenMP threads")
parser.add_argument("--seed", type=int, default=1)
args = parser.parse_args()
if args.steps < 20:
    parser.error("--steps must be at least 20")
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(args.threads)

import numpy as np  # noqa: E402  (after the thread variables)


def loaded_blas():
    """The BLAS shared objects this process mapped (numpy's config names only the generic libblas)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "blas" in line.lower() and "/" in line}
        return sorted(os.path.realpath(p) for p in paths)
    except OSError:
        return []


def main():
    n, d, c = args.rows, args.features, args.classes
    rng = np.random.default_rng(args.seed)
    x = rng.standard_normal((n, d))
    x[:, -1] = 1.0  # the bias input
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = rng.integers(0, c, size=n)
    rows = np.arange(n)
    lam, eta, sigma, clip = 0.005, 1.0 / (0.5 + 0.005), 0.01, np.sqrt(2.0)
    noise_scale = np.sqrt(2.0 * eta) * sigma
    x_norm = np.linalg.norm(x, axis=1)  # once: the features are fixed
    w = np.zeros((d, c))

    def step(w):
        z = x @ w
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        z[rows, y] -= 1.0  # R = P - Y
        norm = x_norm * np.linalg.norm(z, axis=1)
        z *= np.minimum(1.0, clip / np.maximum(norm, 1e-300))[:, None]
        g = x.T @ z
        g /= n
        g += lam * w
        return w - eta * g + noise_scale * rng.standard_normal((d, c))

    for _ in range(2):
        w = step(w)
    # The machine's float64 compute ceiling at this thread count: one square DGEMM (2 k^3 flops).
    k = 1024
    a, b = rng.standard_normal((k, k)), rng.standard_normal((k, k))
    gemm_s = []
    for _ in range(7):
        start = time.perf_counter()
        a @ b
        gemm_s.append(time.perf_counter() - start)
    gemm_gflops = 2 * k ** 3 / float(np.median(gemm_s)) / 1e9
    ms = []
    for _ in range(args.steps):
        start = time.perf_counter()
        w = step(w)
        ms.append(1e3 * (time.perf_counter() - start))
    print(json.dumps({
        "impl": "numpy",
        "numpy": np.__version__,
        "python": sys.version.split()[0],
        "blas": loaded_blas(),
        "rows": n, "features": d, "classes": c, "threads": args.threads,
        "steps": args.steps,
        "step_ms": float(np.median(ms)),
        "all_ms": [round(v, 3) for v in ms],
        "feature_bytes": int(x.nbytes),
        "dgemm_gflops": gemm_gflops,
    }))


main()
