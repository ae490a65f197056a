"""``python -m bmlib``: the book's command line.

    python -m bmlib env                                   # provenance of this machine
    python -m bmlib run-notebooks [--scale cpu|full] [--timeout S] [paths ...]
    python -m bmlib bench [gemm|memory|attention|train|decode|all] [--quick]
"""
from __future__ import annotations

import argparse
import sys


def _cmd_env(args) -> int:
    from .env import provenance
    from .hw import current

    for k, v in provenance().items():
        print(f"{k:>12}: {v}")
    try:
        p = current()
    except ValueError as e:  # a GPU the peak table does not know: say so, the rest still prints
        print(f"{'peaks':>12}: {e}")
        return 0
    if p is None:
        print(f"{'peaks':>12}: none (no datasheet peak for a CPU; `python -m bmlib bench` measures one)")
    else:
        print(f"{'peaks':>12}: {p.label} — " + ", ".join(
            f"{k} {v / 1e12:.1f} TFLOP/s" for k, v in p.flops.items()) + f", {p.mem_bw / 1e12:.2f} TB/s")
    return 0


def _cmd_run_notebooks(args) -> int:
    from .env import scale
    from .runner import run_notebooks, summary_table

    results = run_notebooks(args.paths or None, scale=args.scale or scale(), timeout=args.timeout)
    print(summary_table(results))
    return 0 if all(r.ok for r in results) else 1


def _cmd_bench(args) -> int:
    from .benchmarks import main as bench_main

    return bench_main(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bmlib", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("env", help="print device, versions, scale, date and git commit")
    r = sub.add_parser("run-notebooks", help="execute notebooks in place, top to bottom")
    r.add_argument("paths", nargs="*", help="notebooks to run (default: notebooks/NN_*.ipynb)")
    r.add_argument("--scale", choices=["cpu", "full"], default=None,
                   help="BMLIB_SCALE for the kernels (default: full on a GPU, ci otherwise)")
    r.add_argument("--timeout", type=int, default=900, help="seconds per cell (default 900)")
    b = sub.add_parser("bench", help="GPU/CPU throughput benchmarks; writes results/bench-<gpu>.json")
    b.add_argument("what", nargs="?", default="all",
                   choices=["gemm", "memory", "attention", "train", "decode", "all"])
    b.add_argument("--quick", action="store_true", help="a few shapes only")
    b.add_argument("--out", default=None, help="results folder (default: results/)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return {"env": _cmd_env, "run-notebooks": _cmd_run_notebooks, "bench": _cmd_bench}[args.cmd](args)
