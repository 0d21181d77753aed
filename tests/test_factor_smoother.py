"""The Kalman smoother of model/factor_smoother.py against dense Gaussian conditioning."""
import jax.numpy as jnp
import numpy as np

from factor_reference import posterior_factor_means
from omnimouse_jax.model.factor_smoother import smoothed_factors


def _statistics(loadings_BxNxK, deviations_BxTxN, visible_BxTxN):
    gram = np.einsum("btn,bnk,bnj->btkj", visible_BxTxN, loadings_BxNxK, loadings_BxNxK)
    projected = np.einsum("btn,bnk->btk", np.where(visible_BxTxN, deviations_BxTxN, 0.0), loadings_BxNxK)
    return gram.astype(np.float32), projected.astype(np.float32)


def test_smoothed_factors_equal_the_dense_gaussian_posterior_mean():
    """Random loadings and visibility, a fully hidden suffix (a forecast) and one factor with no memory: the
    filter-smoother's means equal E[f | visible] from the joint covariance."""
    rng = np.random.default_rng(3)
    b, t, n, k = 3, 12, 6, 3
    persistence = np.array([0.0, 0.7, 0.97])
    loadings = rng.normal(size=(b, n, k)) * 0.8
    deviations = rng.normal(size=(b, t, n))
    visible = rng.random((b, t, n)) < 0.5
    visible[:, 8:] = False
    visible[1, 2] = False  # a hidden sample between visible ones
    got = np.asarray(smoothed_factors(*map(jnp.asarray, _statistics(loadings, deviations, visible)),
                                      jnp.asarray(persistence, jnp.float32)))
    for i in range(b):
        expected = posterior_factor_means(loadings[i], deviations[i], visible[i], persistence)
        np.testing.assert_allclose(got[i], expected, rtol=1e-4, atol=1e-5)
    forecast = got[:, 9:]  # past the last visible sample each factor decays by its persistence per sample
    np.testing.assert_allclose(forecast[:, 1:], forecast[:, :-1] * persistence.astype(np.float32), rtol=1e-5,
                               atol=1e-7)
    assert np.abs(forecast[:, :, 2]).min() > 1e-3 and np.all(forecast[:, :, 0] == 0.0)


def test_without_memory_each_sample_is_the_static_factor_estimate():
    """a = 0: f_t = (L_t + I)^-1 b_t at every sample, the static factor readout."""
    rng = np.random.default_rng(4)
    b, t, n, k = 2, 5, 7, 2
    loadings = rng.normal(size=(b, n, k))
    deviations = rng.normal(size=(b, t, n))
    visible = rng.random((b, t, n)) < 0.6
    gram, projected = _statistics(loadings, deviations, visible)
    got = np.asarray(smoothed_factors(jnp.asarray(gram), jnp.asarray(projected), jnp.zeros(k, jnp.float32)))
    expected = np.linalg.solve(gram.astype(np.float64) + np.eye(k), projected[..., None].astype(np.float64))[..., 0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
