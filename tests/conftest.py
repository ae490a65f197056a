"""Test-suite wide guarantees: no network, Hugging Face offline.

* ``HF_HUB_OFFLINE=1`` and ``TRANSFORMERS_OFFLINE=1`` are set here, at import time, before any test
  module imports ``transformers`` or ``huggingface_hub`` (both read them when first imported).
* Outbound connections are blocked with ``pytest-socket``: this file turns on ``--disable-socket``
  with ``--allow-hosts=127.0.0.1,::1,localhost`` for every run, so loopback keeps working (the
  browser test's local HTTP server, Jupyter kernels' ZMQ channels in the determinism test) and any
  other ``connect()`` raises ``SocketConnectBlockedError``. Name resolution of anything but loopback
  names and IP literals raises as well, so a test cannot even send a DNS query.
* Opt out for one test with ``@pytest.mark.enable_socket`` (none of the book's tests do), or for a
  whole run with ``--force-enable-socket``.

Notebooks validated with nbval run in separate kernel processes that pytest-socket cannot reach;
the Makefile exports ``HF_HUB_OFFLINE=1`` for them, and the data and model loaders never download.
"""
from __future__ import annotations

import ipaddress
import os
import socket

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    """Block sockets for every test run unless ``--force-enable-socket`` was given."""
    try:
        from pytest_socket import _STASH_KEY
    except ImportError:  # pragma: no cover - pytest-socket is pinned in requirements.txt
        config._book_network_guard = False
        return
    cfg = config.stash[_STASH_KEY]
    if cfg.socket_force_enabled:
        config._book_network_guard = False
        return
    cfg.socket_disabled = True
    if not cfg.allow_hosts:
        cfg.allow_hosts = ",".join(LOOPBACK_HOSTS)
    cfg.allow_unix_socket = True  # local IPC only (e.g. multiprocessing, kernels on this host)
    config._book_network_guard = True


def _is_loopback(host) -> bool:
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    host = str(host).strip("[]")
    if host in ("localhost", "localhost.localdomain", "", socket.gethostname()):
        return True
    try:
        ipaddress.ip_address(host.split("%")[0])
        return True  # an IP literal needs no DNS query; connect() is guarded separately
    except ValueError:
        return False


@pytest.fixture(autouse=True)
def _no_dns(request):
    """Refuse to resolve names other than loopback ones (a DNS query is network access too)."""
    if not getattr(request.config, "_book_network_guard", False) or \
            request.node.get_closest_marker("enable_socket"):
        yield
        return
    real = socket.getaddrinfo

    def guarded_getaddrinfo(host, *args, **kwargs):
        if not _is_loopback(host):
            raise RuntimeError(f"A test tried to resolve host {host!r}: network access is blocked "
                               "in the book's tests (see tests/conftest.py)")
        return real(host, *args, **kwargs)

    socket.getaddrinfo = guarded_getaddrinfo
    try:
        yield
    finally:
        if socket.getaddrinfo is guarded_getaddrinfo:
            socket.getaddrinfo = real


@pytest.fixture(scope="session")
def repo_root():
    from pathlib import Path

    return Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared machine the thread pools of
    concurrent processes oversubscribe the cores (observed: 60x slower). Modules that train tiny
    models opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``; restored afterwards."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def pytest_terminal_summary(terminalreporter):
    """Print the bad-input census count (tests/test_census.py records it) in every run's summary."""
    for rep in terminalreporter.stats.get("passed", []):
        for name, value in getattr(rep, "user_properties", []):
            if name == "census_cases":
                terminalreporter.write_line(f"census: {value} bad calls, all rejected")
