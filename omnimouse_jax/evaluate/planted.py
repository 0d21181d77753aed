"""Which planted neuron properties a trained model has learned: on digital mice, how well a linear map from each
neuron's learned embedding predicts its ground-truth parameters (behavior gains, latent loadings, base rate).

    omnimouse planted --workdir W [--store S] [--out W/planted.json]

Per session and parameter: the cross-validated R^2 of a ridge regression from the neuron-table rows (plus an
intercept) to the parameter, over the session's neurons, in FOLDS random folds (the penalty chosen inside each
training fold). R^2 near 1: the embedding encodes the parameter linearly; near or below 0: it does not. Decoding a
behavior carried by zero-mean per-neuron gains (gaze, on digital mice) needs the embeddings to tell neurons of
opposite gain apart; docs/evaluation.md shows that this is necessary, not sufficient.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from omnimouse_jax.errors import UserError
from omnimouse_jax.evaluate.baselines import RidgeStats

# name -> how to read it from a ground-truth npz (one value per neuron)
PARAMETERS = {
    "gain_running": lambda gt: gt["gain_running"],
    "gain_pupil": lambda gt: gt["gain_pupil"],
    "gain_eye_x": lambda gt: gt["gain_eye"][:, 0],
    "gain_eye_y": lambda gt: gt["gain_eye"][:, 1],
    "loading_0": lambda gt: gt["loadings"][:, 0],
    "log_base_rate": lambda gt: np.log(gt["base"]),
}


ALPHAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)  # ridge penalties, relative to the number of training neurons
FOLDS = 5
MIN_NEURONS = 4 * FOLDS  # nested folds: the inner ones need a few neurons each


def _ridge_predict(x_train, y_train, x_test, alpha):
    """Ridge on z-scored features with an unpenalized intercept (penalty alpha per sample, z-scored features having
    unit mean variance)."""
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-12
    stats = RidgeStats(x_train.shape[1], 1)
    stats.add((x_train - mu) / sd, y_train[:, None])
    theta = stats.solve(alpha)
    return ((x_test - mu) / sd) @ theta[:-1, 0] + theta[-1, 0]


def _fold_ids(n, folds, rng):
    return rng.permutation(n) % folds


def cross_validated_r2(features_NxF: np.ndarray, target_N: np.ndarray, *, folds: int = FOLDS, seed: int = 0) -> float:
    """Out-of-fold R^2 of ridge regression of `target_N` on `features_NxF`; each outer fold picks its penalty from
    ALPHAS by an inner cross-validation on its own training neurons only, so the score is not tuned on the neurons
    it is measured on."""
    x = np.asarray(features_NxF, np.float64)
    y = np.asarray(target_N, np.float64)
    n = len(y)
    if n < 4 * folds:
        raise ValueError(f"cross_validated_r2: {n} neurons are too few for {folds} nested folds")
    rng = np.random.default_rng(seed)
    outer = _fold_ids(n, folds, rng)
    predictions = np.empty(n)
    for k in range(folds):
        xtr, ytr = x[outer != k], y[outer != k]
        inner = _fold_ids(len(ytr), folds, rng)
        errors = [sum(((_ridge_predict(xtr[inner != j], ytr[inner != j], xtr[inner == j], a) - ytr[inner == j]) ** 2
                       ).sum() for j in range(folds)) for a in ALPHAS]
        predictions[outer == k] = _ridge_predict(xtr, ytr, x[outer == k], ALPHAS[int(np.argmin(errors))])
    return float(1.0 - ((predictions - y) ** 2).sum() / ((y - y.mean()) ** 2).sum())


def planted_recovery(neuron_table_RxE: np.ndarray, layout, ground_truth_dir: Path) -> dict:
    """{session: {parameter: cross-validated R^2}} for every session of `layout` with a ground-truth file and at
    least MIN_NEURONS neurons."""
    results = {}
    found = False
    for k, name in enumerate(layout.names):
        path = Path(ground_truth_dir) / f"{name}.npz"
        found |= path.is_file()
        if not path.is_file() or layout.n_neurons[k] < MIN_NEURONS:
            continue
        with np.load(path) as gt:
            rows = neuron_table_RxE[layout.row_offsets[k]: layout.row_offsets[k] + layout.n_neurons[k]]
            results[name] = {key: cross_validated_r2(rows, read(gt)) for key, read in PARAMETERS.items()}
    if not found:
        raise UserError(f"{ground_truth_dir}: no ground-truth file for any of the sessions {list(layout.names)}; "
                        "planted parameters exist only for digital mice (omnimouse data synth)")
    return results
