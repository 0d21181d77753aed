#!/usr/bin/env bash
# One-command GPU check (under 8 minutes on one H200): bf16 training steps of 5M, 20M and 80M at per-device batch 8
# with 4096 neurons per example, for each attention implementation, as one JSON object per line on stdout (also
# written to ${OUT:-.}/gpu_check.jsonl). A run that fails (out of memory, unsupported kernel) prints its error as
# JSON instead and the others go on; runs that would start past the deadline are reported as skipped.
#
#     benchmarks/gpu_check.sh [python]     (default: python3 with jax[cuda], flax, optax, orbax, tensorstore)
#
# Packages the machine lacks are installed from wheels in .whl/ when that folder exists, for example:
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#         --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
#         ml_collections==1.1.0 grain==0.2.18 array_record==0.8.6 portpicker==1.6.0 tensorboardX==2.6.5
# A smoke run of the `test` size goes first; if it fails the check stops there (a broken install or API, not a size).
set -u
PY=${1:-python3}
DEADLINE_S=${GPU_CHECK_DEADLINE_S:-450}
OUT_FILE="${OUT:-.}/gpu_check.jsonl"
if [ -d .whl ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu_check_site \
    .whl/*.whl >&2 || exit 1
  export PYTHONPATH="/tmp/gpu_check_site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.95
"$PY" - >&2 <<'PYEOF' || exit 1
import importlib.metadata as m, jax
print("devices:", jax.devices())
print({p: m.version(p) for p in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "tensorstore", "grain")})
x = jax.numpy.ones((256, 256))
try:
    print("lowered cost analysis:", jax.jit(lambda a: a @ a).lower(x).cost_analysis())
except Exception as error:
    print("lowered cost analysis failed:", type(error).__name__, error)
PYEOF
: > "$OUT_FILE"
start=$SECONDS
# The attention kernels alone at a 5M decoder call's shape, values and gradients against dense float32.
timeout 120 "$PY" benchmarks/attention_kernels.py 2>/tmp/gpu_check.err | tee -a "$OUT_FILE" || tail -c 1500 /tmp/gpu_check.err >&2

# size attention device_microbatch remat (device_microbatch 0: the whole per-device batch in one pass)
# GPU_CHECK_RUNS replaces the list, runs separated by ';'.
RUNS=(
  "test blockwise 0 none"
  "5M cudnn 0 none" "5M blockwise 0 none" "20M cudnn 0 none" "80M cudnn 2 none" "80M blockwise 2 none"
  "5M xla 2 none" "20M blockwise 0 none" "80M cudnn 1 block"
)
if [ -n "${GPU_CHECK_RUNS:-}" ]; then IFS=';' read -r -a RUNS <<< "$GPU_CHECK_RUNS"; fi
for spec in "${RUNS[@]}"; do
  set -- $spec
  left=$((DEADLINE_S - (SECONDS - start)))
  base="\"size\": \"$1\", \"attention\": \"$2\", \"device_microbatch\": $3, \"remat\": \"$4\""
  if [ "$left" -lt 45 ]; then
    echo "{$base, \"skipped\": \"deadline\"}" | tee -a "$OUT_FILE"
    continue
  fi
  limit=$(( left < 180 ? left : 180 ))
  line=$(timeout "$limit" "$PY" benchmarks/train_step.py --size "$1" --batch 8 --neurons 4096 --attention "$2" \
           --device-microbatch "$3" --remat "$4" --steps 5 --warmup 3 2>/tmp/gpu_check.err | tr -d '\n')
  if [ -z "$line" ]; then
    err=$(tail -c 600 /tmp/gpu_check.err | tr '\n"\\' '   ')
    line="{$base, \"error\": \"$err\", \"seconds\": $((SECONDS - start))}"
    echo "$line" | tee -a "$OUT_FILE"
    if [ "$1" = test ]; then cat /tmp/gpu_check.err >&2; exit 1; fi
    continue
  fi
  echo "$line" | tee -a "$OUT_FILE"
done
