"""OmniMouse (experanto) import: resampled values against numpy references, gap splitting, clips, bad input."""
import json
import shutil

import numpy as np
import pytest

from omnimouse_jax import cli
from omnimouse_jax.data import open_store, pipeline
from omnimouse_jax.data.layout import SessionLayout
from omnimouse_jax.data import experanto
from omnimouse_jax.data.experanto import GAP_PERIODS, _Sequence
from omnimouse_jax.data.schema import BEHAVIOR_CHANNELS
from omnimouse_jax.data.validate import check_store
from omnimouse_jax.errors import UserError
from experanto_fixtures import (BLANK_LEVEL, EYE_NAMES, FRAME, NAME, SHORT_CLIPS, TREADMILL_GAP_CLIP, make_session,
                                write_sequence)

UNSPLIT = (0, 3, 5, 6)   # clips stored as one trial each (1 and 4 are blanks; 2 is split by the treadmill gap)
SECOND_PIECE = 7         # source index of clip 2's second piece: the first index above every clip number


def _import(*args):
    return cli.main(["data", "import-experanto", *map(str, args)])


def _grid(truth, k):
    """Hand-built grid of clip k: a video's frame times; the still image (shown 0.5 s) every 1/30 s from its frame."""
    clip, times = truth["clips"][k], truth["frame_times"]
    if clip["modality"] == "image":
        return times[clip["first"]] + np.arange(15) / 30
    return times[clip["first"]:clip["first"] + clip["n"]]


def _nearest(t, tau, x, shifts):
    """Brute force: for each signal, the sample whose (shifted) time is closest to t; ties to the earlier sample."""
    q_SxC = t[:, None] - shifts[None, :]
    k_SxC = np.abs(tau[None, None, :] - q_SxC[..., None]).argmin(-1)
    return x[k_SxC, np.arange(x.shape[1])]


def _linear(t, tau, x, shifts):
    return np.stack([np.interp(t - shifts[n], tau, x[:, n]) for n in range(x.shape[1])], axis=1)


def _reference(truth, t, interp):
    resp_t, resp, shifts = truth["responses"]
    eye_t, eye = truth["eye_tracker"]
    tread_t, tread = truth["treadmill"]
    cols = [EYE_NAMES.index(c) for c in ("pupil_dilation", "pupil_x", "pupil_y")]
    eye_ref = interp(t, eye_t, eye[:, cols], np.zeros(3))
    return {"responses": interp(t, resp_t, resp, shifts), "dilation": eye_ref[:, 0], "pupil": eye_ref[:, 1:],
            "speed": interp(t, tread_t, tread, np.zeros(1))[:, 0]}


def _expected_pieces(truth):
    """Clip 2's grid split where the treadmill has no samples: samples strictly between the gap's two edge samples
    go; the gap is wider than GAP_PERIODS treadmill periods."""
    t = _grid(truth, TREADMILL_GAP_CLIP)
    tread_t = truth["treadmill"][0]
    wide = np.flatnonzero(np.diff(tread_t) > GAP_PERIODS * np.median(np.diff(tread_t)))
    assert len(wide) == 1
    before, after = tread_t[wide[0]], tread_t[wide[0] + 1]
    keep = (t < before) | (t > after)
    edges = np.flatnonzero(np.diff(keep.astype(int)))
    assert keep[0] and keep[-1] and len(edges) == 2
    return t[: edges[0] + 1], t[edges[1] + 1:]


def _check_trial(trial, ref, exact):
    compare = np.testing.assert_array_equal if exact else (
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6))
    compare(trial["responses"], ref["responses"].astype(np.float32))
    compare(trial["behavior"][:, 0], ref["dilation"].astype(np.float32))
    compare(trial["behavior"][:, 1], ref["speed"].astype(np.float32))
    compare(trial["behavior"][:, 2:4], ref["pupil"].astype(np.float32))
    compare(trial["pupil_center"], ref["pupil"].astype(np.float32))
    np.testing.assert_allclose(trial["behavior"][:, 4], np.gradient(ref["dilation"]) * 30, rtol=1e-5, atol=1e-5)


def test_nearest_import_is_exact_and_splits_at_the_gap(tmp_path, capsys):
    folder, truth = make_session(tmp_path / "src")
    assert _import(folder, "--out", tmp_path / "store", "--per-clip") == 0
    line = capsys.readouterr().out
    assert "6 trials (final_test_main 1, oracle 1, train 3, validation 1)" in line
    assert "clips dropped: 2 blank" in line and "1 clips split" in line and "MB/s" in line
    assert check_store(tmp_path / "store") == ([], [])

    session = open_store(tmp_path / "store").session(NAME)
    assert session.behavior_channels == list(BEHAVIOR_CHANNELS) and session.frame_shape == (6, 8)
    assert session.animal == "dynamic17797"
    np.testing.assert_array_equal(session.neurons["unit_ids"], np.arange(100, 106))
    np.testing.assert_allclose(session.neurons["coordinates"],
                               np.load(folder / "responses/meta/cell_motor_coordinates.npy"), rtol=1e-6)
    assert sorted(session.trials["source_index"].tolist()) == [0, 2, 3, 5, 6, SECOND_PIECE]
    for k in UNSPLIT:
        trial, clip = session.trial(k), truth["clips"][k]
        assert trial["tier"] == clip["tier"]
        _check_trial(trial, _reference(truth, _grid(truth, k), _nearest), exact=True)
        video = clip["frames"] if clip["modality"] == "video" else np.repeat(clip["frames"], 15, axis=0)
        np.testing.assert_array_equal(trial["video"], video)

    first, second = _expected_pieces(truth)
    for index, t in ((TREADMILL_GAP_CLIP, first), (SECOND_PIECE, second)):
        trial = session.trial(index)
        assert len(trial["responses"]) == len(t) and trial["tier"] == "train"
        _check_trial(trial, _reference(truth, t, _nearest), exact=True)
    frames = truth["clips"][TREADMILL_GAP_CLIP]["frames"]
    np.testing.assert_array_equal(session.trial(SECOND_PIECE)["video"], frames[-len(second):])

    # Clip ids come from the screen metadata: clip 5 repeats clip 0's stimulus; a split clip keeps one id.
    vid = dict(zip(session.trials["source_index"].tolist(), session.trials["video_id"].tolist()))
    assert vid[0] == vid[5] and vid[2] == vid[SECOND_PIECE] and len({vid[0], vid[2], vid[3], vid[6]}) == 4
    prov = session.manifest["provenance"]
    assert prov["split_clips"] == {"2": {"samples": 36, "kept": [[0, len(first)], [36 - len(second), 36]]}}
    assert prov["dropped_clips"] == {"blank": 2} and prov["extra_pieces"]["7"]["clip"] == 2
    assert prov["uncovered_samples"]["treadmill"] == 36 - len(first) - len(second)

    # Train-tier statistics are numpy's over the stored train trials.
    train = np.concatenate([session.trial(i)["responses"] for i in (0, 2, SECOND_PIECE)])
    np.testing.assert_allclose(session.stats["responses"]["mean"], train.mean(0), rtol=1e-6)

    assert _import(folder, "--out", tmp_path / "store", "--per-clip") == 0
    assert "skipped" in capsys.readouterr().out


def test_linear_import_matches_numpy_interp_and_a_closed_form(tmp_path):
    folder, truth = make_session(tmp_path / "src", seed=3)
    assert _import(tmp_path / "src", "--out", tmp_path / "store", "--interpolation", "linear", "--per-clip") == 0
    session = open_store(tmp_path / "store").session(NAME)
    assert session.manifest["provenance"]["interpolation"] == "linear"
    for k in UNSPLIT:
        t = _grid(truth, k)
        trial = session.trial(k)
        _check_trial(trial, _reference(truth, t, _linear), exact=False)
        # The fixture's pupil dilation is 2 + 0.5 (t - 100) at its own sample times, so linear resampling is exact.
        np.testing.assert_allclose(trial["behavior"][:, 0], 2 + 0.5 * (t - 100), rtol=1e-6)


@pytest.mark.parametrize("mode, expected", [
    ("nearest", [np.nan, 10, 20, 30, np.nan, 40, 50, np.nan]),
    ("linear", [np.nan, 15, 22.5, 29.5, np.nan, 45, 50, np.nan]),
])
def test_resampling_a_hand_computed_case(tmp_path, mode, expected):
    # Samples at 0, 1, 2, 5, 6 s (median period 1 s, so 2..5 is a gap), taken 0.25 s late (phase shift). Grid times
    # read the signal at t - 0.25: before the start, a tie (0.5: the earlier sample wins), 1.25, 1.95, inside the
    # gap, another tie (5.5), exactly the last sample, after the end.
    write_sequence(tmp_path / "dev", [0.0, 1.0, 2.0, 5.0, 6.0], np.array([[10], [20], [30], [40], [50]], np.float32),
                   phase_shifts=[0.25])
    t = np.array([0.1, 0.75, 1.5, 2.2, 3.25, 5.75, 6.25, 6.5])
    values, covered = _Sequence(tmp_path / "dev").resample(t, np.array([0]), mode)
    np.testing.assert_allclose(values[:, 0], expected, rtol=1e-6)
    np.testing.assert_array_equal(covered, ~np.isnan(expected))


def _write(path, data):
    path.write_bytes(data)


def _replace_text(path, old, new):
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def _swap_timestamps(path):
    t = np.load(path)
    t[[5, 6]] = t[[6, 5]]
    np.save(path, t)


BAD_INPUTS = {
    "device folder missing": (lambda f: shutil.rmtree(f / "treadmill"), "treadmill: missing device folder"),
    "timestamps not increasing": (lambda f: _swap_timestamps(f / "responses/timestamps.npy"),
                                  "responses/timestamps.npy: timestamps not increasing at index 6"),
    "memmap shorter than meta": (lambda f: _write(f / "responses/data.mem", (f / "responses/data.mem").read_bytes()[:-8]),
                                 "responses/data.mem: shorter than its meta.yml says"),
    "clip file missing": (lambda f: (f / "screen/data/00003.npy").unlink(), "screen/data/00003.npy: missing"),
    "phase shifts wrong": (lambda f: np.save(f / "responses/meta/phase_shifts.npy", np.zeros(5)),
                           "responses/meta/phase_shifts.npy: shape (5,)"),
    "clip frames wrong": (lambda f: np.save(f / "screen/data/00000.npy", np.zeros((39, 6, 8), np.uint8)),
                          "screen/data/00000.npy: shape (39, 6, 8); expected (40, 6, 8)"),
    "unit ids": (lambda f: np.save(f / "responses/meta/unit_ids.npy", np.arange(5)),
                 "responses/meta/unit_ids.npy: shape (5,); expected (N,) unit ids with N = 6"),
    "eye column missing": (lambda f: _replace_text(f / "eye_tracker/meta.yml", "pupil_x", "pupil_z"),
                           "eye_tracker/meta.yml: signal_names ['pupil_y', 'pupil_dilation', 'extra', 'pupil_z'] lack "
                           "'pupil_x'"),
    "clips overlap": (lambda f: _replace_text(f / "screen/meta/00002.yml", "first_frame_idx: 41", "first_frame_idx: 39"),
                      "screen/meta/00002.yml: first_frame_idx 39 overlaps 00000.yml"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_exits_2_naming_the_file_and_writes_nothing(tmp_path, capsys, case):
    make_session(tmp_path / "src", "dynamic1-1-1-Video-good")
    folder, _ = make_session(tmp_path / "src")
    corrupt, message = BAD_INPUTS[case]
    corrupt(folder)
    # The good session comes first in the parent folder, yet every source is checked before anything is written.
    assert _import(tmp_path / "src", "--out", tmp_path / "store") == 2
    err = capsys.readouterr().err
    assert err.startswith("omnimouse: error:") and message in err, err
    assert not (tmp_path / "store").exists()


def test_session_with_no_covered_sample_leaves_no_trace(tmp_path, capsys):
    # Passes the up-front checks, fails while writing: the treadmill recorded at other times than the screen.
    folder, _ = make_session(tmp_path / "src")
    times = np.load(folder / "treadmill/timestamps.npy")
    np.save(folder / "treadmill/timestamps.npy", times + 1000.0)
    assert _import(folder, "--out", tmp_path / "store") == 2
    assert "no clip has a sample covered by every device" in capsys.readouterr().err
    assert open_store(tmp_path / "store").sessions == []
    assert [p.name for p in (tmp_path / "store").iterdir() if p.is_dir()] == []


def _run_reference(truth, clips):
    """Hand-built grid of a continuous run: every frame of `clips` (indices into the session's clips, back to back)
    held until the next frame, each 1/30 s, the run's last video frame one period; the frame or blank level shown."""
    times, frames = truth["frame_times"], []
    grid = []
    for k in clips:
        clip = truth["clips"][k]
        for j in range(clip["n"]):
            i = clip["first"] + j
            last = k == clips[-1] and j == clip["n"] - 1
            duration = 1 / 30 if last and clip["modality"] == "video" else times[i + 1] - times[i]
            n = max(1, round(duration * 30))
            grid.append(times[i] + np.arange(n) / 30)
            shown = np.full(FRAME, BLANK_LEVEL, np.uint8) if clip["frames"] is None else clip["frames"][j]
            frames.extend([shown] * n)
    return np.concatenate(grid), np.stack(frames)


def test_continuous_runs_put_every_train_sample_of_short_clips_in_a_window(tmp_path, capsys):
    folder, truth = make_session(tmp_path / "src", clips_spec=SHORT_CLIPS, treadmill_gap=False)
    runs = {0: [0, 1, 2, 3, 4], 6: [6, 7, 8]}  # blanks and train clips back to back; clip 5 (final test) ends run 0
    references = {first: _run_reference(truth, clips) for first, clips in runs.items()}
    n_train = sum(len(t) for t, _ in references.values())
    assert _import(folder, "--out", tmp_path / "store") == 0
    line = capsys.readouterr().out
    assert "3 trials (final_test_main 1, train 2)" in line
    assert f"train samples in 60-sample windows: {n_train} of {n_train} (0 with --per-clip)" in line
    store = open_store(tmp_path / "store")
    session = store.session(NAME)
    assert session.trials["source_index"].tolist() == [0, 5, 6]
    for first, (t, frames) in references.items():
        trial = session.trial(first)
        assert trial["tier"] == "train" and len(trial["responses"]) == len(t) >= 60
        _check_trial(trial, _reference(truth, t, _nearest), exact=True)
        np.testing.assert_array_equal(trial["video"], frames)
    test_trial = session.trial(5)
    assert test_trial["tier"] == "final_test_main"
    _check_trial(test_trial, _reference(truth, _grid(truth, 5), _nearest), exact=True)
    assert session.manifest["provenance"]["runs"] == {str(k): v for k, v in runs.items()}
    assert cli.main(["data", "info", str(tmp_path / "store"), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["sessions"]
    assert (row["window_tokens"], row["window_tokens_continuous"], row["window_tokens_per_clip"]) == (
        6 * n_train, 6 * n_train, 0)

    # Every train sample lies in some training window of the pipeline.
    layout = SessionLayout.from_store(store)
    windows = pipeline.TrainWindows(store, layout, block=60, max_neurons=8, global_batch=8, seed=0).windows[0]
    covered = np.zeros(session.manifest["n_samples"], bool)
    for k in range(windows.total):
        start, _ = windows.start(np.array(k))
        covered[int(start):int(start) + 60] = True
    train = session.trials["tier"] == "train"
    in_train = np.zeros_like(covered)
    for a, b in zip(session.trials["start"][train], session.trials["stop"][train]):
        in_train[a:b] = True
    np.testing.assert_array_equal(covered, in_train)
    assert in_train.sum() == n_train

    # One trial per clip: no 1-s clip holds a 2-s window, so there is nothing to train on.
    assert _import(folder, "--out", tmp_path / "per_clip", "--per-clip") == 0
    assert "train samples in 60-sample windows: 0 of" in capsys.readouterr().out
    per_clip = open_store(tmp_path / "per_clip")
    assert cli.main(["data", "info", str(tmp_path / "per_clip")]) == 0
    assert f"{6 * 30 * 6:,} neural tokens, 0 in 2-s training windows (imported: 0 per clip)" in capsys.readouterr().out
    with pytest.raises(UserError, match="no train trial with responses of at least config.data.block_samples=60"):
        pipeline.TrainWindows(per_clip, SessionLayout.from_store(per_clip), block=60, max_neurons=8, global_batch=8,
                              seed=0)


def test_a_long_run_is_cut_into_equal_trials_and_loses_only_uncovered_samples(tmp_path, monkeypatch):
    monkeypatch.setattr(experanto, "MAX_RUN_SECONDS", 1.0)  # trials of at most 30 samples
    folder, truth = make_session(tmp_path / "src")
    t, frames = _run_reference(truth, [0, 1, 2])  # two train videos around a blank; the treadmill gap in clip 2
    tread_t = truth["treadmill"][0]
    wide = np.flatnonzero(np.diff(tread_t) > GAP_PERIODS * np.median(np.diff(tread_t)))
    keep = (t < tread_t[wide[0]]) | (t > tread_t[wide[0] + 1])
    assert _import(folder, "--out", tmp_path / "store") == 0
    session = open_store(tmp_path / "store").session(NAME)
    prov = session.manifest["provenance"]
    bounds = np.linspace(0, len(t), -(-len(t) // 30) + 1).round().astype(int)
    assert len(bounds) > 3 and prov["long_run_cuts"]["0"] == bounds[1:-1].tolist() and prov["runs"]["0"] == [0, 1, 2]
    index = session.trials["source_index"]
    rows = np.flatnonzero((session.trials["tier"] == "train") & (session.trials["start"] < session.trials["start"][
        index.tolist().index(3)]))  # the run's trials, written before clip 3's
    trials = [session.trial(int(index[r])) for r in rows]
    # Trials end at the cuts and at the gap, never elsewhere; together they are the run's covered samples.
    assert sum(len(x["responses"]) for x in trials) == keep.sum()
    runs_of_kept = [np.count_nonzero(np.diff(np.concatenate([[0], keep[a:b], [0]]).astype(int)) == 1)
                    for a, b in zip(bounds, bounds[1:])]
    assert len(trials) == sum(runs_of_kept) and max(len(x["responses"]) for x in trials) <= 30
    joined = {f: np.concatenate([x[f] for x in trials]) for f in ("responses", "video")}
    np.testing.assert_array_equal(joined["responses"], _reference(truth, t[keep], _nearest)["responses"])
    np.testing.assert_array_equal(joined["video"], frames[keep])
