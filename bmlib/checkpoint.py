"""Checkpoints that cannot be half-written, silently corrupted or mis-resumed.

A checkpoint is a folder with three files::

    model.safetensors   the weights (safetensors: no pickle, zero-copy; tied weights stored once)
    state.pt            optimizer state, step, RNG states, data-loader state, history (torch.save,
                        read back with ``weights_only=True``: tensors, numbers, strings, containers)
    manifest.json       format version, step, and the sha256 and size of the two files above

Every file is written through :func:`bmlib.io.atomic_write` (temporary file, fsync, rename) and the
manifest last, so a crash leaves either the previous checkpoint or a folder whose manifest does not
match — which :func:`load` refuses with a message, instead of resuming from garbage.

Tied weights (GPT's ``lm_head.weight`` is ``transformer.wte.weight``) are one tensor with two names;
safetensors refuses shared storage, so :func:`state_dict_dedup` keeps the first name and records the
aliases in the file's metadata, and loading puts them back.
"""
from __future__ import annotations

import io
import json
import random
from pathlib import Path

import numpy as np
import torch

from .io import atomic_write, sha256_file, write_json

FORMAT = "bmlib-checkpoint/1"
WEIGHTS, STATE, MANIFEST, LATEST = "model.safetensors", "state.pt", "manifest.json", "latest.json"


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated, tampered with, or does not fit the model."""


def _storage_key(t: torch.Tensor):
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()),
            t.dtype, str(t.device))


def state_dict_dedup(model: torch.nn.Module) -> tuple[dict, dict]:
    """``(tensors, aliases)``: the state dict with each shared tensor once, and ``{alias: kept}``."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    tensors, aliases, seen = {}, {}, {}
    for name, t in model.state_dict().items():
        key = _storage_key(t)
        if key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = t.detach().to("cpu").contiguous()
    return tensors, aliases


def rng_state() -> dict:
    """Every global RNG state a training step can touch (Python, NumPy, torch CPU and CUDA)."""
    st = {"python": random.getstate(), "torch": torch.get_rng_state()}
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    st["numpy"] = {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "gauss": float(gauss)}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    random.setstate(_to_tuple(st["python"]))
    torch.set_rng_state(st["torch"])
    n = st["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["gauss"]))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _to_tuple(x):
    return tuple(_to_tuple(i) for i in x) if isinstance(x, (list, tuple)) else x


def save(directory, model: torch.nn.Module, optimizer=None, *, step: int = 0, extra: dict | None = None,
         include_rng: bool = True) -> Path:
    """Write a checkpoint folder (weights, optimizer/RNG/extra state, manifest) and return it.

    ``extra`` holds anything else to resume exactly (data-loader state, history, config); it must
    contain only tensors, numbers, strings, None and lists/tuples/dicts of those.
    """
    from safetensors.torch import save as st_save

    if not (isinstance(step, int) and step >= 0):
        raise ValueError(f"step must be a non-negative int, got {step!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors, aliases = state_dict_dedup(model)
    blob = st_save(tensors, metadata={"format": FORMAT, "aliases": json.dumps(aliases)})
    with atomic_write(directory / WEIGHTS) as f:
        f.write(blob)
    state = {"step": step, "optimizer": optimizer.state_dict() if optimizer is not None else None,
             "rng": rng_state() if include_rng else None, "extra": extra or {}}
    buf = io.BytesIO()
    torch.save(state, buf)
    with atomic_write(directory / STATE) as f:
        f.write(buf.getvalue())
    manifest = {"format": FORMAT, "step": step,
                "files": {n: {"sha256": sha256_file(directory / n), "bytes": (directory / n).stat().st_size}
                          for n in (WEIGHTS, STATE)}}
    write_json(directory / MANIFEST, manifest)
    return directory


def resolve(path) -> Path:
    """The checkpoint folder ``path`` names: itself, or the one its ``latest.json`` points to."""
    path = Path(path)
    if (path / MANIFEST).exists():
        return path
    if (path / LATEST).exists():
        target = path / json.loads((path / LATEST).read_text())["checkpoint"]
        if (target / MANIFEST).exists():
            return target
        raise CheckpointError(f"{path / LATEST} points to {target}, which has no {MANIFEST}")
    raise CheckpointError(f"no checkpoint at {path}: expected {MANIFEST} or {LATEST} in that folder")


def verify(path) -> dict:
    """Check every file against the manifest's size and sha256; returns the manifest."""
    path = resolve(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path / MANIFEST} is not valid JSON (truncated?): {e}") from e
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path} has format {manifest.get('format')!r}, expected {FORMAT!r}")
    for name, info in manifest["files"].items():
        f = path / name
        if not f.exists():
            raise CheckpointError(f"checkpoint file {f} is missing")
        size = f.stat().st_size
        if size != info["bytes"]:
            raise CheckpointError(f"checkpoint file {f} has {size} bytes, the manifest says "
                                  f"{info['bytes']} (truncated or partly written)")
        digest = sha256_file(f)
        if digest != info["sha256"]:
            raise CheckpointError(f"checkpoint file {f} has sha256 {digest[:12]}..., the manifest says "
                                  f"{info['sha256'][:12]}... (corrupted or tampered with)")
    return manifest


def load_weights(path, model: torch.nn.Module) -> torch.nn.Module:
    """Load a verified checkpoint's weights into ``model`` (strict: every name must match)."""
    from safetensors import safe_open
    from safetensors.torch import load as st_load

    path = resolve(path)
    verify(path)
    raw = (path / WEIGHTS).read_bytes()
    tensors = st_load(raw)
    with safe_open(str(path / WEIGHTS), framework="pt") as f:
        aliases = json.loads((f.metadata() or {}).get("aliases", "{}"))
    for alias, kept in aliases.items():
        tensors[alias] = tensors[kept]
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} does not fit this model: {e}") from e
    return model


def load(path, model: torch.nn.Module, optimizer=None, *, restore_rng: bool = True) -> dict:
    """Verify and load a checkpoint into ``model`` (and ``optimizer``); returns the saved state
    (``step``, ``extra``, ...). ``path`` is a checkpoint folder or a folder with ``latest.json``."""
    path = resolve(path)
    load_weights(path, model)
    state = torch.load(path / STATE, map_location="cpu", weights_only=True)
    if optimizer is not None:
        if state["optimizer"] is None:
            raise CheckpointError(f"checkpoint {path} holds no optimizer state")
        optimizer.load_state_dict(state["optimizer"])
    if restore_rng and state.get("rng") is not None:
        set_rng_state(state["rng"])
    state["path"] = str(path)
    return state


def write_latest(root, checkpoint: Path, keep: int = 2) -> None:
    """Point ``root/latest.json`` at ``checkpoint`` and delete all but the ``keep`` newest step folders."""
    import shutil

    root = Path(root)
    write_json(root / LATEST, {"checkpoint": Path(checkpoint).name})
    steps = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in steps[:-keep] if keep > 0 else []:
        if old.name != Path(checkpoint).name:
            shutil.rmtree(old, ignore_errors=True)
