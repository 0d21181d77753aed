"""Receptive-field mapping by reverse correlation with local contrast energy (data/receptive_fields.py)."""
import numpy as np

from omnimouse_jax.data import receptive_fields as rf
from omnimouse_jax.data import synthetic


def test_cell_energy_is_band_passed_contrast_energy():
    """A uniform frame has no energy; a grating with a receptive field's period (8 px) has far more than a smooth
    luminance ramp of the same pixel variance (the low frequencies no small receptive field sees)."""
    uniform = np.full((1, 36, 64), synthetic.VIDEO_MEAN + 40.0, np.float32)
    np.testing.assert_allclose(rf.cell_energy(uniform, (2, 4)), 0.0, atol=1e-6)
    x = np.arange(21, dtype=np.float32)
    grating = np.sin(2 * np.pi * x / 8)
    ramp = (x - x.mean()) / x.std() * grating.std()
    frame = np.full((36, 64), synthetic.VIDEO_MEAN, np.float32)
    frame[:, :21] += synthetic.VIDEO_STD * grating  # cells: grating | gray | ramp (21 + 22 + 21 columns)
    frame[:, 43:] += synthetic.VIDEO_STD * ramp
    raw = rf.cell_energy(frame[None], (1, 3))[0]
    grating_energy, ramp_energy = raw[0] - raw[1], raw[2] - raw[1]  # relative to the gray cell
    assert grating_energy > 10 * ramp_energy > 0, raw


def test_lagged_sum_is_a_causal_boxcar():
    x = np.arange(1.0, 7.0)[:, None]
    np.testing.assert_allclose(rf.lagged_sum(x, 3)[:, 0], [1, 3, 6, 9, 12, 15])


def test_neurons_driven_by_one_cells_energy_are_centred_on_that_cell():
    rng = np.random.default_rng(0)
    grid, frame = (9, 16), (36, 64)
    cells = np.array([0, 21, 70, 143])  # each neuron's cell, row-major
    mapper = rf.EnergyCorrelation(len(cells), grid, frame, lags=4)
    for _ in range(6):
        video = np.clip(rng.normal(synthetic.VIDEO_MEAN, synthetic.VIDEO_STD, (300, *frame)), 0, 255)
        drive = rf.lagged_sum(rf.cell_energy(video, grid), 4)[:, cells]
        responses = 10 * np.maximum(drive, 0) + rng.gamma(1.0, 0.5, drive.shape)  # band-passed noise: small energies
        mapper.update(responses, video)
    row, col = np.divmod(cells, grid[1])
    expected = np.stack([(col + 0.5) / grid[1] * 2 - 1, ((row + 0.5) / grid[0] * 2 - 1) * frame[0] / frame[1]], 1)
    np.testing.assert_allclose(mapper.centres(), expected, atol=1e-6)
    corr = mapper.result()
    assert np.all(corr[np.arange(len(cells)), cells] > 0.3)


def test_mapping_finds_planted_receptive_fields_of_digital_mice():
    """On a digital mouse, mapped centres lie near the planted Gabor centres (pixel error well below the frame)."""
    config = synthetic.DigitalMiceConfig(mice=1, neurons=60, trials=40, oracle_videos=0, test_trials=0, seed=4)
    mouse = synthetic.generate_mouse(config, 0)
    grid = (9, 16)
    mapper = rf.EnergyCorrelation(mouse.n_neurons, grid, config.frame_shape)
    for trial in mouse.trials():
        mapper.update(trial.responses, trial.video)
    centres = mapper.centres()
    half_width = config.frame_shape[1] / 2
    x_px, y_px = (centres[:, 0] + 1) * half_width, centres[:, 1] * half_width + config.frame_shape[0] / 2
    planted = mouse.ground_truth["rf_center"]
    error = np.hypot(x_px - planted[:, 0], y_px - planted[:, 1])
    # A random guess is ~25 px away on a 36 x 64 frame; one grid cell is 4 px.
    assert np.median(error) < 8, np.median(error)
