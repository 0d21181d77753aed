"""What the experanto and NWB importers share: the skip check, covered runs, pieces of a source trial, the pupil
derivative.

A source trial (an experanto clip, an NWB trial) whose samples are not all covered by every device is stored as one
store trial per covered run: the first piece keeps the source's index, later pieces take fresh indices after every
source index, and the store's provenance records where each came from.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from omnimouse_jax.data.schema import BEHAVIOR_CHANNELS
from omnimouse_jax.data.sensorium import SAMPLING_RATE
from omnimouse_jax.data.store import session_exists
from omnimouse_jax.errors import UserError

INTERPOLATIONS = ("nearest", "linear")
PUPIL_DILATION = BEHAVIOR_CHANNELS.index("pupil_dilation")
PUPIL_DERIVATIVE = BEHAVIOR_CHANNELS.index("pupil_dilation_derivative")


def should_import(out, name: str, interpolation: str, replace: bool, log) -> bool:
    """False, and says so, when session `name` is already in store `out` and `replace` is off; UserError for an
    unknown interpolation."""
    if interpolation not in INTERPOLATIONS:
        raise UserError(f"interpolation {interpolation!r}; expected one of {INTERPOLATIONS}")
    if not replace and session_exists(out, name):
        log(f"{name}: already in {out}, skipped (use --replace to rewrite it)")
        return False
    return True


def check_sample_times(t: np.ndarray, where: str) -> np.ndarray:
    """`t` if finite and strictly increasing; else UserError naming `where` and the first bad index."""
    if not np.isfinite(t).all():
        raise UserError(f"{where}: timestamps have NaN or infinite values; expected finite times in seconds")
    bad = np.flatnonzero(np.diff(t) <= 0)
    if len(bad):
        raise UserError(f"{where}: timestamps not increasing at index {bad[0] + 1} ({float(t[bad[0]])!r} then "
                        f"{float(t[bad[0] + 1])!r}); expected strictly increasing times")
    return t


def covered_runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) of each run of True in `mask`."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def with_pupil_derivative(behavior_SxC: np.ndarray) -> np.ndarray:
    """A copy whose derivative column is the pupil dilation's, per second, computed within this piece only (so it
    never crosses a trial boundary)."""
    piece = np.array(behavior_SxC, np.float32)
    dilation = piece[:, PUPIL_DILATION]
    piece[:, PUPIL_DERIVATIVE] = np.gradient(dilation) * SAMPLING_RATE if len(piece) > 1 else 0.0
    return piece


class Pieces:
    """Writes the covered runs of source trials as store trials and keeps the counts the import reports.

    `origin` names the source unit in the provenance ("clip", "trial"); `next_index` is one past the largest source
    index, where fresh indices for second and later pieces start."""

    def __init__(self, writer, next_index: int, origin: str):
        self.writer, self.next_index, self.origin = writer, next_index, origin
        self.extra: dict[str, dict] = {}  # fresh index -> {origin: source index, "first_sample": a}
        self.tiers: Counter = Counter()

    def add(self, source_index: int, piece: int, first_sample: int, tier: str, **trial) -> None:
        index = source_index
        if piece:
            index, self.next_index = self.next_index, self.next_index + 1
            self.extra[str(index)] = {self.origin: source_index, "first_sample": first_sample}
        self.writer.add_trial(tier=tier, source_index=index, **trial)
        self.tiers[tier] += 1
