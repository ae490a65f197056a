"""The book's one training loop: ``train(model, data, cfg) -> Result``.

Every chapter that trains something (language models, ViT, recommenders, finance, medicine,
fine-tuning, distillation) calls :func:`train`. Two small protocols keep it model-agnostic:

* **data**: any object with ``get_batch(split, batch_size, generator) -> (x, y)`` where ``split`` is
  ``"train"`` or ``"val"`` and ``generator`` a ``torch.Generator`` (all randomness comes from it, so a
  run is reproducible). :class:`bmlib.data.arrays.ArrayData` (rows of arrays) and :class:`bmlib.data.tokens.TokenData`
  (windows of a token stream) implement it. Optional ``state_dict()/load_state_dict()`` are saved
  in checkpoints so resuming is exact.
* **model**: ``model(x, y) -> (output, loss)`` (bmlib's GPT follows it). With ``cfg.loss_fn`` set,
  the loop calls ``model(x)`` instead and ``loss_fn(output, y)``, so a plain ``nn.Module`` works.
  A ``model.flops_per_token(T)`` and a ``peak_flops`` passed to :func:`train` turn on the MFU meter.

What the loop does each step, in order: learning rate from the schedule (linear warm-up, cosine
decay to ``min_lr``); ``grad_accum`` micro-batches of ``batch_size`` each (loss divided by
``grad_accum``, so the update equals one batch of ``batch_size * grad_accum``); a divergence check
(non-finite or exploding loss/gradient raises :class:`TrainingDiverged` before the weights are
touched, leaving the last good checkpoint in place); gradient clipping; an AdamW step (decay on
weights with ``dim >= 2``, none on biases and LayerNorm gains, as in nanoGPT); evaluation every
``eval_interval`` steps; a checkpoint every ``checkpoint_interval`` steps.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .data.arrays import check_batch_args
from .data.tokens import TokenData  # noqa: F401  (re-exported: bmlib.train.TokenData)

SCHEDULES = ("cosine", "constant")
DTYPES = ("fp32", "bf16")


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became non-finite or exploded; training stopped before the
    bad update, and ``last_checkpoint`` (if any) holds the last good state."""

    def __init__(self, msg: str, step: int, loss: float, last_checkpoint: str | None):
        super().__init__(msg)
        self.step, self.loss, self.last_checkpoint = step, loss, last_checkpoint


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_int(cfg, name: str, minimum: int) -> None:
    v = getattr(cfg, name)
    if not (isinstance(v, int) and not isinstance(v, bool) and v >= minimum):
        raise ValueError(f"{name} must be an int >= {minimum}, got {v!r}")


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of the loop, validated. ``batch_size`` is the micro-batch; the optimizer sees
    ``batch_size * grad_accum`` examples per step."""

    max_steps: int = 100
    batch_size: int = 16
    lr: float = 3e-4
    min_lr: float | None = None  # None: lr / 10 (the end of the cosine)
    weight_decay: float = 0.1
    warmup_steps: int = 0
    lr_schedule: str = "cosine"
    grad_clip: float | None = 1.0
    grad_accum: int = 1
    eval_interval: int = 0  # 0: evaluate only at the end
    eval_iters: int = 10
    eval_batch_size: int | None = None  # None: batch_size
    betas: tuple = (0.9, 0.95)
    eps: float = 1e-8
    seed: int = 0
    device: str | None = None  # None: bmlib.env.device()
    dtype: str = "fp32"  # "bf16": autocast to bfloat16 (meant for CUDA; allowed on CPU)
    compile: bool = False
    fused: bool | None = None  # None: fused AdamW on CUDA, the plain loop on CPU
    checkpoint_dir: str | os.PathLike | None = None
    checkpoint_interval: int = 0  # 0: checkpoint only at the end (when checkpoint_dir is set)
    keep_checkpoints: int = 2
    progress: bool = True
    loss_fn: Callable | None = None
    divergence_ratio: float | None = 10.0  # stop when loss > ratio x first loss (None: NaN/inf only)

    def __post_init__(self):
        for name in ("max_steps", "batch_size", "grad_accum", "eval_iters", "keep_checkpoints"):
            _check_int(self, name, 1)
        for name in ("warmup_steps", "eval_interval", "checkpoint_interval", "seed"):
            _check_int(self, name, 0)
        if self.eval_batch_size is not None:
            _check_int(self, "eval_batch_size", 1)
        if not (_is_number(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive finite number, got {self.lr!r}")
        if self.min_lr is not None and not (_is_number(self.min_lr) and 0 <= self.min_lr <= self.lr):
            raise ValueError(f"min_lr must be None or a number in [0, lr={self.lr}], got {self.min_lr!r}")
        if not (_is_number(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}")
        if self.lr_schedule not in SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {SCHEDULES}, got {self.lr_schedule!r}")
        if self.warmup_steps > self.max_steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be <= max_steps ({self.max_steps})")
        if self.grad_clip is not None and not (_is_number(self.grad_clip) and self.grad_clip > 0):
            raise ValueError(f"grad_clip must be None or a positive finite number, got {self.grad_clip!r}")
        if not (isinstance(self.betas, (tuple, list)) and len(self.betas) == 2
                and all(_is_number(b) and 0 <= b < 1 for b in self.betas)):
            raise ValueError(f"betas must be a pair of numbers in [0, 1), got {self.betas!r}")
        if not (_is_number(self.eps) and self.eps > 0):
            raise ValueError(f"eps must be a positive finite number, got {self.eps!r}")
        if self.device is not None:
            if not isinstance(self.device, str):
                raise TypeError(f"device must be None or a device string like 'cpu' or 'cuda:0', "
                                f"got {type(self.device).__name__}")
            try:
                torch.device(self.device)
            except RuntimeError as e:
                raise ValueError(f"device must be None or a device string like 'cpu' or 'cuda:0', "
                                 f"got {self.device!r}") from e
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        for name, allow_none in (("compile", False), ("fused", True), ("progress", False)):
            v = getattr(self, name)
            if not (isinstance(v, bool) or (allow_none and v is None)):
                raise TypeError(f"{name} must be {'None or ' if allow_none else ''}a bool, got {v!r}")
        if self.checkpoint_dir is not None and not isinstance(self.checkpoint_dir, (str, os.PathLike)):
            raise TypeError(f"checkpoint_dir must be None or a path, got {type(self.checkpoint_dir).__name__}")
        if self.loss_fn is not None and not callable(self.loss_fn):
            raise TypeError(f"loss_fn must be callable(output, y) -> loss, got {type(self.loss_fn).__name__}")
        if self.divergence_ratio is not None and not (_is_number(self.divergence_ratio)
                                                      and self.divergence_ratio > 1):
            raise ValueError(f"divergence_ratio must be None or a finite number > 1, got {self.divergence_ratio!r}")

    @property
    def final_lr(self) -> float:
        return self.lr / 10 if self.min_lr is None else float(self.min_lr)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["loss_fn"] = getattr(self.loss_fn, "__name__", None) if self.loss_fn else None
        d["betas"] = list(self.betas)
        d["checkpoint_dir"] = None if self.checkpoint_dir is None else str(self.checkpoint_dir)
        return d


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warm-up from ``lr/warmup`` to
    ``lr`` over ``warmup_steps``, then constant or a half cosine down to ``min_lr`` at ``max_steps``."""
    if not (isinstance(step, int) and step >= 0):
        raise ValueError(f"step must be a non-negative int, got {step!r}")
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.lr
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    ratio = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.final_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.lr - cfg.final_lr)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups as in nanoGPT: decay for tensors with ``dim >= 2`` (matmul weights, embeddings),
    none for biases and LayerNorm parameters. Tied weights appear once."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    if not params:
        raise ValueError("model has no trainable parameters (all requires_grad=False)")
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model, cfg: TrainConfig, device) -> torch.optim.AdamW:
    fused = cfg.fused if cfg.fused is not None else (torch.device(device).type == "cuda")
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas),
                             eps=cfg.eps, fused=bool(fused))


@dataclass
class Result:
    """What :func:`train` returns. ``history`` has one dict per optimizer step (``val_loss`` is
    ``None`` except on evaluation steps); ``evals`` one dict per evaluation."""

    final_train_loss: float
    final_val_loss: float
    best_val_loss: float
    history: list
    tokens_per_s: float
    mfu: float | None
    steps: int
    seconds: float
    model: torch.nn.Module = field(repr=False)
    evals: list = field(default_factory=list)
    checkpoint: str | None = None
    train_seconds: float = 0.0  # the optimizer steps only (``seconds`` includes evaluation and checkpoints)
    flops: float | None = None  # total model FLOPs of the steps (None without the MFU meter)


def _to_device(t, device):
    if isinstance(t, torch.Tensor):
        return t.to(device, non_blocking=True)
    if isinstance(t, (tuple, list)):
        return type(t)(_to_device(i, device) for i in t)
    if isinstance(t, dict):
        return {k: _to_device(v, device) for k, v in t.items()}
    return t


def _count_tokens(x) -> int:
    """Tokens in a batch: ``B*T`` for an integer (token id) tensor, else the number of rows."""
    if isinstance(x, (tuple, list)):
        x = x[0]
    if isinstance(x, dict):
        x = next(iter(x.values()))
    if not isinstance(x, torch.Tensor):
        return 1
    if not x.is_floating_point() and x.dim() >= 2:
        return x.numel()
    return x.shape[0] if x.dim() else 1


def _loss(model, x, y, cfg: TrainConfig, autocast):
    with autocast():
        if cfg.loss_fn is None:
            out = model(x, y)
            if not (isinstance(out, (tuple, list)) and len(out) == 2):
                raise TypeError("model(x, y) must return (output, loss); pass cfg.loss_fn for models "
                                "that return only an output")
            loss = out[1]
        else:
            out = model(x)
            output = out[0] if isinstance(out, (tuple, list)) else out
            loss = cfg.loss_fn(output, y)
    if not (isinstance(loss, torch.Tensor) and loss.dim() == 0):
        raise TypeError(f"the loss must be a scalar tensor, got {type(loss).__name__}"
                        f"{tuple(loss.shape) if isinstance(loss, torch.Tensor) else ''}")
    return loss


def _autocast_factory(cfg: TrainConfig, device):
    dev = torch.device(device)
    if cfg.dtype == "bf16":
        return lambda: torch.autocast(device_type=dev.type, dtype=torch.bfloat16)
    return lambda: torch.autocast(device_type=dev.type, enabled=False)


@torch.no_grad()
def evaluate(model, data, iters: int = 10, batch_size: int = 16, generator: torch.Generator | None = None,
             *, split: str = "val", cfg: TrainConfig | None = None, device=None) -> float:
    """Mean loss over ``iters`` batches of ``split``, in eval mode (no dropout), without gradients.

    ``generator`` defaults to a fresh one seeded with 1, so repeated evaluations see the same
    batches and differences between them are the model's, not the sampling's."""
    if not (isinstance(iters, int) and iters >= 1):
        raise ValueError(f"iters must be an int >= 1, got {iters!r}")
    check_batch_args(split, batch_size)
    cfg = cfg or TrainConfig(progress=False)
    device = device or _model_device(model)
    generator = generator if generator is not None else torch.Generator().manual_seed(1)
    autocast = _autocast_factory(cfg, device)
    was_training = model.training
    model.eval()
    total = 0.0
    try:
        for _ in range(iters):
            x, y = data.get_batch(split, batch_size, generator)
            total += _loss(model, _to_device(x, device), _to_device(y, device), cfg, autocast).item()
    finally:
        model.train(was_training)
    return total / iters


def _model_device(model):
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def resolve_peak_flops(peak_flops, device, dtype: str) -> float | None:
    """The peak FLOP/s that MFU divides by. ``peak_flops`` is a positive number (a datasheet or a
    measured peak: say which in the text), ``None`` (no MFU), or ``"auto"``: on a CUDA device the
    datasheet entry of :func:`bmlib.hw.lookup` for its exact name and memory (raising, as ``lookup``
    does, for a GPU the table does not know: pass the number instead); on a CPU ``None``, as
    :func:`bmlib.hw.current` says: no datasheet peak a reader can trust (pass a measured one)."""
    if peak_flops is None:
        return None
    if isinstance(peak_flops, str):
        if peak_flops != "auto":
            raise ValueError(f"peak_flops must be a positive number, None or 'auto', got {peak_flops!r}")
        from . import hw

        dev = torch.device(device)
        if dev.type != "cuda":
            return None
        i = dev.index if dev.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(i)
        return hw.lookup(torch.cuda.get_device_name(i), int(props.total_memory)).peak_flops(dtype)
    if not (_is_number(peak_flops) and peak_flops > 0):
        raise ValueError(f"peak_flops must be a positive number, None or 'auto', got {peak_flops!r}")
    return float(peak_flops)


def _mfu(flops: float, seconds: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation: model FLOPs done / seconds taken / peak FLOP/s."""
    return flops / seconds / peak if peak is not None and seconds > 0 else None


#: TrainConfig fields a resumed run may change without changing the trajectory it continues.
RESUME_FREE = ("progress", "checkpoint_dir", "checkpoint_interval", "keep_checkpoints")
_RESUME_KEYS = ("generator", "history", "evals", "first_loss", "train_seconds", "train_tokens",
                "train_flops", "data", "config")


def config_changes(saved: dict, cfg: TrainConfig, allow_changes=()) -> dict:
    """``{field: (saved value, new value)}`` for every field of ``cfg`` that differs from the saved
    config (``TrainConfig.to_dict()``), except :data:`RESUME_FREE` and the fields in ``allow_changes``."""
    allow = (allow_changes,) if isinstance(allow_changes, str) else tuple(allow_changes)
    unknown = [f for f in allow if f not in TrainConfig.__dataclass_fields__]
    if unknown:
        raise ValueError(f"allow_changes must name TrainConfig fields, got unknown {unknown}")
    now = cfg.to_dict()
    return {k: (saved.get(k, "<not saved>"), v) for k, v in now.items()
            if k not in RESUME_FREE and k not in allow and saved.get(k, "<not saved>") != v}


def _eval_due(step: int, cfg: TrainConfig) -> bool:
    return bool(cfg.eval_interval and step % cfg.eval_interval == 0) or step == cfg.max_steps


def _checkpoint_due(step: int, cfg: TrainConfig, stopped: bool) -> bool:
    return cfg.checkpoint_dir is not None and (
        step == cfg.max_steps or stopped or bool(cfg.checkpoint_interval and step % cfg.checkpoint_interval == 0))


class _Run:
    """One training run's state (step, history, totals, RNG) and its parts: a step, an evaluation,
    a checkpoint. :func:`train` strings them together."""

    def __init__(self, model, data, cfg: TrainConfig, peak_flops):
        from .env import device as default_device

        self.model, self.data, self.cfg = model, data, cfg
        self.device = default_device(cfg.device)
        model.to(self.device)
        self.opt = make_optimizer(model, cfg, self.device)
        self.fwd = torch.compile(model) if cfg.compile else model
        self.autocast = _autocast_factory(cfg, self.device)
        self.use_cuda = torch.device(self.device).type == "cuda"
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.peak = resolve_peak_flops(peak_flops, self.device, cfg.dtype)
        self.flops_fn = getattr(model, "flops_per_token", None)
        if self.peak is not None and not callable(self.flops_fn):
            raise ValueError(f"peak_flops asks for MFU, but {type(model).__name__} has no flops_per_token(seq_len)")
        self.step, self.first_loss = 0, None
        self.history: list[dict] = []
        self.evals: list[dict] = []
        self.train_seconds, self.train_tokens, self.train_flops = 0.0, 0, 0.0
        self.last_ckpt: str | None = None

    def resume(self, path, allow_changes) -> None:
        """Restore everything from a checkpoint written by :meth:`save_checkpoint`; refuses (before the
        model is touched) a checkpoint whose config differs from ``cfg`` in a field that changes the run."""
        from . import checkpoint as ckpt

        saved = ckpt.read_state(path)
        ex = saved["extra"]
        missing = [k for k in _RESUME_KEYS if k not in ex]
        if missing:
            raise ValueError(f"resume_from={str(path)!r} lacks {missing}: not a checkpoint written by bmlib.train")
        changed = config_changes(ex["config"], self.cfg, allow_changes)
        if changed:
            what = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise ValueError(f"cfg differs from the config of checkpoint {str(path)!r} ({what}); resuming would not "
                             f"continue the same run. Pass allow_changes={tuple(changed)} to resume anyway")
        if ex["data"] is not None and not callable(getattr(self.data, "load_state_dict", None)):
            raise ValueError(f"the checkpoint holds a data state but {type(self.data).__name__} has no load_state_dict")
        if saved["step"] > self.cfg.max_steps:
            raise ValueError(f"checkpoint is at step {saved['step']}, beyond cfg.max_steps={self.cfg.max_steps}")
        state = ckpt.load(path, self.model, self.opt)
        self.step, self.last_ckpt = state["step"], state["path"]
        self.gen.set_state(ex["generator"])
        if ex["data"] is not None:
            self.data.load_state_dict(ex["data"])
        self.history, self.evals, self.first_loss = list(ex["history"]), list(ex["evals"]), ex["first_loss"]
        self.train_seconds, self.train_tokens, self.train_flops = ex["train_seconds"], ex["train_tokens"], ex["train_flops"]

    def train_step(self) -> dict:
        """One optimizer step (``grad_accum`` micro-batches); returns its history record."""
        cfg = self.cfg
        lr = lr_at(self.step, cfg)
        for g in self.opt.param_groups:
            g["lr"] = lr
        t0 = time.perf_counter()
        loss, tokens, flops = 0.0, 0, 0.0
        for _ in range(cfg.grad_accum):
            x, y = self.data.get_batch("train", cfg.batch_size, self.gen)
            tokens += _count_tokens(x)
            flops += self._model_flops(x)
            x, y = _to_device(x, self.device), _to_device(y, self.device)
            micro = _loss(self.fwd, x, y, cfg, self.autocast)
            (micro / cfg.grad_accum).backward()
            loss += micro.detach().float()
        loss = float(loss) / cfg.grad_accum
        self.first_loss = loss if self.first_loss is None else self.first_loss
        gnorm = self._grad_norm()
        self._stop_if_diverged(loss, gnorm)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.use_cuda:
            torch.cuda.synchronize(self.device)
        dt = time.perf_counter() - t0
        self.step += 1
        self.train_seconds, self.train_tokens, self.train_flops = (self.train_seconds + dt, self.train_tokens + tokens,
                                                                   self.train_flops + flops)
        return {"step": self.step, "lr": lr, "train_loss": loss, "val_loss": None, "grad_norm": gnorm,
                "tokens_per_s": tokens / dt if dt > 0 else float("nan"), "mfu": _mfu(flops, dt, self.peak)}

    def _model_flops(self, x) -> float:
        if self.peak is None:
            return 0.0
        if not _is_token_batch(x):
            raise ValueError("peak_flops asks for MFU, which counts flops_per_token(T) x tokens: the batches "
                             f"must be (B, T) token ids, got {type(x).__name__} {getattr(x, 'shape', '')}")
        return self.flops_fn(int(x.shape[1])) * x.numel()

    def _grad_norm(self) -> float:
        params = self.model.parameters()
        if self.cfg.grad_clip is not None:
            return float(torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip))
        return float(torch.linalg.vector_norm(torch.stack(
            [p.grad.detach().float().norm() for p in params if p.grad is not None])))

    def _stop_if_diverged(self, loss: float, gnorm: float) -> None:
        cfg, bad = self.cfg, None
        if not math.isfinite(loss):
            bad = f"the training loss is {loss}"
        elif cfg.divergence_ratio is not None and loss > cfg.divergence_ratio * abs(self.first_loss) > 0:
            bad = (f"the training loss {loss:.4g} exceeds divergence_ratio={cfg.divergence_ratio} "
                   f"x the first loss {self.first_loss:.4g}")
        elif not math.isfinite(gnorm):
            bad = f"the gradient norm is {gnorm}"
        if bad is None:
            return
        self.opt.zero_grad(set_to_none=True)
        where = (f"; the last good checkpoint is {self.last_ckpt}" if self.last_ckpt else
                 " (no checkpoint was written: set checkpoint_dir/checkpoint_interval to keep one)")
        raise TrainingDiverged(f"training diverged at step {self.step + 1}: {bad}. The weights were not updated"
                               f"{where}. Lower lr, add warm-up or grad_clip, or check the data for NaNs.",
                               self.step + 1, loss, self.last_ckpt)

    def evaluate(self) -> dict:
        """Mean train and val loss on fixed batches (their own generators: the run's RNG is untouched)."""
        cfg = self.cfg
        bs, kw = cfg.eval_batch_size or cfg.batch_size, dict(cfg=cfg, device=self.device)
        rec = {"step": self.step,
               "train_loss": evaluate(self.fwd, self.data, cfg.eval_iters, bs,
                                      torch.Generator().manual_seed(cfg.seed + 2), split="train", **kw),
               "val_loss": evaluate(self.fwd, self.data, cfg.eval_iters, bs,
                                    torch.Generator().manual_seed(cfg.seed + 1), split="val", **kw)}
        self.evals.append(rec)
        return rec

    def save_checkpoint(self) -> None:
        from . import checkpoint as ckpt

        root, data = Path(self.cfg.checkpoint_dir), self.data
        extra = {"generator": self.gen.get_state(), "history": self.history, "evals": self.evals,
                 "first_loss": self.first_loss, "train_seconds": self.train_seconds,
                 "train_tokens": self.train_tokens, "train_flops": self.train_flops,
                 "data": data.state_dict() if callable(getattr(data, "state_dict", None)) else None,
                 "config": self.cfg.to_dict()}
        d = ckpt.save(root / f"step_{self.step:07d}", self.model, self.opt, step=self.step, extra=extra)
        ckpt.write_latest(root, d, keep=self.cfg.keep_checkpoints)
        self.last_ckpt = str(d)

    def result(self, seconds: float) -> Result:
        ev = self.evals[-1]
        return Result(final_train_loss=ev["train_loss"], final_val_loss=ev["val_loss"],
                      best_val_loss=min(e["val_loss"] for e in self.evals), history=self.history,
                      tokens_per_s=self.train_tokens / self.train_seconds if self.train_seconds > 0 else float("nan"),
                      mfu=_mfu(self.train_flops, self.train_seconds, self.peak), steps=self.step, seconds=seconds,
                      model=self.model, evals=self.evals, checkpoint=self.last_ckpt,
                      train_seconds=self.train_seconds, flops=self.train_flops if self.peak is not None else None)


def train(model: torch.nn.Module, data, cfg: TrainConfig, *, resume_from=None, allow_changes=(),
          callbacks: list | None = None, peak_flops=None) -> Result:
    """Train ``model`` on ``data`` for ``cfg.max_steps`` optimizer steps; see the module docstring.

    ``resume_from``: a checkpoint folder (or a ``checkpoint_dir`` with ``latest.json``); weights,
    optimizer, RNG states, data state and history are restored and training continues to
    ``cfg.max_steps`` exactly as if it had never stopped. A ``cfg`` that differs from the saved one
    (lr, batch size, seed, max_steps, ...: every field but :data:`RESUME_FREE`) is refused with a
    ValueError naming the fields, unless they are listed in ``allow_changes``.
    ``callbacks``: functions ``cb(record, model)`` called after every step with that step's history
    record; one returning ``True`` stops training early (a checkpoint is still written).
    ``peak_flops``: turns on the MFU meter (see :func:`resolve_peak_flops`): ``Result.mfu`` is the
    total model FLOPs (``model.flops_per_token(T)`` x tokens) / total step seconds / peak.
    """
    from tqdm import tqdm

    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(getattr(data, "get_batch", None)):
        raise TypeError(f"data must have get_batch(split, batch_size, generator), got {type(data).__name__}")
    callbacks = list(callbacks or [])
    run = _Run(model, data, cfg, peak_flops)
    if resume_from is not None:
        run.resume(resume_from, allow_changes)
    else:
        torch.manual_seed(cfg.seed)  # dropout masks: reproducible for a given seed
    t_start, stopped = time.perf_counter(), False
    bar = tqdm(total=cfg.max_steps, initial=run.step, desc="train", disable=not cfg.progress, leave=False,
               mininterval=2.0)  # few redraws: notebooks store every one of them
    model.train()
    try:
        while run.step < cfg.max_steps and not stopped:
            rec = run.train_step()
            if _eval_due(run.step, cfg):
                rec["val_loss"] = run.evaluate()["val_loss"]
            run.history.append(rec)
            stopped = any([bool(cb(rec, model)) for cb in callbacks])  # a list: every callback runs
            if _checkpoint_due(run.step, cfg, stopped):
                run.save_checkpoint()
            bar.update(1)
            bar.set_postfix(loss=f"{rec['train_loss']:.3f}", tok_s=f"{rec['tokens_per_s']:,.0f}", refresh=False)
    finally:
        bar.close()
    if not run.evals or run.evals[-1]["step"] != run.step:  # stopped early, or resumed at the end
        run.evaluate()
        if run.history:
            run.history[-1]["val_loss"] = run.evals[-1]["val_loss"]
    return run.result(time.perf_counter() - t_start)


def _is_token_batch(x) -> bool:
    return isinstance(x, torch.Tensor) and not x.is_floating_point() and x.dim() == 2


# ---------------------------------------------------------------------------- benchmarking a step
def measure_train_step(model, batch_size: int, seq_len: int, *, dtype: str = "bf16", compile: bool = False,
                       fused: bool | None = None, device=None, lr: float = 1e-4, grad_clip: float | None = 1.0,
                       warmup_s: float = 1.0, budget_s: float = 3.0, min_reps: int = 5, max_reps: int = 50,
                       seed: int = 0, peak_flops="auto") -> dict:
    """Time one full training step (forward, backward, clip, AdamW) with :func:`bmlib.bench.measure`.

    ``model`` is a bmlib GPT (anything with ``flops_per_token``) or a Hugging Face
    ``GPT2LMHeadModel`` (wrapped by :class:`bmlib.models.hf.HFCausalLM`). It is trained *in place* on random
    tokens, so pass a fresh one. ``dtype``: ``"bf16"`` autocast or ``"fp32"``; ``fused``: fused AdamW
    (default: on CUDA). Returns ``tokens_per_s``, ``mfu`` (against ``peak_flops``, see
    :func:`resolve_peak_flops`; ``None`` with ``peak_flops=None``), ``step_ms`` (median) and the measurement's details; on CUDA also the peak memory.
    """
    from .bench import measure
    from .env import device as default_device
    from .models.hf import as_protocol_model

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    m = as_protocol_model(model)
    block = getattr(getattr(m, "config", None), "block_size", None) or getattr(m, "block_size", None)
    vocab = getattr(getattr(m, "config", None), "vocab_size", None) or getattr(m, "vocab_size", None)
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if not (isinstance(seq_len, int) and 1 <= seq_len <= (block or seq_len)):
        raise ValueError(f"seq_len must be an int in [1, block_size={block}], got {seq_len!r}")
    dev = default_device(device)
    use_cuda = dev.type == "cuda"
    m.to(dev).train()
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (batch_size, seq_len + 1), generator=g).to(dev)
    x, y = x[:, :-1].contiguous(), x[:, 1:].contiguous()  # (B, T) each
    cfg = TrainConfig(max_steps=1, batch_size=batch_size, lr=lr, dtype=dtype, fused=fused, progress=False,
                      device=str(dev), grad_clip=grad_clip)
    opt = make_optimizer(m, cfg, dev)
    fwd = torch.compile(m) if compile else m
    autocast = _autocast_factory(cfg, dev)

    def step():
        with autocast():
            _, loss = fwd(x, y)
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(m.parameters(), grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    if use_cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    t = measure(step, device=dev, warmup_s=warmup_s, budget_s=budget_s, min_reps=min_reps, max_reps=max_reps)
    tokens = batch_size * seq_len
    flops = m.flops_per_token(seq_len) * tokens
    peak = resolve_peak_flops(peak_flops, dev, dtype)
    out = {"tokens_per_s": t.per_s(tokens), "step_ms": t.median_ms, "iqr_ms": t.iqr_ms, "reps": t.reps,
           "timer": t.timer, "flops_per_step": flops, "tflops": t.per_s(flops) / 1e12,
           "mfu": _mfu(flops, t.median_ms / 1e3, peak), "peak_tflops": (peak / 1e12) if peak else None,
           "batch_size": batch_size, "seq_len": seq_len, "dtype": dtype, "compile": bool(compile),
           "fused": bool(opt.defaults.get("fused")), "device": str(dev),
           "params": sum(p.numel() for p in m.parameters())}
    if use_cuda:
        out["peak_mem_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    return out
