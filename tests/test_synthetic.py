"""Digital mice: determinism, the planted structure, both output layouts, and the `data synth` command."""
import json

import numpy as np
import pytest

from omnimouse_jax import cli
from omnimouse_jax.data import synthetic
from omnimouse_jax.data.schema import BEHAVIOR_CHANNELS
from omnimouse_jax.data.synthetic import DigitalMiceConfig, generate_mouse, write_digital_mice

SMALL = DigitalMiceConfig(mice=2, neurons=(24, 40), trials=10, oracle_videos=2, oracle_repeats=3, test_trials=2,
                          trial_length=90, seed=3)
TINY = DigitalMiceConfig(mice=2, neurons=(5, 7), trials=2, oracle_videos=1, oracle_repeats=2, test_trials=1,
                         trial_length=40, frame_shape=(16, 24), seed=11)


@pytest.fixture(scope="module")
def mice():
    """(mouse, trials) for every mouse of SMALL."""
    out = []
    for m in range(SMALL.mice):
        mouse = generate_mouse(SMALL, m)
        out.append((mouse, list(mouse.trials())))
    return out


def _stack(trials, key):
    return np.concatenate([getattr(t, key) for t in trials]).astype(np.float64)


def _reference_drive(video_TxHxW, gt):
    """The stimulus term recomputed from the module docstring's formula with separate numpy routes."""
    x = (video_TxHxW.astype(np.float64) - 113.0) / 59.0
    proj_TxNx2 = np.einsum("thw,nkhw->tnk", x, gt["filters"].astype(np.float64))
    t_len = len(x)
    s_TxNx2 = np.stack([[np.convolve(proj_TxNx2[:, n, k], gt["temporal_kernels"][n])[:t_len] for k in range(2)]
                        for n in range(proj_TxNx2.shape[1])]).transpose(2, 0, 1)
    energy = np.sqrt(s_TxNx2[..., 0] ** 2 + s_TxNx2[..., 1] ** 2)
    u = np.where(gt["is_complex"], energy, np.clip(s_TxNx2[..., 0], 0, None))
    return u / gt["drive_scale"]


def _behavior_log_gain(behavior, pupil_center, gt):
    z = (np.c_[behavior[:, 1], behavior[:, 0], pupil_center] - gt["behavior_center"]) / gt["behavior_scale"]
    return (z[:, :1] * gt["gain_running"] + z[:, 1:2] * gt["gain_pupil"]
            + z[:, 2:3] * gt["gain_eye"][:, 0] + z[:, 3:4] * gt["gain_eye"][:, 1])


def test_same_seed_same_bytes_other_seed_differs():
    def snapshot(config):
        mouse = generate_mouse(config, 1)
        arrays = [mouse.ground_truth[k] for k in sorted(mouse.ground_truth)]
        for t in mouse.trials():
            arrays += [t.video, t.responses, t.true_rates, t.behavior, t.pupil_center, t.latent]
        return mouse.name, [np.asarray(a).tobytes() for a in arrays]

    first, again = snapshot(TINY), snapshot(TINY)
    assert first == again
    other = snapshot(DigitalMiceConfig(**{**TINY.__dict__, "seed": 12}))
    assert other[0] != first[0]
    assert sum(a != b for a, b in zip(first[1], other[1])) >= len(first[1]) - 4  # only fixed constants may agree


def test_gabor_filters_match_their_parameters(mice):
    gt = mice[0][0].ground_truth
    y, x = np.mgrid[0:36, 0:64]
    for n in range(3):
        dx, dy = x - gt["rf_center"][n, 0], y - gt["rf_center"][n, 1]
        theta = gt["rf_orientation"][n]
        along, across = dx * np.cos(theta) + dy * np.sin(theta), -dx * np.sin(theta) + dy * np.cos(theta)
        env = np.exp(-(along**2 + (gt["rf_aspect"][n] * across) ** 2) / (2 * gt["rf_sigma"][n] ** 2))
        g = env * np.cos(2 * np.pi * gt["rf_frequency"][n] * along + gt["rf_phase"][n])
        g -= g.mean()
        np.testing.assert_allclose(gt["filters"][n, 0], g / np.linalg.norm(g), atol=1e-6)
        quadrature = gt["filters"][n, 1]
        assert (np.abs(quadrature).max() > 0) == bool(gt["is_complex"][n])


def test_true_rates_follow_the_documented_formula(mice):
    mouse, trials = mice[1]
    gt = mouse.ground_truth
    assert 0 < gt["is_complex"].sum() < mouse.n_neurons  # both cell types are exercised
    for trial in trials[:4]:
        drive = _reference_drive(trial.video, gt)
        log_gain = _behavior_log_gain(trial.behavior.astype(np.float64), trial.pupil_center, gt)
        log_gain += trial.latent.astype(np.float64) @ gt["loadings"].T
        expected = gt["base"] * np.exp(log_gain) * (gt["offset"] + drive)
        np.testing.assert_allclose(trial.true_rates, expected, rtol=2e-4)
    # The calibration makes every neuron's stimulus drive average about 1 on fresh clips.
    mean_drive = np.mean([_reference_drive(t.video, gt).mean(0) for t in trials], 0)
    assert 0.6 < np.median(mean_drive) < 1.4


def test_responses_are_noisy_nonnegative_observations_of_the_rates(mice):
    for mouse, trials in mice:
        y, rates = _stack(trials, "responses"), _stack(trials, "true_rates")
        assert all(t.responses.dtype == np.float32 and t.responses.shape == (90, mouse.n_neurons) for t in trials)
        assert np.isfinite(y).all() and (y >= 0).all() and (rates > 0).all()
        assert 0.3 < (y == 0).mean() < 0.9  # sparse, like deconvolved calcium
        # Unbiased: E[y] = rate. Pooled over neurons the relative error is a few percent at this sample size.
        assert abs(y.sum() / rates.sum() - 1) < 0.1
        r = [np.corrcoef(y[:, n], rates[:, n])[0, 1] for n in range(mouse.n_neurons)]
        assert 0.3 < np.mean(r) < 0.9  # informative but far from noiseless


def test_tiers_and_oracle_repeats(mice):
    oracle_videos = {}
    for mouse, trials in mice:
        tiers = [t.tier for t in trials]
        assert tiers.count("train") == SMALL.trials and tiers.count("final_test_main") == SMALL.test_trials
        assert tiers.count("oracle") == SMALL.oracle_videos * SMALL.oracle_repeats
        assert [t.index for t in trials] == list(range(len(trials)))
        assert tiers != sorted(tiers, key=synthetic.TIERS.index)  # tiers interleave, as in Sensorium
        by_video = {}
        for t in trials:
            by_video.setdefault(t.video_id, []).append(t)
        for video_id, group in by_video.items():
            if group[0].tier != "oracle":
                assert len(group) == 1
                continue
            assert len(group) == SMALL.oracle_repeats
            for other in group[1:]:
                assert other.video.tobytes() == group[0].video.tobytes()
                assert not np.array_equal(other.responses, group[0].responses)
                assert not np.array_equal(other.behavior, group[0].behavior)
                assert not np.array_equal(other.latent, group[0].latent)
            oracle_videos.setdefault(video_id, set()).add(group[0].video.tobytes())
        distinct = {t.video.tobytes() for t in trials}
        assert len(distinct) == len(by_video)
    assert all(len(v) == 1 for v in oracle_videos.values())  # oracle clips are shared by all mice


def test_latent_state_is_low_rank_and_ar1_with_the_planted_coefficient(mice):
    mouse, trials = mice[1]
    gt = mouse.ground_truth
    log_residual, latent_hat = [], []
    for t in trials:
        stim = gt["base"] * (gt["offset"] + _reference_drive(t.video, gt))
        r = np.log(t.true_rates.astype(np.float64)) - np.log(stim) - _behavior_log_gain(t.behavior, t.pupil_center, gt)
        log_residual.append(r)
        latent_hat.append(np.linalg.lstsq(gt["loadings"], r.T, rcond=None)[0].T)
    singular = np.linalg.svd(np.concatenate(log_residual), compute_uv=False)
    assert singular[SMALL.latent_dim] < 1e-3 * singular[0]  # rank latent_dim: one shared low-dimensional state
    previous = np.concatenate([z[:-1] for z in latent_hat])
    following = np.concatenate([z[1:] for z in latent_hat])
    transition = np.linalg.lstsq(previous, following, rcond=None)[0]
    planted = np.exp(-1 / (SMALL.latent_tau_s * SMALL.sampling_rate))
    np.testing.assert_allclose(np.diag(transition), planted, atol=0.03)
    assert np.abs(transition - np.diag(np.diag(transition))).max() < 0.03
    assert float(gt["latent_ar"]) == pytest.approx(planted)


def test_noisy_residuals_are_correlated_through_the_loadings(mice):
    mouse, trials = mice[1]
    gt = mouse.ground_truth
    residual = np.concatenate([
        t.responses / (gt["base"] * (gt["offset"] + _reference_drive(t.video, gt))
                       * np.exp(_behavior_log_gain(t.behavior, t.pupil_center, gt)))
        for t in trials])
    corr = np.corrcoef(residual.T)
    shared = gt["loadings"] @ gt["loadings"].T
    upper = np.triu_indices(mouse.n_neurons, 1)
    assert np.corrcoef(corr[upper], shared[upper])[0, 1] > 0.5
    # The population state is visible one step ahead in the noisy residuals.
    state = np.linalg.lstsq(gt["loadings"], np.log1p(residual).T, rcond=None)[0][0]
    lag1 = np.corrcoef(state[:-1], state[1:])[0, 1]
    assert lag1 > 0.3


def test_behavior_dynamics_gains_and_decodability(mice):
    mouse, trials = mice[1]
    gt = mouse.ground_truth
    for t in trials:
        np.testing.assert_array_equal(t.behavior[:, 2:4], t.pupil_center)
        np.testing.assert_allclose(t.behavior[:, 4], np.gradient(t.behavior[:, 0].astype(np.float64)) * 30.0,
                                   rtol=1e-4, atol=1e-3)
    behavior, y = _stack(trials, "behavior"), _stack(trials, "responses")
    assert (behavior[:, 1] >= 0).all() and (behavior[:, 0] > 0).all()
    # Running modulates gain in the planted direction: response ratio fast/slow tracks each neuron's running gain.
    fast = behavior[:, 1] > np.median(behavior[:, 1])
    log_ratio = np.log(y[fast].mean(0) / y[~fast].mean(0))
    assert np.corrcoef(log_ratio, gt["gain_running"])[0, 1] > 0.5
    strong = gt["gain_running"] > 0.3 * mouse.config.behavior_gain  # the mean gain is 0.3 x behavior_gain
    assert strong.sum() >= 5 and (log_ratio[strong] > 0).mean() >= 0.9
    # Behavior has its own dynamics and is decodable from the population on held-out trials.
    tiers = np.concatenate([[t.tier] * len(t.responses) for t in trials])
    features = np.c_[np.ones(len(y)), np.log1p(y)]
    train = tiers == "train"
    weights = np.linalg.lstsq(features[train], behavior[train, 1], rcond=None)[0]
    # 0.48 with the default behavior_gain 0.5 (behavior is a minority of the rates' variance).
    assert np.corrcoef(features[~train] @ weights, behavior[~train, 1])[0, 1] > 0.4
    latent_first = _stack(trials, "latent")[:, 0]
    assert np.corrcoef(latent_first, behavior[:, 1])[0, 1] > 0.15  # the latent state carries behavior too


def test_sensorium_layout_shapes_and_import_roundtrip(tmp_path):
    names = write_digital_mice(tmp_path / "src", TINY, layout="sensorium")
    assert len(names) == TINY.mice and len({n.split("-")[0] for n in names}) == TINY.mice
    h, w = TINY.frame_shape
    sources = {}
    for name, n_neurons in zip(names, TINY.neuron_counts()):
        folder = tmp_path / "src" / name
        assert name.startswith("dynamic") and "-Video-" in name and len(name.rsplit("-", 1)[1]) == 32
        tiers = np.load(folder / "meta/trials/tiers.npy")
        assert tiers.dtype.kind == "U" and len(tiers) == TINY.trials_per_mouse()
        assert np.load(folder / "meta/neurons/unit_ids.npy").shape == (n_neurons,)
        assert np.load(folder / "meta/neurons/cell_motor_coordinates.npy").shape == (n_neurons, 3)
        for key in ("videos", "responses", "behavior", "pupil_center"):
            for stat in ("mean", "std", "min", "max", "median"):
                assert (folder / f"meta/statistics/{key}/all/{stat}.npy").is_file()
        assert np.load(folder / "meta/statistics/responses/all/mean.npy").shape == (n_neurons,)
        assert json.loads((folder / "config.json").read_text())["n_neurons"] == n_neurons
        with np.load(folder / "meta/ground_truth.npz") as gt:
            assert gt["latent"].shape == (len(tiers), TINY.trial_length, TINY.latent_dim)
        arrays = []
        for i in range(len(tiers)):
            a = {key: np.load(folder / f"data/{key}/{i}.npy")
                 for key in ("videos", "responses", "behavior", "pupil_center")}
            assert a["videos"].shape == (h, w, TINY.trial_length) and a["videos"].dtype == np.uint8
            assert a["responses"].shape == (n_neurons, TINY.trial_length) and a["responses"].dtype == np.float32
            assert a["behavior"].shape == (2, TINY.trial_length) and a["pupil_center"].shape == (2, TINY.trial_length)
            arrays.append(a)
        sources[name] = (tiers, arrays)
        # meta/statistics are over all trials: videos pooled, responses per neuron.
        videos = np.concatenate([a["videos"].ravel() for a in arrays])
        responses = np.concatenate([a["responses"] for a in arrays], 1)
        for stat, fn in (("mean", np.mean), ("std", np.std), ("min", np.min), ("max", np.max), ("median", np.median)):
            np.testing.assert_allclose(np.load(folder / f"meta/statistics/videos/all/{stat}.npy"), fn(videos),
                                       rtol=1e-6)
            np.testing.assert_allclose(np.load(folder / f"meta/statistics/responses/all/{stat}.npy"),
                                       fn(responses, axis=1), rtol=1e-5, atol=1e-6)
    # The generator's arrays are what was written (frame axis moved last).
    mouse = generate_mouse(TINY, 0)
    for trial in mouse.trials():
        a = sources[names[0]][1][trial.index]
        np.testing.assert_array_equal(a["videos"], trial.video.transpose(1, 2, 0))
        np.testing.assert_array_equal(a["responses"], trial.responses.T)

    assert cli.main(["data", "import-sensorium", str(tmp_path / "src"), "--out", str(tmp_path / "store")]) == 0
    from omnimouse_jax.data.store import open_store

    store = open_store(tmp_path / "store")
    assert store.sessions == sorted(names)
    for name, (tiers, arrays) in sources.items():
        session = store.session(name)
        for i, a in enumerate(arrays):
            got = session.trial(i)
            np.testing.assert_array_equal(got["video"], a["videos"].transpose(2, 0, 1))
            np.testing.assert_array_equal(got["responses"], a["responses"].T)
            np.testing.assert_array_equal(got["behavior"][:, :2], a["behavior"].T)
            np.testing.assert_array_equal(got["pupil_center"], a["pupil_center"].T)
            assert got["tier"] == tiers[i]


def test_store_layout_holds_the_generated_trials_and_true_rates(tmp_path):
    from omnimouse_jax.data.store import open_store

    names = write_digital_mice(tmp_path, TINY, layout="store")
    store = open_store(tmp_path)
    assert store.sessions == sorted(names)
    for m, name in enumerate(names):
        mouse = generate_mouse(TINY, m)
        session = store.session(name)
        assert session.behavior_channels == list(BEHAVIOR_CHANNELS)
        assert session.n_neurons == TINY.neuron_counts()[m] and session.n_trials == TINY.trials_per_mouse()
        with np.load(tmp_path / "ground_truth" / f"{name}.npz") as gt:
            np.testing.assert_array_equal(gt["loadings"], mouse.ground_truth["loadings"])
            latent = gt["latent"]
        for trial in mouse.trials():
            got = session.trial(trial.index)
            np.testing.assert_array_equal(got["responses"], trial.responses)
            np.testing.assert_array_equal(got["video"], trial.video)
            np.testing.assert_array_equal(got["behavior"], trial.behavior)
            np.testing.assert_array_equal(got["pupil_center"], trial.pupil_center)
            np.testing.assert_array_equal(got["true_rates"], trial.true_rates)
            np.testing.assert_array_equal(latent[trial.index], trial.latent)
            assert got["tier"] == trial.tier
        start, stop = session.trials["start"][0], session.trials["stop"][0]
        rates = session.read(int(start), int(stop), fields=("true_rates",))["true_rates"]
        assert rates.shape == (TINY.trial_length, TINY.neuron_counts()[m])


def test_synth_command_writes_and_reports(tmp_path, capsys):
    out = tmp_path / "mice"
    args = ["data", "synth", str(out), "--neurons", "6,9", "--trials", "2", "--oracle-videos", "1",
            "--oracle-repeats", "2", "--test-trials", "1", "--trial-length", "30", "--seed", "5"]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert cli.main(["data", "check", str(out)]) == 0  # the ground-truth sidecar is not mistaken for a session
    capsys.readouterr()
    trials, tokens = 2 + 2 + 1, (6 + 9) * 5 * 30
    assert "wrote 2 sessions" in printed and f"{tokens:,} neural tokens" in printed
    assert f"{2 * trials} trials" in printed and "15 neurons" in printed
    assert cli.main(args) == 2  # OUT is now non-empty
    assert "--overwrite" in capsys.readouterr().err
    assert cli.main(args + ["--overwrite"]) == 0


@pytest.mark.parametrize("extra, flag", [
    (["--mice", "0"], "--mice"),
    (["--trials", "-1"], "--trials"),
    (["--neurons", "4,0"], "--neurons"),
    (["--neurons", "four"], "--neurons"),
    (["--mice", "3", "--neurons", "4,5"], "--neurons"),
    (["--trial-length", "3"], "--trial-length"),
])
def test_synth_command_rejects_bad_arguments(tmp_path, capsys, extra, flag):
    assert cli.main(["data", "synth", str(tmp_path / "x"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("omnimouse: error: ") and flag in err
    assert not (tmp_path / "x").exists()


def test_synth_command_rejects_an_unknown_layout(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["data", "synth", str(tmp_path / "x"), "--layout", "hdf5"])
    assert exit_.value.code == 2 and "--layout" in capsys.readouterr().err
