"""Run-time environment: scale, device, seeds and provenance.

Every notebook starts with :func:`notebook_header`, which prints one provenance line (device,
versions, scale, date, git commit) and seeds every generator. Every chapter picks its configuration
with :func:`scale`, so the ``cpu`` and ``full`` settings sit side by side in one cell.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import random
import subprocess
from pathlib import Path

SCALES = ("cpu", "full")
ENV_VAR = "BMLIB_SCALE"


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch is a hard dependency
        return False


REHEARSE_VAR = "BMLIB_REHEARSE"
REHEARSE_STEPS = 2


def rehearsing() -> bool:
    """True when ``BMLIB_REHEARSE=1``: a full-scale rehearsal on the CPU (``run-notebooks --rehearse``).

    A rehearsal runs every chapter's ``full`` configuration (``scale()`` returns ``"full"``) for
    its first steps only, so shape, dtype and memory bugs surface before GPU time is spent. Loops
    and timing budgets consult :func:`rehearse_cap`. Only ``"1"``/``"0"``/unset are accepted.
    """
    value = os.environ.get(REHEARSE_VAR, "").strip()
    if value not in ("", "0", "1"):
        raise ValueError(f"{REHEARSE_VAR} must be '1', '0' or unset, got {value!r}")
    return value == "1"


def rehearse_cap(n, cap: int = REHEARSE_STEPS):
    """``n`` itself, or ``min(n, cap)`` during a rehearsal: wrap every step count, repetition count,
    sample count or time budget of a full configuration in it, e.g.
    ``steps = rehearse_cap(CFG["steps"])`` or ``budget_s = rehearse_cap(2.0, cap=0.05)``."""
    if isinstance(n, bool) or not isinstance(n, (int, float)) or n < 0:
        raise ValueError(f"n must be a non-negative number, got {n!r}")
    if isinstance(cap, bool) or not isinstance(cap, (int, float)) or cap <= 0:
        raise ValueError(f"cap must be a positive number, got {cap!r}")
    return min(n, cap) if rehearsing() else n


def scale() -> str:
    """The scale to run at: ``"cpu"`` or ``"full"``.

    Read from the environment variable ``BMLIB_SCALE``; when it is unset or empty, ``"full"`` on a
    machine with a CUDA GPU and ``"cpu"`` otherwise. Any other value raises ``ValueError``.
    During a rehearsal (:func:`rehearsing`) it is ``"full"``; ``BMLIB_SCALE=cpu`` then raises.
    """
    value = os.environ.get(ENV_VAR, "").strip()
    if rehearsing():
        if value and value.lower() != "full":
            raise ValueError(f"{REHEARSE_VAR}=1 rehearses the full scale, but {ENV_VAR}={value!r}")
        return "full"
    if not value:
        return "full" if _cuda_available() else "cpu"
    if value.lower() not in SCALES:
        raise ValueError(f"{ENV_VAR} must be one of {SCALES} (or unset), got {value!r}")
    return value.lower()


def device(prefer: str | None = None):
    """The ``torch.device`` to compute on: ``prefer`` if given, else CUDA when available, else CPU."""
    import torch

    if prefer is not None:
        dev = torch.device(prefer)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"prefer={prefer!r} asks for CUDA but no CUDA device is available")
        return dev
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int = 0) -> int:
    """Seed Python's, NumPy's and PyTorch's (CPU and CUDA) generators; returns the seed."""
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    return seed


def repo_root() -> Path:
    """The book's root folder (the one holding ``_config.yml``), else the current folder."""
    here = Path(__file__).resolve().parent.parent
    if (here / "_config.yml").exists():
        return here
    cwd = Path.cwd().resolve()
    for p in (cwd, *cwd.parents):
        if (p / "_config.yml").exists():
            return p
    return cwd


def artifacts_dir(*parts: str) -> Path:
    """``artifacts/`` under the repo root (git-ignored; ``BMLIB_ARTIFACTS`` overrides), created."""
    base = Path(os.environ.get("BMLIB_ARTIFACTS") or repo_root() / "artifacts")
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _git_commit() -> str:
    """HEAD's short hash; ``BMLIB_GIT_COMMIT`` names it where the tree travelled without ``.git``
    (the GPU box receives a copy of the working tree)."""
    if os.environ.get("BMLIB_GIT_COMMIT"):
        return os.environ["BMLIB_GIT_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=repo_root(), capture_output=True,
            text=True, timeout=5,
        )
    except (OSError, subprocess.SubprocessError):  # no git program, or it hung
        return "unknown"
    return out.stdout.strip() or "unknown"


def device_name() -> str:
    """A human name for the compute device: the GPU's name, or the CPU's model and core count."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU ({cpu}, {os.cpu_count()} cores)"


def provenance() -> dict:
    """Where and how a result was produced: device, versions, scale, date and git commit."""
    import torch

    from importlib.metadata import PackageNotFoundError, version

    try:  # the metadata, not an import: importing transformers takes seconds
        tf_version = version("transformers")
    except PackageNotFoundError:
        tf_version = "not installed"
    prov = {
        "device": device_name(),
        "torch": torch.__version__,
        "transformers": tf_version,
        "python": platform.python_version(),
        "scale": scale(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d"),
        "git": _git_commit(),
    }
    if rehearsing():
        prov["rehearse"] = True
    if torch.cuda.is_available():
        prov["cuda"] = torch.version.cuda
        prov["driver"] = _nvidia_driver()
    return prov


def _nvidia_driver() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10,
        )
        return out.stdout.strip().splitlines()[0]
    except Exception:
        return "unknown"


def format_provenance(prov: dict | None = None) -> str:
    prov = prov or provenance()
    return " | ".join(f"{k}: {v}" for k, v in prov.items())


def notebook_header(chapter: str, seed: int = 0) -> dict:
    """First cell of every chapter: seed everything, print and return the provenance."""
    import warnings

    # tqdm.auto (used inside transformers) warns on every import when ipywidgets is absent; the
    # book renders plain-text progress bars, so the warning is noise in the committed outputs.
    warnings.filterwarnings("ignore", message="IProgress not found")
    seed_everything(seed)
    prov = provenance()
    prov["chapter"] = chapter
    prov["seed"] = seed
    print(format_provenance(prov))
    return prov
