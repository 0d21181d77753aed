"""`omnimouse data import-experanto`: OmniMouse (experanto per-device) session folders -> session store at 30 Hz.

A source session folder holds one folder per device::

    screen/       meta.yml, timestamps.npy (one per frame), meta/<k>.yml (one per clip: modality, first_frame_idx,
                  num_frames, image_size, tier, valid_trial, stimulus info), data/<k>.npy (frames x H x W, or H x W)
    responses/    meta.yml (sampling_rate, n_signals, n_timestamps, dtype, phase_shift_per_signal, ...),
    eye_tracker/  data.mem (raw float memmap, samples x signals) or data.npy, timestamps.npy, meta/means.npy,
    treadmill/    meta/stds.npy; responses also meta/phase_shifts.npy (seconds) when phase_shift_per_signal is true

The 30 Hz grid is anchored at the screen: every presented frame is one sample at its own timestamp, so a 30 Hz screen
(with its jitter) defines the grid exactly. A frame shown for longer (a still image, a dropped frame) is held for
round(duration * 30) samples spaced 1/30 s apart; the last frame of a video clip lasts one frame period.

Trials (continuous, the default): the paper's loader (`include_blanks: true` for training) lets a training chunk
start at any frame of a train clip or a blank and span the boundaries between them. So each run of back-to-back train
clips and blanks (shown as their `interleave_value`, gray 128 if absent), a run of blanks alone included, is stored as
one train trial, every frame held until the next so the run has no holes. Every other video or image clip with a tier
becomes one trial of its tier. A trial longer than MAX_RUN_SECONDS is cut into equal trials (each cut loses the 59
windows across it, 0.7% of a 300-s run's). With `per_clip` (the `--per-clip` switch, the behaviour before
2026-12-07) every video or image clip is a trial of its own and blanks are not stored, so a clip shorter than a
training window (image sessions, 1-s clips) never trains. Invalid clips, clips without a tier and clips marked
`valid_trial: false` are never stored and end a run. The provenance records how many train samples lie in some
WINDOW_SAMPLES-sample window (the paper's 2-s block) either way.

Every device is resampled onto the grid on its own time axis: signal n's sample k was taken at
timestamps[k] + phase_shifts[n], so signal n at grid time t is read at t - phase_shifts[n]. `nearest` takes the sample
closest in time (ties to the earlier one) and copies source values exactly; it is the default because it matches the
paper's experanto loader (`nearest_neighbor`) and invents no values between sparse deconvolved events. `linear`
interpolates between the two bracketing samples. A grid sample is covered by a device when, for every signal used,
it lies between two consecutive device samples at most GAP_PERIODS device periods apart (period: the median sampling
interval). Responses that read NaN count as not covered; behavior NaN (blinks) is kept, and the pipeline reads it as
the channel mean. Uncovered samples are dropped and a clip with uncovered samples inside is split into one trial per
covered run, so no trial spans missing data; the first run keeps the clip number as its source index, later runs get
fresh indices above every clip number. Provenance records each split and drop; the progress line summarizes them.

Behavior channels match the Sensorium importer: pupil_dilation, running_speed, pupil_x, pupil_y and the per-trial
derivative of pupil dilation. Eye-tracker columns are taken by name when its meta.yml lists `signal_names`,
otherwise in the order EYE_TRACKER_COLUMNS; running speed is the treadmill's first column (or `running_speed` by name).
Clip ids: a clip's video_id hashes its stimulus identifier (the first of STIMULUS_ID_KEYS in its meta), so repeats
share it; without one the store hashes the frames. Memmaps are read in row blocks, one grid chunk at a time, so RAM
is bounded by the longest clip, never by the session.
"""
from __future__ import annotations

import hashlib
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from omnimouse_jax.data.importing import (Pieces, check_sample_times, covered_runs, should_import,
                                         with_pupil_derivative)
from omnimouse_jax.data.schema import BEHAVIOR_CHANNELS, WINDOW_SAMPLES
from omnimouse_jax.data.sensorium import SAMPLING_RATE
from omnimouse_jax.data.store import SessionWriter
from omnimouse_jax.errors import UserError

SEQUENCE_DEVICES = ("responses", "eye_tracker", "treadmill")
DEVICES = ("screen", *SEQUENCE_DEVICES)
GAP_PERIODS = 1.5  # consecutive device samples further apart than this many periods bound a gap
EYE_TRACKER_COLUMNS = ("pupil_dilation", "pupil_x", "pupil_y")
STIMULUS_ID_KEYS = ("condition_hash", "stimulus_id", "clip_id")
STORED_MODALITIES = ("video", "image")
BLANK_GRAY = 128        # a blank's screen value when its meta has no interleave_value
MAX_RUN_SECONDS = 300.0  # trials are at most this long (bounds the import's RAM on long runs)
# Tier spellings seen in exports -> the store's tier names (Sensorium's, which the pipeline's splits use).
TIER_ALIASES = {"val": "validation", "valid": "validation", "oracle_test": "oracle"}
_QUERY_ELEMENTS = 1 << 21  # grid samples x signals resampled at once (~16 MB per float64 temporary)


def _load_yaml(path: Path) -> dict:
    try:
        with open(path) as f:
            obj = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except FileNotFoundError:
        raise UserError(f"{path}: missing") from None
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path}: expected a YAML mapping")
    return obj


def _load_npy(path: Path, what: str) -> np.ndarray:
    if not path.is_file():
        raise UserError(f"{path}: missing; expected {what}")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as err:  # numpy raises ValueError, EOFError or OSError for bad files
        raise UserError(f"{path}: not a readable .npy file ({type(err).__name__}: {err}); expected {what}") from None


def _timestamps(path: Path, n: int | None = None) -> np.ndarray:
    t = np.asarray(_load_npy(path, "a 1-d array of times in seconds"), np.float64)
    if t.ndim != 1 or len(t) < 2 or (n is not None and len(t) != n):
        want = f"{n} timestamps (n_timestamps in meta.yml)" if n is not None else "at least 2 timestamps"
        raise UserError(f"{path}: shape {t.shape}; expected a 1-d array of {want}")
    return check_sample_times(t, str(path))


def _meta_key(meta: dict, key: str, path: Path, kind, default=None):
    value = meta.get(key, default)
    if value is None or isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        raise UserError(f"{path}: key {key!r} is {value!r}; expected {getattr(kind, '__name__', kind)}")
    return value


class _Sequence:
    """One sequence device: timestamps, data (memory-mapped), per-signal phase shifts and column names."""

    def __init__(self, folder: Path):
        self.folder = folder
        meta_path = folder / "meta.yml"
        meta = _load_yaml(meta_path)
        n_signals = _meta_key(meta, "n_signals", meta_path, int)
        n_timestamps = _meta_key(meta, "n_timestamps", meta_path, int)
        if n_signals < 1 or n_timestamps < 2:
            raise UserError(f"{meta_path}: n_signals {n_signals}, n_timestamps {n_timestamps}; expected >= 1 and >= 2")
        self.timestamps = _timestamps(folder / "timestamps.npy", n_timestamps)
        self.period = float(np.median(np.diff(self.timestamps)))
        self._mids = (self.timestamps[:-1] + self.timestamps[1:]) / 2
        # _gaps_before[k]: how many of the brackets [t_j, t_j+1], j < k, span a gap.
        self._gaps_before = np.concatenate([[0], np.cumsum(np.diff(self.timestamps) > GAP_PERIODS * self.period)])
        self.data = self._open_data(meta, meta_path, n_timestamps, n_signals)
        self.phase_shifts = np.zeros(n_signals)
        if _meta_key(meta, "phase_shift_per_signal", meta_path, bool, default=False):
            shifts = np.asarray(_load_npy(folder / "meta" / "phase_shifts.npy", f"{n_signals} phase shifts in seconds"),
                                np.float64).reshape(-1)
            if shifts.shape != (n_signals,) or not np.isfinite(shifts).all():
                raise UserError(f"{folder / 'meta' / 'phase_shifts.npy'}: shape {shifts.shape}; expected {n_signals} "
                                "finite phase shifts in seconds (meta.yml n_signals)")
            self.phase_shifts = shifts
        names = meta.get("signal_names")
        if names is not None and (not isinstance(names, list) or len(names) != n_signals):
            raise UserError(f"{meta_path}: signal_names must be a list of {n_signals} names (n_signals)")
        self.signal_names = [str(s) for s in names] if names is not None else None
        self.meta = {k: meta[k] for k in ("sampling_rate", "start_time", "end_time", "phase_shift_per_signal")
                     if k in meta and isinstance(meta[k], (int, float, bool))}

    def _open_data(self, meta: dict, meta_path: Path, n_timestamps: int, n_signals: int) -> np.ndarray:
        mem, npy = self.folder / "data.mem", self.folder / "data.npy"
        expected = (n_timestamps, n_signals)
        if mem.is_file():
            try:
                dtype = np.dtype(_meta_key(meta, "dtype", meta_path, str))
            except TypeError:
                raise UserError(f"{meta_path}: dtype {meta.get('dtype')!r}; expected a numpy dtype name") from None
            if dtype.kind != "f":
                raise UserError(f"{meta_path}: dtype {dtype}; expected a float dtype for data.mem")
            want = n_timestamps * n_signals * dtype.itemsize
            size = mem.stat().st_size
            if size != want:
                raise UserError(f"{mem}: {'shorter' if size < want else 'longer'} than its meta.yml says ({size} bytes; "
                                f"expected {n_timestamps} x {n_signals} {dtype} = {want} bytes)")
            return np.memmap(mem, dtype=dtype, mode="r", shape=expected)
        if npy.is_file():
            data = _load_npy(npy, f"a {expected} float array")
            if data.shape != expected or data.dtype.kind != "f":
                raise UserError(f"{npy}: shape {data.shape} {data.dtype}; meta.yml says {expected} float")
            return data
        raise UserError(f"{self.folder}: missing data.mem or data.npy; expected the device's samples x signals array")

    def column(self, name: str, default: int) -> int:
        """Index of the signal called `name` (by signal_names), else `default`."""
        if self.signal_names is None:
            if default >= self.data.shape[1]:
                raise UserError(f"{self.folder / 'meta.yml'}: {self.data.shape[1]} signals; expected at least "
                                f"{default + 1} (column {default} is {name}) or signal_names naming {name!r}")
            return default
        if name not in self.signal_names:
            raise UserError(f"{self.folder / 'meta.yml'}: signal_names {self.signal_names} lack {name!r}")
        return self.signal_names.index(name)

    def resample(self, t_S: np.ndarray, columns: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
        """Values (S, C) float32 of `columns` at grid times `t_S`, and which grid samples all columns cover.

        Uncovered entries hold NaN. Works through the grid in chunks, reading only the rows each chunk brackets."""
        columns = np.asarray(columns)
        out_SxC = np.full((len(t_S), len(columns)), np.nan, np.float32)
        covered_S = np.zeros(len(t_S), bool)
        step = max(1, _QUERY_ELEMENTS // len(columns))
        for s in range(0, len(t_S), step):
            out_SxC[s:s + step], covered_S[s:s + step] = self._resample_chunk(t_S[s:s + step], columns, mode)
        return out_SxC, covered_S

    def _resample_chunk(self, t_S, columns, mode):
        tau, shifts = self.timestamps, self.phase_shifts[columns]
        q_SxC = t_S[:, None] - shifts[None, :]  # each signal on its own time axis
        q_min, q_max = t_S - shifts.max(), t_S - shifts.min()
        # A row is covered when its extreme queries lie within the recording and no bracket between them is a gap.
        # This equals "every signal's bracket is gap-free" whenever the shifts span at most GAP_PERIODS periods (a
        # wider gap cannot fit between two signals' queries); beyond that it is conservative.
        last = len(tau) - 2
        lo_min = np.clip(np.searchsorted(tau, q_min, "right") - 1, 0, last)
        lo_max = np.clip(np.searchsorted(tau, q_max, "right") - 1, 0, last)
        covered_S = ((q_min >= tau[0]) & (q_max <= tau[-1])
                     & (self._gaps_before[lo_max + 1] == self._gaps_before[lo_min]))
        if mode == "nearest":
            pick = _count_below(self._mids, q_SxC, q_min, q_max, "left")  # mids below q = index of nearest sample
            r0, r1 = int(pick.min()), int(pick.max()) + 1
        else:
            lo = np.clip(_count_below(tau, q_SxC, q_min, q_max, "right") - 1, 0, last)
            r0, r1 = int(lo.min()), int(lo.max()) + 2
        rows = np.asarray(self.data[r0:r1])
        if len(columns) != rows.shape[1] or np.any(columns != np.arange(rows.shape[1])):
            rows = rows[:, columns]
        if mode == "nearest":
            values = np.take_along_axis(rows, pick - r0, axis=0).astype(np.float32)
        else:
            x_lo = np.take_along_axis(rows, lo - r0, axis=0).astype(np.float64)
            x_hi = np.take_along_axis(rows, lo + 1 - r0, axis=0).astype(np.float64)
            t_lo = tau[lo]
            w = (q_SxC - t_lo) / (tau[lo + 1] - t_lo)
            values = (x_lo + w * (x_hi - x_lo)).astype(np.float32)
        values[~covered_S] = np.nan
        return values, covered_S


def _count_below(edges: np.ndarray, q_SxC: np.ndarray, q_min_S: np.ndarray, q_max_S: np.ndarray, side: str):
    """For every query, how many sorted `edges` lie below it (side 'left': < q, 'right': <= q).

    Rows share edges and differ by small per-signal offsets, so instead of a binary search per element this searches
    each row's extreme queries and then compares against the few edges between them (exact)."""
    base_S = np.searchsorted(edges, q_min_S, side)
    between = int((np.searchsorted(edges, q_max_S, side) - base_S).max(initial=0))
    padded = np.append(edges, np.inf)  # past the last edge nothing is below any query
    count = np.broadcast_to(base_S[:, None], q_SxC.shape).copy()
    for j in range(between):
        edge_S = padded[np.minimum(base_S + j, len(edges))][:, None]
        count += (edge_S < q_SxC) if side == "left" else (edge_S <= q_SxC)
    return count


@dataclass(frozen=True)
class _Clip:
    """One presented clip of the screen device."""

    key: int
    meta_path: Path
    modality: str
    first: int       # index of its first frame in screen/timestamps.npy
    n_frames: int
    tier: str | None
    valid: bool
    stimulus_id: str | None
    image_size: tuple[int, int] | None
    fill: int = BLANK_GRAY  # a blank's screen value (interleave_value)

    @property
    def data_path(self) -> Path:
        return self.meta_path.parent.parent / "data" / f"{self.meta_path.stem}.npy"


def _read_clip(path: Path, n_frames_total: int) -> _Clip:
    meta = _load_yaml(path)
    modality = str(meta.get("modality", "")).lower()
    if not modality:
        raise UserError(f"{path}: no 'modality'; expected video, image, blank or invalid")
    first = _meta_key(meta, "first_frame_idx", path, int)
    n_frames = _meta_key(meta, "num_frames", path, int) if modality == "video" else 1
    if first < 0 or n_frames < 1 or first + n_frames > n_frames_total:
        raise UserError(f"{path}: frames [{first}, {first + n_frames}) outside screen/timestamps.npy's "
                        f"{n_frames_total} frames")
    tier = meta.get("tier")
    tier = None if tier is None else TIER_ALIASES.get(str(tier).strip().lower(), str(tier).strip().lower())
    size = meta.get("image_size")
    if size is not None and (not isinstance(size, list) or len(size) != 2):
        raise UserError(f"{path}: image_size {size!r}; expected [height, width]")
    stimulus = next((str(meta[k]) for k in STIMULUS_ID_KEYS if meta.get(k) is not None), None)
    fill = meta.get("interleave_value", BLANK_GRAY)
    if modality == "blank" and (not isinstance(fill, (int, float)) or not 0 <= fill <= 255):
        raise UserError(f"{path}: interleave_value {fill!r}; expected a gray level in 0..255")
    return _Clip(int(path.stem), path, modality, first, n_frames, tier or None, meta.get("valid_trial", True) is not False,
                 stimulus, tuple(int(s) for s in size) if size is not None else None, int(round(fill)))


class _Source:
    """One experanto session folder, checked up front: devices, metadata, timestamps, memmap sizes, clip files."""

    def __init__(self, folder: Path):
        self.folder, self.name = folder, folder.name
        for device in DEVICES:
            if not (folder / device).is_dir():
                raise UserError(f"{folder / device}: missing device folder; expected {', '.join(DEVICES)}")
        screen = folder / "screen"
        screen_meta = _load_yaml(screen / "meta.yml")
        self.frame_times = _timestamps(screen / "timestamps.npy")
        rate = screen_meta.get("frame_rate")
        self.frame_period = (1.0 / float(rate) if isinstance(rate, (int, float)) and rate > 0
                             else float(np.median(np.diff(self.frame_times))))
        if self.frame_period < 0.75 / SAMPLING_RATE:
            raise UserError(f"{screen}: frames every {self.frame_period * 1e3:.1f} ms; expected a screen of at most "
                            f"{SAMPLING_RATE:g} Hz (each frame is one sample of the grid)")
        self.devices = {d: _Sequence(folder / d) for d in SEQUENCE_DEVICES}
        eye, treadmill = self.devices["eye_tracker"], self.devices["treadmill"]
        self.eye_columns = np.array([eye.column(name, i) for i, name in enumerate(EYE_TRACKER_COLUMNS)])
        self.speed_column = np.array([treadmill.column("running_speed", 0)])
        self.unit_ids, self.coordinates = self._neurons()
        self.clips = self._read_clips(screen)
        self.frame_shape = self._check_clip_files()

    def _neurons(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Optional responses/meta/unit_ids.npy (N,) and cell_motor_coordinates.npy (N, D)."""
        meta, n = self.devices["responses"].folder / "meta", self.devices["responses"].data.shape[1]
        found = []
        for file, ndim, what in (("unit_ids.npy", 1, "(N,) unit ids"), ("cell_motor_coordinates.npy", 2, "(N, D)")):
            x = np.asarray(_load_npy(meta / file, what)) if (meta / file).is_file() else None
            if x is not None and (x.ndim != ndim or len(x) != n):
                raise UserError(f"{meta / file}: shape {x.shape}; expected {what} with N = {n} neurons "
                                "(responses/meta.yml n_signals)")
            found.append(x)
        return found[0], found[1]

    def _read_clips(self, screen: Path) -> list[_Clip]:
        paths = [p for p in (screen / "meta").glob("*.yml") if re.fullmatch(r"\d+", p.stem)] \
            if (screen / "meta").is_dir() else []
        if not paths:
            raise UserError(f"{screen / 'meta'}: no clip metadata; expected one <k>.yml per presented clip")
        clips = sorted((_read_clip(p, len(self.frame_times)) for p in paths), key=lambda c: c.first)
        for a, b in zip(clips, clips[1:]):
            if b.first < a.first + a.n_frames:
                raise UserError(f"{b.meta_path}: first_frame_idx {b.first} overlaps {a.meta_path.name} "
                                f"(frames {a.first}..{a.first + a.n_frames - 1})")
        return clips

    def stored(self, clip: _Clip) -> bool:
        return clip.modality in STORED_MODALITIES and clip.valid and clip.tier is not None

    def _check_clip_files(self) -> tuple[int, int]:
        shape = None
        for clip in filter(self.stored, self.clips):
            x = _load_npy(clip.data_path, f"the frames of clip {clip.meta_path.name}")
            frames = (1, *x.shape) if x.ndim == 2 and clip.modality == "image" else x.shape
            size = clip.image_size or shape or tuple(frames[1:])
            if frames != (clip.n_frames, *size) or (shape is not None and size != shape):
                raise UserError(f"{clip.data_path}: shape {x.shape}; expected {(clip.n_frames, *(shape or size))} "
                                f"(frames x height x width as in {clip.meta_path.name} and the session's other clips)")
            shape = size
        if shape is None:
            raise UserError(f"{self.folder / 'screen' / 'meta'}: no video or image clip with a tier; nothing to import")
        return shape

    def in_run(self, clip: _Clip) -> bool:
        """Whether a clip belongs to a continuous training run: a valid train clip or a blank."""
        return clip.valid and (clip.modality == "blank" or (self.stored(clip) and clip.tier == "train"))

    def units(self, continuous: bool) -> list[list[_Clip]]:
        """The stored clips in presentation order, grouped by the trials they make: with `continuous`, each maximal
        run of back-to-back (no frame between them) train clips and blanks is one unit; every other stored clip is
        a unit of its own."""
        units, run = [], []
        for clip in self.clips:
            if continuous and self.in_run(clip):
                if run and clip.first != run[-1].first + run[-1].n_frames:
                    units.append(run)
                    run = []
                run.append(clip)
                continue
            if run:
                units.append(run)
                run = []
            if self.stored(clip):
                units.append([clip])
        return units + ([run] if run else [])

    def clip_grid(self, clip: _Clip, hold: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Grid times (S,) of a clip and the clip frame shown at each: frame timestamps, long frames held at 1/30 s.
        `hold`: the last frame too stays until the next frame (inside a continuous run)."""
        start = self.frame_times[clip.first:clip.first + clip.n_frames]
        nxt = clip.first + clip.n_frames
        if (clip.modality == "video" and not hold) or nxt >= len(self.frame_times):
            end = start[-1] + self.frame_period
        else:  # a still image stays on screen until the next frame
            end = self.frame_times[nxt]
        duration = np.diff(np.append(start, end))
        repeats = np.maximum(1, np.round(duration * SAMPLING_RATE).astype(np.int64))
        frame_S = np.repeat(np.arange(clip.n_frames), repeats)
        within_S = np.arange(len(frame_S)) - np.repeat(np.cumsum(repeats) - repeats, repeats)
        return start[frame_S] + within_S / SAMPLING_RATE, frame_S

    @property
    def source_bytes(self) -> int:
        total = sum(clip.data_path.stat().st_size for clip in filter(self.stored, self.clips))
        return total + sum(d.data.nbytes for d in self.devices.values())


def find_sources(paths) -> list[_Source]:
    """Sessions named by SRC arguments: a session folder (holding screen/) or a folder holding several."""
    sources = []
    for path in map(Path, paths):
        if not path.is_dir():
            raise UserError(f"{path}: not a directory; expected an experanto session folder or a folder holding several")
        if (path / "screen").is_dir() or any((path / d).is_dir() for d in SEQUENCE_DEVICES):
            sources.append(_Source(path))
            continue
        children = [c for c in sorted(path.iterdir()) if c.is_dir() and any((c / d).is_dir() for d in DEVICES)]
        if not children:
            raise UserError(f"{path}: no experanto session found; expected a folder with {', '.join(DEVICES)}/ "
                            "or a folder holding several")
        sources.extend(_Source(c) for c in children)
    return sources


def _video_id(stimulus_id: str) -> int:
    digest = hashlib.blake2b(stimulus_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def _unit_grid(source: _Source, unit: list[_Clip]):
    """A unit's grid times (S,), for each sample the index of its clip in `unit` and that clip's frame, and each
    clip's first sample."""
    times, clip_of, frame_of, firsts = [], [], [], []
    for i, clip in enumerate(unit):
        t_S, frame_S = source.clip_grid(clip, hold=i < len(unit) - 1)
        firsts.append(sum(map(len, times)))
        times.append(t_S)
        frame_of.append(frame_S)
        clip_of.append(np.full(len(t_S), i))
    return np.concatenate(times), np.concatenate(clip_of), np.concatenate(frame_of), firsts


def _unit_frames(source: _Source, unit: list[_Clip], clip_S: np.ndarray, frame_S: np.ndarray) -> np.ndarray:
    """(S, H, W) screen frames of samples (clip_S, frame_S) of `unit`; a blank shows its gray level."""
    shown = {i: np.load(unit[i].data_path, mmap_mode="r", allow_pickle=False).reshape(
        unit[i].n_frames, *source.frame_shape) for i in np.unique(clip_S).tolist() if unit[i].modality != "blank"}
    video = np.empty((len(clip_S), *source.frame_shape), np.result_type(np.uint8, *(f.dtype for f in shown.values())))
    for i in np.unique(clip_S).tolist():
        at = clip_S == i
        video[at] = shown[i][frame_S[at]] if i in shown else unit[i].fill
    return video


def _window_samples(ok_S: np.ndarray) -> int:
    """Samples in covered runs long enough for a WINDOW_SAMPLES window."""
    return sum(b - a for a, b in covered_runs(ok_S) if b - a >= WINDOW_SAMPLES)


def import_session(source: _Source, out, interpolation: str = "nearest", replace: bool = False,
                   per_clip: bool = False, log=print) -> bool:
    """Imports one checked source session into store `out`; False if already there and `replace` is off. Continuous
    runs of train clips and blanks unless `per_clip` (module docstring)."""
    if not should_import(out, source.name, interpolation, replace, log):
        return False
    t0 = time.perf_counter()
    resp, eye, tread = (source.devices[d] for d in SEQUENCE_DEVICES)
    all_neurons = np.arange(resp.data.shape[1])
    units = source.units(continuous=not per_clip)
    in_units = {clip.key for unit in units for clip in unit}
    dropped = Counter(clip.modality if clip.modality not in STORED_MODALITIES
                      else "not valid_trial" if not clip.valid else "no tier"
                      for clip in source.clips if clip.key not in in_units)
    uncovered = Counter()         # grid samples a device does not cover (in stored units)
    splits, runs_of_clips, cuts = {}, {}, {}
    usable = {"train_samples": 0, "per_clip": 0, "continuous": 0}  # train samples, and those in some window
    max_samples = int(MAX_RUN_SECONDS * SAMPLING_RATE)
    provenance = {
        "source": str(source.folder), "format": "experanto", "interpolation": interpolation,
        "trials": "one per clip" if per_clip else "continuous runs of train clips and blanks; one per other clip",
        "grid": "screen frame timestamps; frames shown longer held every 1/30 s",
        "gap_periods": GAP_PERIODS, "eye_tracker_columns": source.eye_columns.tolist(),
        "running_speed_column": int(source.speed_column[0]),
        "devices": {d: {**dev.meta, "n_signals": int(dev.data.shape[1]), "n_timestamps": len(dev.timestamps),
                        "median_period_s": dev.period} for d, dev in source.devices.items()},
    }
    with SessionWriter(out, source.name, animal=source.name.split("-")[0], n_neurons=len(all_neurons),
                       frame_shape=source.frame_shape, behavior_channels=list(BEHAVIOR_CHANNELS),
                       sampling_rate=SAMPLING_RATE, unit_ids=source.unit_ids, coordinates=source.coordinates,
                       provenance=provenance, replace=replace) as writer:
        pieces = Pieces(writer, next_index=max(c.key for c in source.clips) + 1, origin="clip")
        for unit in units:
            key, tier = unit[0].key, "train" if source.in_run(unit[0]) else unit[0].tier
            stimulus = unit[0].stimulus_id if len(unit) == 1 else None
            video_id = None if stimulus is None else _video_id(stimulus)
            t_S, clip_S, frame_S, firsts = _unit_grid(source, unit)
            if len(unit) > 1:
                runs_of_clips[str(key)] = [clip.key for clip in unit]
            bounds = np.linspace(0, len(t_S), -(-len(t_S) // max_samples) + 1).round().astype(int).tolist()
            if len(bounds) > 2:
                cuts[str(key)] = bounds[1:-1]
            ok_S, piece = np.zeros(len(t_S), bool), 0
            for lo, hi in zip(bounds, bounds[1:]):
                responses, ok_resp = resp.resample(t_S[lo:hi], all_neurons, interpolation)
                eye_SxC, ok_eye = eye.resample(t_S[lo:hi], source.eye_columns, interpolation)
                speed_Sx1, ok_tread = tread.resample(t_S[lo:hi], source.speed_column, interpolation)
                ok_resp &= ~np.isnan(responses).any(axis=1)
                for name, ok in (("responses", ok_resp), ("eye_tracker", ok_eye), ("treadmill", ok_tread)):
                    uncovered[name] += int((~ok).sum())
                ok_S[lo:hi] = ok_resp & ok_eye & ok_tread
                for a, b in covered_runs(ok_S[lo:hi]):
                    behavior = np.empty((b - a, len(BEHAVIOR_CHANNELS)), np.float32)
                    behavior[:, 0] = eye_SxC[a:b, 0]
                    behavior[:, 1] = speed_Sx1[a:b, 0]
                    behavior[:, 2:4] = eye_SxC[a:b, 1:3]
                    behavior = with_pupil_derivative(behavior)
                    pieces.add(key, piece, lo + a, tier, responses=responses[a:b],
                               video=_unit_frames(source, unit, clip_S[lo + a:lo + b], frame_S[lo + a:lo + b]),
                               behavior=behavior, pupil_center=behavior[:, 2:4], video_id=video_id)
                    piece += 1
            kept = covered_runs(ok_S)
            if kept != [(0, len(t_S))]:
                splits[str(key)] = {"samples": len(t_S), "kept": [list(r) for r in kept]}
            if tier == "train":
                usable["train_samples"] += int(ok_S.sum())
                usable["continuous"] += sum(_window_samples(ok_S[lo:hi]) for lo, hi in zip(bounds, bounds[1:]))
                # A clip's own grid (as a trial of its own) is the start of its grid in the run.
                usable["per_clip"] += sum(_window_samples(ok_S[first:first + len(source.clip_grid(clip)[0])])
                                          for clip, first in zip(unit, firsts) if source.stored(clip))
        tiers = pieces.tiers
        if not tiers:
            raise UserError(f"{source.folder}: no clip has a sample covered by every device; nothing to import")
        if per_clip:
            usable["continuous"] = None  # not measured: blanks are not read in this mode
        writer.provenance.update({"dropped_clips": dict(dropped), "uncovered_samples": dict(uncovered),
                                  "split_clips": splits, "extra_pieces": pieces.extra, "runs": runs_of_clips,
                                  "long_run_cuts": cuts, "window_samples": WINDOW_SAMPLES,
                                  "train_samples_in_windows": usable})
    seconds = time.perf_counter() - t0
    n_bytes = source.source_bytes
    counts = ", ".join(f"{k} {v}" for k, v in sorted(tiers.items()))
    drops = ", ".join(f"{v} {k}" for k, v in sorted(dropped.items())) or "none"
    gaps = ", ".join(f"{k} {v}" for k, v in sorted(uncovered.items()) if v) or "none"
    windows = (f"train samples in {WINDOW_SAMPLES}-sample windows: {usable['per_clip']} of {usable['train_samples']}"
               if per_clip else f"train samples in {WINDOW_SAMPLES}-sample windows: {usable['continuous']} of "
               f"{usable['train_samples']} ({usable['per_clip']} with --per-clip)")
    log(f"{source.name}: {sum(tiers.values())} trials ({counts}), {len(all_neurons)} neurons, "
        f"{interpolation} resampling; clips dropped: {drops}; {len(splits)} clips split or trimmed "
        f"(uncovered samples: {gaps}); {windows}; {n_bytes / 1e6:.1f} MB in {seconds:.1f} s "
        f"({n_bytes / 1e6 / max(seconds, 1e-9):.1f} MB/s)")
    return True


def import_experanto(paths, out, interpolation: str = "nearest", replace: bool = False, per_clip: bool = False,
                     log=print) -> list[str]:
    """Imports every session named by `paths` into the store `out`; returns the names written this run.

    All sources are checked before the first is written, so bad input anywhere leaves the store untouched."""
    sources = find_sources(paths)
    names = Counter(s.name for s in sources)
    if any(n > 1 for n in names.values()):
        raise UserError(f"session names given twice: {sorted(k for k, n in names.items() if n > 1)}")
    return [s.name for s in sources
            if import_session(s, out, interpolation=interpolation, replace=replace, per_clip=per_clip, log=log)]
