"""Evaluating a trained workdir in every test-time regime, with baselines, ground-truth ceilings and the paper's table.

A regime is a named masking preset (model/masking.py). One pass over the split's evaluation windows serves every
regime and every predictor: per batch, the model (one compiled predict function shared by all presets, since a preset
is only integer fields), the baselines, and on digital mice the ground truth each predict under the preset's masks, and
one MetricSuite per (regime, predictor) accumulates the scores.

Windows. Every preset scores responses in the block's suffix (samples suffix_start..T), so windows advance by
T - suffix_start samples: each sample after a trial's first suffix_start is scored exactly once, with a full context
before it (eval_mask marks each sample in one window; behavior targets are scored over every sample once).

Predictors, reported under "baselines" beside the model:
  mean, persistence   trivial: per-neuron training mean; last visible response carried forward (baselines.py)
  ridge               the classical linear model of the regime's family: population completion (visible neurons ->
                      held-out ones), forecasting (direct multi-horizon autoregression) and behavior decoding
                      (responses -> behavior); not run where no response is visible (video-only regimes)
  cnn                 stimulus-only convolutional core (baselines_cnn.py), in regimes with video visible, trained on
                      short training windows for a small step budget
  ln                  linear-nonlinear encoding model per neuron (baselines_ln.py): ridge from lagged pooled frames
                      (and the visible behavior where the regime encodes it) with a softplus output, in regimes with
                      video visible and response targets
  NAME                a specialized single-task model (a workdir trained with --config.masking.mix=PRESET), in the
                      regimes of its training mix
  ceiling             digital mice only: the true rates (the store's `true_rates`, scaled like the responses), the best
                      any model can do; fraction_of_ceiling = metric / ceiling metric for correlation metrics
Baselines are fit on the first `train_batches` training batches of the same pipeline (ridge per regime family).

Input ablation (EvalOptions.ablation, default on). In every regime with response targets whose preset shows video
(video_len != 0), the model is scored again with the video of each example replaced by another window's (the masks
unchanged), and in every such regime that encodes behavior, with the behavior and behavior_mask replaced likewise:
one extra forward per (batch, regime, ablated input), through the same compiled function. The donors are a fixed
derangement of windows: batch j of the n chosen batches takes its inputs from batch (j + n // 2) mod n, example by
example: the r-th real example from the first real example of the donor batch, in cyclic order from its r-th, that
belongs to another trial (failing that, to another window; donor_examples). Donors come from another batch
because the examples of one evaluation batch are mostly overlapping windows of one trial, or the same window with
another chunk of a large session's neurons, whose videos are nearly or exactly the example's own. With one batch
the derangement is within it (starting half the batch away); an example left without a donor from another window
is scored in neither the intact nor the shuffled column. eval.json, per ablated regime:
    regimes[name]["ablation"] = {"metric": "response/correlation", "examples": scored examples,
                                 "excluded": real examples without a donor,
                                 "intact": {"response/correlation": .., "response/poisson_nll": ..},
                                 "video": {"response/correlation": .., "response/poisson_nll": .., "drop": ..},
                                 "behavior": {...}}            (only the inputs the preset shows)
drop = intact - shuffled correlation. Top level: "ablation" = {"metric", "min_drop": ABLATION_MIN_DROP, "donors",
"unused": {"video": [regimes], "behavior": [regimes]}}: the regimes whose drop is below ABLATION_MIN_DROP, which
eval.md flags with a WARNING line per input.

Paper columns (PAPER_COLUMNS) map each column of the paper's results table to (preset, metric key). "Gaze" is the
mean of the pupil_x and pupil_y correlations, added to every result as GAZE_KEY.
"""
from __future__ import annotations

import dataclasses
import itertools
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import jax
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from flax import nnx

from omnimouse_jax.data import pipeline
from omnimouse_jax.data.layout import SessionLayout
from omnimouse_jax.data.schema import BEHAVIOR_CHANNELS
from omnimouse_jax.data.store import open_store
from omnimouse_jax.errors import UserError
from omnimouse_jax.evaluate import baselines_cnn
from omnimouse_jax.evaluate.baselines import MeanBaseline, PersistenceBaseline
from omnimouse_jax.evaluate.baselines_ln import LNBaseline
from omnimouse_jax.evaluate.baselines_ridge import RidgeAutoregression, RidgeDecoder, RidgePopulation
from omnimouse_jax.evaluate.metrics import SENSORIUM_SKIP, MetricSuite, repeated_trials
from omnimouse_jax.evaluate.options import EvalOptions
from omnimouse_jax.evaluate.planted import planted_recovery
from omnimouse_jax.evaluate.report import markdown
from omnimouse_jax.files import AtomicFile, atomic_open, write_json_atomic, write_text_atomic
from omnimouse_jax.model import masking
from omnimouse_jax.parallel import compile_cache, sharding
from omnimouse_jax.train.checkpoint import saved_record
from omnimouse_jax.train.restore import config_from_json, load_trained
from omnimouse_jax.train.session import MODEL_FIELDS

GAZE_KEY = "behavior/gaze/correlation"
# The paper's results table: column -> (preset, metric key). Behavior columns decode behavior from neurons alone.
# Response columns pool neurons by their scored elements, as the official code's population metrics do; every
# regime's entry also keeps the plain mean over neurons (response/correlation).
PAPER_COLUMNS: dict[str, tuple[str, str]] = {
    "Forecast": ("causal_response_25", "response/correlation_pooled"),
    "Forecast+Stim": ("causal_response_25_video", "response/correlation_pooled"),
    "Population": ("population_64_response", "response/correlation_pooled"),
    "Pop.+Stim": ("population_64_response_video", "response/correlation_pooled"),
    "Gaze": ("all_response_only", GAZE_KEY),
    "Pupil": ("all_response_only", "behavior/pupil_dilation/correlation"),
    "Running": ("all_response_only", "behavior/running_speed/correlation"),
    "Neural prediction": ("video_behavior", "response/correlation_pooled"),
}
BASELINES = ("mean", "persistence", "ridge", "cnn", "ln")
ABLATION_METRIC = "response/correlation"
# A shuffled input that lowers ABLATION_METRIC by less than this (absolute) is reported as unused by the model.
ABLATION_MIN_DROP = 0.01
# The batch fields each ablated input replaces.
ABLATED_FIELDS = {"video": ("video",), "behavior": ("behavior", "behavior_mask")}
ABLATION_DONORS = ("each example takes the input of the same-rank example of the evaluation batch half the chosen "
                   "batches away, or the next one there from another trial, else from another window")
CEILING_FIELD = "true_rates"
TIER_SCORES = "by_tier"  # the model's scores per tier of a multi-tier split, in eval.json as model_by_tier
SUBMISSION_PRESET = "video_behavior"  # the Sensorium task: responses from the video and behavior
# Seconds between evaluation progress lines (the first and the last batch are always reported).
PROGRESS_EVERY_S = 10.0


# --- regime selection -------------------------------------------------------------------------------------------------

def select_regimes(regimes, max_neurons: int, num_samples: int) -> tuple[list[str], dict[str, str]]:
    """(presets to evaluate, {preset: why skipped}). `regimes` is "all" (every preset valid for the model's neuron
    budget and block, per masking.presets_for; the others are listed as skipped), "paper" (the valid presets of the
    paper's table, PAPER_COLUMNS) or names (a list or a comma-separated string); a name that is not a preset, or not
    valid for this model, is a UserError naming the valid choices."""
    valid = masking.presets_for(max_neurons, num_samples)
    skipped = {}
    for name in masking.EVAL_PRESETS:
        if name not in valid:
            try:
                masking.validate_strategy(masking.PRESETS[name], max_neurons=max_neurons, num_samples=num_samples,
                                          name=name)
            except UserError as err:
                skipped[name] = str(err)
    regimes = regime_names(regimes)
    if regimes == ["all"]:
        return valid, skipped
    if regimes == ["paper"]:
        paper = list(dict.fromkeys(preset for preset, _ in PAPER_COLUMNS.values()))
        return [p for p in paper if p in valid], {p: why for p, why in skipped.items() if p in paper}
    unknown = [r for r in regimes if r not in masking.PRESETS]
    if unknown or not regimes:
        raise UserError(f"--regimes: {unknown or 'none given'} not a regime; expected 'all', 'paper' or names from "
                        f"{', '.join(valid)}")
    invalid = [r for r in regimes if r not in valid]
    if invalid:
        raise UserError(f"--regimes: {invalid} do not fit this model (config.model.max_neurons={max_neurons}, "
                        f"num_samples={num_samples}): {skipped[invalid[0]]}; valid: {', '.join(valid)}")
    return list(dict.fromkeys(regimes)), {}


def regime_names(regimes) -> list[str]:
    """A list of regime names from a list or a comma-separated string."""
    if isinstance(regimes, str):
        regimes = regimes.split(",")
    return [r.strip() for r in regimes if r.strip()]


def check_split(split: str, sessions: Sequence, block: int) -> None:
    """UserError naming the splits that have trials unless `split` has a trial with responses that holds a block."""
    tiers = set()
    for session in sessions:
        t = session.trials
        ok = t["has_responses"] & ((t["stop"] - t["start"]) >= block)
        tiers.update(str(x) for x in t["tier"][ok])
    if not tiers & set(pipeline.tier_names(split)):
        named = [s for s, members in pipeline.SPLITS.items() if tiers & set(members)]
        choices = ", ".join(named + sorted(tiers)) or "none"
        raise UserError(f"--split {split!r}: no trials with responses of at least {block} samples in sessions "
                        f"{[s.name for s in sessions]}; splits with trials: {choices}")


def eval_stride(presets: Sequence[str], num_samples: int) -> int:
    """Window step that scores each suffix sample once: T minus the latest suffix start of the presets."""
    return max(1, num_samples - max(masking.PRESETS[p].suffix_start for p in presets))


# --- predictors -------------------------------------------------------------------------------------------------------

class ModelPredictor:
    """A trained model behind one compiled function of (state, batch, preset fields) -> (predictions, masks)."""

    def __init__(self, trained, example_batch: Mapping[str, np.ndarray]):
        self.trained, self.fields = trained, MODEL_FIELDS
        self.sharding = sharding.batch_sharding(trained.mesh)
        graphdef, self.state = nnx.split(trained.model)
        T = int(trained.config.model.num_samples)

        def predict(state, batch, fields):
            masks = masking.make_masks(fields, batch["neuron_mask"], T)
            return nnx.merge(graphdef, state)(batch, masks, deterministic=True), masks

        with sharding.use_rules(trained.mesh):
            self._compiled = jax.jit(predict).lower(
                self.state, self.device_batch(example_batch),
                masking.strategy_arrays(masking.PRESETS[masking.EVAL_PRESETS[0]])).compile()

    def device_batch(self, host: Mapping[str, np.ndarray]) -> dict:
        return {k: jax.make_array_from_process_local_data(self.sharding, host[k]) for k in self.fields}

    def dispatch(self, device_batch: dict, preset: str):
        """Starts the prediction (asynchronously); `fetch` turns the result into numpy."""
        return self._compiled(self.state, device_batch, masking.strategy_arrays(masking.PRESETS[preset]))

    @staticmethod
    def fetch(result) -> tuple[dict[str, np.ndarray], masking.Masks]:
        predictions, masks = jax.device_get(result)
        return {k: np.asarray(v, np.float32) for k, v in predictions.items()}, masking.Masks(*map(np.asarray, masks))


def _response_input(s: masking.MaskingStrategy) -> bool:
    return s.n_visible_neurons != 0 and s.prefix_len != 0 and s.context_len != 0


def _response_target(s: masking.MaskingStrategy) -> bool:
    return s.suffix_len != 0 and s.max_reconstructed_neurons != 0


class RidgeRegimes:
    """The 'ridge' column: per regime, the classical linear model of its family (see the module docstring).

    Population models depend on the strategy only through its visible-neuron count and forecasting models only
    through its response windows, so presets that differ in video or behavior share one fit."""

    def __init__(self, layout, train_batches: list[dict]):
        self.layout, self.train_batches = layout, train_batches
        self.decoder = RidgeDecoder(layout).fit(train_batches)
        self._fits: dict = {}

    @staticmethod
    def applies(strategy: masking.MaskingStrategy) -> bool:
        return _response_input(strategy)

    def _response_model(self, s: masking.MaskingStrategy):
        if s.n_visible_neurons is not None:
            key, make = ("population", s.n_visible_neurons), RidgePopulation
        else:
            key = ("forecast", dataclasses.replace(s, video_start=0, video_len=None, behavior_encoded=True,
                                                    behavior_reconstructed=False))
            make = RidgeAutoregression
        if key not in self._fits:
            self._fits[key] = make(self.layout).fit(self.train_batches, s)
        return self._fits[key]

    def predict(self, batch, masks, strategy: masking.MaskingStrategy) -> dict[str, np.ndarray]:
        out = self.decoder.predict(batch, masks)
        if _response_target(strategy):
            out["rates"] = self._response_model(strategy).predict(batch, masks)["rates"]
        return out


class Baselines:
    """The trivial and classical baselines `names` (from BASELINES), fitted on training batches: `applicable(name,
    preset)` says where each is reported, `predict(name, batch, masks, preset)` predicts there."""

    def __init__(self, names: Sequence[str], store, layout, *, block: int, max_neurons: int, seed: int,
                 options: EvalOptions, log: Callable[[str], None]):
        self.names = list(names)
        self.models: dict = {}
        self._cnn_cache: dict = {}
        self.fit_seconds: dict[str, float] = {}
        if not self.names:
            return
        windows = pipeline.TrainWindows(store, layout, block=block, max_neurons=max_neurons, global_batch=8,
                                        seed=seed)
        train = list(itertools.islice(pipeline.train_dataset(windows, num_threads=options.num_threads),
                                      options.train_batches))
        log(f"baselines: fitting {', '.join(self.names)} on {len(train)} training batches")
        fits = {
            "mean": lambda: MeanBaseline(layout).fit(train),
            "persistence": lambda: PersistenceBaseline(layout).fit(train),
            "ridge": lambda: RidgeRegimes(layout, train),
            "ln": lambda: LNBaseline(layout).fit(train),
            "cnn": lambda: self._fit_cnn(store, layout, block, max_neurons, seed, options),
        }
        for name in BASELINES:  # a fixed order, whatever the order of `names`
            if name in self.names:
                start = time.monotonic()
                self.models[name] = fits[name]()
                self.fit_seconds[name] = time.monotonic() - start
        log("baselines: fit in " + ", ".join(f"{n} {t:.0f} s" for n, t in self.fit_seconds.items()))

    @staticmethod
    def _fit_cnn(store, layout, block, max_neurons, seed, options):
        short = pipeline.TrainWindows(store, layout, block=min(options.cnn_block, block), max_neurons=max_neurons,
                                      global_batch=8, seed=seed + 1)
        config = baselines_cnn.CNNConfig(channels=8, layers=2, steps=options.cnn_steps, learning_rate=1e-2, seed=seed)
        return baselines_cnn.CNNBaseline(layout, config).fit(
            itertools.islice(pipeline.train_dataset(short, num_threads=options.num_threads), options.cnn_steps))

    @staticmethod
    def applicable(name: str, preset: str) -> bool:
        """Whether baseline `name` is reported in `preset`: ridge needs visible responses, the CNN and LN models
        visible video and response targets; the trivial baselines apply everywhere."""
        s = masking.PRESETS[preset]
        if name == "ridge":
            return RidgeRegimes.applies(s)
        if name in ("cnn", "ln"):
            return s.video_len != 0 and _response_target(s)
        return True

    def predict(self, name: str, batch, masks, preset: str) -> dict[str, np.ndarray]:
        if name == "ridge":
            return self.models[name].predict(batch, masks, masking.PRESETS[preset])
        if name == "cnn":
            # Without behavior inputs the CNN reads only the visible frames: presets that show the same frames share
            # one forward pass per batch.
            key = np.asarray(masks.video_visible).tobytes()
            if key not in self._cnn_cache:
                self._cnn_cache[key] = self.models[name].predict(batch, masks)
            return self._cnn_cache[key]
        if name == "ln":  # reads the visible frames and, where shown, the behavior: shared like the CNN's
            key = ("ln", np.asarray(masks.video_visible).tobytes(), np.asarray(masks.behavior_visible).tobytes())
            if key not in self._cnn_cache:
                self._cnn_cache[key] = self.models[name].predict(batch, masks)
            return self._cnn_cache[key]
        return self.models[name].predict(batch, masks)

    def start_batch(self) -> None:
        """Forgets the previous batch's shared predictions."""
        self._cnn_cache = {}


# --- input ablation ---------------------------------------------------------------------------------------------------

def ablated_inputs(preset: str) -> list[str]:
    """The inputs (names in ABLATED_FIELDS) whose shuffling is scored in `preset`: the video where it is visible,
    the behavior where it is encoded; none without response targets."""
    s = masking.PRESETS[preset]
    if not _response_target(s):
        return []
    return [name for name, shown in (("video", s.video_len != 0), ("behavior", s.behavior_encoded)) if shown]


def donor_examples(batch: Mapping[str, np.ndarray], donor: Mapping[str, np.ndarray], *,
                   same_batch: bool) -> tuple[np.ndarray, np.ndarray]:
    """(donor example index (B,), has a donor (B,)): for each real example of `batch`, an example of `donor` from
    another trial, else from another window; see the module docstring. Padding examples have no donor."""
    B = len(batch["example_mask"])
    index, valid = np.arange(B), np.zeros(B, bool)
    own = np.flatnonzero(batch["example_mask"])
    candidates = np.flatnonzero(donor["example_mask"])
    if not len(own) or not len(candidates):
        return index, valid
    trial = lambda b, i: (int(b["session_index"][i]), int(b["trial_index"][i]))  # noqa: E731
    window = lambda b, i: (int(b["session_index"][i]), int(b["window_start"][i]))  # noqa: E731
    n = len(candidates)
    for rank, i in enumerate(own):
        first = (rank + n // 2) % n if same_batch else rank % n
        order = candidates[np.roll(np.arange(n), -first)]
        for differs in (trial, window):
            found = [j for j in order if differs(donor, j) != differs(batch, i)]
            if found:
                index[i], valid[i] = found[0], True
                break
    return index, valid


class InputAblation:
    """The model's scores with shuffled inputs, per regime (module docstring): `prepare` builds the shuffled
    batches of one evaluation batch, `update` scores a prediction, `entry` gives a regime's eval.json entry."""

    def __init__(self, presets: Sequence[str], layout):
        self.inputs = {p: ablated_inputs(p) for p in presets if ablated_inputs(p)}
        self.suites = {(p, name): MetricSuite(layout) for p, names in self.inputs.items()
                       for name in ("intact", *names)}
        self.examples = self.excluded = 0

    def presets_of(self, name: str) -> list[str]:
        return [p for p, names in self.inputs.items() if name in names]

    def prepare(self, host, donor, *, same_batch: bool) -> tuple[dict[str, dict], dict]:
        """({input: host batch with that input taken from the donors}, the host batch restricted to the examples
        that have a donor, for scoring)."""
        index, valid = donor_examples(host, donor, same_batch=same_batch)
        real = np.asarray(host["example_mask"], bool)
        self.examples += int(valid.sum())
        self.excluded += int((real & ~valid).sum())
        shuffled = {}
        for name in {n for names in self.inputs.values() for n in names}:
            batch = dict(host)
            for field in ABLATED_FIELDS[name]:
                batch[field] = np.where(valid.reshape(-1, *[1] * (host[field].ndim - 1)), donor[field][index],
                                        host[field])
            shuffled[name] = batch
        return shuffled, {**host, "example_mask": real & valid}

    def update(self, preset: str, name: str, predictions, scored_host, masks) -> None:
        """Scores `predictions` (only their rates) of `preset` with input `name` shuffled, or "intact"."""
        self.suites[(preset, name)].update({"rates": predictions["rates"]}, scored_host, masks)

    def entry(self, preset: str) -> dict:
        """regimes[preset]["ablation"] of eval.json."""
        keys = (ABLATION_METRIC, "response/poisson_nll")
        intact = self.suites[(preset, "intact")].result()
        out = {"metric": ABLATION_METRIC, "examples": self.examples, "excluded": self.excluded,
               "intact": {k: intact.get(k) for k in keys}}
        for name in self.inputs[preset]:
            shuffled = self.suites[(preset, name)].result()
            base, value = intact.get(ABLATION_METRIC), shuffled.get(ABLATION_METRIC)
            out[name] = {**{k: shuffled.get(k) for k in keys},
                         "drop": None if base is None or value is None else base - value}
        return out


def unused_inputs(regimes: Mapping[str, dict], min_drop: float = ABLATION_MIN_DROP) -> dict[str, list[str]]:
    """{input: regimes whose ablation drop is below min_drop} over eval.json's regimes (regimes without a defined
    drop are left out)."""
    out: dict[str, list[str]] = {name: [] for name in ABLATED_FIELDS}
    for preset, entry in regimes.items():
        for name in ABLATED_FIELDS:
            drop = entry.get("ablation", {}).get(name, {}).get("drop")
            if drop is not None and drop < min_drop:
                out[name].append(preset)
    return out


# --- outputs beside the metrics ---------------------------------------------------------------------------------------

class PredictionRecorder:
    """Keeps the scored elements of one regime's model predictions, for `save`: responses (neuron-table row, trial
    source index, position in the trial, predicted rate, response) and behavior (session, channel, prediction,
    target), in the batch's units (responses divided by each neuron's train-tier std, behavior standardized)."""

    def __init__(self):
        self.parts: dict[str, list[np.ndarray]] = {}

    def update(self, predictions, batch, masks) -> None:
        example_B = np.asarray(batch["example_mask"], bool)
        eval_BxT = np.asarray(batch["eval_mask"], bool) & example_B[:, None]
        scored = np.asarray(masks.response_target, bool) & eval_BxT[:, :, None]
        b, t, n = np.nonzero(scored)
        self._add(response_row=batch["neuron_index"][b, n], response_trial=batch["trial_index"][b],
                  response_position=batch["trial_offset"][b] + t,
                  rate=predictions["rates"][b, t, n], response=batch["responses"][b, t, n])
        behavior_B = np.broadcast_to(np.asarray(masks.behavior_target, bool), example_B.shape)
        scored = (eval_BxT & behavior_B[:, None])[:, :, None] & np.asarray(batch["behavior_mask"], bool)[:, None, :]
        b, t, c = np.nonzero(scored)
        self._add(behavior_session=batch["session_index"][b], behavior_channel=c,
                  behavior_predicted=predictions["behavior"][b, t, c], behavior_actual=batch["behavior"][b, t, c])

    def _add(self, **arrays) -> None:
        for key, value in arrays.items():
            dtype = np.float32 if value.dtype.kind == "f" else np.int32
            self.parts.setdefault(key, []).append(np.asarray(value, dtype))

    def save(self, path: Path) -> None:
        arrays = {k: np.concatenate(v) for k, v in self.parts.items()}
        arrays["behavior_channels"] = np.asarray(BEHAVIOR_CHANNELS)
        with atomic_open(path, "wb") as f:
            np.savez(f, **arrays)


class SensoriumSubmission:
    """Predictions for the split's trials in the Sensorium 2023 submission layout (the starting kit's
    `sensorium/utility/submission.py`): one parquet row per trial with `mouse` (session name), `trial_indices` (the
    trial's source index), `prediction` (neurons x frames after the first SENSORIUM_SKIP, in the source's units) and
    `neuron_ids` (the session's unit ids, in the prediction's neuron order).

    The evaluation windows of a trial are consecutive, so a trial is written as soon as the windows move past it."""

    def __init__(self, path, windows: pipeline.EvalWindows, layout):
        self.path, self.windows, self.layout, self.skip = Path(path), windows, layout, SENSORIUM_SKIP
        self.schema = pa.schema([("mouse", pa.string()), ("trial_indices", pa.int64()),
                                 ("prediction", pa.list_(pa.list_(pa.float32()))),
                                 ("neuron_ids", pa.list_(pa.int64()))])
        self.out = AtomicFile(self.path, "wb")
        self.writer = pq.ParquetWriter(self.out.file, self.schema)
        self.pending: dict[tuple[int, int], np.ndarray] = {}  # (session, trial source index) -> (neurons, samples)
        self.rows = 0

    def update(self, predictions, batch, masks) -> None:
        scored = np.asarray(masks.response_target, bool) & np.asarray(batch["eval_mask"], bool)[:, :, None]
        for i in np.flatnonzero(batch["example_mask"]):
            k, trial = int(batch["session_index"][i]), int(batch["trial_index"][i])
            if (k, trial) not in self.pending:
                self._flush()  # windows of earlier trials are done
                length = self._trial_length(k, trial)
                self.pending[(k, trial)] = np.full((self.layout.n_neurons[k], length), np.nan, np.float32)
            t, n = np.nonzero(scored[i])
            local = batch["neuron_index"][i, n] - self.layout.row_offsets[k]
            rates = self.windows.reader.normalizers[k].responses_to_original(predictions["rates"][i, t, n], local)
            self.pending[(k, trial)][local, batch["trial_offset"][i] + t] = rates

    def _trial_length(self, k: int, trial: int) -> int:
        t = self.windows.reader.sessions[k].trials
        row = int(np.flatnonzero(t["source_index"] == trial)[0])
        return int(t["stop"][row] - t["start"][row])

    def _flush(self) -> None:
        for (k, trial), prediction in self.pending.items():
            session = self.windows.reader.sessions[k]
            kept = prediction[:, self.skip:]
            if np.isnan(kept).any():
                raise RuntimeError(f"session {session.name} trial {trial}: some frames after {self.skip} were not "
                                   "predicted; the evaluation windows must cover each trial")
            table = pa.table({"mouse": [session.name], "trial_indices": [trial], "prediction": [kept.tolist()],
                              "neuron_ids": [np.asarray(session.neurons["unit_ids"], np.int64).tolist()]},
                             schema=self.schema)
            self.writer.write_table(table)
            self.rows += 1
        self.pending.clear()

    def close(self) -> None:
        self._flush()
        self.writer.close()
        self.out.commit()

    def abort(self) -> None:
        self.writer.close()
        self.out.discard()


# --- results ----------------------------------------------------------------------------------------------------------

def with_gaze(metrics: dict[str, float]) -> dict[str, float]:
    """`metrics` plus GAZE_KEY, the mean of the pupil_x and pupil_y correlations, when both are there."""
    pair = [metrics.get(f"behavior/{c}/correlation") for c in ("pupil_x", "pupil_y")]
    if None not in pair:
        metrics = {**metrics, GAZE_KEY: float(np.mean(pair))}
    return metrics


def fraction_of(metrics: Mapping[str, float], ceiling: Mapping[str, float]) -> dict[str, float]:
    """metric / ceiling for every correlation metric both have, where the ceiling is positive."""
    return {k: v / ceiling[k] for k, v in metrics.items()
            if k.endswith(("/correlation", "/correlation_pooled")) and ceiling.get(k, 0.0) > 0}


def paper_table(regimes: Mapping[str, dict], rows: Sequence[str]) -> tuple[dict, dict, dict]:
    """(table, fraction table, columns): per paper column, the value of each row (model, baselines, ceiling; None
    where a regime or metric is missing), each row's fraction of the ceiling, and each column's (preset, metric)."""
    table, fractions = {}, {}
    for column, (preset, key) in PAPER_COLUMNS.items():
        entry = regimes.get(preset, {})
        sources = {"model": entry.get("model", {}), "ceiling": entry.get("ceiling", {}), **entry.get("baselines", {})}
        table[column] = {row: sources.get(row, {}).get(key) for row in rows}
        ceiling = table[column].get("ceiling")
        fractions[column] = {row: (v / ceiling if v is not None and ceiling else None)
                             for row, v in table[column].items() if row != "ceiling"}
    return table, fractions, {c: list(v) for c, v in PAPER_COLUMNS.items()}


# --- the runner -------------------------------------------------------------------------------------------------------

def evaluate_workdir(workdir, *, regimes="all", split: str = "test", baselines: Sequence[str] = BASELINES,
                     out=None, step: int | None = None, store=None,
                     baseline_workdirs: Mapping[str, str] | None = None, options: EvalOptions = EvalOptions(),
                     save_predictions: Sequence[str] = (), sensorium_submission=None,
                     log: Callable[[str], None] | None = None) -> dict:
    """Evaluates the model of `workdir` (newest checkpoint, or `step`) in every regime and returns the eval.json dict.

    regimes: "all", "paper" or preset names (select_regimes); split: a named split (pipeline.SPLITS) or a tier;
    baselines: names from BASELINES; store: the session store (default: the one the model was trained on);
    baseline_workdirs: {name: workdir} of specialized models, reported as baselines; out: where to write eval.json
    (eval.md beside it), or None; save_predictions: presets whose scored model predictions are written to
    <out dir or workdir>/predictions/PRESET.npz (PredictionRecorder); sensorium_submission: a parquet path for the
    Sensorium 2023 submission (adds SUBMISSION_PRESET to the regimes; needs every batch, so no options.max_batches).
    UserError for a workdir without a checkpoint, an unknown or unfitting regime, or a split without trials."""
    log = log or (lambda message: None)
    workdir = Path(workdir)
    if jax.process_count() > 1:
        raise UserError("omnimouse evaluate runs in a single process; start it without the multi-process launcher")
    # Everything that can be wrong with the request is checked from the checkpoint's metadata, before the model is
    # built and compiled.
    record = saved_record(workdir / "checkpoints", step)
    if record is None:
        load_trained(workdir, step=step)  # raises the UserError that names what is missing
    meta = record[1]
    config = config_from_json(meta["config"])
    T, max_neurons = int(config.model.num_samples), int(config.model.max_neurons)
    presets, skipped = select_regimes(regimes, max_neurons, T)
    if sensorium_submission is not None:
        if options.max_batches is not None:
            raise UserError("--sensorium-submission needs every trial: drop --max-batches")
        presets += [SUBMISSION_PRESET] if SUBMISSION_PRESET not in presets else []
    unknown_saves = [p for p in save_predictions if p not in presets]
    if unknown_saves:
        raise UserError(f"--save-predictions: {unknown_saves} not among the evaluated regimes {presets}")
    unknown = [n for n in baselines if n not in BASELINES]
    if unknown:
        raise UserError(f"--baselines: {unknown} unknown; expected names from {', '.join(BASELINES)} (or none)")
    reserved = {"model", "ceiling", *BASELINES} & set(baseline_workdirs or {})
    if reserved:
        raise UserError(f"--baseline-workdirs: names {sorted(reserved)} are reserved for the model, the ceiling and "
                        f"the built-in baselines ({', '.join(BASELINES)}); choose others")
    batch_size = options.batch_size or int(config.train.batch_size)
    if batch_size % jax.device_count():
        raise UserError(f"--batch-size {batch_size}: must be a multiple of the {jax.device_count()} devices")
    store_path = Path(store or config.data.root)
    store = open_store(store_path)
    layout = SessionLayout.from_dict(meta["layout"])
    missing = [n for n in layout.names if n not in store.sessions]
    if missing:
        raise UserError(f"{store_path}: lacks sessions {missing} of the model's layout; pass the store the model was "
                        "trained on (--store)")
    sessions = [store.session(n) for n in layout.names]
    check_split(split, sessions, T)
    ceiling = all(CEILING_FIELD in s.extra_fields for s in sessions)

    compile_cache.use_workdir_cache(workdir)
    trained = load_trained(workdir, step=step)
    log(f"scoring the checkpoint of step {trained.step} ({workdir / 'checkpoints' / str(trained.step)})")
    stride = eval_stride(presets, T)
    windows = pipeline.EvalWindows(store, layout, block=T, max_neurons=max_neurons, global_batch=batch_size,
                                   seed=int(config.seed), tier=split, stride=stride,
                                   extra_fields=(CEILING_FIELD,) if ceiling else ())
    total = len(windows)
    chosen = (np.arange(total) if options.max_batches is None or options.max_batches >= total
              else np.unique(np.linspace(0, total - 1, options.max_batches).round().astype(int)))

    example = windows(int(chosen[0]))
    model = ModelPredictor(trained, example)
    specialized = _load_specialized(baseline_workdirs or {}, trained, presets, example)
    fitted = Baselines(baselines, store, layout, block=T, max_neurons=max_neurons, seed=int(config.seed),
                       options=options, log=log)
    output_dir = Path(out).parent if out is not None else workdir
    submission = (SensoriumSubmission(sensorium_submission, windows, layout)
                  if sensorium_submission is not None else None)
    ablation = InputAblation(presets, layout) if options.ablation else None
    log(f"evaluating {len(presets)} regimes on {len(chosen)} of {total} batches of split {split!r}"
        + (f", {sum(map(len, ablation.inputs.values()))} with shuffled inputs" if ablation and ablation.inputs else ""))
    try:
        scores = _score(presets, windows, chosen, model, specialized, fitted, ceiling, store, split, options,
                        recorders={p: PredictionRecorder() for p in save_predictions}, submission=submission,
                        output_dir=output_dir, log=log, ablation=ablation)
    except BaseException:
        if submission is not None:
            submission.abort()
        raise
    if submission is not None:
        submission.close()

    results = {p: _regime_entry(scores[p]) for p in presets}
    if ablation is not None:
        for p in ablation.inputs:
            results[p]["ablation"] = ablation.entry(p)
    rows = ["model", *specialized, *fitted.names] + (["ceiling"] if ceiling else [])
    table, fractions, columns = paper_table(results, rows)
    result = {
        "workdir": str(workdir), "step": trained.step, "split": split, "store": str(store_path),
        "presets": presets, "presets_skipped": skipped,
        "preset_selection": (f"presets valid for config.model.max_neurons={max_neurons} and num_samples={T} "
                             "(masking.presets_for)" if regime_names(regimes) in (["all"], ["paper"])
                             else "as requested"),
        "evaluation": {"batches": int(len(chosen)), "total_batches": int(total), "batch_size": batch_size,
                       "window_stride": stride, "train_batches": options.train_batches,
                       "cnn_steps": options.cnn_steps if "cnn" in fitted.names else 0,
                       "ablation": options.ablation,
                       "baseline_fit_s": {n: round(t, 1) for n, t in fitted.fit_seconds.items()},
                       "baseline_workdirs": {n: str(m.trained.workdir) for n, (m, _) in specialized.items()},
                       "ceiling": ceiling},
        "regimes": results, "table": table, "fraction_table": fractions, "columns": columns,
    }
    if ablation is not None:
        result["ablation"] = {"metric": ABLATION_METRIC, "min_drop": ABLATION_MIN_DROP, "donors": ABLATION_DONORS,
                              "unused": unused_inputs(results)}
    if submission is not None:
        result["sensorium_submission"] = {"path": str(sensorium_submission), "trials": submission.rows}
    truth = store_path / "ground_truth"
    if all((truth / f"{name}.npz").is_file() for name in layout.names):  # digital mice: what was planted
        result["planted_r2"] = planted_recovery(np.asarray(trained.model.identity.neuron_table[...]), layout, truth)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)  # checked creatable before the work (report.run)
        write_json_atomic(Path(out), result)
        write_text_atomic(Path(out).with_suffix(".md"), markdown(result))
    return result


def _score(presets, windows, chosen, model, specialized, fitted, ceiling, store, split, options, *, recorders,
           submission, output_dir, log, ablation: InputAblation | None = None) -> dict[str, dict[str, dict]]:
    """One pass over the chosen batches: {preset: {predictor: metrics}} for the model, the specialized models, the
    baselines that apply and (with `ceiling`) the true rates; saves the recorders' predictions under output_dir and
    feeds `ablation` the model's predictions with shuffled inputs.

    `model` and the specialized predictors need only `device_batch(host)`, `dispatch(device_batch, preset)` (which
    may start the work asynchronously) and `fetch(result) -> (predictions, masks)` (ModelPredictor's interface)."""
    trial_videos = repeated_trials(store, windows.reader.layout, split)
    trial_videos = trial_videos if any(trial_videos) else None

    def suite(preset):
        return MetricSuite(windows.reader.layout, forecast=preset.startswith("causal_"), trial_videos=trial_videos)

    # A split of several tiers (final_test: the paper's four) also keeps the model's scores per tier.
    tiers = pipeline.tier_names(split)
    tiers = tiers if len(tiers) > 1 else ()
    tier_suites = {(p, tier): suite(p) for p in presets for tier in tiers}
    seen_tiers = set()
    suites = {}
    for p in presets:
        names = ["model", *(n for n, (_, its) in specialized.items() if p in its),
                 *(n for n in fitted.names if fitted.applicable(n, p)), *(["ceiling"] if ceiling else [])]
        suites[p] = {name: suite(p) for name in names}
    chosen = [int(c) for c in chosen]
    ablating = ablation is not None and bool(ablation.inputs)
    # The donors of batch j: batch (j + n // 2) mod n of the chosen ones, read by a second pass in step.
    donors = (iter(pipeline.eval_dataset(windows, num_threads=options.num_threads,
                                         batches=[chosen[(j + len(chosen) // 2) % len(chosen)]
                                                  for j in range(len(chosen))]))
              if ablating else None)
    start = last_log = first_done = time.monotonic()
    for done, host in enumerate(pipeline.eval_dataset(windows, num_threads=options.num_threads, batches=chosen)):
        fitted.start_batch()
        pending = {}  # every prediction starts before any is awaited
        for name, (predictor, its) in [("model", (model, presets)), *specialized.items()]:
            device_batch = predictor.device_batch(host)
            pending.update({(name, p): predictor.dispatch(device_batch, p) for p in its})
        if ablating:
            shuffled, scored = ablation.prepare(host, next(donors), same_batch=len(chosen) == 1)
            for name, batch in shuffled.items():
                device_batch = model.device_batch(batch)
                pending.update({("ablation", name, p): model.dispatch(device_batch, p)
                                for p in ablation.presets_of(name)})
        tier_B = example_tiers(windows.reader.sessions, host) if tiers else None
        for p in presets:
            predictions, masks = model.fetch(pending[("model", p)])
            for tier in tiers:
                of_tier = {**host, "example_mask": np.asarray(host["example_mask"], bool) & (tier_B == tier)}
                if of_tier["example_mask"].any():
                    tier_suites[(p, tier)].update(predictions, of_tier, masks)
                    seen_tiers.add(tier)
            for name, metrics in suites[p].items():
                if name == "model":
                    metrics.update(predictions, host, masks)
                elif name == "ceiling":
                    metrics.update({"rates": host[CEILING_FIELD]}, host, masks)
                elif name in specialized:
                    metrics.update(specialized[name][0].fetch(pending[(name, p)])[0], host, masks)
                else:
                    metrics.update(fitted.predict(name, host, masks, p), host, masks)
            if ablating and p in ablation.inputs:
                ablation.update(p, "intact", predictions, scored, masks)
                for name in ablation.inputs[p]:
                    ablation.update(p, name, model.fetch(pending[("ablation", name, p)])[0], scored, masks)
            if p in recorders:
                recorders[p].update(predictions, host, masks)
            if submission is not None and p == SUBMISSION_PRESET:
                submission.update(predictions, host, masks)
        now = time.monotonic()
        if done == 0:
            first_done = last_log = now
            log(f"  1/{len(chosen)} batches in {now - start:.0f} s (compiling included)")
        elif done + 1 == len(chosen) or now - last_log >= PROGRESS_EVERY_S:
            log(progress_line(done + 1, len(chosen), now - start, now - first_done))
            last_log = now
    for p, recorder in recorders.items():
        recorder.save(output_dir / "predictions" / f"{p}.npz")
    scores = {p: {name: with_gaze(metrics.result()) for name, metrics in by_name.items()}
              for p, by_name in suites.items()}
    for p in presets:  # kept where the split's trials come from more than one tier
        by_tier = {tier: with_gaze(tier_suites[(p, tier)].result()) for tier in tiers if tier in seen_tiers}
        if len(by_tier) > 1:
            scores[p][TIER_SCORES] = by_tier
    return scores


def example_tiers(sessions, batch) -> np.ndarray:
    """(B,) the tier of each example's trial (empty for padding examples)."""
    tiers = np.full(len(batch["example_mask"]), "", dtype=object)
    for b in np.flatnonzero(batch["example_mask"]):
        session = sessions[int(batch["session_index"][b])]
        tiers[b] = str(session.trials["tier"][session.row_of_source(int(batch["trial_index"][b]))])
    return tiers


def progress_line(done: int, total: int, elapsed_s: float, since_first_s: float) -> str:
    """Evaluation progress after `done` of `total` batches; the time left extrapolates the batches after the first,
    whose time includes compiling every regime's prediction."""
    left = since_first_s / max(done - 1, 1) * (total - done)
    return f"  {done}/{total} batches, {elapsed_s:.0f} s elapsed, about {left:.0f} s left"


def _regime_entry(scores: dict[str, dict]) -> dict:
    """One regime of eval.json from {predictor: metrics}: the model, the baselines, and the ceiling with fractions."""
    scores = dict(scores)
    entry = {"model": scores.pop("model")}
    if TIER_SCORES in scores:
        entry["model_by_tier"] = scores.pop(TIER_SCORES)
    truth = scores.pop("ceiling", None)
    entry["baselines"] = scores
    if truth is not None:
        entry["ceiling"] = truth
        entry["fraction_of_ceiling"] = fraction_of(entry["model"], truth)
        entry["baselines_fraction_of_ceiling"] = {n: fraction_of(m, truth) for n, m in scores.items()}
    return entry


def _load_specialized(workdirs: Mapping[str, str], main, presets: Sequence[str], example) -> dict:
    """{name: (ModelPredictor, presets it is evaluated in)} for specialized workdirs: those of its training mix (all
    presets for a multi-task mix). Their sessions, block and neuron budget must match the main model's."""
    out = {}
    for name, path in workdirs.items():
        trained = load_trained(path)
        c, m = trained.config.model, main.config.model
        if trained.layout != main.layout or (c.num_samples, c.max_neurons) != (m.num_samples, m.max_neurons):
            raise UserError(f"--baseline-workdirs {name}={path}: its sessions, num_samples or max_neurons differ from "
                            f"{main.workdir}'s; specialized models must be trained on the same store and size")
        mix = trained.config.masking.get("mix", "paper")
        its = presets if mix == "paper" else [p for p in presets if p in {n.strip() for n in mix.split(",")}]
        out[name] = (ModelPredictor(trained, example), its)
    return out
