"""`omnimouse data import-sensorium`: Sensorium 2023 session folders or zips -> session store.

A source session has `data/{videos,responses,behavior,pupil_center}/<i>.npy` with the frame axis last, and
`meta/trials/tiers.npy`, `meta/neurons/unit_ids.npy` (plus `cell_motor_coordinates.npy`). Arrays are transposed to
time-first and streamed trial by trial (folders are memory-mapped, zip members read one file at a time), so RAM stays
flat. Behavior channels: the source's rows (pupil_dilation, running_speed), then pupil_x, pupil_y and the per-trial
derivative of pupil dilation.

Re-running an import skips sessions the store already holds complete (`--replace` rewrites them); sessions left
incomplete by an interrupted import are written afresh.
"""
from __future__ import annotations

import io
import json
import time
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np

from omnimouse_jax.data.schema import BEHAVIOR_CHANNELS
from omnimouse_jax.data.store import SessionWriter, session_exists
from omnimouse_jax.errors import UserError

SAMPLING_RATE = 30.0
DATA_KEYS = ("videos", "responses", "behavior", "pupil_center")
# Tiers released without responses (their responses are withheld for scoring): only their trials may lack a file.
STIMULUS_ONLY_TIERS = ("live_test", "final_test")
_SMALL_STAT = 16  # meta/statistics arrays up to this many values are copied into the manifest's provenance


class _Source:
    """One Sensorium session, in a folder or a zip, with paths relative to the session folder."""

    def __init__(self, location: Path, name: str, zip_prefix: str | None = None):
        self.location, self.name, self.prefix = location, name, zip_prefix
        self._zip = zipfile.ZipFile(location) if zip_prefix is not None else None
        self._members = set(self._zip.namelist()) if self._zip else None

    def describe(self, rel: str) -> str:
        return f"{self.location}:{rel}" if self._zip else str(self.location / rel)

    def exists(self, rel: str) -> bool:
        if self._zip:
            return self.prefix + rel in self._members or any(m.startswith(self.prefix + rel + "/") for m in self._members)
        return (self.location / rel).exists()

    def listdir(self, rel: str) -> list[str]:
        if self._zip:
            base = self.prefix + rel + "/"
            return sorted({m[len(base):].split("/")[0] for m in self._members if m.startswith(base) and m != base})
        return sorted(p.name for p in (self.location / rel).iterdir())

    def load(self, rel: str) -> np.ndarray:
        """The .npy file at `rel` (memory-mapped for folders); UserError naming it if missing or unreadable."""
        if not self.exists(rel):
            raise UserError(f"{self.describe(rel)}: missing")
        try:
            if self._zip:
                return np.load(io.BytesIO(self._zip.read(self.prefix + rel)), allow_pickle=False)
            return np.load(self.location / rel, mmap_mode="r", allow_pickle=False)
        except Exception as err:  # numpy raises ValueError, EOFError or UnpicklingError for bad files
            raise UserError(f"{self.describe(rel)}: not a readable .npy file ({type(err).__name__}: {err})") from None

    def read_text(self, rel: str) -> str:
        if self._zip:
            return self._zip.read(self.prefix + rel).decode()
        return (self.location / rel).read_text()

    def close(self) -> None:
        if self._zip:
            self._zip.close()


def _looks_like_session(folder: Path) -> bool:
    return any((folder / p).exists() for p in ("data", "meta", "config.json"))


def _zip_source(path: Path) -> _Source:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError) as err:
        raise UserError(f"{path}: not a readable zip file ({err})") from None
    # The session folder is the zip's root, a top-level folder, or nested one level deeper.
    prefixes = set()
    for member in names:
        parts = member.split("/")
        for depth in range(3):
            if len(parts) > depth and parts[depth] in ("data", "meta"):
                prefixes.add("/".join(parts[:depth]))
                break
    if not prefixes:
        raise UserError(f"{path}: no Sensorium session inside; expected data/ and meta/ folders")
    if len(prefixes) > 1:
        raise UserError(f"{path}: holds several sessions {sorted(prefixes)}; expected one session per zip")
    prefix = prefixes.pop()
    name = prefix.split("/")[-1] if prefix else path.stem
    return _Source(path, name, prefix + "/" if prefix else "")


def find_sources(paths) -> list[_Source]:
    """Sessions named by SRC arguments: a session folder, a zip of one, or a folder holding several of either."""
    sources = []
    for path in map(Path, paths):
        if path.is_file() and path.suffix == ".zip":
            sources.append(_zip_source(path))
        elif path.is_dir() and _looks_like_session(path):
            sources.append(_Source(path, path.name))
        elif path.is_dir():
            children = [c for c in sorted(path.iterdir())
                        if (c.is_dir() and _looks_like_session(c)) or (c.is_file() and c.suffix == ".zip")]
            if not children:
                raise UserError(f"{path}: no Sensorium session found; expected a session folder (data/, meta/), "
                                "a .zip of one, or a folder holding several")
            sources.extend(find_sources(children))
        else:
            raise UserError(f"{path}: not found; expected a Sensorium session folder, a .zip of one, or a parent folder")
    return sources


def _trial_indices(source: _Source, n_tiers: int) -> tuple[list[int], set[int]]:
    """Trial indices (from videos) and the subset with a responses file; checks the file sets agree."""
    files = {}
    for key in DATA_KEYS:
        rel = f"data/{key}"
        if not source.exists(rel):
            raise UserError(f"{source.describe(rel)}: missing folder")
        names = [n for n in source.listdir(rel) if n.endswith(".npy")]
        try:
            files[key] = {int(n[:-4]) for n in names}
        except ValueError:
            raise UserError(f"{source.describe(rel)}: expected files named <trial index>.npy, found {names[:5]}") from None
    videos = files["videos"]
    if not videos:
        raise UserError(f"{source.describe('data/videos')}: no trials; expected <i>.npy files")
    required = ("videos", "behavior", "pupil_center")  # responses may be absent (stimulus-only tiers)
    for i in sorted(set().union(*files.values())):
        have = [key for key in required if i in files[key]]
        if len(have) == len(required):
            continue
        if 2 * len(have) > len(required):  # most of trial i's files are there: name the one that is not
            absent = next(key for key in required if key not in have)
            raise UserError(f"{source.describe(f'data/{absent}/{i}.npy')}: missing; trial {i} has "
                            + ", ".join(f"data/{key}/{i}.npy" for key in have))
        odd = have[0] if have else "responses"
        raise UserError(f"{source.describe(f'data/{odd}/{i}.npy')}: trial file counts differ: no trial {i} in "
                        + ", ".join(f"data/{key}" for key in required if key not in have))
    if videos != set(range(n_tiers)):
        raise UserError(f"{source.describe('meta/trials/tiers.npy')}: {n_tiers} tiers but data/videos holds trials "
                        f"{min(videos)}..{max(videos)} ({len(videos)} files); expected one tier per trial 0..n-1")
    return sorted(videos), files["responses"]


def _provenance(source: _Source) -> dict:
    prov = {"source": str(source.location), "format": "sensorium2023"}
    if source.exists("config.json"):
        try:
            prov["config"] = json.loads(source.read_text("config.json"))
        except ValueError:
            prov["config_unparsed"] = True
    stats = {}
    if source.exists("meta/statistics"):
        for key in source.listdir("meta/statistics"):
            for stat in ("mean", "std", "min", "max", "median"):
                rel = f"meta/statistics/{key}/all/{stat}.npy"
                if source.exists(rel):
                    value = source.load(rel)
                    if value.size <= _SMALL_STAT:
                        stats.setdefault(key, {})[stat] = np.asarray(value, np.float64).tolist()
    if stats:
        prov["statistics"] = stats
    return prov


def _frames_last(source: _Source, rel: str, leading: tuple[int, ...], what: str) -> np.ndarray:
    x = source.load(rel)
    if x.ndim != len(leading) + 1 or x.shape[:-1] != leading:
        raise UserError(f"{source.describe(rel)}: shape {x.shape}; expected {what} with the frame axis last")
    return x


def import_session(source: _Source, out, replace: bool = False, log=print) -> bool:
    """Imports one source session into store `out`; False if it was already there and `replace` is off."""
    if not replace and session_exists(out, source.name):
        log(f"{source.name}: already in {out}, skipped (use --replace to rewrite it)")
        return False
    t0 = time.perf_counter()
    tiers = np.asarray(source.load("meta/trials/tiers.npy")).astype(str)
    unit_ids = np.asarray(source.load("meta/neurons/unit_ids.npy"))
    coordinates = (np.asarray(source.load("meta/neurons/cell_motor_coordinates.npy"))
                   if source.exists("meta/neurons/cell_motor_coordinates.npy") else None)
    if tiers.ndim != 1 or unit_ids.ndim != 1:
        raise UserError(f"{source.describe('meta')}: tiers.npy and unit_ids.npy must be 1-d arrays")
    indices, with_responses = _trial_indices(source, len(tiers))
    lacking = [i for i in indices if i not in with_responses]
    refused = [i for i in lacking if not tiers[i].startswith(STIMULUS_ONLY_TIERS)]
    if refused:
        i = refused[0]
        raise UserError(f"{source.describe(f'data/responses/{i}.npy')}: missing for a trial of tier {str(tiers[i])!r} "
                        f"({len(refused)} such trial{'s' if len(refused) > 1 else ''}); only tiers released without "
                        f"responses ({', '.join(t + '*' for t in STIMULUS_ONLY_TIERS)}) may lack them")
    n_neurons = len(unit_ids)
    first = source.load(f"data/videos/{indices[0]}.npy")
    if first.ndim != 3:
        raise UserError(f"{source.describe(f'data/videos/{indices[0]}.npy')}: shape {first.shape}; expected (H, W, T)")
    frame_shape = first.shape[:2]
    n_bytes = 0
    with SessionWriter(out, source.name, animal=source.name.split("-")[0], n_neurons=n_neurons,
                       frame_shape=frame_shape, behavior_channels=list(BEHAVIOR_CHANNELS), sampling_rate=SAMPLING_RATE,
                       unit_ids=unit_ids, coordinates=coordinates, provenance=_provenance(source),
                       replace=replace) as writer:
        for i in indices:
            video = _frames_last(source, f"data/videos/{i}.npy", frame_shape, f"(H, W, T) with H, W = {frame_shape}")
            behavior = _frames_last(source, f"data/behavior/{i}.npy", (2,), "(2, T)")
            pupil = _frames_last(source, f"data/pupil_center/{i}.npy", (2,), "(2, T)")
            arrays = [("videos", video), ("behavior", behavior), ("pupil_center", pupil)]
            responses = None
            if i in with_responses:
                responses = _frames_last(source, f"data/responses/{i}.npy", (n_neurons,),
                                         f"(N, T) with N = {n_neurons} neurons as in meta/neurons/unit_ids.npy")
                arrays.append(("responses", responses))
            t = video.shape[-1]
            for key, x in arrays:
                if x.shape[-1] != t:
                    raise UserError(f"{source.describe(f'data/{key}/{i}.npy')}: {x.shape[-1]} frames; "
                                    f"data/videos/{i}.npy has {t}")
            behavior_TxC = np.empty((t, len(BEHAVIOR_CHANNELS)), np.float32)
            behavior_TxC[:, :2] = behavior.T
            behavior_TxC[:, 2:4] = pupil.T
            # Per trial, so the derivative never crosses a trial boundary; units of dilation per second.
            behavior_TxC[:, 4] = np.gradient(behavior_TxC[:, 0]) * SAMPLING_RATE if t > 1 else 0.0
            writer.add_trial(responses=None if responses is None else responses.T, video=np.moveaxis(video, -1, 0),
                             behavior=behavior_TxC, pupil_center=pupil.T, tier=tiers[i], source_index=i)
            n_bytes += sum(x.nbytes for _, x in arrays)
    seconds = time.perf_counter() - t0
    stimulus_only = Counter(tiers[i] for i in lacking)
    counts = ", ".join(f"{k} {v}" + (f" ({stimulus_only[k]} stimulus-only)" if stimulus_only[k] else "")
                       for k, v in sorted(Counter(tiers.tolist()).items()))
    log(f"{source.name}: {len(indices)} trials ({counts}), {n_neurons} neurons, {n_bytes / 1e6:.1f} MB in "
        f"{seconds:.1f} s ({n_bytes / 1e6 / max(seconds, 1e-9):.1f} MB/s)")
    return True


def import_sensorium(paths, out, replace: bool = False, log=print) -> list[str]:
    """Imports every session named by `paths` into the store `out`; returns the names written this run."""
    sources = find_sources(paths)
    written, seen = [], set()
    for source in sources:
        try:
            if source.name in seen:
                log(f"{source.name}: given twice ({source.location}), skipped")
            elif import_session(source, out, replace=replace, log=log):
                written.append(source.name)
            seen.add(source.name)
        finally:
            source.close()
    return written
