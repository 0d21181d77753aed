"""`omnimouse demo`: its command-line arguments and their checks; omnimouse_jax.demo does the work."""
from __future__ import annotations

from omnimouse_jax.errors import UserError, check_directory_target


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="results/demo", help="output directory (default results/demo)")
    parser.add_argument("--steps", type=int, default=60, help="training steps per run (default 60: the CPU budget)")
    parser.add_argument("--processes", type=int, default=2, help="runs trained at a time (default 2)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the fits (default 1000)")
    parser.add_argument("--mice", type=int, default=3, help="digital mice to synthesize (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the digital mice (default 0)")


def run(args) -> int:
    from omnimouse_jax import demo

    if args.steps < 1 or args.processes < 1 or args.mice < 1 or args.bootstrap < 0:
        raise UserError("--steps, --processes and --mice must be positive and --bootstrap non-negative")
    check_directory_target(args.out, "--out")
    return demo.run_demo(args.out, steps=args.steps, processes=args.processes, bootstrap=args.bootstrap,
                         mice=args.mice, seed=args.seed)
