"""Baselines: closed-form pieces against numpy, planted relationships recovered on tiny problems, and each baseline
beating the per-neuron mean in its regime on a digital-mice store."""
import dataclasses

import numpy as np
import pytest

from omnimouse_jax.data import pipeline
from omnimouse_jax.data.layout import SessionLayout
from omnimouse_jax.data.store import open_store
from omnimouse_jax.data.synthetic import DigitalMiceConfig, write_digital_mice
from omnimouse_jax.evaluate import baselines, baselines_cnn, baselines_ridge
from omnimouse_jax.evaluate.metrics import MetricSuite
from omnimouse_jax.model.masking import PRESETS, Masks, MaskingStrategy, make_masks, strategy_arrays

C = len(pipeline.BEHAVIOR_CHANNELS)


def _batch(responses_BxTxN, layout, session_B, trial_B, rng, behavior_BxTxC=None, first=0):
    """A training-style batch: each example's real neurons in a random order (the first `first` neurons shuffled
    among themselves ahead of the others), padding slots after them."""
    B, T, _ = responses_BxTxN.shape
    N = max(layout.n_neurons)
    out = {"responses": np.zeros((B, T, N), np.float32), "neuron_mask": np.zeros((B, N), bool),
           "neuron_index": np.zeros((B, N), np.int32), "session_index": np.asarray(session_B, np.int32),
           "trial_index": np.asarray(trial_B, np.int32), "example_mask": np.ones(B, bool),
           "eval_mask": np.ones((B, T), bool), "behavior_mask": np.ones((B, C), bool),
           "behavior": np.zeros((B, T, C), np.float32) if behavior_BxTxC is None else behavior_BxTxC}
    for b, k in enumerate(session_B):
        n = layout.n_neurons[k]
        order = np.concatenate([rng.permutation(first), first + rng.permutation(n - first)])
        out["responses"][b, :, :n] = responses_BxTxN[b][:, order]
        out["neuron_mask"][b, :n] = True
        out["neuron_index"][b, :n] = layout.row_offsets[k] + order
    return out


def _masks(batch, strategy):
    masks = make_masks(strategy_arrays(strategy), batch["neuron_mask"], batch["responses"].shape[1])
    return Masks(*(np.asarray(m) for m in masks))


def test_ridge_stats_match_direct_ridge_and_held_out_error():
    rng = np.random.default_rng(0)
    x, x2 = rng.normal(2, 1, (300, 4)), rng.normal(2, 1, (100, 4))
    w_true = rng.normal(size=(4, 2))
    y, y2 = x @ w_true + 1 + rng.normal(0, 0.5, (300, 2)), x2 @ w_true + 1 + rng.normal(0, 0.5, (100, 2))
    stats, held = baselines.RidgeStats(4, 2), baselines.RidgeStats(4, 2)
    for part in np.array_split(np.arange(300), 3):
        stats.add(x[part], y[part])
    held.add(x2, y2)
    xc, yc = x - x.mean(0), y - y.mean(0)
    lam = 0.1 * np.trace(xc.T @ xc / 300) / 4
    w = np.linalg.solve(xc.T @ xc / 300 + lam * np.eye(4), xc.T @ yc / 300)
    theta = stats.solve(0.1)
    np.testing.assert_allclose(theta[:-1], w, atol=1e-10)
    np.testing.assert_allclose(theta[-1], y.mean(0) - x.mean(0) @ w, atol=1e-10)
    assert held.sse(theta) == pytest.approx(np.sum((y2 - x2 @ theta[:-1] - theta[-1]) ** 2), rel=1e-10)
    # Held-out choice: a learnable signal picks a small penalty, pure noise the largest.
    assert baselines.fit_ridge(stats, held)[1] <= 1e-1
    noise, noise_held = baselines.RidgeStats(4, 1), baselines.RidgeStats(4, 1)
    noise.add(x[:20], rng.normal(size=(20, 1)))
    noise_held.add(x2, rng.normal(size=(100, 1)))
    assert baselines.fit_ridge(noise, noise_held)[1] == max(baselines.ALPHAS)


def test_mean_and_persistence_against_hand_computation():
    rng = np.random.default_rng(1)
    layout = SessionLayout(("s0", "s1"), ("a", "b"), (3, 2))
    y = rng.gamma(2.0, 1.0, (6, 5, 3))
    sessions = [0, 1, 0, 1, 0, 0]
    behavior = rng.normal(size=(6, 5, C)).astype(np.float32)
    batch = _batch(y, layout, sessions, range(6), rng, behavior)
    mean = baselines.PersistenceBaseline(layout).fit([batch])
    expected = np.concatenate([y[[0, 2, 4, 5], :, :3].mean((0, 1)), y[[1, 3], :, :2].mean((0, 1))])
    np.testing.assert_allclose(mean.mean_rows, expected, rtol=1e-6)
    np.testing.assert_allclose(mean.behavior_mean[1], behavior[[1, 3]].mean((0, 1)), rtol=1e-5)
    strategy = MaskingStrategy(prefix_len=2, suffix_start=3)  # all neurons visible at samples 0-1, targets 3-4
    masks = _masks(batch, strategy)
    masks = masks._replace(response_visible=masks.response_visible.copy())
    masks.response_visible[0, :, 1] = False  # one neuron never visible: falls back to its mean
    rates = mean.predict(batch, masks)["rates"]
    np.testing.assert_allclose(rates[0, 3:, 0], batch["responses"][0, 1, 0])  # last visible sample carried forward
    np.testing.assert_allclose(rates[0, 3:, 1], mean.mean_rows[batch["neuron_index"][0, 1]], rtol=1e-6)


def test_ridge_population_recovers_hidden_neurons_from_visible_ones():
    rng = np.random.default_rng(2)
    layout = SessionLayout(("s0",), ("a",), (7,))
    mix = rng.normal(size=(4, 3))

    def responses(B, T, noise):
        visible = 5 + rng.normal(size=(B, T, 4))
        hidden = 10 + (visible - 5) @ mix + noise * rng.normal(size=(B, T, 3))
        return np.concatenate([visible, hidden], axis=2)

    train = [_batch(responses(8, 10, 0.01), layout, [0] * 8, range(i * 8, i * 8 + 8), rng) for i in range(10)]
    strategy = MaskingStrategy(n_visible_neurons=4, prefix_start=5, prefix_len=5, suffix_start=5, suffix_len=5)
    model = baselines_ridge.RidgePopulation(layout).fit(train, strategy)
    assert model.alpha[0] <= 1e-3  # nearly noise-free: validation picks a weak penalty
    test = _batch(responses(4, 10, 0.0), layout, [0] * 4, range(4), rng, first=4)  # the planted visible ones first
    masks = _masks(test, strategy)
    rates = model.predict(test, masks)["rates"]
    target = masks.response_target
    assert target.sum() == 4 * 5 * 3
    np.testing.assert_allclose(rates[target], test["responses"][target], atol=0.05)


def test_ridge_autoregression_recovers_a_planted_ar_coefficient():
    rng = np.random.default_rng(3)
    layout = SessionLayout(("s0",), ("a",), (6,))
    phi, T = 0.8, 16

    def responses(B):
        z = np.zeros((B, T + 50, 6))
        for t in range(1, T + 50):  # a burn-in of 50 samples reaches the stationary distribution
            z[:, t] = phi * z[:, t - 1] + rng.normal(size=(B, 6))
        return 20 + z[:, 50:]

    train = [_batch(responses(16), layout, [0] * 16, range(i * 16, i * 16 + 16), rng) for i in range(40)]
    strategy = MaskingStrategy(prefix_len=10, suffix_start=12, suffix_len=4)
    model = baselines_ridge.RidgeAutoregression(layout, lags=3).fit(train, strategy)
    assert model.horizons == (3, 4, 5, 6)  # origin at sample 9, targets 12-15
    for h in model.horizons:
        coef = model.coef[0][h]
        assert coef[0] == pytest.approx(phi ** h, abs=0.04)  # own lag 0: the direct h-step coefficient
        np.testing.assert_allclose(coef[1:6], 0.0, atol=0.06)  # Markov: older lags and the population add nothing
    test = _batch(responses(2), layout, [0, 0], [0, 1], rng)
    masks = _masks(test, strategy)
    rates = model.predict(test, masks)["rates"]
    origin = test["responses"][:, 9, :6]
    mean = model.mean_rows[test["neuron_index"][:, :6]]
    expected = mean + phi ** 3 * (origin - mean)
    np.testing.assert_allclose(rates[:, 12, :6], expected, atol=0.35)


def test_ridge_decoder_recovers_planted_weights():
    rng = np.random.default_rng(4)
    layout = SessionLayout(("s0", "s1"), ("a", "b"), (5, 3))
    weights = [rng.normal(size=(5, C)), rng.normal(size=(3, C))]
    train = []
    for i in range(12):
        sessions = rng.integers(0, 2, 8)
        y = 3 + rng.normal(size=(8, 10, 5))
        behavior = np.stack([(y[b, :, :layout.n_neurons[k]] - 3) @ weights[k] for b, k in enumerate(sessions)])
        behavior += 0.05 * rng.normal(size=behavior.shape)
        train.append(_batch(y, layout, sessions, range(i * 8, i * 8 + 8), rng, behavior.astype(np.float32)))
    model = baselines_ridge.RidgeDecoder(layout, lags=(-1, 0, 1)).fit(train)
    for k, n in enumerate(layout.n_neurons):
        theta = model.coef[k]
        np.testing.assert_allclose(theta[n:2 * n], weights[k], atol=0.05)  # the lag-0 block
        np.testing.assert_allclose(theta[:n], 0.0, atol=0.05)
        np.testing.assert_allclose(theta[2 * n:3 * n], 0.0, atol=0.05)


# --- digital mice ---------------------------------------------------------------------------------------------------

BLOCK, MAX_NEURONS = 60, 32


@pytest.fixture(scope="module")
def mice(tmp_path_factory):
    root = tmp_path_factory.mktemp("baseline_mice")
    config = DigitalMiceConfig(mice=2, neurons=(24, 32), trials=24, oracle_videos=1, oracle_repeats=2, test_trials=6,
                               trial_length=120, frame_shape=(18, 32), seed=5)
    write_digital_mice(root, config)
    store = open_store(root)
    layout = SessionLayout.from_store(store)
    train = pipeline.TrainWindows(store, layout, block=BLOCK, max_neurons=MAX_NEURONS, global_batch=8, seed=0)
    test = pipeline.EvalWindows(store, layout, block=BLOCK, max_neurons=MAX_NEURONS, global_batch=8, seed=0,
                                tier="test", stride=30)
    return {"store": store, "layout": layout, "train": [train(i) for i in range(60)],
            "test": [test(i) for i in range(len(test))]}


def _evaluate(model, mice, strategy):
    suite = MetricSuite(mice["layout"])
    for batch in mice["test"]:
        masks = _masks(batch, strategy)
        suite.update(model.predict(batch, masks), batch, masks)
    return suite.result()


@pytest.fixture(scope="module")
def mean_model(mice):
    return baselines.MeanBaseline(mice["layout"]).fit(mice["train"])


POPULATION = dataclasses.replace(PRESETS["population_64_response"], n_visible_neurons=12)


@pytest.mark.parametrize("name, strategy, metric", [
    ("population", POPULATION, "response/correlation"),
    ("autoregression", PRESETS["causal_response_25"], "response/correlation"),
    ("decoder", PRESETS["all_response_only"], "behavior/correlation"),
])
def test_ridge_baselines_beat_the_mean_on_digital_mice(mice, mean_model, name, strategy, metric):
    model = {"population": baselines_ridge.RidgePopulation, "autoregression": baselines_ridge.RidgeAutoregression,
             "decoder": baselines_ridge.RidgeDecoder}[name](mice["layout"])
    model.fit(mice["train"], strategy)
    ours, mean = _evaluate(model, mice, strategy), _evaluate(mean_model, mice, strategy)
    assert ours[metric] > mean.get(metric, 0.0) + 0.05
    if metric.startswith("response"):
        assert ours["response/poisson_nll"] < mean["response/poisson_nll"]


def test_cnn_core_beats_the_mean_on_digital_mice(mice, mean_model):
    store, layout = mice["store"], mice["layout"]
    # The core is convolutional in time, so it trains on short windows and predicts the 60-sample evaluation blocks.
    short = pipeline.TrainWindows(store, layout, block=20, max_neurons=MAX_NEURONS, global_batch=8, seed=1)
    config = baselines_cnn.CNNConfig(channels=8, layers=2, temporal_kernel=5, spatial_kernel=5, steps=150, warmup=8,
                                     learning_rate=1e-2)
    model = baselines_cnn.CNNBaseline(layout, config).fit(short(i) for i in range(config.steps))
    assert len(model.losses) == config.steps and np.mean(model.losses[-30:]) < np.mean(model.losses[:30])
    strategy = PRESETS["video_behavior"]
    ours, mean = _evaluate(model, mice, strategy), _evaluate(mean_model, mice, strategy)
    # The mean scores exactly 0; the stimulus-only ceiling of these mice (true drive vs responses) is about 0.3. Poisson
    # NLL is not compared: after this short training it differs from the mean's by less than the mean's own noise.
    assert mean["response/correlation"] == 0.0
    assert ours["response/correlation"] > 0.05 and ours["sensorium/correlation"] > 0.05
