"""`omnimouse data import-nwb`: two-photon NWB files (read with pynwb) -> session store at 30 Hz.

Supported layout (one session per file; session name = file stem; animal = subject.subject_id, else the stem):

responses   RoiResponseSeries inside a DfOverF or Fluorescence container of any processing module (usually
            processing['ophys']). Every series of the chosen container is used and their ROIs concatenated in the
            container's order (one series per imaging plane). Auto-detection takes the one DfOverF container, else
            the one Fluorescence container; with several, name one with --series (repeatable; series of several
            containers are concatenated in the order given).
stimulus    the frames presented: an ImageSeries/OpticalSeries with frames stored in the file (frames x H x W, or
            frames x H x W x 3), or an IndexSeries into stimulus_template images (an Images container with
            order_of_images, or an ImageSeries), each with timestamps or starting_time + rate. Auto-detection takes
            the one such series in nwbfile.stimulus, else the one OpticalSeries in acquisition; --stimulus NAME
            (repeatable) merges several series on one time axis (they must share the frame shape). Frames keep their
            stored shape (the two axes after time become H, W); RGB is converted to gray with the ITU-R BT.601 luma
            weights RGB_TO_GRAY (uint8 sources are rounded back to uint8); other shapes are refused.
running     the one TimeSeries named 'running_speed' or 'speed' (RUNNING_NAMES) anywhere, or --running NAME.
pupil       the one TimeSeries in a PupilTracking container (area or diameter -> pupil_dilation), or --pupil NAME;
            position: the one SpatialSeries in an EyeTracking container (columns 0, 1 -> pupil_x, pupil_y), or
            --pupil-position NAME. Absent behavior is written as NaN (the pipeline reads NaN as the channel mean).
NAME matches a series by path components: 'DfOverF', 'ophys/DfOverF/plane0' and 'plane0' all match
processing/ophys/DfOverF/plane0. Signals are converted to their units (data * conversion + offset); the progress line
and the manifest's provenance say which series were used. unit_ids are the ROI ids of the PlaneSegmentation rows
(ids may repeat across planes; a neuron's identity is its column); ROI coordinates are not imported.

Trials, one grid each: t = start + k / 30 for every k with t < stop. Their source is the trials table when present,
else the epochs table, else one trial per contiguous stimulus presentation block (--trials forces one). A trial's tier
is its table's 'tier' or 'split' column (TIER_COLUMNS; spellings mapped as in the experanto importer; empty -> trial
not stored); without such a column (and for blocks) trial i in table order gets 'validation' when i % 10 == 8, 'test'
when i % 10 == 9 and 'train' otherwise. The source index of a trial is its row in the table (or block number).

Resampling: the stimulus frame at grid time t is the last presentation with onset <= t (+ ONSET_TOLERANCE_S); a
presentation lasts until the next onset, or one frame period (median onset interval) when the next is more than
GAP_PERIODS periods away or it is the last; negative IndexSeries indices are blank. Signals are resampled on their own
time axis as in the experanto importer: `nearest` (default; copies source values exactly, ties to the earlier sample)
or `linear`, and a grid time is covered only between two consecutive samples at most GAP_PERIODS periods apart.
Samples not covered by the stimulus or by every response series (or with NaN responses) are dropped, splitting a trial
into its covered runs (later runs get fresh source indices above every table row); uncovered behavior is NaN.

All files are opened and checked (series, shapes, timestamps, tables, frame counts, template indices) before anything
is written; each session is then written atomically. Data are read per trial (only the rows a trial brackets), so RAM
is bounded by the longest trial.

pynwb (with h5py, hdmf and pandas, about a second) is imported inside the functions that read NWB files: `omnimouse
--help` imports this module for the command's choices, and most users never read NWB.
"""
from __future__ import annotations

import contextlib
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omnimouse_jax.data.experanto import GAP_PERIODS, TIER_ALIASES
from omnimouse_jax.data.importing import (INTERPOLATIONS, Pieces, check_sample_times, covered_runs, should_import,
                                         with_pupil_derivative)
from omnimouse_jax.data.schema import BEHAVIOR_CHANNELS
from omnimouse_jax.data.sensorium import SAMPLING_RATE
from omnimouse_jax.data.store import SessionWriter
from omnimouse_jax.errors import UserError

RUNNING_NAMES = ("running_speed", "speed")
TIER_COLUMNS = ("tier", "split")
TRIAL_SOURCES = ("auto", "trials", "epochs", "blocks")
RGB_TO_GRAY = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601 luma
ONSET_TOLERANCE_S = 1e-6  # a frame whose onset is this close after a grid time counts as shown (float rounding)


def _tier_of_row(i: int) -> str:
    return "validation" if i % 10 == 8 else "test" if i % 10 == 9 else "train"


def _matches(path: tuple[str, ...], name: str) -> bool:
    q = tuple(p for p in name.split("/") if p)
    return bool(q) and any(path[i:i + len(q)] == q for i in range(len(path) - len(q) + 1))


def _show(path: tuple[str, ...]) -> str:
    return "/".join(path)


def _walk(nwbfile):
    """(path, series, parent container or None) for every TimeSeries in acquisition, stimulus and processing,
    directly or one container deep (e.g. processing/ophys/DfOverF/plane0)."""
    from pynwb import TimeSeries  # lazy: pynwb is heavy (~1 s)

    def children(prefix, objects):
        for name, obj in objects.items():
            if isinstance(obj, TimeSeries):
                yield (*prefix, name), obj, None
            else:
                for child in getattr(obj, "children", ()):
                    if isinstance(child, TimeSeries):
                        yield (*prefix, name, child.name), child, obj

    yield from children(("acquisition",), nwbfile.acquisition)
    yield from children(("stimulus",), nwbfile.stimulus)
    for module_name, module in nwbfile.processing.items():
        yield from children(("processing", module_name), module.data_interfaces)


class _Signal:
    """One TimeSeries to resample: checked timestamps; data rows read lazily per trial and converted to units."""

    def __init__(self, file: Path, path: tuple[str, ...], series, n_columns: int | None = None):
        self.path, self.series, self.where = path, series, f"{file}: {_show(path)}"
        self.data = series.data
        shape = tuple(getattr(self.data, "shape", np.shape(self.data)))
        if len(shape) not in (1, 2) or shape[0] < 2:
            raise UserError(f"{self.where}: data shape {shape}; expected (time,) or (time, columns) with >= 2 samples")
        width = shape[1] if len(shape) == 2 else 1
        if n_columns is not None and width < n_columns:
            raise UserError(f"{self.where}: data shape {shape}; expected at least {n_columns} columns")
        self.n_columns = n_columns or width
        self.timestamps = _series_times(series, shape[0], self.where)
        self.period = float(np.median(np.diff(self.timestamps)))
        self._mids = (self.timestamps[:-1] + self.timestamps[1:]) / 2
        self._wide = np.diff(self.timestamps) > GAP_PERIODS * self.period  # bracket k spans a gap
        self.conversion = float(getattr(series, "conversion", 1.0) or 1.0)
        self.offset = float(getattr(series, "offset", 0.0) or 0.0)

    def resample(self, t_S: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
        """Values (S, C) float32 at grid times `t_S` (NaN where uncovered) and which samples are covered."""
        tau, last = self.timestamps, len(self.timestamps) - 2
        lo = np.clip(np.searchsorted(tau, t_S, "right") - 1, 0, last)
        covered = (t_S >= tau[0]) & (t_S <= tau[-1]) & ~self._wide[lo]
        if mode == "nearest":
            pick = np.searchsorted(self._mids, t_S, "left")  # mids below t = index of the nearest sample
            r0, r1 = int(pick.min()), int(pick.max()) + 1
            values = self._rows(r0, r1)[pick - r0]
        else:
            r0, r1 = int(lo.min()), int(lo.max()) + 2
            rows = self._rows(r0, r1)
            w = ((t_S - tau[lo]) / (tau[lo + 1] - tau[lo]))[:, None]
            values = rows[lo - r0] + w * (rows[lo + 1 - r0] - rows[lo - r0])
        values = values.astype(np.float32)
        values[~covered] = np.nan
        return values, covered

    def _rows(self, r0: int, r1: int) -> np.ndarray:
        rows = np.asarray(self.data[r0:r1], np.float64).reshape(r1 - r0, -1)[:, :self.n_columns]
        return rows * self.conversion + self.offset


def _series_times(series, n: int, where: str) -> np.ndarray:
    """Checked sample times (n,) of a series: its timestamps, or starting_time + k / rate."""
    if series.timestamps is not None:
        t = np.asarray(series.timestamps[:], np.float64)
        if t.shape != (n,):
            raise UserError(f"{where}: {t.shape[0] if t.ndim else 0} timestamps for {n} samples; expected one "
                            "timestamp per sample (time on the first axis)")
    elif series.rate is not None and series.rate > 0:
        t = float(series.starting_time or 0.0) + np.arange(n) / float(series.rate)
    else:
        raise UserError(f"{where}: neither timestamps nor a positive rate; expected sample times")
    return check_sample_times(t, where)


def _to_gray(frames: np.ndarray) -> np.ndarray:
    """(k, H, W) or (k, H, W, 3) -> (k, H, W); uint8 stays uint8 (rounded), anything else becomes float32."""
    if frames.ndim == 4:
        gray = frames.astype(np.float64) @ RGB_TO_GRAY
        return np.round(gray).astype(np.uint8) if frames.dtype == np.uint8 else gray.astype(np.float32)
    return frames if frames.dtype == np.uint8 else frames.astype(np.float32)


def _frame_shape(shape: tuple[int, ...], where: str) -> tuple[int, int]:
    if len(shape) == 2 or len(shape) == 3 and shape[2] == 3:
        return int(shape[0]), int(shape[1])
    raise UserError(f"{where}: frame shape {shape}; expected (H, W) grayscale or (H, W, 3) RGB")


class _FrameSource:
    """Frames addressed by index: an image stack (frames x H x W [x 3]) or an ordered list of images."""

    def __init__(self, stack=None, images=None, where: str = ""):
        self.stack, self.images = stack, images
        if stack is not None:
            shape = tuple(stack.shape)
            if len(shape) < 3 or shape[0] < 1:
                raise UserError(f"{where}: data shape {shape}; expected frames x H x W (x 3) stored in the file")
            self.n, self.frame_shape = shape[0], _frame_shape(shape[1:], where)
        else:
            shapes = {_frame_shape(tuple(im.data.shape), f"{where}/{im.name}") for im in images}
            if len(shapes) != 1:
                raise UserError(f"{where}: images of shapes {sorted(shapes)}; expected one frame shape")
            self.n, self.frame_shape = len(images), shapes.pop()
        dtypes = [stack.dtype] if stack is not None else [im.data.dtype for im in images]
        self.uint8 = all(np.dtype(d) == np.uint8 for d in dtypes)

    def read(self, indices: np.ndarray) -> np.ndarray:
        """Gray frames (k, H, W) at sorted unique `indices`."""
        if self.stack is not None:
            a, b = int(indices[0]), int(indices[-1]) + 1
            frames = (np.asarray(self.stack[a:b])[indices - a] if b - a <= 2 * len(indices)
                      else np.asarray(self.stack[indices.tolist()]))
            return _to_gray(frames)
        return np.concatenate([_to_gray(np.asarray(self.images[i].data[()])[None]) for i in indices.tolist()])


class _Stimulus:
    """Every presentation of the chosen stimulus series on one time axis: onset, series and frame index."""

    def __init__(self, file: Path, chosen: list[tuple[tuple[str, ...], object]]):
        from pynwb.image import ImageSeries, IndexSeries  # lazy: pynwb is heavy (~1 s)

        self.names = [_show(p) for p, _ in chosen]
        self.sources, onsets, series_of, index = [], [], [], []
        for k, (path, series) in enumerate(chosen):
            where = f"{file}: {_show(path)}"
            if isinstance(series, IndexSeries):
                source = self._templates(series, where)
                idx = np.asarray(series.data[:])
                if idx.ndim != 1 or idx.dtype.kind not in "iu":
                    raise UserError(f"{where}: data {idx.shape} {idx.dtype}; expected 1-d integer frame indices")
                if len(idx) and idx.max() >= source.n:
                    raise UserError(f"{where}: frame index {int(idx.max())} but the indexed images hold {source.n}; "
                                    "expected indices below the number of template images")
            elif isinstance(series, ImageSeries):
                if getattr(series, "external_file", None) is not None:
                    raise UserError(f"{where}: frames in external files {list(series.external_file[:])}; expected "
                                    "frames stored in the NWB file")
                source = _FrameSource(stack=series.data, where=where)
                idx = np.arange(source.n)
            else:
                raise UserError(f"{where}: a {type(series).__name__}; expected an ImageSeries, OpticalSeries or "
                                "IndexSeries")
            if not len(idx):
                raise UserError(f"{where}: no presentations; expected at least one frame shown")
            onsets.append(_series_times(series, len(idx), where))
            self.sources.append(source)
            series_of.append(np.full(len(idx), k))
            index.append(idx.astype(np.int64))
        shapes = {s.frame_shape for s in self.sources}
        if len(shapes) != 1:
            raise UserError(f"{file}: stimulus series {self.names} have frame shapes {sorted(shapes)}; expected one")
        self.frame_shape = shapes.pop()
        order = np.argsort(np.concatenate(onsets), kind="stable")
        self.onsets = np.concatenate(onsets)[order]
        if np.any(np.diff(self.onsets) <= 0):
            raise UserError(f"{file}: stimulus series {self.names} present two frames at the same time; expected "
                            "one frame on screen at a time")
        self.series_of = np.concatenate(series_of)[order]
        self.index = np.concatenate(index)[order]
        self.period = float(np.median(np.diff(self.onsets))) if len(self.onsets) > 1 else 1.0 / SAMPLING_RATE
        following = np.append(self.onsets[1:], np.inf)
        self.joined = following - self.onsets <= GAP_PERIODS * self.period  # shown until the next onset
        self.ends = np.where(self.joined, following, self.onsets + self.period)
        self.uint8 = all(s.uint8 for s in self.sources)

    @staticmethod
    def _templates(series, where: str) -> _FrameSource:
        if series.indexed_images is not None:
            images = series.indexed_images
            order = images.order_of_images
            if order is None:
                if len(images.images) != 1:
                    raise UserError(f"{where}: indexed images {images.name} have no order_of_images; expected the "
                                    "order in which the indices address them")
                return _FrameSource(images=list(images.images.values()), where=where)
            return _FrameSource(images=list(order.data[:]), where=f"{where} -> {images.name}")
        return _FrameSource(stack=series.indexed_timeseries.data, where=f"{where} -> {series.indexed_timeseries.name}")

    def shown(self, t_S: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Presentation on screen at each grid time (-1 if none) and whether a frame is shown."""
        p = np.searchsorted(self.onsets, t_S + ONSET_TOLERANCE_S, "right") - 1
        safe = np.maximum(p, 0)
        shown = (p >= 0) & (t_S < self.ends[safe]) & (self.index[safe] >= 0)
        return np.where(shown, p, -1), shown

    def blocks(self) -> list[tuple[float, float]]:
        """(start, stop) of each run of presentations shown back to back."""
        blocks, start = [], None
        for p in range(len(self.onsets)):
            if self.index[p] < 0:
                start = None
                continue
            if start is None:
                start = self.onsets[p]
            if not self.joined[p] or p + 1 == len(self.onsets) or self.index[p + 1] < 0:
                blocks.append((float(start), float(self.ends[p])))
                start = None
        return blocks

    def frames(self, p_S: np.ndarray) -> np.ndarray:
        """Gray frames (S, H, W) of presentations `p_S`."""
        out = np.empty((len(p_S), *self.frame_shape), np.uint8 if self.uint8 else np.float32)
        for k, source in enumerate(self.sources):
            sel = self.series_of[p_S] == k
            if sel.any():
                need, inverse = np.unique(self.index[p_S[sel]], return_inverse=True)
                out[sel] = source.read(need)[inverse]
        return out


@dataclass(frozen=True)
class _Trial:
    index: int
    start: float
    stop: float
    tier: str | None


def _grid(start: float, stop: float) -> np.ndarray:
    n = int(np.ceil((stop - start) * SAMPLING_RATE - 1e-6))
    return start + np.arange(max(n, 0)) / SAMPLING_RATE


class _Source:
    """One NWB file, opened and checked up front: chosen series, their time axes and shapes, trials."""

    def __init__(self, path: Path, choices: dict, trials: str, stack: contextlib.ExitStack):
        from pynwb import NWBHDF5IO  # lazy: pynwb is heavy (~1 s)

        self.path, self.name = path, path.stem
        try:
            io = stack.enter_context(NWBHDF5IO(str(path), "r"))
            self.nwbfile = io.read()
        except Exception as err:  # h5py, hdmf and pynwb raise many kinds of errors for files that are not NWB
            raise UserError(f"{path}: not a readable NWB file ({type(err).__name__}: {err})") from None
        subject = self.nwbfile.subject
        self.animal = str(subject.subject_id) if subject is not None and subject.subject_id else self.name
        series = list(_walk(self.nwbfile))
        self.responses = [_Signal(path, p, s) for p, s in self._responses(series, choices.get("series"))]
        self.n_neurons = sum(s.n_columns for s in self.responses)
        self.unit_ids = np.concatenate([self._unit_ids(s) for s in self.responses])
        self.stimulus = _Stimulus(path, self._pick_stimulus(series, choices.get("stimulus")))
        self.behavior = {}
        for key, flag, columns, found in (
                ("running_speed", "running", 1, [(p, s) for p, s, _ in series
                                                 if p[0] != "stimulus" and p[-1].lower() in RUNNING_NAMES]),
                ("pupil_dilation", "pupil", 1, self._inside(series, "PupilTracking")),
                ("pupil_position", "pupil_position", 2, self._inside(series, "EyeTracking", "SpatialSeries"))):
            chosen = self._pick_one(series, found, choices.get(flag), f"--{flag.replace('_', '-')}", key)
            if chosen is not None:
                self.behavior[key] = _Signal(path, *chosen, n_columns=columns)
        self.trial_source, self.trials = self._trials(trials)

    def _responses(self, series, names):
        from pynwb.ophys import DfOverF, Fluorescence, RoiResponseSeries  # lazy: pynwb is heavy (~1 s)

        found = [(p, s, c) for p, s, c in series if isinstance(s, RoiResponseSeries)
                 and isinstance(c, (DfOverF, Fluorescence))]
        containers = {}
        for p, s, c in found:
            containers.setdefault(p[:-1], (c, []))[1].append((p, s))
        listing = ", ".join(f"{_show(k)} ({type(c).__name__}: {len(v)} series)" for k, (c, v) in containers.items())
        if names:
            chosen = []
            for name in names:
                hits = [k for k, (_, v) in containers.items() if any(_matches(p, name) for p, _ in v)]
                if len(hits) != 1:
                    raise UserError(f"{self.path}: --series {name!r} matches {'no' if not hits else 'several'} "
                                    f"response containers; found {listing or 'none'}")
                chosen += [(p, s) for p, s in containers[hits[0]][1] if _matches(p, name) and (p, s) not in chosen]
            return chosen
        for kind in (DfOverF, Fluorescence):
            of_kind = [k for k, (c, _) in containers.items() if isinstance(c, kind)]
            if len(of_kind) == 1:
                return containers[of_kind[0]][1]
            if len(of_kind) > 1:
                raise UserError(f"{self.path}: several {kind.__name__} containers ({listing}); choose one with "
                                "--series")
        raise UserError(f"{self.path}: no RoiResponseSeries in a DfOverF or Fluorescence container; expected "
                        "two-photon responses (e.g. processing/ophys/DfOverF)")

    def _unit_ids(self, signal: _Signal) -> np.ndarray:
        rows = np.asarray(signal.series.rois.data[:], np.int64)
        if rows.shape != (signal.n_columns,):
            raise UserError(f"{signal.where}: {len(rows)} rois for {signal.n_columns} data columns; expected one ROI "
                            "per column")
        return np.asarray(signal.series.rois.table.id[:])[rows]

    def _pick_stimulus(self, series, names):
        from pynwb.image import ImageMaskSeries, ImageSeries, IndexSeries, OpticalSeries  # lazy: pynwb is heavy (~1 s)
        from pynwb.ophys import OnePhotonSeries, TwoPhotonSeries  # lazy: pynwb is heavy (~1 s)

        def is_stimulus(s):
            return isinstance(s, IndexSeries) or isinstance(s, ImageSeries) and not isinstance(
                s, (TwoPhotonSeries, OnePhotonSeries, ImageMaskSeries))

        found = [(p, s) for p, s, _ in series if is_stimulus(s)]
        listing = ", ".join(_show(p) for p, _ in found) or "none"
        if names:
            chosen = []
            for name in names:
                hits = [(p, s) for p, s in found if _matches(p, name)]
                if len(hits) != 1:
                    raise UserError(f"{self.path}: --stimulus {name!r} matches {len(hits)} image or index series; "
                                    f"found {listing}")
                chosen += hits
            return chosen
        auto = [(p, s) for p, s in found if p[0] == "stimulus"] or \
               [(p, s) for p, s in found if p[0] == "acquisition" and isinstance(s, OpticalSeries)]
        if len(auto) != 1:
            raise UserError(f"{self.path}: {'several' if auto else 'no'} stimulus series (found {listing}); expected "
                            "one ImageSeries/IndexSeries in stimulus or OpticalSeries in acquisition, or "
                            "--stimulus NAME")
        return auto

    @staticmethod
    def _inside(series, container: str, kind: str = "TimeSeries"):
        from pynwb import TimeSeries  # lazy: pynwb is heavy (~1 s)
        from pynwb.behavior import SpatialSeries  # lazy: pynwb is heavy (~1 s)

        cls = SpatialSeries if kind == "SpatialSeries" else TimeSeries
        return [(p, s) for p, s, c in series if type(c).__name__ == container and isinstance(s, cls)]

    def _pick_one(self, series, found, name, flag: str, what: str):
        """The series named by `name`, else the one auto-detected candidate in `found`, else None (absent)."""
        if name:
            found = [(p, s) for p, s, _ in series if _matches(p, name)]
            if len(found) != 1:
                raise UserError(f"{self.path}: {flag} {name!r} matches {len(found)} series "
                                f"({', '.join(_show(p) for p, _ in found) or 'none'}); expected one")
        if len(found) > 1:
            raise UserError(f"{self.path}: several candidates for {what} ({', '.join(_show(p) for p, _ in found)}); "
                            f"choose one with {flag}")
        return found[0] if found else None

    def _trials(self, source: str) -> tuple[str, list[_Trial]]:
        tables = {"trials": self.nwbfile.trials, "epochs": self.nwbfile.epochs}
        if source == "auto":
            source = next((k for k, v in tables.items() if v is not None and len(v) > 0), "blocks")
        if source == "blocks":
            blocks = self.stimulus.blocks()
            if not blocks:
                raise UserError(f"{self.path}: the stimulus shows no frame; expected presentations to import")
            return "stimulus blocks", [_Trial(i, a, b, _tier_of_row(i)) for i, (a, b) in enumerate(blocks)]
        table = tables[source]
        where = f"{self.path}: {source} table"
        if table is None or len(table) == 0:
            raise UserError(f"{where}: missing or empty; expected rows with start_time and stop_time")
        start = np.asarray(table["start_time"][:], np.float64)
        stop = np.asarray(table["stop_time"][:], np.float64)
        bad = np.flatnonzero(~(np.isfinite(start) & np.isfinite(stop) & (stop > start)))
        if len(bad):
            raise UserError(f"{where}: row {bad[0]} runs from {float(start[bad[0]])!r} to {float(stop[bad[0]])!r}; "
                            "expected finite times with stop_time > start_time")
        column = next((c for c in TIER_COLUMNS if c in table.colnames), None)
        if column is None:
            tiers = [_tier_of_row(i) for i in range(len(start))]
        else:
            tiers = []
            for value in table[column][:]:
                value = (value.decode() if isinstance(value, bytes) else str(value)).strip().lower()
                tiers.append(TIER_ALIASES.get(value, value) or None)
        return f"{source} table" + (f" ('{column}' column)" if column else ""), [
            _Trial(i, float(a), float(b), t) for i, (a, b, t) in enumerate(zip(start, stop, tiers))]

    @property
    def chosen(self) -> dict:
        return {"responses": [_show(s.path) for s in self.responses], "stimulus": self.stimulus.names,
                **{k: _show(s.path) for k, s in self.behavior.items()}}


def _behavior(source: _Source, t_S: np.ndarray, mode: str, uncovered: Counter) -> np.ndarray:
    """(S, C) in BEHAVIOR_CHANNELS order; absent or uncovered channels NaN; the derivative is left to the piece."""
    out = np.full((len(t_S), len(BEHAVIOR_CHANNELS)), np.nan, np.float32)
    columns = {"pupil_dilation": [0], "running_speed": [1], "pupil_position": [2, 3]}
    for key, signal in source.behavior.items():
        values, ok = signal.resample(t_S, mode)
        out[:, columns[key]] = values
        uncovered[key] += int((~ok).sum())
    return out


def import_session(source: _Source, out, interpolation: str = "nearest", replace: bool = False, log=print) -> bool:
    """Imports one checked NWB source into store `out`; False if already there and `replace` is off."""
    if not should_import(out, source.name, interpolation, replace, log):
        return False
    t0 = time.perf_counter()
    dropped, uncovered, splits = Counter(), Counter(), {}
    provenance = {
        "source": str(source.path), "format": "nwb", "interpolation": interpolation, "chosen": source.chosen,
        "trials_from": source.trial_source, "gap_periods": GAP_PERIODS, "identifier": source.nwbfile.identifier,
        "session_start_time": str(source.nwbfile.session_start_time),
        "response_columns": {_show(s.path): s.n_columns for s in source.responses},
    }
    with SessionWriter(out, source.name, animal=source.animal, n_neurons=source.n_neurons,
                       frame_shape=source.stimulus.frame_shape, behavior_channels=list(BEHAVIOR_CHANNELS),
                       sampling_rate=SAMPLING_RATE, unit_ids=source.unit_ids, provenance=provenance,
                       replace=replace) as writer:
        pieces = Pieces(writer, next_index=max(t.index for t in source.trials) + 1, origin="trial")
        for trial in source.trials:
            if trial.tier is None:
                dropped["no tier"] += 1
                continue
            t_S = _grid(trial.start, trial.stop)
            if not len(t_S):
                dropped["shorter than a sample"] += 1
                continue
            p_S, ok = source.stimulus.shown(t_S)
            uncovered["stimulus"] += int((~ok).sum())
            parts = []
            for signal in source.responses:
                values, covered = signal.resample(t_S, interpolation)
                covered &= ~np.isnan(values).any(axis=1)
                uncovered[_show(signal.path)] += int((~covered).sum())
                ok &= covered
                parts.append(values)
            responses = np.concatenate(parts, axis=1)
            runs = covered_runs(ok)
            if runs != [(0, len(t_S))]:
                splits[str(trial.index)] = {"samples": len(t_S), "kept": [list(r) for r in runs]}
            if not runs:
                dropped["not covered"] += 1
                continue
            behavior = _behavior(source, t_S, interpolation, uncovered)
            for piece, (a, b) in enumerate(runs):
                behavior_piece = with_pupil_derivative(behavior[a:b])
                pieces.add(trial.index, piece, a, trial.tier, responses=responses[a:b],
                           video=source.stimulus.frames(p_S[a:b]), behavior=behavior_piece,
                           pupil_center=behavior_piece[:, 2:4])
        tiers = pieces.tiers
        if not tiers:
            raise UserError(f"{source.path}: no trial has a sample covered by the stimulus and every response series; "
                            "nothing to import")
        writer.provenance.update({"dropped_trials": dict(dropped), "uncovered_samples": dict(uncovered),
                                  "split_trials": splits, "extra_pieces": pieces.extra})
    seconds = time.perf_counter() - t0
    n_bytes = source.path.stat().st_size
    chosen = "; ".join(f"{k} {', '.join(v) if isinstance(v, list) else v}" for k, v in source.chosen.items())
    absent = [k for k in ("running_speed", "pupil_dilation", "pupil_position") if k not in source.behavior]
    log(f"{source.name}: {sum(tiers.values())} trials ({', '.join(f'{k} {v}' for k, v in sorted(tiers.items()))}) "
        f"from the {source.trial_source}, {source.n_neurons} neurons, {interpolation} resampling; used {chosen}"
        f"{'; absent (NaN): ' + ', '.join(absent) if absent else ''}; trials dropped: "
        f"{', '.join(f'{v} {k}' for k, v in sorted(dropped.items())) or 'none'}; {len(splits)} trials split or "
        f"trimmed; {n_bytes / 1e6:.1f} MB in {seconds:.1f} s ({n_bytes / 1e6 / max(seconds, 1e-9):.1f} MB/s)")
    return True


def find_files(paths) -> list[Path]:
    """NWB files named by FILE arguments: a file, or a folder whose *.nwb files are taken in name order."""
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(path.glob("*.nwb"))
            if not found:
                raise UserError(f"{path}: no *.nwb file in this folder; expected NWB files")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"{path}: not found; expected an NWB file or a folder of them")
    names = Counter(f.stem for f in files)
    if any(n > 1 for n in names.values()):
        raise UserError(f"session names (file stems) given twice: {sorted(k for k, n in names.items() if n > 1)}")
    return files


def import_nwb(paths, out, *, series=None, stimulus=None, running=None, pupil=None, pupil_position=None,
               trials: str = "auto", interpolation: str = "nearest", replace: bool = False, log=print) -> list[str]:
    """Imports every NWB file named by `paths` into the store `out`; returns the session names written this run.

    `series`/`stimulus` (lists) and `running`/`pupil`/`pupil_position` name series where auto-detection is ambiguous
    (see the module docstring). All files are checked before the first is written, so bad input anywhere leaves the
    store untouched."""
    if trials not in TRIAL_SOURCES:
        raise UserError(f"trials {trials!r}; expected one of {TRIAL_SOURCES}")
    if interpolation not in INTERPOLATIONS:
        raise UserError(f"interpolation {interpolation!r}; expected one of {INTERPOLATIONS}")
    choices = {"series": series, "stimulus": stimulus, "running": running, "pupil": pupil,
               "pupil_position": pupil_position}
    with contextlib.ExitStack() as stack:
        sources = [_Source(f, choices, trials, stack) for f in find_files(paths)]
        return [s.name for s in sources
                if import_session(s, out, interpolation=interpolation, replace=replace, log=log)]
