"""The input pipeline against numpy references computed straight from the store."""
import numpy as np
import pytest

from omnimouse_jax.data import pipeline
from omnimouse_jax.data.layout import SessionLayout
from omnimouse_jax.data.store import open_store
from omnimouse_jax.data.synthetic import DigitalMiceConfig, write_digital_mice
from omnimouse_jax.errors import UserError

BLOCK = 30


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline_store")
    config = DigitalMiceConfig(mice=2, neurons=(12, 20), trials=8, oracle_videos=1, oracle_repeats=2, test_trials=3,
                               trial_length=75, frame_shape=(8, 12), seed=3)
    write_digital_mice(root, config, layout="store")
    return open_store(root)


@pytest.fixture(scope="module")
def layout(store):
    return SessionLayout.from_store(store)


def _train(store, layout, **kw):
    args = dict(block=BLOCK, max_neurons=16, global_batch=8, seed=0)
    args.update(kw)
    return pipeline.TrainWindows(store, layout, **args)


def test_layout_row_ranges(layout):
    assert layout.row_offsets == (0, 12) and layout.num_neuron_rows == 32
    grown = layout.extend(SessionLayout(("new",), ("mouseX",), (5,)))
    assert grown.row_offsets == (0, 12, 32) and grown.num_animals == 3
    assert SessionLayout.from_dict(grown.to_dict()) == grown
    with pytest.raises(UserError, match="already"):
        grown.extend(SessionLayout(("new",), ("m",), (1,)))


def test_training_windows_stay_inside_train_trials_and_match_the_store(store, layout):
    windows = _train(store, layout)
    sessions = [store.session(n) for n in layout.names]
    for b in range(6):
        batch = windows(b)
        for i in range(8):
            k = int(batch["session_index"][i])
            s, start = sessions[k], int(batch["window_start"][i])
            t = s.trials
            row = int(np.flatnonzero(t["source_index"] == batch["trial_index"][i])[0])
            assert t["tier"][row] == "train" and t["start"][row] <= start and start + BLOCK <= t["stop"][row]
            n = int(batch["neuron_mask"][i].sum())
            assert n == min(layout.n_neurons[k], 16) and not batch["neuron_mask"][i, n:].any()
            local = batch["neuron_index"][i, :n] - layout.row_offsets[k]
            assert len(set(local.tolist())) == n and local.min() >= 0 and local.max() < layout.n_neurons[k]
            raw = s.trial(int(batch["trial_index"][i]))
            offset = start - int(t["start"][row])
            assert batch["trial_offset"][i] == offset
            expected = raw["responses"][offset:offset + BLOCK][:, local]
            std = s.stats["responses"]["std"][local]
            np.testing.assert_allclose(batch["responses"][i, :, :n] * std, expected, rtol=1e-5, atol=1e-6)
            assert np.all(batch["responses"][i, :, n:] == 0)
            np.testing.assert_array_equal(batch["video"][i], raw["video"][offset:offset + BLOCK])
            beh = raw["behavior"][offset:offset + BLOCK]
            stats = s.stats["behavior"]
            np.testing.assert_allclose(batch["behavior"][i], (beh - stats["mean"]) / stats["std"], rtol=1e-4, atol=1e-5)
            assert batch["animal_index"][i] == layout.animal_index(layout.names[k])


def test_same_seed_same_batches_other_seed_differs(store, layout):
    a, b, c = _train(store, layout)(4), _train(store, layout)(4), _train(store, layout, seed=1)(4)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["window_start"], c["window_start"])


def test_two_hosts_see_disjoint_complete_shards(store, layout):
    whole = _train(store, layout)(7)
    parts = [_train(store, layout, process_index=h, process_count=2)(7) for h in range(2)]
    for key in whole:
        np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])


def test_batch_must_divide_over_processes(store, layout):
    with pytest.raises(UserError, match="config.train.batch_size=8"):
        _train(store, layout, process_count=3)


def test_fraction_selects_a_nested_quarter_of_the_windows(store, layout):
    full, quarter = _train(store, layout), _train(store, layout, fraction=0.25)
    # 8 train trials of 75 samples per session: a quarter is 2 trials, 46 starts each.
    assert full.num_windows == 2 * 8 * (75 - BLOCK + 1)
    assert quarter.num_windows * 4 == full.num_windows
    for w_q, w_f in zip(quarter.windows, full.windows):
        assert set(w_q.trial_rows) <= set(w_f.trial_rows)
    with pytest.raises(UserError, match="config.data.fraction"):
        _train(store, layout, fraction=0.0)


def test_balanced_weighting_draws_sessions_equally(store, layout):
    windows = _train(store, layout, weighting="balanced", global_batch=400)
    counts = np.bincount([k for k, *_ in windows.choose(0)], minlength=2)
    assert abs(counts[0] - 200) < 45  # binomial(400, 0.5): 4.5 sigma


def test_evaluation_covers_every_sample_and_neuron_exactly_once(store, layout):
    windows = pipeline.EvalWindows(store, layout, block=BLOCK, max_neurons=16, global_batch=4, seed=0, tier="test",
                                   stride=20)
    counts = {k: np.zeros((store.session(n).n_samples, layout.n_neurons[k]), int) for k, n in enumerate(layout.names)}
    for b in range(len(windows)):
        batch = windows(b)
        for i in np.flatnonzero(batch["example_mask"]):
            k, start = int(batch["session_index"][i]), int(batch["window_start"][i])
            local = batch["neuron_index"][i][batch["neuron_mask"][i]] - layout.row_offsets[k]
            rows = np.arange(start, start + BLOCK)[batch["eval_mask"][i]]
            counts[k][np.ix_(rows, local)] += 1
    for k, name in enumerate(layout.names):
        t = store.session(name).trials
        expected = np.zeros_like(counts[k])
        for row in np.flatnonzero(t["tier"] == "final_test_main"):
            expected[t["start"][row]:t["stop"][row]] = 1
        np.testing.assert_array_equal(counts[k], expected)


def test_iterator_state_restores_the_exact_next_batches(store, layout):
    windows = _train(store, layout)
    it = iter(pipeline.train_dataset(windows, num_threads=2, prefetch=2))
    for _ in range(3):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(2)]
    resumed = iter(pipeline.train_dataset(windows, num_threads=2, prefetch=2))
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
    np.testing.assert_array_equal(expected[0]["window_start"], windows(3)["window_start"])


def test_final_test_split_covers_every_final_test_tier(tmp_path):
    from omnimouse_jax import cli
    from sensorium_fixtures import make_session

    folder, _ = make_session(tmp_path / "src", tiers=("train", "final_test", "final_test_1", "final_test_2"),
                             nan_responses=())
    assert cli.main(["data", "import-sensorium", str(folder), "--out", str(tmp_path / "store")]) == 0
    store = open_store(tmp_path / "store")
    layout = SessionLayout.from_store(store)
    windows = pipeline.EvalWindows(store, layout, block=20, max_neurons=16, global_batch=4, seed=0,
                                   tier="final_test")
    assert sorted({row for _, _, row, _, _ in windows.examples}) == [1, 2, 3]
    only = pipeline.EvalWindows(store, layout, block=20, max_neurons=16, global_batch=4, seed=0, tier="final_test_1")
    assert {row for _, _, row, _, _ in only.examples} == {2}


def test_unknown_session_and_empty_split_are_named(store, layout):
    with pytest.raises(UserError, match="config.data.sessions.*nope"):
        SessionLayout.from_store(store, ["nope"])
    with pytest.raises(UserError, match="split 'validation_bogus'"):
        pipeline.EvalWindows(store, layout, block=BLOCK, max_neurons=16, global_batch=4, seed=0,
                             tier="validation_bogus")


def test_inverse_scaling_recovers_original_units(store, layout):
    windows = _train(store, layout)
    batch = windows(2)
    k = int(batch["session_index"][0])
    n = int(batch["neuron_mask"][0].sum())
    local = batch["neuron_index"][0, :n] - layout.row_offsets[k]
    original = windows.reader.normalizers[k].responses_to_original(batch["responses"][0, :, :n], local)
    start = int(batch["window_start"][0])
    raw = store.session(layout.names[k]).read(start, start + BLOCK, neurons=local)["responses"]
    np.testing.assert_allclose(original, raw, rtol=1e-5, atol=1e-6)


def test_neuron_statistics_come_from_the_runs_own_training_trials(store, layout):
    """The initializers' statistics: per neuron, the mean response (scaled units) and the joint least-squares
    regression on the standardized behavior channels over residual std, both over the trials the run may train on
    (the first quarter of the train trials at fraction 0.25); nothing from the excluded trials."""
    windows = _train(store, layout, fraction=0.25)
    stats = windows.neuron_statistics(max_trials=100)
    for k, name in enumerate(layout.names):
        s = store.session(name)
        t = s.trials
        rows = np.flatnonzero(t["tier"] == "train")
        rows = rows[np.argsort(t["source_index"][rows])][:2]  # 8 train trials x 0.25
        trials = [s.trial(int(t["source_index"][r])) for r in rows]
        y = np.concatenate([trial["responses"] for trial in trials]).astype(np.float64)
        std = s.stats["responses"]["std"]
        scale = 1 / np.maximum(std, pipeline.RESPONSE_STD_FLOOR * std.mean())
        np.testing.assert_allclose(stats[name]["mean"], y.mean(0) * scale, rtol=1e-5)
        everything = np.concatenate([s.trial(int(t["source_index"][r]))["responses"]
                                     for r in np.flatnonzero(t["tier"] == "train")])
        assert not np.allclose(stats[name]["mean"], everything.mean(0) * scale, rtol=1e-3)

        # Reference: ordinary least squares with an intercept on the present channels, by numpy.
        norm = windows.reader.normalizers[k]
        x = np.concatenate([norm.behavior(trial["behavior"]) for trial in trials]).astype(np.float64)
        present = np.flatnonzero(norm.behavior_mask)
        design = np.column_stack([np.ones(len(x)), x[:, present]])
        coef, *_ = np.linalg.lstsq(design, y, rcond=None)
        residual_std = (y - design @ coef).std(0)
        expected = np.zeros((y.shape[1], len(pipeline.BEHAVIOR_CHANNELS)))
        expected[:, present] = (coef[1:] / residual_std).T  # unit-free: the response scale cancels
        np.testing.assert_allclose(stats[name]["behavior_tuning"], expected, rtol=1e-4, atol=1e-6)
        assert np.all(stats[name]["behavior_tuning"][:, ~norm.behavior_mask] == 0)


def test_readout_bias_puts_the_softplus_head_at_the_mean_rate():
    import jax.numpy as jnp
    from flax import nnx

    from omnimouse_jax.model.tokenizers import NeuronIdentity

    identity = NeuronIdentity(6, 1, 1, 4, 8, dtype=jnp.float32, rngs=nnx.Rngs(0), offsets=True)
    rates = np.array([1e-4, 0.05, 0.4, 1.0, 30.0])
    identity.set_mean_rates(rates, beta=0.1, start_row=1)
    bias = np.asarray(identity.neuron_bias[...], np.float64)
    predicted = np.logaddexp(0.0, 0.1 * bias) / 0.1  # softplus(beta b) / beta, the head at a zero readout
    np.testing.assert_allclose(predicted[1:], np.maximum(rates, 1e-3), rtol=1e-4)
    assert bias[0] == 0.0  # rows outside the range are untouched
    # The population decoder's offsets start at the mean response itself (no floor).
    np.testing.assert_allclose(np.asarray(identity.neuron_offset[...]), np.r_[0.0, rates], rtol=1e-6)
    with pytest.raises(ValueError, match="outside the table's 6 rows"):
        identity.set_mean_rates(rates, beta=0.1, start_row=2)
