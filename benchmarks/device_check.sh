#!/usr/bin/env bash
# The device check: what a session lent a GPU runs, in one call of at most ~8 minutes.
#   bash benchmarks/device_check.sh [OUT]        (OUT defaults to $OUT, else /tmp/device_check)
# 1. installs the wheels carried in .whl/ (packages the GPU image lacks; docs/performance.md lists them),
# 2. runs the CUDA tests (tests/test_cuda.py: the static generation engine's CUDA graphs among
#    them), the generation-engine tests and the model tests on that machine's stack,
# 3. runs the tiny chain up to a zipped stage (`make zip-asr SCALE=tiny`: both towers and the
#    Zipper through Lightning) in bf16-mixed on the GPU (the whole `make evaluate` chain took
#    over 150 s on an H100, mostly process start-up per stage),
# 4. runs `make bench` with SCALE=s (bf16 autocast training steps of the `s` towers and Zipper;
#    generation tokens/s at batch 1 and 16 of the static engine against the dynamic one it
#    replaced, token for token), writing bench.json and bench.md under OUT.
# STEPS picks the steps (default "tests tiny_chain bench"), e.g. STEPS="tests bench" when the
# session's device time is short (the tiny chain has passed on two lent H100s).
# On a machine without CUDA it runs the same steps on the CPU in fp32, with the tiny chain and a
# --quick bench instead of SCALE=s (minutes per step on a CPU), and says so: it is never run blind.
# BENCH_ARGS is appended to the bench step's arguments (e.g. BENCH_ARGS=--compile also times every
# training case torch.compile'd, about 70 s of compilation per Zipper case on an H100, and the
# `compiled` generation engine: the static step compiled, then captured as a CUDA graph).
# Each step's log and exit status land under OUT; the script's exit status is the number of
# failed steps.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-/tmp/device_check}}
mkdir -p "$OUT"
PY=${PY:-$( [ -x .venv/bin/python ] && echo "$PWD/.venv/bin/python" || command -v python3 )}
export PYTHONUNBUFFERED=1

if compgen -G ".whl/*.whl" >/dev/null && ! "$PY" -c "import omegaconf, jiwer, encodec, num2words, soundfile, espeakng_loader" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || { echo "device_check: wheel install failed"; exit 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

CUDA=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))")
WORK=$(mktemp -d /tmp/device_check.XXXXXX)
touch "$WORK/stamp"  # stands in for make's .venv stamp: the packages are installed above
MAKEVARS=(PY="$PY" STAMP="$WORK/stamp" RUNS="$WORK/runs" DATA_ROOT="$WORK/data")
if [ "$CUDA" = 1 ]; then
  ACCEL=(ACCELERATOR=gpu PRECISION=bf16-mixed)
  BENCH=(--sizes s --out "$OUT")
else
  echo "device_check: no CUDA here: CUDA tests skip, the tiny chain runs fp32 on the CPU," \
    "the bench runs --quick (SCALE=s needs a GPU)"
  ACCEL=(ACCELERATOR=cpu PRECISION=32-true)
  BENCH=(--quick --out "$OUT")
fi

failed=0
step() {  # step NAME COMMAND...: run, log to OUT/NAME.log, time it, count a failure
  local name=$1; shift
  local t0=$SECONDS
  echo "== $name: $*"
  "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc $((SECONDS - t0))s" | tee -a "$OUT/summary.txt"
  tail -n 15 "$OUT/$name.log"
  [ $rc = 0 ] || failed=$((failed + 1))
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
  "$PY" -c "import torch, lightning, sys; print('python', sys.version.split()[0], 'torch',
torch.__version__, 'lightning', lightning.__version__, 'cuda', torch.cuda.is_available())"
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
STEPS=${STEPS:-tests tiny_chain bench}
wanted() { [[ " $STEPS " == *" $1 "* ]]; }
wanted tests && step tests "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py \
  tests/test_generation_engines.py tests/test_zipper.py tests/test_tower.py tests/test_single.py
wanted tiny_chain &&
  step tiny_chain make --no-print-directory zip-asr SCALE=tiny "${MAKEVARS[@]}" "${ACCEL[@]}"
# shellcheck disable=SC2086  # BENCH_ARGS holds several words on purpose
wanted bench && step bench "$PY" -m benchmarks "${BENCH[@]}" ${BENCH_ARGS:-}
rm -rf "$WORK"
echo "device_check: $failed failed step(s); logs in $OUT"
exit $failed
