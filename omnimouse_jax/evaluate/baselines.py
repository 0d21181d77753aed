"""Trivial baselines and the pieces every baseline shares.

Every baseline has one interface: `fit(train_batches, strategy)` on pipeline training batches (dicts as documented in
data/pipeline.py), then `predict(batch, masks) -> {"rates": (B, T, N), "behavior": (B, T, C)}` in the batch's units
(responses scaled by each neuron's train-tier std, behavior standardized). `strategy` is the evaluation regime's
`MaskingStrategy`, for baselines whose features depend on it. Ridge and CNN baselines live in baselines_ridge.py and
baselines_cnn.py.

Ridge penalties are chosen by validation inside the training data: source trials with index % VALIDATION_EVERY ==
VALIDATION_EVERY - 1 form a held-out fold (windows never cross trials, so the folds share no sample); for each penalty
of a log grid the model is fit on the other trials and scored by its squared error on the held-out fold, computed in
closed form from the fold's sufficient statistics; the best penalty is then refit on all trials.
"""
from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np

from omnimouse_jax.data.schema import BEHAVIOR_CHANNELS

VALIDATION_EVERY = 5
# Penalties relative to the mean feature variance: lambda = alpha * trace(C_xx) / d.
ALPHAS = tuple(10.0 ** np.arange(-4, 3))
DEFAULT_ALPHA = 1.0  # used when a fold is empty
MIN_RATE = 1e-3  # linear predictions are clipped here so that they are valid Poisson rates


def held_out(trial_index) -> np.ndarray:
    """True for the source trials of the validation fold."""
    return np.asarray(trial_index) % VALIDATION_EVERY == VALIDATION_EVERY - 1


def replayable(batches: Iterable[Mapping[str, np.ndarray]]) -> Iterable[Mapping[str, np.ndarray]]:
    """`batches` if it can be iterated twice; a one-shot iterator is kept as a list, without its video."""
    if iter(batches) is batches:
        return [{k: v for k, v in b.items() if k != "video"} for b in batches]
    return batches


def ridge_solve(cxx: np.ndarray, cxy: np.ndarray, alpha: float) -> np.ndarray:
    """(cxx + lambda I)^-1 cxy for feature covariance cxx and feature-target covariance cxy, with lambda = alpha x the
    mean feature variance, so that one grid of alphas serves features of any scale."""
    d = len(cxx)
    trace = np.trace(cxx)
    scale = trace / d if d and trace > 0 else 1.0
    return np.linalg.solve(cxx + alpha * scale * np.eye(d), cxy)


class RidgeStats:
    """Sufficient statistics of a multi-output linear regression with an unpenalized intercept: sums of z z^T and
    z y^T for z = [x, 1], and of y^2, in float64."""

    def __init__(self, dx: int, dy: int):
        self.zz = np.zeros((dx + 1, dx + 1))
        self.zy = np.zeros((dx + 1, dy))
        self.yy = np.zeros(dy)

    @property
    def n(self) -> float:
        return self.zz[-1, -1]

    def add(self, x_SxD: np.ndarray, y_SxO: np.ndarray) -> None:
        z = np.concatenate([np.asarray(x_SxD, np.float64), np.ones((len(x_SxD), 1))], axis=1)
        y = np.asarray(y_SxO, np.float64)
        self.zz += z.T @ z
        self.zy += z.T @ y
        self.yy += (y * y).sum(0)

    def __add__(self, other: "RidgeStats") -> "RidgeStats":
        out = RidgeStats(self.zz.shape[0] - 1, self.zy.shape[1])
        out.zz, out.zy, out.yy = self.zz + other.zz, self.zy + other.zy, self.yy + other.yy
        return out

    def solve(self, alpha: float) -> np.ndarray:
        """Coefficients (D + 1, O), intercept last: ridge on centered data, lambda = alpha * mean feature variance."""
        n = max(self.n, 1.0)
        mx, my = self.zz[:-1, -1] / n, self.zy[-1] / n
        cxx = self.zz[:-1, :-1] / n - np.outer(mx, mx)
        cxy = self.zy[:-1] / n - np.outer(mx, my)
        w = ridge_solve(cxx, cxy, alpha)
        return np.vstack([w, my - mx @ w])

    def sse(self, theta: np.ndarray) -> float:
        """Squared error of predictions z @ theta summed over these statistics' samples and outputs."""
        return float(self.yy.sum() - 2 * np.sum(theta * self.zy) + np.sum(theta * (self.zz @ theta)))


def fit_ridge(train: RidgeStats | list[RidgeStats], held: RidgeStats | list[RidgeStats]):
    """(coefficients refit on both folds, chosen alpha). With lists, one alpha is shared by all problems, chosen by
    their summed held-out error, and a list of coefficients is returned."""
    single = isinstance(train, RidgeStats)
    train, held = ([train], [held]) if single else (train, held)
    if all(s.n > 0 for s in train) and any(s.n > 0 for s in held):
        errors = [sum(h.sse(t.solve(a)) for t, h in zip(train, held) if t.n > 0) for a in ALPHAS]
        alpha = ALPHAS[int(np.argmin(errors))]
    else:
        alpha = DEFAULT_ALPHA
    thetas = [(t + h).solve(alpha) for t, h in zip(train, held)]
    return (thetas[0] if single else thetas), alpha


class MeanBaseline:
    """Per-neuron mean response over the training batches, and the per-session mean of each behavior channel."""

    def __init__(self, layout):
        self.layout = layout
        self.mean_rows = np.zeros(layout.num_neuron_rows)
        self.behavior_mean = np.zeros((layout.num_sessions, len(BEHAVIOR_CHANNELS)))

    def fit(self, train_batches, strategy=None) -> "MeanBaseline":
        """One pass over the training batches."""
        rows = self.layout.num_neuron_rows
        total, count = np.zeros(rows), np.zeros(rows)
        b_total = np.zeros_like(self.behavior_mean)
        b_count = np.zeros_like(self.behavior_mean)
        for batch in train_batches:
            real = np.asarray(batch["neuron_mask"], bool) & np.asarray(batch["example_mask"], bool)[:, None]
            index = batch["neuron_index"][real]
            T = batch["responses"].shape[1]
            total += np.bincount(index, weights=batch["responses"].sum(1)[real], minlength=rows)
            count += T * np.bincount(index, minlength=rows)
            present = batch["behavior_mask"] & batch["example_mask"][:, None]
            np.add.at(b_total, batch["session_index"], batch["behavior"].sum(1) * present)
            np.add.at(b_count, batch["session_index"], T * present)
        seen = count > 0
        fallback = total[seen].sum() / count[seen].sum() if seen.any() else 0.0
        self.mean_rows = np.where(seen, total / np.maximum(count, 1), fallback)
        self.behavior_mean = np.divide(b_total, b_count, out=np.zeros_like(b_total), where=b_count > 0)
        return self

    def mean_rates(self, batch) -> np.ndarray:
        """The per-neuron means broadcast to (B, T, N)."""
        B, T, N = batch["responses"].shape
        return np.broadcast_to(self.mean_rows[batch["neuron_index"]][:, None, :], (B, T, N)).astype(np.float32)

    def predict(self, batch, masks) -> dict[str, np.ndarray]:
        B, T, _ = batch["responses"].shape
        behavior = np.broadcast_to(self.behavior_mean[batch["session_index"]][:, None, :], (B, T, self.num_channels))
        return {"rates": self.mean_rates(batch), "behavior": behavior.astype(np.float32)}

    @property
    def num_channels(self) -> int:
        return self.behavior_mean.shape[1]


class PersistenceBaseline(MeanBaseline):
    """Each neuron's last visible response carried forward in time; a neuron not yet visible predicts its mean."""

    def predict(self, batch, masks) -> dict[str, np.ndarray]:
        out = super().predict(batch, masks)
        visible = np.asarray(masks.response_visible, bool)
        T = visible.shape[1]
        last_BxTxN = np.maximum.accumulate(np.where(visible, np.arange(T)[None, :, None], -1), axis=1)
        carried = np.take_along_axis(batch["responses"], np.maximum(last_BxTxN, 0), axis=1)
        out["rates"] = np.where(last_BxTxN >= 0, carried, out["rates"]).astype(np.float32)
        return out
