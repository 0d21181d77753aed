"""Every attention kernel against a float64 numpy softmax, in values and gradients: key masks with rows that keep
only the sink, a dense bias, block sizes that do not divide the lengths, and whole key blocks masked (skipped)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from omnimouse_jax.model import kernels
from omnimouse_jax.model.attention import Kernel, attend, local_attention


def numpy_attention(q, k, v, valid, bias):
    """q (B, Q, H, K), k/v (B, S, H, K), valid (B, S), bias (B, Q, S) or None -> (B, Q, H, K) in float64."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    logits = np.einsum("bqhd,bshd->bhqs", q, k) / np.sqrt(q.shape[-1])
    if bias is not None:
        logits = logits + np.asarray(bias, np.float64)[:, None]
    logits = np.where(valid[:, None, None], logits, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    return np.einsum("bhqs,bshd->bqhd", weights / weights.sum(-1, keepdims=True), v)


def numpy_gradients(q, k, v, valid, bias, cotangent):
    """Closed-form gradients of sum(cotangent * attention) w.r.t. q, k, v and bias (float64)."""
    q, k, v, g = (np.asarray(a, np.float64) for a in (q, k, v, cotangent))
    scale = 1 / np.sqrt(q.shape[-1])
    logits = np.einsum("bqhd,bshd->bhqs", q, k) * scale
    if bias is not None:
        logits = logits + np.asarray(bias, np.float64)[:, None]
    logits = np.where(valid[:, None, None], logits, -np.inf)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    dp = np.einsum("bqhd,bshd->bhqs", g, v)
    ds = p * (dp - (dp * p).sum(-1, keepdims=True))
    return (np.einsum("bhqs,bshd->bqhd", ds, k) * scale, np.einsum("bhqs,bqhd->bshd", ds, q) * scale,
            np.einsum("bhqs,bqhd->bshd", p, g), ds.sum(1))


def case(seed=0, b=2, nq=37, ns=53, h=3, dh=8, bias=True):
    rng = np.random.default_rng(seed)
    q, k, v = (rng.normal(size=(b, n, h, dh)).astype(np.float32) for n in (nq, ns, ns))
    valid = rng.random((b, ns)) < 0.6
    valid[:, 8:32] = False  # whole 8-key blocks masked in both examples: skipped by the blockwise kernel
    valid[1, :-1] = False  # example 1 keeps only its last key, a sink
    valid[:, -1] = True
    bias_BxQxS = rng.normal(size=(b, nq, ns)).astype(np.float32) if bias else None
    cotangent = rng.normal(size=(b, nq, h, dh)).astype(np.float32)
    return q, k, v, valid, bias_BxQxS, cotangent


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("blocks", [(8, 8), (16, 5), (512, 512)])
def test_blockwise_equals_dense_in_values_and_gradients(with_bias, blocks):
    q, k, v, valid, bias, g = case(bias=with_bias)
    block_q, block_k = blocks

    def f(q, k, v, bias):
        out = kernels.blockwise_attention(q, k, v, jnp.asarray(valid), bias, block_q=block_q, block_k=block_k)
        return (out * g).sum(), out

    args = (q, k, v, bias)
    (_, out), grads = jax.value_and_grad(f, argnums=(0, 1, 2, 3) if with_bias else (0, 1, 2), has_aux=True)(*args)
    np.testing.assert_allclose(out, numpy_attention(q, k, v, valid, bias), rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, numpy_gradients(q, k, v, valid, bias, g)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_kernel_checkpoint_and_xla_agree_through_attend_with_leading_dimensions():
    """attend folds leading dims and broadcasts masks for every kernel: (B, W, Q, H, K) with per-bin masks."""
    rng = np.random.default_rng(3)
    q, k, v = (rng.normal(size=(2, 3, n, 2, 8)).astype(np.float32) for n in (5, 7, 7))
    valid = rng.random((2, 3, 7)) < 0.5
    valid[..., 0] = True
    ref = numpy_attention(q.reshape(6, 5, 2, 8), k.reshape(6, 7, 2, 8), v.reshape(6, 7, 2, 8),
                          valid.reshape(6, 7), None).reshape(q.shape)
    for kernel in (Kernel("xla"), Kernel("blockwise"), Kernel("blockwise", checkpoint=True), Kernel("auto")):
        out = attend(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(valid), kernel=kernel)
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5, err_msg=str(kernel))


def test_local_attention_with_global_keys_and_bias_matches_between_kernels():
    """The decoder's pattern: bins of keys within a radius plus shared global keys, with a logit bias."""
    rng = np.random.default_rng(4)
    b, w, p, h, dh, e, radius, nq = 2, 4, 3, 2, 8, 2, 1, 5
    q = jnp.asarray(rng.normal(size=(b, w, nq, h, dh)), jnp.float32)
    k, v = (jnp.asarray(rng.normal(size=(b, w, p, h, dh)), jnp.float32) for _ in range(2))
    ek, ev = (jnp.asarray(rng.normal(size=(b, e, h, dh)), jnp.float32) for _ in range(2))
    valid = jnp.asarray(rng.random((b, w, p)) < 0.5)
    extra_valid = jnp.ones((b, e), bool)
    bias = jnp.asarray(rng.normal(size=(b, w, nq, (2 * radius + 1) * p + e)), jnp.float32)

    def loss(kernel, q, k, v, bias):
        return (local_attention(q, k, v, valid, radius, ek, ev, extra_valid, bias, kernel) ** 2).sum()

    want = jax.grad(loss, argnums=(1, 2, 3, 4))(Kernel("xla"), q, k, v, bias)
    got = jax.grad(loss, argnums=(1, 2, 3, 4))(Kernel("blockwise"), q, k, v, bias)
    for a, b_ in zip(got, want):
        np.testing.assert_allclose(a, b_, rtol=1e-5, atol=1e-5)


def test_valid_keys_first_keeps_attention_and_counts_keys():
    q, k, v, valid, _, _ = case(bias=False)
    k2, v2, lengths = kernels.valid_keys_first(jnp.asarray(k), jnp.asarray(v), jnp.asarray(valid))
    np.testing.assert_array_equal(lengths, valid.sum(1))
    prefix = np.arange(k.shape[1])[None] < np.asarray(lengths)[:, None]
    np.testing.assert_allclose(numpy_attention(q, k2, v2, prefix, None), numpy_attention(q, k, v, valid, None),
                               rtol=1e-6, atol=1e-6)


def test_splash_kernel_in_the_pallas_interpreter_equals_dense():
    """The TPU kernel's arithmetic (segment ids for key validity, padding of lengths and head dim), run by the
    Pallas interpreter on CPU."""
    q, k, v, valid, _, g = case(nq=20, ns=30, h=2, bias=False)

    def f(q, k, v):
        return (kernels.splash_attention(q, k, v, jnp.asarray(valid), interpret=True) * g).sum()

    out = kernels.splash_attention(q, k, v, jnp.asarray(valid), interpret=True)
    np.testing.assert_allclose(out, numpy_attention(q, k, v, valid, None), rtol=1e-5, atol=1e-5)
    for got, want in zip(jax.grad(f, argnums=(0, 1, 2))(q, k, v), numpy_gradients(q, k, v, valid, None, g)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs a GPU")
def test_cudnn_kernel_equals_dense_on_gpu():
    q, k, v, valid, _, _ = case(dh=64, bias=False)
    out = kernels.cudnn_attention(*(jnp.asarray(a, jnp.bfloat16) for a in (q, k, v)), jnp.asarray(valid))
    np.testing.assert_allclose(np.asarray(out, np.float32), numpy_attention(q, k, v, valid, None), atol=2e-2)


def test_cudnn_wrapper_pads_odd_lengths_and_keeps_only_valid_keys(monkeypatch):
    """The padding and key reordering around cuDNN, checked on CPU with XLA's attention in cuDNN's place: odd query
    and key lengths (cuDNN refuses them with masks), rows that keep only the sink, values and gradients."""
    xla_attention = jax.nn.dot_product_attention

    def stand_in(q, k, v, *, key_value_seq_lengths, implementation):
        assert implementation == "cudnn" and q.shape[1] % kernels.CUDNN_BLOCK == 0
        assert k.shape[1] % kernels.CUDNN_BLOCK == 0
        return xla_attention(q, k, v, key_value_seq_lengths=key_value_seq_lengths)

    monkeypatch.setattr(kernels.jax.nn, "dot_product_attention", stand_in)
    q, k, v, valid, _, g = case(bias=False)
    f = lambda q, k, v: (kernels.cudnn_attention(q, k, v, jnp.asarray(valid)) * g).sum()  # noqa: E731
    out = kernels.cudnn_attention(q, k, v, jnp.asarray(valid))
    np.testing.assert_allclose(out, numpy_attention(q, k, v, valid, None), rtol=1e-5, atol=1e-5)
    for got, want in zip(jax.grad(f, argnums=(0, 1, 2))(q, k, v), numpy_gradients(q, k, v, valid, None, g)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_auto_resolves_per_backend_and_falls_back_where_a_kernel_cannot_take_the_inputs():
    q32 = jnp.zeros((1, 4, 2, 8), jnp.float32)
    assert Kernel("auto").resolve(q32, None) == "blockwise"  # this CPU backend
    assert Kernel("cudnn").resolve(q32, None) == "blockwise"  # float32 (and no GPU)
    assert Kernel("splash").resolve(q32, jnp.zeros((1, 4, 4))) == "blockwise"  # a bias
    assert Kernel("xla").resolve(q32, None) == "xla"
