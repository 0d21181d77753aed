"""The input pipeline: session store -> 2-second windows -> padded per-host numpy batches (grain Dataset API).

Training draws random windows from the train tier of the selected sessions, mixed across sessions by weight; evaluation
walks a tier with deterministic strided windows so that every sample is evaluated exactly once. Each *global* batch is
a pure function of (seed, batch index): every process computes the same window choices and reads only its own slice,
so the data a model sees does not depend on how many processes share the work, and the grain iterator state (the next
batch index) is all a checkpoint needs to resume exactly.

Batch fields (B = per-host batch, T = block samples, N = max_neurons, C = len(BEHAVIOR_CHANNELS)):
  responses      float32 (B, T, N)  divided by each neuron's train-tier std (non-negative: Poisson targets); pad 0
  neuron_mask    bool    (B, N)     real neurons first, in a random order per example, padding after
  neuron_index   int32   (B, N)     row in the global neuron table (SessionLayout); padding 0
  session_index  int32   (B,)       animal_index int32 (B,)
  video          uint8   (B, T, H, W)
  behavior       float32 (B, T, C)  standardized with train-tier statistics; absent channels 0
  behavior_mask  bool    (B, C)
  example_mask   bool    (B,)       False for the padding examples of a last evaluation batch
  eval_mask      bool    (B, T)     evaluation: samples this window is the first to cover; training: all True
  window_start   int32   (B,)       first sample of the window in its session; trial_index int32 (B,) source index
  trial_offset   int32   (B,)       first sample of the window counted from its trial's start
Evaluation windows may also carry per-neuron extra fields of the store (e.g. a digital mouse's `true_rates`), each
float32 (B, T, N) with the neurons and scaling of `responses`.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import grain
import numpy as np

from omnimouse_jax.data.layout import SessionLayout
from omnimouse_jax.data.receptive_fields import EnergyCorrelation
from omnimouse_jax.data.schema import BEHAVIOR_CHANNELS
from omnimouse_jax.errors import UserError

# The model's behavior channels, in its order; sources are mapped by name.
RESPONSE_STD_FLOOR = 1e-2  # as a fraction of the session's mean std: keeps near-silent neurons from exploding
_FIELDS = ("responses", "video", "behavior")
# Training trials per session read for the initializers' statistics. Tuning needs more than a mean: on digital mice
# its correlation with the planted eye gains averages 0.68 from 16 trials and 0.79 from 64.
MEAN_TRIALS, TUNING_TRIALS = 16, 64


@dataclasses.dataclass(frozen=True)
class _SessionWindows:
    """Where windows of one session may start: per eligible trial, its first start and number of starts."""

    trial_rows: np.ndarray
    first_start: np.ndarray
    n_starts: np.ndarray

    @property
    def total(self) -> int:
        return int(self.n_starts.sum())

    def start(self, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(sample start, trial row) of the k-th window start, k in [0, total)."""
        cumulative = np.cumsum(self.n_starts)
        j = np.searchsorted(cumulative, k, side="right")
        before = cumulative[j] - self.n_starts[j]
        return self.first_start[j] + (k - before), self.trial_rows[j]


def eligible_trials(session, tiers: Sequence[str], block: int, fraction: float, require_responses: bool) -> np.ndarray:
    """Rows of the session's trials in `tiers` that can hold a block; with `fraction`, the first share of them.

    Taking a prefix of the trials (in source order) makes smaller fractions nested in larger ones, as a data-size sweep
    needs."""
    t = session.trials
    ok = np.isin(t["tier"], list(tiers)) & ((t["stop"] - t["start"]) >= block)
    if require_responses:
        ok &= t["has_responses"]
    rows = np.flatnonzero(ok)
    rows = rows[np.argsort(t["source_index"][rows], kind="stable")]
    if fraction < 1.0 and len(rows):
        rows = rows[: max(1, int(round(fraction * len(rows))))]
    return np.sort(rows)


class _Normalizer:
    """Per-session scaling from train-tier statistics, and the channel map to BEHAVIOR_CHANNELS."""

    def __init__(self, session):
        stats = session.stats
        std = np.nan_to_num(stats["responses"]["std"].astype(np.float64), nan=0.0)
        mean_std = float(std.mean()) if std.size and std.mean() > 0 else 1.0
        self.response_scale = (1.0 / np.maximum(std, RESPONSE_STD_FLOOR * mean_std)).astype(np.float32)
        names = list(session.behavior_channels)
        self.behavior_columns = np.array([names.index(c) if c in names else -1 for c in BEHAVIOR_CHANNELS])
        self.behavior_mask = self.behavior_columns >= 0
        cols = np.where(self.behavior_mask, self.behavior_columns, 0)
        mean = np.nan_to_num(stats["behavior"]["mean"][cols].astype(np.float32))
        std_b = np.nan_to_num(stats["behavior"]["std"][cols].astype(np.float32), nan=1.0)
        self.behavior_mean = np.where(self.behavior_mask, mean, 0.0).astype(np.float32)
        self.behavior_scale = np.where(self.behavior_mask, 1.0 / np.maximum(std_b, 1e-6), 0.0).astype(np.float32)

    def behavior(self, raw_TxC: np.ndarray) -> np.ndarray:
        cols = np.where(self.behavior_mask, self.behavior_columns, 0)
        x = (raw_TxC[:, cols] - self.behavior_mean) * self.behavior_scale  # absent channels have scale 0
        x[np.isnan(x)] = 0.0  # a missing sample reads as the channel mean
        return x

    def responses_to_original(self, scaled, neuron_local_index):
        """Inverse of the response scaling, for reporting in the source's units."""
        return np.asarray(scaled) / self.response_scale[np.asarray(neuron_local_index)]


class _CrossMoments:
    """Streaming per-neuron response moments and their regression on the behavior channels over trials. NaN response
    samples are skipped per neuron (the normalizer reads NaN behavior as the channel mean)."""

    def __init__(self, n_neurons: int, n_channels: int):
        c = n_channels
        self.n = np.zeros(n_neurons)
        self.sum_y = np.zeros(n_neurons)
        self.sum_yy = np.zeros(n_neurons)
        self.sum_x = np.zeros((n_neurons, c))
        self.sum_xx = np.zeros((n_neurons, c, c))
        self.sum_xy = np.zeros((n_neurons, c))

    def update(self, y_TxN: np.ndarray, x_TxC: np.ndarray) -> None:
        ok = np.isfinite(y_TxN)
        y = np.where(ok, y_TxN, 0.0)
        w = ok.astype(np.float64)
        c = x_TxC.shape[1]
        self.n += w.sum(0)
        self.sum_y += y.sum(0)
        self.sum_yy += (y * y).sum(0)
        self.sum_x += w.T @ x_TxC
        self.sum_xx += (w.T @ (x_TxC[:, :, None] * x_TxC[:, None, :]).reshape(-1, c * c)).reshape(-1, c, c)
        self.sum_xy += y.T @ x_TxC

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-neuron mean (N,) and behavior tuning (N, C): the coefficients of a least-squares regression of the
        response on all channels jointly, in units of the residual std (a channel's effect over the response's
        unexplained noise; 0 for absent or constant channels and for neurons without variance)."""
        n = np.maximum(self.n, 1.0)
        mean_y = self.sum_y / n
        mean_x = self.sum_x / n[:, None]
        cov_xx = self.sum_xx / n[:, None, None] - mean_x[:, :, None] * mean_x[:, None, :]
        cov_xy = self.sum_xy / n[:, None] - mean_y[:, None] * mean_x
        var_y = np.maximum(self.sum_yy / n - mean_y**2, 0.0)
        # A tiny ridge keeps absent (all-zero) channels from making the system singular; their coefficients stay 0.
        ridge = 1e-12 * np.maximum(np.trace(cov_xx, axis1=1, axis2=2), 1e-12)[:, None, None] * np.eye(cov_xx.shape[1])
        coef = np.linalg.solve(cov_xx + ridge, cov_xy[:, :, None])[:, :, 0]
        residual_std = np.sqrt(np.maximum(var_y - (coef * cov_xy).sum(1), 0.0))
        # A response the channels explain exactly (or a constant one) has no noise to measure its effects against.
        ok = residual_std > 1e-9 * np.sqrt(var_y)
        tuning = np.where(ok[:, None], coef / np.where(ok, residual_std, 1.0)[:, None], 0.0)
        return mean_y, tuning


class _Reader:
    """Reads and assembles examples; shared by the training and evaluation datasets."""

    def __init__(self, store, layout: SessionLayout, block: int, max_neurons: int, extra_fields: Sequence[str] = ()):
        self.layout, self.block, self.max_neurons = layout, block, max_neurons
        self.sessions = [store.session(name) for name in layout.names]
        self.extra_fields = tuple(extra_fields)
        for session in self.sessions:
            for field in self.extra_fields:
                if session.extra_fields.get(field) != session.n_neurons:
                    raise UserError(f"session {session.name}: no per-neuron extra field {field!r} (its extra fields: "
                                    f"{session.extra_fields}); expected one column per neuron ({session.n_neurons})")
        shapes = {s.frame_shape for s in self.sessions}
        if len(shapes) != 1:
            raise UserError(f"config.data.sessions: sessions have different frame shapes {sorted(shapes)}; "
                            "select sessions with one frame shape")
        self.frame_shape = shapes.pop()
        self.normalizers = [_Normalizer(s) for s in self.sessions]

    def read(self, examples: list[tuple[int, int, int, np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
        """examples: (session k, start, trial row, neuron local indices, eval mask (T,)); None entries are padding."""
        B, T, N = len(examples), self.block, self.max_neurons
        futures = [None if ex is None else self.sessions[ex[0]].read_async(ex[1], ex[1] + T,
                                                                            _FIELDS + self.extra_fields)
                   for ex in examples]
        batch = {
            "responses": np.zeros((B, T, N), np.float32),
            "neuron_mask": np.zeros((B, N), bool),
            "neuron_index": np.zeros((B, N), np.int32),
            "session_index": np.zeros((B,), np.int32),
            "animal_index": np.zeros((B,), np.int32),
            "video": np.zeros((B, T, *self.frame_shape), np.uint8),
            "behavior": np.zeros((B, T, len(BEHAVIOR_CHANNELS)), np.float32),
            "behavior_mask": np.zeros((B, len(BEHAVIOR_CHANNELS)), bool),
            "example_mask": np.zeros((B,), bool),
            "eval_mask": np.zeros((B, T), bool),
            "window_start": np.zeros((B,), np.int32),
            "trial_index": np.zeros((B,), np.int32),
            "trial_offset": np.zeros((B,), np.int32),
            **{f: np.zeros((B, T, N), np.float32) for f in self.extra_fields},
        }
        for b, (ex, fut) in enumerate(zip(examples, futures)):
            if ex is None:
                continue
            k, start, row, neurons, eval_mask = ex
            session, norm = self.sessions[k], self.normalizers[k]
            raw = {f: f_.result() for f, f_ in fut.items()}
            n = len(neurons)
            for field in ("responses", *self.extra_fields):
                np.multiply(raw[field][:, neurons], norm.response_scale[neurons], out=batch[field][b, :, :n])
            batch["neuron_mask"][b, :n] = True
            batch["neuron_index"][b, :n] = self.layout.row_offsets[k] + neurons
            batch["session_index"][b] = k
            batch["animal_index"][b] = self.layout.animal_names.index(self.layout.animals[k])
            batch["video"][b] = raw["video"]
            batch["behavior"][b] = norm.behavior(raw["behavior"])
            batch["behavior_mask"][b] = norm.behavior_mask
            batch["example_mask"][b] = True
            batch["eval_mask"][b] = eval_mask
            batch["window_start"][b] = start
            batch["trial_index"][b] = session.trials["source_index"][row]
            batch["trial_offset"][b] = start - session.trials["start"][row]
        return batch


def _check_batch(global_batch: int, process_count: int) -> int:
    if global_batch <= 0 or global_batch % process_count:
        raise UserError(f"config.train.batch_size={global_batch}: must be a positive multiple of the number of "
                        f"processes ({process_count})")
    return global_batch // process_count


class TrainWindows:
    """Random training windows: global batch b is a pure function of (seed, b); this process reads its slice."""

    def __init__(self, store, layout: SessionLayout, *, block: int, max_neurons: int, global_batch: int, seed: int,
                 fraction: float = 1.0, weighting: str = "proportional", tiers=("train",),
                 process_index: int = 0, process_count: int = 1):
        if not 0.0 < fraction <= 1.0:
            raise UserError(f"config.data.fraction={fraction}: expected a number in (0, 1]")
        if weighting not in ("proportional", "balanced"):
            raise UserError(f"config.data.weighting={weighting!r}: expected 'proportional' or 'balanced'")
        self.reader = _Reader(store, layout, block, max_neurons)
        self.per_host = _check_batch(global_batch, process_count)
        self.global_batch, self.seed = global_batch, seed
        self.process_index = process_index
        self.windows = []
        for session in self.reader.sessions:
            rows = eligible_trials(session, tiers, block, fraction, require_responses=True)
            t = session.trials
            n_starts = (t["stop"][rows] - t["start"][rows] - block + 1).astype(np.int64)
            self.windows.append(_SessionWindows(rows, t["start"][rows].astype(np.int64), n_starts))
        totals = np.array([w.total for w in self.windows], np.float64)
        empty = [layout.names[k] for k in np.flatnonzero(totals == 0)]
        if empty:
            raise UserError(f"config.data.sessions: {empty} have no {'/'.join(tiers)} trial with responses of at "
                            f"least config.data.block_samples={block} samples")
        weights = totals if weighting == "proportional" else np.ones_like(totals)
        self.session_probs = weights / weights.sum()

    def neuron_statistics(self, max_trials: int = MEAN_TRIALS,
                          rf_grid: tuple[int, int] | None = None) -> dict[str, dict[str, np.ndarray]]:
        """{session: {"mean": (n_neurons,) mean response in the model's units, "behavior_tuning": (n_neurons, C)
        each neuron's regression on BEHAVIOR_CHANNELS (_CrossMoments.result)}}, estimated from up to `max_trials` of
        the session's training trials: only those this run may train on, so a data-size sweep's small runs learn
        nothing from data they exclude. Initializes the readout biases and, optionally, the neuron embeddings.
        With `rf_grid` (the model's video-token grid), also "rf_centre": (n_neurons, 2) each neuron's mapped
        receptive-field centre (omnimouse_jax.data.receptive_fields)."""
        rng = np.random.default_rng([self.seed, 0x6D65616E])
        stats = {}
        for name, session, norm, windows in zip(self.reader.layout.names, self.reader.sessions,
                                                self.reader.normalizers, self.windows):
            t = session.trials
            rows = windows.trial_rows[rng.permutation(len(windows.trial_rows))[:max_trials]]
            fields = ("responses", "behavior") + (("video",) if rf_grid else ())
            futures = [session.read_async(int(t["start"][r]), int(t["stop"][r]), fields) for r in rows]
            moments = _CrossMoments(session.n_neurons, len(BEHAVIOR_CHANNELS))
            energy = EnergyCorrelation(session.n_neurons, rf_grid, session.frame_shape) if rf_grid else None
            for future in futures:
                responses = future["responses"].result()
                moments.update(responses.astype(np.float64),
                               norm.behavior(future["behavior"].result()).astype(np.float64))
                if energy is not None:
                    energy.update(responses, future["video"].result())
            mean, tuning = moments.result()
            stats[name] = {"mean": (mean * norm.response_scale).astype(np.float32),
                           "behavior_tuning": tuning.astype(np.float32)}
            if energy is not None:
                stats[name]["rf_centre"] = energy.centres()
        return stats

    @property
    def num_windows(self) -> int:
        """Distinct window starts available (the unique data, in windows)."""
        return sum(w.total for w in self.windows)

    def choose(self, batch_index: int) -> list[tuple]:
        """The global batch's examples: (session, start, trial row, neurons, eval mask), identical on every process."""
        rng = np.random.default_rng([self.seed, batch_index])
        sessions = rng.choice(len(self.windows), size=self.global_batch, p=self.session_probs)
        examples = []
        for j, k in enumerate(sessions):
            k = int(k)
            start, row = self.windows[k].start(rng.integers(self.windows[k].total))
            neuron_rng = np.random.default_rng([self.seed, batch_index, j])
            neurons = neuron_rng.permutation(self.reader.layout.n_neurons[k])[: self.reader.max_neurons]
            examples.append((k, int(start), int(row), neurons, np.ones(self.reader.block, bool)))
        return examples

    def __call__(self, batch_index: int) -> dict[str, np.ndarray]:
        lo = self.process_index * self.per_host
        return self.reader.read(self.choose(batch_index)[lo:lo + self.per_host])


class EvalWindows:
    """Deterministic strided windows over a tier; each sample is marked in eval_mask by exactly one window.

    Sessions with more neurons than max_neurons are covered in several neuron chunks of one fixed random order, so each
    (neuron, sample) is evaluated once. The last global batch is padded (example_mask False). `extra_fields`: per-neuron
    extra fields of the store to read alongside the responses, scaled like them (UserError if a session lacks one)."""

    def __init__(self, store, layout: SessionLayout, *, block: int, max_neurons: int, global_batch: int, seed: int,
                 tier: str = "test", stride: int | None = None, process_index: int = 0, process_count: int = 1,
                 extra_fields: Sequence[str] = ()):
        self.reader = _Reader(store, layout, block, max_neurons, extra_fields)
        self.per_host = _check_batch(global_batch, process_count)
        self.global_batch, self.process_index = global_batch, process_index
        stride = stride or block
        if not 0 < stride <= block:
            raise UserError(f"config.eval.stride={stride}: expected 1..block_samples ({block})")
        self.examples = []
        for k, session in enumerate(self.reader.sessions):
            n = layout.n_neurons[k]
            order = np.random.default_rng([seed, k]).permutation(n)
            chunks = [order[i:i + max_neurons] for i in range(0, n, max_neurons)]
            t = session.trials
            for row in eligible_trials(session, tier_names(tier), block, 1.0, require_responses=True):
                for start, mask in _strided_windows(int(t["start"][row]), int(t["stop"][row]), block, stride):
                    self.examples.extend((k, start, int(row), chunk, mask) for chunk in chunks)
        if not self.examples:
            raise UserError(f"split {tier!r}: no trials with responses of at least {block} samples in sessions "
                            f"{list(layout.names)}")

    def __len__(self) -> int:
        return -(-len(self.examples) // self.global_batch)

    def __call__(self, batch_index: int) -> dict[str, np.ndarray]:
        lo = batch_index * self.global_batch + self.process_index * self.per_host
        chosen = self.examples[lo:lo + self.per_host]
        return self.reader.read(chosen + [None] * (self.per_host - len(chosen)))


# Named splits and their tiers: 'validation' is validation + oracle (the paper's convention), 'test' the test tiers.
SPLITS = {
    "train": ("train",),
    "validation": ("validation", "oracle"),
    "oracle": ("oracle",),
    "test": ("test", "final_test_main", "live_test_main"),
    "test_bonus": ("final_test_bonus", "live_test_bonus"),
    # The OmniMouse corpus's held-out tiers, as the paper's evaluation scores them together.
    "final_test": ("final_test", "final_test_1", "final_test_2", "final_test_3"),
}


def tier_names(split: str) -> tuple[str, ...]:
    """Tiers of a split name (see SPLITS); any other name is taken as a single tier."""
    return SPLITS.get(split, (split,))


def _strided_windows(start: int, stop: int, block: int, stride: int):
    """Windows [s, s+block) every `stride` samples, plus one aligned to the trial's end if needed; each window's mask
    marks the samples no earlier window covered."""
    starts = list(range(start, stop - block + 1, stride))
    if starts[-1] + block < stop:
        starts.append(stop - block)
    covered_until = start
    for s in starts:
        mask = np.arange(s, s + block) >= covered_until
        covered_until = s + block
        yield s, mask


def train_dataset(windows: TrainWindows, *, start_batch: int = 0, num_threads: int = 4, prefetch: int = 8):
    """A grain IterDataset of per-host training batches; its iterator's state is the next global batch index."""
    return (grain.MapDataset.range(start_batch, 2**62)
            .map(windows)
            .to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)))


def eval_dataset(windows: EvalWindows, *, num_threads: int = 4, prefetch: int = 8,
                 batches: Sequence[int] | None = None):
    """A grain IterDataset over every evaluation batch once, in order (or over the batch indices `batches`)."""
    indices = range(len(windows)) if batches is None else [int(b) for b in batches]
    return (grain.MapDataset.source(indices)
            .map(windows)
            .to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)))
