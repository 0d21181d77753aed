"""`omnimouse data check`: its command-line arguments and their checks; omnimouse_jax.data.validate does the work."""
from __future__ import annotations

import argparse

from omnimouse_jax.data import validate


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store", help="session store directory")


def run(args: argparse.Namespace) -> int:
    problems, notes = validate.check_store(args.store)
    for note in notes:
        print(f"note: {note}")
    for problem in problems:
        print(problem)
    if problems:
        print(f"{args.store}: {len(problems)} problem(s); the store is not sound")
        return 2
    print(f"{args.store}: sound")
    return 0
