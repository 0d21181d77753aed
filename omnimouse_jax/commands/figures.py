"""`omnimouse figures`: its command-line arguments and their checks; omnimouse_jax.scaling.figures does the work."""
from __future__ import annotations

import argparse

from omnimouse_jax.errors import UserError, check_directory_target
from omnimouse_jax.scaling.columns import FORM_CHOICES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sweep", required=True, metavar="S", help="sweep directory holding runs.csv")
    parser.add_argument("--out", required=True, metavar="DIR", help="where figures, scaling.md and fits.json go")
    parser.add_argument("--y", default="val_loss", help="the loss column to fit and plot (default val_loss)")
    parser.add_argument("--form", choices=FORM_CHOICES, default="auto",
                        help="auto: every fit the sweep supports, noting the rest; chinchilla or power: require that "
                             "fit and fail if the sweep has too few finished runs for it")
    parser.add_argument("--bootstrap", type=int, default=1000, metavar="B",
                        help="bootstrap resamples of the runs for the intervals and bands (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")


def run(args: argparse.Namespace) -> int:
    from omnimouse_jax.scaling import figures

    if args.bootstrap < 0:
        raise UserError(f"--bootstrap must be 0 or more, got {args.bootstrap}")
    check_directory_target(args.out, "--out")
    result = figures.make_figures(args.sweep, args.out, y=args.y, form=args.form, bootstrap=args.bootstrap,
                                  seed=args.seed)
    print(f"wrote {len(result['figures'])} figure files, {result['table']} and {result['fits_json']}")
    for note in result["fits"].notes:
        print(f"skipped: {note}")
    return 0
