"""`omnimouse fit`: its command-line arguments and their checks; omnimouse_jax.scaling.fit does the work."""
from __future__ import annotations

import argparse
import json

from omnimouse_jax.errors import UserError
from omnimouse_jax.scaling.columns import FORM_NAMES, read_columns


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--csv", required=True, metavar="F", help="CSV file with a header row")
    parser.add_argument("--form", required=True, choices=FORM_NAMES,
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
