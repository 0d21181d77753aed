"""Where does a trained model keep (or lose) the stimulus? Linear probes for each neuron's planted stimulus drive, on
digital mice, at three depths of the forward pass in the video-only regime:

  video_tokens   the video encoder's output tokens at the neuron's planted receptive-field centre (the two time
                 steps before each sample), before the backbone
  backbone_video the same tokens after the backbone (what the decoder reads as video keys)
  decoder        the decoder's output for the neuron's readout step (what the response head reads)
  prediction     the model's predicted rate itself (correlation)

Each probe is a per-neuron ridge regression (penalty chosen on held-out examples) from that depth's features to the
drive u_n(t) of the generator (omnimouse_jax.data.synthetic.stimulus_drive), scored by the correlation on the other
half of the examples. A depth whose score is far below the one before it is where the stimulus is lost.

    python experiments/probe_stimulus.py --workdir W [--batches 12] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from omnimouse_jax.data import open_store, pipeline, synthetic
from omnimouse_jax.model import masking
from omnimouse_jax.train.restore import load_trained

HISTORY = synthetic.TEMPORAL_KERNEL_FRAMES  # a window's first samples lack the frames their drive depends on
PENALTIES = (1e-2, 1e-1, 1.0, 10.0, 100.0)


def _ridge_score(x_SxF: np.ndarray, y_S: np.ndarray, half_S: np.ndarray) -> float:
    """Correlation on the second half of a ridge fit on the first, the penalty chosen by an inner split."""
    x = (x_SxF - x_SxF[half_S].mean(0)) / (x_SxF[half_S].std(0) + 1e-6)
    y = y_S - y_S[half_S].mean()

    def fit(rows, lam):
        a = x[rows]
        return np.linalg.solve(a.T @ a + lam * len(a) * np.eye(a.shape[1]), a.T @ y[rows])

    inner = np.flatnonzero(half_S)
    fit_rows, check_rows = inner[: len(inner) // 2], inner[len(inner) // 2:]
    best = max(PENALTIES, key=lambda lam: _corr(x[check_rows] @ fit(fit_rows, lam), y[check_rows]))
    test = ~half_S
    return _corr(x[test] @ fit(half_S, best), y[test])


def _corr(a, b) -> float:
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else 0.0


def collect(workdir: Path, batches: int):
    trained = load_trained(workdir)
    model, cfg, layout = trained.model, trained.config, trained.layout
    store_root = Path(cfg.data.root)
    store = open_store(store_root)
    truths = {name: dict(np.load(store_root / "ground_truth" / f"{name}.npz")) for name in layout.names}
    windows = pipeline.EvalWindows(store, layout, block=cfg.model.num_samples, max_neurons=cfg.model.max_neurons,
                                   global_batch=8, seed=0, tier="test")
    fields = masking.strategy_arrays(masking.PRESETS["video_only"])
    captured = {}
    original = model._decode

    def capture(x_bin, *args):
        captured["x_bin"] = x_bin
        out_resp, out_beh, out_video = original(x_bin, *args)
        captured["decoder"] = out_resp
        return out_resp, out_beh, out_video

    model._decode = capture
    grid_t, grid_h, grid_w = model.video.geometry.grids[-1]
    frame_h, frame_w = cfg.model.frame_shape
    rows = []  # one entry per (example, neuron): features at each depth and the drive, per sample
    for b in range(min(batches, len(windows))):
        batch = windows(b)
        model_batch = {k: jnp.asarray(batch[k]) for k in ("responses", "neuron_mask", "neuron_index", "session_index",
                                                          "animal_index", "video", "behavior", "behavior_mask")}
        masks = masking.make_masks(fields, model_batch["neuron_mask"], cfg.model.num_samples)
        rates = np.asarray(model(model_batch, masks)["rates"])
        frames = (model_batch["video"].astype(jnp.float32) - cfg.model.video_mean) / cfg.model.video_std
        tokens = np.asarray(model.video(frames, masks.video_visible)[0])  # (B, T', S', E)
        x_bin = np.asarray(captured["x_bin"])  # (B, W, P, D)
        decoder = np.asarray(captured["decoder"])  # (B, N, steps, D)
        for e in np.flatnonzero(batch["example_mask"]):
            name = layout.names[int(batch["session_index"][e])]
            gt = truths[name]
            drive_TxN = synthetic.stimulus_drive(batch["video"][e], gt)
            real = np.flatnonzero(batch["neuron_mask"][e])
            local = batch["neuron_index"][e, real] - layout.row_offsets[layout.session_index(name)]
            centre = gt["rf_center"][local]  # (n, 2) pixels
            col = np.clip((centre[:, 0] / frame_w * grid_w).astype(int), 0, grid_w - 1)
            row = np.clip((centre[:, 1] / frame_h * grid_h).astype(int), 0, grid_h - 1)
            spatial = row * grid_w + col
            t = np.arange(HISTORY, cfg.model.num_samples)
            tstep = np.clip(np.searchsorted(model.video.geometry.frame_centres, t) - 1, 1, grid_t - 1)
            for j, n in enumerate(real):
                vt = np.concatenate([tokens[e, tstep, spatial[j]], tokens[e, tstep - 1, spatial[j]]], axis=1)
                rows.append({
                    "neuron": (name, int(local[j])), "drive": drive_TxN[t, local[j]],
                    "video_tokens": vt,
                    "backbone_video": _backbone_video(model, x_bin[e], t, spatial[j], cfg),
                    "decoder": decoder[e, n, t // cfg.model.readout_step],
                    "prediction": rates[e, t, n][:, None]})
    model._decode = original
    return rows


def _backbone_video(model, x_bin_WxPxD, t, spatial, cfg):
    """The backbone's output video tokens at one spatial position, for the bin of each sample (mean over the bin's
    time steps)."""
    bins = model.layout.video_bins
    g, s_count = cfg.model.latents_per_bin, model.video.geometry.grids[-1][1] * model.video.geometry.grids[-1][2]
    w = np.minimum(t // cfg.model.latent_window, model.num_bins - 1)
    per_bin = bins.index.shape[1]
    slots = g + np.arange(per_bin) * s_count + spatial  # the position's slot in each of the bin's time steps
    feats = x_bin_WxPxD[w][:, slots]  # (T, per_bin, D)
    valid = bins.valid[w][:, :, None]
    return (feats * valid).sum(1) / np.maximum(valid.sum(1), 1)


def probe(rows) -> dict:
    by_neuron: dict = {}
    for r in rows:
        by_neuron.setdefault(r["neuron"], []).append(r)
    scores = {k: [] for k in ("video_tokens", "backbone_video", "decoder", "prediction")}
    for items in by_neuron.values():
        if len(items) < 4:
            continue
        half = np.concatenate([np.full(len(i["drive"]), k % 2 == 0) for k, i in enumerate(items)])
        y = np.concatenate([i["drive"] for i in items])
        if y.std() == 0:
            continue
        for key in scores:
            x = np.concatenate([i[key] for i in items])
            scores[key].append(_corr(x[~half, 0], y[~half]) if key == "prediction" else _ridge_score(x, y, half))
    return {k: {"median": float(np.median(v)), "mean": float(np.mean(v)), "neurons": len(v)}
            for k, v in scores.items() if v}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    with jax.default_device(jax.devices()[0]):
        result = {"workdir": str(args.workdir), **probe(collect(args.workdir, args.batches))}
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
