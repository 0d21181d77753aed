"""`omnimouse fit`: fit a scaling law to columns of a CSV and print the estimates with bootstrap intervals.

    omnimouse fit --csv tests/data/chinchilla_points.csv --form chinchilla --x params,tokens --y loss \\
        --exclude-top-loss 5 [--bootstrap 1000] [--budget 5.76e23] [--json]
"""
from __future__ import annotations

import argparse
import csv
import json
import sys

from omnimouse_jax.errors import UserError

_FORMS = ("chinchilla", "power", "bounded", "bnsl", "loglinear")  # kept equal to fit.FORMS (tested); no jax at --help


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--csv", required=True, metavar="F", help="CSV file with a header row")
    parser.add_argument("--form", required=True, choices=_FORMS,
                        help="chinchilla: E + A/N^alpha + B/D^beta; power: E + A x^-alpha; bounded: S_max - A x^-alpha "
                             "for scores below 1; bnsl: broken power law with one break; loglinear: a + b log10(x)")
    parser.add_argument("--x", required=True, metavar="COLS",
                        help="x column(s), comma-separated: two (model size, data size) for chinchilla, else one")
    parser.add_argument("--y", required=True, metavar="COL", help="the column to fit (loss, or a score for bounded)")
    parser.add_argument("--exclude-top-loss", type=int, default=0, metavar="K",
                        help="drop the K points with the highest loss before fitting (default 0)")
    parser.add_argument("--bootstrap", type=int, default=1000, metavar="B",
                        help="bootstrap resamples of the points for the intervals (default 1000; 0 skips them)")
    parser.add_argument("--holdout-top", type=int, default=None, metavar="K",
                        help="held-out error on the runs at the K largest values of the first x column "
                             "(default: a tenth of the distinct values; 0 skips)")
    parser.add_argument("--budget", type=float, default=None, metavar="FLOPS",
                        help="chinchilla: also report compute-optimal N and D, with intervals, for this budget (C = 6 N D)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of a summary")


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


def run(args: argparse.Namespace) -> int:
    from omnimouse_jax.scaling.fit import checkable_points, fit_law

    x_names = [c.strip() for c in args.x.split(",") if c.strip()]
    if args.bootstrap < 0:
        raise UserError(f"--bootstrap must be 0 or more, got {args.bootstrap}")
    columns = read_columns(args.csv, list(dict.fromkeys(x_names + [args.y])))
    try:
        result = fit_law({n: columns[n] for n in x_names}, columns[args.y], args.form, bootstrap=args.bootstrap,
                         seed=args.seed, holdout_top=args.holdout_top, exclude_top_loss=args.exclude_top_loss,
                         budget_flops=args.budget, y_name=args.y, min_points=checkable_points(args.form))
    except UserError as err:
        raise UserError(f"{args.csv}: {err}") from None
    print(json.dumps(result.to_json(), indent=2) if args.json else result.summary())
    return 0
