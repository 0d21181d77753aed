"""The importers' shared pieces: covered runs, fresh indices for later pieces, the per-piece pupil derivative."""
from __future__ import annotations

import numpy as np
import pytest

from omnimouse_jax.data.importing import Pieces, check_sample_times, covered_runs, with_pupil_derivative
from omnimouse_jax.data.sensorium import SAMPLING_RATE
from omnimouse_jax.errors import UserError


def test_covered_runs_by_hand():
    mask = np.array([1, 1, 0, 0, 1, 0, 1, 1, 1], bool)
    assert covered_runs(mask) == [(0, 2), (4, 5), (6, 9)]
    assert covered_runs(np.zeros(4, bool)) == [] and covered_runs(np.ones(3, bool)) == [(0, 3)]


def test_pieces_keep_the_source_index_first_then_take_fresh_ones():
    class Writer:
        def __init__(self):
            self.trials = []

        def add_trial(self, **trial):
            self.trials.append(trial)

    writer = Writer()
    pieces = Pieces(writer, next_index=10, origin="clip")
    pieces.add(3, 0, 0, "train", responses="a")
    pieces.add(3, 1, 40, "train", responses="b")
    pieces.add(7, 0, 0, "oracle", responses="c")
    pieces.add(7, 1, 5, "oracle", responses="d")
    assert [t["source_index"] for t in writer.trials] == [3, 10, 7, 11]
    assert [t["responses"] for t in writer.trials] == ["a", "b", "c", "d"]
    assert pieces.extra == {"10": {"clip": 3, "first_sample": 40}, "11": {"clip": 7, "first_sample": 5}}
    assert pieces.tiers == {"train": 2, "oracle": 2}


def test_pupil_derivative_is_per_second_and_within_the_piece():
    behavior = np.zeros((5, 5), np.float32)
    behavior[:, 0] = [1.0, 2.0, 4.0, 7.0, 11.0]
    piece = with_pupil_derivative(behavior)
    # numpy's one-sided differences at the ends, central ones inside, per sample -> per second
    expected = np.array([1.0, 1.5, 2.5, 3.5, 4.0]) * SAMPLING_RATE
    np.testing.assert_allclose(piece[:, 4], expected)
    assert behavior[:, 4].sum() == 0  # a copy: the input is untouched
    assert with_pupil_derivative(behavior[:1])[0, 4] == 0.0  # a single sample has no derivative


def test_sample_times_must_be_finite_and_increasing():
    t = np.array([0.0, 0.1, 0.2, 0.3])
    assert check_sample_times(t, "x") is t
    with pytest.raises(UserError, match=r"^dev/times: timestamps not increasing at index 2 \(0.1 then 0.1\)"):
        check_sample_times(np.array([0.0, 0.1, 0.1, 0.3]), "dev/times")
    with pytest.raises(UserError, match="^dev/times: timestamps have NaN or infinite values"):
        check_sample_times(np.array([0.0, np.nan, 0.2]), "dev/times")
