#!/usr/bin/env bash
# P training processes on this machine, joined by jax.distributed, each with its own fake CPU devices: a
# multi-host run in miniature, for testing the multi-process paths (data host slices, gloo collectives, checkpoints
# written by several processes) without a cluster.
#
#   launch/local_multiprocess.sh P -- <omnimouse train arguments>
#   launch/local_multiprocess.sh 2 -- --config experiments/configs/omnimouse.py:size=test --workdir W
#
# Environment: DEVICES_PER_PROCESS (default 4), COORDINATOR_PORT (default: a free port), PYTHON (default python3),
# INIT_TIMEOUT seconds (default 120), STOP_GRACE seconds (default 60). Each process's output lines are prefixed with
# [process I]. If one process fails, the others are sent SIGTERM (a training process saves a checkpoint and exits),
# then SIGKILL after STOP_GRACE seconds (one blocked in a collective with the failed process never reaches its
# handler), and the launcher exits with the first failing status.
set -euo pipefail

usage() { echo "usage: $0 P -- <omnimouse train arguments>" >&2; exit 2; }
[[ $# -ge 2 && $1 =~ ^[1-9][0-9]*$ && $2 == "--" ]] || usage
num_processes=$1
shift 2

python=${PYTHON:-python3}
devices=${DEVICES_PER_PROCESS:-4}
timeout=${INIT_TIMEOUT:-120}
port=${COORDINATOR_PORT:-$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}

pids=()
declare -A index_of
grace=${STOP_GRACE:-60}
killer=
stop_all() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  (sleep "$grace"; for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done) &
  killer=$!
}
trap 'stop_all; exit 130' INT TERM

for ((i = 0; i < num_processes; i++)); do
  JAX_PLATFORMS=cpu XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$devices" \
    "$python" -u -m omnimouse_jax.cli train "$@" --coordinator "localhost:$port" --num-processes "$num_processes" \
    --process-id "$i" --init-timeout "$timeout" \
    > >(sed -u "s/^/[process $i] /") 2> >(sed -u "s/^/[process $i] /" >&2) &
  pids+=($!)
  index_of[$!]=$i
done

# Wait for the processes one by one; on a failure stop the rest instead of leaving them blocked in a collective.
status=0
running=("${pids[@]}")
while ((${#running[@]} > 0)); do
  code=0
  wait -n -p finished "${running[@]}" || code=$?
  left=()
  for pid in "${running[@]}"; do [[ $pid == "$finished" ]] || left+=("$pid"); done
  running=("${left[@]}")
  if ((code != 0 && status == 0)); then
    status=$code
    echo "local_multiprocess: process ${index_of[$finished]} exited with status $code; stopping the others" >&2
    stop_all
  fi
done
if [[ -n $killer ]]; then kill "$killer" 2>/dev/null || true; fi  # every process is gone
wait  # the output filters
exit "$status"
