"""`omnimouse data import-experanto`: its command-line arguments and their checks;
omnimouse_jax.data.experanto does the work."""
from __future__ import annotations

import argparse

from omnimouse_jax.data import experanto
from omnimouse_jax.data.importing import INTERPOLATIONS
from omnimouse_jax.errors import check_directory_target


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", nargs="+", help="experanto session folder (screen/, responses/, eye_tracker/, "
                                               "treadmill/) or a folder holding several")
    parser.add_argument("--out", required=True, help="session store directory (created if missing)")
    parser.add_argument("--interpolation", choices=INTERPOLATIONS, default="nearest",
                        help="resampling onto the 30 Hz grid (default nearest: exact source values, as the paper's "
                             "loader; linear blends the two bracketing samples)")
    parser.add_argument("--per-clip", action="store_true",
                        help="one trial per video or image clip, blanks not stored (the behaviour before 2026-12-07); "
                             "default: each run of back-to-back train clips and blanks is one continuous trial, so "
                             "training windows span clip boundaries as in the paper's loader")
    parser.add_argument("--replace", action="store_true",
                        help="rewrite sessions already in the store (default: skip them)")


def run(args: argparse.Namespace) -> int:
    check_directory_target(args.out, "--out")
    experanto.import_experanto(args.src, args.out, interpolation=args.interpolation, replace=args.replace,
                               per_clip=args.per_clip,
                               log=lambda line: print(line, flush=True))
    return 0
