"""Scaling-law fit speed on the Chinchilla points (5 highest losses dropped); prints one JSON object.

    .venv/bin/python benchmarks/fit.py [--bootstrap 1000] [--reference-starts 45]

Reports the full multi-start fit (first call, which compiles, and a repeat), 1000 bootstrap resamples, and, as the
reference, the time per start of a plain scipy L-BFGS-B loop over Chinchilla's 4500-start grid, measured on an evenly
spaced subset of the starts and extrapolated to all 4500.
"""
from __future__ import annotations

import argparse
import csv
import itertools
import json
import time
from pathlib import Path

import numpy as np
from scipy.optimize import minimize
from scipy.special import huber, logsumexp

from omnimouse_jax.scaling.fit import HUBER_DELTA, fit_law

CSV = Path(__file__).resolve().parents[1] / "tests" / "data" / "chinchilla_points.csv"


def _points():
    with open(CSV) as f:
        rows = list(csv.DictReader(f))
    N, D, L = (np.array([float(r[k]) for r in rows]) for k in ("params", "tokens", "loss"))
    keep = np.argsort(-L, kind="stable")[5:]
    return N[keep], D[keep], L[keep]


def _scipy_reference(N, D, L, n_starts):
    """Chinchilla's recipe: L-BFGS-B from each start of the (e, a, b, alpha, beta) grid; keeps the best."""
    lN, lD, lL = np.log(N), np.log(D), np.log(L)

    def objective(t):
        e, a, b, alpha, beta = t
        pred = logsumexp([a - alpha * lN, b - beta * lD, np.full_like(lN, e)], axis=0)
        return np.sum(huber(HUBER_DELTA, pred - lL))

    grid = list(itertools.product(np.arange(-1, 1.5, 0.5), np.arange(0, 30, 5), np.arange(0, 30, 5),
                                  np.arange(0, 2.5, 0.5), np.arange(0, 2.5, 0.5)))
    subset = [grid[i] for i in np.linspace(0, len(grid) - 1, n_starts).astype(int)]
    start = time.perf_counter()
    best = min((minimize(objective, s, method="L-BFGS-B") for s in subset), key=lambda r: r.fun)
    per_start = (time.perf_counter() - start) / n_starts
    return {"grid_starts": len(grid), "measured_starts": n_starts, "seconds_per_start": per_start,
            "extrapolated_seconds": per_start * len(grid), "best_alpha_on_subset": float(best.x[3]),
            "best_beta_on_subset": float(best.x[4])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--reference-starts", type=int, default=45)
    args = parser.parse_args()
    N, D, L = _points()
    x = {"params": N, "tokens": D}
    timings = {}
    for label in ("full_fit_first_call_s", "full_fit_repeat_s"):
        start = time.perf_counter()
        point = fit_law(x, L, "chinchilla", bootstrap=0, holdout_top=0)
        timings[label] = time.perf_counter() - start
    for label in ("bootstrap_first_call_s", "bootstrap_repeat_s"):
        start = time.perf_counter()
        boot = fit_law(x, L, "chinchilla", bootstrap=args.bootstrap, holdout_top=0)
        timings[label] = time.perf_counter() - start - timings["full_fit_repeat_s"]
    print(json.dumps({
        "n_points": len(L), "bootstrap_resamples": args.bootstrap, **timings,
        "estimates": point.params, "intervals": boot.intervals, "starts": point.starts,
        "scipy_lbfgsb_reference": _scipy_reference(N, D, L, args.reference_starts),
    }, indent=2))


if __name__ == "__main__":
    main()
