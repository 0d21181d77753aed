"""Streaming evaluation metrics: per-batch updates on host numpy, results at the end, no test set held in memory.

Which elements count. A response element (example b, sample t, neuron slot n) is scored when
`response_target & eval_mask & example_mask` (evaluation windows overlap, and eval_mask marks each sample in exactly
one window); it is attributed to the global neuron-table row `neuron_index[b, n]`. A behavior element (b, t, c) is
scored when `behavior_target[b] & behavior_mask[b, c] & eval_mask[b, t] & example_mask[b]`.

Correlation conventions (all Pearson, per neuron, then the mean over neurons):
  - OmniMouse single-trial: over every scored element of every evaluation block (the paper's tables).
  - Sensorium 2023: only samples at least `SENSORIUM_SKIP` = 50 into their trial (trial_offset + t >= 50), as the
    competition scored (Turishcheva et al. 2024, "Retrospective for the dynamic Sensorium competition"; starting-kit
    `sensorium/utility/scores.py`, `skip=50`).
A neuron whose responses have zero variance has no defined correlation: it is excluded from the mean and counted
(`n_excluded`). A prediction with zero variance (a constant, e.g. the per-neuron mean) scores 0, the correlation the
neuralpredictors `corr` assigns it, so that trivial baselines get their honest score instead of being dropped.

Moments are merged per batch with Chan et al.'s pairwise update (means and centered co-moments in float64) instead of
raw power sums: a constant prediction then has exactly zero variance, where raw sums leave round-off that turns into
arbitrary correlations.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from omnimouse_jax.data.pipeline import tier_names
from omnimouse_jax.data.schema import BEHAVIOR_CHANNELS

SENSORIUM_SKIP = 50  # samples at the start of each trial left out of the Sensorium score
FEV_THRESHOLD = 0.15  # neurons below this fraction of explainable variance are left out of FEVE (Sensorium 2022)
RATE_FLOOR = 1e-8  # predicted rates are clipped here before the log of the Poisson likelihood


class PairMoments:
    """Per-row streaming moments of pairs (x, y): count, means, centered sums of squares and cross-products."""

    def __init__(self, num_rows: int):
        self.num_rows = num_rows
        self.n, self.mx, self.my, self.cxx, self.cyy, self.cxy = np.zeros((6, num_rows))

    def add(self, rows: np.ndarray, x: np.ndarray, y: np.ndarray) -> None:
        """Adds pairs x[i], y[i] to row rows[i] (1-D arrays of one length)."""
        if rows.size == 0:
            return
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        count = lambda w=None: np.bincount(rows, weights=w, minlength=self.num_rows)  # noqa: E731
        nb = count()
        seen = nb > 0
        # Offsets by each row's first value keep constant inputs exactly constant: their centered sums are exactly 0.
        firsts = np.unique(rows, return_index=True)[1]
        x0, y0 = np.zeros(self.num_rows), np.zeros(self.num_rows)
        x0[rows[firsts]], y0[rows[firsts]] = x[firsts], y[firsts]
        ox, oy = x - x0[rows], y - y0[rows]
        sx = np.divide(count(ox), nb, out=np.zeros(self.num_rows), where=seen)
        sy = np.divide(count(oy), nb, out=np.zeros(self.num_rows), where=seen)
        mxb, myb = x0 + sx, y0 + sy
        dx, dy = ox - sx[rows], oy - sy[rows]
        cxxb, cyyb, cxyb = count(dx * dx), count(dy * dy), count(dx * dy)
        n = self.n + nb
        w_b = np.divide(nb, n, out=np.zeros(self.num_rows), where=n > 0)
        shift_x, shift_y = mxb - self.mx, myb - self.my
        cross = self.n * w_b  # n_a n_b / n
        self.cxx += cxxb + shift_x * shift_x * cross
        self.cyy += cyyb + shift_y * shift_y * cross
        self.cxy += cxyb + shift_x * shift_y * cross
        self.mx += shift_x * w_b
        self.my += shift_y * w_b
        self.n = n

    def correlation(self) -> tuple[np.ndarray, np.ndarray]:
        """(per-row Pearson correlation, defined mask). Defined: at least 2 pairs and y varies; constant x gives 0."""
        defined = (self.n >= 2) & (self.cyy > 0)
        denominator = np.sqrt(self.cxx * self.cyy)
        corr = np.divide(self.cxy, denominator, out=np.zeros(self.num_rows), where=defined & (denominator > 0))
        return corr, defined

    def r2(self) -> tuple[np.ndarray, np.ndarray]:
        """(per-row coefficient of determination of x as a prediction of y, defined mask)."""
        sse = self.cyy - 2 * self.cxy + self.cxx + self.n * (self.my - self.mx) ** 2
        defined = (self.n >= 1) & (self.cyy > 0)
        return 1.0 - np.divide(sse, self.cyy, out=np.ones(self.num_rows), where=defined), defined


def summarize_correlation(moments: PairMoments, prefix: str, rows: np.ndarray | None = None,
                          session_sizes: Sequence[int] | None = None) -> dict[str, float]:
    """`prefix/correlation` (mean over neurons with a defined correlation), `prefix/correlation_pooled` (the official
    code's population average: weighted by each neuron's count of scored elements, a neuron without a defined
    correlation counting as 0), `prefix/n_neurons`, `prefix/n_excluded` (neurons with scored elements but constant
    responses). `rows` restricts to a subset of rows.

    With `session_sizes` (session k owns the next session_sizes[k] rows) the pooled average is taken per session and
    the sessions with scored elements are then weighted by their number of neurons, as the official evaluation
    combines sessions (its overall metric); without, all rows pool as one population."""
    corr, defined = moments.correlation()
    counts = moments.n
    if rows is not None:
        corr, defined, counts = corr[rows], defined[rows], counts[rows]
    scored = counts > 0
    out = {f"{prefix}/n_neurons": int(defined.sum()), f"{prefix}/n_excluded": int((scored & ~defined).sum())}
    if not defined.any():
        return out
    out[f"{prefix}/correlation"] = float(corr[defined].mean())
    weighted = np.where(defined, corr, 0.0) * counts
    if session_sizes is None:
        out[f"{prefix}/correlation_pooled"] = float(weighted.sum() / counts.sum())
        return out
    total = weight = 0.0
    offsets = np.cumsum([0, *session_sizes])
    for start, stop in zip(offsets[:-1], offsets[1:]):
        if counts[start:stop].sum() > 0:
            total += (stop - start) * weighted[start:stop].sum() / counts[start:stop].sum()
            weight += stop - start
    out[f"{prefix}/correlation_pooled"] = total / weight
    return out


class ResponseMetrics:
    """Single-trial correlation (OmniMouse and Sensorium conventions), Poisson NLL and bits per spike."""

    def __init__(self, num_neuron_rows: int, sensorium_skip: int = SENSORIUM_SKIP,
                 session_sizes: Sequence[int] | None = None):
        """`session_sizes`: neurons per session, in row order; the pooled correlation then weighs sessions by them
        (summarize_correlation)."""
        self.skip = sensorium_skip
        self.session_sizes = session_sizes
        self.single_trial = PairMoments(num_neuron_rows)
        self.sensorium = PairMoments(num_neuron_rows)
        # Per row: count, sum of responses, sum of the model's Poisson log-likelihood terms y log r - r.
        self.count, self.total, self.log_likelihood = np.zeros((3, num_neuron_rows))

    def update(self, rates_BxTxN, responses_BxTxN, scored_BxTxN, neuron_index_BxN, position_BxT) -> None:
        """`position_BxT`: each sample's position in its trial (trial_offset + t)."""
        b, t, n = np.nonzero(scored_BxTxN)
        rows = neuron_index_BxN[b, n]
        r = np.asarray(rates_BxTxN, np.float64)[b, t, n]
        y = np.asarray(responses_BxTxN, np.float64)[b, t, n]
        self.single_trial.add(rows, r, y)
        late = position_BxT[b, t] >= self.skip
        self.sensorium.add(rows[late], r[late], y[late])
        counts = lambda w=None: np.bincount(rows, weights=w, minlength=self.count.size)  # noqa: E731
        self.count += counts()
        self.total += counts(y)
        self.log_likelihood += counts(y * np.log(np.maximum(r, RATE_FLOOR)) - r)

    def result(self) -> dict[str, float]:
        out = summarize_correlation(self.single_trial, "response", session_sizes=self.session_sizes)
        out.update(summarize_correlation(self.sensorium, "sensorium", session_sizes=self.session_sizes))
        elements = self.count.sum()
        if elements == 0:
            return out
        out["response/n_elements"] = int(elements)
        out["response/poisson_nll"] = float(-self.log_likelihood.sum() / elements)
        # Bits per spike (Pei et al. 2021, Neural Latents Benchmark): gain in log-likelihood over a per-neuron
        # constant rate equal to that neuron's mean over the scored data, per unit of response, in bits.
        seen = self.count > 0
        mean = self.total[seen] / self.count[seen]
        null = self.total[seen] * np.log(np.where(mean > 0, mean, 1.0)) - self.total[seen]
        if self.total.sum() > 0:
            out["response/bits_per_spike"] = float(
                (self.log_likelihood[seen].sum() - null.sum()) / (self.total.sum() * np.log(2)))
        return out


class ForecastMetrics:
    """Correlation per position of the target window: step h is the h-th sample after each example's first target
    sample; each step has its own per-neuron correlation, averaged over neurons."""

    def __init__(self, num_neuron_rows: int):
        self.rows = num_neuron_rows
        self.moments: PairMoments | None = None  # (step, row) flattened; sized on the first batch

    def update(self, rates_BxTxN, responses_BxTxN, scored_BxTxN, neuron_index_BxN) -> None:
        if self.moments is None:
            self.moments = PairMoments(scored_BxTxN.shape[1] * self.rows)
        any_target_BxT = scored_BxTxN.any(axis=2)
        first_B = np.argmax(any_target_BxT, axis=1)
        b, t, n = np.nonzero(scored_BxTxN)
        step = t - first_B[b]
        self.moments.add(step * self.rows + neuron_index_BxN[b, n], np.asarray(rates_BxTxN)[b, t, n],
                         np.asarray(responses_BxTxN)[b, t, n])

    def result(self) -> dict[str, float]:
        if self.moments is None:
            return {}
        out = {}
        steps = self.moments.num_rows // self.rows
        for h in range(steps):
            part = summarize_correlation(self.moments, "f", np.arange(h * self.rows, (h + 1) * self.rows))
            if "f/correlation" in part:
                out[f"forecast/step{h:02d}/correlation"] = part["f/correlation"]
                out[f"forecast/step{h:02d}/n_neurons"] = part["f/n_neurons"]
        return out


class BehaviorMetrics:
    """Per behavior channel: Pearson correlation and R^2 over the scored behavior elements of each session, then the
    mean over sessions, weighted by `session_weights` (MetricSuite: each session's number of neurons, as the official
    overall metric weighs sessions; None: equal). Per session, because behavior is standardized per session: pooling
    sessions would reward matching between-session offsets (a per-session constant would score a correlation)."""

    def __init__(self, num_sessions: int, channels: Sequence[str] = BEHAVIOR_CHANNELS,
                 session_weights: Sequence[float] | None = None):
        self.channels = tuple(channels)
        self.session_weights = np.ones(num_sessions) if session_weights is None else np.asarray(session_weights,
                                                                                                float)
        self.moments = PairMoments(num_sessions * len(self.channels))  # row = session * C + channel

    def update(self, predicted_BxTxC, behavior_BxTxC, scored_BxTxC, session_B) -> None:
        b, t, c = np.nonzero(scored_BxTxC)
        rows = np.asarray(session_B)[b] * len(self.channels) + c
        self.moments.add(rows, np.asarray(predicted_BxTxC)[b, t, c], np.asarray(behavior_BxTxC)[b, t, c])

    def result(self) -> dict[str, float]:
        C = len(self.channels)
        corr, ok_corr = (a.reshape(-1, C) for a in self.moments.correlation())
        r2, ok_r2 = (a.reshape(-1, C) for a in self.moments.r2())
        out, means = {}, {"correlation": [], "r2": []}
        for i, name in enumerate(self.channels):
            for metric, values, ok in (("correlation", corr, ok_corr), ("r2", r2, ok_r2)):
                if ok[:, i].any():
                    out[f"behavior/{name}/{metric}"] = float(np.average(values[ok[:, i], i],
                                                                        weights=self.session_weights[ok[:, i]]))
                    means[metric].append(out[f"behavior/{name}/{metric}"])
        for metric, values in means.items():
            if values:
                out[f"behavior/{metric}"] = float(np.mean(values))  # mean over channels
        return out


def repeated_trials(store, layout, split: str) -> list[dict[int, tuple[int, int]]]:
    """Per session of `layout`: {source trial index: (video id, trial length)} for the trials of `split`'s tiers
    (with responses) whose video is shown at least twice among them: the repeats behind the oracle metrics."""
    tiers = list(tier_names(split))
    out = []
    for name in layout.names:
        t = store.session(name).trials
        rows = np.flatnonzero(np.isin(t["tier"], tiers) & t["has_responses"])
        videos, counts = np.unique(t["video_id"][rows], return_counts=True)
        rows = rows[np.isin(t["video_id"][rows], videos[counts >= 2])]
        out.append({int(t["source_index"][r]): (int(t["video_id"][r]), int(t["stop"][r] - t["start"][r]))
                    for r in rows})
    return out


class RepeatMetrics:
    """Metrics on repeated videos (Sensorium definitions; neuralpredictors `measures/np_functions.py`).

    A condition is (video id, sample position in the trial): each frame of a repeated clip is one stimulus, seen once
    per repeat. Per neuron, over conditions (positions >= `skip`, as in the Sensorium score):
      correlation to average  Pearson correlation of the repeat-averaged prediction with the repeat-averaged response;
      FEV                     (total variance - noise variance) / total variance, where total variance is over all
                              single-trial responses (ddof 1) and noise variance the mean over conditions of the
                              variance across repeats (ddof 1);
      FEVE                    1 - (MSE - noise variance) / (total variance - noise variance), averaged over neurons
                              with FEV >= `fev_threshold`;
      oracle correlation      the leave-one-out noise ceiling: each single-trial response correlated with the mean of
                              the other repeats of its condition.
    Per (condition, neuron) it keeps count, sum and sum of squares of responses, sum of predictions and sum of squared
    errors: 40 bytes per repeated-clip sample and neuron, allocated per session when it first appears.
    """

    def __init__(self, layout, trial_videos: Sequence[Mapping[int, tuple[int, int]]], *, skip: int = SENSORIUM_SKIP,
                 fev_threshold: float = FEV_THRESHOLD):
        self.layout, self.skip, self.fev_threshold = layout, skip, fev_threshold
        self.trial_videos = list(trial_videos)
        self.video_offset = []  # per session: video id -> first condition index
        self.num_conditions = []
        for table in self.trial_videos:
            offsets, total = {}, 0
            for video, length in sorted(set(table.values())):
                if video not in offsets:
                    offsets[video] = total
                    total += max(length for v, ln in table.values() if v == video)
            self.video_offset.append(offsets)
            self.num_conditions.append(total)
        self.sums: dict[int, np.ndarray] = {}  # session -> (5, conditions * neurons): n, Σy, Σy², Σr, Σ(y - r)²

    def update(self, rates_BxTxN, responses_BxTxN, scored_BxTxN, batch) -> None:
        B, T, _ = scored_BxTxN.shape
        for i in range(B):
            k = int(batch["session_index"][i])
            trial = self.trial_videos[k].get(int(batch["trial_index"][i]))
            if trial is None:
                continue
            position_T = int(batch["trial_offset"][i]) + np.arange(T)
            t, n = np.nonzero(scored_BxTxN[i] & (position_T >= self.skip)[:, None])
            local = batch["neuron_index"][i, n] - self.layout.row_offsets[k]
            neurons = self.layout.n_neurons[k]
            cell = (self.video_offset[k][trial[0]] + position_T[t]) * neurons + local
            y = np.asarray(responses_BxTxN[i], np.float64)[t, n]
            r = np.asarray(rates_BxTxN[i], np.float64)[t, n]
            if k not in self.sums:
                self.sums[k] = np.zeros((5, self.num_conditions[k] * neurons))
            size = self.sums[k].shape[1]
            for j, w in enumerate((None, y, y * y, r, (y - r) ** 2)):
                self.sums[k][j] += np.bincount(cell, weights=w, minlength=size)

    def _per_neuron(self) -> dict[str, np.ndarray]:
        parts: dict[str, list] = {"corr_avg": [], "ok_avg": [], "fev": [], "feve": [], "ok_fev": [], "oracle": [],
                                  "ok_oracle": []}
        for k, sums in sorted(self.sums.items()):
            n, sy, syy, sr, sse = sums.reshape(5, self.num_conditions[k], self.layout.n_neurons[k])
            present = n > 0
            my = np.divide(sy, n, out=np.zeros_like(sy), where=present)
            mr = np.divide(sr, n, out=np.zeros_like(sr), where=present)
            cyy = np.maximum(syy - n * my * my, 0.0)  # within-condition sum of squares
            # Correlation to average, over the conditions each neuron was scored on.
            moments = PairMoments(my.shape[1])
            c_idx, neuron = np.nonzero(present)
            moments.add(neuron, mr[c_idx, neuron], my[c_idx, neuron])
            corr, ok = moments.correlation()
            parts["corr_avg"].append(corr)
            parts["ok_avg"].append(ok)
            # FEV and FEVE over conditions with at least two repeats.
            rep = n >= 2
            total_n = (n * rep).sum(0)
            grand = np.divide((sy * rep).sum(0), total_n, out=np.zeros(my.shape[1]), where=total_n > 0)
            between = (rep * n * (my - grand) ** 2).sum(0)
            within = (rep * cyy).sum(0)
            total_var = np.divide(between + within, total_n - 1, out=np.zeros_like(grand), where=total_n > 1)
            n_cond = rep.sum(0)
            noise_var = np.divide((rep * np.divide(cyy, n - 1, out=np.zeros_like(cyy), where=rep)).sum(0), n_cond,
                                  out=np.zeros_like(grand), where=n_cond > 0)
            mse = np.divide((sse * rep).sum(0), total_n, out=np.zeros_like(grand), where=total_n > 0)
            ok_var = (n_cond > 0) & (total_var > 0)
            fev = np.divide(total_var - noise_var, total_var, out=np.zeros_like(grand), where=ok_var)
            explainable = total_var - noise_var
            feve = 1.0 - np.divide(mse - noise_var, explainable, out=np.zeros_like(grand), where=explainable > 0)
            parts["fev"].append(fev)
            parts["feve"].append(feve)
            parts["ok_fev"].append(ok_var)
            # Leave-one-out oracle: within a condition o_r = m + (m - y_r) / (n - 1), so its moments follow from the
            # condition's mean and sum of squares (derivation in the tests' direct computation).
            inv = np.divide(1.0, n - 1, out=np.zeros_like(n), where=rep)
            cov = between - (rep * cyy * inv).sum(0)
            var_o = between + (rep * cyy * inv * inv).sum(0)
            denom = np.sqrt(np.maximum((between + within) * var_o, 0.0))
            ok_o = (total_n >= 2) & (between + within > 0)
            parts["oracle"].append(np.divide(cov, denom, out=np.zeros_like(grand), where=ok_o & (denom > 0)))
            parts["ok_oracle"].append(ok_o)
        return {key: np.concatenate(value) if value else np.zeros(0) for key, value in parts.items()}

    def result(self) -> dict[str, float]:
        if not self.sums:
            return {}
        p = self._per_neuron()
        out = {"repeats/n_neurons": int(p["ok_avg"].sum())}
        if p["ok_avg"].any():
            out["repeats/correlation_to_average"] = float(p["corr_avg"][p["ok_avg"].astype(bool)].mean())
        ok_fev = p["ok_fev"].astype(bool)
        if ok_fev.any():
            out["repeats/fev"] = float(p["fev"][ok_fev].mean())
            reliable = ok_fev & (p["fev"] >= self.fev_threshold)
            out["repeats/n_feve_neurons"] = int(reliable.sum())
            if reliable.any():
                out["repeats/feve"] = float(p["feve"][reliable].mean())
        if p["ok_oracle"].any():
            out["repeats/oracle_correlation"] = float(p["oracle"][p["ok_oracle"].astype(bool)].mean())
        return out


class MetricSuite:
    """Every metric the evaluation regimes report, fed one batch at a time.

    `update(predictions, batch, masks)`: predictions has `rates` (B, T, N) in the units of batch["responses"] and/or
    `behavior` (B, T, C) in standardized units; masks is a `model.masking.Masks` (jnp or numpy). `result()` returns a
    flat {name: number} dict; groups without any scored element are left out. Forecast-by-step and repeat metrics are
    computed when asked for (`forecast=True`; `trial_videos` from `repeated_trials`)."""

    def __init__(self, layout, *, forecast: bool = False,
                 trial_videos: Sequence[Mapping[int, tuple[int, int]]] | None = None,
                 sensorium_skip: int = SENSORIUM_SKIP):
        rows = layout.num_neuron_rows
        self.responses = ResponseMetrics(rows, sensorium_skip, session_sizes=layout.n_neurons)
        self.behavior = BehaviorMetrics(layout.num_sessions, session_weights=layout.n_neurons)
        self.forecast = ForecastMetrics(rows) if forecast else None
        self.repeats = RepeatMetrics(layout, trial_videos, skip=sensorium_skip) if trial_videos is not None else None

    def update(self, predictions: Mapping[str, np.ndarray], batch: Mapping[str, np.ndarray], masks) -> None:
        """Accumulates one batch."""
        example_B = np.asarray(batch["example_mask"], bool)
        eval_BxT = np.asarray(batch["eval_mask"], bool) & example_B[:, None]
        if "rates" in predictions:
            scored = np.asarray(masks.response_target, bool) & eval_BxT[:, :, None]
            rates = np.asarray(predictions["rates"])
            responses, index = batch["responses"], np.asarray(batch["neuron_index"])
            position = np.asarray(batch["trial_offset"])[:, None] + np.arange(scored.shape[1])[None, :]
            self.responses.update(rates, responses, scored, index, position)
            if self.forecast is not None:
                self.forecast.update(rates, responses, scored, index)
            if self.repeats is not None:
                self.repeats.update(rates, responses, scored, batch)
        if "behavior" in predictions:
            target_B = np.broadcast_to(np.asarray(masks.behavior_target, bool), example_B.shape)
            scored = (eval_BxT & target_B[:, None])[:, :, None] & np.asarray(batch["behavior_mask"], bool)[:, None, :]
            self.behavior.update(predictions["behavior"], batch["behavior"], scored, batch["session_index"])

    def result(self) -> dict[str, float]:
        """The flat results dict."""
        out = self.responses.result()
        out.update(self.behavior.result())
        for part in (self.forecast, self.repeats):
            if part is not None:
                out.update(part.result())
        return out
