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


# --- the linear-nonlinear baseline ------------------------------------------------------------------------------------

def _pooled_lags_reference(video_BxTxHxW, pool, lags):
    """The LN design's video block, written out: standardize, average pool x pool cells, then for each lag l the
    frame t - l (0 before the window), lag-major."""
    B, T, H, W = video_BxTxHxW.shape
    x = (video_BxTxHxW.astype(np.float64) - 113.0) / 59.0
    pooled = x.reshape(B, T, H // pool, pool, W // pool, pool).mean(axis=(3, 5)).reshape(B, T, -1)
    out = np.zeros((B, T, lags, pooled.shape[2]))
    for t in range(T):
        for lag in range(min(lags, t + 1)):
            out[:, t, lag] = pooled[:, t - lag]
    return out.reshape(B, T, -1)


def _ridge_reference(x_SxD, y_S, alpha):
    """Ridge with an unpenalized intercept by least squares on the augmented system [Xc; sqrt(n lam) I] w = [yc; 0],
    lam = alpha * mean feature variance (the baselines' convention)."""
    n, d = x_SxD.shape
    mx, my = x_SxD.mean(0), y_S.mean()
    xc = x_SxD - mx
    lam = alpha * np.trace(xc.T @ xc / n) / d
    augmented = np.vstack([xc, np.sqrt(n * lam) * np.eye(d)])
    w = np.linalg.lstsq(augmented, np.concatenate([y_S - my, np.zeros(d)]), rcond=None)[0]
    return np.append(w, my - mx @ w)


def _ln_batches(rng, layout, weights, count, B=8, T=12, frame=(6, 8), pool=2, lags=3, noise=0.05, first_trial=0):
    """Batches whose responses are 6 + (lagged pooled frames) @ w_video + behavior @ w_behavior + noise per session
    (weights[k] = (w_video, w_behavior)); each example holds up to 4 of its session's neurons, in a random order."""
    N = 4
    batches = []
    for i in range(count):
        sessions = rng.integers(0, layout.num_sessions, B)
        video = rng.integers(0, 256, (B, T, *frame)).astype(np.uint8)
        behavior = rng.normal(size=(B, T, C)).astype(np.float32)
        x = _pooled_lags_reference(video, pool, lags)
        batch = {"responses": np.zeros((B, T, N), np.float32), "neuron_mask": np.zeros((B, N), bool),
                 "neuron_index": np.zeros((B, N), np.int32), "session_index": sessions.astype(np.int32),
                 "trial_index": np.arange(first_trial + i * B, first_trial + (i + 1) * B, dtype=np.int32),
                 "example_mask": np.ones(B, bool), "eval_mask": np.ones((B, T), bool),
                 "behavior_mask": np.ones((B, C), bool), "behavior": behavior, "video": video,
                 "trial_offset": np.zeros(B, np.int32), "truth": np.zeros((B, T, N))}
        for b, k in enumerate(sessions):
            n = layout.n_neurons[k]
            local = rng.permutation(n)[:N]
            truth = 6 + x[b] @ weights[k][0][:, local] + behavior[b] @ weights[k][1][:, local]
            batch["truth"][b, :, :len(local)] = truth
            batch["responses"][b, :, :len(local)] = truth + noise * rng.normal(size=truth.shape)
            batch["neuron_mask"][b, :len(local)] = True
            batch["neuron_index"][b, :len(local)] = layout.row_offsets[k] + local
        batches.append(batch)
    return batches


def test_ln_matches_a_ridge_reference_and_recovers_a_planted_linear_filter():
    from omnimouse_jax.evaluate import baselines_ln

    rng = np.random.default_rng(7)
    layout = SessionLayout(("s0", "s1"), ("a", "b"), (4, 6))  # s0: every neuron in every example; s1: 4 of 6
    lags, P = 3, 12  # 6 x 8 frames pooled 2 x 2 to 3 x 4 cells
    weights = [(0.3 * rng.normal(size=(lags * P, n)), 0.5 * rng.normal(size=(C, n))) for n in layout.n_neurons]
    train = _ln_batches(rng, layout, weights, 25)
    model = baselines_ln.LNBaseline(layout, lags=(lags,), grid=(3, 4), alphas=(1e-4, 1e-2, 1.0, 100.0)).fit(train)
    assert all(a <= 1e-2 for v in (True, False) for a in model.alpha[v][0])  # nearly noise-free: weak penalties
    # Session 0: the coefficients are those of ridge on the training rows with a full history (t >= lags - 1), at
    # each neuron's chosen penalty, with and without the behavior columns.
    rows = [(b, batch) for batch in train for b in np.flatnonzero(batch["session_index"] == 0)]
    x_video = np.concatenate([_pooled_lags_reference(batch["video"][b:b + 1], 2, lags)[0, lags - 1:]
                              for b, batch in rows])
    x_behavior = np.concatenate([batch["behavior"][b, lags - 1:] for b, batch in rows])
    for v, x in ((True, np.concatenate([x_video, x_behavior], 1)), (False, x_video)):
        for n in range(4):
            y = np.concatenate([batch["responses"][b, lags - 1:, list(batch["neuron_index"][b]).index(n)]
                                for b, batch in rows])
            expected = _ridge_reference(x, y, model.alpha[v][0][n])
            np.testing.assert_allclose(model.coef[v][0][:, n], expected, rtol=1e-4, atol=1e-4)
    # Session 1 holds 6 neurons, 4 per example: the feature covariance comes from every row, each neuron's
    # cross-moments from its own rows (responses centered by the neuron's training mean), as the module documents.
    rows = [(b, batch) for batch in train for b in np.flatnonzero(batch["session_index"] == 1)]
    x = np.concatenate([np.concatenate([_pooled_lags_reference(batch["video"][b:b + 1], 2, lags)[0, lags - 1:],
                                        batch["behavior"][b, lags - 1:]], 1) for b, batch in rows])
    mx, cxx = x.mean(0), np.cov(x.T, bias=True)
    for n in range(6):
        mine = [(i, list(batch["neuron_index"][b]).index(layout.row_offsets[1] + n))
                for i, (b, batch) in enumerate(rows) if layout.row_offsets[1] + n in batch["neuron_index"][b]]
        x_n = np.concatenate([x[i * (12 - lags + 1):(i + 1) * (12 - lags + 1)] for i, _ in mine])
        y_n = np.concatenate([rows[i][1]["responses"][rows[i][0], lags - 1:, slot] for i, slot in mine])
        y_n = y_n - model.mean_rows[layout.row_offsets[1] + n]
        cxy = (x_n * y_n[:, None]).mean(0) - mx * y_n.mean()
        lam = model.alpha[True][1][n] * np.trace(cxx) / len(cxx)
        w = np.linalg.solve(cxx + lam * np.eye(len(cxx)), cxy)
        np.testing.assert_allclose(model.coef[True][1][:-1, n], w, rtol=1e-4, atol=1e-4)
    # That estimator is consistent but not exact: the planted weights, within the noise of 4-of-6 subsets.
    planted = np.concatenate(weights[1])
    assert np.corrcoef(model.coef[True][1][:-1].ravel(), planted.ravel())[0, 1] > 0.95

    # Offered 1 or 3 frames of history, validation picks the 3 the responses depend on: the same fit.
    choosing = baselines_ln.LNBaseline(layout, lags=(1, lags), grid=(3, 4), alphas=(1e-4, 1e-2, 1.0, 100.0))
    choosing.fit(train)
    assert all((h == lags).all() for v in (True, False) for h in choosing.history[v])
    np.testing.assert_allclose(choosing.coef[True][0], model.coef[True][0], rtol=1e-6, atol=1e-9)

    # Prediction: hidden frames are gray, so the linear stage is the reference design with those frames zeroed.
    test = _ln_batches(rng, layout, weights, 1, first_trial=10_000)[0]
    strategy = MaskingStrategy(n_visible_neurons=0, prefix_len=0, suffix_start=4, video_start=5)
    masks = _masks(test, strategy)
    g, fitted = model.linear(test, masks)
    assert fitted.all()
    video = np.where(masks.video_visible[:, :, None, None], test["video"], np.uint8(113))
    x = np.concatenate([_pooled_lags_reference(video, 2, lags), test["behavior"]], axis=2)
    for b in range(len(x)):
        k = test["session_index"][b]
        theta = model.coef[True][k][:, test["neuron_index"][b] - layout.row_offsets[k]]
        np.testing.assert_allclose(g[b], x[b] @ theta[:-1] + theta[-1], rtol=1e-4, atol=1e-4)
    # With the whole video visible the rates follow the planted function.
    masks = _masks(test, PRESETS["video_behavior"])
    rates = model.predict(test, masks)["rates"]
    late = slice(lags - 1, None)
    assert np.corrcoef(rates[:, late].ravel(), test["truth"][:, late].ravel())[0, 1] > 0.99


def test_softplus_output_matches_a_direct_poisson_fit():
    from scipy.optimize import minimize

    from omnimouse_jax.evaluate.baselines_ln import fit_softplus_output

    rng = np.random.default_rng(8)
    truth = [(0.5, 1.0), (2.0, -1.0), (1.0, 0.2)]
    rows = np.repeat(np.arange(3), 2000)
    g = rng.normal(size=rows.size)
    a_true, b_true = np.array(truth).T
    y = rng.poisson(np.logaddexp(0, a_true[rows] * g + b_true[rows])).astype(np.float64)
    a, b = fit_softplus_output(rows, g, y, num_rows=4)  # row 3 has no elements
    assert (a[3], b[3]) == (0.0, 0.0)
    for r in range(3):
        def nll(p, r=r):
            rate = np.logaddexp(0, p[0] * g[rows == r] + p[1])
            return np.sum(rate - y[rows == r] * np.log(rate))
        direct = minimize(nll, x0=[1.0, 0.0], method="Nelder-Mead", options={"xatol": 1e-8, "fatol": 1e-10}).x
        np.testing.assert_allclose([a[r], b[r]], direct, atol=1e-4)
        np.testing.assert_allclose([a[r], b[r]], truth[r], atol=0.15)


def test_ln_beats_the_mean_on_digital_mice(mice, mean_model):
    from omnimouse_jax.evaluate import baselines_ln

    model = baselines_ln.LNBaseline(mice["layout"]).fit(mice["train"])
    scores = {p: _evaluate(model, mice, PRESETS[p]) for p in ("video_behavior", "video_only")}
    mean = _evaluate(mean_model, mice, PRESETS["video_behavior"])
    assert scores["video_only"]["response/correlation"] > 0.05
    # Behavior is a gain on these mice: the variant that reads it predicts better.
    assert scores["video_behavior"]["response/correlation"] > scores["video_only"]["response/correlation"] + 0.02
    # From 24 training trials per mouse the stimulus-only variant's Poisson NLL is about the mean's (its output
    # nonlinearity is fit in-sample); with behavior it is better.
    assert scores["video_behavior"]["response/poisson_nll"] < mean["response/poisson_nll"]
