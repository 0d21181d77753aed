"""Digital mice: synthetic recording sessions with a known ground truth, and the `omnimouse data synth` command.

Each mouse is one session. Every array derives from `DigitalMiceConfig.seed` (same seed, same bytes). Generative model:

  video     Clips with a 1/f spatial amplitude spectrum whose Fourier phases drift slowly and translate with a smooth
            random motion; scene cuts switch to a fresh spectrum. uint8 (T, H, W), mean ~113, std ~50.
  stimulus  x_t = (video_t - 113) / 59, gray (x = 0) before the trial starts. Neuron n has a spatial Gabor filter G_n
            (complex cells also a quadrature partner G'_n) and a causal temporal kernel k_n over K frames:
                s_n(t) = sum_tau k_n[tau] <G_n, x_{t - tau}>
            drive u_n(t) = max(s_n, 0) (simple) or sqrt(s_n^2 + s'_n^2) (complex), divided by drive_scale_n (the
            neuron's mean drive over calibration clips) so that it averages about 1.
  behavior  An arousal state a_t (AR(1), tau 2 s) drives running speed and pupil dilation, each with its own AR(1)
            noise; the pupil center fixates, drifts and makes saccades.
  latent    z_t in R^D, AR(1): z_t = rho z_{t-1} + sqrt(1 - rho^2) e_t, rho = exp(-1 / (latent_tau_s * fs)); the first
            innovation shares arousal's innovation, so the population state also carries behavior.
  rate      lambda_n(t) = base_n * exp(g_run_n r_t + g_pupil_n p_t + g_eye_n . e_t + w_n . z_t) * (offset_n + u_n(t))
            where (r, p, e) = (behavior - behavior_center) / behavior_scale for running speed, pupil dilation and the
            two pupil-center coordinates.
  response  y_n(t) = q_n * Poisson(lambda_n(t) / q_n * G), G ~ Gamma(NOISE_SHAPE, 1 / NOISE_SHAPE) per sample:
            non-negative, sparse and over-dispersed like deconvolved calcium, with E[y] = lambda exactly.

Tiers: `train` (unique clips), `oracle` (a few clips, each repeated with fresh behavior, latent and noise; oracle clips
are shared by all mice, as in Sensorium) and `final_test_main` (unique clips), in a seeded random order.

Outputs: a session store (true rates as the `true_rates` extra field; ground truth in
`<root>/ground_truth/<session>.npz`) or Sensorium 2023 folders (ground truth in `<session>/meta/ground_truth.npz`).
The npz holds every parameter above plus `latent` (trials, T, D), `video_ids` and `tiers` (trials,), so `true_rates`
can be recomputed exactly from the stored video, behavior and pupil center.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from omnimouse_jax.data.schema import BEHAVIOR_CHANNELS
from omnimouse_jax.data.store import SessionWriter
from omnimouse_jax.errors import UserError
from omnimouse_jax.files import atomic_open

TIERS = ("train", "oracle", "final_test_main")
LAYOUTS = ("store", "sensorium")
VIDEO_MEAN, VIDEO_STD = 113.0, 59.0  # the paper's video normalization; neurons see the video standardized by it

# Planted constants: r, p, e in the rate formula are (running, pupil, pupil_x, pupil_y) minus center, over scale.
BEHAVIOR_CENTER = np.array([4.0, 20.0, 160.0, 120.0])
BEHAVIOR_SCALE = np.array([4.0, 4.0, 8.0, 6.0])
AROUSAL_TAU_S = 2.0
TEMPORAL_KERNEL_FRAMES = 10
NOISE_SHAPE = 2.0  # gamma shape of the event-count mixing; smaller is noisier
CALIBRATION_CLIPS = 2

# Independent random streams: rng([seed, stream, ...]) keeps every part reproducible on its own.
_VIDEO, _NEURONS, _TRIAL, _ORDER, _CALIBRATION = range(5)


@dataclasses.dataclass(frozen=True)
class DigitalMiceConfig:
    """What to synthesize. `neurons` is one count for every mouse, one count per mouse, or None for varied defaults
    (128, 192, 256, 320, 128, ...). `trials` counts train trials; each mouse also gets `oracle_videos` x
    `oracle_repeats` oracle trials and `test_trials` final_test_main trials, each `trial_length` samples long."""

    mice: int = 3
    neurons: int | tuple[int, ...] | None = None
    trials: int = 40
    oracle_videos: int = 2
    oracle_repeats: int = 5
    test_trials: int = 10
    trial_length: int = 300
    frame_shape: tuple[int, int] = (36, 64)
    sampling_rate: float = 30.0
    latent_dim: int = 4
    latent_tau_s: float = 0.7
    complex_fraction: float = 0.5
    # Scales of the modulatory terms (behavior gains, latent loadings) and the mean event count per sample: the
    # defaults make the stimulus explain most of the true rates' variance, as in visual cortex under natural movies
    # (docs/data.md gives the measured split).
    behavior_gain: float = 0.5
    latent_gain: float = 0.6
    events_per_sample: float = 1.25
    seed: int = 0

    def __post_init__(self):
        positive = {"mice": self.mice, "trials": self.trials, "oracle_repeats": self.oracle_repeats,
                    "trial_length": self.trial_length, "latent_dim": self.latent_dim}
        for key, value in positive.items():
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise UserError(f"DigitalMiceConfig.{key}: expected a positive integer, got {value!r}")
        for key in ("oracle_videos", "test_trials"):
            value = getattr(self, key)
            if not isinstance(value, (int, np.integer)) or value < 0:
                raise UserError(f"DigitalMiceConfig.{key}: expected a non-negative integer, got {value!r}")
        if self.trial_length < TEMPORAL_KERNEL_FRAMES:
            raise UserError(f"DigitalMiceConfig.trial_length: expected at least {TEMPORAL_KERNEL_FRAMES} samples, "
                            f"got {self.trial_length}")
        if len(self.frame_shape) != 2 or min(self.frame_shape) < 8:
            raise UserError(f"DigitalMiceConfig.frame_shape: expected (H, W) with both >= 8, got {self.frame_shape!r}")
        if self.sampling_rate <= 0 or self.latent_tau_s <= 0 or not 0 <= self.complex_fraction <= 1:
            raise UserError("DigitalMiceConfig: expected sampling_rate > 0, latent_tau_s > 0 and "
                            "0 <= complex_fraction <= 1")
        if self.behavior_gain < 0 or self.latent_gain < 0 or self.events_per_sample <= 0:
            raise UserError("DigitalMiceConfig: expected behavior_gain >= 0, latent_gain >= 0 and "
                            "events_per_sample > 0")
        counts = self.neuron_counts()
        if any(not isinstance(n, (int, np.integer)) or n < 1 for n in counts):
            raise UserError(f"DigitalMiceConfig.neurons: expected positive integers, got {self.neurons!r}")

    def neuron_counts(self) -> tuple[int, ...]:
        """The number of neurons of each mouse."""
        if self.neurons is None:
            return tuple(128 + 64 * (m % 4) for m in range(self.mice))
        if isinstance(self.neurons, (int, np.integer)):
            return (int(self.neurons),) * self.mice
        if len(self.neurons) != self.mice:
            raise UserError(f"DigitalMiceConfig.neurons: expected one count or {self.mice} (one per mouse), "
                            f"got {len(self.neurons)}")
        return tuple(self.neurons)

    @property
    def latent_ar(self) -> float:
        """The latent AR(1) coefficient per sample."""
        return float(np.exp(-1.0 / (self.latent_tau_s * self.sampling_rate)))

    def trials_per_mouse(self) -> int:
        """Train, oracle and final_test_main trials of one mouse together."""
        return self.trials + self.oracle_videos * self.oracle_repeats + self.test_trials

    def digest(self) -> str:
        """A deterministic 32-hex fingerprint of the config (the `Video-<hex>` part of session names)."""
        fields = dataclasses.asdict(self) | {"neurons": list(self.neuron_counts())}
        return hashlib.md5(json.dumps(fields, sort_keys=True, default=list).encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class SynthTrial:
    """One synthesized trial; time on the first axis."""

    index: int
    tier: str
    video_id: int
    video: np.ndarray  # (T, H, W) uint8
    responses: np.ndarray  # (T, N) float32
    true_rates: np.ndarray  # (T, N) float32, E[responses]
    behavior: np.ndarray  # (T, 5) float32 in BEHAVIOR_CHANNELS order
    pupil_center: np.ndarray  # (T, 2) float32
    latent: np.ndarray  # (T, D) float32


@dataclasses.dataclass(frozen=True)
class DigitalMouse:
    """One mouse: identity, neurons, ground-truth parameters and the trial plan. `trials()` synthesizes the trials."""

    config: DigitalMiceConfig
    mouse_index: int
    animal: int
    name: str
    unit_ids: np.ndarray  # (N,) int32
    coordinates: np.ndarray  # (N, 3) float32, micrometres
    ground_truth: dict  # name -> array; see the module docstring
    plan: tuple[tuple[str, int], ...]  # (tier, video_id) per trial, in source order

    @property
    def n_neurons(self) -> int:
        """The number of neurons."""
        return len(self.unit_ids)

    def trials(self) -> Iterator[SynthTrial]:
        """Yields every trial in source order; oracle clips are synthesized once and reused."""
        cfg, gt = self.config, self.ground_truth
        drives = {}
        for index, (tier, video_id) in enumerate(self.plan):
            if video_id not in drives:
                video = _movie(cfg, video_id)
                drives[video_id] = (video, stimulus_drive(video, gt))
            video, drive_TxN = drives[video_id]
            if tier != "oracle":
                del drives[video_id]
            rng = np.random.default_rng([cfg.seed, _TRIAL, self.mouse_index, index])
            behavior, pupil_center, latent = _behavior_and_latent(cfg, rng)
            rates = rate_from_parts(drive_TxN, behavior, pupil_center, latent, gt)
            quantum = gt["quantum"]
            # Gamma-mixed Poisson events: over-dispersed like deconvolved calcium, and still E[responses] = rates.
            overdispersion = rng.gamma(NOISE_SHAPE, 1.0 / NOISE_SHAPE, rates.shape)
            responses = quantum * rng.poisson(rates / quantum * overdispersion)
            yield SynthTrial(index, tier, video_id, video, responses.astype(np.float32), rates.astype(np.float32),
                             behavior.astype(np.float32), pupil_center.astype(np.float32), latent.astype(np.float32))

    def provenance(self, ground_truth_path: str) -> dict:
        """Small JSON summaries of the ground truth, for the session manifest."""
        gt = self.ground_truth
        return {
            "source": "digital_mice",
            "generator": "omnimouse_jax.data.synthetic",
            "config": _jsonable(dataclasses.asdict(self.config) | {"neurons": list(self.config.neuron_counts())}),
            "mouse_index": self.mouse_index,
            "ground_truth": ground_truth_path,
            "latent_ar": float(gt["latent_ar"]),
            "latent_dim": int(gt["loadings"].shape[1]),
            "fraction_complex": float(gt["is_complex"].mean()),
            "mean_running_gain": float(gt["gain_running"].mean()),
            "mean_pupil_gain": float(gt["gain_pupil"].mean()),
        }


def generate_mouse(config: DigitalMiceConfig, mouse_index: int) -> DigitalMouse:
    """Draws mouse `mouse_index`'s neurons and ground truth; its trials are synthesized lazily by `.trials()`."""
    if not 0 <= mouse_index < config.mice:
        raise UserError(f"mouse_index: expected 0..{config.mice - 1}, got {mouse_index}")
    n = config.neuron_counts()[mouse_index]
    rng = np.random.default_rng([config.seed, _NEURONS, mouse_index])
    height, width = config.frame_shape
    coordinates = np.stack([rng.uniform(0, 600, n), rng.uniform(0, 600, n), rng.uniform(100, 400, n)], 1)
    # Retinotopy: receptive-field centers follow cortical position, with scatter.
    center = np.stack([coordinates[:, 0] / 600 * (width - 12) + 6 + rng.normal(0, 2, n),
                       coordinates[:, 1] / 600 * (height - 8) + 4 + rng.normal(0, 1.5, n)], 1)
    size = min(height / 36, width / 64)
    gabor = {
        "rf_center": center,
        "rf_sigma": rng.uniform(2.5, 5.0, n) * size,
        "rf_frequency": rng.uniform(0.06, 0.16, n) / size,  # cycles per pixel
        "rf_orientation": rng.uniform(0, np.pi, n),
        "rf_phase": rng.uniform(0, 2 * np.pi, n),
        "rf_aspect": rng.uniform(0.5, 1.0, n),
    }
    is_complex = rng.random(n) < config.complex_fraction
    filters = gabor_filters(**gabor, frame_shape=config.frame_shape)
    filters[~is_complex, 1] = 0.0
    latent_dim = config.latent_dim
    gt = {
        **gabor,
        "filters": filters.astype(np.float32),
        "is_complex": is_complex,
        "temporal_kernels": _temporal_kernels(rng, n),
        "offset": rng.uniform(0.2, 0.8, n),
        "gain_running": config.behavior_gain * rng.normal(0.3, 0.2, n),
        "gain_pupil": config.behavior_gain * rng.normal(0.1, 0.15, n),
        "gain_eye": config.behavior_gain * rng.normal(0.0, 0.1, (n, 2)),
        "loadings": config.latent_gain * rng.normal(0.0, 0.5 / np.sqrt(latent_dim), (n, latent_dim)),
        "quantum": rng.lognormal(0.0, 0.5, n),  # response units per event, like deconvolved calcium amplitudes
        "latent_ar": np.float64(config.latent_ar),
        "behavior_center": BEHAVIOR_CENTER,
        "behavior_scale": BEHAVIOR_SCALE,
    }
    events_per_sample = rng.lognormal(np.log(config.events_per_sample), 0.4, n)
    calibration = [_movie(config, c, stream=(_CALIBRATION, mouse_index)) for c in range(CALIBRATION_CLIPS)]
    gt["drive_scale"] = np.ones(n)  # unscaled drive first, to measure its mean
    gt["drive_scale"] = np.mean([stimulus_drive(v, gt).mean(0) for v in calibration], 0)
    gt["base"] = gt["quantum"] * events_per_sample / (1.0 + gt["offset"])

    oracle = [("oracle", v) for v in range(config.oracle_videos) for _ in range(config.oracle_repeats)]
    first = config.oracle_videos + mouse_index * (config.trials + config.test_trials)
    train = [("train", first + j) for j in range(config.trials)]
    test = [("final_test_main", first + config.trials + j) for j in range(config.test_trials)]
    plan = train + oracle + test
    order = np.random.default_rng([config.seed, _ORDER, mouse_index]).permutation(len(plan))
    animal = 90001 + mouse_index
    return DigitalMouse(
        config=config, mouse_index=mouse_index, animal=animal,
        name=f"dynamic{animal}-1-1-Video-{config.digest()}",
        unit_ids=np.arange(1, n + 1, dtype=np.int32), coordinates=coordinates.astype(np.float32),
        ground_truth=gt, plan=tuple(plan[i] for i in order),
    )


def gabor_filters(rf_center, rf_sigma, rf_frequency, rf_orientation, rf_phase, rf_aspect, frame_shape):
    """Zero-mean, unit-norm Gabor pairs (N, 2, H, W): index 0 at `rf_phase`, index 1 in quadrature."""
    height, width = frame_shape
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    dx = x[None] - rf_center[:, 0, None, None]
    dy = y[None] - rf_center[:, 1, None, None]
    cos, sin = np.cos(rf_orientation)[:, None, None], np.sin(rf_orientation)[:, None, None]
    along, across = dx * cos + dy * sin, -dx * sin + dy * cos
    sigma = rf_sigma[:, None, None]
    envelope = np.exp(-(along**2 + (rf_aspect[:, None, None] * across) ** 2) / (2 * sigma**2))
    carrier = 2 * np.pi * rf_frequency[:, None, None] * along + rf_phase[:, None, None]
    pair = np.stack([envelope * np.cos(carrier), envelope * np.sin(carrier)], 1)
    pair -= pair.mean(axis=(2, 3), keepdims=True)
    return pair / np.linalg.norm(pair, axis=(2, 3), keepdims=True)


def _temporal_kernels(rng, n):
    """Causal kernels (N, K): a gamma-like lobe peaking `delay` frames after the frame, minus a slower lobe."""
    tau = np.arange(TEMPORAL_KERNEL_FRAMES, dtype=np.float64)
    delay = rng.uniform(1.5, 3.5, n)[:, None]
    rebound = rng.uniform(0.0, 0.6, n)[:, None]

    def lobe(d):
        return (tau / d) ** 2 * np.exp(2 * (1 - tau / d))

    kernels = lobe(delay) - rebound * lobe(2 * delay)
    return kernels / np.linalg.norm(kernels, axis=1, keepdims=True)


def stimulus_drive(video_TxHxW: np.ndarray, gt: dict) -> np.ndarray:
    """The stimulus term u_n(t) / drive_scale_n of the rate formula, (T, N) float64."""
    n = len(gt["is_complex"])
    complex_idx = np.flatnonzero(gt["is_complex"])
    filters = gt["filters"]
    bank_PxC = np.concatenate([filters[:, 0], filters[complex_idx, 1]]).reshape(n + len(complex_idx), -1).T
    x_TxP = (video_TxHxW.reshape(len(video_TxHxW), -1).astype(np.float32) - VIDEO_MEAN) / VIDEO_STD
    proj_TxC = (x_TxP @ bank_PxC).astype(np.float64)  # float32 matmul: the dominant cost
    kernels_CxK = np.concatenate([gt["temporal_kernels"], gt["temporal_kernels"][complex_idx]])
    s_TxC = np.zeros_like(proj_TxC)
    for lag in range(kernels_CxK.shape[1]):  # causal: frames before the trial are gray (x = 0)
        s_TxC[lag:] += kernels_CxK[:, lag] * proj_TxC[: len(proj_TxC) - lag]
    drive_TxN = np.maximum(s_TxC[:, :n], 0.0)
    drive_TxN[:, complex_idx] = np.hypot(s_TxC[:, complex_idx], s_TxC[:, n:])
    return drive_TxN / gt["drive_scale"]


def rate_from_parts(drive_TxN, behavior_TxC, pupil_center_Tx2, latent_TxD, gt) -> np.ndarray:
    """lambda (T, N) from the stimulus drive, behavior, pupil center and latent state (the module's rate formula)."""
    observed_Tx4 = np.concatenate([behavior_TxC[:, [1, 0]], pupil_center_Tx2], 1)
    r, p, ex, ey = ((observed_Tx4 - gt["behavior_center"]) / gt["behavior_scale"]).T
    log_gain = (np.outer(r, gt["gain_running"]) + np.outer(p, gt["gain_pupil"]) + np.outer(ex, gt["gain_eye"][:, 0])
                + np.outer(ey, gt["gain_eye"][:, 1]) + latent_TxD @ gt["loadings"].T)
    return gt["base"] * np.exp(log_gain) * (gt["offset"] + drive_TxN)


def _ar1(innovations_TxK, rho):
    """Stationary unit-variance AR(1) processes along axis 0 (`rho` one per column or shared), driven by unit-variance
    innovations and started from the stationary distribution."""
    x = np.empty_like(innovations_TxK)
    x[0] = innovations_TxK[0]
    scale = np.sqrt(1 - rho**2)
    for t in range(1, len(x)):  # a short recursion; a plain loop beats importing scipy.signal
        x[t] = rho * x[t - 1] + scale * innovations_TxK[t]
    return x


def _lowpass(x, rho):
    """Exponential smoothing with unit DC gain, starting at x[0]."""
    y = np.empty_like(x)
    y[0] = x[0]
    for t in range(1, len(x)):
        y[t] = rho * y[t - 1] + (1 - rho) * x[t]
    return y


def _behavior_and_latent(cfg: DigitalMiceConfig, rng):
    """Behavior (T, 5), pupil center (T, 2) and latent (T, D) for one trial."""
    t_len, fs = cfg.trial_length, cfg.sampling_rate

    def rho(tau_s):
        return np.exp(-1.0 / (tau_s * fs))

    # One recursion for all processes. Columns: arousal, running noise, pupil noise, gaze drift x/y, latent 0..D-1.
    innov = rng.standard_normal((t_len, 5 + cfg.latent_dim))
    # The first latent's innovations share arousal's, so the population state carries behavior beyond the gains.
    innov[:, 5] = 0.6 * innov[:, 0] + 0.8 * innov[:, 5]
    taus = np.array([AROUSAL_TAU_S, 0.5, 3.0, 1.5, 1.5])
    ar = _ar1(innov, np.concatenate([rho(taus), np.full(cfg.latent_dim, cfg.latent_ar)]))
    arousal, latent = ar[:, 0], ar[:, 5:]
    running = 4.0 * np.logaddexp(0.0, 3.0 * (0.8 * arousal + 0.6 * ar[:, 1]) - 1.5)
    pupil = 20.0 + 4.0 * _lowpass(0.75 * arousal + 0.66 * ar[:, 2], rho(0.5))  # the pupil lags arousal
    # Gaze: fixations on targets that jump at saccades (about 0.5 per second), plus a slow drift.
    saccade = rng.random(t_len) < 0.5 / fs
    targets = rng.normal(0, 1, (int(saccade.sum()) + 1, 2)) * [6.0, 4.0]
    pupil_center = BEHAVIOR_CENTER[2:] + targets[np.cumsum(saccade)] + ar[:, 3:5] * [2.0, 1.5]
    pupil_derivative = np.gradient(pupil) * fs
    behavior = np.stack([pupil, running, pupil_center[:, 0], pupil_center[:, 1], pupil_derivative], 1)
    return behavior, pupil_center, latent


def _movie(cfg: DigitalMiceConfig, video_id: int, stream=(_VIDEO,)) -> np.ndarray:
    """One natural-like clip (T, H, W) uint8; the same (seed, video_id) gives the same clip for every mouse."""
    rng = np.random.default_rng([cfg.seed, *stream, video_id])
    t_len, (height, width), fs = cfg.trial_length, cfg.frame_shape, cfg.sampling_rate
    fy, fx = np.fft.fftfreq(height)[:, None], np.fft.rfftfreq(width)[None, :]  # half spectrum: the frames are real
    amplitude = 1.0 / np.maximum(np.hypot(fy, fx), 1.0 / max(height, width))
    amplitude[0, 0] = 0.0
    n_scenes = max(1, round(t_len / (3.0 * fs)))  # a cut every ~3 s
    cuts = np.sort(rng.choice(np.arange(1, t_len), n_scenes - 1, replace=False))
    phase0 = rng.uniform(0, 2 * np.pi, (n_scenes, *amplitude.shape)).astype(np.float32)
    morph = rng.normal(0, 0.08, (n_scenes, *amplitude.shape)).astype(np.float32)  # radians per frame
    velocity = _ar1(rng.standard_normal((t_len, 2)), np.exp(-1.0 / fs)) * 0.4  # pixels per frame, smooth in time
    shift_Tx2 = np.cumsum(velocity, 0)
    # Each scene's phases rotate at a constant rate: a running product of unit rotations is much cheaper than exp.
    spectrum = np.empty((t_len, *amplitude.shape), np.complex64)
    for scene, (start, stop) in enumerate(zip([0, *cuts], [*cuts, t_len])):
        steps = np.repeat(np.exp(1j * morph[scene])[None], stop - start, 0)
        steps[0] = amplitude * np.exp(1j * phase0[scene])
        spectrum[start:stop] = np.cumprod(steps, axis=0)
    # Translation is a phase ramp, separable in x and y.
    spectrum *= np.exp(-2j * np.pi * fx * shift_Tx2[:, 0, None, None]).astype(np.complex64)
    spectrum *= np.exp(-2j * np.pi * fy * shift_Tx2[:, 1, None, None]).astype(np.complex64)
    frames = np.fft.irfft2(spectrum, s=(height, width))
    contrast = rng.uniform(0.7, 1.0) * VIDEO_STD
    frames = (frames - frames.mean()) * (contrast / frames.std()) + VIDEO_MEAN
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8)


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------------------- writers


def write_digital_mice(out, config: DigitalMiceConfig, layout: str = "store") -> list[str]:
    """Synthesizes every mouse of `config` into `out` as a session store or as Sensorium 2023 folders. A session of the
    same name is replaced. Returns the session names in mouse order."""
    if layout not in LAYOUTS:
        raise UserError(f"layout: expected one of {', '.join(LAYOUTS)}, got {layout!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write = _write_store_session if layout == "store" else _write_sensorium_session
    names = []
    for mouse_index in range(config.mice):
        mouse = generate_mouse(config, mouse_index)
        write(out, mouse)
        names.append(mouse.name)
    return names


def _ground_truth_arrays(mouse: DigitalMouse, latents: list[np.ndarray]) -> dict:
    return {**mouse.ground_truth, "latent": np.stack(latents), "video_ids": np.array([v for _, v in mouse.plan]),
            "tiers": np.array([t for t, _ in mouse.plan])}


def _save_npz_atomic(path: Path, arrays: dict) -> None:
    with atomic_open(path, "wb") as f:
        np.savez_compressed(f, **arrays)


def _histogram_statistics(counts: np.ndarray) -> dict:
    """mean, std, min, max and median (numpy's convention) of the values 0..255 counted in `counts`."""
    values = np.arange(len(counts), dtype=np.float64)
    total = counts.sum()
    mean = (counts * values).sum() / total
    present = np.flatnonzero(counts)
    cumulative = np.cumsum(counts)
    lower, upper = np.searchsorted(cumulative, [(total - 1) // 2 + 1, total // 2 + 1])
    return {"mean": mean, "std": np.sqrt((counts * (values - mean) ** 2).sum() / total), "min": present[0],
            "max": present[-1], "median": (lower + upper) / 2}


def _write_store_session(root: Path, mouse: DigitalMouse) -> None:
    gt_path = Path("ground_truth") / f"{mouse.name}.npz"
    latents = []
    # The animal is named as the Sensorium importer names it (the folder name's first part), so both layouts agree.
    with SessionWriter(root, mouse.name, animal=mouse.name.split("-")[0], n_neurons=mouse.n_neurons,
                       frame_shape=mouse.config.frame_shape, behavior_channels=list(BEHAVIOR_CHANNELS),
                       sampling_rate=mouse.config.sampling_rate, unit_ids=mouse.unit_ids,
                       coordinates=mouse.coordinates, provenance=mouse.provenance(gt_path.as_posix()),
                       extra_fields={"true_rates": mouse.n_neurons}, replace=True) as writer:
        for trial in mouse.trials():
            writer.add_trial(responses=trial.responses, video=trial.video, behavior=trial.behavior,
                             pupil_center=trial.pupil_center, tier=trial.tier, video_id=trial.video_id,
                             source_index=trial.index, true_rates=trial.true_rates)
            latents.append(trial.latent)
    _save_npz_atomic(root / gt_path, _ground_truth_arrays(mouse, latents))


def _write_sensorium_session(root: Path, mouse: DigitalMouse) -> None:
    """One Sensorium 2023 folder, frame axis last; built under a temporary name, then renamed into place."""
    tmp = root / f".{mouse.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)  # left by an interrupted run of this process id
    tmp.mkdir()
    try:
        data = {key: tmp / "data" / key for key in ("videos", "responses", "behavior", "pupil_center")}
        for folder in data.values():
            folder.mkdir(parents=True)
        latents, trials, pixel_counts = [], [], np.zeros(256, np.int64)
        for trial in mouse.trials():
            np.save(data["videos"] / f"{trial.index}.npy", np.ascontiguousarray(trial.video.transpose(1, 2, 0)))
            np.save(data["responses"] / f"{trial.index}.npy", np.ascontiguousarray(trial.responses.T))
            np.save(data["behavior"] / f"{trial.index}.npy", np.ascontiguousarray(trial.behavior[:, :2].T))
            np.save(data["pupil_center"] / f"{trial.index}.npy", np.ascontiguousarray(trial.pupil_center.T))
            latents.append(trial.latent)
            trials.append((trial.responses, trial.behavior[:, :2], trial.pupil_center))
            pixel_counts += np.bincount(trial.video.ravel(), minlength=256)
        meta = tmp / "meta"
        (meta / "neurons").mkdir(parents=True)
        np.save(meta / "neurons" / "unit_ids.npy", mouse.unit_ids)
        np.save(meta / "neurons" / "cell_motor_coordinates.npy", mouse.coordinates)
        (meta / "trials").mkdir()
        np.save(meta / "trials" / "tiers.npy", np.array([tier for tier, _ in mouse.plan]))
        # Statistics over all trials: videos pooled over pixels and frames, the others per neuron or channel.
        statistics = {"videos": _histogram_statistics(pixel_counts)}
        for position, key in enumerate(("responses", "behavior", "pupil_center")):
            values = np.concatenate([t[position] for t in trials], 0)
            statistics[key] = {"mean": values.mean(0), "std": values.std(0), "min": values.min(0),
                               "max": values.max(0), "median": np.median(values, 0)}
        for key, stats in statistics.items():
            folder = meta / "statistics" / key / "all"
            folder.mkdir(parents=True)
            for stat, value in stats.items():
                np.save(folder / f"{stat}.npy", np.asarray(value, np.float32))
        _save_npz_atomic(meta / "ground_truth.npz", _ground_truth_arrays(mouse, latents))
        config = {"animal_id": mouse.animal, "scan_idx": 1, "session": 1, "n_neurons": mouse.n_neurons,
                  "sampling_rate": mouse.config.sampling_rate, "provenance": mouse.provenance("meta/ground_truth.npz")}
        (tmp / "config.json").write_text(json.dumps(config, indent=1))
        final = root / mouse.name
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---------------------------------------------------------------------------------------------------------- command
