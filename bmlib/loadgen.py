"""A bounded load generator for the book's server: loopback only, fixed count, stops by itself.

:func:`run_load` keeps ``concurrency`` requests in flight (a closed loop: each simulated client
sends its next request when the previous one is answered) until ``n_requests`` have been sent or
``max_duration_s`` has passed, and reports throughput and latency percentiles of the successful
requests, and the count of each error status. Latency is measured per request with
``time.perf_counter`` from send to the full answer: a load test measures a system under load,
which is not what :func:`bmlib.bench.measure` (one callable, warmed up, on an idle machine) is for.

The client is a minimal HTTP/1.1 one on asyncio streams: one keep-alive connection per simulated
user, a POST with a JSON body, a response read by its ``Content-Length``. A load generator on the
same machine as the server takes CPU from it, so it should cost as little as it can; each result
reports the CPU seconds the generator's own thread used (``client_cpu_s``), so a reader can see
how much of the machine the measurement took.
"""
from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import urlsplit

import numpy as np

from .serve import check_host


@dataclass(frozen=True)
class LoadResult:
    concurrency: int
    sent: int
    ok: int
    seconds: float
    latencies_ms: tuple = field(repr=False)
    errors: dict = field(default_factory=dict)
    client_cpu_s: float = 0.0  # CPU time of the generator's thread while it ran

    @property
    def rps(self) -> float:
        """Successful requests per second."""
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def row(self) -> dict:
        return {"concurrency": self.concurrency, "sent": self.sent, "ok": self.ok,
                "rps": round(self.rps, 1), "p50_ms": round(self.percentile_ms(50), 2),
                "p95_ms": round(self.percentile_ms(95), 2), "p99_ms": round(self.percentile_ms(99), 2),
                "client_cpu_share": round(self.client_cpu_s / self.seconds, 2) if self.seconds > 0 else 0.0,
                "errors": dict(self.errors)}


def _check(url: str, concurrency, n_requests, max_duration_s) -> None:
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"url must be an http:// URL, got {url!r}")
    check_host(parts.hostname)  # loopback only: a load test never leaves this machine
    for name, v in (("concurrency", concurrency), ("n_requests", n_requests)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    if not (isinstance(max_duration_s, (int, float)) and 0 < max_duration_s <= 600):
        raise ValueError(f"max_duration_s must be in (0, 600], got {max_duration_s!r}")


async def _post(conn, host: bytes, path: bytes, body: bytes) -> tuple[int, bool]:
    """One POST on an open keep-alive connection ``(reader, writer)``; returns the status code and
    whether the connection stays open (``False`` when the server answered ``Connection: close``)."""
    reader, writer = conn
    writer.write(b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (path, host, len(body), body))
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")  # status line and headers
    status, length, close = int(head.split(b" ", 2)[1]), None, False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        close |= name == b"connection" and value.strip().lower() == b"close"
    if length is None:
        raise ValueError("the load generator reads whole answers with a Content-Length (not streams)")
    await reader.readexactly(length)
    return status, not close


async def _load(url, make_body: Callable[[int], dict], concurrency, n_requests, max_duration_s):
    parts = urlsplit(url)
    host, port = parts.hostname, parts.port or 80
    path = (parts.path or "/").encode() + (b"?" + parts.query.encode() if parts.query else b"")
    counter = iter(range(n_requests))
    lat, errors = [], Counter()
    t0, cpu0 = time.perf_counter(), time.thread_time()

    async def user():
        conn = None
        try:
            for i in counter:
                if time.perf_counter() - t0 > max_duration_s:
                    return
                body = json.dumps(make_body(i)).encode()
                s = time.perf_counter()
                try:
                    if conn is None:
                        conn = await asyncio.wait_for(asyncio.open_connection(host, port), 30.0)
                    code, keep = await asyncio.wait_for(_post(conn, f"{host}:{port}".encode(), path, body), 30.0)
                    conn = conn if keep else _close(conn)  # the next request opens a new connection
                except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as e:
                    code, conn = type(e).__name__, _close(conn)  # a broken connection: the next one is new
                if code == 200:
                    lat.append((time.perf_counter() - s) * 1e3)
                else:
                    errors[str(code)] += 1
        finally:
            _close(conn)

    await asyncio.gather(*(user() for _ in range(concurrency)))
    return lat, errors, time.perf_counter() - t0, time.thread_time() - cpu0


def _close(conn):
    if conn is not None:
        conn[1].close()
    return None


def run_load(url: str, make_body: Callable[[int], dict], concurrency: int, n_requests: int,
             max_duration_s: float = 30.0) -> LoadResult:
    """POST ``make_body(i)`` to ``url`` with ``concurrency`` clients; returns a :class:`LoadResult`."""
    _check(url, concurrency, n_requests, max_duration_s)
    if not callable(make_body):
        raise TypeError(f"make_body must be a callable i -> dict, got {type(make_body).__name__}")
    lat, errors, secs, cpu = _run_coro(_load(url, make_body, concurrency, n_requests, max_duration_s))
    return LoadResult(concurrency, len(lat) + sum(errors.values()), len(lat), secs, tuple(lat), dict(errors), cpu)


def _run_coro(coro):
    """Run ``coro`` to completion, also from inside Jupyter's already running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # a notebook: use a fresh loop elsewhere
        return pool.submit(asyncio.run, coro).result()
