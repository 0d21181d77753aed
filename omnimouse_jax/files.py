"""Atomic file writes: a reader (or a resumed run) sees the old file or the whole new one, never part of it.

Every write goes to a temporary name in the target's folder (created if missing), is flushed and fsynced, and is
then renamed over the target; on an error the temporary file is removed and the target is left as it was.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


class AtomicFile:
    """An open temporary file that becomes `path` on commit() and disappears on discard()."""

    def __init__(self, path: Path | str, mode: str = "w"):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{secrets.token_hex(6)}")
        self.file: IO[Any] = open(self.tmp, mode)

    def commit(self) -> None:
        if not self.file.closed:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
        else:  # a writer that closes the file it was given (pyarrow's): sync it by name
            with open(self.tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_open(path: Path | str, mode: str = "w") -> Iterator[IO[Any]]:
    """`with atomic_open(path) as f:` writes f to `path` when the block ends without an error."""
    out = AtomicFile(path, mode)
    try:
        yield out.file
    except BaseException:
        out.discard()
        raise
    out.commit()


def write_text_atomic(path: Path | str, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def write_bytes_atomic(path: Path | str, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_json_atomic(path: Path | str, obj) -> None:
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
