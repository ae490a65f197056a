"""Checkpoints that cannot be half-written, silently corrupted or mis-resumed.

A checkpoint is a folder with three files::

    model.safetensors   the weights (safetensors: no pickle, zero-copy; tied weights stored once)
    state.pt            optimizer state, step, RNG states, data-loader state, history (torch.save,
                        read back with ``weights_only=True``: tensors, numbers, strings, containers)
    manifest.json       format version, step, and the sha256 and size of the two files above

Every file is written through :func:`bmlib.io.atomic_write` (temporary file, fsync, rename) and the
manifest last, so a crash leaves either the previous checkpoint or a folder whose manifest does not
match — which :func:`load` refuses with a message, instead of resuming from garbage.

Loading is all or nothing: :func:`load` verifies every file, reads the weights and the state, and
checks the weights' names, shapes and dtypes against the model and the optimizer state against the
optimizer before it touches either; any problem raises :class:`CheckpointError` (a ``ValueError``)
and leaves the model, the optimizer and the global RNGs as they were.

Tied weights (GPT's ``lm_head.weight`` is ``transformer.wte.weight``) are one tensor with two names;
safetensors refuses shared storage, so :func:`state_dict_dedup` keeps the first name and records the
aliases in the file's metadata, and loading puts them back.
"""
from __future__ import annotations

import copy
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


def _read_json(f: Path, what: str) -> dict:
    try:
        doc = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{f} is not valid JSON (truncated?): {e}") from e
    if not isinstance(doc, dict):
        raise CheckpointError(f"{f} must hold a JSON object ({what}), got {type(doc).__name__}")
    return doc


def resolve(path) -> Path:
    """The checkpoint folder ``path`` names: itself, or the one its ``latest.json`` points to."""
    path = Path(path)
    if (path / MANIFEST).exists():
        return path
    if (path / LATEST).exists():
        latest = _read_json(path / LATEST, 'the pointer {"checkpoint": "<folder name>"}')
        name = latest.get("checkpoint")
        if not isinstance(name, str) or not name:
            raise CheckpointError(f"{path / LATEST} has no \"checkpoint\" folder name, got {latest!r}")
        target = path / name
        if (target / MANIFEST).exists():
            return target
        raise CheckpointError(f"{path / LATEST} points to {target}, which has no {MANIFEST}")
    raise CheckpointError(f"no checkpoint at {path}: expected {MANIFEST} or {LATEST} in that folder")


def verify(path) -> dict:
    """Check the manifest lists the weights and the state file and that each matches its size and
    sha256; returns the manifest. Raises :class:`CheckpointError` (a ``ValueError``) otherwise."""
    path = resolve(path)
    manifest = _read_json(path / MANIFEST, "the manifest")
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path} has format {manifest.get('format')!r}, expected {FORMAT!r}")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise CheckpointError(f"{path / MANIFEST} has no \"files\" table (got {files!r}): cannot verify "
                              f"{WEIGHTS} and {STATE}")
    unlisted = [n for n in (WEIGHTS, STATE) if n not in files]
    if unlisted:
        raise CheckpointError(f"{path / MANIFEST} does not list {unlisted}: a file the manifest does not "
                              f"cover cannot be verified, so the checkpoint is refused")
    for name, info in files.items():
        if not (isinstance(info, dict) and isinstance(info.get("bytes"), int)
                and isinstance(info.get("sha256"), str)):
            raise CheckpointError(f"{path / MANIFEST} entry {name!r} must have an int \"bytes\" and a "
                                  f"str \"sha256\", got {info!r}")
        f = path / name
        if not f.is_file():
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


def _read_weights(path: Path) -> dict:
    """The weights of a verified checkpoint folder, aliases (tied weights) put back."""
    from safetensors import safe_open
    from safetensors.torch import load as st_load

    try:
        tensors = st_load((path / WEIGHTS).read_bytes())
        with safe_open(str(path / WEIGHTS), framework="pt") as f:
            aliases = json.loads((f.metadata() or {}).get("aliases", "{}"))
    except Exception as e:  # safetensors raises its own error types; re-raised with the file named
        raise CheckpointError(f"{path / WEIGHTS} cannot be read as safetensors: {e}") from e
    for alias, kept in aliases.items():
        tensors[alias] = tensors[kept]
    return tensors


def _check_fits(path: Path, model: torch.nn.Module, tensors: dict) -> None:
    """Refuse, before anything is copied, weights whose names, shapes or dtypes differ from the model's
    (``load_state_dict`` copies tensor by tensor and only then reports a mismatch: half-loaded)."""
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    wrong = [f"{k}: checkpoint {tuple(tensors[k].shape)} {tensors[k].dtype}, model {tuple(v.shape)} {v.dtype}"
             for k, v in own.items() if k in tensors
             and (tensors[k].shape != v.shape or tensors[k].dtype != v.dtype)]
    if missing or unexpected or wrong:
        raise CheckpointError(f"checkpoint {path} does not fit this model: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}, mismatched {wrong[:5]}")


def _check_optimizer_fits(path: Path, optimizer, saved) -> None:
    """Refuse an optimizer state that does not match ``optimizer``'s groups and parameter shapes."""
    if saved is None:
        raise CheckpointError(f"checkpoint {path} holds no optimizer state")
    if not (isinstance(saved, dict) and isinstance(saved.get("param_groups"), list)
            and isinstance(saved.get("state"), dict)):
        raise CheckpointError(f"checkpoint {path}: the optimizer state is not an optimizer state_dict")
    groups, own = saved["param_groups"], optimizer.param_groups
    if [len(g.get("params", ())) for g in groups] != [len(g["params"]) for g in own]:
        raise CheckpointError(
            f"checkpoint {path}: the optimizer state has groups of {[len(g.get('params', ())) for g in groups]} "
            f"parameters, this optimizer {[len(g['params']) for g in own]}")
    for i, (g, o) in enumerate(zip(groups, own)):
        if set(g) != set(o):
            raise CheckpointError(f"checkpoint {path}: optimizer group {i} has settings {sorted(g)}, this "
                                  f"optimizer {sorted(o)} (a different optimizer class?)")
    params = [p for g in own for p in g["params"]]
    ids = [i for g in groups for i in g["params"]]
    for idx, p in zip(ids, params):
        for k, v in (saved["state"].get(idx) or {}).items():
            if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape != p.shape:
                raise CheckpointError(f"checkpoint {path}: optimizer state {k!r} of parameter {idx} has shape "
                                      f"{tuple(v.shape)}, the parameter {tuple(p.shape)}")


def _read_state(path: Path) -> dict:
    try:
        state = torch.load(path / STATE, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling raises many types; re-raised with the file named
        raise CheckpointError(f"{path / STATE} cannot be read: {e}") from e
    if not (isinstance(state, dict) and {"step", "optimizer", "extra"} <= set(state)):
        raise CheckpointError(f"{path / STATE} must hold step, optimizer and extra, got "
                              f"{sorted(state) if isinstance(state, dict) else type(state).__name__}")
    return state


def read_state(path) -> dict:
    """The verified ``state.pt`` of a checkpoint (``step``, ``optimizer``, ``rng``, ``extra``) without
    loading anything into a model: what a caller checks before it commits to :func:`load`."""
    path = resolve(path)
    verify(path)
    state = _read_state(path)
    state["path"] = str(path)
    return state


def load_weights(path, model: torch.nn.Module) -> torch.nn.Module:
    """Load a verified checkpoint's weights into ``model`` (strict: every name, shape and dtype must
    match; a checkpoint that does not fit is refused before any weight is copied)."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    path = resolve(path)
    verify(path)
    tensors = _read_weights(path)
    _check_fits(path, model, tensors)
    model.load_state_dict(tensors, strict=True)
    return model


def load(path, model: torch.nn.Module, optimizer=None, *, restore_rng: bool = True) -> dict:
    """Verify and load a checkpoint into ``model`` (and ``optimizer``); returns the saved state
    (``step``, ``extra``, ...). ``path`` is a checkpoint folder or a folder with ``latest.json``.

    All or nothing: every file is verified and read, and the weights and the optimizer state are
    checked against ``model`` and ``optimizer``, before either is touched; any problem raises
    :class:`CheckpointError` and leaves both (and the global RNGs) as they were."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    path = resolve(path)
    verify(path)
    tensors = _read_weights(path)
    state = _read_state(path)
    _check_fits(path, model, tensors)
    before = None
    if optimizer is not None:
        _check_optimizer_fits(path, optimizer, state["optimizer"])
        before = copy.deepcopy(optimizer.state_dict())
    try:  # both checked above; the rollback covers what the checks cannot foresee
        if optimizer is not None:
            optimizer.load_state_dict(state["optimizer"])
        model.load_state_dict(tensors, strict=True)
    except (ValueError, KeyError, RuntimeError) as e:
        if before is not None:
            optimizer.load_state_dict(before)
        raise CheckpointError(f"checkpoint {path} does not fit this model and optimizer: {e}") from e
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
