"""Which sessions a model knows, and where each session's neurons sit in the one global neuron-embedding table.

Session k owns table rows [row_offsets[k], row_offsets[k] + n_neurons[k]). The layout is saved with every checkpoint so
that a restored model reads the same rows, and fine-tuning appends new sessions after the existing rows.
"""
from __future__ import annotations

import dataclasses
import hashlib

from omnimouse_jax.errors import UserError


SHARE_PREFIX = "share:"


def session_order(names) -> list[str]:
    """The store's sessions in a fixed pseudo-random order (by the sha256 of each name): independent of the store's
    listing and of which other sessions it holds, so adding sessions to a store keeps every share nested."""
    return sorted(names, key=lambda name: hashlib.sha256(name.encode()).hexdigest())


def session_share(names, spec: str) -> list[str]:
    """config.data.sessions = "share:F" (0 < F <= 1): the first max(1, F x sessions rounded half up) sessions of
    `session_order`, so a smaller share is always part of a larger one (the paper's data scaling adds sessions)."""
    text = spec[len(SHARE_PREFIX):]
    try:
        share = float(text)
    except ValueError:
        share = float("nan")
    if not 0 < share <= 1:
        raise UserError(f"config.data.sessions={spec!r}: expected share:F with 0 < F <= 1, e.g. share:0.25")
    ordered = session_order(names)
    return ordered[:max(1, int(share * len(ordered) + 0.5))]


@dataclasses.dataclass(frozen=True)
class SessionLayout:
    names: tuple[str, ...]
    animals: tuple[str, ...]  # one per session
    n_neurons: tuple[int, ...]

    def __post_init__(self):
        if not (len(self.names) == len(self.animals) == len(self.n_neurons)):
            raise ValueError("SessionLayout: names, animals and n_neurons must have one entry per session")
        if len(set(self.names)) != len(self.names):
            raise UserError(f"sessions {list(self.names)}: a session is listed twice")

    @classmethod
    def from_store(cls, store, names=None) -> "SessionLayout":
        """The layout of `names`: a list of session names, "all" (the default: every session, in the store's order)
        or "share:F" (`session_share`)."""
        if isinstance(names, str) and names.startswith(SHARE_PREFIX):
            names = session_share(store.sessions, names)
        names = list(store.sessions if names in (None, "all") else names)
        missing = [n for n in names if n not in store.sessions]
        if missing:
            raise UserError(f"config.data.sessions: {missing} not in store {store.root}; it has {store.sessions}")
        if not names:
            raise UserError(f"config.data.sessions: no sessions selected from store {store.root}")
        entries = store.catalog["sessions"]
        return cls(tuple(names), tuple(entries[n]["animal"] for n in names),
                   tuple(int(entries[n]["n_neurons"]) for n in names))

    @property
    def num_sessions(self) -> int:
        return len(self.names)

    @property
    def animal_names(self) -> tuple[str, ...]:
        """Distinct animals in order of first appearance: the rows of the animal-embedding table."""
        return tuple(dict.fromkeys(self.animals))

    @property
    def num_animals(self) -> int:
        return len(self.animal_names)

    @property
    def row_offsets(self) -> tuple[int, ...]:
        offsets, total = [], 0
        for n in self.n_neurons:
            offsets.append(total)
            total += n
        return tuple(offsets)

    @property
    def num_neuron_rows(self) -> int:
        return sum(self.n_neurons)

    def session_index(self, name: str) -> int:
        return self.names.index(name)

    def animal_index(self, name: str) -> int:
        return self.animal_names.index(self.animals[self.session_index(name)])

    def extend(self, other: "SessionLayout") -> "SessionLayout":
        """This layout with `other`'s sessions appended (existing rows keep their positions)."""
        clash = sorted(set(self.names) & set(other.names))
        if clash:
            raise UserError(f"sessions {clash}: already in the pretrained model's layout")
        return SessionLayout(self.names + other.names, self.animals + other.animals, self.n_neurons + other.n_neurons)

    def to_dict(self) -> dict:
        return {"names": list(self.names), "animals": list(self.animals), "n_neurons": list(self.n_neurons)}

    @classmethod
    def from_dict(cls, d: dict) -> "SessionLayout":
        return cls(tuple(d["names"]), tuple(d["animals"]), tuple(int(n) for n in d["n_neurons"]))
