#!/usr/bin/env bash
# One-command GPU check (under 8 minutes on one H200): bf16 training steps of 5M, 20M and 80M at per-device batch 8
# with 4096 neurons per example, for each attention implementation, as one JSON object per line on stdout (also
# written to ${OUT:-.}/gpu_check.jsonl). A run that fails (out of memory, unsupported kernel) prints its error as
# JSON instead; the other runs go on.
#
#     benchmarks/gpu_check.sh [python]            (default: python3 with jax[cuda], flax, optax, orbax, tensorstore)
#
# Packages the machine lacks (ml_collections, grain, ...) are installed from wheels in .whl/ when that folder exists:
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl ml_collections==1.1.0 ...
set -u
PY=${1:-python3}
OUT_FILE="${OUT:-.}/gpu_check.jsonl"
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.95
if [ -d .whl ]; then "$PY" -m pip install -q --no-index --no-deps --find-links .whl .whl/*.whl >&2 || true; fi
"$PY" -c "import jax; print('devices:', jax.devices())" >&2 || exit 1
: > "$OUT_FILE"

# size attention device_microbatch remat (device_microbatch 0: the whole per-device batch in one pass)
RUNS=(
  "5M cudnn 0 none" "5M blockwise 0 none" "5M xla 0 none"
  "20M cudnn 0 none" "20M blockwise 0 none"
  "80M cudnn 2 none" "80M blockwise 2 none" "80M cudnn 1 block"
)
for spec in "${RUNS[@]}"; do
  set -- $spec
  line=$(timeout 150 "$PY" benchmarks/train_step.py --size "$1" --batch 8 --neurons 4096 --attention "$2" \
           --device-microbatch "$3" --remat "$4" --steps 5 --warmup 3 2>/tmp/gpu_check.err | tr -d '\n')
  if [ -z "$line" ]; then
    err=$(tail -c 400 /tmp/gpu_check.err | tr '\n"\\' '   ')
    line="{\"size\": \"$1\", \"attention\": \"$2\", \"device_microbatch\": $3, \"remat\": \"$4\", \"error\": \"$err\"}"
  fi
  echo "$line" | tee -a "$OUT_FILE"
done
