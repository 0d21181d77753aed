"""Posterior means of population factors that evolve in time: a Kalman filter and Rauch-Tung-Striebel smoother.

Model (per example): K independent stationary AR(1) factors, f_t = a * f_{t-1} + w_t, unit variance (so
w_t ~ N(0, 1 - a^2)); at each sample the visible neurons' deviations x_vt = l_v . f_t + e_vt with unit noise. The
observations enter only through their sufficient statistics per sample, L_t = sum_v l_v l_v^T and b_t = sum_v l_v x_vt
over the neurons visible at t, so a hidden response cannot reach the result. With a = 0 every sample stands alone and
the mean is the static factor model's (L_t + I)^-1 b_t; with a > 0 a factor seen before (or after) a sample carries
to it, decayed, which is what forecasting a neuron from the population's recent state needs.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def smoothed_factors(gram_BxTxKxK: jax.Array, projected_BxTxK: jax.Array, persistence_K: jax.Array) -> jax.Array:
    """(B, T, K) posterior means E[f_t | every visible sample], from L_t (gram), b_t (projected) and a (persistence,
    each in [0, 1))."""
    k = persistence_K.shape[0]
    eye = jnp.eye(k, dtype=gram_BxTxKxK.dtype)
    transition = persistence_K[:, None] * persistence_K[None, :]
    innovation = jnp.diag(1.0 - persistence_K**2)
    b = gram_BxTxKxK.shape[0]

    def filter_step(carry, observed):
        mean_pred_BxK, cov_pred_BxKxK = carry
        gram_BxKxK, projected_BxK = observed
        precision_pred = jnp.linalg.inv(cov_pred_BxKxK)
        cov_BxKxK = jnp.linalg.inv(precision_pred + gram_BxKxK)
        cov_BxKxK = 0.5 * (cov_BxKxK + jnp.swapaxes(cov_BxKxK, -1, -2))
        information = jnp.einsum("bkj,bj->bk", precision_pred, mean_pred_BxK) + projected_BxK
        mean_BxK = jnp.einsum("bkj,bj->bk", cov_BxKxK, information)
        next_mean = persistence_K * mean_BxK
        next_cov = transition * cov_BxKxK + innovation
        return (next_mean, next_cov), (mean_BxK, cov_BxKxK, next_mean, next_cov)

    start = (jnp.zeros((b, k), gram_BxTxKxK.dtype), jnp.broadcast_to(eye, (b, k, k)))
    observed = (jnp.moveaxis(gram_BxTxKxK, 1, 0), jnp.moveaxis(projected_BxTxK, 1, 0))
    _, (mean_TxBxK, cov_TxBxKxK, pred_mean_TxBxK, pred_cov_TxBxKxK) = jax.lax.scan(filter_step, start, observed)

    def smooth_step(later_smoothed_BxK, step):
        mean_BxK, cov_BxKxK, next_pred_mean_BxK, next_pred_cov_BxKxK = step
        # gain G = P_t A P_{t+1|t}^-1; P symmetric, so G^T = solve(P_{t+1|t}, A P_t).
        gain_T = jnp.linalg.solve(next_pred_cov_BxKxK, persistence_K[:, None] * cov_BxKxK)
        smoothed_BxK = mean_BxK + jnp.einsum("bjk,bj->bk", gain_T, later_smoothed_BxK - next_pred_mean_BxK)
        return smoothed_BxK, smoothed_BxK

    backward = (mean_TxBxK[:-1], cov_TxBxKxK[:-1], pred_mean_TxBxK[:-1], pred_cov_TxBxKxK[:-1])
    _, earlier_TxBxK = jax.lax.scan(smooth_step, mean_TxBxK[-1], backward, reverse=True)
    smoothed_TxBxK = jnp.concatenate([earlier_TxBxK, mean_TxBxK[-1:]], axis=0)
    return jnp.moveaxis(smoothed_TxBxK, 0, 1)
