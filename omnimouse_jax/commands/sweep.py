"""`omnimouse sweep`: its command-line arguments and their checks; omnimouse_jax.scaling.sweep does the work."""
from __future__ import annotations

import argparse
import dataclasses
import sys

from omnimouse_jax.errors import check_directory_target


ACCEPTS_CONFIG_OVERRIDES = True
LAUNCHERS = ("local", "slurm", "tpu", "print")  # local and print run here; slurm and tpu write submission scripts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="FILE[:ARG]",
                        help="sweep file with get_sweep(arg), e.g. experiments/sweeps/scaling_demo.py")
    parser.add_argument("--workdir", required=True, metavar="S", help="sweep directory: runs/, status.json, runs.csv")
    parser.add_argument("--launcher", choices=LAUNCHERS, default="local",
                        help="local: run here (default); slurm: write a SLURM array submission; tpu: write a TPU-pod "
                             "submission; print: print the commands")
    parser.add_argument("--processes", type=int, default=1, metavar="N",
                        help="local: runs at a time, each its own process (default 1)")
    parser.add_argument("--no-evaluate", action="store_true", help="train only; skip `omnimouse evaluate` per run")
    parser.add_argument("--collect", action="store_true", help="launch nothing; only (re)collect S/runs.csv")
    parser.epilog = "Overrides --config.a.b=v (e.g. --config.data.root=STORE) apply to every run."


def run(args: argparse.Namespace) -> int:
    from omnimouse_jax.scaling import sweep as sweep_lib

    evaluate = False if args.no_evaluate else None
    check_directory_target(args.workdir, "--workdir")
    sweep = sweep_lib.load_sweep(args.config, args.workdir, getattr(args, "config_overrides", []), evaluate=evaluate)
    if sweep.evaluate and not sweep_lib.evaluation_available():
        print("note: omnimouse evaluate is not available; runs are trained only", file=sys.stderr)
        sweep = dataclasses.replace(sweep, evaluate=False)
    if args.launcher == "print":
        for run_ in sweep_lib.pending_runs(sweep):
            print(run_.shell_command(sweep.evaluate))
        return 0
    if not args.collect:
        if args.launcher == "local":
            status = sweep_lib.run_local(sweep, processes=args.processes, log=lambda m: print(m, flush=True))
            failed = [r.name for r in sweep.runs if status.get(r.name, {}).get("state") != "finished"]
        else:
            paths = sweep_lib.write_cluster_scripts(sweep, args.launcher)
            print(f"wrote {paths[0]} and {paths[1]}; run {paths[1]} to submit")
            failed = []
    rows = sweep_lib.collect(sweep)
    finished = sum(r["status"] == "finished" for r in rows)
    print(f"{sweep.csv_path}: {len(rows)} runs, {finished} finished")
    if not args.collect and args.launcher == "local" and failed:
        print(f"not finished: {', '.join(failed)}; see {sweep.status_path} (re-run the sweep to retry them)")
        return 1
    return 0
