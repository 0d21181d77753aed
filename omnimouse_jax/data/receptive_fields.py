"""Receptive-field mapping by reverse correlation with local contrast energy, the classical first look at a visual
neuron's spatial tuning; it initializes the decoder's spatial prior (config.model.neuron_rf_init = "mapped").

For each frame, the video standardized by the paper's mean and std is band-passed (a difference of Gaussians,
BANDPASS_SIGMAS_PX), squared, averaged over the cells of a grid (the model's first video-token grid) and the frame's
mean over cells is subtracted, so that scene-wide contrast changes (cuts, fades) do not dominate. The band-pass keeps
the spatial periods of V1-like receptive fields at the paper's 36 x 64 resolution (about 4 to 25 pixels); without it
natural-like movies' energy is dominated by the low frequencies that no small receptive field sees (docs/evaluation.md
measures both). A neuron's map is the correlation of
its response with the cell energies summed over the previous `lags` frames; its receptive field is centred on the
cell of largest correlation. Energy rather than the signed image: complex cells and rectified simple cells both
respond to local contrast whatever its sign, which a signed spike-triggered average averages away.
"""
from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from omnimouse_jax.data.synthetic import VIDEO_MEAN, VIDEO_STD

DEFAULT_LAGS = 6  # frames: responses follow the stimulus by 0 to about 0.2 s at 30 Hz
BANDPASS_SIGMAS_PX = (1.0, 4.0)  # centre and surround of the difference of Gaussians, in pixels


def cell_energy(video_TxHxW: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(T, grid_h * grid_w) local band-passed contrast energy per grid cell, each frame's mean over cells removed."""
    x = (np.asarray(video_TxHxW, np.float32) - VIDEO_MEAN) / VIDEO_STD
    centre, surround = BANDPASS_SIGMAS_PX
    x = gaussian_filter(x, (0, centre, centre), mode="nearest") - gaussian_filter(x, (0, surround, surround),
                                                                                  mode="nearest")
    squared = x * x
    rows = np.array_split(np.arange(x.shape[1]), grid[0])
    cols = np.array_split(np.arange(x.shape[2]), grid[1])
    cells = np.stack([squared[:, r][:, :, c].mean(axis=(1, 2)) for r in rows for c in cols], axis=1)
    return cells - cells.mean(axis=1, keepdims=True)


def lagged_sum(x_TxG: np.ndarray, lags: int) -> np.ndarray:
    """sum_{tau < lags} x[t - tau] (zero before the first frame)."""
    out = np.cumsum(x_TxG, axis=0, dtype=np.float64)
    out[lags:] -= out[:-lags].copy()
    return out


class EnergyCorrelation:
    """Streaming correlation maps (N, G) between responses (T, N) and lagged cell energies (T, G), over trials."""

    def __init__(self, n_neurons: int, grid: tuple[int, int], frame_shape: tuple[int, int], lags: int = DEFAULT_LAGS):
        self.grid, self.lags = tuple(grid), lags
        self.aspect = frame_shape[0] / frame_shape[1]
        cells = grid[0] * grid[1]
        self.count = 0
        self.sum_y, self.sum_yy = np.zeros(n_neurons), np.zeros(n_neurons)
        self.sum_e, self.sum_ee = np.zeros(cells), np.zeros(cells)
        self.sum_ye = np.zeros((n_neurons, cells))

    def update(self, responses_TxN: np.ndarray, video_TxHxW: np.ndarray) -> None:
        """Adds one trial; its first `lags` samples (whose history the trial does not hold) are left out."""
        energy = lagged_sum(cell_energy(video_TxHxW, self.grid), self.lags)[self.lags:]
        y = np.nan_to_num(np.asarray(responses_TxN, np.float64)[self.lags:])
        self.count += len(y)
        self.sum_y += y.sum(0)
        self.sum_yy += (y * y).sum(0)
        self.sum_e += energy.sum(0)
        self.sum_ee += (energy * energy).sum(0)
        self.sum_ye += y.T @ energy

    def result(self) -> np.ndarray:
        """(N, G) correlations; 0 where a neuron or cell never varied."""
        n = max(self.count, 1)
        cov = self.sum_ye / n - np.outer(self.sum_y / n, self.sum_e / n)
        var_y = self.sum_yy / n - (self.sum_y / n) ** 2
        var_e = self.sum_ee / n - (self.sum_e / n) ** 2
        scale = np.sqrt(np.outer(np.maximum(var_y, 0), np.maximum(var_e, 0)))
        return np.where(scale > 0, cov / np.where(scale > 0, scale, 1.0), 0.0)

    def centres(self) -> np.ndarray:
        """(N, 2) each neuron's receptive-field centre (x, y) in half-widths of the frame, 0 at its centre (the
        model's video-token coordinates): the centre of its most correlated cell."""
        grid_h, grid_w = self.grid
        best = self.result().argmax(axis=1)
        row, col = np.divmod(best, grid_w)
        x = (col + 0.5) / grid_w * 2 - 1
        y = ((row + 0.5) / grid_h * 2 - 1) * self.aspect
        return np.stack([x, y], axis=1).astype(np.float32)
