"""A bounded load generator for the book's server: loopback only, fixed count, stops by itself.

:func:`run_load` keeps ``concurrency`` requests in flight (a closed loop: each simulated client
sends its next request when the previous one is answered) until ``n_requests`` have been sent or
``max_duration_s`` has passed, and reports throughput and latency percentiles of the successful
requests, and the count of each error status. Latency is measured per request with
``time.perf_counter`` from send to the full answer: a load test measures a system under load,
which is not what :func:`bmlib.bench.measure` (one callable, warmed up, on an idle machine) is for.
"""
from __future__ import annotations

import asyncio
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


async def _load(url, make_body: Callable[[int], dict], concurrency, n_requests, max_duration_s):
    import httpx

    counter = iter(range(n_requests))
    lat, errors = [], Counter()
    t0 = time.perf_counter()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30.0, trust_env=False) as client:
        async def user():
            for i in counter:
                if time.perf_counter() - t0 > max_duration_s:
                    return
                s = time.perf_counter()
                try:
                    r = await client.post(url, json=make_body(i))
                    code = r.status_code
                except httpx.HTTPError as e:
                    code = type(e).__name__
                if code == 200:
                    lat.append((time.perf_counter() - s) * 1e3)
                else:
                    errors[str(code)] += 1

        await asyncio.gather(*(user() for _ in range(concurrency)))
    return lat, errors, time.perf_counter() - t0


def run_load(url: str, make_body: Callable[[int], dict], concurrency: int, n_requests: int,
             max_duration_s: float = 30.0) -> LoadResult:
    """POST ``make_body(i)`` to ``url`` with ``concurrency`` clients; returns a :class:`LoadResult`."""
    _check(url, concurrency, n_requests, max_duration_s)
    if not callable(make_body):
        raise TypeError(f"make_body must be a callable i -> dict, got {type(make_body).__name__}")
    lat, errors, secs = _run_coro(_load(url, make_body, concurrency, n_requests, max_duration_s))
    return LoadResult(concurrency, len(lat) + sum(errors.values()), len(lat), secs, tuple(lat), dict(errors))


def _run_coro(coro):
    """Run ``coro`` to completion, also from inside Jupyter's already running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # a notebook: use a fresh loop elsewhere
        return pool.submit(asyncio.run, coro).result()
