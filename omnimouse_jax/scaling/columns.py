"""A CSV's numeric columns, and the names of the fitted forms: what `omnimouse fit` (omnimouse_jax/commands/fit.py)
needs before it imports jax, for --help and for its input checks, and the forms `omnimouse figures` offers. The fit
itself is omnimouse_jax/scaling/fit.py, the figures omnimouse_jax/scaling/figures.py.

    omnimouse fit --csv tests/data/chinchilla_points.csv --form chinchilla --x params,tokens --y loss \\
        --exclude-top-loss 5 [--bootstrap 1000] [--budget 5.76e23] [--json]
"""
from __future__ import annotations

import csv
import sys

from omnimouse_jax.errors import UserError

FORM_NAMES = ("chinchilla", "power", "bounded", "bnsl", "loglinear")  # kept equal to fit.FORMS (tested); no jax at --help
FORM_CHOICES = ("auto", "chinchilla", "power")  # `omnimouse figures --form`: every fit the sweep supports, or one


def read_columns(path: str, names: list[str]) -> dict[str, list[float]]:
    """Reads the named numeric columns of a CSV; UserError naming the file, row and column on any problem."""
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            missing = [n for n in names if n not in header]
            if missing:
                raise UserError(f"{path}: no column {missing[0]!r}; the header has {', '.join(header) or 'nothing'}")
            columns: dict[str, list[float]] = {n: [] for n in names}
            skipped = 0
            for row_number, row in enumerate(reader, start=1):
                texts = {n: (row[n] or "").strip() for n in names}
                if not all(texts.values()):  # e.g. a sweep's unfinished or failed run: no value to fit
                    skipped += 1
                    continue
                for n, text in texts.items():
                    try:
                        columns[n].append(float(text))
                    except ValueError:
                        raise UserError(f"{path}: row {row_number}, column {n!r}: {text!r} is not a number") from None
            if skipped:
                print(f"{path}: skipped {skipped} rows with an empty {'/'.join(names)} cell (unfinished runs)",
                      file=sys.stderr)
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None
    return columns
