"""NWB import: files written with pynwb, imported, and compared at the 30 Hz grid against numpy references."""
import h5py
import numpy as np
import pytest

from omnimouse_jax import cli
from omnimouse_jax.data import open_store
from omnimouse_jax.data.nwb import _Signal
from omnimouse_jax.data.schema import BEHAVIOR_CHANNELS
from omnimouse_jax.data.validate import check_store
from nwb_fixtures import FRAME, TIERS, make_nwb

pytestmark = pytest.mark.filterwarnings("ignore")  # pynwb warns about files the tests corrupt on purpose


def _import(*args):
    return cli.main(["data", "import-nwb", *map(str, args)])


def _grid(start, stop):
    """Hand-built: every start + k/30 before stop."""
    n = int(round((stop - start) * 30))
    t = start + np.arange(n + 1) / 30
    return t[t < stop - 1e-9]


def _nearest(t, tau, x):
    """Brute force: the sample closest in time (argmin picks the earlier one on a tie)."""
    x = x.reshape(len(tau), -1)
    return x[np.abs(tau[None, :] - t[:, None]).argmin(1)]


def _linear(t, tau, x):
    x = x.reshape(len(tau), -1)
    return np.stack([np.interp(t, tau, x[:, c]) for c in range(x.shape[1])], axis=1)


def _reference(truth, t, interp):
    """Expected responses (both planes' ROIs side by side), behavior (5 channels) and video at grid times t."""
    responses = np.concatenate([interp(t, tau, x) for tau, x in truth["planes"]], axis=1)
    behavior = np.full((len(t), 5), np.nan)
    if "running" in truth:
        behavior[:, 0] = interp(t, *truth["area"])[:, 0]
        behavior[:, 1] = interp(t, *truth["running"])[:, 0]
        behavior[:, 2:4] = interp(t, *truth["position"])
        behavior[:, 4] = np.gradient(behavior[:, 0]) * 30
    shown = (truth["onsets"][None, :] <= t[:, None]).sum(1) - 1  # the last frame whose onset is not after t
    return responses.astype(np.float32), behavior.astype(np.float32), truth["frames"][shown]


def _check_trial(trial, truth, t, interp, exact):
    responses, behavior, video = _reference(truth, t, interp)
    compare = np.testing.assert_array_equal if exact else (
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6))
    compare(trial["responses"], responses)
    compare(trial["behavior"][:, :4], behavior[:, :4])
    compare(trial["pupil_center"], behavior[:, 2:4])
    np.testing.assert_allclose(trial["behavior"][:, 4], behavior[:, 4], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(trial["video"], video)


@pytest.mark.parametrize("mode, expected", [
    ("nearest", [np.nan, 21, 41, np.nan, 81, 101, np.nan]),
    ("linear", [np.nan, 31, 46, np.nan, 91, 101, np.nan]),
])
def test_resampling_a_hand_computed_case(mode, expected):
    # Samples 10..50 at 0, 1, 2, 5, 6 s (median period 1 s, so 2..5 is a gap) in units 2 * data + 1. Grid times:
    # before the start, a tie (0.5: the earlier sample wins), 1.25, inside the gap, another tie, the last sample, after.
    from pynwb import TimeSeries

    series = TimeSeries(name="x", data=np.array([[10.0], [20], [30], [40], [50]]), unit="u", conversion=2.0,
                        offset=1.0, timestamps=[0.0, 1.0, 2.0, 5.0, 6.0])
    t = np.array([-0.1, 0.5, 1.25, 2.2, 5.5, 6.0, 6.5])
    values, covered = _Signal("f.nwb", ("acquisition", "x"), series).resample(t, mode)
    np.testing.assert_allclose(values[:, 0], expected, rtol=1e-6)
    np.testing.assert_array_equal(covered, ~np.isnan(expected))


def test_nearest_import_is_exact_at_every_grid_time(tmp_path, capsys):
    truth = make_nwb(tmp_path / "rec.nwb")
    assert _import(tmp_path / "rec.nwb", "--out", tmp_path / "store") == 0
    line = capsys.readouterr().out
    assert "rec: 6 trials (oracle 1, train 4, validation 1) from the trials table ('tier' column), 5 neurons" in line
    assert "responses processing/ophys/DfOverF/plane0, processing/ophys/DfOverF/plane1; stimulus stimulus/movie" in line
    assert check_store(tmp_path / "store") == ([], [])

    session = open_store(tmp_path / "store").session("rec")
    assert session.animal == "mouseA" and session.frame_shape == FRAME
    assert session.behavior_channels == list(BEHAVIOR_CHANNELS)
    np.testing.assert_array_equal(session.neurons["unit_ids"], [10, 11, 12, 20, 21])
    for i, (start, stop) in enumerate(zip(truth["starts"], truth["stops"])):
        trial = session.trial(i)
        t = _grid(start, stop)
        assert len(t) == 75 and trial["tier"] == TIERS[i] and trial["video"].dtype == np.uint8
        _check_trial(trial, truth, t, _nearest, exact=True)
    train = np.concatenate([session.trial(i)["responses"] for i, tier in enumerate(TIERS) if tier == "train"])
    np.testing.assert_allclose(session.stats["responses"]["mean"], train.mean(0), rtol=1e-6)

    assert _import(tmp_path / "rec.nwb", "--out", tmp_path / "store") == 0
    assert "skipped" in capsys.readouterr().out


def test_linear_import_of_rgb_templates_matches_numpy(tmp_path):
    # An IndexSeries into RGB template images: stored frames are the BT.601 gray of the template shown at each time.
    truth = make_nwb(tmp_path / "rec.nwb", stimulus="index_series", rgb=True, seed=1)
    assert _import(tmp_path / "rec.nwb", "--out", tmp_path / "store", "--interpolation", "linear") == 0
    session = open_store(tmp_path / "store").session("rec")
    assert session.manifest["provenance"]["interpolation"] == "linear"
    for i, (start, stop) in enumerate(zip(truth["starts"], truth["stops"])):
        _check_trial(session.trial(i), truth, _grid(start, stop), _linear, exact=False)


def test_blocks_and_epochs_get_tiers_by_the_row_rule_and_absent_behavior_is_nan(tmp_path, capsys):
    # Ten trials without a tier column: rows 8 and 9 become validation and test. No trials table: stimulus blocks.
    truth = make_nwb(tmp_path / "blocks.nwb", trials=None, n_trials=10, behavior=False, subject=None)
    make_nwb(tmp_path / "epochs.nwb", trials="epochs", n_trials=10, behavior=False)
    assert _import(tmp_path / "blocks.nwb", tmp_path / "epochs.nwb", "--out", tmp_path / "store") == 0
    out = capsys.readouterr().out
    assert "from the stimulus blocks" in out and "from the epochs table" in out
    assert "absent (NaN): running_speed, pupil_dilation, pupil_position" in out
    store = open_store(tmp_path / "store")
    expected_tiers = ["train"] * 8 + ["validation", "test"]
    for name in ("blocks", "epochs"):
        session = store.session(name)
        assert session.trials["tier"].tolist() == expected_tiers
        assert np.isnan(session.trial(0)["behavior"]).all()
    session = store.session("blocks")
    assert session.animal == "blocks"
    onsets = truth["onsets"].reshape(10, 75)
    for i in range(10):
        # A block runs from its first onset to one median frame period after its last.
        stop = onsets[i, -1] + np.median(np.diff(truth["onsets"]))
        t = _grid(onsets[i, 0], stop)
        trial = session.trial(i)
        assert len(trial["video"]) == len(t)
        np.testing.assert_array_equal(trial["responses"], _reference(truth, t, _nearest)[0])
        np.testing.assert_array_equal(trial["video"], _reference(truth, t, _nearest)[2])


def test_response_gap_splits_a_trial_into_covered_pieces(tmp_path):
    gap = (8.8, 9.6)  # inside trial 2 (8.0 to 10.5 s); plane 0 has no samples there
    truth = make_nwb(tmp_path / "rec.nwb", response_gap=gap)
    assert _import(tmp_path / "rec.nwb", "--out", tmp_path / "store") == 0
    session = open_store(tmp_path / "store").session("rec")
    tau = truth["planes"][0][0]
    before, after = tau[tau < gap[0]][-1], tau[tau > gap[1]][0]
    t = _grid(truth["starts"][2], truth["stops"][2])
    keep = (t < before) | (t >= after)  # a grid time between the gap's edge samples is not covered
    first, second = t[:np.argmin(keep)], t[keep][np.argmin(keep):]
    assert 0 < len(first) and 0 < len(second) and len(first) + len(second) == keep.sum()
    assert sorted(session.trials["source_index"].tolist()) == [0, 1, 2, 3, 4, 5, 6]
    for index, times in ((2, first), (6, second)):
        trial = session.trial(index)
        assert trial["tier"] == "oracle"
        _check_trial(trial, truth, times, _nearest, exact=True)
    assert session.manifest["provenance"]["extra_pieces"] == {"6": {"trial": 2, "first_sample": 75 - len(second)}}


def test_series_choice_when_several_containers(tmp_path, capsys):
    truth = make_nwb(tmp_path / "rec.nwb", fluorescence_too=True, stimulus="optical_acquisition")
    assert _import(tmp_path / "rec.nwb", "--out", tmp_path / "a") == 0  # DfOverF preferred over Fluorescence
    assert "stimulus acquisition/movie" in capsys.readouterr().out
    assert _import(tmp_path / "rec.nwb", "--out", tmp_path / "b", "--series", "Fluorescence") == 0
    t = _grid(truth["starts"][0], truth["stops"][0])
    for store, scale in (("a", 1), ("b", 100)):
        got = open_store(tmp_path / store).session("rec").trial(0)["responses"]
        expected = np.concatenate([_nearest(t, tau, x * np.float32(scale)) for tau, x in truth["planes"]], axis=1)
        np.testing.assert_array_equal(got, expected)
    # Behavior series named explicitly: pupil area read as running speed.
    assert _import(tmp_path / "rec.nwb", "--out", tmp_path / "d", "--running", "PupilTracking/pupil_area") == 0
    assert "running_speed processing/behavior/PupilTracking/pupil_area" in capsys.readouterr().out
    running = open_store(tmp_path / "d").session("rec").trial(0)["behavior"][:, 1]
    np.testing.assert_array_equal(running, _nearest(t, *truth["area"])[:, 0].astype(np.float32))
    # 'plane1' names a series in both containers: ambiguous.
    assert _import(tmp_path / "rec.nwb", "--out", tmp_path / "c", "--series", "plane1") == 2
    assert "--series 'plane1' matches several response containers" in capsys.readouterr().err


def _edit(path, fn):
    with h5py.File(path, "r+") as f:
        fn(f)


def _replace(f, key, values):
    del f[key]
    f[key] = values


BAD = {
    "not an NWB file": (lambda p: p.write_bytes(b"plain text, not HDF5"), "not a readable NWB file"),
    "missing response series": (lambda p: _edit(p, lambda f: f.__delitem__("processing/ophys/DfOverF")),
                                "no RoiResponseSeries in a DfOverF or Fluorescence container"),
    "timestamps not increasing": (
        lambda p: _edit(p, lambda f: f["processing/ophys/DfOverF/plane0/timestamps"].__setitem__(
            slice(5, 7), f["processing/ophys/DfOverF/plane0/timestamps"][5:7][::-1])),
        "processing/ophys/DfOverF/plane0: timestamps not increasing at index 6"),
    "stimulus timestamps vs frames": (
        lambda p: _edit(p, lambda f: _replace(f, "stimulus/presentation/movie/timestamps",
                                              f["stimulus/presentation/movie/timestamps"][:-3])),
        "stimulus/movie: 447 timestamps for 450 samples"),
    "trial stop before start": (
        lambda p: _edit(p, lambda f: f["intervals/trials/stop_time"].__setitem__(3, 0.5)),
        "trials table: row 3 runs from 11.5 to 0.5"),
    "rgba frames": (
        lambda p: _edit(p, lambda f: _replace(f, "stimulus/presentation/movie/data", np.zeros((450, 6, 8, 4), "u1"))),
        "frame shape (6, 8, 4); expected (H, W) grayscale or (H, W, 3) RGB"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_file_exits_2_naming_it_and_writes_nothing(tmp_path, capsys, case):
    make_nwb(tmp_path / "good.nwb")
    make_nwb(tmp_path / "bad.nwb", seed=2)
    corrupt, message = BAD[case]
    corrupt(tmp_path / "bad.nwb")
    # The good file comes first, yet every file is checked before anything is written.
    assert _import(tmp_path / "good.nwb", tmp_path / "bad.nwb", "--out", tmp_path / "store") == 2
    err = capsys.readouterr().err
    assert err.startswith("omnimouse: error:") and "bad.nwb: " in err and message in err, err
    assert not (tmp_path / "store").exists()


def test_index_beyond_templates_is_refused(tmp_path, capsys):
    make_nwb(tmp_path / "rec.nwb", stimulus="index_series")
    _edit(tmp_path / "rec.nwb", lambda f: f["stimulus/presentation/scenes/data"].__setitem__(7, 5))
    assert _import(tmp_path / "rec.nwb", "--out", tmp_path / "store") == 2
    assert "stimulus/scenes: frame index 5 but the indexed images hold 5" in capsys.readouterr().err


def test_recording_that_misses_every_trial_leaves_no_session(tmp_path, capsys):
    # Passes the up-front checks, fails while writing: the responses were recorded at other times than the stimulus.
    make_nwb(tmp_path / "rec.nwb")
    for plane in ("plane0", "plane1"):
        key = f"processing/ophys/DfOverF/{plane}/timestamps"
        _edit(tmp_path / "rec.nwb", lambda f: f[key].__setitem__(slice(None), f[key][:] + 1000.0))
    assert _import(tmp_path / "rec.nwb", "--out", tmp_path / "store") == 2
    assert "no trial has a sample covered" in capsys.readouterr().err
    assert open_store(tmp_path / "store").sessions == []
    assert [p.name for p in (tmp_path / "store").iterdir() if p.is_dir()] == []
