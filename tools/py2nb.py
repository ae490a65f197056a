"""Convert a percent-format script into a notebook (for authoring chapters in a text editor).

    python tools/py2nb.py .nbsrc/02_attention.py notebooks/02_attention.ipynb

Cells start with ``# %%`` (code) or ``# %% [markdown]`` (markdown; each line's leading ``# `` is
removed). Tags go on the marker line: ``# %% tags=["raises-exception"]``. The notebook, not the
script, is what the book commits; outputs are produced by ``python -m bmlib run-notebooks``.
"""
import json
import re
import sys

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

MARK = re.compile(r"^# %%(?P<md> \[markdown\])?(?:\s+tags=(?P<tags>\[.*\]))?\s*$")


def convert(src: str):
    cells, kind, tags, buf = [], None, [], []

    def flush():
        if kind is None:
            return
        text = "\n".join(buf).strip("\n")
        if kind == "md":
            text = "\n".join(l[2:] if l.startswith("# ") else l.lstrip("#") for l in text.splitlines())
            cell = new_markdown_cell(text)
        else:
            cell = new_code_cell(text)
        if tags:
            cell.metadata["tags"] = tags
        cells.append(cell)

    for line in src.splitlines():
        m = MARK.match(line)
        if m:
            flush()
            kind = "md" if m.group("md") else "code"
            tags = json.loads(m.group("tags")) if m.group("tags") else []
            buf = []
        elif kind is not None:
            buf.append(line)
    flush()
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    nbformat.write(convert(open(sys.argv[1]).read()), sys.argv[2])
    print(f"wrote {sys.argv[2]}")
