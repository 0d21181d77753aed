"""Attention kernels behind `attention.attend`: blockwise (pure JAX, memory-efficient), cuDNN (GPU) and splash
(Pallas, TPU), each computing softmax(q k^T / sqrt(K) + bias, over valid keys) v.

Shapes: B batch (all leading dimensions folded), Q queries, S keys, H heads, K head dim; key_valid (B, S) bool;
bias (B, Q, S), shared by the heads, or None.

The blockwise kernel is the memory-efficient attention of Rabe & Staats (2021) and FlashAttention-2 written in JAX:
queries in blocks of `block_q`, keys in blocks of `block_k`, an online softmax across key blocks, and a custom VJP
that keeps only the output and each row's log-sum-exp, recomputing each block's probabilities in the backward
pass. Logits never exist beyond one (block_q x block_k) tile per head, and a key block with no valid key in the
whole batch is skipped (`lax.cond`), in the forward and both backward passes.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.tpu.splash_attention import (splash_attention_kernel as splash_kernel,
                                                              splash_attention_mask as splash_mask)

# Masked logits: finite, so that a row whose keys are all masked so far stays finite; a later valid key's
# correction factor exp(NEG - m) is exactly 0 and wipes what the masked keys added.
NEG = -1e30
IMPLEMENTATIONS = ("auto", "xla", "blockwise", "cudnn", "splash")


def _blocks(n: int, block: int) -> tuple[int, int]:
    """(block size, padded length): the block shrinks to n when n is smaller."""
    size = min(block, n)
    return size, -(-n // size) * size


def _pad_axis(x: jax.Array, axis: int, length: int, value=0) -> jax.Array:
    if x.shape[axis] == length:
        return x
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, length - x.shape[axis])
    return jnp.pad(x, pad, constant_values=value)


def _split(x: jax.Array, axis: int, size: int) -> jax.Array:
    """Moves blocks of `size` along `axis` to a new leading axis: (..., n * size, ...) -> (n, ..., size, ...)."""
    shape = x.shape[:axis] + (x.shape[axis] // size, size) + x.shape[axis + 1:]
    return jnp.moveaxis(x.reshape(shape), axis, 0)


def _merge(x: jax.Array, axis: int) -> jax.Array:
    """The inverse of _split: (n, ..., size, ...) -> (..., n * size, ...), with `axis` counted without the n."""
    x = jnp.moveaxis(x, 0, axis)
    return x.reshape(x.shape[:axis] + (-1,) + x.shape[axis + 2:])


def _bias_tiles(bias_BxQxS, bq, q_len, bk, k_len) -> jax.Array:
    """(B, Q, S) -> padded tiles (nq, nk, B, bq, bk)."""
    b = bias_BxQxS.shape[0]
    padded = _pad_axis(_pad_axis(bias_BxQxS, 1, q_len), 2, k_len)
    return padded.reshape(b, q_len // bq, bq, k_len // bk, bk).transpose(1, 3, 0, 2, 4)


def _logits(q_BxQxHxK, k_BxSxHxK, valid_BxS, bias_BxQxS, scale):
    s = jnp.einsum("bqhd,bshd->bhqs", q_BxQxHxK, k_BxSxHxK, preferred_element_type=jnp.float32) * scale
    if bias_BxQxS is not None:
        s = s + bias_BxQxS[:, None].astype(jnp.float32)
    return jnp.where(valid_BxS[:, None, None, :], s, NEG)


def _forward(q, k, v, valid, bias, block_q, block_k):
    """Padded, blocked forward: output (B, Q, H, K) and log-sum-exp (B, H, Q)."""
    b, nq, h, dh = q.shape
    scale = 1.0 / np.sqrt(dh)
    bq, q_len = _blocks(nq, block_q)
    bk, k_len = _blocks(k.shape[1], block_k)
    q_blocks = _split(_pad_axis(q, 1, q_len), 1, bq)
    k_blocks = _split(_pad_axis(k, 1, k_len), 1, bk)
    v_blocks = _split(_pad_axis(v, 1, k_len), 1, bk)
    valid_blocks = _split(_pad_axis(valid, 1, k_len, False), 1, bk)
    bias_blocks = None if bias is None else _bias_tiles(bias, bq, q_len, bk, k_len)

    def one_query_block(args):
        qb, biasb = args

        def step(carry, xs):
            kb, vb, validb, bias_tile = xs

            def attend_block(carry):
                m, l, acc = carry
                s = _logits(qb, kb, validb, bias_tile, scale)
                m_new = jnp.maximum(m, s.max(-1))
                correction = jnp.exp(m - m_new)
                p = jnp.exp(s - m_new[..., None])
                acc = acc * correction[..., None] + jnp.einsum("bhqs,bshd->bhqd", p.astype(vb.dtype), vb,
                                                               preferred_element_type=jnp.float32)
                return m_new, l * correction + p.sum(-1), acc

            return jax.lax.cond(validb.any(), attend_block, lambda c: c, carry), None

        init = (jnp.full((b, h, bq), NEG, jnp.float32), jnp.zeros((b, h, bq), jnp.float32),
                jnp.zeros((b, h, bq, dh), jnp.float32))
        xs = (k_blocks, v_blocks, valid_blocks, biasb)
        (m, l, acc), _ = jax.lax.scan(step, init, xs)
        l = jnp.maximum(l, 1e-30)  # only a row whose every key block was skipped has l = 0
        return (acc / l[..., None]).transpose(0, 2, 1, 3), m + jnp.log(l)

    o_blocks, lse_blocks = jax.lax.map(one_query_block, (q_blocks, bias_blocks))
    return _merge(o_blocks, 1)[:, :nq].astype(q.dtype), _merge(lse_blocks, 2)[:, :, :nq]


def _backward(q, k, v, valid, bias, o, lse, do, block_q, block_k):
    """Gradients of q, k, v and bias by the FlashAttention-2 recurrences: one pass over query blocks for dq (and the
    bias), one over key blocks for dk and dv, each recomputing its tiles' probabilities from the log-sum-exp."""
    b, nq, h, dh = q.shape
    nk = k.shape[1]
    scale = 1.0 / np.sqrt(dh)
    bq, q_len = _blocks(nq, block_q)
    bk, k_len = _blocks(nk, block_k)
    delta = jnp.einsum("bqhd,bqhd->bhq", do.astype(jnp.float32), o.astype(jnp.float32))
    pad_q = lambda x, axis: _split(_pad_axis(x, axis, q_len), axis, bq)  # noqa: E731
    pad_k = lambda x, axis, value=0: _split(_pad_axis(x, axis, k_len, value), axis, bk)  # noqa: E731
    q_blocks, do_blocks = pad_q(q, 1), pad_q(do, 1)
    lse_blocks, delta_blocks = pad_q(lse, 2), pad_q(delta, 2)
    k_blocks, v_blocks, valid_blocks = pad_k(k, 1), pad_k(v, 1), pad_k(valid, 1, False)
    bias_qk = bias_kq = None
    if bias is not None:
        bias_qk = _bias_tiles(bias, bq, q_len, bk, k_len)
        bias_kq = jnp.swapaxes(bias_qk, 0, 1)

    def tile(qb, kb, vb, validb, bias_tile, dob, lseb, deltab):
        """Probabilities p and logit gradients ds (B, H, bq, bk) of one tile."""
        p = jnp.exp(_logits(qb, kb, validb, bias_tile, scale) - lseb[..., None])
        dp = jnp.einsum("bqhd,bshd->bhqs", dob, vb, preferred_element_type=jnp.float32)
        return p, p * (dp - deltab[..., None])

    def dq_of_query_block(args):
        qb, dob, lseb, deltab, biasb = args

        def step(dq, xs):
            kb, vb, validb, bias_tile = xs

            def add(dq):
                _, ds = tile(qb, kb, vb, validb, bias_tile, dob, lseb, deltab)
                dq = dq + jnp.einsum("bhqs,bshd->bqhd", ds, kb, preferred_element_type=jnp.float32) * scale
                return dq, None if bias is None else ds.sum(1)  # the bias is shared by the heads

            skip = lambda dq: (dq, None if bias is None else jnp.zeros((b, bq, bk), jnp.float32))  # noqa: E731
            return jax.lax.cond(validb.any(), add, skip, dq)

        xs = (k_blocks, v_blocks, valid_blocks, biasb)
        return jax.lax.scan(step, jnp.zeros((b, bq, h, dh), jnp.float32), xs)

    dq_blocks, dbias_blocks = jax.lax.map(dq_of_query_block, (q_blocks, do_blocks, lse_blocks, delta_blocks, bias_qk))

    def dkv_of_key_block(args):
        kb, vb, validb, biasb = args

        def step(carry, xs):
            qb, dob, lseb, deltab, bias_tile = xs

            def add(carry):
                dk, dv = carry
                p, ds = tile(qb, kb, vb, validb, bias_tile, dob, lseb, deltab)
                dv = dv + jnp.einsum("bhqs,bqhd->bshd", p, dob.astype(jnp.float32))
                dk = dk + jnp.einsum("bhqs,bqhd->bshd", ds, qb.astype(jnp.float32)) * scale
                return dk, dv

            return jax.lax.cond(validb.any(), add, lambda c: c, carry), None

        zeros = jnp.zeros((b, bk, h, dh), jnp.float32)
        (dk, dv), _ = jax.lax.scan(step, (zeros, zeros), (q_blocks, do_blocks, lse_blocks, delta_blocks, biasb))
        return dk, dv

    dk_blocks, dv_blocks = jax.lax.map(dkv_of_key_block, (k_blocks, v_blocks, valid_blocks, bias_kq))
    dq = _merge(dq_blocks, 1)[:, :nq].astype(q.dtype)
    dk = _merge(dk_blocks, 1)[:, :nk].astype(k.dtype)
    dv = _merge(dv_blocks, 1)[:, :nk].astype(v.dtype)
    dbias = None
    if bias is not None:  # (nq, nk, B, bq, bk) -> (B, Q, S)
        dbias = dbias_blocks.transpose(2, 0, 3, 1, 4).reshape(b, q_len, k_len)[:, :nq, :nk].astype(bias.dtype)
    return dq, dk, dv, dbias


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _blockwise(q, k, v, valid, bias, block_q, block_k):
    return _forward(q, k, v, valid, bias, block_q, block_k)[0]


def _blockwise_fwd(q, k, v, valid, bias, block_q, block_k):
    o, lse = _forward(q, k, v, valid, bias, block_q, block_k)
    return o, (q, k, v, valid, bias, o, lse)


def _blockwise_bwd(block_q, block_k, residuals, do):
    q, k, v, valid, bias, o, lse = residuals
    dq, dk, dv, dbias = _backward(q, k, v, valid, bias, o, lse, do, block_q, block_k)
    dvalid = np.zeros(valid.shape, jax.dtypes.float0)
    return dq, dk, dv, dvalid, dbias


_blockwise.defvjp(_blockwise_fwd, _blockwise_bwd)


def blockwise_attention(q_BxQxHxK, k_BxSxHxK, v_BxSxHxK, key_valid_BxS=None, bias_BxQxS=None, *,
                        block_q: int = 512, block_k: int = 512) -> jax.Array:
    """Memory-efficient attention (module docstring); (B, Q, H, K) out, in the dtype of q."""
    if key_valid_BxS is None:
        key_valid_BxS = jnp.ones(k_BxSxHxK.shape[:2], bool)
    return _blockwise(q_BxQxHxK, k_BxSxHxK, v_BxSxHxK, jnp.asarray(key_valid_BxS, bool), bias_BxQxS,
                      int(block_q), int(block_k))


def cudnn_supported(q_BxQxHxK, bias_BxQxS) -> bool:
    """Where the cuDNN kernel applies: a GPU, 16-bit inputs, a head dim that is a multiple of 8 up to 128 (cuDNN's
    fused kernels), and no bias (key validity is passed as sequence lengths, below, which a bias would not follow)."""
    return (jax.default_backend() == "gpu" and q_BxQxHxK.dtype in (jnp.bfloat16, jnp.float16)
            and q_BxQxHxK.shape[-1] % 8 == 0 and q_BxQxHxK.shape[-1] <= 128 and bias_BxQxS is None)


def valid_keys_first(k_BxSxHxK, v_BxSxHxK, key_valid_BxS):
    """Keys and values reordered so that each example's valid keys come first, and their count (B,) int32.

    Attention does not depend on the order of its keys (rotary time is already applied to them), so a per-key mask
    becomes a key length that fused kernels take without a (Q x S) mask."""
    order_BxS = jnp.argsort(~key_valid_BxS, axis=1, stable=True)
    take = lambda x: jnp.take_along_axis(x, order_BxS[:, :, None, None], axis=1)  # noqa: E731
    return take(k_BxSxHxK), take(v_BxSxHxK), key_valid_BxS.sum(1).astype(jnp.int32)


CUDNN_BLOCK = 128  # query and key lengths padded to a multiple: cuDNN refuses odd lengths with masks (the sink key)


def cudnn_attention(q, k, v, key_valid_BxS=None) -> jax.Array:
    """cuDNN's fused attention; padded keys are invalid and padded queries are dropped from the output."""
    num_q, num_k = q.shape[1], k.shape[1]
    q_len, k_len = (-(-n // CUDNN_BLOCK) * CUDNN_BLOCK for n in (num_q, num_k))
    valid = jnp.ones(k.shape[:2], bool) if key_valid_BxS is None else jnp.asarray(key_valid_BxS, bool)
    k, v, lengths = valid_keys_first(_pad_axis(k, 1, k_len), _pad_axis(v, 1, k_len), _pad_axis(valid, 1, k_len))
    out = jax.nn.dot_product_attention(_pad_axis(q, 1, q_len), k, v, key_value_seq_lengths=lengths,
                                       implementation="cudnn")
    return out[:, :num_q]


def splash_supported(bias_BxQxS) -> bool:
    """Splash attention (TPU Pallas) takes masks and segment ids, not a dense bias."""
    return jax.default_backend() == "tpu" and bias_BxQxS is None


SPLASH_BLOCK = 128  # splash attention's tiles and the TPU's lane width: lengths and head dims padded to a multiple


def splash_attention(q, k, v, key_valid_BxS=None, *, interpret: bool = False) -> jax.Array:
    """Pallas splash attention with key validity as segment ids (a query's segment 1 matches only valid keys);
    lengths and the head dim padded to SPLASH_BLOCK (zero channels add nothing to the logits and are dropped from the
    output). `interpret` runs the kernel in the Pallas interpreter (any backend, slow)."""
    b, nq, h, dh = q.shape
    nk = k.shape[1]
    q_len, k_len = (-(-n // SPLASH_BLOCK) * SPLASH_BLOCK for n in (nq, nk))
    valid = jnp.ones((b, nk), bool) if key_valid_BxS is None else jnp.asarray(key_valid_BxS, bool)
    q_segment = jnp.ones((b, q_len), jnp.int32)
    kv_segment = _pad_axis(valid.astype(jnp.int32), 1, k_len)
    mask = splash_mask.MultiHeadMask([splash_mask.FullMask((q_len, k_len)) for _ in range(h)])
    sizes = splash_kernel.BlockSizes(block_q=SPLASH_BLOCK, block_kv_compute=SPLASH_BLOCK, block_kv=SPLASH_BLOCK,
                              block_q_dkv=SPLASH_BLOCK, block_kv_dkv=SPLASH_BLOCK,
                              block_kv_dkv_compute=SPLASH_BLOCK, block_q_dq=SPLASH_BLOCK, block_kv_dq=SPLASH_BLOCK)
    kernel = splash_kernel.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)
    dh_len = -(-dh // SPLASH_BLOCK) * SPLASH_BLOCK
    heads_first = lambda x, length: jnp.swapaxes(_pad_axis(_pad_axis(x, 3, dh_len), 1, length), 1, 2)  # noqa: E731
    qh = heads_first(q * (1.0 / np.sqrt(dh)), q_len)
    kh, vh = heads_first(k, k_len), heads_first(v, k_len)
    one = lambda qx, kx, vx, qs, ks: kernel(qx, kx, vx, segment_ids=splash_kernel.SegmentIds(q=qs, kv=ks))  # noqa: E731
    out = jax.vmap(one)(qh, kh, vh, q_segment, kv_segment)
    return jnp.swapaxes(out, 1, 2)[:, :nq, :, :dh].astype(q.dtype)
