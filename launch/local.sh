#!/usr/bin/env bash
# Runs a sweep on this machine and draws its figures: the local counterpart of slurm.sbatch and tpu_pod.sh.
#
#   launch/local.sh SWEEP_CONFIG SWEEP_DIR [PROCESSES] [--config.a.b=v ...]
#   launch/local.sh experiments/sweeps/scaling_demo.py results/sweep 2 --config.data.root=data/digital_mice
#
# PROCESSES runs go at once, each its own process (default 1); all share the compilation cache SWEEP_DIR/compile_cache.
# Safe to re-run: finished runs are skipped, unfinished ones resume, failed ones are retried. Figures are drawn even
# when some runs failed (from the finished ones). OMNIMOUSE overrides the command (default: omnimouse on PATH).
set -uo pipefail

CONFIG=${1:?usage: launch/local.sh SWEEP_CONFIG SWEEP_DIR [PROCESSES] [--config.a.b=v ...]}
SWEEP_DIR=${2:?usage: launch/local.sh SWEEP_CONFIG SWEEP_DIR [PROCESSES] [--config.a.b=v ...]}
PROCESSES=${3:-1}
shift $(( $# < 3 ? $# : 3 ))
OMNIMOUSE=${OMNIMOUSE:-omnimouse}

$OMNIMOUSE sweep --config "$CONFIG" --workdir "$SWEEP_DIR" --launcher local --processes "$PROCESSES" "$@"
status=$?
$OMNIMOUSE figures --sweep "$SWEEP_DIR" --out "$SWEEP_DIR/figures" || status=$?
exit $status
