"""The book's benchmarks: kernel and model workloads, the standard sweeps, and ``python -m bmlib bench``.

Kernels (GEMM, memory streaming, attention) and model workloads (a training step through
:func:`bmlib.train.measure_train_step`, greedy decoding through :class:`bmlib.generate.Decoder`)
are :class:`bmlib.sweep.Case` factories; FLOPs and bytes come from :mod:`bmlib.flops`; every
number is timed by :func:`bmlib.bench.measure`.

``python -m bmlib bench [gemm|memory|attention|train|decode|all] [--quick] [--out DIR]`` runs the
standard sweeps (:func:`plan` says which, as data), prints a table and writes ``bench-<gpu>.json``
(results schema: chapter, provenance, figures, rows) plus ``bench-<gpu>-rows.{json,csv}`` with every
row. On a GPU the file goes to ``results/``; without one a small CPU version runs, says so, and
writes ``bench-cpu.json`` to ``artifacts/results/``. ``--out`` overrides the folder. MFU is against
the GPU's datasheet peak (:func:`bmlib.hw.current`); on a CPU only against the best GEMM measured
in the same run, labelled "measured peak".
"""
from __future__ import annotations

from pathlib import Path

from . import flops, hw
from .sweep import Case, Skip, Sweep, best, format_table, ok_rows, run_case, run_sweep, save_rows, slug

# ============================================================================ standard kernels
_TORCH_DTYPES = {"fp32": "float32", "tf32": "float32", "bf16": "bfloat16", "fp16": "float16",
                 "fp8": "float8_e4m3fn"}


def _tdtype(name: str):
    import torch

    if name not in _TORCH_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_TORCH_DTYPES)}, got {name!r}")
    return getattr(torch, _TORCH_DTYPES[name])


def gemm_case(m: int, n: int, k: int, dtype: str = "bf16", device=None, flush_l2: bool = True) -> Case:
    """``C = A @ B`` with ``A (m, k)``, ``B (k, n)``: ``2 m n k`` FLOPs.

    ``tf32`` is fp32 storage with TF32 tensor cores enabled for this call only; ``fp8`` uses
    ``torch._scaled_mm`` (e4m3 inputs, per-tensor scales, bf16 output; needs compute capability
    >= 8.9, e.g. H100). ``flush_l2`` empties L2 before each call so B is read from HBM, as in a real
    model where weights do not sit in cache.
    """
    import torch

    for nm, v in (("m", m), ("n", n), ("k", k)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{nm} must be a positive int, got {v!r}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dt = _tdtype(dtype)
    if dtype == "fp8":
        if dev.type != "cuda" or torch.cuda.get_device_capability(dev) < (8, 9):
            raise Skip("fp8 GEMM needs a CUDA GPU with compute capability >= 8.9")
        if m % 16 or n % 16 or k % 16:
            raise Skip("fp8 GEMM needs m, n, k divisible by 16")
        a = torch.randn(m, k, device=dev).to(dt)
        b = torch.randn(n, k, device=dev).to(dt).t()  # column-major B, as _scaled_mm requires
        one = torch.ones((), device=dev)
        fn = lambda: torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
        elem = 1
    else:
        if dev.type == "cpu" and dtype == "fp16":
            raise Skip("fp16 GEMM on the CPU is not a meaningful benchmark")
        if dev.type == "cpu" and dtype == "tf32":
            raise Skip("tf32 is a GPU tensor-core format")
        a = torch.randn(m, k, device=dev, dtype=dt)
        b = torch.randn(k, n, device=dev, dtype=dt)
        elem = a.element_size()
        if dtype == "tf32" or (dtype == "fp32" and dev.type == "cuda"):
            allow = dtype == "tf32"  # fp32 on CUDA means true fp32: tensor-core tf32 switched off

            def fn():
                old = torch.backends.cuda.matmul.allow_tf32
                torch.backends.cuda.matmul.allow_tf32 = allow
                try:
                    return a @ b
                finally:
                    torch.backends.cuda.matmul.allow_tf32 = old
        else:
            fn = lambda: a @ b
    out_elem = 2 if dtype == "fp8" else elem
    return Case(fn, flops=flops.matmul_flops(m, n, k), bytes=flops.matmul_bytes(m, n, k, elem, out_elem),
                flush_l2=flush_l2 and dev.type == "cuda")


MEMORY_KERNELS = tuple(flops.STREAM_PASSES)


def memory_case(kernel: str, nbytes: int, device=None) -> Case:
    """Streaming kernels over an fp32 buffer of ``nbytes``: ``copy`` (read + write: 2x bytes),
    ``read`` (a sum: 1x, one add per element), ``write`` (fill: 1x); bytes from
    :func:`bmlib.flops.stream_bytes`. Buffers far larger than L2 measure DRAM/HBM."""
    import torch

    if kernel not in MEMORY_KERNELS:
        raise ValueError(f"kernel must be one of {MEMORY_KERNELS}, got {kernel!r}")
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 4:
        raise ValueError(f"nbytes must be an int >= 4, got {nbytes!r}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    n = nbytes // 4
    moved = flops.stream_bytes(kernel, n * 4)
    src = torch.ones(n, device=dev)
    if kernel == "copy":
        dst = torch.empty_like(src)
        return Case(lambda: dst.copy_(src), bytes=moved)
    if kernel == "read":
        return Case(lambda: src.sum(), flops=float(n), bytes=moved)  # n adds
    return Case(lambda: src.fill_(1.0), bytes=moved)


def attention_case(impl: str, seq: int, head_dim: int, causal: bool, backward: bool,
                   dtype: str = "bf16", batch: int | None = None, n_head: int | None = None,
                   device=None, tokens: int = 16384, model_dim: int = 2048) -> Case:
    """Self-attention through :func:`bmlib.attention.attention` with ``impl`` at one shape.

    Batch and head count default so that each case does comparable work: ``batch = tokens / seq``
    (at least 1) and ``n_head = model_dim / head_dim``.
    """
    import torch

    from .attention import IMPLS, attention

    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    b = batch or max(1, tokens // seq)
    nh = n_head or max(1, model_dim // head_dim)
    dt = _tdtype(dtype)
    q, k, v = (torch.randn(b, nh, seq, head_dim, device=dev, dtype=dt, requires_grad=backward)
               for _ in range(3))
    if backward:
        go = torch.randn(b, nh, seq, head_dim, device=dev, dtype=dt)

    def fwd():
        return attention(q, k, v, causal=causal, impl=impl)

    if backward:
        def fn():
            out = fwd()
            q_, k_, v_ = torch.autograd.grad(out, (q, k, v), go)
            return q_
    else:
        def fn():
            with torch.no_grad():
                return fwd()
    fn()  # fails here (-> skipped) if the backend cannot run these inputs
    elem = torch.tensor([], dtype=dt).element_size()
    return Case(fn, flops=flops.attention_flops(b, nh, seq, seq, head_dim, backward=backward),
                bytes=flops.attention_bytes(b, nh, seq, seq, head_dim, elem, backward=backward),
                extra={"batch": b, "n_head": nh})


# ============================================================================ standard sweeps
def gemm_sweep(shapes, dtypes, device=None, flush_l2: bool = True) -> Sweep:
    """GEMM throughput over ``shapes`` ((m, n, k) tuples) x ``dtypes`` (see :func:`gemm_case`)."""
    shapes = [tuple(int(x) for x in s) for s in shapes]
    if any(len(s) != 3 for s in shapes):
        raise ValueError(f"shapes must be (m, n, k) triples, got {shapes!r}")
    return Sweep("gemm", {"shape": shapes, "dtype": list(dtypes)},
                 lambda shape, dtype: gemm_case(*shape, dtype=dtype, device=device, flush_l2=flush_l2))


def gemm_search_shapes(sizes, aligned_only: bool = True) -> list[tuple]:
    """Every (m, n, k) with each dimension from ``sizes``: the "maximum achievable matmul FLOPS"
    search (the peak a library reaches depends on the shape, so search for it)."""
    sizes = sorted({int(s) for s in sizes})
    if not sizes or sizes[0] < 1:
        raise ValueError(f"sizes must be positive ints, got {sizes!r}")
    return [(m, n, k) for m in sizes for n in sizes for k in sizes
            if not aligned_only or (m % 16 == 0 and n % 16 == 0 and k % 16 == 0)]


def memory_sweep(kernels, sizes_bytes, device=None) -> Sweep:
    return Sweep("memory", {"kernel": list(kernels), "nbytes": [int(s) for s in sizes_bytes]},
                 lambda kernel, nbytes: memory_case(kernel, nbytes, device=device))


def attention_sweep(impls, seqs, head_dims, causal=(False, True), backward=(False, True),
                    dtype: str = "bf16", device=None, tokens: int = 16384, model_dim: int = 2048) -> Sweep:
    return Sweep("attention", {"impl": list(impls), "seq": list(seqs), "head_dim": list(head_dims),
                               "causal": list(causal), "backward": list(backward)},
                 lambda impl, seq, head_dim, causal, backward: attention_case(
                     impl, seq, head_dim, causal, backward, dtype=dtype, device=device,
                     tokens=tokens, model_dim=model_dim))


ATTN_SHAPE_KEYS = ("seq", "head_dim", "causal", "backward")


def attention_auto_ratios(rows: list[dict], auto: str = "auto") -> list[dict]:
    """Per attention shape: the automatic choice's throughput over the best other implementation's.

    Returns one dict per shape where both exist: the shape, ``best_impl``, ``best_tflops``,
    ``auto_tflops`` and ``ratio`` (1.0 = the automatic choice is as fast as the best).
    """
    shapes = {}
    for r in ok_rows([r for r in rows if r.get("bench") == "attention"]):
        key = tuple(r[k] for k in ATTN_SHAPE_KEYS)
        shapes.setdefault(key, []).append(r)
    out = []
    for key, rs in shapes.items():
        a = [r for r in rs if r["impl"] == auto]
        others = [r for r in rs if r["impl"] not in (auto,)]
        if not a or not others:
            continue
        b = max(others, key=lambda r: r["tflops"])
        out.append({**dict(zip(ATTN_SHAPE_KEYS, key)), "best_impl": b["impl"], "best_tflops": b["tflops"],
                    "auto_tflops": a[0]["tflops"], "ratio": min(1.0, a[0]["tflops"] / b["tflops"])})
    return out


def headline_figures(rows: list[dict]) -> dict:
    """The bench-<gpu> headline numbers the rows support (missing ones are left out)."""
    figs = {}
    for dt in ("bf16", "fp8", "fp16", "tf32", "fp32"):
        b = best([r for r in rows if r.get("bench") == "gemm"], "tflops", dtype=dt)
        if b is not None:
            figs[f"gemm_{dt}_best_tflops"] = b["tflops"]
    for k in MEMORY_KERNELS:
        b = best([r for r in rows if r.get("bench") == "memory"], "tbps", kernel=k)
        if b is not None:
            figs[f"hbm_{k}_tbps"] = b["tbps"]
    ratios = attention_auto_ratios(rows)
    if ratios:
        figs["attention_auto_vs_best_backend_min_ratio"] = min(r["ratio"] for r in ratios)
    return figs

# ============================================================================ model workloads
def decode_case(preset: str, batch_size: int, prompt_len: int, new_tokens: int, mode: str = "eager",
                device=None, seed: int = 0, phase: str = "decode") -> Case:
    """Greedy generation with :class:`bmlib.generate.Decoder`, randomly initialised weights (speed
    does not depend on them); bf16 on CUDA, fp32 on the CPU. ``phase="decode"`` times the
    ``new_tokens`` single-token steps alone (the prompt is prefilled once in setup and the cache
    rewound to its end before each call) and counts ``batch_size * new_tokens`` tokens;
    ``phase="prefill"`` times the prompt's forward pass and counts ``batch_size * prompt_len``."""
    import torch

    from .decode import BmlibDecode
    from .models.gpt import GPT, GPTConfig

    if phase not in ("decode", "prefill"):
        raise ValueError(f"phase must be 'decode' or 'prefill', got {phase!r}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(seed)
    cfg = GPTConfig.preset(preset)
    model = GPT(cfg).to(dev).eval()
    if dev.type == "cuda":
        model = model.to(torch.bfloat16)
    idx = torch.randint(0, cfg.vocab_size, (batch_size, prompt_len), device=dev)
    run = BmlibDecode(model, idx, new_tokens + 1, mode=mode)  # prefill's token + new_tokens steps
    if phase == "prefill":
        return Case(run.prefill, extra={"tokens": batch_size * prompt_len, "phase": phase})
    return Case(run.decode, extra={"tokens": batch_size * new_tokens, "phase": phase})


def train_rows(cfg: dict, device, gemm_rows: list[dict] | None = None) -> list[dict]:
    """One GPT training step (forward, backward, clip, AdamW) of ``cfg["preset"]`` timed by
    :func:`bmlib.train.measure_train_step`. MFU is against the GPU's datasheet peak; on a CPU
    against the best ``cfg["dtype"]`` GEMM in ``gemm_rows`` (labelled "measured peak"), or none."""
    import torch

    from .models.gpt import GPT, GPTConfig
    from .train import measure_train_step

    dev = torch.device(device)
    if dev.type == "cuda":
        peak, label = "auto", hw.current().label
    else:
        ref = best([g for g in (gemm_rows or []) if g.get("bench") == "gemm"], "tflops", dtype=cfg["dtype"])
        peak = ref["tflops"] * 1e12 if ref else None
        label = (f"measured peak: best {cfg['dtype']} GEMM in this run ({ref['tflops']:.3g} TFLOP/s)"
                 if ref else "none (no GEMM measured in this run)")
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset(cfg["preset"]))
    r = measure_train_step(model, batch_size=cfg["batch_size"], seq_len=cfg["seq_len"], dtype=cfg["dtype"],
                           device=dev, warmup_s=cfg.get("warmup_s", 0.5), budget_s=cfg.get("budget_s", 1.0),
                           min_reps=3, max_reps=50, peak_flops=peak)
    row = {"bench": "train", "impl": "bmlib.train", "status": "ok", **cfg, **r, "median_ms": r["step_ms"],
           "peak": label}
    return [row]


def decode_rows(cfg: dict, device) -> list[dict]:
    rows = []
    for b in cfg["batch_sizes"]:
        combo = {"impl": f"bmlib-{cfg['mode']}", "preset": cfg["preset"], "batch_size": b,
                 "prompt_len": cfg["prompt_len"], "new_tokens": cfg["new_tokens"]}
        rows.append(run_case("decode", combo, lambda impl, preset, batch_size, prompt_len, new_tokens:
                             decode_case(preset, batch_size, prompt_len, new_tokens, mode=cfg["mode"],
                                         device=device),
                             device=device, warmup_s=0.0, budget_s=1.0, min_reps=3, max_reps=10))
    return rows


def measured_peaks(device=None, *, dtype: str = "fp32", sizes=(256, 512), mem_mb: int = 64,
                   name: str | None = None, **measure_kw) -> hw.Peaks:
    """Peaks measured now on ``device``: the best ``dtype`` GEMM over square ``sizes`` and the best
    streaming bandwidth (copy, read, write over ``mem_mb`` MiB), as :func:`bmlib.hw.measured`
    (``label`` "... (measured peak)"). The honest denominator for MFU on a CPU."""
    import torch

    from .env import device_name

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    kw = {**dict(warmup_s=0.02, budget_s=0.2, min_reps=3, max_reps=50), **measure_kw}
    prov = {"device": name or device_name()}
    g = run_sweep(gemm_sweep([(s, s, s) for s in sizes], [dtype], device=dev), device=dev, progress=False,
                  prov=prov, **kw)
    m = run_sweep(memory_sweep(MEMORY_KERNELS, [mem_mb * 2**20], device=dev), device=dev, progress=False,
                  prov=prov, **kw)
    bg, bm = best(g, "tflops"), best(m, "tbps")
    if bg is None or bm is None:
        bad = [r for r in g + m if r["status"] != "ok"]
        raise RuntimeError(f"could not measure peaks on {dev}: {[(r['bench'], r.get('reason')) for r in bad]}")
    return hw.measured(f"{prov['device']}", {dtype: bg["tflops"] * 1e12}, bm["tbps"] * 1e12,
                       source=f"best of {len(g)} {dtype} GEMMs (m=n=k in {list(sizes)}) and of "
                              f"{len(m)} streaming kernels over {mem_mb} MiB ({bm['kernel']}), measured now")


# ============================================================================ python -m bmlib bench
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
                shapes += [s for s in gemm_search_shapes([4096, 8192, 12288]) if s not in shapes]
            return dict(shapes=shapes, dtypes=["bf16", "fp8"] if quick else
                        ["bf16", "fp16", "tf32", "fp32", "fp8"])
        return dict(shapes=[(128, 128, 128), (256, 256, 256)] if quick else
                    [(128, 128, 128), (256, 256, 256), (512, 512, 512)], dtypes=["fp32", "bf16"])
    if what == "memory":
        mb = [1024] if (gpu and quick) else [256, 1024, 4096] if gpu else [32] if quick else [16, 64]
        return dict(kernels=list(MEMORY_KERNELS), sizes_bytes=[m * 2**20 for m in mb])
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


_COLS = {
    "gemm": ["shape", "dtype", "status", "median_ms", "tflops", "reason"],
    "memory": ["kernel", "nbytes", "status", "median_ms", "gbps", "reason"],
    "attention": ["impl", "seq", "head_dim", "causal", "backward", "status", "median_ms", "tflops", "reason"],
    "train": ["impl", "preset", "batch_size", "seq_len", "status", "median_ms", "tokens_per_s", "mfu", "peak"],
    "decode": ["impl", "batch_size", "new_tokens", "status", "median_ms", "tokens_per_s", "reason"],
}


def main(args) -> int:
    """``python -m bmlib bench``: ``args`` has ``what`` (one of ``WHATS`` or ``"all"``), ``quick``, ``out``."""
    import torch

    from .env import artifacts_dir, provenance, repo_root
    from .io import write_json

    what, quick, out = args.what, bool(args.quick), args.out
    if what != "all" and what not in WHATS:
        raise ValueError(f"what must be one of {WHATS + ('all',)}, got {what!r}")
    whats = WHATS if what == "all" else (what,)
    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    prov = provenance()
    name = slug(prov["device"])
    if not gpu:
        print("No CUDA GPU: running a small CPU version of the benchmarks (numbers describe this "
              "CPU, not a GPU).")
    print(" | ".join(f"{k}: {v}" for k, v in prov.items()))
    rows: list[dict] = []
    for w in whats:
        cfg = plan(w, quick, gpu)
        print(f"\n== {w} ({'quick' if quick else 'full'}) ==")
        if w == "train":
            new = train_rows(cfg, device, gemm_rows=rows)
        elif w == "decode":
            new = decode_rows(cfg, device)
        else:
            if w == "gemm":
                sw = gemm_sweep(cfg["shapes"], cfg["dtypes"], device=device)
            elif w == "memory":
                sw = memory_sweep(cfg["kernels"], cfg["sizes_bytes"], device=device)
            else:
                c = dict(cfg)
                sw = attention_sweep(c.pop("impls"), c.pop("seqs"), c.pop("head_dims"), device=device, **c)
            new = run_sweep(sw, device=device, prov=prov, **measure_kw(quick, gpu))
        print(format_table(new, _COLS[w]))
        rows += new
    figs = headline_figures(rows)
    folder = Path(out) if out else (repo_root() / "results" if gpu else artifacts_dir("results"))
    folder.mkdir(parents=True, exist_ok=True)
    doc = {"chapter": f"bench-{name}", "provenance": prov, "figures": figs, "rows": rows}
    path = write_json(folder / f"bench-{name}.json", doc)
    save_rows(rows, folder / f"bench-{name}-rows")
    print("\n" + "\n".join(f"{k:>45}: {v:.4g}" for k, v in figs.items()))
    print(f"wrote {path}")
    return 0
