"""Scaling-law fits with honest uncertainty: the forms, a fast global fit, bootstrap intervals, model choice, verdicts.

Every form but `loglinear` is fitted the way Chinchilla's approach 3 is, as corrected by Besiroglu et al. (2024): the law
is a floor plus power-law terms, written in log space as a log-sum-exp (LSE) of their logs, and the objective is the SUM
over points of Huber(delta=1e-3) on the log residuals.

The global search is variable projection: for fixed exponents the floor and coefficients enter linearly and must be
non-negative, so a dense exponent grid is scanned with an exact small NNLS (on relative residuals, reweighted towards
Huber) at every cell. The best cells are then polished on the true objective by a damped Newton method, vectorised over
starts (and over bootstrap resamples) with JAX in float64. Newton directions, the Armijo line search and the stopping
rule (Newton decrement relative to the objective) are all unchanged when the objective is multiplied by a constant, so
the answer does not depend on the objective's scale: the original Chinchilla optimizer's failure mode.

Forms (x columns in brackets):
  chinchilla [N, D]  L = E + A N^-alpha + B D^-beta
  power      [x]     L = E + A x^-alpha
  bounded    [x]     S = S_max - A x^-alpha, for scores below 1 (correlation, R^2): fitted as a power law on 1 - S
  bnsl       [x]     L = a + b x^-c0 (1 + (x/d1)^(1/f1))^(-c1 f1), one break (Caballero et al. 2022)
  loglinear  [x]     y = intercept + slope log10(x), least squares: the trend neuroscience papers report
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from omnimouse_jax.errors import UserError

HUBER_DELTA = 1e-3
CONFIDENCE = 95.0
FORMS = ("chinchilla", "power", "bounded", "bnsl", "loglinear")
_PARAMS = {
    "chinchilla": ("E", "A", "B", "alpha", "beta"),
    "power": ("E", "A", "alpha"),
    "bounded": ("S_max", "A", "alpha"),
    "bnsl": ("a", "b", "c0", "c1", "d1", "f1"),
    "loglinear": ("intercept", "slope"),
}
_N_LINEAR = {"chinchilla": 3, "power": 2, "bounded": 2, "bnsl": 2}  # the floor, then one coefficient per power term
_STARTS = {"chinchilla": 64, "power": 32, "bounded": 32, "bnsl": 64}  # grid cells polished on the full data
_BOOT_STARTS = 4  # per resample: the full-data optimum and the best 3 cells of a coarse grid
_IRLS_STEPS = 3  # reweightings of the inner NNLS towards the Huber objective
_NEWTON_RTOL = 1e-10  # stop when the Newton decrement is this small relative to the objective
_NEWTON_MAX_ITER = 100
_STEP_CAP = 2.0  # largest change of any parameter (log-coefficient or exponent) in one Newton step


@dataclasses.dataclass(frozen=True)
class Verdict:
    """A plain-words judgement: `claimed` is True or False, or None when the data cannot decide (no bootstrap)."""

    kind: str
    claimed: bool | None
    text: str


@dataclasses.dataclass
class FitResult:
    """A fitted law: estimates, 95% percentile intervals, derived quantities, fit quality and verdicts.

    `draws` holds each parameter per bootstrap resample (NaN where a resample had too few distinct x to fit); `x`, `y`
    are the points fitted after exclusions. Use `predict`, `summary` and `to_json` rather than reading fields for output.
    """

    form: str
    x_names: tuple[str, ...]
    y_name: str
    params: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    derived: dict[str, float]
    derived_intervals: dict[str, tuple[float, float]]
    draws: dict[str, np.ndarray]
    x: np.ndarray
    y: np.ndarray
    exclusions: list[dict]
    objective: dict
    optimizer: str
    starts: dict | None
    heldout: dict | None
    aicc: float | None
    bic: float
    bootstrap: dict
    theta: np.ndarray
    verdicts: list[Verdict] = dataclasses.field(default_factory=list)

    @property
    def n_points(self) -> int:
        return len(self.y)

    def predict(self, x) -> np.ndarray:
        """The law at new x: a dict of columns, an (n,) array for 1-D forms, or an (n, 2) array for chinchilla."""
        _, x_NxD = _as_matrix(x, self.x_names, self.form)
        return _predict(self.form, self.theta, x_NxD)

    def to_json(self) -> dict:
        """A JSON-ready dict: estimates, intervals, derived quantities, exclusions, objective, optimizer, starts,
        held-out error, AICc/BIC, verdicts and bootstrap settings (non-finite numbers become null)."""
        doc = {
            "form": self.form,
            "x": list(self.x_names),
            "y": self.y_name,
            "n_points": self.n_points,
            "exclusions": self.exclusions,
            "estimates": self.params,
            "intervals": {k: list(v) for k, v in self.intervals.items()},
            "derived": {k: {"estimate": v, "interval": list(self.derived_intervals[k]) if k in self.derived_intervals
                            else None} for k, v in self.derived.items()},
            "objective": self.objective,
            "optimizer": self.optimizer,
            "starts": self.starts,
            "heldout": self.heldout,
            "aicc": self.aicc,
            "bic": self.bic,
            "verdicts": [dataclasses.asdict(v) for v in self.verdicts],
            "bootstrap": self.bootstrap,
        }
        return json.loads(json.dumps(_finite_or_none(doc)))

    def summary(self) -> str:
        """A readable report: estimates with 95% intervals, derived quantities, fit quality and the verdicts."""
        lines = [f"{self.form} fit of {self.y_name} on {', '.join(self.x_names)}: {self.n_points} points"
                 + (f" ({len(self.exclusions)} excluded: the highest loss)" if self.exclusions else "")]
        rows = [(k, v, self.intervals.get(k)) for k, v in self.params.items()]
        rows += [(k, v, self.derived_intervals.get(k)) for k, v in self.derived.items()]
        width = max(len(k) for k, _, _ in rows)
        for k, v, ci in rows:
            lines.append(f"  {k:<{width}} = {_g(v):>10}" + (f"   95% CI [{_g(ci[0])}, {_g(ci[1])}]" if ci else ""))
        lines.append(f"objective: {self.objective['name']} = {_g(self.objective['value'])}")
        lines.append(f"optimizer: {self.optimizer}")
        if self.starts:
            s = self.starts
            lines.append(f"starts: {s['total']} polished, {s['converged']} converged, {s['at_optimum']} reached the "
                         f"best objective (largest parameter spread among those: {_g(s['max_relative_spread'])})")
        b = self.bootstrap
        lines.append(f"bootstrap: {b['skipped']}" if b.get("skipped") else
                     f"bootstrap: {b['used']} of {b['resamples']} resamples of the points used (seed {b['seed']})")
        h = self.heldout
        if h is None:
            lines.append("held-out error: not computed")
        elif "error" not in h:
            lines.append(f"held-out error: not computed ({h['reason']})")
        else:
            lines.append(f"held-out error: {100 * h['error']:.2f}% mean relative error on the {h['n_points']} runs "
                         f"with the largest {h['column']} (>= {_g(h['threshold'])}), fitted without them")
        lines.append(f"AICc {_g(self.aicc)}, BIC {_g(self.bic)} ({self.objective['residuals']}; compare only "
                     "between forms fitted to the same y)")
        lines += [f"{v.kind}: {v.text}" for v in self.verdicts]
        return "\n".join(lines)


def resample_counts(n_points: int, resamples: int, seed: int) -> np.ndarray:
    """How often each point appears in each bootstrap resample of the points: a (resamples, n_points) int array."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_points, np.full(n_points, 1.0 / n_points), size=resamples)


def fit_law(x, y, form: str, *, bootstrap: int = 1000, seed: int = 0, holdout_top: int | None = None,
            exclude_top_loss: int = 0, budget_flops: float | None = None, objective_scale: float = 1.0,
            x_names: tuple[str, ...] | None = None, y_name: str = "y", min_points: int | None = None) -> FitResult:
    """Fits a scaling law with bootstrap intervals, held-out error, AICc/BIC and verdicts.

    x: a dict of named columns (one for 1-D forms; N then D for chinchilla), an (n,) array or an (n, 2) array.
    form: one of FORMS. bootstrap: resamples of the points (0 skips intervals and verdicts). holdout_top: how many
    of the largest distinct values of the first x column to hold out when measuring extrapolation error (default: a
    tenth of them, at least 1; 0 skips). exclude_top_loss: drop the K points with the highest loss before fitting (for
    `bounded`, the lowest scores). budget_flops: adds compute-optimal N and D for this budget (chinchilla, C = 6 N D).
    objective_scale multiplies the objective; the answer must not depend on it. min_points: the fewest points (after
    exclusions; also for the held-out refit) to fit at all, default the law's parameters + 1 (the `fit` command asks
    for `checkable_points(form)`). Bad input raises UserError.
    """
    if form not in FORMS:
        raise UserError(f"unknown form {form!r}; expected one of {', '.join(FORMS)}")
    if budget_flops is not None and (form != "chinchilla" or not budget_flops > 0):
        raise UserError(f"a compute budget needs the chinchilla form and a positive number of FLOPs; got form {form!r}"
                        f" and budget {budget_flops}")
    names, x_all = _as_matrix(x, x_names, form)
    y_all = np.asarray(y, dtype=np.float64).reshape(-1)
    if len(y_all) != len(x_all):
        raise UserError(f"{y_name!r} has {len(y_all)} values but the x columns have {len(x_all)}")
    min_points = len(_PARAMS[form]) + 1 if min_points is None else min_points
    if len(y_all) == 0:
        raise UserError(f"no data rows; form {form!r} has {len(_PARAMS[form])} parameters and needs at least "
                        f"{min_points} points")
    _check_values(form, names, x_all, y_name, y_all)
    loss_like = 1.0 - y_all if form == "bounded" else y_all
    if not 0 <= exclude_top_loss < len(y_all):
        raise UserError(f"exclude_top_loss must be between 0 and {len(y_all) - 1}, got {exclude_top_loss}")
    dropped = np.argsort(-loss_like, kind="stable")[:exclude_top_loss]
    keep = np.setdiff1d(np.arange(len(y_all)), dropped)
    exclusions = [{"row": int(i) + 1, y_name: float(y_all[i])} for i in sorted(dropped)]
    x_NxD, y_N = x_all[keep], y_all[keep]
    _check_count(form, names, x_NxD, y_name, min_points)

    theta, objective_value, starts = _fit_full(form, x_NxD, y_N, objective_scale)
    skipped = _why_no_intervals(form, x_NxD)
    resamples = bootstrap if skipped is None else 0
    counts = resample_counts(len(y_N), resamples, seed) if resamples > 0 else np.zeros((0, len(y_N)), int)
    theta_draws = _fit_resamples(form, x_NxD, y_N, counts, theta, objective_scale)
    params = _public(form, theta)
    draws = _public(form, theta_draws)
    derived = _derived(form, params, x_NxD, budget_flops)
    derived_draws = _derived(form, draws, x_NxD, budget_flops)
    used = int(np.sum(np.all(np.isfinite(theta_draws), axis=1)))
    aicc, bic = _information_criteria(form, theta, x_NxD, y_N)
    lse = form != "loglinear"
    result = FitResult(
        form=form, x_names=names, y_name=y_name,
        params={k: float(v) for k, v in params.items()},
        intervals=_intervals(draws) if used else {},
        derived={k: float(v) for k, v in derived.items()},
        derived_intervals=_intervals(derived_draws) if used else {},
        draws=draws, x=x_NxD, y=y_N, exclusions=exclusions,
        objective={"name": f"sum of Huber(delta={HUBER_DELTA:g}) on log residuals" if lse else "sum of squares",
                   "value": objective_value, "scale": objective_scale,
                   "residuals": ("Gaussian likelihood of log(1 - y) residuals" if form == "bounded" else
                                 "Gaussian likelihood of log residuals" if lse else "Gaussian likelihood of residuals")},
        optimizer=_optimizer_text(form, x_NxD),
        starts=starts,
        heldout=_heldout(form, names, x_NxD, y_N, holdout_top, objective_scale, min_points),
        aicc=aicc, bic=bic,
        bootstrap={"resamples": resamples, "used": used, "seed": seed, "interval": f"{CONFIDENCE:g}% percentile",
                   "skipped": skipped},
        theta=theta,
    )
    result.verdicts = _verdicts(result)
    return result


def compute_optimal(result: FitResult, budget_flops: float) -> dict[str, dict]:
    """Compute-optimal N and D for a FLOPs budget (C = 6 N D) from a chinchilla fit, with bootstrap intervals.

    N_opt = G (C/6)^(beta/(alpha+beta)), D_opt = (C/6)^(alpha/(alpha+beta)) / G, G = (alpha A / (beta B))^(1/(alpha+beta)).
    Returns {"N_opt": {"estimate", "interval"}, "D_opt": {...}}; the interval is None without bootstrap draws.
    """
    if result.form != "chinchilla":
        raise UserError(f"compute-optimal allocation needs a chinchilla fit, not {result.form!r}")
    if not budget_flops > 0:
        raise UserError(f"budget_flops must be positive, got {budget_flops}")
    point = _compute_optimal(result.params, budget_flops)
    drawn = _compute_optimal(result.draws, budget_flops)
    intervals = _intervals(drawn) if result.bootstrap["used"] else {}
    return {k: {"estimate": float(point[k]), "interval": intervals.get(k)} for k in point}


def saturation_verdict(result: FitResult, min_points_each_side: int = 2) -> Verdict:
    """Whether a power-law-with-floor fit (power, bounded) saturates inside the observed range.

    The bend is where the reducible part equals the floor, x_bend = (A/E)^(1/alpha) (for bounded, E = 1 - S_max).
    Saturation is claimed only when the bend has at least `min_points_each_side` distinct observed x on each side and
    the 95% interval of the change in local exponent across the observed range excludes zero.
    """
    if result.form not in ("power", "bounded"):
        raise UserError(f"the saturation verdict needs a power or bounded fit, not {result.form!r}")
    d, ci = result.derived, result.derived_intervals
    xs = np.unique(result.x[:, 0])
    below, above = int(np.sum(xs < d["x_bend"])), int(np.sum(xs > d["x_bend"]))
    inside = below >= min_points_each_side and above >= min_points_each_side
    what = "error 1 - S" if result.form == "bounded" else result.y_name
    numbers = (f"the local exponent of the {what} goes from {_g(d['local_exponent_at_min'])} at the smallest x to "
               f"{_g(d['local_exponent_at_max'])} at the largest; the bend (reducible part = floor) is at x = "
               f"{_g(d['x_bend'])} with {below} observed sizes below and {above} above; at the largest x, "
               f"{100 * d['reducible_share_at_max']:.0f}% of the predicted {what} is still reducible")
    if "slope_change" not in ci:
        return Verdict("saturation", None, f"not judged (no bootstrap intervals); {numbers}.")
    lo, hi = ci["slope_change"]
    excludes_zero = lo > 0 or hi < 0
    claimed = bool(inside and excludes_zero)
    reason = ("the bend lies inside the observed range and the change in local exponent "
              f"({_g(d['slope_change'])}, 95% CI [{_g(lo)}, {_g(hi)}]) excludes zero" if claimed else
              f"the bend needs {min_points_each_side} observed sizes on each side" if not inside else
              f"the 95% CI of the change in local exponent [{_g(lo)}, {_g(hi)}] includes zero")
    head = "saturating" if claimed else "no saturation claimed"
    return Verdict("saturation", claimed, f"{head}: {reason}; {numbers}.")


def break_verdict(result: FitResult, min_points_each_side: int = 2) -> Verdict:
    """Whether a bnsl fit shows a real break: its location d1 has at least `min_points_each_side` distinct observed x
    on each side and the 95% interval of the slope change c1 excludes zero."""
    if result.form != "bnsl":
        raise UserError(f"the break verdict needs a bnsl fit, not {result.form!r}")
    p = result.params
    xs = np.unique(result.x[:, 0])
    below, above = int(np.sum(xs < p["d1"])), int(np.sum(xs > p["d1"]))
    inside = below >= min_points_each_side and above >= min_points_each_side
    numbers = (f"the exponent of the reducible part goes from {_g(-p['c0'])} to {_g(-(p['c0'] + p['c1']))} around "
               f"x = {_g(p['d1'])} ({below} observed sizes below, {above} above)")
    if "c1" not in result.intervals:
        return Verdict("break", None, f"not judged (no bootstrap intervals); {numbers}.")
    lo, hi = result.intervals["c1"]
    claimed = bool(inside and (lo > 0 or hi < 0))
    reason = (f"the slope change c1 = {_g(p['c1'])} (95% CI [{_g(lo)}, {_g(hi)}]) excludes zero and the break lies "
              "inside the observed range" if claimed else
              f"the break needs {min_points_each_side} observed sizes on each side" if not inside else
              f"the 95% CI of the slope change c1 [{_g(lo)}, {_g(hi)}] includes zero")
    return Verdict("break", claimed, f"{'break found' if claimed else 'no break claimed'}: {reason}; {numbers}.")


# ----------------------------------------------------------------------------------------------------- input checks


def _as_matrix(x, x_names, form: str) -> tuple[tuple[str, ...], np.ndarray]:
    dims = 2 if form == "chinchilla" else 1
    if isinstance(x, Mapping):
        names = tuple(x)
        cols = [np.asarray(x[k], dtype=np.float64).reshape(-1) for k in names]
        if len({len(c) for c in cols}) > 1:
            raise UserError(f"x columns {', '.join(names)} have different lengths {[len(c) for c in cols]}")
        x_NxD = np.stack(cols, axis=1) if cols else np.zeros((0, 0))
    else:
        x_NxD = np.asarray(x, dtype=np.float64)
        x_NxD = x_NxD[:, None] if x_NxD.ndim == 1 else x_NxD
        names = tuple(x_names) if x_names else (("N", "D") if dims == 2 else ("x",))[: x_NxD.shape[1]]
    if x_NxD.ndim != 2 or x_NxD.shape[1] != dims:
        expected = "two x columns (model size N, then data size D)" if dims == 2 else "one x column"
        raise UserError(f"form {form!r} needs {expected}; got {x_NxD.shape[1] if x_NxD.ndim == 2 else x_NxD.ndim}"
                        f" ({', '.join(names)})")
    return names, x_NxD


def _check_values(form: str, names, x_NxD: np.ndarray, y_name: str, y_N: np.ndarray) -> None:
    """Rows are counted from 1 (the first data row), as in a CSV without its header."""
    for j, name in enumerate(names):
        bad = np.flatnonzero(~(np.isfinite(x_NxD[:, j]) & (x_NxD[:, j] > 0)))
        if len(bad):
            raise UserError(f"column {name!r} must be finite and positive; row {bad[0] + 1} is {float(x_NxD[bad[0], j]):g}")
    if form == "loglinear":
        ok, expected = np.isfinite(y_N), "finite"
    elif form == "bounded":
        ok, expected = np.isfinite(y_N) & (y_N < 1), "finite and below 1 (the bounded form fits the error 1 - y)"
    else:
        ok, expected = np.isfinite(y_N) & (y_N > 0), "finite and positive"
    bad = np.flatnonzero(~ok)
    if len(bad):
        raise UserError(f"column {y_name!r} must be {expected}; row {bad[0] + 1} is {float(y_N[bad[0]]):g}")


def _why_no_intervals(form: str, x_NxD: np.ndarray) -> str | None:
    """Why a bootstrap would mislead, or None. With no more distinct x than parameters the law passes through every
    distinct x (through the mean of its replicates). The resamples then vary only through the replicates, so an x
    seen once is fitted exactly in every resample that has it and its noise never enters the interval; such
    intervals can even exclude the estimate. Intervals are kept there only when every distinct x is replicated."""
    k = len(_PARAMS[form])
    _, counts = np.unique(x_NxD, axis=0, return_counts=True)
    if len(counts) > k or counts.min() >= 2:
        return None
    return f"no intervals: {len(counts)} distinct x for {k} parameters, {int((counts == 1).sum())} of them seen once"


def checkable_points(form: str) -> int:
    """The fewest points the `fit` command accepts: the law's parameters + 2. With one point to spare, a bootstrap
    resample (n draws with replacement) holds every point with probability n!/n^n (1.5% for chinchilla's 6), so nearly
    every resample has no more distinct points than parameters and is fitted exactly: its intervals mean nothing (6
    points for chinchilla gave intervals up to 1e70)."""
    return len(_PARAMS[form]) + 2


def _check_count(form: str, names, x_NxD: np.ndarray, y_name: str, min_points: int) -> None:
    k = len(_PARAMS[form])
    distinct = len(np.unique(x_NxD, axis=0))
    if len(x_NxD) < min_points or distinct < k:
        why = ("; parameters + 2, because with one point to spare nearly every bootstrap resample has no more "
               "distinct points than parameters and is fitted exactly, so the intervals would mean nothing"
               if min_points == checkable_points(form) else "")
        raise UserError(f"form {form!r} has {k} parameters and needs at least {min_points} points with at least {k} "
                        f"distinct values of {', '.join(names)}; got {len(x_NxD)} points ({distinct} distinct) "
                        f"of {y_name!r}{why}")
    for j, name in enumerate(names):
        if form == "chinchilla" and len(np.unique(x_NxD[:, j])) < 2:
            raise UserError(f"form 'chinchilla' needs at least 2 distinct values of {name!r}")


# ---------------------------------------------------------------------------------------------------- the JAX engine


def _grid(form: str, lx_NxD: np.ndarray, coarse: bool) -> np.ndarray:
    """Exponent grid (cells x nonlinear parameters) for variable projection."""
    if form == "chinchilla":
        a = np.linspace(0.05, 2.5, 25) if coarse else np.linspace(0.02, 2.5, 125)
        return np.stack(np.meshgrid(a, a, indexing="ij"), axis=-1).reshape(-1, 2)
    if form in ("power", "bounded"):
        return (np.linspace(0.05, 3.0, 60) if coarse else np.linspace(0.01, 3.0, 300))[:, None]
    # bnsl: (c0, c1, log d1, log f1); breaks are searched between the second smallest and second largest x
    lxs = np.unique(lx_NxD[:, 0])
    inner = lxs[1:-1] if len(lxs) > 3 else lxs
    axes = (np.linspace(0.0, 2.0, 11 if coarse else 21), np.linspace(-1.0, 2.0, 11 if coarse else 21),
            np.linspace(inner[0], inner[-1], 6 if coarse else 12), np.log([0.1, 1.0] if coarse else [0.1, 0.3, 1, 3]))
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 4)


def _fitted_y(form: str, y_N: np.ndarray) -> np.ndarray:
    return 1.0 - y_N if form == "bounded" else y_N


@functools.cache
def _engine():
    """Builds the jitted JAX kernels on first use."""
    def log_terms(form, psi, lx_NxD):
        """Logs of the power-law terms without their coefficients: (N, n_linear - 1)."""
        if form == "bnsl":
            c0, c1, log_d1, log_f1 = psi[0], psi[1], psi[2], psi[3]
            f1 = jnp.exp(log_f1)
            return -c0 * lx_NxD - c1 * f1 * jnp.logaddexp(0.0, (lx_NxD - log_d1) / f1)
        return -lx_NxD * psi[None, :]

    def log_pred(form, theta, lx_NxD):
        m = _N_LINEAR[form]
        terms = theta[1:m] + log_terms(form, theta[m:], lx_NxD)
        floor = jnp.broadcast_to(theta[0], (lx_NxD.shape[0], 1))
        return jax.nn.logsumexp(jnp.concatenate([floor, terms], axis=1), axis=1)

    def objective(form, theta, lx, ly, w_N, scale):
        return scale * jnp.sum(w_N * optax.losses.huber_loss(log_pred(form, theta, lx), ly, delta=HUBER_DELTA))

    def solve3(G, b):
        """Solves a system of at most 3 unknowns by cofactors: batched LAPACK calls for such tiny systems are slow
        on CPU (and can stall XLA's thread pool); a singular system gives non-finite values."""
        m = b.shape[0]
        G3 = jnp.eye(3).at[:m, :m].set(G)
        c0, c1, c2 = G3[:, 0], G3[:, 1], G3[:, 2]
        rows = jnp.stack([jnp.cross(c1, c2), jnp.cross(c2, c0), jnp.cross(c0, c1)])
        return (rows @ jnp.zeros(3).at[:m].set(b) / (c0 @ rows[0]))[:m]

    def nnls_small(G, b, supports):
        """Exact NNLS for a few unknowns: the optimum is the unconstrained optimum on its own support, so the best
        feasible candidate over all supports is the global one."""
        m = b.shape[0]

        def on_support(mask):
            c = solve3(jnp.where(mask[:, None] & mask[None, :], G, jnp.eye(m)), jnp.where(mask, b, 0.0))
            ok = jnp.all(jnp.isfinite(c)) & jnp.all(c >= 0)
            return jnp.where(ok, c @ G @ c - 2 * c @ b, jnp.inf), c

        values, cs = jax.vmap(on_support)(supports)
        c = cs[jnp.argmin(values)]
        return jnp.where(jnp.isfinite(c), c, 0.0)

    @functools.partial(jax.jit, static_argnames=("form", "top", "batch"))
    def seeds(form, grid_CxP, lx, ly, w_RxN, scale, top, batch):
        """Variable projection: for each exponent cell and resample, the best non-negative floor and coefficients;
        returns the `top` cells per resample ranked by the true objective, as starts (R, top, k)."""
        m = _N_LINEAR[form]
        supports = jnp.array(list(itertools.product([False, True], repeat=m))[1:])
        # smallest coefficient kept: the term stays ~1e-3 of the smallest y, so Newton still sees its gradient
        min_log = jnp.min(jnp.where(w_RxN.sum(0) > 0, ly, jnp.inf)) - 7.0

        def cell(psi):
            logt = log_terms(form, psi, lx)
            phi_NxM = jnp.concatenate([jnp.ones((lx.shape[0], 1)), jnp.exp(logt)], axis=1) / jnp.exp(ly)[:, None]

            def solve(omega_RxN):
                G = jnp.einsum("rn,nj,nk->rjk", omega_RxN, phi_NxM, phi_NxM)
                b = omega_RxN @ phi_NxM
                s = jnp.sqrt(jnp.diagonal(G, axis1=1, axis2=2))
                s = jnp.where(s > 0, s, 1.0)  # columns are normalised: N^-alpha spans many decades
                c = jax.vmap(nnls_small, in_axes=(0, 0, None))(G / (s[:, :, None] * s[:, None, :]), b / s, supports)
                return c / s

            c = solve(w_RxN)
            for _ in range(_IRLS_STEPS):
                rel_RxN = c @ phi_NxM.T - 1.0
                c = solve(w_RxN * jnp.minimum(1.0, HUBER_DELTA / jnp.maximum(jnp.abs(rel_RxN), 1e-300)))
            floor_at = jnp.concatenate([jnp.zeros(1), jnp.max(logt, axis=0)])
            logc = jnp.maximum(jnp.log(jnp.maximum(c, 1e-300)), min_log - floor_at)
            theta = jnp.concatenate([logc, jnp.broadcast_to(psi, (c.shape[0], psi.shape[0]))], axis=1)
            f = jax.vmap(lambda t, w: objective(form, t, lx, ly, w, scale))(theta, w_RxN)
            return jnp.where(jnp.isfinite(f), f, jnp.inf), theta

        f_CxR, theta_CxRxK = jax.lax.map(cell, grid_CxP, batch_size=batch)
        _, idx_RxT = jax.lax.top_k(-f_CxR.T, top)
        return theta_CxRxK[idx_RxT, jnp.arange(f_CxR.shape[1])[:, None]]

    @functools.partial(jax.jit, static_argnames=("form",))
    def polish(form, theta_LxK, lx, ly, w_LxN, scale):
        """Damped Newton on every lane at once: |eigenvalue|-modified Hessian, Armijo backtracking over a fixed
        ladder of step lengths. Returns (theta, objective, converged, iterations)."""
        f_lane = functools.partial(objective, form, lx=lx, ly=ly, scale=scale)
        value_grad = jax.value_and_grad(lambda t, w: f_lane(t, w_N=w))
        hessian = jax.hessian(lambda t, w: f_lane(t, w_N=w))
        ladder = 0.5 ** jnp.arange(20.0)

        def step(theta, w):
            f, g = value_grad(theta, w)
            lam, V = jnp.linalg.eigh(hessian(theta, w))
            lam = jnp.maximum(jnp.abs(lam), 1e-10 * jnp.max(jnp.abs(lam)) + 1e-300)
            p = -V @ ((V.T @ g) / lam)
            decrement = -(g @ p)  # scale-free stopping: compared with f itself
            p = p * jnp.minimum(1.0, _STEP_CAP / jnp.max(jnp.abs(p)))
            f_try = jax.vmap(lambda t: f_lane(theta + t * p, w_N=w))(ladder)
            ok = f_try <= f + 1e-4 * ladder * (g @ p)
            moved = jnp.any(ok)
            theta_new = jnp.where(moved, theta + ladder[jnp.argmax(ok)] * p, theta)
            converged = (decrement <= _NEWTON_RTOL * jnp.abs(f)) | ~jnp.all(jnp.isfinite(p))
            return theta_new, converged & jnp.isfinite(f), ~moved

        def body(state):
            theta, done, conv, it = state
            theta_new, conv_new, stalled = jax.vmap(step)(theta, w_LxN)
            theta = jnp.where(done[:, None], theta, theta_new)
            conv = conv | (~done & conv_new)
            return theta, done | conv_new | stalled, conv, it + 1

        def cond(state):
            return ~jnp.all(state[1]) & (state[3] < _NEWTON_MAX_ITER)

        L = theta_LxK.shape[0]
        init = (theta_LxK, jnp.zeros(L, bool), jnp.zeros(L, bool), jnp.int32(0))
        theta, _, conv, it = jax.lax.while_loop(cond, body, init)
        f = jax.vmap(lambda t, w: f_lane(t, w_N=w))(theta, w_LxN)
        return theta, jnp.where(jnp.isfinite(f), f, jnp.inf), conv, it

    @functools.partial(jax.jit, static_argnames=("form",))
    def predict(form, theta, lx):
        return log_pred(form, theta, lx)

    return seeds, polish, predict


def _padded(lx_NxD: np.ndarray, ly_N: np.ndarray, w_RxN: np.ndarray):
    """Pads the points to a power of two with zero-weight copies of the first, so few shapes are ever compiled."""
    n = len(ly_N)
    size = max(8, 1 << (n - 1).bit_length())
    pad = np.zeros(size - n, int)
    w = np.concatenate([w_RxN, np.zeros((len(w_RxN), size - n))], axis=1)
    return np.concatenate([lx_NxD, lx_NxD[pad]]), np.concatenate([ly_N, ly_N[pad]]), w


def _lse_fit(form: str, x_NxD, y_N, w_RxN, extra_starts, scale: float, coarse: bool, top: int):
    """Variable-projection starts plus `extra_starts` (R, E, k), polished; the best lane per resample."""
    seeds, polish, _ = _engine()
    lx, ly, w = _padded(np.log(x_NxD), np.log(_fitted_y(form, y_N)), w_RxN)
    R, k = len(w), len(_PARAMS[form])
    grid = _grid(form, lx, coarse)
    with jax.enable_x64(True):
        batch = max(1, min(len(grid), (1 << 18) // (R * lx.shape[0])))
        starts = seeds(form, jnp.asarray(grid), jnp.asarray(lx), jnp.asarray(ly), jnp.asarray(w), scale, top, batch)
        starts_RxSxK = np.concatenate([np.asarray(starts), extra_starts], axis=1)
        S = starts_RxSxK.shape[1]
        theta, f, conv, it = polish(form, jnp.asarray(starts_RxSxK.reshape(R * S, k)), jnp.asarray(lx),
                                    jnp.asarray(ly), jnp.asarray(np.repeat(w, S, axis=0)), scale)
    return (np.asarray(theta).reshape(R, S, k), np.asarray(f).reshape(R, S), np.asarray(conv).reshape(R, S), int(it))


def _fit_full(form: str, x_NxD, y_N, scale: float):
    """The point estimate: the global search on all points. Returns (theta, objective, starts report)."""
    if form == "loglinear":
        theta = _loglinear(x_NxD, y_N, np.ones((1, len(y_N))))[0]
        resid = _predict(form, theta, x_NxD) - y_N
        return theta, float(scale * np.sum(resid ** 2)), None
    k = len(_PARAMS[form])
    theta, f, conv, iters = _lse_fit(form, x_NxD, y_N, np.ones((1, len(y_N))), np.zeros((1, 0, k)), scale,
                                     coarse=False, top=_STARTS[form])
    theta, f, conv = theta[0], f[0], conv[0]
    best = int(np.argmin(f))
    at_opt = (f - f[best]) <= 1e-6 * abs(f[best])
    spread = np.ptp(theta[at_opt], axis=0) / np.maximum(np.abs(theta[best]), 1e-12)
    starts = {"total": len(f), "converged": int(conv.sum()), "at_optimum": int(at_opt.sum()),
              "max_relative_spread": float(spread.max()), "newton_iterations": iters,
              "objective_range": [float(f[best]), float(np.max(np.where(np.isfinite(f), f, np.nan)))]}
    return theta[best], float(f[best]), starts


def _fit_resamples(form: str, x_NxD, y_N, counts_RxN, theta_full, scale: float) -> np.ndarray:
    """Bootstrap refits, warm-started from the full-data optimum plus the best cells of a coarse grid. Resamples
    with fewer distinct x than parameters are left as NaN."""
    k = len(_PARAMS[form])
    out = np.full((len(counts_RxN), k), np.nan)
    if not len(counts_RxN):
        return out
    _, groups = np.unique(x_NxD, axis=0, return_inverse=True)
    groups = groups.reshape(-1)
    present_RxG = (counts_RxN @ (groups[:, None] == np.arange(groups.max() + 1))) > 0
    ok = present_RxG.sum(axis=1) >= k
    w = counts_RxN[ok].astype(np.float64)
    if form == "loglinear":
        out[ok] = _loglinear(x_NxD, y_N, w)
        return out
    warm = np.broadcast_to(theta_full, (len(w), 1, k))
    theta, f, _, _ = _lse_fit(form, x_NxD, y_N, w, warm, scale, coarse=True, top=_BOOT_STARTS - 1)
    out[ok] = theta[np.arange(len(w)), np.argmin(f, axis=1)]
    return out


def _loglinear(x_NxD, y_N, w_RxN) -> np.ndarray:
    """Weighted least squares of y on log10(x) for every weight row: (R, 2) of (intercept, slope)."""
    t = np.log10(x_NxD[:, 0])
    sw = w_RxN.sum(axis=1)
    t_mean, y_mean = (w_RxN @ t) / sw, (w_RxN @ y_N) / sw
    slope = (w_RxN @ (t * y_N) - sw * t_mean * y_mean) / (w_RxN @ (t * t) - sw * t_mean ** 2)
    return np.stack([y_mean - slope * t_mean, slope], axis=1)


def _predict(form: str, theta: np.ndarray, x_NxD: np.ndarray) -> np.ndarray:
    if form == "loglinear":
        return theta[0] + theta[1] * np.log10(x_NxD[:, 0])
    _, _, predict = _engine()
    with jax.enable_x64(True):
        fitted = np.exp(np.asarray(predict(form, jnp.asarray(theta), jnp.asarray(np.log(x_NxD)))))
    return 1.0 - fitted if form == "bounded" else fitted


def _optimizer_text(form: str, x_NxD) -> str:
    if form == "loglinear":
        return "closed-form (weighted) least squares"
    cells = len(_grid(form, np.log(x_NxD), coarse=False))
    return (f"variable projection over {cells} exponent grid cells (exact NNLS for floor and coefficients, "
            f"{_IRLS_STEPS} Huber reweightings), then damped Newton on the true objective from the best "
            f"{_STARTS[form]} cells (JAX, float64, stop at Newton decrement <= {_NEWTON_RTOL:g} x objective); "
            f"bootstrap resamples start from the full-data optimum and the best {_BOOT_STARTS - 1} cells of a "
            f"{len(_grid(form, np.log(x_NxD), coarse=True))}-cell grid")


# ------------------------------------------------------------------------------------------- reporting quantities


def _public(form: str, theta) -> dict[str, np.ndarray]:
    t = np.moveaxis(np.asarray(theta, dtype=np.float64), -1, 0)
    if form == "chinchilla":
        vals = (np.exp(t[0]), np.exp(t[1]), np.exp(t[2]), t[3], t[4])
    elif form == "power":
        vals = (np.exp(t[0]), np.exp(t[1]), t[2])
    elif form == "bounded":
        vals = (1.0 - np.exp(t[0]), np.exp(t[1]), t[2])
    elif form == "bnsl":
        vals = (np.exp(t[0]), np.exp(t[1]), t[2], t[3], np.exp(t[4]), np.exp(t[5]))
    else:
        vals = (t[0], t[1])
    return dict(zip(_PARAMS[form], vals))


def _compute_optimal(p: Mapping, budget_flops: float) -> dict[str, np.ndarray]:
    a, b = np.asarray(p["alpha"]), np.asarray(p["beta"])
    G = (a * np.asarray(p["A"]) / (b * np.asarray(p["B"]))) ** (1.0 / (a + b))
    c6 = budget_flops / 6.0
    return {"N_opt": G * c6 ** (b / (a + b)), "D_opt": c6 ** (a / (a + b)) / G}


def _derived(form: str, p: Mapping, x_NxD, budget_flops) -> dict[str, np.ndarray]:
    """Quantities computed from the parameters (so their intervals come from the same bootstrap draws)."""
    if form == "chinchilla":
        a, b = p["alpha"], p["beta"]
        out = {"N_opt_exponent": b / (a + b), "D_opt_exponent": a / (a + b), "alpha_over_beta": a / b}
        if budget_flops is not None:
            out.update(_compute_optimal(p, budget_flops))
        return out
    if form in ("power", "bounded"):
        E = 1.0 - p["S_max"] if form == "bounded" else p["E"]
        A, alpha = p["A"], p["alpha"]

        def local_exponent(x):  # d log y / d log x of E + A x^-alpha
            r = A * x ** -alpha
            return -alpha * r / (E + r)

        lo, hi = x_NxD[:, 0].min(), x_NxD[:, 0].max()
        with np.errstate(over="ignore", divide="ignore"):
            return {"x_bend": (A / E) ** (1.0 / alpha), "local_exponent_at_min": local_exponent(lo),
                    "local_exponent_at_max": local_exponent(hi),
                    "slope_change": local_exponent(hi) - local_exponent(lo),
                    "reducible_share_at_max": -local_exponent(hi) / alpha}
    if form == "bnsl":
        return {"exponent_before": -p["c0"], "exponent_after": -(p["c0"] + p["c1"])}
    return {}


def _intervals(draws: Mapping) -> dict[str, tuple[float, float]]:
    tail = (100.0 - CONFIDENCE) / 2
    out = {}
    for k, v in draws.items():
        v = np.asarray(v, dtype=np.float64)
        v = v[np.isfinite(v)]
        if len(v):
            lo, hi = np.percentile(v, [tail, 100.0 - tail])
            out[k] = (float(lo), float(hi))
    return out


def _information_criteria(form: str, theta, x_NxD, y_N) -> tuple[float | None, float]:
    """AICc and BIC from a Gaussian likelihood of the residuals in the space the form is fitted in; k counts the
    law's parameters plus the noise variance. AICc is None when there are too few points for its correction."""
    fitted = _predict(form, theta, x_NxD)
    if form == "loglinear":
        resid = fitted - y_N
    else:
        resid = np.log(_fitted_y(form, fitted)) - np.log(_fitted_y(form, y_N))
    n, k = len(y_N), len(_PARAMS[form]) + 1
    rss = max(float(np.sum(resid ** 2)), 1e-300)
    log_lik = -0.5 * n * (math.log(2 * math.pi * rss / n) + 1.0)
    aic = 2 * k - 2 * log_lik
    aicc = aic + 2 * k * (k + 1) / (n - k - 1) if n - k - 1 > 0 else None
    return aicc, k * math.log(n) - 2 * log_lik


def _heldout(form: str, names, x_NxD, y_N, holdout_top: int | None, scale: float, min_points: int) -> dict | None:
    """Extrapolation error: refit without the runs at the largest distinct values of the first x column, then the
    mean relative error of the prediction on them."""
    values = np.unique(x_NxD[:, 0])
    top = max(1, len(values) // 10) if holdout_top is None else holdout_top
    if top <= 0:
        return None
    threshold = values[-min(top, len(values))]
    held = x_NxD[:, 0] >= threshold
    base = {"column": names[0], "threshold": float(threshold), "distinct_values": int(min(top, len(values))),
            "n_points": int(held.sum())}
    try:
        _check_count(form, names, x_NxD[~held], "y", min_points)
    except UserError as err:
        return {**base, "reason": f"too few points left to refit: {err}"}
    theta, _, _ = _fit_full(form, x_NxD[~held], y_N[~held], scale)
    pred = _predict(form, theta, x_NxD[held])
    return {**base, "error": float(np.mean(np.abs(pred - y_N[held]) / np.abs(y_N[held]))),
            "metric": "mean relative error"}


def _verdicts(result: FitResult) -> list[Verdict]:
    if result.form in ("power", "bounded"):
        return [saturation_verdict(result)]
    if result.form == "bnsl":
        return [break_verdict(result)]
    if result.form == "chinchilla":
        spread = np.std(np.log(result.x[:, 1] / result.x[:, 0]))
        if spread < 0.1:
            return [Verdict("identifiability", False, "every run has nearly the same D/N ratio (std of ln(D/N) = "
                            f"{spread:.3f}), so A and B (and alpha vs beta) are poorly identified: vary D/N.")]
    return []


def _g(v) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.4g}"


def _finite_or_none(obj):
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
