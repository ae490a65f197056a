"""``python -m bmlib``: the book's command line.

    python -m bmlib env                                   # provenance of this machine
    python -m bmlib run-notebooks [--scale cpu|full] [--timeout S] [--budget S] [--jobs N]
                                  [--rehearse] [paths ...]
    python -m bmlib serve --model minilm-sentiment [--port 8000] [--max-batch 32]
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
    from pathlib import Path

    from .runner import FULL_BUDGET_S, planned_wall_s, run_notebooks, sessions_needed, summary_table, write_timings

    if args.rehearse and args.scale == "cpu":
        print("--rehearse runs the full configurations: drop --scale cpu", file=sys.stderr)
        return 2
    run_scale = "full" if args.rehearse else (args.scale or scale())
    results = run_notebooks(args.paths or None, scale=run_scale, timeout=args.timeout,
                            jobs=args.jobs, budget=args.budget, rehearse=args.rehearse,
                            out_dir=args.out_dir)
    print(summary_table(results))
    print(f"seconds per chapter recorded in {write_timings(results, run_scale, args.rehearse)}")
    if run_scale == "full":
        planned = sum(r.planned_s or 0 for r in results)
        plans = {Path(r.notebook).stem: r.plan for r in results}
        wall, n = planned_wall_s(plans, args.jobs), sessions_needed(plans, args.jobs)
        print(f"planned full-scale seconds: {planned:.0f} in all, {wall:.0f} of wall time with "
              f"--jobs {args.jobs} -- {n} GPU session{'s' if n > 1 else ''} of {FULL_BUDGET_S:.0f} s on one H100/H200")
    return 0 if all(r.ok for r in results) else 1


def _cmd_bench(args) -> int:
    from .benchmarks import main as bench_main

    return bench_main(args)


def _cmd_serve(args) -> int:
    from .batching import BatchConfig
    from .servables import build
    from .serve import check_host, serve

    check_host(args.host, args.allow_remote)  # before loading any model
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    models = [build(name, max_length=args.max_length) for name in args.model]
    batch = BatchConfig(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                        max_queue=args.max_queue, timeout_s=args.timeout)
    print(f"serving {', '.join(args.model)} on http://{args.host}:{args.port} "
          f"(max_batch {batch.max_batch}, max_wait {batch.max_wait_ms} ms)", flush=True)
    serve(models, args.host, args.port, allow_remote=args.allow_remote, batch=batch)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bmlib", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("env", help="print device, versions, scale, date and git commit")
    r = sub.add_parser("run-notebooks", help="execute notebooks in place, top to bottom")
    r.add_argument("paths", nargs="*", help="notebooks to run (default: notebooks/NN_*.ipynb)")
    r.add_argument("--scale", choices=["cpu", "full"], default=None,
                   help="BMLIB_SCALE for the kernels (default: full on a GPU, cpu otherwise)")
    r.add_argument("--timeout", type=int, default=900, help="seconds per cell (default 900)")
    r.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                   help="seconds the whole run may take: a chapter whose planned seconds no longer "
                        "fit is skipped, and cell timeouts are capped by what is left")
    r.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="chapters run at once (timing chapters always run alone; default 1)")
    r.add_argument("--rehearse", action="store_true",
                   help="run the full configurations on this machine for their first steps "
                        "(BMLIB_REHEARSE=1); executed copies go to artifacts/rehearse/")
    r.add_argument("--out-dir", default=None, metavar="DIR",
                   help="write the executed notebooks to DIR (default: in place at cpu scale, "
                        "artifacts/full-run/ at full scale, artifacts/rehearse/ for --rehearse)")
    b = sub.add_parser("bench", help="GPU/CPU throughput benchmarks; writes results/bench-<gpu>.json")
    b.add_argument("what", nargs="?", default="all",
                   choices=["gemm", "memory", "attention", "train", "decode", "all"])
    b.add_argument("--quick", action="store_true", help="a few shapes only")
    b.add_argument("--out", default=None, help="results folder (default: results/)")
    _add_serve_parser(sub)
    return p


def _add_serve_parser(sub) -> None:
    from .servables import MODELS

    s = sub.add_parser("serve", help="serve the book's models over HTTP (loopback by default)")
    s.add_argument("--model", action="append", choices=MODELS, required=True,
                   help="a model to serve (repeat for several)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    s.add_argument("--allow-remote", action="store_true",
                   help="allow a non-loopback --host (inside a container)")
    s.add_argument("--max-batch", type=int, default=32, help="texts per forward pass (1: no batching)")
    s.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits to fill")
    s.add_argument("--max-queue", type=int, default=256, help="queued requests before 429")
    s.add_argument("--timeout", type=float, default=10.0, help="seconds before a request gets 504")
    s.add_argument("--max-length", type=int, default=64, help="tokens per text for classifiers (default 64)")
    s.add_argument("--threads", type=int, default=None, help="torch threads for the models (default: torch's)")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return {"env": _cmd_env, "run-notebooks": _cmd_run_notebooks, "bench": _cmd_bench,
            "serve": _cmd_serve}[args.cmd](args)
