"""Streaming metrics against direct numpy/scipy computations on hand-built batches with masks and padding."""
import numpy as np
import pytest
from scipy import special, stats

from omnimouse_jax.data.layout import SessionLayout
from omnimouse_jax.evaluate import metrics
from omnimouse_jax.model.masking import Masks

LAYOUT = SessionLayout(("s0", "s1"), ("a", "b"), (4, 3))  # rows 0-3 and 4-6
B, T, N, C = 3, 8, 5, 5


def _batch(rng, trial_offset=None):
    """A batch with padding neurons, a padding example, partial eval masks and random targets."""
    session = rng.integers(0, 2, B)
    neuron_mask = np.zeros((B, N), bool)
    neuron_index = np.zeros((B, N), np.int32)
    for b, k in enumerate(session):
        n = LAYOUT.n_neurons[k]
        neuron_mask[b, :n] = True
        neuron_index[b, :n] = LAYOUT.row_offsets[k] + rng.permutation(n)
    batch = {
        "responses": rng.poisson(2.0, (B, T, N)).astype(np.float32) * neuron_mask[:, None, :],
        "neuron_mask": neuron_mask, "neuron_index": neuron_index, "session_index": session.astype(np.int32),
        "behavior": rng.normal(size=(B, T, C)).astype(np.float32),
        "behavior_mask": np.tile([True, True, True, True, False], (B, 1)),
        "example_mask": np.array([True, True, False]),
        "eval_mask": rng.random((B, T)) < 0.8,
        "trial_offset": (rng.integers(40, 60, B) if trial_offset is None else trial_offset).astype(np.int32),
        "trial_index": np.zeros(B, np.int32),
    }
    target = (rng.random((B, T, N)) < 0.6) & neuron_mask[:, None, :]
    masks = Masks(response_visible=~target & neuron_mask[:, None, :], response_target=target,
                  video_visible=np.ones((B, T), bool), behavior_visible=np.zeros(B, bool),
                  behavior_target=np.array([True, False, True]))
    predictions = {"rates": rng.gamma(2.0, 1.0, (B, T, N)).astype(np.float32),
                   "behavior": (batch["behavior"] + rng.normal(size=(B, T, C))).astype(np.float32)}
    return predictions, batch, masks


def _scored_elements(batches, min_position=None):
    """(row, prediction, response) of every scored response element, straight from the masks."""
    rows, preds, ys = [], [], []
    for predictions, batch, masks in batches:
        for b in range(B):
            for t in range(T):
                for n in range(N):
                    ok = (masks.response_target[b, t, n] and batch["eval_mask"][b, t] and batch["example_mask"][b])
                    if min_position is not None:
                        ok = ok and batch["trial_offset"][b] + t >= min_position
                    if ok:
                        rows.append(batch["neuron_index"][b, n])
                        preds.append(predictions["rates"][b, t, n])
                        ys.append(batch["responses"][b, t, n])
    return np.array(rows), np.array(preds, np.float64), np.array(ys, np.float64)


def _mean_corr(rows, x, y):
    values = [np.corrcoef(x[rows == r], y[rows == r])[0, 1] for r in np.unique(rows) if np.ptp(y[rows == r]) > 0]
    return float(np.mean(values)), len(values)


@pytest.fixture(scope="module")
def batches():
    rng = np.random.default_rng(0)
    return [_batch(rng) for _ in range(4)]


def test_pair_moments_merge_matches_numpy_and_constant_predictions_score_zero():
    rng = np.random.default_rng(1)
    moments = metrics.PairMoments(3)
    rows = rng.integers(0, 3, 500)
    x, y = rng.normal(5, 2, 500), rng.normal(size=500) + 0.1 * rows
    x[rows == 2] = 0.3  # a constant prediction, fed across several updates
    for part in np.array_split(np.arange(500), 7):
        moments.add(rows[part], x[part], y[part])
    corr, defined = moments.correlation()
    for r in range(2):
        assert corr[r] == pytest.approx(stats.pearsonr(x[rows == r], y[rows == r])[0], abs=1e-12)
        assert moments.cyy[r] == pytest.approx(np.sum((y[rows == r] - y[rows == r].mean()) ** 2), rel=1e-12)
    assert defined.all() and corr[2] == 0.0 and moments.cxx[2] == 0.0
    r2, _ = moments.r2()
    sel = rows == 0
    assert r2[0] == pytest.approx(1 - np.sum((y[sel] - x[sel]) ** 2) / np.sum((y[sel] - y[sel].mean()) ** 2))


def test_single_trial_and_sensorium_correlation_match_direct_computation(batches):
    suite = metrics.MetricSuite(LAYOUT)
    for predictions, batch, masks in batches:
        suite.update(predictions, batch, masks)
    result = suite.result()
    expected, count = _mean_corr(*_scored_elements(batches))
    assert result["response/correlation"] == pytest.approx(expected, abs=1e-9)
    assert result["response/n_neurons"] == count == 7
    expected_s, count_s = _mean_corr(*_scored_elements(batches, min_position=50))
    assert result["sensorium/correlation"] == pytest.approx(expected_s, abs=1e-9)
    assert result["sensorium/n_neurons"] == count_s
    # The Sensorium score drops the first 50 samples of each trial, so the two differ on this data.
    assert expected_s != pytest.approx(expected, abs=1e-3)


def test_silent_neurons_are_excluded_and_counted():
    rng = np.random.default_rng(2)
    predictions, batch, masks = _batch(rng)
    silent = batch["neuron_index"] == 1
    batch["responses"][np.broadcast_to(silent[:, None, :], batch["responses"].shape)] = 0.0
    suite = metrics.MetricSuite(LAYOUT)
    suite.update(predictions, batch, masks)
    result = suite.result()
    rows, x, y = _scored_elements([(predictions, batch, masks)])
    expected, count = _mean_corr(rows, x, y)
    constant = [r for r in np.unique(rows) if np.ptp(y[rows == r]) == 0]
    assert 1 in constant
    assert result["response/correlation"] == pytest.approx(expected, abs=1e-9)
    assert result["response/n_excluded"] == len(constant) and result["response/n_neurons"] == count


def test_poisson_nll_and_bits_per_spike_match_scipy(batches):
    suite = metrics.MetricSuite(LAYOUT)
    for predictions, batch, masks in batches:
        suite.update(predictions, batch, masks)
    result = suite.result()
    rows, r, y = _scored_elements(batches)
    model_ll = stats.poisson.logpmf(y, r)  # responses are integer counts here, so scipy's pmf applies
    # Our NLL drops the data-only log(y!) term of the Poisson log-likelihood.
    nll = -np.mean(model_ll + special.gammaln(y + 1))
    assert result["response/poisson_nll"] == pytest.approx(nll, rel=1e-9)
    means = {row: y[rows == row].mean() for row in np.unique(rows)}
    null_ll = stats.poisson.logpmf(y, np.array([means[row] for row in rows]))
    expected_bits = (model_ll.sum() - null_ll.sum()) / (y.sum() * np.log(2))
    assert result["response/bits_per_spike"] == pytest.approx(expected_bits, rel=1e-9)


def test_per_neuron_mean_of_the_scored_data_is_worth_zero_bits(batches):
    rows, _, y = _scored_elements(batches)
    means = np.zeros(LAYOUT.num_neuron_rows)
    for row in np.unique(rows):
        means[row] = y[rows == row].mean()
    suite = metrics.MetricSuite(LAYOUT)
    for _, batch, masks in batches:
        suite.update({"rates": means[batch["neuron_index"]][:, None, :].repeat(T, 1)}, batch, masks)
    result = suite.result()
    assert result["response/bits_per_spike"] == pytest.approx(0.0, abs=1e-12)
    assert result["response/correlation"] == 0.0  # constant per neuron: scored 0, not dropped
    assert result["response/n_neurons"] == 7


def test_behavior_correlation_and_r2_per_channel_and_session(batches):
    suite = metrics.MetricSuite(LAYOUT)
    for predictions, batch, masks in batches:
        suite.update({"behavior": predictions["behavior"]}, batch, masks)
    result = suite.result()
    assert "response/correlation" not in result
    for c, name in enumerate(metrics.BEHAVIOR_CHANNELS):
        if c == 4:  # channel absent from every session
            assert f"behavior/{name}/correlation" not in result
            continue
        corrs, r2s = [], []
        for k in range(2):
            xs, ys = [], []
            for predictions, batch, masks in batches:
                sel = (batch["eval_mask"] & batch["example_mask"][:, None] & masks.behavior_target[:, None]
                       & batch["behavior_mask"][:, c][:, None] & (batch["session_index"] == k)[:, None])
                xs.append(predictions["behavior"][:, :, c][sel])
                ys.append(batch["behavior"][:, :, c][sel])
            x, y = np.concatenate(xs).astype(np.float64), np.concatenate(ys).astype(np.float64)
            corrs.append(np.corrcoef(x, y)[0, 1])
            r2s.append(1 - np.sum((y - x) ** 2) / np.sum((y - y.mean()) ** 2))
        # Sessions weighted by their number of neurons (4 and 3), as the official overall metric weighs them.
        assert result[f"behavior/{name}/correlation"] == pytest.approx((4 * corrs[0] + 3 * corrs[1]) / 7, abs=1e-9)
        assert result[f"behavior/{name}/r2"] == pytest.approx((4 * r2s[0] + 3 * r2s[1]) / 7, abs=1e-9)


def test_a_constant_behavior_per_session_scores_zero_correlation(batches):
    suite = metrics.MetricSuite(LAYOUT)
    for _, batch, masks in batches:
        constant = np.where(batch["session_index"] == 0, -3.0, 3.0)[:, None, None] * np.ones((B, T, C))
        suite.update({"behavior": constant}, batch, masks)
    result = suite.result()
    assert result["behavior/correlation"] == 0.0 and result["behavior/r2"] < 0


def test_forecast_correlation_per_target_step():
    rng = np.random.default_rng(3)
    batches = []
    for _ in range(6):
        predictions, batch, masks = _batch(rng)
        target = np.zeros((B, T, N), bool)
        first = rng.integers(2, 5, B)  # the target window starts at a different sample per example
        for b in range(B):
            target[b, first[b]:, :] = batch["neuron_mask"][b]
        batch["eval_mask"][:] = True
        batches.append((predictions, batch, masks._replace(response_target=target), first))
    suite = metrics.MetricSuite(LAYOUT, forecast=True)
    for predictions, batch, masks, _ in batches:
        suite.update(predictions, batch, masks)
    result = suite.result()
    for h in range(3):
        rows, xs, ys = [], [], []
        for predictions, batch, masks, first in batches:
            for b in np.flatnonzero(batch["example_mask"]):
                for n in np.flatnonzero(batch["neuron_mask"][b]):
                    rows.append(batch["neuron_index"][b, n])
                    xs.append(predictions["rates"][b, first[b] + h, n])
                    ys.append(batch["responses"][b, first[b] + h, n])
        expected, count = _mean_corr(np.array(rows), np.array(xs, np.float64), np.array(ys, np.float64))
        assert result[f"forecast/step{h:02d}/correlation"] == pytest.approx(expected, abs=1e-9)
        assert result[f"forecast/step{h:02d}/n_neurons"] == count


def _sensorium_reference(targets, predictions):
    """Direct transcriptions of the Sensorium definitions: lists over conditions of (repeats, neurons) arrays."""
    def corr(a, b):
        a = (a - a.mean(0)) / a.std(0)
        b = (b - b.mean(0)) / b.std(0)
        return (a * b).mean(0)

    avg = corr(np.stack([t.mean(0) for t in targets]), np.stack([p.mean(0) for p in predictions]))
    total = np.var(np.vstack(targets), axis=0, ddof=1)
    noise = np.mean([np.var(t, axis=0, ddof=1) for t in targets], axis=0)
    mse = np.mean(np.vstack([(t - p) ** 2 for t, p in zip(targets, predictions)]), axis=0)
    fev = (total - noise) / total
    feve = 1 - (mse - noise) / (total - noise)
    oracles = [(t.sum(0, keepdims=True) - t) / (len(t) - 1) for t in targets]
    oracle = corr(np.vstack(targets), np.vstack(oracles))
    return avg, fev, feve, oracle


def test_repeat_metrics_match_the_sensorium_definitions():
    rng = np.random.default_rng(4)
    layout = SessionLayout(("s0",), ("a",), (4,))
    length, skip, repeats = 12, 3, 4
    # Source trials 10..17: video 7 four times, video 9 four times; trial 99 is a unique clip (ignored).
    table = {10 + i: (7 if i < 4 else 9, length) for i in range(8)}
    signal = {7: rng.gamma(2, 1, (length, 4)), 9: rng.gamma(2, 1, (length, 4))}
    signal[9][:, 3] *= 4  # a neuron with mostly explainable variance
    responses = {trial: rng.poisson(signal[video]).astype(np.float64) for trial, (video, _) in table.items()}
    rates = {trial: signal[video] + rng.normal(0, 0.3, (length, 4)) for trial, (video, _) in table.items()}
    suite = metrics.MetricSuite(layout, trial_videos=[table], sensorium_skip=skip)
    block = 6
    for trial in list(table) + [99]:
        y = responses.get(trial, rng.random((length, 4)))
        r = rates.get(trial, rng.random((length, 4)))
        for start in (0, 4, 6):  # overlapping windows; eval_mask marks each sample once
            order = rng.permutation(4)
            eval_mask = np.arange(start, start + block) >= {0: 0, 4: 6, 6: 10}[start]
            batch = {"responses": y[start:start + block, order][None], "neuron_index": order[None].astype(np.int32),
                     "session_index": np.zeros(1, np.int32), "trial_index": np.array([trial]),
                     "trial_offset": np.array([start]), "eval_mask": eval_mask[None], "example_mask": np.ones(1, bool)}
            masks = Masks(None, np.ones((1, block, 4), bool), None, None, np.zeros(1, bool))
            suite.update({"rates": r[start:start + block, order][None]}, batch, masks)
    result = suite.result()
    targets = [np.stack([responses[t][p] for t in table if table[t][0] == v]) for v in (7, 9)
               for p in range(skip, length)]
    preds = [np.stack([rates[t][p] for t in table if table[t][0] == v]) for v in (7, 9) for p in range(skip, length)]
    assert all(len(t) == repeats for t in targets)
    avg, fev, feve, oracle = _sensorium_reference(targets, preds)
    assert result["repeats/correlation_to_average"] == pytest.approx(avg.mean(), abs=1e-9)
    assert result["repeats/fev"] == pytest.approx(fev.mean(), abs=1e-9)
    reliable = fev >= metrics.FEV_THRESHOLD
    assert result["repeats/n_feve_neurons"] == reliable.sum() >= 1
    assert result["repeats/feve"] == pytest.approx(feve[reliable].mean(), abs=1e-9)
    assert result["repeats/oracle_correlation"] == pytest.approx(oracle.mean(), abs=1e-9)


def test_repeated_trials_reads_the_oracle_repeats_of_a_store(tmp_path):
    from omnimouse_jax.data.store import open_store
    from omnimouse_jax.data.synthetic import DigitalMiceConfig, write_digital_mice

    config = DigitalMiceConfig(mice=1, neurons=3, trials=2, oracle_videos=2, oracle_repeats=3, test_trials=2,
                               trial_length=20, frame_shape=(8, 8), seed=0)
    write_digital_mice(tmp_path, config)
    store = open_store(tmp_path)
    layout = SessionLayout.from_store(store)
    (table,) = metrics.repeated_trials(store, layout, "validation")
    t = store.session(layout.names[0]).trials
    oracle = t["source_index"][t["tier"] == "oracle"]
    assert sorted(table) == sorted(oracle.tolist())
    assert len({v for v, _ in table.values()}) == 2 and {ln for _, ln in table.values()} == {20}
    assert metrics.repeated_trials(store, layout, "test") == [{}]  # unique test clips: no repeats


def test_pooled_correlation_weighs_neurons_by_their_scored_elements():
    """The official population average: sum over neurons of count x correlation over the total count, a neuron with
    constant responses contributing 0 but its count; the plain mean stays beside it. Over several sessions, the
    official overall metric: each session's average weighted by its number of neurons."""
    from omnimouse_jax.evaluate.metrics import PairMoments, summarize_correlation

    rng = np.random.default_rng(7)
    xa, ya = rng.normal(size=4), rng.normal(size=4)
    xb, yb = rng.normal(size=10), rng.normal(size=10)
    moments = PairMoments(5)
    moments.add(np.r_[np.zeros(4, int), np.ones(10, int), np.full(3, 3)], np.r_[xa, xb, rng.normal(size=3)],
                np.r_[ya, yb, np.full(3, 2.0)])
    ra, rb = np.corrcoef(xa, ya)[0, 1], np.corrcoef(xb, yb)[0, 1]
    out = summarize_correlation(moments, "r")
    assert out["r/correlation"] == pytest.approx((ra + rb) / 2, abs=1e-12)
    assert out["r/correlation_pooled"] == pytest.approx((4 * ra + 10 * rb) / 17, abs=1e-12)
    assert out["r/n_neurons"] == 2 and out["r/n_excluded"] == 1
    # Sessions of rows 0-1 and 2-4: each session pooled on its own, then weighted by its number of neurons (2, 3).
    by_session = summarize_correlation(moments, "r", session_sizes=(2, 3))
    assert by_session["r/correlation_pooled"] == pytest.approx((2 * (4 * ra + 10 * rb) / 14 + 3 * 0.0) / 5, abs=1e-12)
    assert by_session["r/correlation"] == out["r/correlation"]
    # A session without any scored element has no weight.
    assert summarize_correlation(moments, "r", session_sizes=(2, 1, 2))["r/correlation_pooled"] == pytest.approx(
        (2 * (4 * ra + 10 * rb) / 14 + 2 * 0.0) / 4, abs=1e-12)
