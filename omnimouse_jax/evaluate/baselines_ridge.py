"""Ridge baselines, one per regime family: population completion, forecasting and behavior decoding.

All three are linear in responses centered by the per-neuron training means (MeanBaseline), fit per session from
sufficient statistics, with the penalty chosen on held-out training trials (see baselines.py). Where a baseline has
nothing to work from (no visible neuron, no history, a horizon it was not fit for) it predicts the mean.
"""
from __future__ import annotations

import numpy as np

from omnimouse_jax.evaluate.baselines import (ALPHAS, DEFAULT_ALPHA, MIN_RATE, MeanBaseline, RidgeStats, fit_ridge,
                                              held_out, replayable, ridge_solve)
from omnimouse_jax.model.masking import make_masks, strategy_arrays


def _real_slots(batch, b) -> np.ndarray:
    return np.flatnonzero(batch["neuron_mask"][b])


class RidgePopulation(MeanBaseline):
    """Visible neurons -> held-out neurons at the same samples.

    Per session the training covariance C of all its neurons is accumulated once (pairwise over the samples where
    both neurons were in the example, so sessions larger than a batch's neuron budget work too). For each evaluation
    example with visible set V and target set H: y_H = mu_H + (y_V - mu_V) (C_VV + lambda I)^-1 C_VH. The penalty
    (lambda = alpha * mean variance of V) is chosen per session on held-out trials, averaging the closed-form
    held-out error over `validation_splits` random V/H splits of the strategy's visible-neuron count (half the
    session when the strategy does not fix it). Fitting holds four n x n float64 matrices per session (sums and pair
    counts of both folds): 32 MB at 1,000 neurons, 2 GB at 8,000.
    """

    def __init__(self, layout, validation_splits: int = 3, seed: int = 0):
        super().__init__(layout)
        self.validation_splits, self.seed = validation_splits, seed
        self.cov: list[np.ndarray] = []
        self.alpha: list[float] = []

    def fit(self, train_batches, strategy) -> "RidgePopulation":
        batches = replayable(train_batches)
        super().fit(batches)
        sizes = self.layout.n_neurons
        # Per fold and session: sums of y, y y^T and their sample counts (first moment per neuron, second per pair).
        s1 = [[np.zeros(n) for n in sizes] for _ in range(2)]
        n1 = [[np.zeros(n) for n in sizes] for _ in range(2)]
        s2 = [[np.zeros((n, n)) for n in sizes] for _ in range(2)]
        n2 = [[np.zeros((n, n)) for n in sizes] for _ in range(2)]
        for batch in batches:
            folds = held_out(batch["trial_index"]).astype(int)
            for b in np.flatnonzero(batch["example_mask"]):
                k, f = int(batch["session_index"][b]), folds[b]
                slots = _real_slots(batch, b)
                local = batch["neuron_index"][b, slots] - self.layout.row_offsets[k]
                y = batch["responses"][b][:, slots].astype(np.float64)
                s1[f][k][local] += y.sum(0)
                n1[f][k][local] += len(y)
                s2[f][k][np.ix_(local, local)] += y.T @ y
                n2[f][k][np.ix_(local, local)] += len(y)
        rng = np.random.default_rng(self.seed)
        n_visible = strategy.n_visible_neurons
        self.cov, self.alpha = [], []
        for k, n in enumerate(sizes):
            offset = self.layout.row_offsets[k]
            mu = self.mean_rows[offset:offset + n]
            self.cov.append(_moment(s2[0][k] + s2[1][k], n2[0][k] + n2[1][k]) - np.outer(mu, mu))
            if n < 2 or not n1[0][k].any() or not n1[1][k].any():
                self.alpha.append(DEFAULT_ALPHA)
                continue
            mu_t = s1[0][k] / np.maximum(n1[0][k], 1)
            mu_v = s1[1][k] / np.maximum(n1[1][k], 1)
            cov_t = _moment(s2[0][k], n2[0][k]) - np.outer(mu_t, mu_t)
            # Held-out second moments about the training means: the error of a prediction made from those means.
            m_v = _moment(s2[1][k], n2[1][k]) - np.outer(mu_t, mu_v) - np.outer(mu_v, mu_t) + np.outer(mu_t, mu_t)
            size = min(n - 1, n_visible) if n_visible else n // 2
            splits = [rng.permutation(n) for _ in range(self.validation_splits)]
            errors = [sum(_split_error(cov_t, m_v, p[:size], p[size:], a) for p in splits) for a in ALPHAS]
            self.alpha.append(ALPHAS[int(np.argmin(errors))])
        return self

    def predict(self, batch, masks) -> dict[str, np.ndarray]:
        out = super().predict(batch, masks)
        rates = out["rates"].copy()
        visible = np.asarray(masks.response_visible, bool)
        target = np.asarray(masks.response_target, bool)
        for b in np.flatnonzero(batch["example_mask"]):
            k = int(batch["session_index"][b])
            slots = _real_slots(batch, b)
            t_target = np.flatnonzero(target[b][:, slots].any(1))
            if not len(t_target):
                continue
            # Samples that share a visible set share one regression.
            patterns, inverse = np.unique(visible[b][np.ix_(t_target, slots)], axis=0, return_inverse=True)
            for p, pattern in enumerate(patterns):
                ts = t_target[inverse.reshape(-1) == p]
                v_slots = slots[pattern]
                h_slots = slots[target[b][np.ix_(ts, slots)].any(0)]
                if not len(v_slots) or not len(h_slots):
                    continue
                rows_v, rows_h = batch["neuron_index"][b, v_slots], batch["neuron_index"][b, h_slots]
                w = self._weights(k, rows_v, rows_h)
                y_v = batch["responses"][b][np.ix_(ts, v_slots)] - self.mean_rows[rows_v]
                rates[b][np.ix_(ts, h_slots)] = np.maximum(self.mean_rows[rows_h] + y_v @ w, MIN_RATE)
        out["rates"] = rates
        return out

    def _weights(self, k: int, rows_v: np.ndarray, rows_h: np.ndarray) -> np.ndarray:
        offset = self.layout.row_offsets[k]
        v, h = rows_v - offset, rows_h - offset
        return _ridge_weights(self.cov[k], v, h, self.alpha[k])


def _moment(total: np.ndarray, count: np.ndarray) -> np.ndarray:
    return np.divide(total, count, out=np.zeros_like(total), where=count > 0)


def _ridge_weights(cov, v, h, alpha) -> np.ndarray:
    return ridge_solve(cov[np.ix_(v, v)], cov[np.ix_(v, h)], alpha)


def _split_error(cov_t, m_v, v, h, alpha) -> float:
    """Held-out squared error per sample of predicting h from v with weights fit on the training covariance."""
    w = _ridge_weights(cov_t, v, h, alpha)
    m_vv, m_vh = m_v[np.ix_(v, v)], m_v[np.ix_(v, h)]
    return float(np.trace(m_v[np.ix_(h, h)]) - 2 * np.sum(w * m_vh) + np.sum(w * (m_vv @ w)))


class RidgeAutoregression(MeanBaseline):
    """Forecasting by direct multi-horizon ridge regression, per session and horizon.

    The forecast origin is the last sample with visible responses. For horizon h (samples after the origin) the
    centered response of neuron n is predicted from its own last `lags` centered responses and the last `lags` values
    of the population mean of centered responses; coefficients are shared by the session's neurons, one set per h
    (a direct forecast: no roll-out, so errors do not compound). The horizons fit are those the strategy's target
    window needs; training pairs use every origin of each training window. One penalty per session, chosen by the
    held-out error summed over horizons.
    """

    def __init__(self, layout, lags: int = 5):
        super().__init__(layout)
        self.max_lags = self.lags = lags
        self.horizons: tuple[int, ...] = ()
        self.coef: list[dict[int, np.ndarray]] = []  # per session: horizon -> (2 * lags + 1,) coefficients
        self.alpha: list[float] = []

    def fit(self, train_batches, strategy) -> "RidgeAutoregression":
        batches = replayable(train_batches)
        super().fit(batches)
        T = next(iter(batches))["responses"].shape[1]
        visible, target = _strategy_windows(strategy, T)
        self.coef = [{} for _ in self.layout.names]
        self.alpha = [DEFAULT_ALPHA] * self.layout.num_sessions
        if not visible.any() or not target.any():
            return self
        origin = int(np.flatnonzero(visible)[-1])
        self.lags = min(self.max_lags, int(visible.sum()))
        self.horizons = tuple(int(t - origin) for t in np.flatnonzero(target) if t > origin
                              and t - origin <= T - self.lags)
        L = self.lags
        stats = [[{h: RidgeStats(2 * L, 1) for h in self.horizons} for _ in range(2)] for _ in self.layout.names]
        for batch in batches:
            folds = held_out(batch["trial_index"]).astype(int)
            for b in np.flatnonzero(batch["example_mask"]):
                slots = _real_slots(batch, b)
                z = self._centered(batch, b, slots)
                features = self._features(z, np.arange(L - 1, T))  # (origins, neurons, 2L)
                for h in self.horizons:
                    count = T - L + 1 - h  # origins t0 = L-1 .. T-1-h
                    stats[int(batch["session_index"][b])][folds[b]][h].add(
                        features[:count].reshape(-1, 2 * L), z[L - 1 + h:L - 1 + h + count].reshape(-1, 1))
        for k in range(self.layout.num_sessions):
            thetas, self.alpha[k] = fit_ridge([stats[k][0][h] for h in self.horizons],
                                              [stats[k][1][h] for h in self.horizons])
            self.coef[k] = {h: theta[:, 0] for h, theta in zip(self.horizons, thetas)}
        return self

    def _centered(self, batch, b, slots) -> np.ndarray:
        return batch["responses"][b][:, slots].astype(np.float64) - self.mean_rows[batch["neuron_index"][b, slots]]

    def _features(self, z_TxN: np.ndarray, origins: np.ndarray) -> np.ndarray:
        """(origins, neurons, 2 * lags): own lags 0..L-1 back from each origin, then population-mean lags."""
        own = np.stack([z_TxN[origins - lag] for lag in range(self.lags)], axis=-1)
        population = np.stack([z_TxN[origins - lag].mean(-1) for lag in range(self.lags)], axis=-1)
        return np.concatenate([own, np.broadcast_to(population[:, None, :], own.shape)], axis=-1)

    def predict(self, batch, masks) -> dict[str, np.ndarray]:
        out = super().predict(batch, masks)
        if not self.horizons:
            return out
        rates = out["rates"].copy()
        visible = np.asarray(masks.response_visible, bool)
        target = np.asarray(masks.response_target, bool)
        L = self.lags
        for b in np.flatnonzero(batch["example_mask"]):
            k = int(batch["session_index"][b])
            seen_t = np.flatnonzero(visible[b].any(1))
            if not len(seen_t) or seen_t[-1] < L - 1:
                continue
            origin = int(seen_t[-1])
            history = np.arange(origin - L + 1, origin + 1)
            slots = _real_slots(batch, b)
            slots = slots[visible[b][np.ix_(history, slots)].all(0)]  # neurons with a full visible history
            if not len(slots):
                continue
            features = self._features(self._centered(batch, b, slots), np.array([origin]))[0]
            mean = self.mean_rows[batch["neuron_index"][b, slots]]
            for t in np.flatnonzero(target[b][:, slots].any(1)):
                theta = self.coef[k].get(int(t - origin))
                if theta is not None:
                    hit = target[b, t, slots]
                    rates[b, t, slots[hit]] = np.maximum(mean[hit] + features[hit] @ theta[:-1] + theta[-1],
                                                         MIN_RATE)
        out["rates"] = rates
        return out


def _strategy_windows(strategy, T: int) -> tuple[np.ndarray, np.ndarray]:
    """(visible (T,), target (T,)) samples of the strategy for a neuron it shows and scores, per masking.make_masks."""
    masks = make_masks(strategy_arrays(strategy), np.ones((1, 1), bool), T)
    return np.asarray(masks.response_visible)[0, :, 0], np.asarray(masks.response_target)[0, :, 0]


class RidgeDecoder(MeanBaseline):
    """Responses -> behavior, per session: every behavior channel at sample t from all of the session's centered
    responses at t + lag for each lag in `lags` (block edges repeat the edge sample). Neurons absent from an example
    or not visible read as their mean (0 after centering). Sessions with more than max_features / len(lags) neurons
    are first reduced by a fixed seeded Gaussian random projection (Johnson-Lindenstrauss) to keep the regression
    small. One penalty per session, chosen on held-out trials."""

    def __init__(self, layout, lags=(-2, -1, 0, 1, 2), max_features: int = 4096, seed: int = 0):
        super().__init__(layout)
        self.lags = tuple(lags)
        self.projection = []
        for k, n in enumerate(layout.n_neurons):
            width = max_features // len(self.lags)
            rng = np.random.default_rng([seed, k])
            self.projection.append(None if n <= width else rng.normal(0, 1 / np.sqrt(width), (n, width)))
        self.coef: list[np.ndarray | None] = []
        self.alpha: list[float] = []

    def _design(self, batch, b, visible_TxN) -> np.ndarray:
        k = int(batch["session_index"][b])
        T = visible_TxN.shape[0]
        slots = _real_slots(batch, b)
        rows = batch["neuron_index"][b, slots]
        z = np.zeros((T, self.layout.n_neurons[k]))
        z[:, rows - self.layout.row_offsets[k]] = np.where(
            visible_TxN[:, slots], batch["responses"][b][:, slots] - self.mean_rows[rows], 0.0)
        if self.projection[k] is not None:
            z = z @ self.projection[k]
        return np.concatenate([z[np.clip(np.arange(T) + lag, 0, T - 1)] for lag in self.lags], axis=1)

    def fit(self, train_batches, strategy=None) -> "RidgeDecoder":
        batches = replayable(train_batches)
        super().fit(batches)
        C = self.num_channels
        stats = [[RidgeStats(len(self.lags) * (n if p is None else p.shape[1]), C) for n, p in
                  zip(self.layout.n_neurons, self.projection)] for _ in range(2)]
        for batch in batches:
            folds = held_out(batch["trial_index"]).astype(int)
            for b in np.flatnonzero(batch["example_mask"]):
                x = self._design(batch, b, np.ones(batch["responses"].shape[1:], bool))
                stats[folds[b]][int(batch["session_index"][b])].add(x, batch["behavior"][b])
        self.coef, self.alpha = [], []
        for k in range(self.layout.num_sessions):
            if stats[0][k].n + stats[1][k].n == 0:
                self.coef.append(None)
                self.alpha.append(DEFAULT_ALPHA)
                continue
            theta, alpha = fit_ridge(stats[0][k], stats[1][k])
            self.coef.append(theta)
            self.alpha.append(alpha)
        return self

    def predict(self, batch, masks) -> dict[str, np.ndarray]:
        out = super().predict(batch, masks)
        behavior = out["behavior"].copy()
        visible = np.asarray(masks.response_visible, bool)
        for b in np.flatnonzero(batch["example_mask"]):
            theta = self.coef[int(batch["session_index"][b])]
            if theta is not None and visible[b].any():
                behavior[b] = self._design(batch, b, visible[b]) @ theta[:-1] + theta[-1]
        out["behavior"] = behavior
        return out
