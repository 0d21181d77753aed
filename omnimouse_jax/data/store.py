"""The session store: one directory per dataset, one subdirectory per session, arrays in tensorstore zarr3.

Layout of a store::

    STORE/catalog.json             {"format": "omnimouse-store", "sessions": {name: summary}}; the list of sessions
    STORE/NAME/manifest.json       name, animal, rate, shapes, dtypes, channel names, provenance, checksums
    STORE/NAME/responses           zarr3 (samples x neurons) float32 or float16; NaN where a trial has no responses
    STORE/NAME/video               zarr3 (samples x H x W) uint8
    STORE/NAME/behavior            zarr3 (samples x channels) float32
    STORE/NAME/pupil_center        zarr3 (samples x 2) float32
    STORE/NAME/extra/FIELD         zarr3 (samples x K) float32, one per extra field (e.g. ground-truth rates)
    STORE/NAME/trials.npz          start, stop, tier, video_id, source_index, has_responses, video_scale, video_offset
    STORE/NAME/neurons.npz         unit_ids, coordinates
    STORE/NAME/stats.npz           normalization statistics of the train tier, keys "group/stat"

Trials are concatenated on one sample axis. Each array is sharded: a read chunk of a few hundred samples (all neurons)
sits inside a write shard of ~16 MB, so random windows touch one or two small chunks while file counts stay low.
Chunks are uncompressed: blosc-lz4 or zstd saved ~35% of disk but cost ~30% of random-window read speed when measured.

A session is written into a hidden directory `.partial-<token>-NAME` and renamed into place only once complete; the
catalog (updated atomically under a file lock) is the source of truth for which sessions exist. An interrupted write
therefore leaves at most a hidden directory (removed by the next writer of the same name) or a directory the catalog
does not list (replaced by the next writer), never a session that `open_store` accepts. One writer per session name at
a time.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import secrets
import shutil
import time
from pathlib import Path

import numpy as np
import tensorstore as ts

from omnimouse_jax.errors import UserError
from omnimouse_jax.files import write_json_atomic

STORE_FORMAT = "omnimouse-store"
SESSION_FORMAT = "omnimouse-session"
FORMAT_VERSION = 1
CORE_FIELDS = ("responses", "video", "behavior", "pupil_center")
PARTIAL_PREFIX = ".partial-"
TRASH_PREFIX = ".trash-"
# Store-root folders that hold material about sessions rather than sessions (digital mice keep their ground truth here).
SIDECAR_DIRS = ("ground_truth",)
_TOKEN_LEN = 12

# Chunk geometry, chosen by benchmarks/import_and_read.py: a 60-sample window reads at most two response chunks.
READ_ROWS = 64          # samples per read chunk for responses, video and extra fields
SMALL_READ_ROWS = 1024  # behavior and pupil rows are a few bytes; larger chunks cost nothing
SHARD_BYTES = 16 << 20  # target size of one write shard (one file on disk)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_json(path: Path, what: str) -> dict:
    """A JSON object from `path`; UserError naming the file and `what` was expected if missing or malformed."""
    try:
        with open(path) as f:
            obj = json.load(f)
    except FileNotFoundError:
        raise UserError(f"{path}: missing; expected {what}") from None
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: not valid JSON ({err}); expected {what}") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path}: expected {what} (a JSON object)")
    return obj


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.write_bytes(buf.getvalue())


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """All arrays of an .npz payload (no pickles); UserError naming the file if unreadable."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: unreadable ({err})") from None


def _zarr_spec(path: Path, row_shape: tuple[int, ...], dtype: str, read_rows: int, dims: list[str]) -> dict:
    """A zarr3 array growing along axis 0, sharded so that one shard holds ~SHARD_BYTES and one chunk `read_rows`."""
    row_bytes = int(np.prod(row_shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    shard_rows = max(read_rows, SHARD_BYTES // max(row_bytes, 1) // read_rows * read_rows)
    bytes_codec = {"name": "bytes", "configuration": {"endian": "little"}}
    return {
        "driver": "zarr3",
        "kvstore": {"driver": "file", "path": str(path)},
        "create": True,
        "metadata": {
            "shape": [0, *row_shape],
            "data_type": dtype,
            "dimension_names": dims,
            "fill_value": float("nan") if np.dtype(dtype).kind == "f" else 0,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [shard_rows, *row_shape]}},
            "codecs": [{"name": "sharding_indexed", "configuration": {
                "chunk_shape": [read_rows, *row_shape],
                "codecs": [bytes_codec],
                "index_codecs": [bytes_codec, {"name": "crc32c"}],
            }}],
        },
    }


class _AppendArray:
    """Appends rows to a zarr3 array, writing whole shards only, so each shard file is written exactly once."""

    def __init__(self, path: Path, row_shape, dtype: str, read_rows: int, dims: list[str]):
        self.row_shape = tuple(row_shape)
        self.dtype = np.dtype(dtype)
        self.array = ts.open(_zarr_spec(path, self.row_shape, dtype, read_rows, dims)).result()
        self.shard_rows = self.array.chunk_layout.write_chunk.shape[0]
        self.pending: list[np.ndarray] = []
        self.pending_rows = 0
        self.rows = 0

    def append(self, x: np.ndarray) -> None:
        self.pending.append(np.asarray(x, dtype=self.dtype))
        self.pending_rows += len(x)
        if self.pending_rows >= self.shard_rows:
            self._flush(final=False)

    def close(self) -> None:
        self._flush(final=True)

    def _flush(self, final: bool) -> None:
        if not self.pending:
            return
        data = np.concatenate(self.pending) if len(self.pending) > 1 else self.pending[0]
        n = len(data) if final else len(data) // self.shard_rows * self.shard_rows
        if n:
            self.array = self.array.resize(exclusive_max=[self.rows + n, *self.row_shape], expand_only=True).result()
            self.array[self.rows:self.rows + n].write(data[:n]).result()
            self.rows += n
        rest = data[n:]
        self.pending = [rest] if len(rest) else []
        self.pending_rows = len(rest)


class _Moments:
    """Streaming per-column count, mean, variance (Chan et al. pairwise update), min and max, ignoring NaN."""

    def __init__(self, n_columns: int):
        self.count = np.zeros(n_columns, np.int64)
        self.mean = np.zeros(n_columns, np.float64)
        self.m2 = np.zeros(n_columns, np.float64)
        self.min = np.full(n_columns, np.inf)
        self.max = np.full(n_columns, -np.inf)

    def update(self, x_TxC: np.ndarray) -> None:
        x = np.asarray(x_TxC, np.float64)
        valid = ~np.isnan(x)
        n_b = valid.sum(0)
        mean_b = np.where(valid, x, 0.0).sum(0) / np.maximum(n_b, 1)
        m2_b = (np.where(valid, x - mean_b, 0.0) ** 2).sum(0)
        n = self.count + n_b
        delta = mean_b - self.mean
        safe_n = np.maximum(n, 1)
        self.mean += delta * n_b / safe_n
        self.m2 += m2_b + delta**2 * self.count * n_b / safe_n
        self.count = n
        self.min = np.fmin(self.min, np.where(valid, x, np.inf).min(0))
        self.max = np.fmax(self.max, np.where(valid, x, -np.inf).max(0))

    def result(self) -> dict[str, np.ndarray]:
        empty = self.count == 0
        return {
            "count": self.count,
            "mean": np.where(empty, np.nan, self.mean),
            "std": np.where(empty, np.nan, np.sqrt(self.m2 / np.maximum(self.count, 1))),
            "min": np.where(empty, np.nan, self.min),
            "max": np.where(empty, np.nan, self.max),
        }


@contextlib.contextmanager
def _catalog_lock(root: Path):
    with open(root / ".catalog.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _empty_catalog() -> dict:
    return {"format": STORE_FORMAT, "version": FORMAT_VERSION, "sessions": {}}


def load_catalog(root: Path) -> dict:
    """The parsed catalog.json of store `root`; UserError naming the file if missing or malformed."""
    catalog = read_json(root / "catalog.json", "a session store catalog")
    if catalog.get("format") != STORE_FORMAT or not isinstance(catalog.get("sessions"), dict):
        raise UserError(f"{root / 'catalog.json'}: expected format '{STORE_FORMAT}' with a 'sessions' object")
    return catalog


def _write_catalog(root: Path, catalog: dict) -> None:
    """Replaces catalog.json atomically; call under `_catalog_lock`, which also makes any older temp file stale."""
    for stale in root.glob(".catalog.json.tmp-*"):
        stale.unlink(missing_ok=True)
    write_json_atomic(root / "catalog.json", catalog)


def _init_store(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    with _catalog_lock(root):
        if not (root / "catalog.json").exists():
            _write_catalog(root, _empty_catalog())


def session_exists(root, name: str) -> bool:
    """True if `root` is a store whose catalog lists `name` and whose session directory holds a manifest."""
    root = Path(root)
    try:
        catalog = load_catalog(root)
    except UserError:
        return False
    return name in catalog["sessions"] and (root / name / "manifest.json").is_file()


def _check_name(name: str) -> None:
    if not name or name.startswith(".") or "/" in name or name in ("catalog.json", *SIDECAR_DIRS) or name != name.strip():
        raise UserError(f"session name {name!r}: expected a non-empty directory name not starting with '.' "
                        f"and not one of {SIDECAR_DIRS}")


def _video_id(video: np.ndarray) -> int:
    digest = hashlib.blake2b(digest_size=8)
    digest.update(f"{video.dtype.str}{video.shape}".encode())
    digest.update(np.ascontiguousarray(video).data)
    return int.from_bytes(digest.digest(), "little") & (2**63 - 1)


def _encode_video(video: np.ndarray, where: str) -> tuple[np.ndarray, float, float]:
    """uint8 frames plus (scale, offset) with original = scale * stored + offset.

    Integral values in [0, 255] are stored exactly (scale 1, offset 0). Anything else is mapped affinely from the
    trial's [min, max] onto [0, 255] and rounded, so `trial()` returns it with an error of at most (max - min) / 510.
    The map is per trial (recorded in trials.npz) because trials stream in before the session's range is known; stored
    uint8 values of such trials are therefore contrast-stretched per trial.
    """
    if video.dtype == np.uint8:
        return video, 1.0, 0.0
    v = np.asarray(video)
    if not np.isfinite(v).all():
        raise UserError(f"{where}: video has NaN or infinite values; expected finite pixel values")
    lo, hi = float(v.min()), float(v.max())
    if lo >= 0 and hi <= 255 and (v.dtype.kind in "iub" or np.array_equal(v, np.round(v))):
        return v.astype(np.uint8), 1.0, 0.0
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    return np.round((v - lo) / scale).astype(np.uint8), scale, lo


class SessionWriter:
    """Streams one session's trials into a store; a context manager that publishes the session atomically on exit.

    RAM stays flat: trials are buffered only until a whole write shard is ready. On a clean exit the writer computes
    train-tier statistics, writes trials/neurons/stats payloads and manifest.json (with checksums), renames the hidden
    temporary directory to `root/name` and adds the session to catalog.json. On an exception the temporary directory is
    deleted. Writing a name the catalog already lists requires `replace=True`.
    """

    def __init__(self, root, name: str, *, animal: str, n_neurons: int, frame_shape: tuple[int, int],
                 behavior_channels: list[str], sampling_rate: float = 30.0, response_dtype: str = "float32",
                 unit_ids=None, coordinates=None, provenance: dict | None = None,
                 extra_fields: dict[str, int] | None = None, replace: bool = False):
        _check_name(name)
        self.root, self.name = Path(root), name
        self.animal = str(animal)
        self.n_neurons = int(n_neurons)
        self.frame_shape = tuple(int(s) for s in frame_shape)
        self.behavior_channels = [str(c) for c in behavior_channels]
        self.sampling_rate = float(sampling_rate)
        self.response_dtype = str(np.dtype(response_dtype))
        self.provenance = dict(provenance or {})
        self.extra_fields = {str(k): int(v) for k, v in (extra_fields or {}).items()}
        self.replace = replace
        if self.n_neurons < 1 or len(self.frame_shape) != 2 or min(self.frame_shape) < 1:
            raise UserError(f"session {name}: expected n_neurons >= 1 and a 2-d frame_shape, got "
                            f"{n_neurons} and {frame_shape}")
        if self.response_dtype not in ("float32", "float16"):
            raise UserError(f"session {name}: response_dtype {response_dtype!r}; expected float32 or float16")
        if len(set(self.behavior_channels)) != len(self.behavior_channels):
            raise UserError(f"session {name}: behavior channel names must be unique, got {self.behavior_channels}")
        for field in self.extra_fields:
            if field in CORE_FIELDS or not field.isidentifier():
                raise UserError(f"session {name}: extra field {field!r} must be an identifier other than {CORE_FIELDS}")
        self.unit_ids = np.arange(self.n_neurons) if unit_ids is None else np.asarray(unit_ids)
        self.coordinates = (np.zeros((self.n_neurons, 0), np.float32) if coordinates is None
                            else np.asarray(coordinates, np.float32))
        if self.unit_ids.shape != (self.n_neurons,) or self.coordinates.ndim != 2 or len(self.coordinates) != self.n_neurons:
            raise UserError(f"session {name}: expected unit_ids ({self.n_neurons},) and coordinates ({self.n_neurons}, D), "
                            f"got {self.unit_ids.shape} and {self.coordinates.shape}")
        self._tmp: Path | None = None

    def __enter__(self) -> SessionWriter:
        _init_store(self.root)
        if not self.replace and session_exists(self.root, self.name):
            raise UserError(f"{self.root / self.name}: session already in the store; pass replace to overwrite it")
        for stale in self.root.glob(f"{PARTIAL_PREFIX}*"):
            if stale.name[len(PARTIAL_PREFIX) + _TOKEN_LEN + 1:] == self.name:
                shutil.rmtree(stale, ignore_errors=True)
        self._tmp = self.root / f"{PARTIAL_PREFIX}{secrets.token_hex(_TOKEN_LEN // 2)}-{self.name}"
        self._tmp.mkdir()
        h, w = self.frame_shape
        self._arrays = {
            "responses": _AppendArray(self._tmp / "responses", (self.n_neurons,), self.response_dtype, READ_ROWS,
                                      ["sample", "neuron"]),
            "video": _AppendArray(self._tmp / "video", (h, w), "uint8", READ_ROWS, ["sample", "y", "x"]),
            "behavior": _AppendArray(self._tmp / "behavior", (len(self.behavior_channels),), "float32",
                                     SMALL_READ_ROWS, ["sample", "channel"]),
            "pupil_center": _AppendArray(self._tmp / "pupil_center", (2,), "float32", SMALL_READ_ROWS,
                                         ["sample", "xy"]),
        }
        for field, k in self.extra_fields.items():
            self._arrays[field] = _AppendArray(self._tmp / "extra" / field, (k,), "float32", READ_ROWS,
                                               ["sample", "channel"])
        self._trials = {k: [] for k in ("start", "stop", "tier", "video_id", "source_index", "has_responses",
                                        "video_scale", "video_offset")}
        self._stats = {"responses": _Moments(self.n_neurons), "behavior": _Moments(len(self.behavior_channels)),
                       "pupil_center": _Moments(2), "video": _Moments(1)}
        self._samples = 0
        return self

    def add_trial(self, *, responses, video, behavior, pupil_center, tier: str, video_id: int | None = None,
                  source_index: int | None = None, **extra) -> None:
        """Appends one trial. `responses` (T, N) or None for a stimulus-only trial; `video` (T, H, W) any numeric
        dtype; `behavior` (T, C); `pupil_center` (T, 2); extra fields (T, K). All-NaN responses count as absent."""
        if self._tmp is None:
            raise RuntimeError("SessionWriter.add_trial called outside its `with` block")
        index = len(self._trials["start"]) if source_index is None else int(source_index)
        where = f"session {self.name} trial {index}"
        video = np.asarray(video)
        t = len(video)
        expected = {"video": (t, *self.frame_shape), "behavior": (t, len(self.behavior_channels)),
                    "pupil_center": (t, 2), **{f: (t, k) for f, k in self.extra_fields.items()}}
        given = {"video": video, "behavior": np.asarray(behavior), "pupil_center": np.asarray(pupil_center),
                 **{f: np.asarray(extra.pop(f, None)) for f in self.extra_fields}}
        if extra:
            raise UserError(f"{where}: unknown fields {sorted(extra)}; declared extra fields are {sorted(self.extra_fields)}")
        if responses is not None:
            responses = np.asarray(responses)
            expected["responses"], given["responses"] = (t, self.n_neurons), responses
        for key, shape in expected.items():
            if given[key].shape != shape:
                raise UserError(f"{where}: {key} has shape {given[key].shape}; expected {shape}")
        if t < 1:
            raise UserError(f"{where}: trial has no samples")
        has_responses = responses is not None and not np.isnan(responses).all()
        if has_responses and tier == "train" and np.isnan(responses).any():
            raise UserError(f"{where}: train-tier responses contain NaN; expected finite values or none at all")
        if not has_responses:
            responses = np.full((t, self.n_neurons), np.nan, np.float32)
        video_u8, scale, offset = _encode_video(video, where)

        self._arrays["responses"].append(responses)
        self._arrays["video"].append(video_u8)
        for key in ("behavior", "pupil_center", *self.extra_fields):
            self._arrays[key].append(given[key])
        if tier == "train":
            if has_responses:
                self._stats["responses"].update(responses.astype(self.response_dtype))
            self._stats["behavior"].update(given["behavior"].astype(np.float32))
            self._stats["pupil_center"].update(given["pupil_center"].astype(np.float32))
            self._stats["video"].update(video_u8.reshape(-1, 1))
        row = self._trials
        row["start"].append(self._samples)
        row["stop"].append(self._samples + t)
        row["tier"].append(str(tier))
        row["video_id"].append(_video_id(video) if video_id is None else int(video_id))
        row["source_index"].append(index)
        row["has_responses"].append(has_responses)
        row["video_scale"].append(scale)
        row["video_offset"].append(offset)
        self._samples += t

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._finalize()
        finally:
            if self._tmp is not None and self._tmp.exists():
                shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def _finalize(self) -> None:
        trials = {k: np.asarray(v) for k, v in self._trials.items()}
        if not len(trials["start"]):
            raise UserError(f"session {self.name}: no trials were added; expected at least one")
        if len(np.unique(trials["source_index"])) != len(trials["source_index"]):
            raise UserError(f"session {self.name}: source indices repeat; expected one trial per source index")
        trials["tier"] = trials["tier"].astype(str)
        for array in self._arrays.values():
            array.close()
        stats = {f"{group}/{key}": value for group, moments in self._stats.items()
                 for key, value in moments.result().items()}
        _save_npz(self._tmp / "trials.npz", trials)
        _save_npz(self._tmp / "neurons.npz", {"unit_ids": self.unit_ids, "coordinates": self.coordinates})
        _save_npz(self._tmp / "stats.npz", stats)

        n_response_samples = int((trials["stop"] - trials["start"])[trials["has_responses"]].sum())
        arrays = {field: {"path": _array_path(field), "shape": [self._samples, *a.row_shape], "dtype": a.dtype.name}
                  for field, a in self._arrays.items()}
        checksums = {f"{spec['path']}/zarr.json": sha256_file(self._tmp / spec["path"] / "zarr.json")
                     for spec in arrays.values()}
        checksums.update({p: sha256_file(self._tmp / p) for p in ("trials.npz", "neurons.npz", "stats.npz")})
        # Every shard file too, so `data check` names any flipped or truncated byte; reads pay nothing for it (a
        # crc32c per chunk, verified by tensorstore on every read, halved window reads at 8,000 neurons).
        for spec in arrays.values():
            for shard in sorted(p for p in (self._tmp / spec["path"]).rglob("*") if p.is_file()):
                if shard.name != "zarr.json":
                    checksums[str(shard.relative_to(self._tmp))] = sha256_file(shard)
        tiers, counts = np.unique(trials["tier"], return_counts=True)
        manifest = {
            "format": SESSION_FORMAT, "version": FORMAT_VERSION, "name": self.name, "animal": self.animal,
            "n_neurons": self.n_neurons, "n_samples": self._samples, "n_trials": len(trials["start"]),
            "n_response_samples": n_response_samples, "frame_shape": list(self.frame_shape),
            "behavior_channels": self.behavior_channels, "sampling_rate": self.sampling_rate,
            "response_dtype": self.response_dtype, "extra_fields": self.extra_fields, "arrays": arrays,
            "tiers": dict(zip(tiers.tolist(), counts.tolist())),
            "video_encoding": {"exact_trials": int(((trials["video_scale"] == 1) & (trials["video_offset"] == 0)).sum()),
                               "note": "original = video_scale * stored + video_offset, per trial (trials.npz)"},
            "stats_tier": "train", "provenance": self.provenance, "checksums": checksums,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        write_json_atomic(self._tmp / "manifest.json", manifest)
        self._publish(manifest)

    def _publish(self, manifest: dict) -> None:
        final = self.root / self.name
        summary = {"animal": self.animal, "n_neurons": self.n_neurons, "n_samples": manifest["n_samples"],
                   "n_trials": manifest["n_trials"], "sampling_rate": self.sampling_rate,
                   "neural_tokens": self.n_neurons * manifest["n_response_samples"],
                   "manifest_sha256": sha256_file(self._tmp / "manifest.json")}
        with _catalog_lock(self.root):
            catalog = load_catalog(self.root)
            if self.name in catalog["sessions"] and not self.replace and final.exists():
                raise UserError(f"{final}: session was added by another writer meanwhile")
            trash = None
            if final.exists():  # a replaced session, or a complete directory the catalog never recorded
                trash = self.root / f"{TRASH_PREFIX}{secrets.token_hex(_TOKEN_LEN // 2)}-{self.name}"
                os.rename(final, trash)
            os.rename(self._tmp, final)
            catalog["sessions"][self.name] = summary
            _write_catalog(self.root, catalog)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)


def _array_path(field: str) -> str:
    return field if field in CORE_FIELDS else f"extra/{field}"


def verify_checksums(session_dir: Path, manifest: dict) -> list[str]:
    """Problems (one string each, naming the file) where a file's sha256 differs from the manifest's record."""
    problems = []
    checksums = manifest.get("checksums")
    if not isinstance(checksums, dict) or not checksums:
        return [f"{session_dir / 'manifest.json'}: no 'checksums' object"]
    for rel, expected in sorted(checksums.items()):
        path = session_dir / rel
        if not path.is_file():
            problems.append(f"{path}: missing (listed in the manifest)")
        elif sha256_file(path) != expected:
            problems.append(f"{path}: checksum mismatch; the file was modified or corrupted after the import")
    return problems


class Session:
    """Read access to one session: metadata, trial table, neurons, train-tier statistics, and sample windows."""

    def __init__(self, root, name: str, manifest_sha256: str | None = None):
        self.root, self.name = Path(root), name
        self.path = self.root / name
        self.manifest = read_json(self.path / "manifest.json", "a session manifest")
        if manifest_sha256 is not None and sha256_file(self.path / "manifest.json") != manifest_sha256:
            raise UserError(f"{self.path / 'manifest.json'}: checksum differs from catalog.json; the manifest was "
                            "modified or corrupted")
        if self.manifest.get("format") != SESSION_FORMAT:
            raise UserError(f"{self.path / 'manifest.json'}: expected format '{SESSION_FORMAT}'")
        problems = verify_checksums(self.path, self.manifest)
        if problems:
            raise UserError(problems[0])
        m = self.manifest
        self.animal = m["animal"]
        self.n_neurons, self.n_samples, self.n_trials = m["n_neurons"], m["n_samples"], m["n_trials"]
        self.frame_shape = tuple(m["frame_shape"])
        self.behavior_channels = list(m["behavior_channels"])
        self.sampling_rate = float(m["sampling_rate"])
        self.extra_fields = dict(m["extra_fields"])
        self.trials = load_npz(self.path / "trials.npz")
        self.neurons = load_npz(self.path / "neurons.npz")
        self.stats: dict[str, dict[str, np.ndarray]] = {}
        for key, value in load_npz(self.path / "stats.npz").items():
            group, stat = key.split("/", 1)
            self.stats.setdefault(group, {})[stat] = value
        self._row_of_source = {int(s): r for r, s in enumerate(self.trials["source_index"])}
        # No tensorstore chunk cache: for random windows over stores larger than RAM it measured slower than relying
        # on the OS page cache (benchmarks/import_and_read.py).
        self._arrays = {}
        for field, spec in m["arrays"].items():
            zpath = self.path / spec["path"]
            try:
                array = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(zpath)}},
                                open=True).result()
            except Exception as err:  # tensorstore reports format problems as ValueError or its own status errors
                raise UserError(f"{zpath / 'zarr.json'}: cannot open zarr3 array ({err})") from None
            if list(array.shape) != spec["shape"] or array.dtype.name != spec["dtype"]:
                raise UserError(f"{zpath / 'zarr.json'}: shape {list(array.shape)} {array.dtype.name}; manifest "
                                f"expects {spec['shape']} {spec['dtype']}")
            self._arrays[field] = array

    def __reduce__(self):  # worker processes reopen the session instead of pickling tensorstore handles
        return (Session, (self.root, self.name))

    def read_async(self, start: int, stop: int, fields=CORE_FIELDS) -> dict:
        """Tensorstore futures for samples [start, stop): lets a caller issue many window reads before awaiting any."""
        if not 0 <= start < stop <= self.n_samples:
            raise IndexError(f"session {self.name}: window [{start}, {stop}) outside [0, {self.n_samples})")
        return {f: self._arrays[f][start:stop].read() for f in fields}

    def read(self, start: int, stop: int, neurons=None, fields=CORE_FIELDS) -> dict[str, np.ndarray]:
        """Arrays for samples [start, stop) in stored dtypes (responses float32/float16, video uint8, others float32).

        `neurons`: optional integer index array selecting response columns. Fields may include extra fields."""
        out = {f: fut.result() for f, fut in self.read_async(start, stop, fields).items()}
        if neurons is not None and "responses" in out:
            out["responses"] = out["responses"][:, np.asarray(neurons)]
        return out

    def row_of_source(self, i: int) -> int:
        """The row of self.trials of the trial with source index `i`."""
        if int(i) not in self._row_of_source:
            raise IndexError(f"session {self.name}: no trial with source index {i}")
        return self._row_of_source[int(i)]

    def trial(self, i: int) -> dict:
        """The trial with source index `i`, in original units: responses (T, N) float32 (NaN if the trial has none),
        video (T, H, W) (uint8 if stored exactly, else float32 de-quantised), behavior (T, C), pupil_center (T, 2),
        extra fields, and tier."""
        r = self.row_of_source(i)
        t = self.trials
        out = self.read(int(t["start"][r]), int(t["stop"][r]), fields=tuple(self._arrays))
        out["responses"] = out["responses"].astype(np.float32)
        scale, offset = float(t["video_scale"][r]), float(t["video_offset"][r])
        if (scale, offset) != (1.0, 0.0):
            out["video"] = (out["video"] * scale + offset).astype(np.float32)
        out["tier"] = str(t["tier"][r])
        return out


class Store:
    """A directory of sessions listed in catalog.json."""

    def __init__(self, root):
        self.root = Path(root)
        self.catalog = load_catalog(self.root)

    @property
    def sessions(self) -> list[str]:
        return sorted(self.catalog["sessions"])

    @property
    def total_neural_tokens(self) -> int:
        return sum(int(s["neural_tokens"]) for s in self.catalog["sessions"].values())

    def session(self, name: str) -> Session:
        """Opens session `name`, verifying its manifest and checksums (UserError naming the file if they fail)."""
        if name not in self.catalog["sessions"]:
            raise UserError(f"{self.root}: no session {name!r}; sessions are {self.sessions}")
        return Session(self.root, name, self.catalog["sessions"][name].get("manifest_sha256"))


def open_store(path) -> Store:
    """Opens the store at `path`; UserError naming the path if it is not a store."""
    root = Path(path)
    if not root.is_dir():
        raise UserError(f"{root}: not a directory; expected a session store")
    return Store(root)
