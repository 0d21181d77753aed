"""Errors that reach the user as one line and a non-zero exit code."""
import os
from pathlib import Path


class UserError(Exception):
    """Bad usage or bad input: the message names the file or key and what was expected. Exit code 2."""

    exit_code = 2


def _nearest_existing(path):
    """`path` or its closest ancestor that exists."""
    return next(p for p in [path, *path.parents] if p.exists())


def check_directory_target(path, flag: str) -> None:
    """UserError unless `path` is a directory or does not exist yet (it will be created), in a place this process can
    write: a file there, or a read-only parent, would otherwise fail later as a raw OSError, after the work."""
    path = Path(path)
    existing = _nearest_existing(path)
    if not existing.is_dir():
        raise UserError(f"{flag} {path}: {existing} is a file; expected a directory (or a new path)")
    _require_writable(existing, flag, path)


def _require_writable(existing, flag: str, path) -> None:
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: {existing} is not writable")


def check_writable_file_target(path, flag: str) -> None:
    """UserError unless a file can be written at `path`: its directory exists (or can be created) and is writable,
    and `path` itself is not a directory; checked before the work whose result goes there."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path}: is a directory; expected a file path")
    existing = _nearest_existing(path.parent)
    if not existing.is_dir():
        raise UserError(f"{flag} {path}: {existing} is a file; expected a directory (or a new path)")
    _require_writable(existing, flag, path)
