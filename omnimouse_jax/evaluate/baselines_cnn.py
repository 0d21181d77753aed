"""A stimulus-driven digital twin in the style of the Sensorium baselines: a small convolutional core over the video
(T, H, W) with a per-neuron factorized readout, softplus rates and a Poisson loss, trained with optax on pipeline
batches.

Core: `layers` space-time separable convolutions (a 2D convolution of each frame, then a 1D convolution of each
position's time course, like the factorized core of the Sensorium 2023 baseline; a full 3D convolution made a training
step about 20x slower on XLA's CPU backend), causal in time so that a response never sees future frames; the first has
spatial stride 2; ELU between layers. Readout, one row per global neuron (so each session has its own): a spatial weight
map over the core's output grid and a weight per feature channel (Klindt et al. 2017's factorized readout), plus a bias
and, with `use_behavior`, a linear weight per behavior channel. rate = softplus(readout). Because the core is causal
and convolutional in time, it can train on shorter windows than it is evaluated on.
"""
from __future__ import annotations

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from omnimouse_jax.data.synthetic import VIDEO_MEAN, VIDEO_STD
from omnimouse_jax.evaluate.baselines import MeanBaseline


@dataclasses.dataclass(frozen=True)
class CNNConfig:
    channels: int = 16
    layers: int = 3
    temporal_kernel: int = 5
    spatial_kernel: int = 5
    steps: int = 300
    learning_rate: float = 5e-3
    use_behavior: bool = False
    warmup: int = 8  # first samples of each training window left out of the loss: their causal history is cut
    init_batches: int = 10  # batches whose per-neuron means initialize the readout biases
    seed: int = 0


def _model(config: CNNConfig, frame_shape, num_rows: int, num_behavior: int):
    class VideoCNN(nnx.Module):
        def __init__(self, rngs: nnx.Rngs):
            kt, ks, width = config.temporal_kernel, config.spatial_kernel, config.channels
            self.spatial_convs = nnx.List([
                nnx.Conv(1 if i == 0 else width, width, (ks, ks), padding=ks // 2, strides=2 if i == 0 else 1,
                         rngs=rngs) for i in range(config.layers)])
            self.temporal_convs = nnx.List([
                nnx.Conv(width, width, (kt,), padding=[(kt - 1, 0)], rngs=rngs)  # causal
                for _ in range(config.layers)])
            grid = int(np.prod([-(-s // 2) for s in frame_shape]))
            self.spatial = nnx.Param(nnx.initializers.normal(1.0 / np.sqrt(grid))(rngs.params(), (num_rows, grid)))
            self.features = nnx.Param(
                nnx.initializers.normal(1.0 / np.sqrt(config.channels))(rngs.params(), (num_rows, config.channels)))
            self.bias = nnx.Param(jnp.zeros((num_rows,)))
            self.behavior_weights = nnx.Param(jnp.zeros((num_rows, num_behavior)))

        def __call__(self, video_BxTxHxW, behavior_BxTxC, neuron_index_BxN):
            B, T = video_BxTxHxW.shape[:2]
            x = ((video_BxTxHxW.astype(jnp.float32) - VIDEO_MEAN) / VIDEO_STD).reshape(B * T, *frame_shape, 1)
            for i, (spatial, temporal) in enumerate(zip(self.spatial_convs, self.temporal_convs)):
                x = spatial(x if i == 0 else nnx.elu(x))  # (B*T, H', W', K): each frame on its own
                h, w, k = x.shape[1:]
                x = x.reshape(B, T, h * w, k).transpose(0, 2, 1, 3).reshape(B * h * w, T, k)
                x = temporal(x)  # each position's time course
                x = x.reshape(B, h * w, T, k).transpose(0, 2, 1, 3).reshape(B * T, h, w, k)
            core_BxTxPxK = x.reshape(B, T, -1, x.shape[-1])
            spatial_BxNxP = self.spatial[...][neuron_index_BxN]
            features_BxNxK = self.features[...][neuron_index_BxN]
            drive = jnp.einsum("btpk,bnp,bnk->btn", core_BxTxPxK, spatial_BxNxP, features_BxNxK)
            drive += jnp.einsum("btc,bnc->btn", behavior_BxTxC, self.behavior_weights[...][neuron_index_BxN])
            return nnx.softplus(drive + self.bias[...][neuron_index_BxN][:, None, :])

    return VideoCNN(nnx.Rngs(config.seed))


class CNNBaseline(MeanBaseline):
    """Rates for every neuron from the visible video (and visible behavior, with `use_behavior`). Behavior predicts
    its per-session mean over the first `init_batches` batches, whose per-neuron means also initialize the biases."""

    def __init__(self, layout, config: CNNConfig = CNNConfig()):
        super().__init__(layout)
        self.config = config
        self.losses: list[float] = []

    def fit(self, train_batches, strategy=None) -> "CNNBaseline":
        """Trains on up to config.steps batches of `train_batches`, one optimizer step each."""
        cfg = self.config
        batches = iter(train_batches)
        first = list(itertools.islice(batches, cfg.init_batches))
        if not first:
            raise ValueError("CNNBaseline.fit: no training batches")
        super().fit(first)
        model = _model(cfg, first[0]["video"].shape[2:], self.layout.num_neuron_rows, self.num_channels)
        mean = np.maximum(self.mean_rows, 1e-3)
        model.bias[...] = jnp.asarray(mean + np.log(-np.expm1(-mean)), jnp.float32)  # inverse softplus
        graphdef, params = nnx.split(model, nnx.Param)
        optimizer = optax.adam(cfg.learning_rate)
        opt_state = optimizer.init(params)

        @jax.jit
        def step(params, opt_state, inputs, responses_BxTxN, weight_BxTxN):
            def loss_fn(p):
                rates = nnx.merge(graphdef, p)(*inputs)
                nll = rates - responses_BxTxN * jnp.log(rates + 1e-8)
                return jnp.sum(weight_BxTxN * nll) / jnp.maximum(jnp.sum(weight_BxTxN), 1.0)

            loss, grads = jax.value_and_grad(loss_fn)(params)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        self.losses = []
        for batch in itertools.islice(itertools.chain(first, batches), cfg.steps):
            T = batch["responses"].shape[1]
            weight = (batch["neuron_mask"] & batch["example_mask"][:, None])[:, None, :] & \
                (np.arange(T) >= cfg.warmup)[None, :, None]
            inputs = self._inputs(batch, np.ones(batch["video"].shape[:2], bool),
                                  np.ones(len(batch["video"]), bool))
            params, opt_state, loss = step(params, opt_state, inputs, batch["responses"], weight.astype(np.float32))
            self.losses.append(float(loss))
        self._params = params
        self._forward = jax.jit(lambda p, inputs: nnx.merge(graphdef, p)(*inputs))
        return self

    def _inputs(self, batch, video_visible_BxT, behavior_visible_B):
        """Hidden frames become gray (the normalized mean); behavior enters only if used and visible."""
        video = np.where(video_visible_BxT[:, :, None, None], batch["video"], np.uint8(round(VIDEO_MEAN)))
        use = behavior_visible_B & self.config.use_behavior & batch["example_mask"]
        behavior = np.where(use[:, None, None], batch["behavior"], 0.0).astype(np.float32)
        return video, behavior, batch["neuron_index"]

    def predict(self, batch, masks) -> dict[str, np.ndarray]:
        out = super().predict(batch, masks)
        behavior_visible = np.broadcast_to(np.asarray(masks.behavior_visible, bool), (len(batch["video"]),))
        inputs = self._inputs(batch, np.asarray(masks.video_visible, bool), behavior_visible)
        out["rates"] = np.asarray(self._forward(self._params, inputs), np.float32)
        return out
