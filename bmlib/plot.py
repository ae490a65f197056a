"""One plot style for the whole book."""
from __future__ import annotations

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


def use_book_style() -> None:
    """Apply the book's matplotlib style (call once per notebook; the header does it for you)."""
    import matplotlib as mpl
    from cycler import cycler

    mpl.rcParams.update({
        "figure.figsize": (6.4, 3.8), "figure.dpi": 110, "savefig.dpi": 110,
        "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False,
        "axes.prop_cycle": cycler(color=PALETTE), "axes.titlesize": 11, "axes.labelsize": 10,
        "legend.fontsize": 9, "legend.frameon": False, "font.size": 10,
    })


def subplots(nrows: int = 1, ncols: int = 1, **kw):
    """``plt.subplots`` in the book's style, sized per panel."""
    import matplotlib.pyplot as plt

    use_book_style()
    kw.setdefault("figsize", (4.2 * ncols, 3.3 * nrows))
    kw.setdefault("constrained_layout", True)
    return plt.subplots(nrows, ncols, **kw)
