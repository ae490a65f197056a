"""Knowledge distillation: the soft-target loss and a student/teacher wrapper for the book's training loop."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


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
