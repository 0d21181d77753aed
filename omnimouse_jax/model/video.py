"""Hiera-like video encoder: 3D patch embedding, separable position embeddings, stages of mask-unit attention with
max-pooling of queries (and doubling of width and heads) between stages.

Attention inside the encoder stays within a mask unit (a small space-time window), as in Hiera's early stages;
mixing across the whole clip happens later, in the backbone. Hidden frames enter as zeros with a visibility
channel, so a hidden frame's pixels never reach any output.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from omnimouse_jax.model.blocks import TransformerBlock
from omnimouse_jax.train.sharding import partitioned


def conv_output_size(size: int, kernel: int, stride: int, pad: int) -> int:
    """Length along one axis after a strided convolution with symmetric padding."""
    return (size + 2 * pad - kernel) // stride + 1


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: hashed by identity, so nnx keeps it as static
class VideoGeometry:
    """Static layout of the encoder: token grid and mask unit per stage; for each output time step, the frame at
    its centre and which frames (T', T) lie under it."""

    grids: tuple
    units: tuple
    frame_centres: np.ndarray
    cover: np.ndarray


def video_geometry(video_cfg, num_frames: int, frame_shape) -> VideoGeometry:
    """Static shapes of the encoder per stage: token grid and mask-unit shape, plus per-token times in frames.

    Raises ValueError naming the field when a stage's grid is not divisible by its mask unit or pooling stride.
    """
    kernel, stride, pad = (tuple(video_cfg[k]) for k in ("patch_kernel", "patch_stride", "patch_padding"))
    grid = tuple(conv_output_size(s, k, st, p) for s, k, st, p in zip((num_frames, *frame_shape), kernel, stride, pad))
    if min(grid) < 1:
        raise ValueError(f"video.patch_kernel {kernel} is larger than the padded clip {(num_frames, *frame_shape)}")
    # Frame covered by the centre of each temporal patch (may lie in the padding at the clip's edges).
    centres = np.arange(grid[0]) * stride[0] - pad[0] + (kernel[0] - 1) / 2
    starts = np.arange(grid[0]) * stride[0] - pad[0]
    frames = np.arange(num_frames)[None, :]
    cover = (frames >= starts[:, None]) & (frames < starts[:, None] + kernel[0])
    unit = tuple(video_cfg.mask_unit)
    q_stride = tuple(video_cfg.q_stride)
    grids, units = [], []
    for stage in range(len(video_cfg.stages)):
        if stage > 0:
            if any(g % q for g, q in zip(grid, q_stride)):
                raise ValueError(f"video.q_stride {q_stride} does not divide the stage-{stage} token grid {grid}")
            grid = tuple(g // q for g, q in zip(grid, q_stride))
            unit = tuple(max(u // q, 1) for u, q in zip(unit, q_stride))
            centres = centres.reshape(-1, q_stride[0]).mean(1)
            cover = cover.reshape(-1, q_stride[0], num_frames).any(1)
        if any(g % u for g, u in zip(grid, unit)):
            raise ValueError(f"video.mask_unit {tuple(video_cfg.mask_unit)} does not tile the stage-{stage} token "
                             f"grid {grid} (the unit shrinks by video.q_stride at each stage)")
        grids.append(grid)
        units.append(unit)
    return VideoGeometry(tuple(grids), tuple(units), centres, cover)


def _to_units(x: jax.Array, unit) -> jax.Array:
    """(B, T, H, W, D) -> (B, nT, nH, nW, ut*uh*uw, D)."""
    b, t, h, w, d = x.shape
    ut, uh, uw = unit
    x = x.reshape(b, t // ut, ut, h // uh, uh, w // uw, uw, d)
    return x.transpose(0, 1, 3, 5, 2, 4, 6, 7).reshape(b, t // ut, h // uh, w // uw, ut * uh * uw, d)


def _from_units(x: jax.Array, unit) -> jax.Array:
    b, nt, nh, nw, _, d = x.shape
    ut, uh, uw = unit
    x = x.reshape(b, nt, nh, nw, ut, uh, uw, d).transpose(0, 1, 4, 2, 5, 3, 6, 7)
    return x.reshape(b, nt * ut, nh * uh, nw * uw, d)


def _unfold(x: jax.Array, axis: int, kernel: int, stride: int) -> jax.Array:
    """Windows of `kernel` samples every `stride` along `axis`, the offset within the window appended as a last axis."""
    out = (x.shape[axis] - kernel) // stride + 1
    if kernel == stride:  # non-overlapping windows: a reshape
        x = jax.lax.slice_in_dim(x, 0, out * kernel, axis=axis)
        x = x.reshape(x.shape[:axis] + (out, kernel) + x.shape[axis + 1:])
        return jnp.moveaxis(x, axis + 1, -1)
    limit = lambda i: i + stride * (out - 1) + 1  # noqa: E731
    return jnp.stack([jax.lax.slice_in_dim(x, i, limit(i), stride, axis) for i in range(kernel)], axis=-1)


def patch_embed(x_BxTxHxWxC: jax.Array, kernel: jax.Array, bias: jax.Array, stride, padding, impl: str) -> jax.Array:
    """The strided 3D patch convolution. impl "conv" calls XLA's convolution; "matmul" unfolds the patches (a reshape
    where windows do not overlap, one strided slice per offset where they do) and multiplies once: the same numbers
    to float rounding, 14x faster forward and backward on CPU, where XLA's convolution gradient is slow, but holding
    prod(kernel / stride) times the input, so "auto" takes it only on CPU."""
    if impl == "auto":
        impl = "matmul" if jax.default_backend() == "cpu" else "conv"
    if impl == "conv":
        return jax.lax.conv_general_dilated(x_BxTxHxWxC, kernel, tuple(stride), [(p, p) for p in padding],
                                            dimension_numbers=("NDHWC", "DHWIO", "NDHWC")) + bias
    if impl != "matmul":
        raise ValueError(f"video.patch_impl {impl!r}: expected 'auto', 'conv' or 'matmul'")
    x = jnp.pad(x_BxTxHxWxC, ((0, 0),) + tuple((p, p) for p in padding) + ((0, 0),))
    for axis in range(3):  # -> (B, T', H', W', C, kt, kh, kw)
        x = _unfold(x, axis + 1, kernel.shape[axis], stride[axis])
    weights = jnp.moveaxis(kernel, 3, 0).reshape(-1, kernel.shape[-1])  # (C, kt, kh, kw) rows, as the patches
    return x.reshape(x.shape[:4] + (-1,)) @ weights + bias


class VideoEncoder(nnx.Module):
    """Frames (B, T, H, W) normalized, visibility (B, T) -> tokens (B, T', S', D_last) and their visibility (B, T')."""

    def __init__(self, video_cfg, num_frames: int, frame_shape, *, dropout: float, dtype, rngs: nnx.Rngs):
        self.geometry = video_geometry(video_cfg, num_frames, frame_shape)
        grid0 = self.geometry.grids[0]
        dims = [video_cfg.embed_dim * 2**i for i in range(len(video_cfg.stages))]
        heads = [video_cfg.num_heads * 2**i for i in range(len(video_cfg.stages))]
        self.out_dim = dims[-1]
        self.q_stride = tuple(video_cfg.q_stride)
        self.patch_stride, self.patch_padding = tuple(video_cfg.patch_stride), tuple(video_cfg.patch_padding)
        self.patch_impl, self.dtype = video_cfg.get("patch_impl", "auto"), dtype
        self.patch = nnx.Conv(
            2, dims[0], tuple(video_cfg.patch_kernel), tuple(video_cfg.patch_stride),
            padding=[(p, p) for p in video_cfg.patch_padding], dtype=dtype, param_dtype=jnp.float32,
            kernel_init=partitioned(nnx.initializers.lecun_normal(), None, None, None, None, "embed"),
            bias_init=partitioned(nnx.initializers.zeros_init(), "embed"), rngs=rngs)
        normal = partitioned(nnx.initializers.normal(0.02), None, "embed")
        self.pos_time = nnx.Param(normal(rngs.params(), (grid0[0], dims[0])))
        self.pos_space = nnx.Param(normal(rngs.params(), (grid0[1] * grid0[2], dims[0])))
        self.widen = nnx.List([
            nnx.Linear(dims[i - 1], dims[i], use_bias=False, dtype=dtype, param_dtype=jnp.float32,
                       kernel_init=partitioned(nnx.initializers.lecun_normal(), "embed", "mlp"), rngs=rngs)
            for i in range(1, len(dims))])
        self.stages = nnx.List([
            nnx.List([TransformerBlock(dims[i], heads[i], video_cfg.mlp_ratio, None, dropout=dropout,
                                       dtype=dtype, rngs=rngs) for _ in range(depth)])
            for i, depth in enumerate(video_cfg.stages)])

    def __call__(self, frames_BxTxHxW: jax.Array, visible_BxT: jax.Array,
                 deterministic: bool = True) -> tuple[jax.Array, jax.Array]:
        vis = visible_BxT.astype(frames_BxTxHxW.dtype)[:, :, None, None]
        # Multiplying by the mask (rather than selecting) makes hidden frames contribute exactly zero gradient.
        x = jnp.stack([frames_BxTxHxW * vis, jnp.broadcast_to(vis, frames_BxTxHxW.shape)], axis=-1)
        dt = self.dtype or x.dtype
        x = patch_embed(x.astype(dt), self.patch.kernel[...].astype(dt), self.patch.bias[...].astype(dt),
                        self.patch_stride, self.patch_padding, self.patch_impl)
        b, t, h, w, d = x.shape
        x = x + self.pos_time[...][None, :, None, None] + self.pos_space[...].reshape(1, 1, h, w, d)
        for stage, blocks in enumerate(self.stages):
            if stage > 0:
                x = self.widen[stage - 1](x)
                b, t, h, w, d = x.shape
                qt, qh, qw = self.q_stride
                x = x.reshape(b, t // qt, qt, h // qh, qh, w // qw, qw, d).max(axis=(2, 4, 6))
            unit = self.geometry.units[stage]
            x = _to_units(x, unit)
            for block in blocks:
                x = block(x, deterministic=deterministic)
            x = _from_units(x, unit)
        b, t, h, w, d = x.shape
        cover = self.geometry.cover.astype(np.float32)
        token_visible = (visible_BxT.astype(jnp.float32) @ cover.T) > 0  # any visible frame under the patch
        return x.reshape(b, t, h * w, d), token_visible
