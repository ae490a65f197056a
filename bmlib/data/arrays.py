"""Rows of arrays as the training loop's data protocol: ``get_batch(split, batch_size, generator)``.

:class:`ArrayData` serves any fixed-size examples (images, tabular rows, token windows with a label,
user/item pairs); :class:`bmlib.data.tokens.TokenData` serves windows of one token stream.
"""
from __future__ import annotations

import torch

SPLITS = ("train", "val")


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
        check_batch_args(split, batch_size)
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


def check_batch_args(split, batch_size) -> None:
    """``split`` is ``"train"`` or ``"val"`` and ``batch_size`` an int >= 1, else a ValueError naming it."""
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if isinstance(batch_size, bool) or not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
