"""`omnimouse data import-sensorium`: its command-line arguments and their checks;
omnimouse_jax.data.sensorium does the work."""
from __future__ import annotations

import argparse

from omnimouse_jax.data import sensorium
from omnimouse_jax.errors import check_directory_target


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", nargs="+", help="session folder, .zip of one, or folder holding several")
    parser.add_argument("--out", required=True, help="session store directory (created if missing)")
    parser.add_argument("--replace", action="store_true",
                        help="rewrite sessions already in the store (default: skip them)")


def run(args: argparse.Namespace) -> int:
    check_directory_target(args.out, "--out")
    sensorium.import_sensorium(args.src, args.out, replace=args.replace, log=lambda line: print(line, flush=True))
    return 0
