"""Sensorium 2023 import: exact round trip from folders and zips, behavior channels, bad input, killed imports."""
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from omnimouse_jax import cli
from omnimouse_jax.data import open_store
from omnimouse_jax.data.schema import BEHAVIOR_CHANNELS
from sensorium_fixtures import NAME, make_session, zip_session


def _import(*args):
    return cli.main(["data", "import-sensorium", *map(str, args)])


def _assert_matches_source(session, arrays, stimulus_only=()):
    for i, video in enumerate(arrays["videos"]):
        trial = session.trial(i)
        np.testing.assert_array_equal(trial["video"], np.moveaxis(video, -1, 0))
        np.testing.assert_array_equal(trial["pupil_center"], arrays["pupil_center"][i].T)
        behavior = arrays["behavior"][i].T.astype(np.float32)
        np.testing.assert_array_equal(trial["behavior"][:, :2], behavior)
        np.testing.assert_array_equal(trial["behavior"][:, 2:4], arrays["pupil_center"][i].T)
        np.testing.assert_allclose(trial["behavior"][:, 4], np.gradient(behavior[:, 0]) * 30.0, rtol=1e-6)
        if i in stimulus_only:
            assert np.isnan(trial["responses"]).all()
        else:
            np.testing.assert_array_equal(trial["responses"], arrays["responses"][i].T)


def test_folder_round_trip_is_exact(tmp_path, capsys):
    folder, arrays = make_session(tmp_path / "src", missing_responses=(2,),
                                  tiers=("train", "train", "live_test_main", "final_test_main"))
    assert _import(folder, "--out", tmp_path / "store") == 0
    assert (f"{NAME}: 4 trials (final_test_main 1, live_test_main 1 (1 stimulus-only), train 2)"
            in capsys.readouterr().out)
    store = open_store(tmp_path / "store")
    session = store.session(NAME)
    assert session.animal == "dynamic29156" and session.behavior_channels == list(BEHAVIOR_CHANNELS)
    assert session.frame_shape == (6, 8) and session.n_neurons == 5
    _assert_matches_source(session, arrays, stimulus_only=(2, 3))
    np.testing.assert_array_equal(session.trials["has_responses"], [True, True, False, False])
    np.testing.assert_array_equal(session.trials["tier"], ["train", "train", "live_test_main", "final_test_main"])
    np.testing.assert_array_equal(session.neurons["unit_ids"], np.arange(100, 105))
    np.testing.assert_allclose(session.neurons["coordinates"],
                               np.load(folder / "meta/neurons/cell_motor_coordinates.npy"), rtol=1e-6)
    assert session.manifest["provenance"]["config"] == {"modality": "video"}
    assert session.manifest["provenance"]["statistics"]["behavior"]["mean"] == [1.5, 2.5]
    assert store.total_neural_tokens == 5 * (30 + 24)

    # Stats: numpy over the train tier only.
    train = np.concatenate([r.T for r in arrays["responses"][:2]])
    np.testing.assert_allclose(session.stats["responses"]["mean"], train.mean(0), rtol=1e-6)
    np.testing.assert_allclose(session.stats["responses"]["std"], train.std(0), rtol=1e-5)

    assert cli.main(["data", "info", str(tmp_path / "store"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    (row,) = info["sessions"]
    assert row["tiers"] == {"train": 2, "live_test_main": 1, "final_test_main": 1}
    assert (row["n_trials"], row["n_samples"], row["n_neurons"]) == (4, 30 + 24 + 27 + 30, 5)
    assert info["total"]["neural_tokens"] == 5 * 54
    assert info["total"]["hours"] == pytest.approx(54 / 30 / 3600)


@pytest.mark.parametrize("nested", [False, True])
def test_zip_equals_folder(tmp_path, nested):
    folder, arrays = make_session(tmp_path / "src")
    archive = zip_session(folder, tmp_path / "session.zip", nested=nested)
    assert _import(archive, "--out", tmp_path / "store") == 0
    _assert_matches_source(open_store(tmp_path / "store").session(NAME), arrays, stimulus_only=(3,))


def test_parent_folder_with_several_sessions_and_rerun(tmp_path, capsys):
    _, a = make_session(tmp_path / "src", "dynamic1-1-1-Video-x", seed=1)
    folder_b, b = make_session(tmp_path / "build", "dynamic2-2-2-Video-y", seed=2)
    zip_session(folder_b, tmp_path / "src" / "b.zip")
    assert _import(tmp_path / "src", "--out", tmp_path / "store") == 0
    store = open_store(tmp_path / "store")
    assert store.sessions == ["dynamic1-1-1-Video-x", "dynamic2-2-2-Video-y"]
    _assert_matches_source(store.session("dynamic2-2-2-Video-y"), b, stimulus_only=(3,))
    capsys.readouterr()
    assert _import(tmp_path / "src", "--out", tmp_path / "store") == 0
    assert capsys.readouterr().out.count("skipped") == 2
    assert _import(tmp_path / "src", "--out", tmp_path / "store", "--replace") == 0
    assert "MB/s" in capsys.readouterr().out
    _assert_matches_source(open_store(tmp_path / "store").session("dynamic1-1-1-Video-x"), a, stimulus_only=(3,))


def test_float_video_is_quantised_within_half_a_step(tmp_path):
    folder, arrays = make_session(tmp_path / "src", float_video=True)
    assert _import(folder, "--out", tmp_path / "store") == 0
    session = open_store(tmp_path / "store").session(NAME)
    for i, source in enumerate(arrays["videos"]):
        step = (source.max() - source.min()) / 255
        err = np.abs(session.trial(i)["video"] - np.moveaxis(source, -1, 0)).max()
        assert err <= step / 2 * 1.0001


def _truncate(path):
    path.write_bytes(path.read_bytes()[:100])


BAD_INPUTS = {
    "missing data folder": (lambda f: shutil.rmtree(f / "data"), "data/videos: missing folder"),
    "missing trial file": (lambda f: (f / "data/behavior/1.npy").unlink(),
                           "data/behavior/1.npy: missing; trial 1 has data/videos/1.npy, data/pupil_center/1.npy"),
    "missing video file": (lambda f: (f / "data/videos/1.npy").unlink(),
                           "data/videos/1.npy: missing; trial 1 has data/behavior/1.npy, data/pupil_center/1.npy"),
    "extra trial file": (lambda f: shutil.copy(f / "data/pupil_center/0.npy", f / "data/pupil_center/4.npy"),
                         "data/pupil_center/4.npy: trial file counts differ: no trial 4 in data/videos, data/behavior"),
    "missing train responses": (lambda f: (f / "data/responses/0.npy").unlink(),
                                "data/responses/0.npy: missing for a trial of tier 'train'"),
    "missing oracle responses": (lambda f: (f / "data/responses/2.npy").unlink(),
                                 "data/responses/2.npy: missing for a trial of tier 'oracle'"),
    "neuron count": (lambda f: np.save(f / "data/responses/1.npy", np.zeros((6, 24), np.float32)),
                     "data/responses/1.npy: shape (6, 24)"),
    "truncated npy": (lambda f: _truncate(f / "data/videos/2.npy"), "data/videos/2.npy: not a readable .npy"),
    "not npy": (lambda f: (f / "data/behavior/0.npy").write_text("hello"), "data/behavior/0.npy: not a readable .npy"),
    "frame counts": (lambda f: np.save(f / "data/pupil_center/2.npy", np.zeros((2, 26))),
                     "data/pupil_center/2.npy: 26 frames"),
    "tiers length": (lambda f: np.save(f / "meta/trials/tiers.npy", np.array(["train"] * 3)), "meta/trials/tiers.npy"),
    "empty session": (lambda f: [p.unlink() for p in (f / "data").rglob("*.npy")], "data/videos: no trials"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_exits_2_naming_the_file(tmp_path, capsys, case):
    folder, _ = make_session(tmp_path / "src")
    corrupt, message = BAD_INPUTS[case]
    corrupt(folder)
    assert _import(folder, "--out", tmp_path / "store") == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("omnimouse: error:")
    if (tmp_path / "store").exists():
        assert open_store(tmp_path / "store").sessions == []
        assert [p.name for p in (tmp_path / "store").iterdir() if p.is_dir()] == []
        assert cli.main(["data", "check", str(tmp_path / "store")]) == 2  # an empty store is not a sound one
        assert "lists no session" in capsys.readouterr().out


def test_source_not_found_exits_2(tmp_path, capsys):
    assert _import(tmp_path / "nope", "--out", tmp_path / "store") == 2
    assert str(tmp_path / "nope") in capsys.readouterr().err


# Runs the import in a child process that SIGKILLs itself at one point of the write: after two trials, just before
# the session directory is renamed into place, or just before catalog.json is replaced.
_KILLER = """
import os, signal, sys
from omnimouse_jax import cli
from omnimouse_jax.data import store
point, name = sys.argv[1], sys.argv[2]
def die():
    os.kill(os.getpid(), signal.SIGKILL)
add_trial, calls = store.SessionWriter.add_trial, []
def add_trial_then_die(self, **kw):
    add_trial(self, **kw)
    calls.append(1)
    if point == "trial" and len(calls) == 2:
        die()
rename, replace = os.rename, os.replace
def rename_or_die(src, dst):
    if point == "publish" and os.path.basename(str(dst)) == name:
        die()
    rename(src, dst)
def replace_or_die(src, dst):
    if point == "catalog" and str(dst).endswith("catalog.json") and calls:
        die()
    replace(src, dst)
store.SessionWriter.add_trial, store.os.rename, store.os.replace = add_trial_then_die, rename_or_die, replace_or_die
cli.main(sys.argv[3:])
"""


@pytest.mark.parametrize("point", ["trial", "publish", "catalog"])
def test_killed_import_leaves_no_session_and_rerun_completes(tmp_path, capsys, point):
    folder, arrays = make_session(tmp_path / "src")
    out = tmp_path / "store"
    argv = ["data", "import-sensorium", str(folder), "--out", str(out)]
    proc = subprocess.run([sys.executable, "-c", _KILLER, point, NAME, *argv], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert NAME not in open_store(out).sessions
    # The store holds no session (check fails, naming an uncatalogued directory where one was left complete);
    # hidden temporaries are only noted.
    assert cli.main(["data", "check", str(out)]) == 2
    assert ("directory not listed in catalog.json" in capsys.readouterr().out) == (point == "catalog")
    assert _import(folder, "--out", out) == 0
    _assert_matches_source(open_store(out).session(NAME), arrays, stimulus_only=(3,))
    assert set(os.listdir(out)) == {".catalog.lock", NAME, "catalog.json"}
    assert cli.main(["data", "check", str(out)]) == 0
