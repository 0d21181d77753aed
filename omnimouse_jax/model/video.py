"""Video encoder: 3D patch embedding, then stages of Hiera-like mask-unit attention (the paper's encoder) or of
ConvNeXt V2 blocks on each frame's token grid (the official code's alternative encoder), with the width doubled and
the grid pooled by q_stride between stages.

Hiera's attention stays within a mask unit (a small space-time window), as in its early stages; ConvNeXt mixes
space only, within its 7 x 7 depthwise kernel. Mixing across the whole clip happens later, in the backbone. Hidden
frames enter as zeros with a visibility channel, so a hidden frame's pixels never reach any output.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from omnimouse_jax.model.attention import XLA, Kernel
from omnimouse_jax.model.blocks import TransformerBlock, rematerialized
from omnimouse_jax.parallel.sharding import partitioned

# hiera: mask-unit attention blocks (the paper's encoder); convnext: ConvNeXt V2 blocks on each frame's token grid (the
# official code's alternative encoder, convnextv2_encoder.py): a depthwise spatial convolution, then a GRN-gated MLP.
ENCODERS = ("hiera", "convnext")
CONVNEXT_KERNEL = 7


def conv_output_size(size: int, kernel: int, stride: int, pad: int) -> int:
    """Length along one axis after a strided convolution with symmetric padding."""
    return (size + 2 * pad - kernel) // stride + 1


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: hashed by identity, so nnx keeps it as static
class VideoGeometry:
    """Static layout of the encoder: token grid and mask unit per stage; for each stage's time steps, the frame at
    their centre and which frames (T', T) lie under them (frame_centres and cover: the last stage's)."""

    grids: tuple
    units: tuple
    stage_frame_centres: tuple
    stage_covers: tuple

    @property
    def frame_centres(self) -> np.ndarray:
        return self.stage_frame_centres[-1]

    @property
    def cover(self) -> np.ndarray:
        return self.stage_covers[-1]


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
    grids, units, stage_centres, stage_covers = [], [], [], []
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
        stage_centres.append(centres)
        stage_covers.append(cover)
    return VideoGeometry(tuple(grids), tuple(units), tuple(stage_centres), tuple(stage_covers))


def pool_tokens(x_BxTxHxWxD: jax.Array, q_stride, mode: str) -> jax.Array:
    """Each (qt, qh, qw) block of tokens -> one token: "max" takes the channel-wise maximum (B, T', H', W', D);
    "concat" stacks the block's tokens along channels in (t, h, w) order (B, T', H', W', qt * qh * qw * D)."""
    b, t, h, w, d = x_BxTxHxWxD.shape
    qt, qh, qw = q_stride
    x = x_BxTxHxWxD.reshape(b, t // qt, qt, h // qh, qh, w // qw, qw, d)
    if mode == "max":
        return x.max(axis=(2, 4, 6))
    return x.transpose(0, 1, 3, 5, 2, 4, 6, 7).reshape(b, t // qt, h // qh, w // qw, qt * qh * qw * d)


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


def layer_norm(dim: int, *, dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """ConvNeXt's LayerNorm (eps 1e-6) with fp32 parameters named by their logical axis."""
    return nnx.LayerNorm(dim, epsilon=1e-6, dtype=dtype, param_dtype=jnp.float32,
                         scale_init=partitioned(nnx.initializers.ones_init(), "embed"),
                         bias_init=partitioned(nnx.initializers.zeros_init(), "embed"), rngs=rngs)


class GlobalResponseNorm(nnx.Module):
    """ConvNeXt V2's GRN on (N, H, W, C): each channel's spatial L2 norm over the channels' mean norm gates the
    channel; zero-initialized gamma and beta make it the identity at init."""

    def __init__(self, dim: int):
        self.gamma = nnx.Param(partitioned(nnx.initializers.zeros_init(), "mlp")(None, (dim,)))
        self.beta = nnx.Param(partitioned(nnx.initializers.zeros_init(), "mlp")(None, (dim,)))

    def __call__(self, x_NxHxWxC: jax.Array) -> jax.Array:
        # The small constant keeps the gradient finite where a channel is all zero (a hidden frame's tokens).
        norm = jnp.sqrt(jnp.sum(jnp.square(x_NxHxWxC.astype(jnp.float32)), axis=(1, 2), keepdims=True) + 1e-12)
        ratio = (norm / (norm.mean(axis=-1, keepdims=True) + 1e-6)).astype(x_NxHxWxC.dtype)
        return self.gamma[...] * (x_NxHxWxC * ratio) + self.beta[...] + x_NxHxWxC


class ConvNeXtBlock(nnx.Module):
    """x + pw2(GRN(gelu(pw1(LayerNorm(depthwise_kxk(x)))))) on each frame's token grid (N, H, W, C)."""

    def __init__(self, dim: int, mlp_ratio: float, *, dtype, rngs: nnx.Rngs):
        k = CONVNEXT_KERNEL
        init = nnx.initializers.truncated_normal(0.02)  # the official initialization
        self.depthwise = nnx.Param(partitioned(init, None, None, "embed")(rngs.params(), (k, k, dim)))
        self.depthwise_bias = nnx.Param(partitioned(nnx.initializers.zeros_init(), "embed")(None, (dim,)))
        self.norm = layer_norm(dim, dtype=dtype, rngs=rngs)
        hidden = int(mlp_ratio * dim)
        dense = lambda d_in, d_out, axes: nnx.Linear(  # noqa: E731
            d_in, d_out, dtype=dtype, param_dtype=jnp.float32, kernel_init=partitioned(init, *axes),
            bias_init=partitioned(nnx.initializers.zeros_init(), axes[1]), rngs=rngs)
        self.expand = dense(dim, hidden, ("embed", "mlp"))
        self.grn = GlobalResponseNorm(hidden)
        self.contract = dense(hidden, dim, ("mlp", "embed"))

    def __call__(self, x_NxHxWxC: jax.Array) -> jax.Array:
        # The depthwise convolution as k^2 shifted, weighted copies: on CPU much faster than XLA's grouped
        # convolution and its gradient, and the same numbers.
        k = CONVNEXT_KERNEL
        _, h, w, _ = x_NxHxWxC.shape
        padded = jnp.pad(x_NxHxWxC, ((0, 0), (k // 2, k // 2), (k // 2, k // 2), (0, 0)))
        weights = self.depthwise[...].astype(x_NxHxWxC.dtype)
        y = sum(padded[:, i:i + h, j:j + w] * weights[i, j] for i in range(k) for j in range(k))
        y = self.norm(y + self.depthwise_bias[...].astype(y.dtype))
        y = self.contract(self.grn(nnx.gelu(self.expand(y))))
        return x_NxHxWxC + y


class VideoEncoder(nnx.Module):
    """Frames (B, T, H, W) normalized, visibility (B, T) -> tokens (B, T', S', D_last) and their visibility (B, T')."""

    def __init__(self, video_cfg, num_frames: int, frame_shape, *, dropout: float, dtype, rngs: nnx.Rngs,
                 kernel: Kernel = XLA, remat: bool = False):
        self.remat = remat  # static: recompute each block in the backward pass
        self.geometry = video_geometry(video_cfg, num_frames, frame_shape)
        grid0 = self.geometry.grids[0]
        dims = [video_cfg.embed_dim * 2**i for i in range(len(video_cfg.stages))]
        heads = [video_cfg.num_heads * 2**i for i in range(len(video_cfg.stages))]
        self.out_dim = dims[-1]
        self.q_stride = tuple(video_cfg.q_stride)
        self.patch_stride, self.patch_padding = tuple(video_cfg.patch_stride), tuple(video_cfg.patch_padding)
        self.patch_impl, self.dtype = video_cfg.patch_impl, dtype
        self.kind = video_cfg.encoder  # checked by check_model_config
        # Between stages Hiera widens, then max-pools each q_stride block of tokens; ConvNeXt, as the official code,
        # applies LayerNorm, then a stride-q convolution: a linear map of the block's tokens stacked along channels.
        fan_in = int(np.prod(self.q_stride)) if self.kind == "convnext" else 1
        self.patch = nnx.Conv(
            2, dims[0], tuple(video_cfg.patch_kernel), tuple(video_cfg.patch_stride),
            padding=[(p, p) for p in video_cfg.patch_padding], dtype=dtype, param_dtype=jnp.float32,
            kernel_init=partitioned(nnx.initializers.lecun_normal(), None, None, None, None, "embed"),
            bias_init=partitioned(nnx.initializers.zeros_init(), "embed"), rngs=rngs)
        normal = partitioned(nnx.initializers.normal(0.02), None, "embed")
        hiera = self.kind == "hiera"  # ConvNeXt has no position embedding, as in the official code
        self.pos_time = nnx.Param(normal(rngs.params(), (grid0[0], dims[0]))) if hiera else None
        self.pos_space = nnx.Param(normal(rngs.params(), (grid0[1] * grid0[2], dims[0]))) if hiera else None
        self.widen = nnx.List([
            nnx.Linear(dims[i - 1] * fan_in, dims[i], use_bias=False, dtype=dtype, param_dtype=jnp.float32,
                       kernel_init=partitioned(nnx.initializers.lecun_normal(), "embed", "mlp"), rngs=rngs)
            for i in range(1, len(dims))])
        if self.kind == "convnext":
            self.downsample_norms = nnx.List([layer_norm(dims[i - 1], dtype=dtype, rngs=rngs)
                                              for i in range(1, len(dims))])
            self.stages = nnx.List([
                nnx.List([ConvNeXtBlock(dims[i], video_cfg.mlp_ratio, dtype=dtype, rngs=rngs) for _ in range(depth)])
                for i, depth in enumerate(video_cfg.stages)])
        else:
            self.downsample_norms = None
            self.stages = nnx.List([
                nnx.List([TransformerBlock(dims[i], heads[i], video_cfg.mlp_ratio, None, dropout=dropout,
                                           kernel=kernel, remat=remat, dtype=dtype, rngs=rngs)
                          for _ in range(depth)])
                for i, depth in enumerate(video_cfg.stages)])

    def _hiera(self, x_BxTxHxWxD: jax.Array, deterministic: bool) -> list[jax.Array]:
        b, t, h, w, d = x_BxTxHxWxD.shape
        x = x_BxTxHxWxD + self.pos_time[...][None, :, None, None] + self.pos_space[...].reshape(1, 1, h, w, d)
        outputs = []
        for stage, blocks in enumerate(self.stages):
            if stage > 0:
                x = pool_tokens(self.widen[stage - 1](x), self.q_stride, "max")
            unit = self.geometry.units[stage]
            x = _to_units(x, unit)
            for block in blocks:
                x = block(x, deterministic=deterministic)
            x = _from_units(x, unit)
            outputs.append(x)
        return outputs

    def _convnext(self, x_BxTxHxWxD: jax.Array) -> list[jax.Array]:
        """Each frame's token grid on its own (no mixing across time, as in the official encoder; no position
        embedding: the convolutions' zero padding tells positions near the edges apart)."""
        x = x_BxTxHxWxD
        outputs = []
        for stage, blocks in enumerate(self.stages):
            if stage > 0:
                x = self.widen[stage - 1](pool_tokens(self.downsample_norms[stage - 1](x), self.q_stride, "concat"))
            b, t, h, w, d = x.shape
            x = x.reshape(b * t, h, w, d)
            for block in blocks:
                x = rematerialized(self.remat, lambda blk, x: blk(x))(block, x)
            x = x.reshape(b, t, h, w, d)
            outputs.append(x)
        return outputs

    def __call__(self, frames_BxTxHxW: jax.Array, visible_BxT: jax.Array,
                 deterministic: bool = True) -> tuple[jax.Array, jax.Array]:
        tokens, visible, _ = self.encode(frames_BxTxHxW, visible_BxT, deterministic)
        return tokens, visible

    def encode(self, frames_BxTxHxW: jax.Array, visible_BxT: jax.Array, deterministic: bool = True):
        """(last-stage tokens (B, T', S', D_last), their visibility (B, T'), every stage's tokens [(B, Ti, Si, Di)]
        with tokens under no visible frame set to zero, so that they carry neither content nor the visibility
        pattern). Hidden frames enter as zeros: their pixels never reach any token."""
        vis = visible_BxT.astype(frames_BxTxHxW.dtype)[:, :, None, None]
        # Multiplying by the mask (rather than selecting) makes hidden frames contribute exactly zero gradient.
        x = jnp.stack([frames_BxTxHxW * vis, jnp.broadcast_to(vis, frames_BxTxHxW.shape)], axis=-1)
        dt = self.dtype or x.dtype
        x = patch_embed(x.astype(dt), self.patch.kernel[...].astype(dt), self.patch.bias[...].astype(dt),
                        self.patch_stride, self.patch_padding, self.patch_impl)
        stages = self._convnext(x) if self.kind == "convnext" else self._hiera(x, deterministic)
        visible = visible_BxT.astype(jnp.float32)
        per_stage = []
        for x, cover in zip(stages, self.geometry.stage_covers):
            b, t, h, w, d = x.shape
            token_visible = (visible @ cover.T.astype(np.float32)) > 0  # any visible frame under the patch
            per_stage.append((x.reshape(b, t, h * w, d), token_visible))
        last, last_visible = per_stage[-1]
        return last, last_visible, [jnp.where(v[:, :, None, None], x, 0.0) for x, v in per_stage]
