#!/usr/bin/env bash
# Runs a sweep's runs one after another on a Cloud TPU VM pod slice, each on every host of the slice at once.
#
#   launch/tpu_pod.sh TPU_NAME ZONE COMMANDS [PROJECT_DIR]
#
# COMMANDS holds one shell command per run (`omnimouse sweep --launcher tpu` writes S/launch/commands.txt and
# S/launch/submit_tpu.sh, which calls this). PROJECT_DIR (default: this checkout's path) must hold the repository on
# every host, with the package installed, and S must be on storage all hosts share (e.g. a GCS FUSE mount or NFS).
# `omnimouse train` on each host joins the others itself (omnimouse_jax.parallel.distributed finds them from the TPU
# metadata). A run that fails or is preempted does not stop the others; re-run the sweep to
# retry it (it resumes from its last checkpoint). Set ACTIVATE to a command that prepares the environment on each
# host (default: source PROJECT_DIR/.venv/bin/activate if it exists).
set -uo pipefail

TPU_NAME=${1:?usage: launch/tpu_pod.sh TPU_NAME ZONE COMMANDS [PROJECT_DIR]}
ZONE=${2:?usage: launch/tpu_pod.sh TPU_NAME ZONE COMMANDS [PROJECT_DIR]}
COMMANDS=${3:?usage: launch/tpu_pod.sh TPU_NAME ZONE COMMANDS [PROJECT_DIR]}
PROJECT_DIR=${4:-$(cd "$(dirname "$0")/.." && pwd)}
ACTIVATE=${ACTIVATE:-"if [ -f .venv/bin/activate ]; then source .venv/bin/activate; fi"}

failed=0
total=0
while IFS= read -r line || [[ -n "$line" ]]; do
  [[ -z "${line//[[:space:]]/}" || "$line" =~ ^[[:space:]]*# ]] && continue
  total=$((total + 1))
  echo "run $total: $line"
  if ! gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all \
      --command="cd $(printf %q "$PROJECT_DIR") && $ACTIVATE && $line" </dev/null; then
    echo "run $total failed or was interrupted: $line" >&2
    failed=$((failed + 1))
  fi
done < "$COMMANDS"
echo "$total runs, $failed failed or interrupted"
[[ $failed -eq 0 ]]
