"""A linear-nonlinear (LN) encoding model per neuron: the classical stimulus model of neural prediction.

Features of sample t of an example (one row of the design):
  video     the frames t-L+1 .. t, standardized with the video normalization (VIDEO_MEAN, VIDEO_STD) and average-pooled
            by an integer factor per axis to at most `grid` cells (floor(H / grid_h) x floor(W / grid_w) pixels per
            cell, the frame cropped to a multiple of it), lag-major. Causal: a response never sees a later frame.
            Frames hidden by the regime's mask, and frames before the window, are 0 (gray).
  behavior  where the regime encodes behavior, the example's visible behavior channels at t (standardized; channels
            the session lacks are 0).
Linear stage: per session, ridge regression of each neuron's response (centered by its training mean) on the
features with an unpenalized intercept (baselines.RidgeStats). Each neuron's history length L (from `lags`) and
penalty (from `alphas`) are chosen by its squared error on the held-out training trials (baselines.held_out) of a
fit on the others; the chosen model is then refit on all training trials. Output
nonlinearity: rate = softplus(a_n g + b_n) of the linear prediction g, with (a_n, b_n) maximizing the Poisson
likelihood of the training rows (Fisher scoring, `fit_softplus_output`). Neurons without training rows predict their
training mean.

Two variants are fit from the same sums: with the behavior features (for regimes that encode behavior) and without
(the video block of the same statistics). Training rows are the samples with a full history of the longest L inside
their window (t >= max(lags) - 1), for every L, so that the candidates share one set of sums.

Sessions with more neurons than an example holds: each training example carries a subset of the session's neurons,
so the feature covariance comes from every row of the session and each neuron's cross-moments from the rows of the
examples it was in (as RidgePopulation pairs its moments; exact ridge when every neuron is in every example, a
consistent but noisier estimate otherwise). Statistics per session: two folds of (D+1)^2 and (D+1) x neurons float64
sums, D = max(lags) x cells + channels (D = 1,157 at the defaults: 11 MB for the feature sums of a fold, 9 KB per
neuron).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from omnimouse_jax.data.synthetic import VIDEO_MEAN, VIDEO_STD
from omnimouse_jax.evaluate.baselines import DEFAULT_ALPHA, MIN_RATE, MeanBaseline, RidgeStats, held_out

# Numbers of frames of history each neuron chooses from on the held-out trials (docs/evaluation.md).
LAGS = (4, 8)
POOL_GRID = (9, 16)  # at most this many pooled cells per frame (rows, columns)
FISHER_STEPS = 20  # most for the output nonlinearity; a row stops once its likelihood stops improving
# Penalties relative to the mean feature variance, as baselines.ALPHAS, shifted up: ~1,000 features from a few
# thousand overlapping training samples per session need stronger shrinkage.
LN_ALPHAS = tuple(10.0 ** np.arange(-1, 5))
_LINEAR_FIELDS = ("neuron_mask", "neuron_index", "session_index", "example_mask")


def pool_frames(video_BxTxHxW: np.ndarray, grid: tuple[int, int] = POOL_GRID) -> np.ndarray:
    """(B, T, P) float32: each frame standardized and average-pooled to at most `grid` cells, row-major."""
    B, T, H, W = video_BxTxHxW.shape
    fh, fw = max(1, H // grid[0]), max(1, W // grid[1])
    h, w = H // fh, W // fw
    x = video_BxTxHxW[:, :, :h * fh, :w * fw].astype(np.float32).reshape(B, T, h, fh, w, fw).mean((3, 5))
    return ((x - np.float32(VIDEO_MEAN)) / np.float32(VIDEO_STD)).reshape(B, T, h * w)


def lagged(pooled_BxTxP: np.ndarray, lags: int) -> np.ndarray:
    """(B, T, lags * P): column block l holds frame t - l (0 before the window)."""
    B, T, P = pooled_BxTxP.shape
    padded = np.concatenate([np.zeros((B, lags - 1, P), pooled_BxTxP.dtype), pooled_BxTxP], axis=1)
    return np.concatenate([padded[:, lags - 1 - lag:lags - 1 - lag + T] for lag in range(lags)], axis=2)


def softplus(x):
    """log(1 + exp(x)), without overflow."""
    return np.logaddexp(0.0, x)


def _log_softplus(x):
    return np.where(x < -30.0, x, np.log(np.maximum(softplus(x), 1e-300)))


def _poisson_nll(rows, eta, y, num_rows) -> np.ndarray:
    """Per row: sum of softplus(eta) - y log softplus(eta)."""
    return np.bincount(rows, weights=softplus(eta) - y * _log_softplus(eta), minlength=num_rows)


def fit_softplus_output(rows_E: np.ndarray, g_E: np.ndarray, y_E: np.ndarray, num_rows: int,
                        steps: int = FISHER_STEPS) -> tuple[np.ndarray, np.ndarray]:
    """Per row r, (a_r, b_r) maximizing the Poisson log-likelihood of y under rate softplus(a_r g + b_r) over the
    elements of that row: Fisher scoring (the expected information w = sigmoid(eta)^2 / softplus(eta), positive, so
    every step is a descent direction) with step halving until the row's likelihood does not fall; a row stops when
    its step no longer changes the likelihood. Starts where the output equals g to first order at the row's means.
    Rows without elements get (0, 0)."""
    rows_E = np.asarray(rows_E, np.int64)
    g, y = np.asarray(g_E, np.float64), np.asarray(y_E, np.float64)
    count = lambda w, r=rows_E: np.bincount(r, weights=w, minlength=num_rows)  # noqa: E731
    n = count(np.ones_like(g))
    active = n > 0
    mean_y = np.maximum(np.divide(count(y), n, out=np.zeros(num_rows), where=active), 1e-3)
    mean_g = np.divide(count(g), n, out=np.zeros(num_rows), where=active)
    eta0 = np.log(np.expm1(mean_y))  # softplus^-1
    a = np.where(active, 1.0 + np.exp(-eta0), 0.0)  # 1 / sigmoid(eta0): unit slope at the mean
    b = np.where(active, eta0 - a * mean_g, 0.0)
    nll = _poisson_nll(rows_E, a[rows_E] * g + b[rows_E], y, num_rows)
    for _ in range(steps):
        on = active[rows_E]
        r, ge, ye = rows_E[on], g[on], y[on]
        eta = a[r] * ge + b[r]
        f = np.maximum(softplus(eta), 1e-12)
        s = np.exp(-softplus(-eta))  # sigmoid
        u, w = s * (1.0 - ye / f), s * s / f
        ga, gb = count(u * ge, r), count(u, r)
        faa, fab, fbb = count(w * ge * ge, r), count(w * ge, r), count(w, r)
        det = faa * fbb - fab * fab
        ok = active & np.isfinite(det) & (det > 1e-12 * np.maximum(faa * fbb, 1e-300))
        safe = np.where(ok, det, 1.0)
        da = np.where(ok, -(fbb * ga - fab * gb) / safe, 0.0)
        db = np.where(ok, -(faa * gb - fab * ga) / safe, 0.0)
        step, pending, moved = np.ones(num_rows), ok.copy(), np.zeros(num_rows, bool)
        for _ in range(12):
            if not pending.any():
                break
            on = pending[rows_E]
            r = rows_E[on]
            a_try, b_try = a + step * da, b + step * db
            trial = _poisson_nll(r, a_try[r] * g[on] + b_try[r], y[on], num_rows)
            better = pending & np.isfinite(trial) & (trial <= nll)
            moved |= better & (trial < nll - 1e-9 * np.abs(nll))
            a, b, nll = np.where(better, a_try, a), np.where(better, b_try, b), np.where(better, trial, nll)
            pending &= ~better
            step = np.where(pending, step / 2, step)
        active &= moved
        if not active.any():
            break
    return a, b


class _Moments:
    """Sums over one fold of one session: z z^T over every training row (z = [features, 1]); per neuron z y, y^2
    and the row count over the rows of the examples it was in."""

    def __init__(self, d: int, n: int):
        self.zz, self.zy = np.zeros((d + 1, d + 1)), np.zeros((d + 1, n))
        self.yy, self.count = np.zeros(n), np.zeros(n)

    @property
    def rows(self) -> float:
        return self.zz[-1, -1]

    def add(self, x_SxD: np.ndarray, y_SxN: np.ndarray, count_N: np.ndarray) -> None:
        """y_SxN: responses, 0 where the neuron was absent; count_N: the rows each neuron was present in. The
        products are taken in float32 (one group of rows at a time) and summed in float64."""
        z = np.concatenate([np.asarray(x_SxD, np.float32), np.ones((len(x_SxD), 1), np.float32)], axis=1)
        y = np.asarray(y_SxN, np.float32)
        self.zz += z.T @ z
        self.zy += z.T @ y
        self.yy += (y.astype(np.float64) ** 2).sum(0)
        self.count += count_N

    def __add__(self, other: "_Moments") -> "_Moments":
        out = _Moments(self.zz.shape[0] - 1, self.zy.shape[1])
        out.zz, out.zy = self.zz + other.zz, self.zy + other.zy
        out.yy, out.count = self.yy + other.yy, self.count + other.count
        return out

    def _select(self, columns: np.ndarray) -> np.ndarray:
        return np.append(columns, self.zz.shape[0] - 1)  # the chosen feature columns, then the intercept

    def ridge_stats(self, columns: np.ndarray) -> RidgeStats:
        """RidgeStats of the feature `columns`, each neuron's cross-moments scaled to all rows."""
        sel = self._select(columns)
        scale = np.divide(self.rows, self.count, out=np.zeros_like(self.count), where=self.count > 0)
        out = RidgeStats(len(columns), self.zy.shape[1])
        out.zz, out.zy, out.yy = self.zz[np.ix_(sel, sel)], self.zy[sel] * scale, self.yy * scale
        return out

    def errors(self, theta: np.ndarray, columns: np.ndarray) -> np.ndarray:
        """Per neuron: squared error of z @ theta over its rows (theta (len(columns) + 1, neurons), intercept
        last)."""
        sel = self._select(columns)
        share = np.divide(self.count, self.rows, out=np.zeros_like(self.count), where=self.rows > 0)
        quadratic = np.sum(theta * (self.zz[np.ix_(sel, sel)] @ theta), axis=0)
        return self.yy - 2 * np.sum(theta * self.zy[sel], axis=0) + share * quadratic


class LNBaseline(MeanBaseline):
    """Rates from the visible video (and visible behavior where the regime encodes it); see the module docstring.
    Behavior predicts its per-session training mean (MeanBaseline).

    After `fit`, per variant v (True: with behavior features): `coef[v][k]` the session's (width[v] + 1, neurons)
    ridge coefficients on the first width[v] design columns (intercept last; 0 for the lags a neuron does not use;
    None without training data), `alpha[v][k]` and `history[v][k]` each neuron's penalty and number of lags, and
    `gain[v]`, `bias[v]` the output nonlinearity per neuron-table row."""

    def __init__(self, layout, lags: Sequence[int] = LAGS, grid: tuple[int, int] = POOL_GRID, alphas=LN_ALPHAS):
        super().__init__(layout)
        self.lag_choices = tuple(sorted({int(lag) for lag in (lags if isinstance(lags, Sequence) else [lags])}))
        if not self.lag_choices or self.lag_choices[0] < 1:
            raise ValueError(f"LNBaseline: lags={lags}, expected numbers of at least 1")
        self.lags, self.grid, self.alphas = self.lag_choices[-1], tuple(grid), tuple(alphas)
        self.width: dict[bool, int] = {}
        self.coef: dict[bool, list[np.ndarray | None]] = {}
        self.alpha: dict[bool, list[np.ndarray]] = {}
        self.history: dict[bool, list[np.ndarray]] = {}
        self.gain: dict[bool, np.ndarray] = {}
        self.bias: dict[bool, np.ndarray] = {}

    def _inputs(self, batch, video_visible_BxT, behavior_visible_B) -> tuple[np.ndarray, np.ndarray]:
        """(pooled frames (B, T, P), behavior (B, T, C)) under a regime's masks: hidden frames 0 (gray), invisible
        or absent behavior channels 0."""
        pooled = pool_frames(batch["video"], self.grid) * np.asarray(video_visible_BxT, np.float32)[:, :, None]
        use = np.asarray(behavior_visible_B, bool) & np.asarray(batch["example_mask"], bool)
        behavior = np.where(use[:, None, None] & np.asarray(batch["behavior_mask"], bool)[:, None, :],
                            batch["behavior"], 0.0)
        return pooled, behavior.astype(np.float32)

    def design(self, pooled_BxTxP, behavior_BxTxC) -> np.ndarray:
        """(B, T, lags * P + C) float32: the lagged pooled frames (lag-major), then the behavior channels."""
        return np.concatenate([lagged(pooled_BxTxP, self.lags), behavior_BxTxC], axis=2)

    def features(self, batch, video_visible_BxT, behavior_visible_B) -> np.ndarray:
        """The design of `batch` under a regime's masks (see _inputs)."""
        return self.design(*self._inputs(batch, video_visible_BxT, behavior_visible_B))

    def _examples(self, batch):
        """(example, session, real slots, their local neuron indices) of the batch's real examples."""
        for b in np.flatnonzero(batch["example_mask"]):
            k = int(batch["session_index"][b])
            slots = np.flatnonzero(batch["neuron_mask"][b])
            yield b, k, slots, batch["neuron_index"][b, slots] - self.layout.row_offsets[k]

    def fit(self, train_batches, strategy=None) -> "LNBaseline":
        """Two passes over `train_batches` (their pooled frames kept between them)."""
        batches = list(train_batches)
        if not batches:
            raise ValueError("LNBaseline.fit: no training batches")
        super().fit(batches)
        L, sizes = self.lags, self.layout.n_neurons
        inputs = [self._inputs(b, np.ones(b["video"].shape[:2], bool), np.ones(len(b["video"]), bool))
                  for b in batches]
        P, C = inputs[0][0].shape[2], inputs[0][1].shape[2]
        d = L * P + C
        self.width = {True: d, False: L * P}
        moments = [[_Moments(d, n) for n in sizes] for _ in range(2)]
        for batch, parts in zip(batches, inputs):
            x = self.design(*parts)[:, L - 1:]  # rows with a full history
            folds = held_out(batch["trial_index"]).astype(int)
            groups: dict[tuple[int, int], list] = {}
            for b, k, slots, local in self._examples(batch):
                groups.setdefault((int(folds[b]), k), []).append((b, slots, local))
            for (f, k), members in groups.items():  # one product per (fold, session) of the batch
                rows = len(x[0])
                y = np.zeros((len(members) * rows, sizes[k]), np.float32)
                count = np.zeros(sizes[k])
                for i, (b, slots, local) in enumerate(members):
                    rows_b = batch["neuron_index"][b, slots]
                    y[i * rows:(i + 1) * rows, local] = batch["responses"][b, L - 1:][:, slots] - self.mean_rows[rows_b]
                    count[local] += rows
                moments[f][k].add(x[[b for b, _, _ in members]].reshape(-1, d), y, count)
        for v in self.width:
            behavior = np.arange(L * P, d) if v else np.arange(0)
            candidates = {lags: np.concatenate([np.arange(lags * P), behavior]) for lags in self.lag_choices}
            fits = [self._fit_linear(moments[0][k], moments[1][k], candidates, self.width[v])
                    for k in range(self.layout.num_sessions)]
            self.coef[v], self.alpha[v], self.history[v] = (list(part) for part in zip(*fits))
            for k, coef in enumerate(self.coef[v]):
                if coef is not None:  # back from centered responses
                    coef[-1] += self.mean_rows[self.layout.row_offsets[k]:self.layout.row_offsets[k] + sizes[k]]
        self._fit_output(batches, inputs)
        return self

    def _fit_linear(self, train: _Moments, held: _Moments, candidates: dict[int, np.ndarray], width: int):
        """(coefficients (width + 1, neurons) refit on both folds, or None without data; per-neuron alpha and
        number of lags), each neuron's pair chosen by its squared error on the held-out fold."""
        n = train.zy.shape[1]
        choices = [(lags, alpha) for lags in candidates for alpha in self.alphas]
        # Without a held-out fold: the longest history at the penalty closest to DEFAULT_ALPHA.
        fallback = max(range(len(choices)), key=lambda i: (choices[i][0], -abs(np.log(choices[i][1] / DEFAULT_ALPHA))))
        best = np.full(n, fallback)
        if train.rows + held.rows == 0:
            return None, np.full(n, choices[fallback][1]), np.full(n, choices[fallback][0])
        if train.rows > 0 and held.rows > 0:
            errors = []
            for lags, columns in candidates.items():
                stats = train.ridge_stats(columns)
                errors += [held.errors(stats.solve(alpha), columns) for alpha in self.alphas]
            best = np.where(held.count > 0, np.argmin(np.stack(errors), axis=0), best)
        both = train + held
        coef = np.zeros((width + 1, n))
        for lags, columns in candidates.items():
            used = sorted({i for i in np.unique(best) if choices[i][0] == lags})
            if not used:
                continue
            stats = both.ridge_stats(columns)
            for i in used:
                theta = stats.solve(choices[i][1])
                pick = np.flatnonzero(best == i)
                coef[np.ix_(columns, pick)] = theta[:-1, pick]
                coef[-1, pick] = theta[-1, pick]
        return coef, np.array([choices[i][1] for i in best]), np.array([choices[i][0] for i in best])

    def _fit_output(self, batches, inputs) -> None:
        """The softplus output per neuron row, fit on the linear stage's predictions of the training rows."""
        L, total = self.lags, self.layout.num_neuron_rows
        parts = {v: {"row": [], "g": [], "y": []} for v in self.width}
        for batch, batch_inputs in zip(batches, inputs):
            x = self.design(*batch_inputs)[:, L - 1:]
            g = {v: self._linear_rows(x, batch, v) for v in self.width}
            real = np.asarray(batch["neuron_mask"], bool) & np.asarray(batch["example_mask"], bool)[:, None]
            b, n = np.nonzero(real)
            for v in self.width:
                keep = g[v][1][b, n]
                parts[v]["row"].append(np.repeat(batch["neuron_index"][b, n][keep], x.shape[1]))
                parts[v]["g"].append(g[v][0][b[keep], :, n[keep]].ravel())
                parts[v]["y"].append(batch["responses"][b[keep], L - 1:, n[keep]].ravel())
        for v, part in parts.items():
            row, g, y = (np.concatenate(part[key]) if part[key] else np.zeros(0) for key in ("row", "g", "y"))
            self.gain[v], self.bias[v] = fit_softplus_output(row.astype(np.int64), g, y, total)

    def _linear_rows(self, x_BxSxD, batch, v: bool) -> tuple[np.ndarray, np.ndarray]:
        """(g (B, S, N), fitted (B, N)): variant v's linear prediction for every row of x, one product per
        session of the batch."""
        B, S, _ = x_BxSxD.shape
        g = np.zeros((B, S, batch["neuron_mask"].shape[1]))
        fitted = np.zeros(batch["neuron_mask"].shape, bool)
        sessions = np.asarray(batch["session_index"])
        real = np.asarray(batch["example_mask"], bool)
        for k in np.unique(sessions[real]):
            theta = self.coef[v][int(k)]
            if theta is None:
                continue
            members = np.flatnonzero(real & (sessions == k))
            slots = [np.flatnonzero(batch["neuron_mask"][b]) for b in members]
            local = [batch["neuron_index"][b, s] - self.layout.row_offsets[int(k)] for b, s in zip(members, slots)]
            needed, where = np.unique(np.concatenate(local), return_inverse=True)  # the members' neurons only
            weights = theta[:-1, needed].astype(np.float32)
            rows = np.ascontiguousarray(x_BxSxD[members][:, :, :self.width[v]]).reshape(-1, self.width[v])
            part = (rows @ weights).reshape(len(members), S, -1) + theta[-1, needed]  # (members, S, needed)
            offsets = np.cumsum([0] + [len(s) for s in slots])
            for i, b in enumerate(members):
                g[b][:, slots[i]] = part[i][:, where[offsets[i]:offsets[i + 1]]]
                fitted[b, slots[i]] = True
        return g, fitted

    def linear(self, batch, masks) -> tuple[np.ndarray, np.ndarray]:
        """(g (B, T, N) the linear stage's prediction, fitted (B, N): where a session model applies) under
        `masks`; each example uses the variant of its behavior visibility."""
        B = len(batch["video"])
        behavior_visible = np.broadcast_to(np.asarray(masks.behavior_visible, bool), (B,))
        x = self.features(batch, np.asarray(masks.video_visible, bool), behavior_visible)
        g = np.zeros(batch["responses"].shape, np.float64)
        fitted = np.zeros(batch["neuron_mask"].shape, bool)
        for v in (True, False):
            pick = behavior_visible == v
            if pick.any():
                part = {key: value[pick] for key, value in batch.items() if key in _LINEAR_FIELDS}
                g[pick], fitted[pick] = self._linear_rows(x[pick], part, v)
        return g, fitted

    def predict(self, batch, masks) -> dict[str, np.ndarray]:
        out = super().predict(batch, masks)
        B = len(batch["video"])
        behavior_visible = np.broadcast_to(np.asarray(masks.behavior_visible, bool), (B,))[:, None]
        g, fitted = self.linear(batch, masks)
        rows = batch["neuron_index"]
        gain = np.where(behavior_visible, self.gain[True][rows], self.gain[False][rows])
        bias = np.where(behavior_visible, self.bias[True][rows], self.bias[False][rows])
        rates = np.maximum(softplus(gain[:, None, :] * g + bias[:, None, :]), MIN_RATE)
        out["rates"] = np.where(fitted[:, None, :], rates, out["rates"]).astype(np.float32)
        return out
