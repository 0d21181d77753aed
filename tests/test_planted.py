"""Recovery of planted neuron parameters from learned embeddings (omnimouse_jax/evaluate/planted.py)."""
import numpy as np
import pytest

from omnimouse_jax.commands.planted import main
from omnimouse_jax.data.layout import SessionLayout
from omnimouse_jax.data.synthetic import DigitalMiceConfig, generate_mouse
from omnimouse_jax.errors import UserError
from omnimouse_jax.evaluate.planted import PARAMETERS, cross_validated_r2, planted_recovery


def test_r2_is_one_for_a_linear_code_and_matches_the_noise_level():
    rng = np.random.default_rng(0)
    n, f = 400, 8
    x = rng.normal(size=(n, f))
    w = rng.normal(size=f)
    assert cross_validated_r2(x, x @ w + 3.0) == pytest.approx(1.0, abs=1e-4)
    # Target = signal + independent noise of equal variance: the best linear predictor explains half the variance.
    signal = x @ w
    noisy = signal + rng.normal(size=n) * signal.std()
    assert cross_validated_r2(x, noisy) == pytest.approx(0.5, abs=0.08)
    # An embedding unrelated to the target explains nothing out of sample.
    assert cross_validated_r2(rng.normal(size=(n, f)), noisy) < 0.02


def test_recovery_reads_each_sessions_rows_and_ground_truth(tmp_path):
    config = DigitalMiceConfig(mice=2, neurons=(40, 60))
    mice = [generate_mouse(config, k) for k in range(2)]
    layout = SessionLayout(tuple(m.name for m in mice), tuple(m.name.split("-")[0] for m in mice), (40, 60))
    for m in mice:
        np.savez(tmp_path / f"{m.name}.npz", **m.ground_truth)
    # Rows that encode (running gain, eye-x gain) exactly, in each session's own row range; the rest random.
    rng = np.random.default_rng(1)
    table = rng.normal(size=(100, 6))
    for k, m in enumerate(mice):
        rows = slice(layout.row_offsets[k], layout.row_offsets[k] + layout.n_neurons[k])
        table[rows, 0] = m.ground_truth["gain_running"]
        table[rows, 1] = m.ground_truth["gain_eye"][:, 0]
    r2 = planted_recovery(table, layout, tmp_path)
    assert set(r2) == set(layout.names)
    for name in layout.names:
        assert set(r2[name]) == set(PARAMETERS)
        assert r2[name]["gain_running"] > 0.99 and r2[name]["gain_eye_x"] > 0.99
        assert r2[name]["gain_eye_y"] < 0.2 and r2[name]["gain_pupil"] < 0.2
    with pytest.raises(UserError, match="no ground-truth file"):
        planted_recovery(table, layout, tmp_path / "elsewhere")


def test_command_names_a_workdir_without_checkpoints(tmp_path, capsys):
    assert main(["--workdir", str(tmp_path)]) == 2
    assert "no checkpoints/ directory" in capsys.readouterr().err
