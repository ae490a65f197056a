"""``python -m bmlib bench [gemm|memory|attention|train|decode|all] [--quick] [--out DIR]``.

Runs the book's standard sweeps (declared in :mod:`bmlib.bench`), prints a table and writes
``bench-<gpu>.json`` (results schema: chapter, provenance, figures, rows) plus ``bench-<gpu>.csv``
with every row. On a GPU the file goes to ``results/``; without one a small CPU version runs, says
so, and writes ``bench-cpu.json`` to ``artifacts/results/``. ``--out`` overrides the folder.
"""
from __future__ import annotations

import sys
from pathlib import Path

WHATS = ("gemm", "memory", "attention", "train", "decode")


def plan(what: str, quick: bool, gpu: bool) -> dict:
    """The sweep configuration for one benchmark: data, so that a reader can see what runs."""
    if what not in WHATS:
        raise ValueError(f"what must be one of {WHATS}, got {what!r}")
    if what == "gemm":
        if gpu:
            sizes = [4096, 8192] if quick else [2048, 4096, 6144, 8192, 12288, 16384]
            shapes = [(s, s, s) for s in sizes]
            if not quick:  # MAMF-style search around the sweet spot
                from .bench import gemm_search_shapes

                shapes += [s for s in gemm_search_shapes([4096, 8192, 12288]) if s not in shapes]
            return dict(shapes=shapes, dtypes=["bf16", "fp8"] if quick else
                        ["bf16", "fp16", "tf32", "fp32", "fp8"])
        return dict(shapes=[(128, 128, 128), (256, 256, 256)] if quick else
                    [(128, 128, 128), (256, 256, 256), (512, 512, 512)], dtypes=["fp32", "bf16"])
    if what == "memory":
        mb = [1024] if (gpu and quick) else [256, 1024, 4096] if gpu else [32] if quick else [16, 64]
        return dict(kernels=["copy", "read", "write"], sizes_bytes=[m * 2**20 for m in mb])
    if what == "attention":
        if gpu:
            return dict(impls=["math", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "sdpa", "auto"],
                        seqs=[1024, 4096] if quick else [512, 1024, 2048, 4096, 8192, 16384],
                        head_dims=[128] if quick else [64, 128], dtype="bf16", tokens=16384,
                        model_dim=2048)
        return dict(impls=["math", "sdpa", "auto"], seqs=[64] if quick else [64, 256], head_dims=[32],
                    causal=[True], backward=[False, True], dtype="fp32", tokens=512, model_dim=128)
    if what == "train":
        return dict(preset="gpt2" if gpu else "tiny", batch_size=16 if gpu else 4,
                    seq_len=1024 if gpu else 64, dtype="bf16" if gpu else "fp32")
    return dict(preset="gpt2" if gpu else "tiny", batch_sizes=[1, 32] if gpu else [1, 4],
                prompt_len=128 if gpu else 16, new_tokens=256 if gpu else 16,
                mode="cuda-graph" if gpu else "eager")


def measure_kw(quick: bool, gpu: bool) -> dict:
    if gpu:
        return dict(warmup_s=0.1, budget_s=0.2 if quick else 0.4, min_reps=5, max_reps=100)
    return dict(warmup_s=0.02, budget_s=0.1 if quick else 0.3, min_reps=3, max_reps=50)


def train_rows(cfg: dict, device) -> list[dict]:
    """Training-step tokens/s and MFU via ``bmlib.train.measure_train_step`` when present, else
    :func:`bmlib.bench.train_step_case` (fwd + bwd + AdamW, bf16 autocast on GPU)."""
    from .bench import run_case, train_step_case

    try:
        from .train import measure_train_step  # written by the training chapter
    except ImportError:
        measure_train_step = None
    if measure_train_step is not None:
        try:
            from .models.gpt import GPT, GPTConfig

            model = GPT(GPTConfig.preset(cfg["preset"])).to(device)
            r = measure_train_step(model, batch_size=cfg["batch_size"], seq_len=cfg["seq_len"], dtype=cfg["dtype"])
            r = dict(r) if isinstance(r, dict) else dict(vars(r))
            r.setdefault("median_ms", r.get("step_ms"))
            return [{"bench": "train", "impl": "bmlib.train", "status": "ok", **cfg, **r}]
        except Exception as e:  # fall back to the local step
            print(f"bmlib.train.measure_train_step failed ({type(e).__name__}: {e}); "
                  "using bmlib.bench.train_step_case", file=sys.stderr)
    kw = dict(warmup_s=0.5, budget_s=1.0, min_reps=3, max_reps=50)
    return [run_case("train", {"impl": "bmlib.bench", **cfg},
                     lambda impl, **c: train_step_case(c["preset"], c["batch_size"], c["seq_len"],
                                                       dtype=c["dtype"], device=device), device=device, **kw)]


def decode_rows(cfg: dict, device) -> list[dict]:
    from .bench import decode_case, run_case

    rows = []
    for b in cfg["batch_sizes"]:
        combo = {"impl": f"bmlib-{cfg['mode']}", "preset": cfg["preset"], "batch_size": b,
                 "prompt_len": cfg["prompt_len"], "new_tokens": cfg["new_tokens"]}
        rows.append(run_case("decode", combo, lambda impl, preset, batch_size, prompt_len, new_tokens:
                             decode_case(preset, batch_size, prompt_len, new_tokens, mode=cfg["mode"],
                                         device=device),
                             device=device, warmup_s=0.0, budget_s=1.0, min_reps=3, max_reps=10))
    return rows


def main(args) -> int:
    import torch

    from . import bench
    from .env import artifacts_dir, provenance, repo_root

    what = getattr(args, "what", "all") or "all"
    quick = bool(getattr(args, "quick", False))
    out = getattr(args, "out", None)
    whats = WHATS if what == "all" else (what,)
    if what != "all" and what not in WHATS:
        print(f"what must be one of {WHATS + ('all',)}, got {what!r}", file=sys.stderr)
        return 2
    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    prov = provenance()
    name = bench.slug(prov["device"])
    if not gpu:
        print("No CUDA GPU: running a small CPU version of the benchmarks (numbers describe this "
              "CPU, not a GPU).")
    print(" | ".join(f"{k}: {v}" for k, v in prov.items()))
    rows: list[dict] = []
    for w in whats:
        cfg = plan(w, quick, gpu)
        print(f"\n== {w} ({'quick' if quick else 'full'}) ==")
        if w == "gemm":
            sw = bench.gemm_sweep(cfg["shapes"], cfg["dtypes"], device=device)
            cols = ["shape", "dtype", "status", "median_ms", "tflops", "reason"]
        elif w == "memory":
            sw = bench.memory_sweep(cfg["kernels"], cfg["sizes_bytes"], device=device)
            cols = ["kernel", "nbytes", "status", "median_ms", "gbps", "reason"]
        elif w == "attention":
            c = dict(cfg)
            sw = bench.attention_sweep(c.pop("impls"), c.pop("seqs"), c.pop("head_dims"), device=device, **c)
            cols = ["impl", "seq", "head_dim", "causal", "backward", "status", "median_ms", "tflops", "reason"]
        if w in ("gemm", "memory", "attention"):
            new = bench.run_sweep(sw, device=device, prov=prov, **measure_kw(quick, gpu))
        elif w == "train":
            new = train_rows(cfg, device)
            cols = ["impl", "preset", "batch_size", "seq_len", "status", "median_ms", "tokens_per_s", "mfu", "reason"]
        else:
            new = decode_rows(cfg, device)
            cols = ["impl", "batch_size", "new_tokens", "status", "median_ms", "tokens_per_s", "reason"]
        print(bench.format_table(new, cols))
        rows += new
    figs = bench.headline_figures(rows)
    folder = Path(out) if out else (repo_root() / "results" if gpu else artifacts_dir("results"))
    folder.mkdir(parents=True, exist_ok=True)
    doc = {"chapter": f"bench-{name}", "provenance": prov, "figures": figs, "rows": rows}
    from .io import write_json

    path = write_json(folder / f"bench-{name}.json", doc)
    bench.save_rows(rows, folder / f"bench-{name}-rows")
    print("\n" + "\n".join(f"{k:>45}: {v:.4g}" for k, v in figs.items()))
    print(f"wrote {path}")
    return 0
