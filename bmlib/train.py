"""The book's one training loop: ``train(model, data, cfg) -> Result``.

Every chapter that trains something (language models, ViT, recommenders, finance, medicine,
fine-tuning, distillation) calls :func:`train`. Two small protocols keep it model-agnostic:

* **data**: any object with ``get_batch(split, batch_size, generator) -> (x, y)`` where ``split`` is
  ``"train"`` or ``"val"`` and ``generator`` a ``torch.Generator`` (all randomness comes from it, so a
  run is reproducible). :class:`ArrayData` (rows of arrays) and :class:`bmlib.data.tokens.TokenData`
  (windows of a token stream) implement it. Optional ``state_dict()/load_state_dict()`` are saved
  in checkpoints so resuming is exact.
* **model**: ``model(x, y) -> (output, loss)`` (bmlib's GPT follows it). With ``cfg.loss_fn`` set,
  the loop calls ``model(x)`` instead and ``loss_fn(output, y)``, so a plain ``nn.Module`` works.
  An optional ``model.flops_per_token(T)`` turns on the MFU meter.

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
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .data.tokens import TokenData  # noqa: F401  (re-exported: bmlib.train.TokenData)

SCHEDULES = ("cosine", "constant")
DTYPES = ("fp32", "bf16")


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became non-finite or exploded; training stopped before the
    bad update, and ``last_checkpoint`` (if any) holds the last good state."""

    def __init__(self, msg: str, step: int, loss: float, last_checkpoint: str | None):
        super().__init__(msg)
        self.step, self.loss, self.last_checkpoint = step, loss, last_checkpoint


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
    checkpoint_dir: str | None = None
    checkpoint_interval: int = 0  # 0: checkpoint only at the end (when checkpoint_dir is set)
    keep_checkpoints: int = 2
    progress: bool = True
    loss_fn: Callable | None = None
    divergence_ratio: float | None = 10.0  # stop when loss > ratio x first loss (None: NaN/inf only)

    def __post_init__(self):
        def pos_int(name, minimum=1):
            v = getattr(self, name)
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= minimum):
                raise ValueError(f"{name} must be an int >= {minimum}, got {v!r}")

        for name in ("max_steps", "batch_size", "grad_accum", "eval_iters", "keep_checkpoints"):
            pos_int(name, 1)
        for name in ("warmup_steps", "eval_interval", "checkpoint_interval", "seed"):
            pos_int(name, 0)
        if self.eval_batch_size is not None:
            pos_int("eval_batch_size", 1)
        if not (isinstance(self.lr, (int, float)) and self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive finite number, got {self.lr!r}")
        if self.min_lr is not None and not (isinstance(self.min_lr, (int, float)) and 0 <= self.min_lr <= self.lr):
            raise ValueError(f"min_lr must lie in [0, lr={self.lr}], got {self.min_lr!r}")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.lr_schedule not in SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {SCHEDULES}, got {self.lr_schedule!r}")
        if self.warmup_steps > self.max_steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be <= max_steps ({self.max_steps})")
        if self.grad_clip is not None and not (isinstance(self.grad_clip, (int, float)) and self.grad_clip > 0):
            raise ValueError(f"grad_clip must be None or > 0, got {self.grad_clip!r}")
        if not (isinstance(self.betas, (tuple, list)) and len(self.betas) == 2
                and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in self.betas)):
            raise ValueError(f"betas must be a pair of numbers in [0, 1), got {self.betas!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.loss_fn is not None and not callable(self.loss_fn):
            raise TypeError(f"loss_fn must be callable(output, y) -> loss, got {type(self.loss_fn).__name__}")
        if self.divergence_ratio is not None and not (isinstance(self.divergence_ratio, (int, float))
                                                      and self.divergence_ratio > 1):
            raise ValueError(f"divergence_ratio must be None or > 1, got {self.divergence_ratio!r}")

    @property
    def final_lr(self) -> float:
        return self.lr / 10 if self.min_lr is None else float(self.min_lr)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["loss_fn"] = getattr(self.loss_fn, "__name__", None) if self.loss_fn else None
        d["betas"] = list(self.betas)
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


class ArrayData:
    """Rows of ``x``/``y`` arrays as the data protocol.

    ``train`` batches walk a fresh random permutation each epoch (sampling without replacement),
    drawn from the generator; ``val`` batches are random rows without replacement within a batch.
    The epoch position is part of :meth:`state_dict`, so checkpoints resume exactly.
    """

    def __init__(self, x_train, y_train, x_val, y_val):
        self.x = {"train": torch.as_tensor(x_train), "val": torch.as_tensor(x_val)}
        self.y = {"train": torch.as_tensor(y_train), "val": torch.as_tensor(y_val)}
        for s in ("train", "val"):
            if self.x[s].shape[0] != self.y[s].shape[0]:
                raise ValueError(f"x_{s} has {self.x[s].shape[0]} rows but y_{s} has {self.y[s].shape[0]}")
            if self.x[s].shape[0] == 0:
                raise ValueError(f"x_{s} must have at least one row")
        self._perm: torch.Tensor | None = None
        self._pos = 0
        self.epoch = 0

    def __len__(self) -> int:
        return self.x["train"].shape[0]

    def get_batch(self, split: str, batch_size: int, generator: torch.Generator):
        _check_batch_args(split, batch_size)
        n = self.x[split].shape[0]
        if split == "val":
            idx = torch.randperm(n, generator=generator)[:batch_size]
            return self.x["val"][idx], self.y["val"][idx]
        out = []
        need = batch_size
        while need > 0:
            if self._perm is None or self._pos >= n:
                self._perm = torch.randperm(n, generator=generator)
                self._pos = 0
                self.epoch += 1
            take = self._perm[self._pos:self._pos + need]
            self._pos += len(take)
            need -= len(take)
            out.append(take)
        idx = torch.cat(out)
        return self.x["train"][idx], self.y["train"][idx]

    def state_dict(self) -> dict:
        return {"perm": self._perm, "pos": self._pos, "epoch": self.epoch}

    def load_state_dict(self, st: dict) -> None:
        self._perm, self._pos, self.epoch = st["perm"], st["pos"], st["epoch"]


def _check_batch_args(split, batch_size):
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")


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
    _check_batch_args(split, batch_size)
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


def _peak_flops(dtype: str):
    try:
        from .hw import current

        return current().peak_flops(dtype)
    except Exception:
        return None


def train(model: torch.nn.Module, data, cfg: TrainConfig, *, resume_from=None,
          callbacks: list | None = None) -> Result:
    """Train ``model`` on ``data`` for ``cfg.max_steps`` optimizer steps; see the module docstring.

    ``resume_from``: a checkpoint folder (or a ``checkpoint_dir`` with ``latest.json``); weights,
    optimizer, RNG states, data state and history are restored and training continues to
    ``cfg.max_steps`` exactly as if it had never stopped.
    ``callbacks``: functions ``cb(record, model)`` called after every step with that step's history
    record; one returning ``True`` stops training early (a checkpoint is still written).
    """
    from tqdm import tqdm

    from . import checkpoint as ckpt
    from .env import device as default_device

    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(getattr(data, "get_batch", None)):
        raise TypeError(f"data must have get_batch(split, batch_size, generator), got {type(data).__name__}")
    callbacks = list(callbacks or [])
    device = default_device(cfg.device)
    model.to(device)
    opt = make_optimizer(model, cfg, device)
    gen = torch.Generator().manual_seed(cfg.seed)
    history: list[dict] = []
    evals: list[dict] = []
    step, first_loss, train_seconds, train_tokens = 0, None, 0.0, 0
    if resume_from is not None:
        state = ckpt.load(resume_from, model, opt)
        ex = state["extra"]
        step = state["step"]
        gen.set_state(ex["generator"])
        if ex.get("data") is not None and hasattr(data, "load_state_dict"):
            data.load_state_dict(ex["data"])
        history, evals = list(ex.get("history", [])), list(ex.get("evals", []))
        first_loss = ex.get("first_loss")
        train_seconds, train_tokens = ex.get("train_seconds", 0.0), ex.get("train_tokens", 0)
    else:
        torch.manual_seed(cfg.seed)  # dropout masks: reproducible for a given seed
    if step > cfg.max_steps:
        raise ValueError(f"checkpoint is at step {step}, beyond cfg.max_steps={cfg.max_steps}")

    fwd_model = torch.compile(model) if cfg.compile else model
    autocast = _autocast_factory(cfg, device)
    eval_bs = cfg.eval_batch_size or cfg.batch_size
    flops_fn = getattr(model, "flops_per_token", None)
    peak = _peak_flops(cfg.dtype) if callable(flops_fn) else None
    use_cuda = torch.device(device).type == "cuda"
    last_ckpt: str | None = None
    if cfg.checkpoint_dir is not None:
        try:
            last_ckpt = str(ckpt.resolve(cfg.checkpoint_dir))
        except ckpt.CheckpointError:
            last_ckpt = None

    def save_ckpt():
        nonlocal last_ckpt
        if cfg.checkpoint_dir is None:
            return
        root = Path(cfg.checkpoint_dir)
        extra = {"generator": gen.get_state(), "history": history, "evals": evals, "first_loss": first_loss,
                 "train_seconds": train_seconds, "train_tokens": train_tokens,
                 "data": data.state_dict() if hasattr(data, "state_dict") else None,
                 "config": {k: v for k, v in cfg.to_dict().items() if k != "loss_fn"}}
        d = ckpt.save(root / f"step_{step:07d}", model, opt, step=step, extra=extra)
        ckpt.write_latest(root, d, keep=cfg.keep_checkpoints)
        last_ckpt = str(d)

    def run_eval():
        g_val = torch.Generator().manual_seed(cfg.seed + 1)
        g_tr = torch.Generator().manual_seed(cfg.seed + 2)
        kw = dict(cfg=cfg, device=device)
        rec = {"step": step,
               "train_loss": evaluate(fwd_model, data, cfg.eval_iters, eval_bs, g_tr, split="train", **kw),
               "val_loss": evaluate(fwd_model, data, cfg.eval_iters, eval_bs, g_val, split="val", **kw)}
        evals.append(rec)
        return rec

    t_start = time.perf_counter()
    bar = tqdm(total=cfg.max_steps, initial=step, desc="train", disable=not cfg.progress, leave=False,
               mininterval=2.0)  # few redraws: notebooks store every one of them
    model.train()
    stopped = False
    try:
        while step < cfg.max_steps and not stopped:
            lr = lr_at(step, cfg)
            for g in opt.param_groups:
                g["lr"] = lr
            t0 = time.perf_counter()
            loss_sum, tokens = 0.0, 0
            for _ in range(cfg.grad_accum):
                x, y = data.get_batch("train", cfg.batch_size, gen)
                tokens += _count_tokens(x)
                x, y = _to_device(x, device), _to_device(y, device)
                loss = _loss(fwd_model, x, y, cfg, autocast)
                (loss / cfg.grad_accum).backward()
                loss_sum += loss.detach().float()
            loss_val = float(loss_sum) / cfg.grad_accum
            if first_loss is None:
                first_loss = loss_val
            bad = None
            if not math.isfinite(loss_val):
                bad = f"the training loss is {loss_val}"
            elif cfg.divergence_ratio is not None and loss_val > cfg.divergence_ratio * abs(first_loss) > 0:
                bad = (f"the training loss {loss_val:.4g} exceeds divergence_ratio={cfg.divergence_ratio} "
                       f"x the first loss {first_loss:.4g}")
            if cfg.grad_clip is not None:
                gnorm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
            else:
                gnorm = float(torch.linalg.vector_norm(torch.stack(
                    [p.grad.detach().float().norm() for p in model.parameters() if p.grad is not None])))
            if bad is None and not math.isfinite(gnorm):
                bad = f"the gradient norm is {gnorm}"
            if bad is not None:
                opt.zero_grad(set_to_none=True)
                where = f"; the last good checkpoint is {last_ckpt}" if last_ckpt else \
                    " (no checkpoint was written: set checkpoint_dir/checkpoint_interval to keep one)"
                raise TrainingDiverged(
                    f"training diverged at step {step + 1}: {bad}. The weights were not updated{where}. "
                    "Lower lr, add warm-up or grad_clip, or check the data for NaNs.", step + 1, loss_val, last_ckpt)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if use_cuda:
                torch.cuda.synchronize(device)
            dt = time.perf_counter() - t0
            step += 1
            train_seconds += dt
            train_tokens += tokens
            tps = tokens / dt if dt > 0 else float("nan")
            mfu = None
            if peak and _is_token_batch(x):
                mfu = flops_fn(int(x.shape[1])) * tps / peak
            rec = {"step": step, "lr": lr, "train_loss": loss_val, "val_loss": None, "grad_norm": gnorm,
                   "tokens_per_s": tps, "mfu": mfu}
            if (cfg.eval_interval and step % cfg.eval_interval == 0) or step == cfg.max_steps:
                rec["val_loss"] = run_eval()["val_loss"]
            history.append(rec)
            for cb in callbacks:
                stopped = bool(cb(rec, model)) or stopped
            if cfg.checkpoint_dir is not None and (
                    step == cfg.max_steps or stopped
                    or (cfg.checkpoint_interval and step % cfg.checkpoint_interval == 0)):
                save_ckpt()
            bar.update(1)
            bar.set_postfix(loss=f"{loss_val:.3f}", tok_s=f"{tps:,.0f}", refresh=False)
    finally:
        bar.close()
    if not evals or evals[-1]["step"] != step:
        run_eval()
        if history:
            history[-1]["val_loss"] = evals[-1]["val_loss"]
    avg_tps = train_tokens / train_seconds if train_seconds > 0 else float("nan")
    mfus = [h["mfu"] for h in history if h.get("mfu") is not None]
    avg_mfu = None
    if mfus and peak:
        T = history and _last_seq_len(data)
        avg_mfu = flops_fn(T) * avg_tps / peak if T else sum(mfus) / len(mfus)
    return Result(final_train_loss=evals[-1]["train_loss"], final_val_loss=evals[-1]["val_loss"],
                  best_val_loss=min(e["val_loss"] for e in evals), history=history, tokens_per_s=avg_tps,
                  mfu=avg_mfu, steps=step, seconds=time.perf_counter() - t_start, model=model, evals=evals,
                  checkpoint=last_ckpt)


def _is_token_batch(x) -> bool:
    return isinstance(x, torch.Tensor) and not x.is_floating_point() and x.dim() == 2


def _last_seq_len(data):
    return getattr(data, "block_size", None)


# ---------------------------------------------------------------------------- benchmarking a step


class HFCausalLM(torch.nn.Module):
    """A Hugging Face causal LM (e.g. ``GPT2LMHeadModel``) behind the book's ``model(x, y) ->
    (logits, loss)`` protocol, with the same loss (mean next-token cross-entropy in fp32 over
    pre-shifted targets) and the same FLOP count as :meth:`bmlib.models.gpt.GPT.flops_per_token`."""

    def __init__(self, hf):
        super().__init__()
        self.hf = hf
        c = hf.config
        self.n_layer, self.n_embd = c.n_layer, c.n_embd
        self.vocab_size, self.block_size = c.vocab_size, c.n_positions

    def forward(self, x, y=None):
        logits = self.hf(input_ids=x).logits  # (B, T, V)
        loss = None
        if y is not None:
            loss = torch.nn.functional.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1),
                                                     ignore_index=-100)
        return logits, loss

    def flops_per_token(self, seq_len: int, training: bool = True) -> float:
        emb = self.hf.transformer.wte.weight.numel() + self.hf.transformer.wpe.weight.numel()
        N = sum(p.numel() for p in self.hf.parameters()) - emb + self.vocab_size * self.n_embd
        fwd = 2 * N + 4 * self.n_layer * seq_len * self.n_embd
        return float(3 * fwd if training else fwd)


def _as_protocol_model(model):
    if isinstance(model, torch.nn.Module) and hasattr(model, "flops_per_token"):
        return model
    cfg = getattr(model, "config", None)
    if cfg is not None and getattr(cfg, "model_type", None) == "gpt2":
        return HFCausalLM(model)
    raise TypeError(f"model must be a bmlib GPT-like module with flops_per_token or a Hugging Face "
                    f"GPT2LMHeadModel, got {type(model).__name__}")


def measure_train_step(model, batch_size: int, seq_len: int, *, dtype: str = "bf16", compile: bool = False,
                       fused: bool | None = None, device=None, lr: float = 1e-4, grad_clip: float | None = 1.0,
                       warmup_s: float = 1.0, budget_s: float = 3.0, min_reps: int = 5, max_reps: int = 50,
                       seed: int = 0) -> dict:
    """Time one full training step (forward, backward, clip, AdamW) with :func:`bmlib.bench.measure`.

    ``model`` is a bmlib GPT (anything with ``flops_per_token``) or a Hugging Face
    ``GPT2LMHeadModel`` (wrapped by :class:`HFCausalLM`). It is trained *in place* on random
    tokens, so pass a fresh one. ``dtype``: ``"bf16"`` autocast or ``"fp32"``; ``fused``: fused AdamW
    (default: on CUDA). Returns ``tokens_per_s``, ``mfu`` (against :func:`bmlib.hw.current`'s peak
    for ``dtype``), ``step_ms`` (median) and the measurement's details; on CUDA also the peak memory.
    """
    from .bench import measure
    from .env import device as default_device

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    m = _as_protocol_model(model)
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
    peak = _peak_flops(dtype)
    out = {"tokens_per_s": t.per_s(tokens), "step_ms": t.median_ms, "iqr_ms": t.iqr_ms, "reps": t.reps,
           "timer": t.timer, "flops_per_step": flops, "tflops": t.per_s(flops) / 1e12,
           "mfu": (t.per_s(flops) / peak) if peak else None, "peak_tflops": (peak / 1e12) if peak else None,
           "batch_size": batch_size, "seq_len": seq_len, "dtype": dtype, "compile": bool(compile),
           "fused": bool(opt.defaults.get("fused")), "device": str(dev),
           "params": sum(p.numel() for p in m.parameters())}
    if use_cuda:
        out["peak_mem_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    return out
