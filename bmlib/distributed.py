"""Data-parallel training on several processes, and the memory arithmetic of sharding.

* :func:`launch` starts ``world_size`` processes with ``torch.multiprocessing`` (spawn), joins them
  in one ``torch.distributed`` process group (``gloo`` on CPU; ``nccl`` when every rank has its own
  GPU) through a rendezvous file, runs ``fn(rank, world_size, *args)`` in each and returns every
  rank's return value. Under ``torchrun`` the same worker code runs with ``init_method="env://"``.
* :func:`parallel_gradients` (and :func:`ddp_gradients`): one training step of a bmlib
  :class:`GPT` with ``DistributedDataParallel`` and/or FSDP2's ``fully_shard``, each rank on its own
  slice of one global batch; :func:`reference_gradients` is the same step in a single process. The chapter asserts they agree.
* :func:`memory_per_param`: bytes of model state per parameter and device for plain data parallel,
  ZeRO-1/2/3 (Rajbhandari et al., 2020), FSDP, tensor and pipeline parallelism.
"""
from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

BACKENDS = ("gloo", "nccl")


def default_backend(world_size: int) -> str:
    """``nccl`` when there is one CUDA GPU per rank, else ``gloo`` (CPU)."""
    return "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= world_size else "gloo"


def _check_world(world_size, backend):
    if not (isinstance(world_size, int) and not isinstance(world_size, bool) and world_size >= 1):
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    if backend is None:
        backend = default_backend(world_size)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
    if backend == "nccl" and torch.cuda.device_count() < world_size:
        raise ValueError(f"backend='nccl' needs one GPU per rank: world_size={world_size}, "
                         f"GPUs={torch.cuda.device_count()}")
    return backend


def _worker(rank, world_size, backend, init_file, out_dir, fn, args, threads):
    import torch.distributed as dist

    torch.set_num_threads(threads)
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank,
                            world_size=world_size)
    try:
        out = fn(rank, world_size, *args)
        torch.save(out, Path(out_dir) / f"rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def launch(fn, world_size: int = 2, backend: str | None = None, args: tuple = (),
           threads_per_rank: int = 1, start_method: str | None = None) -> list:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` fresh processes joined in one process
    group; returns the list of their return values (rank order; they travel via ``torch.save``).

    ``start_method``: ``"spawn"`` starts clean interpreters (each re-imports PyTorch: seconds per
    rank); ``"fork"`` copies this process and is about twice as fast to start, but cannot be used
    once CUDA is initialised. ``None`` picks ``"fork"`` for ``gloo`` on Linux while CUDA is not
    initialised, else ``"spawn"``. With ``"spawn"``, ``fn`` must be importable by the child processes
    (a module-level function, not one defined in a notebook).

    On one machine this is what ``torchrun --nproc_per_node=N`` does for you; across machines use
    ``torchrun --nnodes ... --rdzv-endpoint ...`` and ``init_method="env://"``.
    """
    import torch.multiprocessing as mp

    backend = _check_world(world_size, backend)
    if start_method is None:
        can_fork = sys.platform == "linux" and not torch.cuda.is_initialized()
        start_method = "fork" if backend == "gloo" and can_fork else "spawn"
    if start_method not in ("spawn", "fork", "forkserver"):
        raise ValueError(f"start_method must be 'spawn', 'fork' or 'forkserver', got {start_method!r}")
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    if not isinstance(args, tuple):
        raise TypeError(f"args must be a tuple, got {type(args).__name__}")
    with tempfile.TemporaryDirectory(prefix="bmlib-dist-") as tmp:
        init_file = os.path.join(tmp, "rendezvous")
        mp.start_processes(_worker, args=(world_size, backend, init_file, tmp, fn, args, threads_per_rank),
                           nprocs=world_size, join=True, start_method=start_method)
        return [torch.load(Path(tmp) / f"rank{r}.pt", weights_only=False) for r in range(world_size)]


def _check_batch(cfg, idx, targets, world_size):
    from .models.gpt import GPTConfig

    if not isinstance(cfg, GPTConfig):
        raise TypeError(f"cfg must be a GPTConfig, got {type(cfg).__name__}")
    if not (isinstance(idx, torch.Tensor) and idx.dim() == 2):
        raise ValueError(f"idx must be a (B, T) tensor of token ids, got "
                         f"{tuple(idx.shape) if isinstance(idx, torch.Tensor) else type(idx).__name__}")
    if not (isinstance(targets, torch.Tensor) and targets.shape == idx.shape):
        raise ValueError(f"targets must have the shape of idx {tuple(idx.shape)}")
    if idx.shape[0] % world_size:
        raise ValueError(f"the global batch ({idx.shape[0]}) must be divisible by world_size "
                         f"({world_size}) so every rank gets an equal slice")


def _grads(model) -> dict:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def reference_gradients(cfg, idx, targets, seed: int = 0) -> dict:
    """Gradients of the mean loss over the whole batch in one process: ``{name: grad}``."""
    from .models.gpt import GPT

    _check_batch(cfg, idx, targets, 1)
    torch.manual_seed(seed)
    model = GPT(cfg)
    model(idx, targets)[1].backward()
    return _grads(model)


def _step(rank, world_size, strategy, cfg, idx, targets, seed):
    import torch.distributed as dist

    from .models.gpt import GPT

    dev = torch.device("cuda", rank) if dist.get_backend() == "nccl" else torch.device("cpu")
    torch.manual_seed(seed)  # same initial weights on every rank
    model = GPT(cfg).to(dev)
    full_numel = sum(p.numel() for p in model.parameters())
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(model, device_ids=[rank] if dev.type == "cuda" else None)  # broadcasts rank 0's weights
        local_numel = full_numel  # every rank holds a full replica
    elif strategy == "dataparallel":
        # nn.DataParallel is single-process: it splits a batch over the GPUs *of this process* (on a
        # CPU it just calls the module) and never touches the process group: no gradient all-reduce.
        model = torch.nn.DataParallel(model, device_ids=[rank] if dev.type == "cuda" else None)
        local_numel = full_numel
    else:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        # the mesh on the model's own device type: left to itself, fully_shard builds a CUDA mesh
        # whenever a GPU is visible, even over a gloo group of CPU ranks (2 ranks on a 1-GPU box)
        mesh = init_device_mesh(dev.type, (world_size,))
        for block in model.transformer.h:  # one all-gather unit per transformer block ...
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)  # ... and one for the rest (embeddings, final LayerNorm)
        local_numel = sum(p.to_local().numel() for p in model.parameters())  # this rank's shards
    b = idx.shape[0] // world_size
    sl = slice(rank * b, (rank + 1) * b)  # this rank's slice of the global batch
    _, loss = model(idx[sl].to(dev), targets[sl].to(dev))
    # DDP all-reduces (averages) gradients bucket by bucket during backward; FSDP reduce-scatters
    # them so each rank keeps only its shard (gathered here in full for the comparison).
    loss.backward()
    grads = {}
    for n, p in model.named_parameters():
        if p.grad is not None:
            g = p.grad.full_tensor() if strategy == "fsdp" else p.grad
            grads[n.removeprefix("module.")] = g.detach().cpu().clone()
    return {"grads": grads, "local_numel": local_numel, "full_numel": full_numel}


def _steps(rank, world_size, strategies, cfg, idx, targets, seed):
    return {s: _step(rank, world_size, s, cfg, idx, targets, seed) for s in strategies}


#: ``"dataparallel"`` is the mistake some articles make (``nn.DataParallel`` after
#: ``init_process_group``): each rank then trains on its own slice with no communication at all.
PARALLEL = ("ddp", "fsdp", "dataparallel")


def parallel_gradients(cfg, idx, targets, strategies=PARALLEL, world_size: int = 2,
                       backend: str | None = None, seed: int = 0) -> dict:
    """One training step of ``GPT(cfg)`` (seeded) on ``world_size`` ranks for each strategy:
    ``"ddp"`` (``DistributedDataParallel``), ``"fsdp"`` (FSDP2, ``fully_shard`` per block) and/or
    ``"dataparallel"`` (``nn.DataParallel`` inside the process group: no all-reduce, so each rank's
    gradient is only its own slice's -- shown for contrast).
    Rank ``r`` computes the mean loss on rows ``[r·B/W, (r+1)·B/W)`` of the global batch.

    Returns ``{strategy: [per-rank {"grads": {name: full gradient}, "local_numel": parameters the
    rank stores, "full_numel": parameters of the model}]}``; all strategies share one launch (process
    start-up dominates at this size). The DDP and FSDP gradients equal :func:`reference_gradients` up to
    rounding; the ``"dataparallel"`` ones equal the reference gradients of each rank's own slice.
    """
    backend = _check_world(world_size, backend)
    _check_batch(cfg, idx, targets, world_size)
    strategies = tuple(strategies) if not isinstance(strategies, str) else (strategies,)
    if not strategies or any(s not in PARALLEL for s in strategies):
        raise ValueError(f"strategies must be a non-empty subset of {PARALLEL}, got {strategies!r}")
    per_rank = launch(_steps, world_size, backend, args=(strategies, cfg, idx, targets, seed))
    return {s: [r[s] for r in per_rank] for s in strategies}


def ddp_gradients(cfg, idx, targets, world_size: int = 2, backend: str | None = None,
                  seed: int = 0) -> list[dict]:
    """Every rank's gradients ``{name: grad}`` after one DDP step (see :func:`parallel_gradients`)."""
    out = parallel_gradients(cfg, idx, targets, ("ddp",), world_size, backend, seed)["ddp"]
    return [r["grads"] for r in out]


def max_abs_diff(a: dict, b: dict) -> float:
    """Largest element-wise difference between two ``{name: tensor}`` maps with the same keys."""
    if set(a) != set(b):
        raise ValueError(f"a and b must have the same keys; differ in {sorted(set(a) ^ set(b))[:5]}")
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


# ---------------------------------------------------------------------------------------------
# Memory arithmetic
# ---------------------------------------------------------------------------------------------
STRATEGIES = ("ddp", "zero1", "zero2", "zero3", "fsdp", "tensor", "pipeline")


@dataclass(frozen=True)
class MemoryPerParam:
    """Bytes of model state one device holds per parameter of the whole model."""

    strategy: str
    world_size: int
    weights: float
    grads: float
    optimizer: float

    @property
    def total(self) -> float:
        return self.weights + self.grads + self.optimizer

    def gb(self, n_params: float) -> float:
        """Model-state memory per device in GB (1e9 bytes) for a model of ``n_params`` parameters."""
        if not (isinstance(n_params, (int, float)) and n_params > 0):
            raise ValueError(f"n_params must be a positive number, got {n_params!r}")
        return self.total * n_params / 1e9


def memory_per_param(strategy: str, world_size: int = 1, *, weight_bytes: float = 2,
                     grad_bytes: float = 2, optimizer_bytes: float = 12) -> MemoryPerParam:
    """Model-state bytes per parameter on one device (activations and buffers not included).

    Defaults are mixed-precision Adam: bf16/fp16 weights (2) and gradients (2), plus fp32 master
    weights, momentum and variance (4 + 4 + 4 = 12): 16 bytes per parameter. With ``N_d =
    world_size`` devices (the ZeRO paper's notation, K = ``optimizer_bytes``):

    * ``ddp``: every device holds everything: 2 + 2 + K.
    * ``zero1``: optimizer states sharded: 2 + 2 + K / N_d.
    * ``zero2``: gradients too: 2 + (2 + K) / N_d.
    * ``zero3`` / ``fsdp``: weights too: (2 + 2 + K) / N_d (weights are all-gathered layer by
      layer, so a transient copy of one layer's full weights comes on top).
    * ``tensor`` / ``pipeline``: each device owns 1 / N_d of every matrix (tensor) or of the layers
      (pipeline) with their gradients and optimizer states: (2 + 2 + K) / N_d, assuming an even
      split (replicated biases and LayerNorms, and uneven stages, are ignored).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if not (isinstance(world_size, int) and not isinstance(world_size, bool) and world_size >= 1):
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    for name, v in (("weight_bytes", weight_bytes), ("grad_bytes", grad_bytes),
                    ("optimizer_bytes", optimizer_bytes)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ValueError(f"{name} must be a non-negative number of bytes, got {v!r}")
    n = world_size
    w, g, o = float(weight_bytes), float(grad_bytes), float(optimizer_bytes)
    if strategy == "zero1":
        o /= n
    elif strategy == "zero2":
        g, o = g / n, o / n
    elif strategy != "ddp":  # zero3, fsdp, tensor, pipeline
        w, g, o = w / n, g / n, o / n
    return MemoryPerParam(strategy, n, w, g, o)
