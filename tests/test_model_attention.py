"""Attention primitives against numpy: time-binned local attention vs a dense band mask, and RoPE's relativity."""
import jax.numpy as jnp
import numpy as np

from omnimouse_jax.model.attention import apply_rope, local_attention, rope_frequencies


def numpy_attention(q, k, v, allowed):
    """q (Q, H, K), k/v (S, H, K), allowed (Q, S) -> (Q, H, K), softmax in float64."""
    logits = np.einsum("qhk,shk->hqs", q, k) / np.sqrt(q.shape[-1])
    logits = np.where(allowed[None], logits, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum("hqs,shk->qhk", weights, v)


def test_local_attention_equals_dense_band_mask():
    rng = np.random.default_rng(0)
    b, w, p, h, k, e, radius = 2, 6, 3, 2, 8, 2, 1
    q, kk, v = (rng.normal(size=(b, w, p, h, k)).astype(np.float32) for _ in range(3))
    ek, ev = (rng.normal(size=(b, e, h, k)).astype(np.float32) for _ in range(2))
    valid = rng.random((b, w, p)) > 0.3
    valid[:, :, 0] = True  # every bin keeps a key, as latents always are
    extra_valid = np.array([[True, False], [True, True]])

    out = np.asarray(local_attention(jnp.asarray(q), jnp.asarray(kk), jnp.asarray(v), jnp.asarray(valid), radius,
                                     jnp.asarray(ek), jnp.asarray(ev), jnp.asarray(extra_valid)))

    bins = np.repeat(np.arange(w), p)
    band = np.abs(bins[:, None] - bins[None, :]) <= radius  # (W*P, W*P) dense, as the model never builds it
    for i in range(b):
        allowed = np.concatenate([band & valid[i].reshape(-1)[None], np.broadcast_to(extra_valid[i], (w * p, e))], 1)
        ref = numpy_attention(q[i].reshape(w * p, h, k), np.concatenate([kk[i].reshape(w * p, h, k), ek[i]]),
                              np.concatenate([v[i].reshape(w * p, h, k), ev[i]]), allowed)
        np.testing.assert_allclose(out[i].reshape(w * p, h, k), ref, rtol=2e-5, atol=2e-5)


def test_local_attention_differs_from_full_attention():
    """The band matters: with a radius too small to cover the block the result is not full attention."""
    rng = np.random.default_rng(1)
    q, k, v = (rng.normal(size=(1, 4, 2, 1, 4)).astype(np.float32) for _ in range(3))
    valid = np.ones((1, 4, 2), bool)
    local = np.asarray(local_attention(q, k, v, valid, 0))
    full = numpy_attention(q[0].reshape(8, 1, 4), k[0].reshape(8, 1, 4), v[0].reshape(8, 1, 4), np.ones((8, 8), bool))
    assert np.abs(local[0].reshape(8, 1, 4) - full).max() > 1e-2
    wide = np.asarray(local_attention(q, k, v, valid, 3))
    np.testing.assert_allclose(wide[0].reshape(8, 1, 4), full, rtol=2e-5, atol=2e-5)


def test_rope_scores_depend_only_on_time_differences():
    rng = np.random.default_rng(2)
    omega = rope_frequencies(16, 2 / 30, 8.0)
    q = rng.normal(size=(1, 1, 16)).astype(np.float32)
    k = rng.normal(size=(1, 1, 16)).astype(np.float32)

    def score(tq, tk):
        rq = np.asarray(apply_rope(jnp.asarray(q), jnp.asarray([tq]), omega))
        rk = np.asarray(apply_rope(jnp.asarray(k), jnp.asarray([tk]), omega))
        return float((rq * rk).sum())

    base = score(0.30, 0.10)
    for shift in (0.5, 1.7, -0.2):
        np.testing.assert_allclose(score(0.30 + shift, 0.10 + shift), base, rtol=1e-4, atol=1e-4)
    assert abs(score(0.30, 0.20) - base) > 1e-3  # a different difference gives a different score
    np.testing.assert_allclose(score(0.0, 0.0), float((q * k).sum()), rtol=1e-5)  # no rotation at equal times
    # Rotation preserves each vector's norm.
    rotated = np.asarray(apply_rope(jnp.asarray(q), jnp.asarray([1.23]), omega))
    np.testing.assert_allclose(np.linalg.norm(rotated), np.linalg.norm(q), rtol=1e-5)


def test_rope_frequencies_span_the_requested_periods():
    omega = rope_frequencies(8, 0.1, 10.0)
    np.testing.assert_allclose(2 * np.pi / omega, [0.1, 10 ** (-1 / 3), 10 ** (1 / 3), 10.0], rtol=1e-5)
