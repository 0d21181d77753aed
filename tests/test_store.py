"""SessionWriter / Session: exact round trip across many shards, windows, statistics, atomicity, errors."""
import json
import pickle

import numpy as np
import pytest

from omnimouse_jax.data import store
from omnimouse_jax.data.store import SessionWriter, open_store
from omnimouse_jax.errors import UserError
from store_fixtures import write_session

N, FRAME, CHANNELS = 7, (4, 5), ["a", "b", "c"]


def _trials(seed=0):
    """Five trials of different lengths; trial 3 is stimulus-only and repeats trial 1's video (an oracle repeat)."""
    rng = np.random.default_rng(seed)
    trials = []
    for i, (t, tier) in enumerate(zip([40, 33, 51, 33, 20], ["train", "oracle", "train", "oracle", "live_test_main"])):
        trials.append({
            "responses": None if i == 3 else rng.gamma(2.0, 1.0, (t, N)).astype(np.float32),
            "video": rng.integers(0, 256, (t, *FRAME), dtype=np.uint8),
            "behavior": rng.normal(0, 1, (t, 3)).astype(np.float32),
            "pupil_center": rng.normal(0, 1, (t, 2)).astype(np.float32),
            "true_rates": rng.random((t, N)).astype(np.float32),
            "tier": tier, "source_index": 10 + i,
        })
    trials[3]["video"] = trials[1]["video"].copy()
    return trials


def _write(root, trials, name="s", **kwargs):
    with SessionWriter(root, name, animal="m1", n_neurons=N, frame_shape=FRAME, behavior_channels=CHANNELS,
                       extra_fields={"true_rates": N}, unit_ids=np.arange(N) * 3, **kwargs) as writer:
        for trial in trials:
            writer.add_trial(**trial)


@pytest.fixture
def tiny_shards(monkeypatch):
    """Read chunks of 8 samples in shards of 8, so every trial spans several shards and flushes mid-trial."""
    monkeypatch.setattr(store, "READ_ROWS", 8)
    monkeypatch.setattr(store, "SMALL_READ_ROWS", 8)
    monkeypatch.setattr(store, "SHARD_BYTES", 1)


def test_round_trip_windows_and_stats(tmp_path, tiny_shards):
    trials = _trials()
    _write(tmp_path, trials)
    session = open_store(tmp_path).session("s")
    assert (session.n_trials, session.n_samples, session.n_neurons) == (5, 177, N)
    assert session.animal == "m1" and session.frame_shape == FRAME and session.extra_fields == {"true_rates": N}
    assert len(list((tmp_path / "s" / "responses" / "c").iterdir())) == 177 // 8 + 1  # one file per 8-sample shard
    for trial in trials:
        got = session.trial(trial["source_index"])
        expected = np.full((len(trial["video"]), N), np.nan, np.float32) if trial["responses"] is None else trial["responses"]
        np.testing.assert_array_equal(got["responses"], expected)
        for key in ("video", "behavior", "pupil_center", "true_rates"):
            np.testing.assert_array_equal(got[key], trial[key])
        assert got["video"].dtype == np.uint8 and got["tier"] == trial["tier"]
    np.testing.assert_array_equal(session.trials["has_responses"], [True, True, True, False, True])
    np.testing.assert_array_equal(session.trials["source_index"], [10, 11, 12, 13, 14])
    ids = session.trials["video_id"]
    assert ids[1] == ids[3] and len(set(ids)) == 4

    full = {k: np.concatenate([t[k] for t in trials]) for k in ("video", "behavior", "pupil_center")}
    responses = np.concatenate([session.trial(10 + i)["responses"] for i in range(5)])
    for start, stop in [(0, 60), (37, 97), (117, 177), (5, 6)]:
        window = session.read(start, stop, neurons=np.array([6, 0, 2]))
        np.testing.assert_array_equal(window["responses"], responses[start:stop][:, [6, 0, 2]])
        for key, value in full.items():
            np.testing.assert_array_equal(window[key], value[start:stop])
    with pytest.raises(IndexError):
        session.read(170, 178)

    train = [t for t in trials if t["tier"] == "train"]
    resp = np.concatenate([t["responses"] for t in train]).astype(np.float64)
    for stat, fn in [("mean", np.mean), ("std", np.std), ("min", np.min), ("max", np.max)]:
        np.testing.assert_allclose(session.stats["responses"][stat], fn(resp, axis=0), rtol=1e-10)
    behavior = np.concatenate([t["behavior"] for t in train]).astype(np.float64)
    np.testing.assert_allclose(session.stats["behavior"]["std"], behavior.std(0), rtol=1e-10)
    video = np.concatenate([t["video"] for t in train]).astype(np.float64)
    np.testing.assert_allclose(session.stats["video"]["mean"], [video.mean()], rtol=1e-12)
    np.testing.assert_array_equal(session.neurons["unit_ids"], np.arange(N) * 3)

    clone = pickle.loads(pickle.dumps(session))
    np.testing.assert_array_equal(clone.read(3, 9)["video"], full["video"][3:9])


def test_float16_and_float_video(tmp_path):
    trials = _trials()
    rng = np.random.default_rng(1)
    trials[0]["video"] = rng.normal(0.0, 1.0, trials[0]["video"].shape)           # quantised affinely
    trials[2]["video"] = trials[2]["video"].astype(np.float64)                     # integral floats: exact
    _write(tmp_path, trials, response_dtype="float16")
    session = open_store(tmp_path).session("s")
    got = session.trial(10)
    np.testing.assert_array_equal(got["responses"], trials[0]["responses"].astype(np.float16).astype(np.float32))
    source = trials[0]["video"]
    assert np.abs(got["video"] - source).max() <= (source.max() - source.min()) / 510 * 1.0001
    np.testing.assert_array_equal(session.trial(12)["video"], trials[2]["video"])
    assert session.manifest["video_encoding"]["exact_trials"] == 4


def test_failed_write_leaves_nothing(tmp_path):
    _write(tmp_path, _trials()[:1], name="keep")
    before = (tmp_path / "catalog.json").read_text()
    with pytest.raises(RuntimeError):
        with SessionWriter(tmp_path, "lost", animal="m", n_neurons=N, frame_shape=FRAME,
                           behavior_channels=CHANNELS) as writer:
            t = _trials()[0]
            writer.add_trial(responses=t["responses"], video=t["video"], behavior=t["behavior"],
                             pupil_center=t["pupil_center"], tier="train")
            raise RuntimeError("source went away")
    assert (tmp_path / "catalog.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [".catalog.lock", "catalog.json", "keep"]


def test_replace_and_bad_usage(tmp_path):
    trials = _trials()
    _write(tmp_path, trials)
    with pytest.raises(UserError, match="already in the store"):
        _write(tmp_path, trials)
    _write(tmp_path, trials[:2], replace=True)
    assert open_store(tmp_path).session("s").n_trials == 2
    assert json.loads((tmp_path / "catalog.json").read_text())["sessions"]["s"]["n_trials"] == 2
    bad = dict(trials[0], behavior=np.zeros((40, 2)))
    with pytest.raises(UserError, match=r"behavior has shape \(40, 2\); expected \(40, 3\)"):
        _write(tmp_path, [bad], name="t")
    nan_train = dict(trials[0], responses=np.where(np.eye(40, N) > 0, np.nan, trials[0]["responses"]))
    with pytest.raises(UserError, match="train-tier responses contain NaN"):
        _write(tmp_path, [nan_train], name="t")
    with pytest.raises(UserError, match="no trials"):
        _write(tmp_path, [], name="t")
    assert open_store(tmp_path).sessions == ["s"]


def test_open_store_errors_name_the_path(tmp_path):
    with pytest.raises(UserError, match=str(tmp_path / "nothing")):
        open_store(tmp_path / "nothing")
    with pytest.raises(UserError, match="catalog.json: missing"):
        open_store(tmp_path)
    _write(tmp_path, _trials()[:1])
    with pytest.raises(UserError, match="no session 'x'"):
        open_store(tmp_path).session("x")


def test_session_shares_are_nested_and_follow_the_hashed_order(tmp_path):
    import hashlib

    from omnimouse_jax.data.layout import SessionLayout

    names = ["m1-a", "m1-b", "m2-a", "m3-a", "m3-b"]
    for k, name in enumerate(names):
        write_session(tmp_path / "store", name, lengths=(70,), tiers=("train",), seed=k)
    store = open_store(tmp_path / "store")
    by_hash = sorted(names, key=lambda n: hashlib.sha256(n.encode()).hexdigest())
    shares = {f: SessionLayout.from_store(store, f"share:{f}").names for f in (0.2, 0.5, 0.8, 1.0)}
    # 5 sessions: 1, 2.5 -> 3 (half up), 4 and 5 of them
    assert {f: len(v) for f, v in shares.items()} == {0.2: 1, 0.5: 3, 0.8: 4, 1.0: 5}
    for f, chosen in shares.items():
        assert list(chosen) == by_hash[:len(chosen)]
    assert set(shares[1.0]) == set(store.sessions)
    for bad in ("share:0", "share:1.5", "share:half"):
        with pytest.raises(UserError, match=f"config.data.sessions='{bad}': expected share:F with 0 < F <= 1"):
            SessionLayout.from_store(store, bad)
