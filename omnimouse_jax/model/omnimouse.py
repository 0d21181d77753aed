"""The OmniMouse model: a POYO-style Perceiver with rotary time over neurons, video and behavior.

Flow for a block of T samples split into W = T / latent_window time bins:
  tokens    per-neuron conv tokens (with response_gain, scaled by 1 + a linear map of the neuron's embedding)
            + neuron/session/animal embedding, one token per behavior channel, and video
            tokens from the Hiera-like encoder; every hidden input is multiplied by zero before use and replaced by
            its modality's missing embedding (video, behavior) or dropped as a key (responses).
  encoder   one cross-attention block: each bin's latents read the response tokens of their bin; global latents
            read all response tokens (an always-valid sink key keeps fully hidden examples well defined).
  backbone  self-attention over [bin latents + bin video tokens] and [global latents + behavior tokens]; local
            layers see neighbouring bins (+ all global tokens), global layers see everything, in a
            local:global ratio. RoPE on time in seconds, RMSNorm pre-norm, QK-norm, SiLU-gated FFN.
  decoder   one cross-attention block from queries per (neuron, output step) and per (behavior channel, output
            step) to the latents and global tokens; linear heads to the step's samples (responses: plus a per-neuron
            bias, Softplus(beta)). A step's query carries the step's time, so behavior is read out as a time course.
            (behavior_readout="per_channel", the paper's code: one query per channel at time 0, read out as the
            channel's whole trace.)
  factorized video readout (video_factorized_readout=True; not in the paper's code): each neuron reads every
            video stage's tokens through its own signed spatial map over the stage's token grid and its own weights
            over the stage's channels (the factorized readout of Klindt et al. 2017), interpolated in time at its
            own lag, and adds the sum over stages to its response logits.
  video skip readout (video_skip_readout=True; not in the paper's code): each neuron's decoder attention over the
            video keys, scaled by (1 + a linear map of its embedding), goes through its own linear head straight to
            the response logits, around the decoder's feed-forward and norm.
  population decoder (population_decoder=True; not in the paper's code): a linear decoder added to the behavior
            readout. At each sample it averages the visible neurons' deviations from their offsets, each weighted by
            the neuron's embedding, and maps that (d_embed,) vector to the channels: a classical linear population
            decoder whose per-neuron weights are a linear function of the embeddings. Zero at init. The behavior
            loss trains only the decoder's kernel: the pooled vector reaches it through a stop-gradient, so decoding
            behavior does not reshape the embeddings and offsets the responses are predicted from. With
            population_decoder_lags=L > 0 each channel at sample t reads that vector at samples t - L .. t + L
            (a temporal filter per channel, zero beyond the block), as a ridge decoder over lagged responses does:
            the behavior varies slowly against the sampling rate, and one sample's responses are noisy.
            With population_decoder_neurons=True each neuron also has a row of weights of its own, one per channel
            (a per-session table, zero at init): at each sample the mean over visible neurons of its deviation times
            its row is added to the behavior, the full-rank decoder of which the embedding-based one is a low-rank
            form. Only the rows train through it.
  history readout (history_readout=True; not in the paper's code): the spike-history and coupling filters of a
            population GLM (Pillow et al. 2008). At each sample, exponentially weighted averages of the neuron's own
            visible deviations from its offset and of the population's mean deviation, over strictly earlier samples
            at a few timescales, are weighted by a linear function of the neuron's embedding and added to its
            response logits: what forecasting a neuron needs of its own recent activity, which the encoder's
            pooling into latents blurs. Zero at init; hidden samples contribute nothing. With
            history_residual=True it is fit to what the rest of the model leaves: the rest trains on its own rates
            (without the readout), and the readout on the full rates with the rest held fixed (stop-gradients on
            its input, the embeddings and the offsets), so it adds to the model's forecast instead of replacing it.
            With history_lags=L > 0 it also reads, as a direct multi-horizon autoregression does, the neuron's own
            deviations at its last visible sample before t and the L - 1 samples before that, and the population
            mean's likewise, each weighed by a coefficient of the lag and of the gap (samples from that last visible
            sample to t), shared by all neurons: the exponential traces fix how the past decays into the future, the
            gap's coefficients learn it per horizon. Zero at init.
  factor readout (factor_readout=K > 0; not in the paper's code): population completion as the conditional mean of
            a K-factor model. Each neuron's loadings on K population factors are a linear function of its embedding;
            at each sample the factors are the ridge estimate from the visible neurons' deviations from their
            offsets, (sum_v l_v l_v^T + I)^-1 sum_v l_v x_v, and each neuron adds its loadings times the factors,
            times a learned gain (zero at init), to its response logits. Hidden samples contribute nothing.
            With factor_dynamics=True the factors are AR(1) processes in time, each with a learned timescale, and
            their mean is the Kalman smoother's over every visible sample (model/factor_smoother.py): a sample with
            no visible neuron (a forecast target) gets the population's state carried from the visible ones.
            With factor_behavior=True the behavior readout also adds a linear map of the factors (zero at init): the
            population's inferred state, smoothed over every visible sample, decoded into each channel (the behavior
            loss trains the map only, not the factors).
Neurons never attend to each other at the input (keys only) or the output (queries only), so permuting an
example's neurons permutes its predictions.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from omnimouse_jax.errors import UserError
from omnimouse_jax.model.attention import Kernel, attend, local_attention, rope_frequencies
from omnimouse_jax.model.blocks import TransformerBlock, rms_norm
from omnimouse_jax.model.factor_smoother import smoothed_factors
from omnimouse_jax.model.kernels import IMPLEMENTATIONS
from omnimouse_jax.model.masking import Masks
from omnimouse_jax.model.tokenizers import BehaviorTokenizer, NeuronIdentity, ResponseTokenizer
from omnimouse_jax.model.video import ENCODERS, VideoEncoder, video_geometry
from omnimouse_jax.parallel.sharding import constrain, partitioned

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
BEHAVIOR_READOUTS = ("per_step", "per_channel")
# random: N(0, 0.02) rows; behavior_tuning: the first C dimensions start at each neuron's regression on the behavior
# channels (TrainingSession._init_from_data), the rest random.
NEURON_EMBED_INITS = ("random", "behavior_tuning")
# none: neuron queries find video tokens by content alone (the paper's code); gaussian: each neuron's logits over the
# decoder's video keys get -|position - centre|^2 / (2 size^2) - (query time - key time - lag)^2 / (2 duration^2),
# its learned spatio-temporal receptive field (OmniMouse.receptive_fields).
VIDEO_READOUT_PRIORS = ("none", "gaussian")
# What the backward pass recomputes instead of keeping: nothing, each attention's internals (attention.Kernel), or
# every transformer block but its attention kernel (encoder, backbone layers, decoder, video blocks;
# blocks.TransformerBlock).
REMATS = ("none", "attention", "block")
# Where an explicitly chosen attention kernel runs (auto picks per backend; attention.Kernel).
KERNEL_BACKENDS = {"cudnn": "gpu", "splash": "tpu"}
# joint: one softmax over the window's latents, video tokens and the global tokens (the paper's code); separate: one
# softmax over the latents and global tokens plus one over the video tokens, outputs summed (the paper code's
# per-modality decoders, off there), so video keys keep their share of attention however many latents there are.
DECODER_VIDEO_ATTENTIONS = ("joint", "separate")
# Receptive fields are stored raw and scaled by RF_STEP, so that Adam's lr-sized steps move a centre by about
# RF_STEP x session_lr half-widths (and a lag by as many seconds) per step. A zero row is a field at the frame's
# centre of size RF_SIZE_INIT half-widths, RF_LAG_INIT s after the frames it reads, lasting RF_DURATION_INIT s.
RF_STEP = 5.0
RF_SIZE_INIT = 0.5
RF_LAG_INIT = 0.1
RF_DURATION_INIT = 0.1
# centre: every receptive field starts at the frame's centre with size RF_SIZE_INIT; mapped: at the neuron's
# reverse-correlation map (TrainingSession._init_from_data) with size RF_SIZE_MAPPED.
NEURON_RF_INITS = ("centre", "mapped")
RF_SIZE_MAPPED = 0.15
# The factorized video readout's lag (s) is VIDEO_LAG_INIT + RF_STEP x its raw table entry: at 0.1 s a response reads
# the first-stage token whose frames ended just before it.
VIDEO_LAG_INIT = 0.1
# Model options added after checkpoints were first written, with the values that rebuild those checkpoints' models
# (restore.config_from_json fills them into a saved config that lacks them).
ADDED_OPTIONS = {"behavior_readout": "per_channel", "response_gain": False, "neuron_embed_init": "random",
                 "population_decoder": False, "decoder_video_keys": False, "decoder_window_bins": 1,
                 "video_readout_prior": "none", "meta_to_latents": False, "neuron_rf_init": "centre",
                 "decoder_video_attention": "joint", "readout_gain": False, "video_skip_readout": False,
                 "video_factorized_readout": False, "population_readout": False, "attention": "xla", "remat": "none",
                 "history_readout": False, "factor_readout": 0, "factor_dynamics": False,
                 "factor_behavior": False, "population_decoder_lags": 0, "population_decoder_neurons": False,
                 "history_residual": False,
                 "history_lags": 0}
# The same for config.model.video.
ADDED_VIDEO_OPTIONS = {"patch_impl": "auto", "encoder": "hiera"}
_INIT = nnx.initializers.normal(0.02)
# The video skip readout's head starts random, not at zero: at zero neither it nor the encoder behind it gets a
# gradient (a saddle of the product). docs/evaluation.md compares init scales.
VIDEO_HEAD_INIT = nnx.initializers.lecun_normal()
# The model's attributes holding the parameters that history_residual fits to what the rest of the model leaves.
FITTED_ON_TOP = ("history_readout", "history_lags")
# The history readout's timescales (s): its exponential filters span a sample to a few seconds.
HISTORY_TIMESCALES_S = (0.1, 0.3, 1.0, 3.0)
# The dynamic factors' initial timescales (s), log-spaced over this range: from nearly independent samples to the
# slow states (arousal, running) that persist over a block.
FACTOR_TIMESCALE_RANGE_S = (0.05, 3.0)


def history_filters(num_samples: int, sampling_rate_hz: float) -> np.ndarray:
    """(K, T, T) causal exponential filters: [k, t, s] = sqrt(1 - r_k^2) r_k^(t - s - 1) for s < t, else 0, with
    r_k = exp(-1 / (timescale_k x rate)): row t weighs the samples strictly before t, scaled so that unit-variance
    white noise comes out at unit variance at every timescale (an average, (1 - r) r^lag, would shrink the 3-s
    trace 13x at 30 Hz and put the weight it needs out of reach of Adam's lr-sized steps)."""
    lag_TxT = np.arange(num_samples)[:, None] - np.arange(num_samples)[None, :]
    decay_K = np.exp(-1.0 / (np.asarray(HISTORY_TIMESCALES_S) * sampling_rate_hz))[:, None, None]
    return np.where(lag_TxT >= 1, np.sqrt(1 - decay_K ** 2) * decay_K ** np.maximum(lag_TxT - 1, 0),
                    0.0).astype(np.float32)


def last_visible_lags(values_BxTxN: jax.Array, visible_BxTxN: jax.Array, lags: int) -> tuple[jax.Array, jax.Array]:
    """For each sample t: (B, T, N, lags) the values at the last visible sample s < t and at s - 1 .. s - lags + 1
    (0 before the block; the values must already be 0 where hidden), and (B, T, N) the gap t - s (0 where no
    sample before t is visible)."""
    b, t, n = values_BxTxN.shape
    seen_BxTxN = jnp.where(visible_BxTxN, jnp.arange(t)[None, :, None], -1)
    last_BxTxN = jax.lax.cummax(seen_BxTxN, axis=1)
    last_before_BxTxN = jnp.concatenate([jnp.full((b, 1, n), -1, last_BxTxN.dtype), last_BxTxN[:, :-1]], axis=1)
    index_BxTxLxN = last_before_BxTxN[:, :, None] - jnp.arange(lags)[:, None]
    gathered_BxTxLxN = jnp.take_along_axis(
        values_BxTxN, jnp.maximum(index_BxTxLxN, 0).reshape(b, t * lags, n), axis=1).reshape(b, t, lags, n)
    lagged_BxTxNxL = jnp.where(index_BxTxLxN >= 0, gathered_BxTxLxN, 0.0).transpose(0, 1, 3, 2)
    gap_BxTxN = jnp.where(last_before_BxTxN >= 0, jnp.arange(t)[None, :, None] - last_before_BxTxN, 0)
    return lagged_BxTxNxL, gap_BxTxN


def check_model_config(cfg: ml_collections.ConfigDict) -> None:
    """Raises UserError naming the field for inconsistent model settings."""
    def need(ok: bool, msg: str):
        if not ok:
            raise UserError(f"config.model.{msg}")

    def need_window(field: str):  # a window of bins on either side of a bin must fit in the block
        span = (2 * cfg[field] + 1) * cfg.latent_window
        need(cfg[field] >= 0 and span <= cfg.num_samples,
             f"{field}={cfg[field]} spans {span} samples, longer than the block (num_samples={cfg.num_samples})")

    need(cfg.dtype in DTYPES, f"dtype={cfg.dtype!r}: expected one of {sorted(DTYPES)}")
    for field, choices in (("behavior_readout", BEHAVIOR_READOUTS), ("neuron_embed_init", NEURON_EMBED_INITS),
                           ("decoder_video_attention", DECODER_VIDEO_ATTENTIONS), ("neuron_rf_init", NEURON_RF_INITS),
                           ("video_readout_prior", VIDEO_READOUT_PRIORS), ("attention", IMPLEMENTATIONS),
                           ("remat", REMATS)):
        need(cfg[field] in choices, f"{field}={cfg[field]!r}: expected one of {list(choices)}")
    need(cfg.remat != "block" or cfg.dropout == 0.0,
         f"remat='block' needs dropout=0 (got {cfg.dropout}): recomputed blocks cannot draw dropout masks; use "
         "remat='attention'")
    backend = KERNEL_BACKENDS.get(cfg.attention)
    need(backend is None or jax.default_backend() == backend,
         f"attention={cfg.attention!r} runs only on {backend.upper() if backend else ''} (this backend: "
         f"{jax.default_backend()}); use 'auto', 'blockwise' or 'xla'")
    need(cfg.neuron_embed_init != "behavior_tuning" or cfg.d_neuron_embed >= cfg.behavior_channels,
         f"neuron_embed_init='behavior_tuning' writes {cfg.behavior_channels} tunings into each embedding: "
         f"d_neuron_embed={cfg.d_neuron_embed} must be at least behavior_channels={cfg.behavior_channels}")
    for field in ("num_neuron_rows", "num_sessions", "num_animals", "max_neurons", "num_samples", "d_model",
                  "num_heads", "num_layers", "latents_per_bin", "num_global_latents", "d_neuron_embed"):
        need(int(cfg[field]) >= 1, f"{field}={cfg[field]} must be at least 1")
    need(cfg.d_model % cfg.num_heads == 0, f"d_model={cfg.d_model} is not divisible by num_heads={cfg.num_heads}")
    need((cfg.d_model // cfg.num_heads) % 2 == 0, f"d_model / num_heads = {cfg.d_model // cfg.num_heads} must be even "
         "(rotary embedding pairs channels)")
    need(cfg.video.encoder in ENCODERS, f"video.encoder={cfg.video.encoder!r}: expected one of {list(ENCODERS)}")
    need(cfg.video.embed_dim % cfg.video.num_heads == 0,
         f"video.embed_dim={cfg.video.embed_dim} is not divisible by video.num_heads={cfg.video.num_heads}")
    need(1 <= cfg.response_window <= cfg.num_samples,
         f"response_window={cfg.response_window} must be within the block (num_samples={cfg.num_samples})")
    need(cfg.response_stride >= 1, f"response_stride={cfg.response_stride} must be at least 1")
    need(cfg.num_samples % cfg.latent_window == 0,
         f"latent_window={cfg.latent_window} must divide num_samples={cfg.num_samples}")
    need(cfg.num_samples % cfg.readout_step == 0,
         f"readout_step={cfg.readout_step} must divide num_samples={cfg.num_samples}")
    if cfg.decoder_video_keys:
        need(cfg.latent_window % cfg.readout_step == 0,
             f"readout_step={cfg.readout_step} must divide latent_window={cfg.latent_window} when the decoder reads "
             "its time window (decoder_video_keys=True)")
        need_window("decoder_window_bins")
    need(not cfg.video_skip_readout or cfg.decoder_video_attention == "separate",
         "video_skip_readout=True reads the decoder's video attention on its own: it needs "
         "decoder_video_attention='separate'")
    need(cfg.video_readout_prior == "none" or cfg.decoder_video_keys,
         f"video_readout_prior={cfg.video_readout_prior!r} needs decoder_video_keys=True (the prior weights the "
         "decoder's video keys)")
    need_window("local_window_bins")
    need(cfg.population_decoder_lags >= 0 and (cfg.population_decoder or not cfg.population_decoder_lags),
         f"population_decoder_lags={cfg.population_decoder_lags} must be >= 0, and > 0 only with "
         "population_decoder=True (it sets the population decoder's window)")
    need(cfg.population_decoder_lags < cfg.num_samples,
         f"population_decoder_lags={cfg.population_decoder_lags} must be below num_samples={cfg.num_samples}")
    need(cfg.population_decoder or not cfg.population_decoder_neurons,
         "population_decoder_neurons=True gives the population decoder per-neuron weights: it needs "
         "population_decoder=True")
    need(not cfg.factor_behavior or cfg.factor_readout > 0,
         "factor_behavior=True decodes the behavior from the factor readout's factors: it needs factor_readout > 0")
    need(not cfg.history_residual or cfg.history_readout,
         "history_residual=True fits the history readout to what the rest of the model leaves: it needs "
         "history_readout=True")
    need(cfg.history_lags >= 0 and (cfg.history_readout or not cfg.history_lags),
         f"history_lags={cfg.history_lags} must be >= 0, and > 0 only with history_readout=True (it adds lagged "
         "samples to the history readout)")
    need(cfg.history_lags < cfg.num_samples,
         f"history_lags={cfg.history_lags} must be below num_samples={cfg.num_samples}")
    local, glob = cfg.local_global_ratio
    need(local >= 0 and glob >= 1,
         f"local_global_ratio={tuple(cfg.local_global_ratio)} needs at least one global layer")
    try:
        video_geometry(cfg.video, cfg.num_samples, cfg.frame_shape)
    except ValueError as err:
        raise UserError(f"config.model.{err}") from None


def grid_positions(grid_hw, frame_shape) -> np.ndarray:
    """(cells, 2) centres of a token grid's cells, row-major: x, y in half-widths of the frame, 0 at its centre."""
    (grid_h, grid_w), (frame_h, frame_w) = grid_hw, frame_shape
    y, x = np.meshgrid((np.arange(grid_h) + 0.5) / grid_h * 2 - 1, (np.arange(grid_w) + 0.5) / grid_w * 2 - 1,
                       indexing="ij")
    return np.stack([x.ravel(), y.ravel() * frame_h / frame_w], axis=1).astype(np.float32)


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: hashed by identity, so nnx keeps it as static
class _Bins:
    """Members of each time bin: index (W, M) into a token axis, and validity (W, M) for padded slots."""

    index: np.ndarray
    valid: np.ndarray

    @classmethod
    def of(cls, centres_samples: np.ndarray, bin_size: int, num_bins: int) -> "_Bins":
        bins = np.clip(np.floor(centres_samples / bin_size).astype(int), 0, num_bins - 1)
        members = [np.flatnonzero(bins == w) for w in range(num_bins)]
        width = max(1, max(len(m) for m in members))
        index = np.zeros((num_bins, width), np.int32)
        valid = np.zeros((num_bins, width), bool)
        for w, m in enumerate(members):
            index[w, : len(m)] = m
            valid[w, : len(m)] = True
        return cls(index, valid)


@dataclasses.dataclass(frozen=True, eq=False)
class _Layout:
    """Static times (seconds) and bin membership of every kind of token."""

    token_bins: _Bins
    token_times: np.ndarray  # (K,) response tokens
    latent_times: np.ndarray  # (W, G) bin latents
    step_times: np.ndarray  # (S,) readout steps
    video_bins: _Bins
    video_times: np.ndarray  # (T',) video time steps
    slot_is_video: np.ndarray  # (P,) which of a bin's tokens [latents; video] are video tokens
    slot_position: np.ndarray  # (P, 2) where each video slot lies in the frame (x, y in half-widths; 0 at the centre)


class OmniMouse(nnx.Module):
    """The multi-modal model; `config` is the config.model section."""

    def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        check_model_config(config)
        self.config = ml_collections.FrozenConfigDict(config)
        cfg = self.config
        dtype = DTYPES[cfg.dtype]
        d = cfg.d_model
        fs = float(cfg.sampling_rate_hz)
        t = cfg.num_samples
        omega = rope_frequencies(d // cfg.num_heads, cfg.rope_min_period_s, cfg.rope_max_period_s)
        key = rngs.params

        self.num_bins = t // cfg.latent_window
        self.num_steps = t // cfg.readout_step
        num_tokens = (t - cfg.response_window) // cfg.response_stride + 1
        token_centres = np.arange(num_tokens) * cfg.response_stride + (cfg.response_window - 1) / 2
        bin_centres = np.arange(self.num_bins) * cfg.latent_window + (cfg.latent_window - 1) / 2
        step_centres = np.arange(self.num_steps) * cfg.readout_step + (cfg.readout_step - 1) / 2

        geometry = video_geometry(cfg.video, t, tuple(cfg.frame_shape))
        # The factorized readout's table columns: every stage's cells (maps) and channels (weights), concatenated.
        self.readout_cells = tuple(int(g[1] * g[2]) for g in geometry.grids)
        self.readout_channels = tuple(cfg.video.embed_dim * 2**i for i in range(len(geometry.grids)))
        self.identity = NeuronIdentity(cfg.num_neuron_rows, cfg.num_sessions, cfg.num_animals, cfg.d_neuron_embed, d,
                                       dtype=dtype, rngs=rngs, offsets=(cfg.population_decoder or cfg.population_readout
                                                or cfg.history_readout or cfg.factor_readout > 0),
                                       receptive_fields=cfg.video_readout_prior == "gaussian",
                                       video_readout=((sum(self.readout_cells), sum(self.readout_channels))
                                                      if cfg.video_factorized_readout else None),
                                       decoder_channels=cfg.behavior_channels if cfg.population_decoder_neurons else 0)
        self.response_tokens = ResponseTokenizer(cfg.response_window, cfg.response_stride, d, dtype=dtype, rngs=rngs)
        # Response gain: each neuron's embedding scales its response tokens, so that pooling over neurons can form
        # signed, neuron-specific sums of responses (a decoder's weights) directly. Zero at init.
        def neuron_gain():  # a linear map of a neuron's embedding to d_model channel scales, zero at init
            return nnx.Linear(cfg.d_neuron_embed, d, use_bias=False, dtype=dtype, param_dtype=jnp.float32,
                              kernel_init=partitioned(nnx.initializers.zeros_init(), "neuron_embed", "embed"),
                              rngs=rngs)

        self.response_gain = neuron_gain() if cfg.response_gain else None
        # Readout gain: each neuron's embedding scales the decoder's output channels before the shared response head,
        # so that the head's weights become neuron-specific (which features drive which neuron, as in a factorized
        # readout). Zero at init.
        self.readout_gain = neuron_gain() if cfg.readout_gain else None
        # Video skip readout: the decoder's video attention output, scaled per neuron by (1 + a linear map of its
        # embedding), goes straight to a linear head added to the response logits, around the decoder's
        # feed-forward and norm: a factorized readout (where: the receptive field; what: the feature weights).
        self.video_gain = neuron_gain() if cfg.video_skip_readout else None
        self.video_head = nnx.Linear(
            d, cfg.readout_step, use_bias=False, dtype=dtype, param_dtype=jnp.float32,
            kernel_init=partitioned(VIDEO_HEAD_INIT, "embed", None), rngs=rngs) if cfg.video_skip_readout else None
        self.behavior_tokens = BehaviorTokenizer(cfg.behavior_channels, t, d, rngs=rngs)
        kernel = Kernel(cfg.attention, checkpoint=cfg.remat != "none")
        remat_blocks = cfg.remat == "block"
        self.video = VideoEncoder(cfg.video, t, tuple(cfg.frame_shape), dropout=cfg.dropout, dtype=dtype, rngs=rngs,
                                  kernel=kernel, remat=remat_blocks)
        self.video_project = nnx.Linear(self.video.out_dim, d, dtype=dtype, param_dtype=jnp.float32,
                                        kernel_init=partitioned(nnx.initializers.lecun_normal(), "mlp", "embed"),
                                        bias_init=partitioned(nnx.initializers.zeros_init(), "embed"), rngs=rngs)
        video_centres = self.video.geometry.frame_centres
        seconds = lambda samples: (np.asarray(samples) / fs).astype(np.float32)  # noqa: E731
        video_bins = _Bins.of(video_centres, cfg.latent_window, self.num_bins)
        spatial_Sx2 = grid_positions(self.video.geometry.grids[-1][1:], cfg.frame_shape)
        per_bin = video_bins.index.shape[1]
        self.layout = _Layout(
            token_bins=_Bins.of(token_centres, cfg.latent_window, self.num_bins),
            token_times=seconds(token_centres),
            latent_times=seconds(np.repeat(bin_centres[:, None], cfg.latents_per_bin, axis=1)),
            step_times=seconds(step_centres),
            video_bins=video_bins,
            video_times=seconds(video_centres),
            slot_is_video=np.concatenate([np.zeros(cfg.latents_per_bin, bool),
                                          np.ones(per_bin * len(spatial_Sx2), bool)]),
            slot_position=np.concatenate([np.zeros((cfg.latents_per_bin, 2), np.float32),
                                          np.tile(spatial_Sx2, (per_bin, 1))]))

        def embed(*shape):  # learned vectors: latents, queries, missing-modality and sink embeddings
            return nnx.Param(partitioned(_INIT, *(["latents"] * (len(shape) - 1)), "embed")(key(), shape))

        self.bin_latents = embed(cfg.latents_per_bin, d)
        self.global_latents = embed(cfg.num_global_latents, d)
        self.missing_responses = embed(d)
        self.missing_video = embed(d)
        self.sink = embed(d)
        self.step_queries = embed(self.num_steps, d)
        self.behavior_queries = embed(cfg.behavior_channels, d)

        self.encoder = TransformerBlock(d, cfg.num_heads, cfg.ffn_mult, omega, cross=True, dropout=cfg.dropout,
                                        kernel=kernel, remat=remat_blocks, dtype=dtype, rngs=rngs)
        local, glob = cfg.local_global_ratio
        self.layer_is_local = tuple(i % (local + glob) < local for i in range(cfg.num_layers))
        self.layers = nnx.List([TransformerBlock(d, cfg.num_heads, cfg.ffn_mult, omega, dropout=cfg.dropout,
                                                 kernel=kernel, remat=remat_blocks, dtype=dtype, rngs=rngs)
                                for _ in range(cfg.num_layers)])
        self.decoder = TransformerBlock(d, cfg.num_heads, cfg.decoder_ffn_mult, omega, cross=True, dropout=cfg.dropout,
                                        kernel=kernel, remat=remat_blocks, dtype=dtype, rngs=rngs)
        self.out_norm = rms_norm(d, dtype=dtype, rngs=rngs)
        self.response_head = nnx.Linear(d, cfg.readout_step, dtype=dtype, param_dtype=jnp.float32,
                                        kernel_init=partitioned(nnx.initializers.lecun_normal(), "embed", None),
                                        bias_init=partitioned(nnx.initializers.zeros_init(), None), rngs=rngs)
        # Behavior readout: "per_step" has one query per (channel, readout step), each mapped to its step's
        # samples; "per_channel" (the paper's code) one query per channel, mapped to the channel's whole trace.
        self.behavior_per_step = cfg.behavior_readout == "per_step"
        head_init = nnx.initializers.lecun_normal(in_axis=1, out_axis=2)
        self.behavior_head = nnx.Param(partitioned(head_init, "channels", "embed", None)(
            key(), (cfg.behavior_channels, d, cfg.readout_step if self.behavior_per_step else t)))
        self.behavior_head_bias = nnx.Param(partitioned(nnx.initializers.zeros_init(), "channels", "samples")(
            key(), (cfg.behavior_channels, t)))
        # Gradient descent learns a linear readout slowly along low-variance directions of the latents (a weakly
        # encoded channel such as gaze); in embedding coordinates the decoder's weights are axis-aligned with the
        # neurons' tunings, which Adam's per-coordinate steps learn quickly (docs/evaluation.md).
        lags = cfg.population_decoder_lags
        if not cfg.population_decoder:
            self.population_decoder = None
        elif lags:
            self.population_decoder = nnx.Conv(
                cfg.d_neuron_embed, cfg.behavior_channels, kernel_size=(2 * lags + 1,), padding=((lags, lags),),
                use_bias=False, param_dtype=jnp.float32,
                kernel_init=partitioned(nnx.initializers.zeros_init(), None, "neuron_embed", "channels"), rngs=rngs)
        else:
            self.population_decoder = nnx.Linear(
                cfg.d_neuron_embed, cfg.behavior_channels, use_bias=False, param_dtype=jnp.float32,
                kernel_init=partitioned(nnx.initializers.zeros_init(), "neuron_embed", "channels"), rngs=rngs)
        self.population_readout = nnx.Linear(
            cfg.d_neuron_embed, cfg.d_neuron_embed, use_bias=False, param_dtype=jnp.float32,
            kernel_init=partitioned(nnx.initializers.zeros_init(), "neuron_embed", None),
            rngs=rngs) if cfg.population_readout else None
        self.factor_loadings = nnx.Linear(
            cfg.d_neuron_embed, cfg.factor_readout, use_bias=False, param_dtype=jnp.float32,
            kernel_init=partitioned(nnx.initializers.lecun_normal(), "neuron_embed", None),
            rngs=rngs) if cfg.factor_readout > 0 else None
        self.factor_gain = nnx.Param(jnp.zeros((), jnp.float32)) if cfg.factor_readout > 0 else None
        self.factor_log_timescale = nnx.Param(jnp.log(jnp.geomspace(
            *FACTOR_TIMESCALE_RANGE_S, cfg.factor_readout, dtype=jnp.float32))) if (
                cfg.factor_readout > 0 and cfg.factor_dynamics) else None
        self.factor_behavior = nnx.Linear(
            cfg.factor_readout, cfg.behavior_channels, use_bias=False, param_dtype=jnp.float32,
            kernel_init=partitioned(nnx.initializers.zeros_init(), None, "channels"),
            rngs=rngs) if cfg.factor_behavior else None
        # History readout weights: per timescale, for the own and the population trace, a shared weight plus a
        # linear function of the neuron's embedding. Zero at init.
        self.history_readout = nnx.Linear(
            cfg.d_neuron_embed, 2 * len(HISTORY_TIMESCALES_S), param_dtype=jnp.float32,
            kernel_init=partitioned(nnx.initializers.zeros_init(), "neuron_embed", None),
            bias_init=partitioned(nnx.initializers.zeros_init(), None), rngs=rngs) if cfg.history_readout else None
        # Its lag coefficients: [gap, own or population, lag], gap 0 unused (no visible sample before t is no gap).
        self.history_lags = nnx.Param(partitioned(nnx.initializers.zeros_init(), None, None, None)(
            rngs.params(), (cfg.num_samples, 2, cfg.history_lags), jnp.float32)) if cfg.history_lags else None

    def _check_batch(self, batch) -> None:
        cfg = self.config
        b, t, n = batch["responses"].shape
        expected = {
            "responses": (b, cfg.num_samples, n), "neuron_mask": (b, n), "neuron_index": (b, n),
            "session_index": (b,), "animal_index": (b,), "video": (b, cfg.num_samples, *cfg.frame_shape),
            "behavior": (b, cfg.num_samples, cfg.behavior_channels), "behavior_mask": (b, cfg.behavior_channels),
        }
        for key, shape in expected.items():
            if tuple(batch[key].shape) != tuple(shape):
                raise UserError(f"batch[{key!r}] has shape {tuple(batch[key].shape)}, expected {tuple(shape)} "
                                f"(from config.model and responses {(b, t, n)})")
        if n > cfg.max_neurons:
            raise UserError(f"batch has {n} neurons, more than config.model.max_neurons={cfg.max_neurons}")

    def __call__(self, batch: dict, masks: Masks, *, deterministic: bool = True) -> dict[str, jax.Array]:
        """Predictions: rates (B, T, N) (meaningful at target positions) and behavior (B, T, C)."""
        self._check_batch(batch)
        cfg, lay = self.config, self.layout
        d = cfg.d_model
        responses_BxTxN = jnp.asarray(batch["responses"], jnp.float32)
        b, t, n = responses_BxTxN.shape
        neuron_mask_BxN = jnp.asarray(batch["neuron_mask"], bool)
        emb_BxNxE = self.identity.embed(batch["neuron_index"], batch["session_index"], batch["animal_index"])
        ident_BxNxD = constrain(self.identity.project(emb_BxNxE), ("batch", "neurons", "embed"))

        # Response tokens; a token is a key only if its neuron is real and some sample under it is visible.
        visible_BxTxN = masks.response_visible & neuron_mask_BxN[:, None, :]
        tok_BxKxNxD = self.response_tokens(responses_BxTxN, visible_BxTxN)
        if self.response_gain is not None:
            tok_BxKxNxD = tok_BxKxNxD * (1.0 + self.response_gain(emb_BxNxE)[:, None])
        tok_BxKxNxD = tok_BxKxNxD + ident_BxNxD[:, None]
        window = jnp.asarray(np.arange(t)[None, :] - cfg.response_stride * np.arange(tok_BxKxNxD.shape[1])[:, None])
        under_KxT = (window >= 0) & (window < cfg.response_window)
        tok_valid_BxKxN = jnp.einsum("kt,btn->bkn", under_KxT.astype(jnp.float32),
                                     visible_BxTxN.astype(jnp.float32)) > 0
        tok_BxKxNxD = constrain(tok_BxKxNxD, ("batch", "length", "neurons", "embed"))
        has_responses_B = tok_valid_BxKxN.any(axis=(1, 2))

        # Encoder: bin latents read their bin's tokens; global latents read all tokens. A sink key is always valid.
        missing_Bx1x1xD = jnp.where(has_responses_B[:, None], 0.0, self.missing_responses[...])[:, None, None]
        lat_BxWxGxD = (jnp.broadcast_to(self.bin_latents[...], (b, self.num_bins, cfg.latents_per_bin, d))
                       + missing_Bx1x1xD)
        glob_BxGxD = jnp.broadcast_to(self.global_latents[...], (b, cfg.num_global_latents, d)) + missing_Bx1x1xD[:, 0]
        if cfg.meta_to_latents:  # the paper's code: the session's and animal's embedding on every latent
            meta_BxD = self.identity.project(self.identity.meta(batch["session_index"], batch["animal_index"]))
            lat_BxWxGxD = lat_BxWxGxD + meta_BxD[:, None, None]
            glob_BxGxD = glob_BxGxD + meta_BxD[:, None]
        sink_BxWx1xD = jnp.broadcast_to(self.sink[...], (b, self.num_bins, 1, d))
        idx, pad_ok = lay.token_bins.index, lay.token_bins.valid
        kv_BxWxMxD = tok_BxKxNxD[:, idx].reshape(b, self.num_bins, -1, d)
        kv_valid_BxWxM = (tok_valid_BxKxN[:, idx] & pad_ok[None, :, :, None]).reshape(b, self.num_bins, -1)
        kv_t_WxM = np.repeat(lay.token_times[idx], n, axis=-1)
        lat_BxWxGxD = self.encoder(
            lat_BxWxGxD, lay.latent_times,
            kv=jnp.concatenate([kv_BxWxMxD, sink_BxWx1xD], axis=2),
            t_kv_s=np.concatenate([kv_t_WxM, np.zeros((self.num_bins, 1))], 1),
            key_valid=jnp.concatenate([kv_valid_BxWxM, jnp.ones((b, self.num_bins, 1), bool)], axis=2),
            deterministic=deterministic)
        glob_BxGxD = self.encoder(
            glob_BxGxD, np.zeros(cfg.num_global_latents),
            kv=jnp.concatenate([tok_BxKxNxD.reshape(b, -1, d), sink_BxWx1xD[:, 0]], axis=1),
            t_kv_s=np.concatenate([np.repeat(lay.token_times, n), [0.0]]),
            key_valid=jnp.concatenate([tok_valid_BxKxN.reshape(b, -1), jnp.ones((b, 1), bool)], axis=1),
            deterministic=deterministic)

        # Video tokens, binned by time; tokens with no visible frame become the missing-video embedding.
        frames_BxTxHxW = (jnp.asarray(batch["video"], jnp.float32) - cfg.video_mean) / cfg.video_std
        vid_BxTvxSxE, vid_visible_BxTv, stages = self.video.encode(frames_BxTxHxW, masks.video_visible,
                                                                   deterministic=deterministic)
        vid_BxTvxSxD = self.video_project(vid_BxTvxSxE)
        vid_BxTvxSxD = jnp.where(vid_visible_BxTv[:, :, None, None], vid_BxTvxSxD, self.missing_video[...])
        vidx, vpad_ok = lay.video_bins.index, lay.video_bins.valid
        spatial = vid_BxTvxSxD.shape[2]
        vid_BxWxVxD = vid_BxTvxSxD[:, vidx].reshape(b, self.num_bins, -1, d)
        vid_valid_BxWxV = jnp.broadcast_to(np.repeat(vpad_ok, spatial, axis=1),
                                          (b, self.num_bins, vpad_ok.shape[1] * spatial))
        vid_t_WxV = np.repeat(lay.video_times[vidx], spatial, axis=1)

        # Backbone over binned [latents; video] and global [latents; behavior].
        behavior_visible_BxC = masks.behavior_visible[:, None] & jnp.asarray(batch["behavior_mask"], bool)
        beh_BxCxD = self.behavior_tokens(jnp.asarray(batch["behavior"], jnp.float32), behavior_visible_BxC)
        if cfg.meta_to_latents:
            beh_BxCxD = beh_BxCxD + meta_BxD[:, None]
        bins_BxWxLxD = jnp.concatenate([lat_BxWxGxD, vid_BxWxVxD], axis=2)
        bins_valid_BxWxL = jnp.concatenate([jnp.ones(lat_BxWxGxD.shape[:3], bool), vid_valid_BxWxV], axis=2)
        bins_t_WxL = np.concatenate([lay.latent_times, vid_t_WxV], axis=1)
        globals_BxQxD = jnp.concatenate([glob_BxGxD, beh_BxCxD], axis=1)
        globals_valid_BxQ = jnp.ones(globals_BxQxD.shape[:2], bool)
        globals_t_Q = np.zeros(globals_BxQxD.shape[1], np.float32)
        for layer, is_local in zip(self.layers, self.layer_is_local):
            bins_BxWxLxD, globals_BxQxD = self._mix(layer, is_local, bins_BxWxLxD, bins_valid_BxWxL, bins_t_WxL,
                                                    globals_BxQxD, globals_valid_BxQ, globals_t_Q, deterministic)

        # Decoder: queries per (neuron, readout step) and per behavior channel (and step, if per_step).
        rf_BxNx5 = (self.identity.receptive_field(batch["neuron_index"])
                    if cfg.video_readout_prior == "gaussian" else None)
        resp_out_BxNxSxD, beh_out_BxCxSxD, vid_BxNxSxD = self._decode(
            bins_BxWxLxD, bins_valid_BxWxL, bins_t_WxL, globals_BxQxD, globals_valid_BxQ, globals_t_Q, ident_BxNxD,
            rf_BxNx5, deterministic)
        c = cfg.behavior_channels
        if self.readout_gain is not None:
            resp_out_BxNxSxD = resp_out_BxNxSxD * (1.0 + self.readout_gain(emb_BxNxE)[:, :, None])
        samples_BxNxT = self.response_head(resp_out_BxNxSxD).reshape(b, n, t).astype(jnp.float32)
        if self.video_head is not None:
            vid_BxNxSxD = vid_BxNxSxD * (1.0 + self.video_gain(emb_BxNxE)[:, :, None])
            samples_BxNxT = samples_BxNxT + self.video_head(vid_BxNxSxD).reshape(b, n, t).astype(jnp.float32)
        if cfg.video_factorized_readout:
            samples_BxNxT = samples_BxNxT + self._video_readout(stages, batch["neuron_index"])
        if self.population_decoder is not None or self.population_readout is not None:
            pooled_BxTxE = self._population_state(responses_BxTxN, visible_BxTxN, emb_BxNxE, batch["neuron_index"])
        if self.population_readout is not None:
            coupling_BxNxE = self.population_readout(emb_BxNxE.astype(jnp.float32))
            samples_BxNxT = samples_BxNxT + jnp.einsum("bte,bne->bnt", pooled_BxTxE, coupling_BxNxE)
        if self.factor_loadings is not None:
            factor_logits_BxNxT, factors_BxTxK = self._factor_completion(responses_BxTxN, visible_BxTxN, emb_BxNxE,
                                                                         batch["neuron_index"])
            samples_BxNxT = samples_BxNxT + factor_logits_BxNxT
        samples_BxNxT = samples_BxNxT + self.identity.bias(batch["neuron_index"])[:, :, None]
        beta = cfg.softplus_beta
        out = {}
        if self.history_readout is not None:
            history_BxNxT = self._history(responses_BxTxN, visible_BxTxN, emb_BxNxE, batch["neuron_index"],
                                          detach=cfg.history_residual)
            if cfg.history_residual:
                # The rest of the model trains on its own rates, as without the readout; the readout trains on top
                # of them, held fixed, so it can add to their forecast but not take it over (docs/evaluation.md).
                # Only training steps need those rates.
                if not deterministic:
                    out["rates_without_history"] = constrain(
                        (jax.nn.softplus(beta * samples_BxNxT) / beta).transpose(0, 2, 1),
                        ("batch", "length", "neurons"))
                samples_BxNxT = jax.lax.stop_gradient(samples_BxNxT)
            samples_BxNxT = samples_BxNxT + history_BxNxT
        rates_BxNxT = jax.nn.softplus(beta * samples_BxNxT) / beta
        behavior_BxTxC = jnp.einsum("bcsd,cdk->bskc", beh_out_BxCxSxD.astype(jnp.float32),
                                    self.behavior_head[...]).reshape(b, t, c)
        behavior_BxTxC = behavior_BxTxC + self.behavior_head_bias[...].T
        if self.population_decoder is not None:
            # Let through, this gradient costs the response regimes (docs/evaluation.md, "The population decoder's
            # window").
            behavior_BxTxC = behavior_BxTxC + self.population_decoder(jax.lax.stop_gradient(pooled_BxTxE))
        if cfg.population_decoder_neurons:
            # Only the rows train through it (docs/evaluation.md, "Each neuron's own decoding weights").
            own_rows_BxNxC = self.identity.decoder_weights(batch["neuron_index"])
            behavior_BxTxC = behavior_BxTxC + self._population_state(
                responses_BxTxN, visible_BxTxN, own_rows_BxNxC, batch["neuron_index"], detach_offsets=True)
        if self.factor_behavior is not None:
            # A readout of the state the response model infers: the behavior loss does not reshape the factors
            # (docs/evaluation.md, "Behavior from the factors").
            behavior_BxTxC = behavior_BxTxC + self.factor_behavior(jax.lax.stop_gradient(factors_BxTxK))
        return {"rates": constrain(rates_BxNxT.transpose(0, 2, 1), ("batch", "length", "neurons")),
                "behavior": behavior_BxTxC, **out}

    def set_receptive_fields(self, centres_Rx2: np.ndarray, size: float, start_row: int = 0) -> None:
        """Starts rows [start_row, start_row + R) at these centres (half-widths) and one size (receptive_fields'
        units): the decoder's prior (with the gaussian prior) and the factorized video readout's maps (a Gaussian
        bump of that size over each stage's cells, summing to one per stage)."""
        centres_Rx2 = np.asarray(centres_Rx2, np.float32)
        rows = len(centres_Rx2)
        if self.identity.neuron_rf is not None:
            raw = np.concatenate([centres_Rx2, np.full((rows, 1), np.log(size / RF_SIZE_INIT), np.float32),
                                  np.zeros((rows, 2), np.float32)], axis=1)  # the initial lag and duration
            self.identity.set_rows("neuron_rf", raw / RF_STEP, start_row)
        if self.identity.neuron_video_map is not None:
            bumps = []
            for grid in self.video.geometry.grids:
                cells_Px2 = grid_positions(grid[1:], self.config.frame_shape)
                logits_RxP = -((cells_Px2[None] - centres_Rx2[:, None]) ** 2).sum(-1) / (2 * size**2)
                bump = np.exp(logits_RxP - logits_RxP.max(1, keepdims=True))
                bumps.append(bump / bump.sum(1, keepdims=True))
            self.identity.set_rows("neuron_video_map", np.concatenate(bumps, axis=1), start_row)

    def _video_readout(self, stages: list, neuron_index_BxN) -> jax.Array:
        """(B, N, T) logits of the factorized video readout: per stage, each neuron's map and channel weights applied
        to every time step's tokens (B, J, P, C), then read at each sample t at time t - lag, linearly interpolated
        between the time steps' centres (held at the first and last centre beyond them); summed over stages."""
        map_BxNxP, weights_BxNxC, lag_BxN = self.identity.video_readout(neuron_index_BxN)
        fs = float(self.config.sampling_rate_hz)
        sample_t = (np.arange(self.config.num_samples) / fs).astype(np.float32)
        lag_BxN = VIDEO_LAG_INIT + RF_STEP * lag_BxN.astype(jnp.float32)
        cell_ends, channel_ends = np.cumsum(self.readout_cells), np.cumsum(self.readout_channels)
        logits = 0.0
        for i, (tokens_BxJxPxC, centres) in enumerate(zip(stages, self.video.geometry.stage_frame_centres)):
            cells = slice(cell_ends[i] - self.readout_cells[i], cell_ends[i])
            channels = slice(channel_ends[i] - self.readout_channels[i], channel_ends[i])
            pooled_BxNxJxC = jnp.einsum("bjpc,bnp->bnjc", tokens_BxJxPxC.astype(jnp.float32), map_BxNxP[..., cells])
            drive_BxNxJ = jnp.einsum("bnjc,bnc->bnj", pooled_BxNxJxC, weights_BxNxC[..., channels])
            centres_J = (centres / fs).astype(np.float32)
            spacing = float(centres_J[1] - centres_J[0]) if len(centres_J) > 1 else 1.0
            read_BxNxT = jnp.clip(sample_t - lag_BxN[..., None], centres_J[0], centres_J[-1])
            tent_BxNxTxJ = jax.nn.relu(1.0 - jnp.abs(read_BxNxT[..., None] - centres_J) / spacing)
            logits = logits + jnp.einsum("bnj,bntj->bnt", drive_BxNxJ, tent_BxNxTxJ)
        return logits

    @staticmethod
    def receptive_fields(rf_BxNx5: jax.Array) -> dict[str, jax.Array]:
        """The raw table rows in their units: centre (B, N, 2) (x, y in half-widths of the frame, 0 at its centre),
        size (B, N) in half-widths, lag and duration (B, N) in seconds."""
        rf = rf_BxNx5.astype(jnp.float32) * RF_STEP
        return {"centre": rf[..., :2], "size": RF_SIZE_INIT * jnp.exp(rf[..., 2]), "lag": RF_LAG_INIT + rf[..., 3],
                "duration": RF_DURATION_INIT * jnp.exp(rf[..., 4])}

    def _decode(self, bins_BxWxLxD, bins_valid_BxWxL, bins_t_WxL, globals_BxQxD, globals_valid_BxQ, globals_t_Q,
                ident_BxNxD, rf_BxNx5, deterministic):
        """Decoder outputs (B, N, S, D) for the neurons' readout steps and (B, C, S or 1, D) for the behavior, and
        with video_skip_readout the neurons' video attention outputs (B, N, S, D) (else None).

        Without video keys (the earlier wiring) every query reads the bin latents and the global tokens. With them
        (the paper's code), a readout step's queries read the tokens [latents; video] of the bins within
        decoder_window_bins of the step's own bin, plus the global tokens; a per_channel behavior query (time 0)
        reads every token. With the gaussian prior, a neuron's logits over video keys fall off with the distance of
        the key's position from the neuron's receptive field."""
        cfg, lay = self.config, self.layout
        b, n, d = ident_BxNxD.shape
        c, steps = cfg.behavior_channels, self.num_steps
        q_resp_BxNxSxD = ident_BxNxD[:, :, None] + self.step_queries[...]
        q_beh_CxSxD = self.behavior_queries[...][:, None] + self.step_queries[...]
        if not cfg.decoder_video_keys:
            keys = jnp.concatenate([bins_BxWxLxD[:, :, : cfg.latents_per_bin].reshape(b, -1, d), globals_BxQxD], axis=1)
            keys_t = np.concatenate([lay.latent_times.reshape(-1), globals_t_Q])
            if self.behavior_per_step:
                q_beh, q_beh_t = q_beh_CxSxD.reshape(-1, d), np.tile(lay.step_times, c)
            else:
                q_beh, q_beh_t = self.behavior_queries[...], np.zeros(c)
            q = jnp.concatenate([q_resp_BxNxSxD.reshape(b, n * steps, d), jnp.broadcast_to(q_beh, (b,) + q_beh.shape)],
                                axis=1)
            q_t = np.concatenate([np.tile(lay.step_times, n), q_beh_t])
            out = self.out_norm(self.decoder(q, q_t, kv=keys, t_kv_s=keys_t, deterministic=deterministic))
            return out[:, : n * steps].reshape(b, n, steps, d), out[:, n * steps:].reshape(b, c, -1, d), None

        w, per = self.num_bins, steps // self.num_bins  # readout steps per bin
        group = lambda a: a.reshape(a.shape[0], a.shape[1], w, per, d).transpose(0, 2, 1, 3, 4)  # noqa: E731
        ungroup = lambda a, m: a.reshape(b, w, m, per, d).transpose(0, 2, 1, 3, 4).reshape(b, m, steps, d)  # noqa
        step_t_WxP = lay.step_times.reshape(w, per)
        parts = [group(q_resp_BxNxSxD).reshape(b, w, n * per, d)]
        times = [np.tile(step_t_WxP, (1, n))]
        if self.behavior_per_step:
            parts.append(jnp.broadcast_to(group(q_beh_CxSxD[None]).reshape(1, w, c * per, d), (b, w, c * per, d)))
            times.append(np.tile(step_t_WxP, (1, c)))
        q_BxWxQxD = jnp.concatenate(parts, axis=2)
        block = self.decoder
        q_h = block.queries(q_BxWxQxD, np.concatenate(times, axis=1))
        k_bin, v_bin = block.keys_values(bins_BxWxLxD, bins_t_WxL)
        k_glob, v_glob = block.keys_values(globals_BxQxD, globals_t_Q)
        bias = None
        if rf_BxNx5 is not None:
            bias = self._receptive_field_bias(rf_BxNx5, bins_t_WxL, step_t_WxP, globals_BxQxD.shape[1], q_h.shape[2])
        radius = cfg.decoder_window_bins
        vid_resp = None
        if cfg.decoder_video_attention == "joint":
            o = local_attention(q_h, k_bin, v_bin, bins_valid_BxWxL, radius, k_glob, v_glob, globals_valid_BxQ, bias,
                                block.kernel)
        else:
            g = cfg.latents_per_bin
            o = local_attention(q_h, k_bin[:, :, :g], v_bin[:, :, :g], bins_valid_BxWxL[:, :, :g], radius, k_glob,
                                v_glob, globals_valid_BxQ, kernel=block.kernel)
            if bias is not None:  # keys of each window: its (2 radius + 1) bins' slots, then the global tokens
                p = k_bin.shape[2]
                slots = np.concatenate([np.arange(g, p) + j * p for j in range(2 * radius + 1)])
                bias = bias[..., slots]  # (B, W, Q, video keys)
            o_vid = local_attention(q_h, k_bin[:, :, g:], v_bin[:, :, g:], bins_valid_BxWxL[:, :, g:], radius,
                                    bias=bias, kernel=block.kernel)
            o = o + o_vid
            if cfg.video_skip_readout:
                vid_resp = ungroup(o_vid[:, :, : n * per].reshape(b, w, n * per, d), n)
        out = self.out_norm(block.finish(q_BxWxQxD, o, deterministic))
        resp_out_BxNxSxD = ungroup(out[:, :, : n * per], n)
        if self.behavior_per_step:
            return resp_out_BxNxSxD, ungroup(out[:, :, n * per:], c), vid_resp
        keys = jnp.concatenate([bins_BxWxLxD.reshape(b, -1, d), globals_BxQxD], axis=1)
        keys_t = np.concatenate([bins_t_WxL.reshape(-1), globals_t_Q])
        key_valid = jnp.concatenate([bins_valid_BxWxL.reshape(b, -1), globals_valid_BxQ], axis=1)
        q_beh = jnp.broadcast_to(self.behavior_queries[...], (b, c, d))
        beh_out_BxCxSxD = self.out_norm(block(q_beh, np.zeros(c), kv=keys, t_kv_s=keys_t, key_valid=key_valid,
                                      deterministic=deterministic))
        return resp_out_BxNxSxD, beh_out_BxCxSxD[:, :, None], vid_resp

    def _receptive_field_bias(self, rf_BxNx5, t_bin_WxP, step_t_WxS, num_global, num_queries) -> jax.Array:
        """(B, W, Q, K) logit bias of the decoder's queries over the keys of local_attention's layout (each window's
        2 r + 1 bins of slots, then the global keys): each neuron's spatio-temporal Gaussian over the video keys, 0
        for other keys and for the behavior queries (the queries after the neurons')."""
        lay, radius = self.layout, self.config.decoder_window_bins
        b, n = rf_BxNx5.shape[:2]
        w, per = step_t_WxS.shape
        width = 2 * radius + 1
        is_video_K = np.concatenate([np.tile(lay.slot_is_video, width), np.zeros(num_global, bool)])
        position_Kx2 = np.concatenate([np.tile(lay.slot_position, (width, 1)), np.zeros((num_global, 2), np.float32)])
        padded_t = np.pad(t_bin_WxP, ((radius, radius), (0, 0)))
        key_t_WxK = np.concatenate([np.concatenate([padded_t[j: j + w] for j in range(width)], axis=1),
                                    np.zeros((w, num_global), np.float32)], axis=1)
        delay_WxSxK = step_t_WxS[:, :, None] - key_t_WxK[:, None, :]  # > 0: the key's frames came first
        rf = self.receptive_fields(rf_BxNx5)
        space_BxNxK = ((position_Kx2 - rf["centre"][:, :, None]) ** 2).sum(-1) / (2 * rf["size"][..., None] ** 2)
        shifted = delay_WxSxK[None, None] - rf["lag"][:, :, None, None, None]  # (B, N, W, S, K)
        time_BxNxWxSxK = shifted**2 / (2 * rf["duration"][:, :, None, None, None] ** 2)
        bias = -(space_BxNxK[:, :, None, None] + time_BxNxWxSxK)
        bias = jnp.where(is_video_K, bias, 0.0).transpose(0, 2, 1, 3, 4).reshape(b, w, n * per, -1)
        return jnp.pad(bias, ((0, 0), (0, 0), (0, num_queries - n * per), (0, 0)))

    def _population_state(self, responses_BxTxN, visible_BxTxN, weights_BxNxK, neuron_index_BxN,
                          detach_offsets: bool = False) -> jax.Array:
        """(B, T, K): at each sample, the mean over visible neurons of (response - offset) x the neuron's weights:
        with the embeddings, what the population decoder maps to the channels and the population readout to the
        neurons; with each neuron's own decoding row, that decoder's per-neuron part. Samples without a visible
        neuron give 0, so hidden responses never reach it. detach_offsets: no gradient reaches the offsets.

        The mean is scaled by sqrt(max_neurons): responses arrive at unit std, so with a full population each
        dimension has about unit variance and the decoder's weights are of order one, within reach of Adam's
        lr-sized steps (unscaled, a weakly tuned channel needs weights of order sqrt(N) / its correlation)."""
        offset_BxN = self.identity.offset(neuron_index_BxN)
        if detach_offsets:
            offset_BxN = jax.lax.stop_gradient(offset_BxN)
        deviation_BxTxN = jnp.where(visible_BxTxN, responses_BxTxN - offset_BxN[:, None], 0.0)
        count_BxTx1 = jnp.maximum(visible_BxTxN.sum(-1, keepdims=True), 1).astype(jnp.float32)
        pooled_BxTxK = jnp.einsum("btn,bnk->btk", deviation_BxTxN, weights_BxNxK.astype(jnp.float32)) / count_BxTx1
        return pooled_BxTxK * np.sqrt(self.config.max_neurons)

    def _factor_completion(self, responses_BxTxN, visible_BxTxN, emb_BxNxE,
                           neuron_index_BxN) -> tuple[jax.Array, jax.Array]:
        """(B, N, T) logits of the factor readout, gain x l_n . f_t, and the factors f (B, T, K). Loadings l_n are a
        linear map of neuron n's embedding and f_t = (sum_v l_v l_v^T + I)^-1 sum_v l_v (x_vt - offset_v) over the
        neurons v visible at t (the posterior mean of unit-variance factors under unit noise). No visible neuron:
        f_t = 0. With factor dynamics, f_t is the smoothed mean of AR(1) factors given every visible sample instead."""
        loadings_BxNxK = self.factor_loadings(emb_BxNxE.astype(jnp.float32))
        deviation_BxTxN = responses_BxTxN - self.identity.offset(neuron_index_BxN)[:, None]
        seen_BxTxN = visible_BxTxN.astype(jnp.float32)
        deviation_BxTxN = jnp.where(visible_BxTxN, deviation_BxTxN, 0.0)
        k = loadings_BxNxK.shape[-1]
        gram_BxTxKxK = jnp.einsum("btn,bnk,bnj->btkj", seen_BxTxN, loadings_BxNxK, loadings_BxNxK)
        projected_BxTxK = jnp.einsum("btn,bnk->btk", deviation_BxTxN, loadings_BxNxK)
        # Without dynamics every factor has persistence 0, where the smoother is the per-sample ridge estimate.
        if self.factor_log_timescale is None:
            persistence_K = jnp.zeros(k, jnp.float32)
        else:
            persistence_K = jnp.exp(-1.0 / (jnp.exp(self.factor_log_timescale[...]) * self.config.sampling_rate_hz))
        factors_BxTxK = smoothed_factors(gram_BxTxKxK, projected_BxTxK, persistence_K)
        return self.factor_gain[...] * jnp.einsum("bnk,btk->bnt", loadings_BxNxK, factors_BxTxK), factors_BxTxK

    def _history(self, responses_BxTxN, visible_BxTxN, emb_BxNxE, neuron_index_BxN, detach: bool = False) -> jax.Array:
        """(B, N, T) logits of the history readout: sum over timescales k of w_k(neuron) x own_k(t) and
        v_k(neuron) x population_k(t), the filtered visible deviations (response - offset) of the neuron and the
        mean over visible neurons, from samples before t only. The mean is scaled by sqrt(max_neurons), as in
        `_population_state`, so that both traces are of unit scale and their weights of order one. detach: no
        gradient reaches the embeddings and offsets the readout reads (only its own weights train through it).
        With history_lags, plus the lag table's weighted sum of both deviations' last visible samples."""
        offset_BxN = self.identity.offset(neuron_index_BxN)
        if detach:
            offset_BxN, emb_BxNxE = jax.lax.stop_gradient((offset_BxN, emb_BxNxE))
        deviation_BxTxN = jnp.where(visible_BxTxN, responses_BxTxN - offset_BxN[:, None], 0.0)
        count_BxT = jnp.maximum(visible_BxTxN.sum(-1), 1).astype(jnp.float32)
        population_BxT = deviation_BxTxN.sum(-1) / count_BxT * np.sqrt(self.config.max_neurons)
        filters_KxTxT = history_filters(self.config.num_samples, self.config.sampling_rate_hz)
        own_BxKxTxN = jnp.einsum("kts,bsn->bktn", filters_KxTxT, deviation_BxTxN)
        population_BxKxT = jnp.einsum("kts,bs->bkt", filters_KxTxT, population_BxT)
        weights_BxNx2K = self.history_readout(emb_BxNxE.astype(jnp.float32))
        k = len(HISTORY_TIMESCALES_S)
        history_BxNxT = (jnp.einsum("bktn,bnk->bnt", own_BxKxTxN, weights_BxNx2K[..., :k])
                         + jnp.einsum("bkt,bnk->bnt", population_BxKxT, weights_BxNx2K[..., k:]))
        if self.history_lags is None:
            return history_BxNxT
        lags_Tx2xL = self.history_lags[...]
        own_BxTxNxL, own_gap_BxTxN = last_visible_lags(deviation_BxTxN, visible_BxTxN, lags_Tx2xL.shape[-1])
        pop_BxTx1xL, pop_gap_BxTx1 = last_visible_lags(population_BxT[..., None],
                                                       visible_BxTxN.any(-1, keepdims=True), lags_Tx2xL.shape[-1])
        lagged_BxTxN = ((own_BxTxNxL * lags_Tx2xL[own_gap_BxTxN, 0]).sum(-1)
                        + (pop_BxTx1xL * lags_Tx2xL[pop_gap_BxTx1, 1]).sum(-1))
        return history_BxNxT + lagged_BxTxN.transpose(0, 2, 1)

    def _mix(self, layer, is_local, bins_BxWxLxD, bins_valid_BxWxL, bins_t_WxL, globals_BxQxD, globals_valid_BxQ,
             globals_t_Q, deterministic):
        """One self-attention layer over the binned and global token sets."""
        b, w, p, d = bins_BxWxLxD.shape
        q_bin, (k_bin, v_bin) = layer.queries(bins_BxWxLxD, bins_t_WxL), layer.keys_values(bins_BxWxLxD, bins_t_WxL)
        q_glob = layer.queries(globals_BxQxD, globals_t_Q)
        k_glob, v_glob = layer.keys_values(globals_BxQxD, globals_t_Q)
        flat = lambda a: a.reshape((b, w * p) + a.shape[3:])  # noqa: E731
        k_all = jnp.concatenate([flat(k_bin), k_glob], axis=1)
        v_all = jnp.concatenate([flat(v_bin), v_glob], axis=1)
        valid_all = jnp.concatenate([flat(bins_valid_BxWxL), globals_valid_BxQ], axis=1)
        if is_local:
            o_bin = local_attention(q_bin, k_bin, v_bin, bins_valid_BxWxL, self.config.local_window_bins,
                                    k_glob, v_glob, globals_valid_BxQ, kernel=layer.kernel)
        else:
            o_bin = attend(flat(q_bin), k_all, v_all, valid_all, kernel=layer.kernel).reshape(q_bin.shape)
        o_glob = attend(q_glob, k_all, v_all, valid_all, kernel=layer.kernel)
        bins_BxWxLxD = constrain(layer.finish(bins_BxWxLxD, o_bin, deterministic), ("batch", "length", None, "embed"))
        globals_BxQxD = constrain(layer.finish(globals_BxQxD, o_glob, deterministic), ("batch", "latents", "embed"))
        return bins_BxWxLxD, globals_BxQxD


def count_parameters(model: OmniMouse) -> dict[str, int]:
    """Parameter counts: total, core (all but the neuron/session/animal tables), backbone (the self-attention
    stack, the part the paper's size names refer to), embedding (the tables), per_session (table parameters per
    session, on average), per_neuron (one neuron's table row, bias and offset)."""
    sizes = {}
    for path, param in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        sizes[tuple(str(p) for p in path)] = int(np.prod(param.shape))
    total = sum(sizes.values())
    tables = {name: sum(v for k, v in sizes.items() if k[:2] == ("identity", name)) for name in NeuronIdentity.TABLES}
    embedding = sum(tables.values())
    backbone = sum(v for k, v in sizes.items() if k[0] == "layers")
    num_sessions = model.config.num_sessions
    return {
        "total": total,
        "core": total - embedding,
        "backbone": backbone,
        "embedding": embedding,
        "per_session": (embedding - tables["animal_table"]) // num_sessions,
        "per_neuron": sum(v for k, v in tables.items() if k.startswith("neuron_")) // model.config.num_neuron_rows,
    }
