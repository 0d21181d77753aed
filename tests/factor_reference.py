"""The posterior mean of AR(1) population factors by dense Gaussian conditioning (numpy), the reference that the
model's Kalman smoother and the factor readout are checked against."""
import numpy as np


def posterior_factor_means(loadings_NxK, deviations_TxN, visible_TxN, persistence_K) -> np.ndarray:
    """(T, K) E[f | the visible deviations], f_k a unit-variance AR(1) process with persistence a_k (covariance
    a_k^|t - s|), each visible x_tn = loadings_n . f_t + unit-variance noise; one example, float64."""
    t_len, k = deviations_TxN.shape[0], loadings_NxK.shape[1]
    lag_TxT = np.abs(np.arange(t_len)[:, None] - np.arange(t_len)[None, :])
    prior = np.zeros((t_len * k, t_len * k))
    for j, a in enumerate(np.asarray(persistence_K, np.float64)):
        prior[j::k, j::k] = np.where(lag_TxT == 0, 1.0, a ** np.maximum(lag_TxT, 1))
    times, neurons = np.nonzero(visible_TxN)
    design = np.zeros((len(times), t_len * k))
    for row, (t, n) in enumerate(zip(times, neurons)):
        design[row, t * k:(t + 1) * k] = loadings_NxK[n]
    observed = deviations_TxN[times, neurons]
    cov_obs = design @ prior @ design.T + np.eye(len(times))
    return (prior @ design.T @ np.linalg.solve(cov_obs, observed)).reshape(t_len, k)
