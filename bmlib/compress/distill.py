"""Knowledge distillation: the soft-target loss and a student/teacher wrapper for the book's training loop."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checks import check_token_ids


# --------------------------------------------------------------------------------------------
# Knowledge distillation
# --------------------------------------------------------------------------------------------
def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      targets: torch.Tensor | None = None, temperature: float = 2.0,
                      alpha: float = 0.5, ignore_index: int = -100) -> torch.Tensor:
    """Hinton et al. (2015): ``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)``.

    Logits are (..., V); the KL is summed over the vocabulary and averaged over positions (those
    whose target is not ``ignore_index``). The ``T^2`` keeps the soft-target gradients on the
    scale of the hard ones as T changes. ``targets=None`` requires ``alpha=1``."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"teacher_logits must have the shape of student_logits "
                         f"{tuple(student_logits.shape)}, got {tuple(teacher_logits.shape)}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature <= 0:
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (0.0 <= alpha <= 1.0):
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    V = student_logits.shape[-1]
    s = student_logits.float().reshape(-1, V)  # (N, V)
    t = teacher_logits.detach().float().reshape(-1, V)  # (N, V)
    if targets is None:
        if alpha != 1.0:
            raise ValueError(f"targets are required unless alpha == 1, got alpha={alpha!r}")
        keep = torch.ones(s.shape[0], dtype=torch.bool, device=s.device)
    else:
        if targets.shape != student_logits.shape[:-1]:
            raise ValueError(f"targets must have shape {tuple(student_logits.shape[:-1])}, got {tuple(targets.shape)}")
        keep = targets.reshape(-1) != ignore_index
    T = float(temperature)
    log_ps = F.log_softmax(s / T, dim=-1)
    log_pt = F.log_softmax(t / T, dim=-1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(-1)  # (N,)
    soft = kl[keep].mean() * T * T
    if alpha == 1.0:
        return soft
    hard = F.cross_entropy(s, targets.reshape(-1), ignore_index=ignore_index)
    return alpha * soft + (1 - alpha) * hard


class Distiller(nn.Module):
    """Wraps a student with a frozen teacher so the book's one training loop trains it:
    ``forward(x, y) -> (student logits, distillation loss)``. Only the student's parameters are
    registered (the teacher is held outside ``parameters()``); ``.student`` is the trained model."""

    def __init__(self, student: nn.Module, teacher: nn.Module, temperature: float = 2.0,
                 alpha: float = 0.5):
        super().__init__()
        distillation_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, dtype=torch.long),
                          temperature, alpha)  # validates temperature and alpha
        self.student = student
        self._teacher = (teacher.eval().requires_grad_(False),)
        self.temperature, self.alpha = temperature, alpha

    @property
    def teacher(self) -> nn.Module:
        return self._teacher[0]

    def forward(self, x, y=None):
        logits, hard = self.student(x, y)
        if y is None:
            return logits, hard
        with torch.no_grad():
            t_logits, _ = self.teacher(x)
        return logits, distillation_loss(logits, t_logits, y, self.temperature, self.alpha)

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        self._teacher[0]._apply(fn, *args, **kwargs)
        return self


# --------------------------------------------------------------------------------------------
# Distillation from stored top-k teacher targets (a teacher too costly to run every step)
# --------------------------------------------------------------------------------------------
def _check_k_int(k, V: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not (1 <= k <= V):
        raise ValueError(f"k must be an int in [1, {V}] (the vocabulary size), got {k!r}")
    return k


@torch.no_grad()
def teacher_topk(teacher: nn.Module, windows: torch.Tensor, k: int, batch_size: int = 8) -> tuple:
    """``(top_idx int64 (n, T, k), top_logp float32 (n, T, k))``: the teacher's ``k`` most likely
    next tokens at every position of ``windows`` (n, T) and their log-probabilities (temperature
    1, normalised over the whole vocabulary). Storing these instead of the logits costs ``2 k``
    numbers per token instead of ``V``."""
    check_token_ids(windows, "windows")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    idx, logp = [], []
    for i in range(0, windows.shape[0], batch_size):
        out = teacher(windows[i:i + batch_size])
        logits = out.logits if hasattr(out, "logits") else out[0]  # (b, T, V)
        if i == 0:
            _check_k_int(k, logits.shape[-1])
        lp = F.log_softmax(logits.float(), dim=-1)
        top = lp.topk(k, dim=-1)
        idx.append(top.indices)
        logp.append(top.values)
    return torch.cat(idx), torch.cat(logp)


def topk_distillation_loss(student_logits: torch.Tensor, top_idx: torch.Tensor, top_logp: torch.Tensor,
                           targets: torch.Tensor | None = None, temperature: float = 1.0, alpha: float = 1.0,
                           ignore_index: int = -100) -> torch.Tensor:
    """:func:`distillation_loss` with the teacher known only through its top ``k`` tokens.

    The teacher's distribution is restricted to its top-k tokens and renormalised at temperature
    T, ``p_k(j) = softmax_j(top_logp / T)`` (exact: ``log p = z - log Z``, so dividing stored
    log-probabilities by T equals dividing the logits); the soft loss is ``KL(p_k || softmax(s /
    T))`` with the student normalised over its *whole* vocabulary, ``sum_j p_k(j) (log p_k(j) -
    log p_s(j))``, times ``T^2``. With ``k = V`` it is :func:`distillation_loss`. ``top_idx`` and
    ``top_logp`` are (..., k), ``student_logits`` (..., V)."""
    if not isinstance(top_idx, torch.Tensor) or top_idx.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"top_idx must be an integer tensor of token ids, got "
                        f"{top_idx.dtype if isinstance(top_idx, torch.Tensor) else type(top_idx).__name__}")
    if not isinstance(top_logp, torch.Tensor) or top_logp.shape != top_idx.shape:
        raise ValueError(f"top_logp must have the shape of top_idx {tuple(top_idx.shape)}, got "
                         f"{tuple(top_logp.shape) if isinstance(top_logp, torch.Tensor) else type(top_logp).__name__}")
    if top_idx.shape[:-1] != student_logits.shape[:-1]:
        raise ValueError(f"top_idx must have shape {tuple(student_logits.shape[:-1])} + (k,), got {tuple(top_idx.shape)}")
    V = student_logits.shape[-1]
    if top_idx.numel() and (top_idx.min() < 0 or top_idx.max() >= V):
        raise ValueError(f"top_idx must hold ids in [0, {V}) (the student's vocabulary), got range "
                         f"[{int(top_idx.min())}, {int(top_idx.max())}]")
    # the temperature/alpha/targets checks of the full-vocabulary loss, on a dummy of the right shape
    distillation_loss(torch.zeros(1, 2), torch.zeros(1, 2), None if targets is None else torch.zeros(1, dtype=torch.long),
                      temperature, alpha if targets is not None else 1.0)
    if targets is None and alpha != 1.0:
        raise ValueError(f"targets are required unless alpha == 1, got alpha={alpha!r}")
    if targets is not None and targets.shape != student_logits.shape[:-1]:
        raise ValueError(f"targets must have shape {tuple(student_logits.shape[:-1])}, got {tuple(targets.shape)}")
    k = top_idx.shape[-1]
    s = student_logits.float().reshape(-1, V)  # (N, V)
    T = float(temperature)
    keep = (torch.ones(s.shape[0], dtype=torch.bool, device=s.device) if targets is None
            else targets.reshape(-1) != ignore_index)  # (N,)
    hard = None if alpha == 1.0 else F.cross_entropy(s, targets.reshape(-1), ignore_index=ignore_index)
    if alpha == 0.0:
        return hard
    log_ps = F.log_softmax(s / T, dim=-1).gather(1, top_idx.reshape(-1, k).long())  # (N, k)
    log_pk = F.log_softmax(top_logp.detach().float().reshape(-1, k) / T, dim=-1)  # (N, k)
    kl = (log_pk.exp() * (log_pk - log_ps)).sum(-1)  # (N,)
    soft = kl[keep].mean() * T * T
    return soft if hard is None else alpha * soft + (1 - alpha) * hard


class TopKDistiller(nn.Module):
    """A student trained on stored teacher targets, in the training loop's protocol:
    ``forward(x, y)`` with ``x`` (B, T) ids and ``y`` a dict ``targets`` (B, T) [, ``top_idx``,
    ``top_logp`` (B, T, k)] -> ``(logits, loss)``; the loss is :func:`topk_distillation_loss`
    when the teacher targets are in ``y`` and ``alpha > 0``, else the plain cross-entropy (so
    ``alpha=0`` trains the same student on the same batches without a teacher)."""

    def __init__(self, student: nn.Module, temperature: float = 1.0, alpha: float = 0.9):
        super().__init__()
        distillation_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), temperature, alpha)
        self.student, self.temperature, self.alpha = student, temperature, alpha

    def forward(self, x, y=None):
        if y is None:
            return self.student(x)
        if not isinstance(y, dict) or "targets" not in y:
            raise TypeError("y must be a dict with 'targets' (and 'top_idx', 'top_logp' for distillation)")
        logits, _ = self.student(x)
        if self.alpha == 0.0 or "top_idx" not in y:
            V = logits.shape[-1]
            return logits, F.cross_entropy(logits.float().reshape(-1, V), y["targets"].reshape(-1), ignore_index=-100)
        return logits, topk_distillation_loss(logits, y["top_idx"], y["top_logp"], y["targets"],
                                              self.temperature, self.alpha)


class TopKData:
    """Token windows with their teacher top-k targets as the training loop's data protocol.

    ``ids_train`` (n, T + 1): inputs ``[:, :-1]``, next-token targets ``[:, 1:]``; ``top_idx`` /
    ``top_logp`` (n, T, k): the teacher at the input positions. ``ids_val`` (m, T + 1) has targets
    only. Batches are drawn as :class:`bmlib.data.arrays.ArrayData` draws rows (an epoch-wise
    permutation from the generator), so two students given the same generator see the same batches."""

    def __init__(self, ids_train, top_idx, top_logp, ids_val):
        from ..data.arrays import ArrayData

        ids_train, ids_val = torch.as_tensor(ids_train).long(), torch.as_tensor(ids_val).long()
        top_idx, top_logp = torch.as_tensor(top_idx).long(), torch.as_tensor(top_logp).float()
        for name, a in (("ids_train", ids_train), ("ids_val", ids_val)):
            if a.dim() != 2 or a.shape[1] < 2:
                raise ValueError(f"{name} must be (n, T + 1) token ids with T >= 1, got {tuple(a.shape)}")
        n, T1 = ids_train.shape
        if top_idx.dim() != 3 or top_idx.shape[:2] != (n, T1 - 1) or top_logp.shape != top_idx.shape:
            raise ValueError(f"top_idx and top_logp must be (n, T, k) = ({n}, {T1 - 1}, k), got "
                             f"{tuple(top_idx.shape)} and {tuple(top_logp.shape)}")
        self.ids = {"train": ids_train, "val": ids_val}
        self.top_idx, self.top_logp = top_idx, top_logp
        self._rows = ArrayData(torch.arange(n), torch.arange(n), torch.arange(len(ids_val)), torch.arange(len(ids_val)))

    def get_batch(self, split: str, batch_size: int, generator: torch.Generator):
        i, _ = self._rows.get_batch(split, batch_size, generator)
        ids = self.ids[split][i]
        y = {"targets": ids[:, 1:]}
        if split == "train":
            y.update(top_idx=self.top_idx[i], top_logp=self.top_logp[i])
        return ids[:, :-1], y

    def state_dict(self) -> dict:
        return self._rows.state_dict()

    def load_state_dict(self, st: dict) -> None:
        self._rows.load_state_dict(st)


def vocab_map(used_ids, vocab_size: int) -> tuple:
    """``(lookup int64 (vocab_size,), kept int64 (V',))``: a smaller vocabulary for a student
    holding only the token ids in ``used_ids`` (sorted) and one unknown token, id ``V'`` = their
    count; ``lookup[old_id]`` is the new id (the unknown token for ids not kept). A student over
    ``V' + 1`` tokens pays ``(V' + 1) C`` embedding parameters and output FLOPs instead of ``V C``."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
        raise ValueError(f"vocab_size must be an int >= 1, got {vocab_size!r}")
    used = torch.as_tensor(used_ids).long().flatten()
    if used.numel() == 0 or used.min() < 0 or used.max() >= vocab_size:
        raise ValueError(f"used_ids must be a non-empty set of ids in [0, {vocab_size})")
    kept = torch.unique(used)  # sorted
    lookup = torch.full((vocab_size,), len(kept), dtype=torch.long)
    lookup[kept] = torch.arange(len(kept))
    return lookup, kept
