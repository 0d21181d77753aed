"""Attention: rotary time embedding (in seconds), key-masked attention, time-binned local attention, and the
multi-head projection module with QK-norm.

Shapes: B batch, Q queries, S keys, H heads, K head dim, W time bins, P tokens per bin, E extra (global) keys.
Masks are only ever per key (B, S): a local window is realised by gathering neighbour bins, never by a dense
(tokens x tokens) mask.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from omnimouse_jax.model import kernels
from omnimouse_jax.parallel.sharding import partitioned


def rope_frequencies(head_dim: int, min_period_s: float, max_period_s: float) -> np.ndarray:
    """Angular frequencies (rad/s), geometric from 2 pi / min_period to 2 pi / max_period, one per channel pair."""
    periods = np.geomspace(min_period_s, max_period_s, head_dim // 2)
    return (2.0 * np.pi / periods).astype(np.float32)


def apply_rope(x: jax.Array, t_s: jax.Array, omega: jax.Array) -> jax.Array:
    """Rotates channel pairs (i, i + K/2) of x (..., S, H, K) by angle omega * t, with t (..., S) in seconds.

    The dot product of two rotated vectors then depends on their times only through the difference.
    """
    angle = jnp.asarray(t_s, jnp.float32)[..., None] * omega  # (..., S, K/2)
    cos = jnp.cos(angle)[..., None, :].astype(x.dtype)
    sin = jnp.sin(angle)[..., None, :].astype(x.dtype)
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


@dataclasses.dataclass(frozen=True)
class Kernel:
    """How `attend` computes attention (config.model.attention and config.model.remat; kernels.py).

    implementation: xla (jax.nn.dot_product_attention's XLA path: logits materialized), blockwise (kernels.py),
    cudnn (GPU), splash (TPU), auto (cudnn on GPU, splash on TPU, blockwise elsewhere; a site whose inputs the
    chosen kernel cannot take, such as a bias for splash or float32 for cuDNN, uses blockwise). checkpoint: recompute
    the XLA path's attention in the backward pass instead of keeping its logits (remat="attention" or "block"); the
    fused kernels keep only their output and log-sum-exp already, and are never wrapped in jax.checkpoint (that
    would make JAX keep their forward pass's per-block logits)."""

    implementation: str = "xla"
    checkpoint: bool = False

    def resolve(self, q: jax.Array, bias: jax.Array | None) -> str:
        impl = self.implementation
        if impl == "auto":
            impl = {"gpu": "cudnn", "tpu": "splash"}.get(jax.default_backend(), "blockwise")
        if impl == "cudnn" and not kernels.cudnn_supported(q, bias):
            return "blockwise"
        if impl == "splash" and not kernels.splash_supported(bias):
            return "blockwise"
        return impl


XLA = Kernel()


def attend(q: jax.Array, k: jax.Array, v: jax.Array, key_valid: jax.Array | None = None,
           bias: jax.Array | None = None, kernel: Kernel = XLA) -> jax.Array:
    """Softmax attention of q (..., Q, H, K) over k, v (..., S, H, K); key_valid (..., S) drops keys; bias
    (..., Q, S), shared by the heads, is added to the logits.

    Leading dimensions are folded into one batch dimension. Every query must have at least one valid key (callers
    add an always-valid sink key where a row could be empty): the kernels differ only on rows without one.
    """
    lead = q.shape[:-3]
    num_q, num_k = q.shape[-3], k.shape[-3]
    fold = lambda a: a.reshape((-1,) + a.shape[len(lead):])  # noqa: E731
    valid = None if key_valid is None else jnp.broadcast_to(key_valid, lead + (num_k,)).reshape(-1, num_k)
    if bias is not None:
        bias = jnp.broadcast_to(bias, lead + (num_q, num_k)).reshape(-1, num_q, num_k).astype(q.dtype)
    impl = kernel.resolve(q, bias)

    def compute(q, k, v, valid, bias):
        if impl == "blockwise":
            return kernels.blockwise_attention(q, k, v, valid, bias)
        if impl == "cudnn":
            return kernels.cudnn_attention(q, k, v, valid)
        if impl == "splash":
            return kernels.splash_attention(q, k, v, valid)
        mask = None if valid is None else valid[:, None, None, :]
        return jax.nn.dot_product_attention(q, k, v, bias=None if bias is None else bias[:, None], mask=mask)

    if kernel.checkpoint and impl == "xla":
        compute = jax.checkpoint(compute)
    return compute(fold(q), fold(k), fold(v), valid, bias).reshape(q.shape)


def neighbour_bins(x: jax.Array, radius: int, fill) -> jax.Array:
    """(B, W, P, ...) -> (B, W, (2 radius + 1) P, ...): for each bin, the tokens of bins w - radius .. w + radius,
    with bins beyond the edges filled by `fill`."""
    pad = [(0, 0)] * x.ndim
    pad[1] = (radius, radius)
    padded = jnp.pad(x, pad, constant_values=fill)
    width = x.shape[1]
    windows = [padded[:, offset : offset + width] for offset in range(2 * radius + 1)]
    return jnp.concatenate(windows, axis=2)


def local_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    valid: jax.Array,
    radius: int,
    extra_k: jax.Array | None = None,
    extra_v: jax.Array | None = None,
    extra_valid: jax.Array | None = None,
    bias: jax.Array | None = None,
    kernel: Kernel = XLA,
) -> jax.Array:
    """Sliding-window attention in time over binned tokens.

    q (B, W, Q, H, K); k, v: (B, W, P, H, K); valid (B, W, P). A query in bin w sees the valid keys of bins
    |w' - w| <= radius, plus every valid extra key (B, E, H, K) (global tokens), which all bins share. bias
    (B, W, Q, (2 radius + 1) P + E), in that key order, is added to the logits. Returns (B, W, Q, H, K).
    """
    k_loc = neighbour_bins(k, radius, 0)
    v_loc = neighbour_bins(v, radius, 0)
    valid_loc = neighbour_bins(valid, radius, False)
    if extra_k is not None:
        width = q.shape[1]
        widen = lambda a: jnp.broadcast_to(a[:, None], (a.shape[0], width) + a.shape[1:])  # noqa: E731
        k_loc = jnp.concatenate([k_loc, widen(extra_k)], axis=2)
        v_loc = jnp.concatenate([v_loc, widen(extra_v)], axis=2)
        valid_loc = jnp.concatenate([valid_loc, widen(extra_valid)], axis=2)
    return attend(q, k_loc, v_loc, valid_loc, bias, kernel)


def projection(d_in: int, d_out: int, axes: tuple[str, str], *, dtype, rngs: nnx.Rngs) -> nnx.Linear:
    """A bias-free linear map with float32 parameters, computed in `dtype`, its kernel sharded over `axes`."""
    return nnx.Linear(d_in, d_out, use_bias=False, dtype=dtype, param_dtype=jnp.float32,
                      kernel_init=partitioned(nnx.initializers.lecun_normal(), *axes), rngs=rngs)


class Attention(nnx.Module):
    """Multi-head projections with QK RMSNorm and rotary time; the attention pattern is left to the caller."""

    def __init__(self, d_model: int, num_heads: int, omega: np.ndarray | None, *, dtype, rngs: nnx.Rngs):
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.omega = None if omega is None else tuple(float(w) for w in omega)  # static, not state
        dense = functools.partial(projection, dtype=dtype, rngs=rngs)
        self.query = dense(d_model, d_model, ("embed", "heads"))
        self.key = dense(d_model, d_model, ("embed", "heads"))
        self.value = dense(d_model, d_model, ("embed", "heads"))
        self.out = dense(d_model, d_model, ("heads", "embed"))
        norm = lambda: nnx.RMSNorm(  # noqa: E731
            self.head_dim, dtype=dtype, param_dtype=jnp.float32,
            scale_init=partitioned(nnx.initializers.ones_init(), "kv"), rngs=rngs)
        self.query_norm = norm()
        self.key_norm = norm()

    def _heads(self, x: jax.Array) -> jax.Array:
        return x.reshape(x.shape[:-1] + (self.num_heads, self.head_dim))

    def _rotate(self, x: jax.Array, t_s: jax.Array | None) -> jax.Array:
        return x if self.omega is None else apply_rope(x, t_s, np.asarray(self.omega, np.float32))

    def queries(self, x: jax.Array, t_s: jax.Array | None = None) -> jax.Array:
        """(..., Q, D) -> normed, rotated (..., Q, H, K)."""
        return self._rotate(self.query_norm(self._heads(self.query(x))), t_s)

    def keys_values(self, x: jax.Array, t_s: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """(..., S, D) -> normed, rotated keys and values (..., S, H, K)."""
        return self._rotate(self.key_norm(self._heads(self.key(x))), t_s), self._heads(self.value(x))

    def merge(self, o: jax.Array) -> jax.Array:
        """(..., Q, H, K) -> (..., Q, D)."""
        return self.out(o.reshape(o.shape[:-2] + (-1,)))
