#!/usr/bin/env bash
# The GPU check, in one go (under 8 minutes on one H100):
#   1. the gpu-marked tests (tests/test_devices.py: equivalence, device placement, no host sync in
#      the layer loop, store round trip, greedy answers, all on CUDA);
#   2. benchmarks/gpu_check.py: HOMER's compress vs a full prefill at Llama-2-7B's shape (random
#      weights built on the GPU, float16) at 8k, 16k, 32k and 64k tokens, and decoding 20/50/100
#      tokens after each; one table printed, the records in benchmarks/results/*.json.
#
#   benchmarks/gpu_check.sh           # on a machine with CUDA
#   benchmarks/gpu_check.sh --tiny    # anywhere: a tiny Llama on the CPU, to check the script
#
# Extra arguments go to benchmarks/gpu_check.py. The exit code is non-zero if either part failed.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3

echo "== gpu-marked tests"
"$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_devices.py
tests=$?
# 5: every gpu test was deselected or skipped (no CUDA here): not a failure of the check
if [ "$tests" -eq 5 ]; then tests=0; fi

echo "== HOMER vs full prefill"
"$PY" -m benchmarks.gpu_check "$@"
experiment=$?

echo "== tests: exit $tests, experiment: exit $experiment"
[ "$tests" -eq 0 ] && [ "$experiment" -eq 0 ]
