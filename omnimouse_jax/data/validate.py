"""`omnimouse data check STORE`: full validation of a session store; exit 0 only if it is sound.

Checks the catalog and every manifest parse, manifest and file checksums, array shapes and dtypes against the manifest,
the trial table (contiguous, non-overlapping, covering every sample), neurons, finite statistics, and reads every array
end to end (so truncated shards surface) checking that train-tier responses hold no NaN. Hidden directories left by
interrupted writes are noted, never treated as sessions.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from omnimouse_jax.data.store import (PARTIAL_PREFIX, SIDECAR_DIRS, TRASH_PREFIX, Session, load_catalog, load_npz,
                                      read_json, sha256_file, verify_checksums)
from omnimouse_jax.errors import UserError

_TRIAL_KEYS = ("start", "stop", "tier", "video_id", "source_index", "has_responses", "video_scale", "video_offset")
_BLOCK_BYTES = 64 << 20  # rows read at once during the full scan


def _trial_problems(where: Path, trials: dict, n_trials: int, n_samples: int) -> list[str]:
    missing = [k for k in _TRIAL_KEYS if k not in trials]
    if missing:
        return [f"{where}: missing columns {missing}"]
    if any(len(trials[k]) != n_trials for k in _TRIAL_KEYS):
        return [f"{where}: columns have lengths {[len(trials[k]) for k in _TRIAL_KEYS]}; manifest says {n_trials} trials"]
    start, stop = trials["start"].astype(np.int64), trials["stop"].astype(np.int64)
    problems = []
    if n_trials and (start[0] != 0 or stop[-1] != n_samples or np.any(start[1:] != stop[:-1])):
        problems.append(f"{where}: trials do not tile samples [0, {n_samples}) without gaps or overlaps")
    if np.any(stop <= start):
        problems.append(f"{where}: trial {int(np.argmax(stop <= start))} has stop <= start")
    if len(np.unique(trials["source_index"])) != n_trials:
        problems.append(f"{where}: source_index values repeat")
    if trials["has_responses"].dtype != bool or trials["tier"].dtype.kind != "U":
        problems.append(f"{where}: has_responses must be bool and tier a string column")
    if not (np.isfinite(trials["video_scale"]).all() and (trials["video_scale"] > 0).all()):
        problems.append(f"{where}: video_scale must be finite and positive")
    return problems


def _scan_problems(session) -> list[str]:
    """Reads every array block by block; train-tier samples with responses must be NaN-free."""
    t = session.trials
    must_be_finite = np.zeros(session.n_samples, bool)
    for start, stop, tier, has in zip(t["start"], t["stop"], t["tier"], t["has_responses"]):
        must_be_finite[start:stop] = tier == "train" and has
    problems = []
    for field, spec in session.manifest["arrays"].items():
        row_bytes = int(np.prod(spec["shape"][1:])) * np.dtype(spec["dtype"]).itemsize
        block = max(1, _BLOCK_BYTES // max(row_bytes, 1))
        nan_rows = 0
        for start in range(0, session.n_samples, block):
            stop = min(start + block, session.n_samples)
            try:
                x = session.read(start, stop, fields=(field,))[field]
            except Exception as err:  # tensorstore raises its own errors for truncated or corrupt shards
                problems.append(f"{session.path / spec['path']}: unreadable samples [{start}, {stop}) ({err})")
                break
            if field == "responses":
                nan_rows += int(np.isnan(x[must_be_finite[start:stop]]).any(axis=1).sum())
        if nan_rows:
            problems.append(f"{session.path / 'responses'}: {nan_rows} train-tier samples contain NaN responses")
    return problems


def check_session(root: Path, name: str, entry: dict) -> list[str]:
    """Problems with one catalogued session, each naming the file."""
    path = root / name
    if not (path / "manifest.json").is_file():
        return [f"{path / 'manifest.json'}: missing; catalog.json lists session {name!r}"]
    try:
        manifest = read_json(path / "manifest.json", "a session manifest")
    except UserError as err:
        return [str(err)]
    if entry.get("manifest_sha256") != sha256_file(path / "manifest.json"):
        return [f"{path / 'manifest.json'}: checksum differs from catalog.json; the manifest was modified or corrupted"]
    problems = verify_checksums(path, manifest)
    if problems:
        return problems
    for key in ("n_neurons", "n_samples", "n_trials"):
        if entry.get(key) != manifest.get(key):
            problems.append(f"{root / 'catalog.json'}: session {name!r} {key}={entry.get(key)} but manifest says "
                            f"{manifest.get(key)}")
    try:
        session = Session(root, name)
    except (UserError, KeyError, TypeError, ValueError) as err:
        return problems + [f"{path}: cannot open session ({type(err).__name__}: {err})"]
    problems += _trial_problems(path / "trials.npz", session.trials, session.n_trials, session.n_samples)
    neurons = session.neurons
    if neurons.get("unit_ids", np.empty(0)).shape != (session.n_neurons,) or \
            len(neurons.get("coordinates", np.empty(0))) != session.n_neurons:
        problems.append(f"{path / 'neurons.npz'}: expected unit_ids and coordinates for {session.n_neurons} neurons")
    for key, value in load_npz(path / "stats.npz").items():
        if not np.isfinite(value).all():
            problems.append(f"{path / 'stats.npz'}: {key} is not finite (no train-tier samples for it?)")
    if problems:
        return problems
    return _scan_problems(session)


def check_store(path) -> tuple[list[str], list[str]]:
    """(problems, notes) for the store at `path`; problems make it unsound, notes do not."""
    root = Path(path)
    if not root.is_dir():
        raise UserError(f"{root}: not a directory; expected a session store")
    try:
        catalog = load_catalog(root)
    except UserError as err:
        return [str(err)], []
    problems, notes = [], []
    for child in sorted(root.iterdir()):
        if child.name.startswith((PARTIAL_PREFIX, TRASH_PREFIX)):
            notes.append(f"{child}: leftover of an interrupted write, not a session; safe to delete")
        elif (child.is_dir() and not child.name.startswith(".") and child.name not in SIDECAR_DIRS
              and child.name not in catalog["sessions"]):
            problems.append(f"{child}: directory not listed in catalog.json (an interrupted write?); re-run the "
                            "import to replace it, or delete it")
    if not catalog["sessions"]:
        problems.append(f"{root / 'catalog.json'}: lists no session (an import that failed or was interrupted leaves "
                        "an empty store); import a session into it first")
    for name, entry in sorted(catalog["sessions"].items()):
        problems += check_session(root, name, entry if isinstance(entry, dict) else {})
    return problems, notes
