"""`omnimouse data import-nwb`: its command-line arguments and their checks; omnimouse_jax.data.nwb does the work."""
from __future__ import annotations

import argparse

from omnimouse_jax.data import nwb
from omnimouse_jax.data.importing import INTERPOLATIONS
from omnimouse_jax.errors import check_directory_target


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="NWB file, or a folder of *.nwb files")
    parser.add_argument("--out", required=True, help="session store directory (created if missing)")
    parser.add_argument("--series", action="append", metavar="NAME",
                        help="response container or RoiResponseSeries (path components, e.g. DfOverF or "
                             "ophys/Fluorescence/plane0); repeat to concatenate (default: the one DfOverF, else the "
                             "one Fluorescence container)")
    parser.add_argument("--stimulus", action="append", metavar="NAME",
                        help="ImageSeries/OpticalSeries/IndexSeries of presented frames; repeat to merge (default: the "
                             "one in stimulus, else the one OpticalSeries in acquisition)")
    parser.add_argument("--running", metavar="NAME", help="running speed TimeSeries (default: the one named "
                                                          f"{' or '.join(nwb.RUNNING_NAMES)})")
    parser.add_argument("--pupil", metavar="NAME", help="pupil area/diameter TimeSeries (default: the one in "
                                                        "PupilTracking)")
    parser.add_argument("--pupil-position", metavar="NAME",
                        help="pupil position SpatialSeries, x and y columns (default: the one in EyeTracking)")
    parser.add_argument("--trials", choices=nwb.TRIAL_SOURCES, default="auto",
                        help="trial source (default auto: the trials table, else epochs, else stimulus blocks)")
    parser.add_argument("--interpolation", choices=INTERPOLATIONS, default="nearest",
                        help="resampling onto the 30 Hz grid (default nearest: exact source values; linear blends the "
                             "two bracketing samples)")
    parser.add_argument("--replace", action="store_true", help="rewrite sessions already in the store (default: skip)")


def run(args: argparse.Namespace) -> int:
    check_directory_target(args.out, "--out")
    nwb.import_nwb(args.files, args.out, series=args.series, stimulus=args.stimulus, running=args.running,
                   pupil=args.pupil, pupil_position=args.pupil_position, trials=args.trials,
                   interpolation=args.interpolation, replace=args.replace, log=lambda line: print(line, flush=True))
    return 0
