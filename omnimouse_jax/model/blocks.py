"""Pre-norm transformer blocks: RMSNorm, attention, SiLU-gated feed-forward."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from omnimouse_jax.model.attention import XLA, Attention, Kernel, attend, projection
from omnimouse_jax.parallel.sharding import partitioned


def rms_norm(dim: int, *, dtype, rngs: nnx.Rngs, axis_name: str = "embed") -> nnx.RMSNorm:
    """RMSNorm with fp32 scale named by its logical axis."""
    return nnx.RMSNorm(dim, dtype=dtype, param_dtype=jnp.float32,
                       scale_init=partitioned(nnx.initializers.ones_init(), axis_name), rngs=rngs)


def rematerialized(enabled: bool, fn):
    """`fn(module, *arrays)` recomputed in the backward pass instead of keeping its activations, or `fn` itself.
    For blocks without attention (ConvNeXt); TransformerBlock rematerializes around its attention (see there).

    jax.checkpoint over a closure on the module rather than nnx.remat: the training step differentiates a merged
    module inside jax.grad, where nnx.remat's own split and merge would update RNG counters across trace levels.
    The module is only read, so dropout (which draws from those counters) must be off (check_model_config)."""
    if not enabled:
        return fn
    return lambda module, *arrays: jax.checkpoint(lambda *xs: fn(module, *xs))(*arrays)


class FeedForward(nnx.Module):
    """SiLU-gated feed-forward: down(silu(gate(x)) * up(x)); hidden width mult * d rounded up to a multiple of 16
    so that it splits evenly over a tensor-parallel mesh axis."""

    def __init__(self, d_model: int, mult: float, *, dtype, rngs: nnx.Rngs):
        hidden = 16 * int(np.ceil(mult * d_model / 16))
        dense = functools.partial(projection, dtype=dtype, rngs=rngs)
        self.gate = dense(d_model, hidden, ("embed", "mlp"))
        self.up = dense(d_model, hidden, ("embed", "mlp"))
        self.down = dense(hidden, d_model, ("mlp", "embed"))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down(nnx.silu(self.gate(x)) * self.up(x))


class TransformerBlock(nnx.Module):
    """x + attn(norm(x) -> norm(kv)); then x + ffn(norm(x)). Self-attention unless `cross` is set.

    `__call__` covers dense patterns (every query sees every valid key). Blocks with other patterns (the
    backbone's local layers) use `queries`, `keys_values` and `finish` around their own attention.

    remat (config.model.remat="block"): `queries`, `keys_values` and `finish` are each recomputed in the backward
    pass, keeping only their inputs. The attention between them is left out of that recomputation: a fused kernel
    already keeps only its output and log-sum-exp, and jax.checkpoint around a custom-VJP kernel makes JAX keep the
    forward scan's per-block logits instead (measured: 3.5x the kernel's own memory); the XLA path is checkpointed
    on its own (attention.Kernel.checkpoint).
    """

    def __init__(self, d_model: int, num_heads: int, ffn_mult: float, omega: np.ndarray | None, *,
                 cross: bool = False, dropout: float = 0.0, kernel: Kernel = XLA, remat: bool = False, dtype,
                 rngs: nnx.Rngs):
        self.kernel = kernel  # static: how attention is computed (attention.Kernel)
        self.remat = remat  # static
        self.norm_q = rms_norm(d_model, dtype=dtype, rngs=rngs)
        self.norm_kv = rms_norm(d_model, dtype=dtype, rngs=rngs) if cross else None
        self.attn = Attention(d_model, num_heads, omega, dtype=dtype, rngs=rngs)
        self.norm_ffn = rms_norm(d_model, dtype=dtype, rngs=rngs)
        self.ffn = FeedForward(d_model, ffn_mult, dtype=dtype, rngs=rngs)
        self.drop = nnx.Dropout(dropout, rngs=rngs)

    def _run(self, fn, *arrays):
        return jax.checkpoint(fn)(*arrays) if self.remat else fn(*arrays)

    def queries(self, x: jax.Array, t_s=None) -> jax.Array:
        return self._run(lambda x: self.attn.queries(self.norm_q(x), t_s), x)

    def keys_values(self, x: jax.Array, t_s=None) -> tuple[jax.Array, jax.Array]:
        return self._run(lambda x: self.attn.keys_values((self.norm_kv or self.norm_q)(x), t_s), x)

    def finish(self, x: jax.Array, o: jax.Array, deterministic: bool = True) -> jax.Array:
        """Residual attention output o (..., Q, H, K) into x, then the feed-forward residual (dropout on both)."""
        def residuals(x, o):
            x = x + self.drop(self.attn.merge(o), deterministic=deterministic).astype(x.dtype)
            return x + self.drop(self.ffn(self.norm_ffn(x)), deterministic=deterministic).astype(x.dtype)

        return self._run(residuals, x, o)

    def __call__(self, x: jax.Array, t_s=None, kv: jax.Array | None = None, t_kv_s=None,
                 key_valid: jax.Array | None = None, deterministic: bool = True) -> jax.Array:
        if kv is None:
            kv, t_kv_s = x, t_s
        k, v = self.keys_values(kv, t_kv_s)
        return self.finish(x, attend(self.queries(x, t_s), k, v, key_valid, kernel=self.kernel),
                           deterministic)
