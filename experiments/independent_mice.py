"""A second, independently written digital-mouse generator, in Sensorium 2023 folders: a check that what the model
learns on `omnimouse data synth` is not a property of that generator.

    python experiments/independent_mice.py OUT [--seed 0] [--neurons 300,337] [--train-trials 80]
    omnimouse data import-sensorium OUT --out STORE

Every modelling choice differs from omnimouse_jax/data/synthetic.py on purpose: the movies are drifting crops of
large pink-noise canvases with occluding bright and dark shapes; receptive fields are placed uniformly (no
retinotopy); simple cells are rectified and raised to a power of 1.5, complex cells are energy units raised to 0.75;
temporal filters are biphasic differences of exponentials; running switches between rest and locomotion states and
the pupil follows it; behavior and a 2-dimensional slow latent act as multiplicative gains on a softplus output; and
responses are gamma-distributed around the rate (no event counts). The true rates are saved per trial in
`meta/true_rates/<i>.npy` (neurons x frames) for ceilings.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

FRAME_SHAPE = (36, 64)
CANVAS_SHAPE = (96, 160)
FRAMES = 300
FILTER_FRAMES = 12


def pink_canvas(rng, shape):
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.fftfreq(shape[1])[None, :]
    radius = np.hypot(fx, fy)
    radius[0, 0] = 1.0
    alpha = rng.uniform(0.9, 1.3)
    spectrum = radius ** -alpha * np.exp(2j * np.pi * rng.random(shape))
    spectrum[0, 0] = 0.0
    canvas = np.real(np.fft.ifft2(spectrum))
    canvas /= canvas.std()
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    for _ in range(rng.integers(2, 6)):  # occluders: flat bright or dark ellipses and bars
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        ry, rx = rng.uniform(3, 15), rng.uniform(3, 25)
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        canvas[inside] = rng.choice([-2.0, 2.0]) + 0.2 * canvas[inside]
    return canvas


def movie(rng):
    """(T, H, W) uint8: scenes of 1.5-5 s, each a drifting, jittering crop of its own canvas."""
    frames, t = [], 0
    while t < FRAMES:
        length = int(rng.integers(45, 150))
        canvas = pink_canvas(rng, CANVAS_SHAPE)
        velocity = rng.normal(0, 0.6, 2)
        position = rng.uniform(0, CANVAS_SHAPE) + np.cumsum(velocity + rng.normal(0, 0.3, (length, 2)), 0)
        contrast = rng.uniform(30, 55)
        for y, x in position:
            shifted = np.roll(canvas, (-int(y) % CANVAS_SHAPE[0], -int(x) % CANVAS_SHAPE[1]), (0, 1))
            frames.append(np.clip(118 + contrast * shifted[:FRAME_SHAPE[0], :FRAME_SHAPE[1]], 0, 255))
        t += length
    return np.asarray(frames[:FRAMES], np.uint8)


def neurons(rng, n):
    height, width = FRAME_SHAPE
    y, x = np.mgrid[0:height, 0:width].astype(float)
    center = np.stack([rng.uniform(4, width - 4, n), rng.uniform(4, height - 4, n)], 1)
    sigma = rng.uniform(2.0, 5.0, n)[:, None, None]
    frequency = rng.uniform(0.05, 0.2, n)[:, None, None]
    theta = rng.uniform(0, np.pi, n)[:, None, None]
    phase = rng.uniform(0, 2 * np.pi, n)[:, None, None]
    dx, dy = x - center[:, 0, None, None], y - center[:, 1, None, None]
    along = dx * np.cos(theta) + dy * np.sin(theta)
    across = -dx * np.sin(theta) + dy * np.cos(theta)
    envelope = np.exp(-(along ** 2 + (0.8 * across) ** 2) / (2 * sigma ** 2))
    even = envelope * np.cos(2 * np.pi * frequency * along + phase)
    odd = envelope * np.sin(2 * np.pi * frequency * along + phase)
    even -= even.mean((1, 2), keepdims=True)
    odd -= odd.mean((1, 2), keepdims=True)
    norm = np.linalg.norm(even, axis=(1, 2), keepdims=True)
    lags = np.arange(FILTER_FRAMES, dtype=float)[None]
    fast, slow = rng.uniform(1.0, 2.5, n)[:, None], rng.uniform(3.0, 6.0, n)[:, None]
    temporal = np.exp(-lags / fast) - rng.uniform(0.3, 0.8, n)[:, None] * np.exp(-lags / slow)
    temporal = np.concatenate([np.zeros((n, 1)), temporal[:, :-1]], 1)  # one frame of latency
    temporal /= np.abs(temporal).sum(1, keepdims=True)
    return {
        "even": even / norm, "odd": odd / norm, "temporal": temporal, "complex": rng.random(n) < 0.6,
        "threshold": rng.uniform(0.0, 1.0, n), "scale": rng.lognormal(0.0, 0.4, n),
        "gain_running": rng.normal(0.25, 0.15, n), "gain_pupil": rng.normal(0.1, 0.1, n),
        "loadings": rng.normal(0, 0.3, (n, 2)), "center": center,
    }


def drive(video_TxHxW, cells):
    x = (video_TxHxW.reshape(FRAMES, -1).astype(float) - 118) / 45
    even = x @ cells["even"].reshape(len(cells["complex"]), -1).T
    odd = x @ cells["odd"].reshape(len(cells["complex"]), -1).T

    def filtered(s_TxN):
        out = np.zeros_like(s_TxN)
        for lag in range(FILTER_FRAMES):
            out[lag:] += cells["temporal"][:, lag] * s_TxN[:FRAMES - lag]
        return out

    even, odd = filtered(even), filtered(odd)
    simple = np.maximum(even, 0) ** 1.5
    energy = (even ** 2 + odd ** 2) ** 0.75
    return np.where(cells["complex"], energy, simple)


def ou(rng, length, tau_frames, dims):
    rho = np.exp(-1 / tau_frames)
    out = np.zeros((length, dims))
    out[0] = rng.normal(size=dims)
    for t in range(1, length):
        out[t] = rho * out[t - 1] + np.sqrt(1 - rho ** 2) * rng.normal(size=dims)
    return out


def behavior(rng):
    """running speed, pupil area and pupil center (T,), (T,), (T, 2)."""
    state = np.zeros(FRAMES)
    state[0] = rng.random() < 0.4
    for t in range(1, FRAMES):
        state[t] = (1 - state[t - 1]) if rng.random() < 1 / 90 else state[t - 1]
    running = np.maximum(state * (12 + 4 * ou(rng, FRAMES, 20, 1)[:, 0]) + rng.normal(0, 0.5, FRAMES), 0)
    arousal = np.convolve(state, np.exp(-np.arange(60) / 30) / 30, "full")[:FRAMES]
    pupil = 350 + 150 * arousal + 40 * ou(rng, FRAMES, 40, 1)[:, 0]
    center = np.array([160.0, 120.0]) + 3 * ou(rng, FRAMES, 30, 2)
    return running, pupil, center


def trial(rng, video, cells, drive_scale):
    running, pupil, center = behavior(rng)
    latent = ou(rng, FRAMES, 30, 2)
    stimulus = drive(video, cells) / drive_scale
    gain = np.exp(np.outer((running - 6) / 6, cells["gain_running"]) + np.outer((pupil - 400) / 80, cells["gain_pupil"])
                  + latent @ cells["loadings"].T)
    rate = cells["scale"] * np.log1p(np.exp(3 * (stimulus - cells["threshold"]))) / 3 * gain
    responses = rng.gamma(0.8, rate / 0.8)
    return responses, rate, np.stack([pupil, running]), center.T


def write_mouse(out: Path, mouse: int, n: int, args) -> str:
    rng = np.random.default_rng([args.seed, mouse])
    cells = neurons(rng, n)
    calibration = np.concatenate([drive(movie(rng), cells) for _ in range(2)])
    drive_scale = calibration.mean(0) + 1e-6
    name = f"dynamic{80000 + mouse}-1-1-Video-independent{args.seed}"
    root = out / name
    for key in ("videos", "responses", "behavior", "pupil_center"):
        (root / "data" / key).mkdir(parents=True, exist_ok=True)
    (root / "meta" / "true_rates").mkdir(parents=True, exist_ok=True)
    oracle_videos = [movie(rng) for _ in range(args.oracle_clips)]
    plan = ([("train", None)] * args.train_trials + [("oracle", v) for v in range(args.oracle_clips)
                                                     for _ in range(args.oracle_repeats)]
            + [("final_test_main", None)] * args.test_trials)
    plan = [plan[i] for i in rng.permutation(len(plan))]
    for index, (tier, clip) in enumerate(plan):
        video = oracle_videos[clip] if clip is not None else movie(rng)
        responses, rate, behavior_2xT, center_2xT = trial(rng, video, cells, drive_scale)
        np.save(root / "data" / "videos" / f"{index}.npy", np.ascontiguousarray(video.transpose(1, 2, 0)))
        np.save(root / "data" / "responses" / f"{index}.npy", responses.T.astype(np.float32))
        np.save(root / "data" / "behavior" / f"{index}.npy", behavior_2xT.astype(np.float32))
        np.save(root / "data" / "pupil_center" / f"{index}.npy", center_2xT.astype(np.float32))
        np.save(root / "meta" / "true_rates" / f"{index}.npy", rate.T.astype(np.float32))
    (root / "meta" / "neurons").mkdir(parents=True, exist_ok=True)
    (root / "meta" / "trials").mkdir(parents=True, exist_ok=True)
    np.save(root / "meta" / "neurons" / "unit_ids.npy", np.arange(1, n + 1, dtype=np.int32))
    coordinates = np.concatenate([cells["center"] * 10, rng.uniform(100, 400, (n, 1))], 1)
    np.save(root / "meta" / "neurons" / "cell_motor_coordinates.npy", coordinates.astype(np.float32))
    np.save(root / "meta" / "trials" / "tiers.npy", np.array([tier for tier, _ in plan]))
    (root / "config.json").write_text(json.dumps({"animal_id": 80000 + mouse, "n_neurons": n}))
    return name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--neurons", default="300,337")
    parser.add_argument("--train-trials", type=int, default=80)
    parser.add_argument("--oracle-clips", type=int, default=6)
    parser.add_argument("--oracle-repeats", type=int, default=10)
    parser.add_argument("--test-trials", type=int, default=10)
    args = parser.parse_args()
    for mouse, n in enumerate(int(c) for c in args.neurons.split(",")):
        print(write_mouse(args.out, mouse, n, args))


if __name__ == "__main__":
    main()
