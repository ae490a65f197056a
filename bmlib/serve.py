"""The book's model server: FastAPI on uvicorn, loopback by default.

Endpoints (JSON in, JSON out; every bad request gets a 4xx whose message names the field)::

    GET  /health                      {"status": "ok", "models": [...], "queued": {...}}
    GET  /v1/models                   [{"name": ..., "kind": "classify" | "generate"}, ...]
    GET  /v1/stats                    {"batch_sizes": {"minilm-sentiment": [size of every batch], ...}}
    POST /v1/classify                 {"model": "minilm-sentiment", "texts": ["...", ...]}
    POST /v1/generate                 {"model": "gpt-cpu", "prompt": "...", "max_new_tokens": 32,
                                       "temperature": 0.0, "seed": 0, "stream": true}

Classification requests go through a :class:`bmlib.batching.DynamicBatcher`: texts that arrive
within ``max_wait_ms`` share one forward pass of at most ``max_batch`` texts. Generation streams
one JSON line per token (``application/x-ndjson``) from a single worker thread; a client that
disconnects stops its generation. Both queues are bounded: when full the server answers 429 at once
(503 while shutting down), and a request that waits longer than ``timeout_s`` gets 504. Shutdown
(SIGINT/SIGTERM, or :meth:`ServerThread.stop`) finishes the requests in flight first.
"""
from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import socket
import threading
import time
from typing import Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from .batching import BatchConfig, DynamicBatcher, QueueFull, ShuttingDown
from .servables import Classifier, Generator

LOOPBACK = ("127.0.0.1", "::1", "localhost")


def check_host(host: str, allow_remote: bool = False) -> str:
    """``host`` must be a loopback address unless ``allow_remote`` (e.g. inside a container)."""
    if not isinstance(host, str) or not host:
        raise ValueError(f"host must be a non-empty string, got {host!r}")
    if allow_remote or host == "localhost":
        return host
    try:
        if ipaddress.ip_address(host).is_loopback:
            return host
    except ValueError:
        raise ValueError(f"host must be an IP address or 'localhost', got {host!r}") from None
    raise ValueError(f"host {host!r} is not a loopback address: pass allow_remote=True "
                     "(--allow-remote) to listen on other interfaces")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (for tests and the chapter)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- request schemas
MAX_TEXTS = 64  # texts per classification request


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    model: str = Field(min_length=1)
    texts: list[str] = Field(min_length=1, max_length=MAX_TEXTS)


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    model: str = Field(min_length=1)
    prompt: str = Field(min_length=1)
    max_new_tokens: int = Field(default=32, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, le=10.0)
    seed: int = Field(default=0, ge=0)
    stream: bool = True


def _error(status: int, msg: str, headers: dict | None = None):
    return JSONResponse({"error": msg}, status_code=status, headers=headers)


def _validation_message(exc) -> tuple[int, str]:
    errs = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errs):
        return 400, "body: malformed JSON"
    parts = []
    for e in errs[:5]:
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
        parts.append(f"{loc}: {e.get('msg', 'invalid')}")
    return 422, "; ".join(parts)


# ----------------------------------------------------------------------------- the app
class _State:
    def __init__(self, models, batch: BatchConfig, gen_queue: int):
        self.classifiers = {m.name: m for m in models if isinstance(m, Classifier)}
        self.generators = {m.name: m for m in models if isinstance(m, Generator)}
        self.batchers = {n: DynamicBatcher(m.predict, batch) for n, m in self.classifiers.items()}
        self.gen_slots = asyncio.Semaphore(1)  # one generation at a time on the model thread
        self.gen_waiting = 0
        self.gen_queue = gen_queue
        self.timeout_s = batch.timeout_s
        self.closing = False
        self.inflight = 0


def create_app(models: Sequence, batch: BatchConfig = BatchConfig(), gen_queue: int = 8):
    """A FastAPI app serving ``models`` (:class:`Classifier` / :class:`Generator` objects)."""
    models = list(models)
    if not models or not all(isinstance(m, (Classifier, Generator)) for m in models):
        raise TypeError("models must be a non-empty list of Classifier / Generator objects")
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ValueError(f"models must have distinct names, got {names}")
    st = None

    @contextlib.asynccontextmanager
    async def lifespan(app):
        nonlocal st
        st = _State(models, batch, gen_queue)
        app.state.serving = st  # read by ServerThread.batch_sizes
        for b in st.batchers.values():
            await b.start()
        yield
        st.closing = True  # new requests get 503 while the ones in flight finish
        for b in st.batchers.values():
            await b.stop()
        t0 = time.perf_counter()
        while st.inflight and time.perf_counter() - t0 < 10:
            await asyncio.sleep(0.01)

    app = FastAPI(title="bmlib serve", lifespan=lifespan)

    @app.exception_handler(RequestValidationError)
    async def on_validation(request, exc):
        return _error(*_validation_message(exc))

    @app.get("/health")
    async def health():
        return {"status": "shutting down" if st.closing else "ok", "models": names,
                "queued": {n: b._queue.qsize() for n, b in st.batchers.items()}}

    @app.get("/v1/stats")
    async def stats():
        return {"batch_sizes": {n: list(b.batch_sizes) for n, b in st.batchers.items()}}

    @app.get("/v1/models")
    async def list_models():
        return [{"name": m.name, "kind": m.kind} for m in models]

    @app.post("/v1/classify")
    async def classify(req: ClassifyRequest):
        if req.model not in st.classifiers:
            return _error(404, f"model: unknown classifier {req.model!r}; "
                               f"serving {sorted(st.classifiers)}")
        limit = st.classifiers[req.model].max_chars
        for i, t in enumerate(req.texts):
            if not t.strip() or len(t) > limit:
                return _error(422, f"texts.{i}: must be a non-blank string of at most {limit} characters")
        return await _classify(st, req)

    @app.post("/v1/generate")
    async def generate(req: GenerateRequest, request: Request):
        g = st.generators.get(req.model)
        if g is None:
            return _error(404, f"model: unknown generator {req.model!r}; serving {sorted(st.generators)}")
        if len(req.prompt) > g.max_chars:
            return _error(422, f"prompt: at most {g.max_chars} characters, got {len(req.prompt)}")
        if req.max_new_tokens > g.max_new_tokens:
            return _error(422, f"max_new_tokens: at most {g.max_new_tokens}, got {req.max_new_tokens}")
        return await _generate(st, g, req, request)

    return app


async def _classify(st: _State, req):
    if st.closing:
        return _error(503, "server: shutting down")
    st.inflight += 1
    try:
        results = await asyncio.gather(*(st.batchers[req.model].submit(t) for t in req.texts))
        return {"model": req.model, "results": list(results)}
    except QueueFull as e:
        return _error(429, f"server: {e}; retry later", {"Retry-After": "1"})
    except ShuttingDown as e:
        return _error(503, f"server: {e}")
    except asyncio.TimeoutError:
        return _error(504, f"server: no answer within {st.timeout_s} s")
    except Exception as e:  # the model failed on this batch; the server keeps serving
        return _error(500, f"model: {type(e).__name__}: {e}")
    finally:
        st.inflight -= 1


async def _generate(st: _State, g: Generator, req, request):
    if st.closing:
        return _error(503, "server: shutting down")
    if st.gen_waiting >= st.gen_queue:
        return _error(429, f"server: {st.gen_waiting} generations queued; retry later", {"Retry-After": "1"})
    st.gen_waiting += 1
    try:
        await asyncio.wait_for(st.gen_slots.acquire(), st.timeout_s)
    except asyncio.TimeoutError:
        return _error(504, f"server: no generation slot within {st.timeout_s} s")
    finally:
        st.gen_waiting -= 1
    pieces = _token_stream(st, g, req)
    if req.stream:
        return StreamingResponse(_ndjson(pieces, request), media_type="application/x-ndjson")
    try:
        text = "".join([p async for p in pieces])
    except Exception as e:
        return _error(500, f"model: {type(e).__name__}: {e}")
    return {"model": req.model, "text": text}


async def _token_stream(st: _State, g: Generator, req):
    """Run ``g.stream`` on a thread and yield its pieces; stop it when the consumer goes away."""
    loop = asyncio.get_running_loop()
    q: asyncio.Queue = asyncio.Queue()
    stop = threading.Event()
    done = object()

    def produce():
        try:
            for piece in g.stream(req.prompt, req.max_new_tokens, req.temperature, req.seed, stop.is_set):
                loop.call_soon_threadsafe(q.put_nowait, piece)
        except Exception as e:  # delivered to the consumer below
            loop.call_soon_threadsafe(q.put_nowait, e)
        finally:
            loop.call_soon_threadsafe(q.put_nowait, done)
            loop.call_soon_threadsafe(_release, st)  # the slot frees when the model thread is done

    st.inflight += 1
    loop.run_in_executor(None, produce)
    try:
        while (item := await q.get()) is not done:
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        stop.set()  # a consumer that left (or was cancelled) stops the model at its next token


def _release(st: _State) -> None:
    st.gen_slots.release()
    st.inflight -= 1


async def _ndjson(pieces, request):
    n = 0
    try:
        async for piece in pieces:
            n += 1
            yield json.dumps({"token": piece}) + "\n"
            if await request.is_disconnected():
                break
        yield json.dumps({"done": True, "tokens": n}) + "\n"
    except Exception as e:  # headers are sent already: report the error as the last line
        yield json.dumps({"error": f"model: {type(e).__name__}: {e}"}) + "\n"
    finally:
        await pieces.aclose()


# ----------------------------------------------------------------------------- running it
def _uvicorn_config(app, host: str, port: int):
    import uvicorn

    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"port must be an int in 1..65535, got {port!r}")
    # the C HTTP parser (httptools) and the libuv event loop (uvloop), uvicorn[standard]'s pair,
    # named here rather than left to uvicorn's choice of what happens to be installed
    return uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                          timeout_graceful_shutdown=15, lifespan="on", http="httptools", loop="uvloop")


def serve(models, host: str = "127.0.0.1", port: int = 8000, *, allow_remote: bool = False,
          batch: BatchConfig = BatchConfig()) -> None:
    """Serve ``models`` until SIGINT/SIGTERM (``python -m bmlib serve``)."""
    import uvicorn

    check_host(host, allow_remote)
    uvicorn.Server(_uvicorn_config(create_app(models, batch), host, port)).run()


class ServerThread:
    """The real server on a loopback port in a background thread: ``with ServerThread(...) as url``."""

    def __init__(self, models, port: int | None = None, batch: BatchConfig = BatchConfig(), **app_kw):
        import uvicorn

        self.port = port or free_port()
        self.app = create_app(models, batch, **app_kw)
        self.server = uvicorn.Server(_uvicorn_config(self.app, "127.0.0.1", self.port))
        self.thread = threading.Thread(target=self.server.run, name="bmlib-serve", daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> str:
        self.thread.start()
        t0 = time.perf_counter()
        while not self.server.started:
            if not self.thread.is_alive() or time.perf_counter() - t0 > timeout_s:
                raise RuntimeError(f"the server did not start on {self.url} within {timeout_s} s")
            time.sleep(0.02)
        return self.url

    def stop(self, timeout_s: float = 30.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout_s)
        if self.thread.is_alive():
            raise RuntimeError(f"the server on {self.url} did not stop within {timeout_s} s")

    def batch_sizes(self, model: str) -> list[int]:
        """The size of every batch the classifier ``model`` has run on this server (for a histogram)."""
        st = getattr(self.app.state, "serving", None)
        if st is None:
            raise RuntimeError("the server has not been started")
        if model not in st.batchers:
            raise ValueError(f"model must be one of the classifiers {sorted(st.batchers)}, got {model!r}")
        return list(st.batchers[model].batch_sizes)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class ServerProcess:
    """``python -m bmlib serve`` in its own process on a free loopback port, as a deployment runs it.

    A load generator in the calling process then shares no interpreter lock with the server (with
    :class:`ServerThread` the client's Python, the server's HTTP and JSON, and the model's operator
    dispatch all take turns on one lock). ``with ServerProcess(["minilm-sentiment"]) as url: ...``
    """

    def __init__(self, models: Sequence[str], port: int | None = None, batch: BatchConfig = BatchConfig(),
                 max_length: int = 64, threads: int | None = None):
        from .servables import MODELS

        if isinstance(models, str) or not models or any(m not in MODELS for m in models):
            raise ValueError(f"models must be a non-empty list of names from {list(MODELS)}, got {models!r}")
        if not isinstance(batch, BatchConfig):
            raise TypeError(f"batch must be a BatchConfig, got {type(batch).__name__}")
        for name, v in (("max_length", max_length), ("threads", threads)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        self.port = port or free_port()
        _uvicorn_config(None, "127.0.0.1", self.port)  # validates the port
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = ["serve", "--port", str(self.port), "--max-batch", str(batch.max_batch),
                     "--max-wait-ms", str(batch.max_wait_ms), "--max-queue", str(batch.max_queue),
                     "--timeout", str(batch.timeout_s), "--max-length", str(max_length)]
        self.args += [a for m in models for a in ("--model", m)]
        if threads is not None:
            self.args += ["--threads", str(threads)]
        self.proc, self.exit_code = None, None  # exit_code: the process's status after stop()

    def start(self, timeout_s: float = 300.0) -> str:
        """Start the process and wait until ``/health`` answers (the first start may fit a head)."""
        import os
        import subprocess
        import sys
        import tempfile

        import httpx

        from .env import repo_root

        self._log = tempfile.TemporaryFile(mode="w+")  # not a pipe: a full pipe would block the server
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "bmlib", *self.args], cwd=repo_root(),
                                     env=env, stdout=self._log, stderr=subprocess.STDOUT)
        t0 = time.perf_counter()
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self.url
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.perf_counter() - t0 > timeout_s:
                self.stop()
                raise RuntimeError(f"the server did not start on {self.url} within {timeout_s} s:\n"
                                   + self.output())
            time.sleep(0.1)

    def output(self) -> str:
        """What the server process printed so far."""
        self._log.seek(0)
        return self._log.read()

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM (the server finishes the requests in flight), then check that nothing listens."""
        import signal
        import subprocess

        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise RuntimeError(f"the server on {self.url} did not stop within {timeout_s} s") from None
        self.exit_code, self.proc = self.proc.returncode, None
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", self.port)) == 0:
                raise RuntimeError(f"something still listens on {self.url} after stop()")

    def batch_sizes(self, model: str) -> list[int]:
        """The size of every batch the classifier ``model`` has run (from ``GET /v1/stats``)."""
        import httpx

        sizes = httpx.get(self.url + "/v1/stats", timeout=10).json()["batch_sizes"]
        if model not in sizes:
            raise ValueError(f"model must be one of the classifiers {sorted(sizes)}, got {model!r}")
        return sizes[model]

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
