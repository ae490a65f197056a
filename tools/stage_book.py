"""Copy the book's sources into a staging folder, with stub pages for chapters not yet written.

    .venv/bin/python tools/stage_book.py /tmp/bookstage      # then: jupyter-book build /tmp/bookstage

Useful while chapters are being written: ``_toc.yml`` lists all fourteen notebooks, and the build
fails on a missing one. The stubs are clearly marked pages with one math line and one executed code
cell (so the browser checks have something to look at); they are never written into ``notebooks/``.
Prints the chapters it stubbed.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def toc_files(toc: Path) -> list[str]:
    """The ``file:`` entries of a jb-book ``_toc.yml`` (without suffix), root first."""
    import yaml

    data = yaml.safe_load(toc.read_text(encoding="utf-8"))
    files = [data["root"]]

    def walk(entries):
        for e in entries or []:
            if "file" in e:
                files.append(e["file"])
            walk(e.get("sections"))

    for part in data.get("parts", []):
        walk(part.get("chapters"))
    walk(data.get("chapters"))
    return files


def stub_notebook(path: Path, name: str) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        nbformat.v4.new_markdown_cell(f"# {name} (stub)\n\nThis chapter is not written yet. "
                                      "A line of math: $\\sum_i w_i = 1$."),
        nbformat.v4.new_code_cell("print('stub')", execution_count=1, outputs=[
            nbformat.v4.new_output("stream", name="stdout", text="stub\n")]),
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))


def stage(dest: Path, root: Path = ROOT) -> list[str]:
    dest = Path(dest)
    if dest.resolve() == root.resolve() or root.resolve() in dest.resolve().parents:
        raise ValueError(f"dest must lie outside the repository, got {str(dest)!r}")
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(root / name, dest / name)
    for folder in ("book", "results"):
        if (dest / folder).exists():
            shutil.rmtree(dest / folder)
        if (root / folder).exists():
            shutil.copytree(root / folder, dest / folder,
                            ignore=shutil.ignore_patterns("__pycache__"))
    if (dest / "notebooks").exists():
        shutil.rmtree(dest / "notebooks")
    (dest / "notebooks").mkdir()
    for nb in sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        if not nb.name.endswith(".failed.ipynb"):
            shutil.copy2(nb, dest / "notebooks" / nb.name)
    stubbed = []
    for f in toc_files(dest / "_toc.yml"):
        if f.startswith("notebooks/") and not (dest / f"{f}.ipynb").exists():
            stub_notebook(dest / f"{f}.ipynb", Path(f).name)
            stubbed.append(f)
    return stubbed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dest", help="staging folder outside the repository")
    args = p.parse_args(argv)
    stubbed = stage(Path(args.dest))
    print(f"staged the book in {args.dest}; stubbed {len(stubbed)} chapter(s): {', '.join(stubbed) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
