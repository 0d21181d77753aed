"""OmniMouse pretraining config, one variant per model size.

    omnimouse train --config experiments/configs/omnimouse.py:size=tiny --workdir W

Sizes: `test` (unit tests, seconds on CPU), `tiny` (the CPU demo), and the paper's 1M, 5M, 20M, 80M, 300M (widths,
depths, heads, video stages and local:global ratios from the paper's table; the other settings follow its code except
where docs/fidelity.md lists a departure, with its reason and measured effect).

About the size names: the paper names sizes by the self-attention stack (about 12 d_model^2 per layer: 4 for
attention, 8 for the gated FFN with hidden multiple 2.67). Our `backbone` count reproduces that within 25% for
5M..300M (4.75M, 19.0M, 85.4M, 302M); 1M is 1.58M because the paper's 1M has 2 layers at d_model 256. The `core`
count (everything but the per-session tables) adds the encoder and decoder blocks, the latents, the per-channel
behavior maps and the video encoder: 6.1M, 9.3M, 34M, 110M, 341M. So core is within 25% of the name only for
300M; at small sizes it is dominated by parts the paper fixes independently of the size (the video encoder alone
is 2.1M for [2, 2] stages and 6.9M for [2, 8], at width 128 doubling per stage). benchmarks/model_forward.py
prints every count.
"""
from __future__ import annotations

import ml_collections

from omnimouse_jax.errors import UserError

# Examples per device per pass (config.train.device_microbatch): the most that keep a training step's memory within
# 16 GiB per device for 1M..20M and within an H200's for 80M and 300M (fsdp 8), at 4096 neurons, bf16
# (docs/performance.md).
DEVICE_MICROBATCH = {"1M": 2, "5M": 2, "20M": 1, "80M": 1, "300M": 1}
# name: (d_model, num_layers, num_heads, video stages, local:global)
PAPER_SIZES = {
    "1M": (256, 2, 4, (2, 2), (1, 1)),
    "5M": (256, 6, 4, (2, 2), (5, 1)),
    "20M": (512, 6, 8, (2, 8), (5, 1)),
    "80M": (768, 12, 12, (2, 8), (5, 1)),
    "300M": (1024, 24, 16, (2, 8), (5, 1)),
}
SIZES = ("test", "tiny") + tuple(PAPER_SIZES)


def _paper_model(size: str) -> ml_collections.ConfigDict:
    d_model, layers, heads, stages, ratio = PAPER_SIZES[size]
    return ml_collections.ConfigDict(dict(
        # Filled from the store by the trainer; the defaults describe one Sensorium-sized session.
        num_neuron_rows=8000, num_sessions=1, num_animals=1,
        max_neurons=4096, num_samples=60, sampling_rate_hz=30.0, behavior_channels=5, frame_shape=(36, 64),
        video_mean=113.0, video_std=59.0,
        d_model=d_model, num_heads=heads, num_layers=layers, local_global_ratio=ratio, local_window_bins=1,
        ffn_mult=2.67, decoder_ffn_mult=4.0, d_neuron_embed=256,
        response_window=10, response_stride=5, readout_step=5, latent_window=10, latents_per_bin=640,
        num_global_latents=256, rope_min_period_s=2 / 30, rope_max_period_s=8.0,
        softplus_beta=0.1, dropout=0.0, dtype="bfloat16",
        # attention: auto | xla | blockwise | cudnn | splash; remat: none | attention | block (docs/performance.md).
        attention="auto", remat="none",
        # The paper's code: a behavior query per channel, neuron tokens = response features + embedding, random
        # embeddings. tiny and test use our readout and initialization instead (see model_config).
        behavior_readout="per_channel", response_gain=False, neuron_embed_init="random", population_decoder=False,
        population_decoder_lags=0, population_decoder_neurons=False,
        # The paper's code: the decoder's queries read the video tokens and latents of their time window and the
        # global tokens; the session's and animal's embedding is added to every latent and behavior token.
        decoder_video_keys=True, decoder_window_bins=1, video_readout_prior="none", meta_to_latents=True,
        neuron_rf_init="centre", decoder_video_attention="joint", readout_gain=False, video_skip_readout=False,
        video_factorized_readout=False, population_readout=False, history_readout=False, history_residual=False,
        history_lags=0, factor_readout=0, factor_dynamics=False, factor_behavior=False,
        poisson_eps=1e-5, poisson_clamp=100.0, behavior_clamp=10.0, behavior_weight=0.1,
        video=dict(embed_dim=128, num_heads=2, stages=stages, patch_kernel=(6, 7, 7), patch_stride=(2, 2, 2),
                   patch_padding=(2, 1, 3), q_stride=(1, 2, 2), mask_unit=(1, 8, 8), mlp_ratio=2.67,
                   patch_impl="auto", encoder="hiera"),
        # patch_impl auto: "matmul" on CPU, "conv" elsewhere; encoder: model/video.py.
    ))


def model_config(size: str) -> ml_collections.ConfigDict:
    """The config.model section for one size."""
    if size not in SIZES:
        raise UserError(f"config size={size!r}: expected one of {', '.join(SIZES)}")
    if size in PAPER_SIZES:
        return _paper_model(size)
    model = _paper_model("1M")
    model.dtype = "float32"
    # Time-resolved behavior queries, neuron-specific response gains, embeddings that start at each neuron's
    # behavior tuning and a linear population decoder beside the behavior readout, reading the population over
    # +-4 samples (omnimouse_jax/model/omnimouse.py). See docs/evaluation.md ("Readout and initialization", "The
    # population decoder", "The decoder's window"); not yet validated at the paper's sizes.
    model.update(behavior_readout="per_step", response_gain=True, neuron_embed_init="behavior_tuning",
                 population_decoder=True, population_decoder_lags=4)
    # The video readout: each neuron reads every video stage through its own signed spatial map and channel weights,
    # started at its reverse-correlation map (the factorized readout); where the decoder reads video keys, a learned
    # spatio-temporal Gaussian on its logits over them, in a softmax of their own; the neuron's embedding scales the
    # decoder's output before the shared head (docs/evaluation.md, "The factorized video readout").
    model.update(video_readout_prior="gaussian", neuron_rf_init="mapped", decoder_video_attention="separate",
                 readout_gain=True, video_factorized_readout=True)
    # Population completion and forecasting through 8 population factors with AR(1) dynamics, each neuron's loadings a
    # linear map of its embedding, the factors' mean the Kalman smoother's over the visible responses; the behavior
    # readout also decodes the factors (docs/evaluation.md, "The factor readout", "Behavior from the factors").
    model.update(factor_readout=8, factor_dynamics=True, factor_behavior=True)
    if size == "tiny":
        # With the factorized readout carrying the stimulus, the decoder's video keys (and their prior) and local
        # layers reaching the neighbouring bins add nothing measurable at tiny's budget and cost a quarter of its
        # step (docs/fidelity.md, rows 1 and 5); `test` keeps them so that every path stays exercised.
        model.update(decoder_video_keys=False, video_readout_prior="none", decoder_video_attention="joint",
                     local_window_bins=0)
        # Each neuron's own recent past for forecasting: the history readout, fit to what the rest of the model
        # leaves, so the rest trains as without it, with its last 5 visible samples weighed per gap to the target
        # (docs/evaluation.md, "The residual history readout", "The history readout's lags").
        model.update(history_readout=True, history_residual=True, history_lags=5)
        # Each neuron's own row of decoding weights beside the embedding-based population decoder (docs/evaluation.md,
        # "Each neuron's own decoding weights").
        model.population_decoder_neurons = True
        # 128 neurons per example: a much cheaper step, and the paper's regimes (64 visible + 64 held out) still fit.
        # Softplus(beta=1) readout: responses arrive divided by their std (mean ~0.4), where Softplus(0.1)/0.1 has
        # slope 0.04, so the readout's weights must grow ~25x before rates can move; at beta 1 the slope is 0.34.
        # Both measured in docs/evaluation.md, "How the training budget was chosen for tiny".
        model.softplus_beta = 1.0
        model.update(num_neuron_rows=2048, num_sessions=8, num_animals=4, max_neurons=128, d_model=64, num_heads=4,
                     num_layers=2, d_neuron_embed=32, latents_per_bin=16, num_global_latents=16)
        model.video.update(embed_dim=32, num_heads=2, stages=(1, 1), patch_kernel=(6, 7, 7), patch_stride=(6, 4, 4),
                           patch_padding=(0, 1, 3), mask_unit=(1, 4, 4))
    else:  # test: the smallest model that still exercises every part
        model.update(num_neuron_rows=64, num_sessions=2, num_animals=2, max_neurons=32, d_model=32, num_heads=2,
                     num_layers=2, d_neuron_embed=16, latents_per_bin=4, num_global_latents=4,
                     decoder_ffn_mult=2.67)
        model.video.update(embed_dim=16, num_heads=1, stages=(1,), patch_kernel=(10, 12, 16),
                           patch_stride=(10, 12, 16), patch_padding=(0, 0, 0), mask_unit=(1, 3, 4))
    return model


def _parse(arg: str) -> dict[str, str]:
    fields = {}
    for item in filter(None, (part.strip() for part in (arg or "").split(","))):
        key, sep, value = item.partition("=")
        if not sep or key not in ("size",):
            raise UserError(f"config argument {item!r}: expected size=S with S in {', '.join(SIZES)}")
        fields[key] = value
    return fields


def get_config(arg: str = "size=tiny") -> ml_collections.ConfigDict:
    """The full config for `size` (see the module docstring for the command that runs it)."""
    size = _parse(arg).get("size", "tiny")
    model = model_config(size)
    cpu = size in ("test", "tiny")
    config = ml_collections.ConfigDict()
    config.size = size
    config.seed = 0
    config.model = model
    # sessions: "all", a list of names or "share:F" (a nested share of the sessions, data/layout.py); fraction: the
    # first share of each session's train trials (nested subsets); weighting: "balanced" draws every session equally
    # often, as the paper's loader cycles them, "proportional" by its number of windows (docs/evaluation.md).
    config.data = ml_collections.ConfigDict(dict(
        root="data/store", sessions="all", fraction=1.0, weighting="balanced", num_threads=4, prefetch=8))
    # tiny's 1000 steps, validated and saved every 250: under 10 minutes on 2 quiet cores (docs/evaluation.md,
    # "The whole test split, and 1000 steps in the same ten minutes"); still far from converged.
    cpu_period = {"test": 100, "tiny": 250}.get(size)
    config.train = ml_collections.ConfigDict(dict(
        steps={"test": 200, "tiny": 1000}.get(size, 1_000_000), batch_size=8 if cpu else 64,
        log_every_steps=10 if cpu else 100, eval_every_steps=cpu_period or 10_000, eval_batches=8,
        tensorboard=True, compile_cache=True,
        # Examples per device per pass: each device's share of the batch runs in passes of this many, gradients
        # added (the same update in less memory); 0: one pass (docs/performance.md).
        device_microbatch=DEVICE_MICROBATCH.get(size, 0)))
    # Mesh axis sizes; -1 takes every device the other axes leave.
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    config.checkpoint = ml_collections.ConfigDict(dict(every_steps=cpu_period or 5000, keep=3, use_async=True))
    # AdamW as in the paper; per-session parameters (neuron/session/animal tables) get their own lr and decay.
    # tiny: a 0.4M-parameter model on a CPU budget of a few hundred steps takes (and needs) a larger step than the
    # paper's 7e-4 (docs/evaluation.md, "How the training budget was chosen for tiny").
    config.optim = ml_collections.ConfigDict(dict(
        lr=2e-3 if size == "tiny" else 7e-4, b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.1, session_lr=3e-3,
        session_weight_decay=1e-3,
        warmup_steps=30 if cpu else 20_000, clip_norm=1.0,
        # tiny anneals its short run (cosine to 0.1 x peak): docs/evaluation.md, "Budget"; the paper keeps it constant.
        schedule="cosine" if size == "tiny" else "constant", final_lr_fraction=0.1 if size == "tiny" else 0.0,
        grad_accum_steps=1,
        # 0: a non-finite loss stops the run. K > 0: skip such steps (model and optimizer untouched, counted in
        # metrics.jsonl as skipped_nonfinite) and stop at the K-th in a row.
        skip_nonfinite=0))
    # Neuron counts of the training mix's population families (paper: 64, 256, 1024 of up to 4096 neurons).
    # mix: "paper" (the multi-task training mix) or comma-separated preset names (a specialized single-task model).
    # draw: "example" (a strategy per example, so every batch mixes tasks) or "batch" (one per global batch).
    config.masking = ml_collections.ConfigDict(dict(
        mix="paper", draw="example",
        neuron_counts={"test": (4, 8, 16), "tiny": (16, 32, 64)}.get(size, (64, 256, 1024)),
        max_reconstructed=3072,
        # stimulus_share: the probability of drawing one of stimulus_presets (comma-separated preset names, in equal
        # parts) instead of the paper mix; 0: the paper's uniform draw over its strategies. tiny: a quarter of its
        # examples predict responses from video and behavior alone, where the paper mix gives 2 of 108 strategies to
        # the stimulus alone and trains the readout on a third as many video-covered targets (docs/evaluation.md,
        # "The stimulus share of the training mix").
        stimulus_share=0.25 if size == "tiny" else 0.0, stimulus_presets="video_behavior"))
    return config
