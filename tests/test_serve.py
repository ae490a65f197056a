"""The model server, started for real on a free loopback port: bad input, overload, faults, shutdown.

Every case sends real HTTP requests with httpx to a uvicorn server in a background thread (the
same code path as ``python -m bmlib serve``). The model is a stand-in whose speed and failures the
tests control; one test serves the real MiniLM classifier from its package with sockets blocked.
The count of cases is printed at the end of the run.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
import socket
import threading
import time

import httpx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bmlib.batching import BatchConfig, DynamicBatcher, QueueFull
from bmlib.models.gpt import GPT, GPTConfig
from bmlib.serve import ServerProcess, ServerThread, check_host, create_app, free_port
from bmlib.servables import Classifier, Generator, gpt_generator

CASES: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def _report_cases(request):
    yield
    tr = request.config.pluginmanager.get_plugin("terminalreporter")
    if tr is not None:
        tr.write_line(f"test_serve: {len(CASES)} server cases checked ({', '.join(sorted(set(CASES)))[:300]})")


class Toy:
    """A classifier whose latency and failures the tests set; records the batch sizes it saw."""

    def __init__(self, delay_s: float = 0.0):
        self.delay_s, self.batches, self.calls = delay_s, [], 0

    def __call__(self, texts):
        self.calls += 1
        self.batches.append(len(texts))
        if any(t == "boom" for t in texts):
            raise RuntimeError("the model failed on 'boom'")
        time.sleep(self.delay_s)
        return [{"label": "long" if len(t) > 3 else "short", "probs": {"long": 0.5, "short": 0.5}}
                for t in texts]


def slow_stream(delay_s=0.02, produced=None):
    def stream(prompt, max_new_tokens, temperature=0.0, seed=0, stop=lambda: False):
        for i in range(max_new_tokens):
            if stop():
                return
            time.sleep(delay_s)
            if produced is not None:
                produced.append(i)
            yield f"t{i} "
    return stream


@pytest.fixture(scope="module")
def server():
    toy = Toy(delay_s=0.002)
    produced: list[int] = []
    models = [Classifier("toy", ("long", "short"), toy, max_chars=50),
              Generator("slowgen", slow_stream(0.02, produced), max_new_tokens=100)]
    srv = ServerThread(models, batch=BatchConfig(max_batch=8, max_wait_ms=5, max_queue=64, timeout_s=5))
    url = srv.start()
    yield url, toy, produced
    srv.stop()
    CASES.append("nothing listens after stop")
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/health", timeout=2)


def post(url, path, body=None, content=None, **kw):
    if content is not None:
        return httpx.post(url + path, content=content, headers={"content-type": "application/json"},
                          timeout=10, **kw)
    return httpx.post(url + path, json=body, timeout=10, **kw)


def test_health_and_models(server):
    url, _, _ = server
    CASES.append("health")
    assert httpx.get(url + "/health").json()["status"] == "ok"
    assert {m["name"]: m["kind"] for m in httpx.get(url + "/v1/models").json()} == \
        {"toy": "classify", "slowgen": "generate"}


def test_classify_answers_each_text_in_order(server):
    url, _, _ = server
    CASES.append("classify")
    r = post(url, "/v1/classify", {"model": "toy", "texts": ["ab", "abcdef", "x"]})
    assert r.status_code == 200
    assert [x["label"] for x in r.json()["results"]] == ["short", "long", "short"]


BAD_CLASSIFY = [
    ("malformed JSON", None, b'{"model": "toy", "texts": [', 400, "body"),
    ("not an object", None, b'[1, 2]', 422, "body"),
    ("texts missing", {"model": "toy"}, None, 422, "texts"),
    ("model missing", {"texts": ["a"]}, None, 422, "model"),
    ("texts not a list", {"model": "toy", "texts": "abc"}, None, 422, "texts"),
    ("text not a string", {"model": "toy", "texts": ["a", 3]}, None, 422, "texts.1"),
    ("texts empty", {"model": "toy", "texts": []}, None, 422, "texts"),
    ("blank text", {"model": "toy", "texts": ["   "]}, None, 422, "texts.0"),
    ("over-long text", {"model": "toy", "texts": ["x" * 51]}, None, 422, "texts.0"),
    ("too many texts", {"model": "toy", "texts": ["a"] * 65}, None, 422, "texts"),
    ("unknown field", {"model": "toy", "texts": ["a"], "extra": 1}, None, 422, "extra"),
    ("model not a string", {"model": 5, "texts": ["a"]}, None, 422, "model"),
    ("unknown model", {"model": "nope", "texts": ["a"]}, None, 404, "model"),
    ("generator as classifier", {"model": "slowgen", "texts": ["a"]}, None, 404, "model"),
]


@pytest.mark.parametrize("case,body,content,status,field", BAD_CLASSIFY, ids=[c[0] for c in BAD_CLASSIFY])
def test_bad_classify_requests_get_4xx_naming_the_field(server, case, body, content, status, field):
    url, _, _ = server
    CASES.append(f"classify: {case}")
    r = post(url, "/v1/classify", body, content)
    assert r.status_code == status, r.text
    assert field in r.json()["error"], r.json()


BAD_GENERATE = [
    ("prompt missing", {"model": "slowgen"}, 422, "prompt"),
    ("empty prompt", {"model": "slowgen", "prompt": ""}, 422, "prompt"),
    ("over-long prompt", {"model": "slowgen", "prompt": "x" * 2001}, 422, "prompt"),
    ("too many tokens", {"model": "slowgen", "prompt": "a", "max_new_tokens": 101}, 422, "max_new_tokens"),
    ("zero tokens", {"model": "slowgen", "prompt": "a", "max_new_tokens": 0}, 422, "max_new_tokens"),
    ("tokens as string", {"model": "slowgen", "prompt": "a", "max_new_tokens": "5"}, 422, "max_new_tokens"),
    ("negative temperature", {"model": "slowgen", "prompt": "a", "temperature": -1}, 422, "temperature"),
    ("negative seed", {"model": "slowgen", "prompt": "a", "seed": -3}, 422, "seed"),
    ("unknown generator", {"model": "toy", "prompt": "a"}, 404, "model"),
]


@pytest.mark.parametrize("case,body,status,field", BAD_GENERATE, ids=[c[0] for c in BAD_GENERATE])
def test_bad_generate_requests_get_4xx_naming_the_field(server, case, body, status, field):
    url, _, _ = server
    CASES.append(f"generate: {case}")
    r = post(url, "/v1/generate", body)
    assert r.status_code == status, r.text
    assert field in r.json()["error"], r.json()


def test_generation_streams_one_line_per_token(server):
    url, _, _ = server
    CASES.append("stream")
    with httpx.stream("POST", url + "/v1/generate", json={"model": "slowgen", "prompt": "hi",
                                                          "max_new_tokens": 4}, timeout=10) as r:
        assert r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(x) for x in r.iter_lines() if x]
    assert [x["token"] for x in lines[:-1]] == ["t0 ", "t1 ", "t2 ", "t3 "]
    assert lines[-1] == {"done": True, "tokens": 4}
    r = post(url, "/v1/generate", {"model": "slowgen", "prompt": "hi", "max_new_tokens": 3, "stream": False})
    assert r.json()["text"] == "t0 t1 t2 "


def test_client_disconnect_mid_stream_stops_generation_and_server_keeps_serving(server):
    url, _, produced = server
    CASES.append("disconnect mid-stream")
    produced.clear()
    with httpx.stream("POST", url + "/v1/generate", json={"model": "slowgen", "prompt": "hi",
                                                          "max_new_tokens": 100}, timeout=10) as r:
        first = next(r.iter_lines())
        assert json.loads(first) == {"token": "t0 "}
    time.sleep(0.5)  # the server notices the closed connection at its next write
    n_after = len(produced)
    time.sleep(0.3)
    assert len(produced) == n_after < 100, "generation went on after the client left"
    r = post(url, "/v1/generate", {"model": "slowgen", "prompt": "again", "max_new_tokens": 2, "stream": False})
    assert r.status_code == 200 and r.json()["text"] == "t0 t1 "


def test_request_after_a_model_error_succeeds(server):
    url, _, _ = server
    CASES.append("model error then success")
    r = post(url, "/v1/classify", {"model": "toy", "texts": ["boom"]})
    assert r.status_code == 500 and "model" in r.json()["error"] and "boom" in r.json()["error"]
    r = post(url, "/v1/classify", {"model": "toy", "texts": ["fine"]})
    assert r.status_code == 200 and r.json()["results"][0]["label"] == "long"


def test_concurrent_requests_share_batches(server):
    url, toy, _ = server
    CASES.append("dynamic batching")
    toy.batches.clear()

    async def many():
        async with httpx.AsyncClient(timeout=10) as c:
            return await asyncio.gather(*(c.post(url + "/v1/classify", json={"model": "toy", "texts": [f"t{i}"]})
                                          for i in range(32)))

    rs = asyncio.run(many())
    assert all(r.status_code == 200 for r in rs)
    assert sum(toy.batches) == 32 and max(toy.batches) <= 8
    assert len(toy.batches) < 32, f"no request shared a batch: {toy.batches}"


def test_overload_gets_429_and_server_serves_afterwards():
    CASES.append("overload 429")
    toy = Toy(delay_s=0.05)
    cfg = BatchConfig(max_batch=2, max_wait_ms=1, max_queue=4, timeout_s=10)
    with ServerThread([Classifier("toy", ("long", "short"), toy)], batch=cfg) as url:
        async def flood():
            async with httpx.AsyncClient(timeout=20, limits=httpx.Limits(max_connections=40)) as c:
                return await asyncio.gather(*(c.post(url + "/v1/classify", json={"model": "toy", "texts": ["abcd"]})
                                              for _ in range(40)))

        codes = [r.status_code for r in asyncio.run(flood())]
        assert 429 in codes and 200 in codes, codes
        assert set(codes) <= {200, 429}
        r = post(url, "/v1/classify", {"model": "toy", "texts": ["after"]})
        assert r.status_code == 200


def test_generation_queue_is_bounded():
    CASES.append("generation queue 429")
    gen = Generator("g", slow_stream(0.05), max_new_tokens=50)
    with ServerThread([gen], gen_queue=1) as url:
        async def flood():
            async with httpx.AsyncClient(timeout=30) as c:
                body = {"model": "g", "prompt": "a", "max_new_tokens": 5, "stream": False}
                return await asyncio.gather(*(c.post(url + "/v1/generate", json=body) for _ in range(6)))

        codes = sorted(r.status_code for r in asyncio.run(flood()))
        assert 429 in codes and 200 in codes, codes


def test_timeout_gets_504():
    CASES.append("timeout 504")
    toy = Toy(delay_s=1.0)
    with ServerThread([Classifier("toy", ("long", "short"), toy)],
                      batch=BatchConfig(max_batch=1, max_wait_ms=0, max_queue=8, timeout_s=0.3)) as url:
        async def two():
            async with httpx.AsyncClient(timeout=10) as c:
                return await asyncio.gather(*(c.post(url + "/v1/classify", json={"model": "toy", "texts": ["a"]})
                                              for _ in range(2)))

        codes = sorted(r.status_code for r in asyncio.run(two()))
        assert codes == [504, 504], codes  # the first waits on the model, the second in the queue


def test_shutdown_finishes_requests_in_flight():
    CASES.append("graceful shutdown")
    toy = Toy(delay_s=0.5)
    srv = ServerThread([Classifier("toy", ("long", "short"), toy)],
                       batch=BatchConfig(max_batch=4, max_wait_ms=1, timeout_s=10))
    url = srv.start()
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", post(url, "/v1/classify", {"model": "toy", "texts": ["slow one"]})))
    t.start()
    t0 = time.perf_counter()
    while toy.calls == 0 and time.perf_counter() - t0 < 10:  # wait until the request is in the model
        time.sleep(0.01)
    srv.stop()
    t.join(10)
    assert out["r"].status_code == 200 and out["r"].json()["results"][0]["label"] == "long"
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", srv.port), timeout=1).close()


def test_real_gpt_generator_streams_greedy_tokens_like_generate():
    CASES.append("real GPT stream == bmlib.generate")
    from bmlib.generate import generate

    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=32, block_size=32, n_layer=2, n_head=2, n_embd=16)).eval()
    g = gpt_generator("gpt", m, lambda s: [ord(c) % 32 for c in s], lambda ids: ",".join(map(str, ids)) + ";")
    streamed = "".join(g.stream("hello", 6))
    ref = generate(m, torch.tensor([[ord(c) % 32 for c in "hello"]]), 6)[0, 5:].tolist()
    assert streamed == "".join(f"{i};" for i in ref)


def test_real_minilm_classifier_served_offline():
    """The packaged MiniLM with its fitted head, served with sockets blocked (no download possible)."""
    CASES.append("MiniLM served offline")
    from bmlib.servables import minilm_sentiment

    clf = minilm_sentiment(n_train=400)
    with ServerThread([clf]) as url:
        r = post(url, "/v1/classify", {"model": "minilm-sentiment",
                                       "texts": ["This is the best coffee I have ever had. Delicious!",
                                                 "Stale, tasteless and overpriced. Never again."]})
    assert r.status_code == 200
    labels = [x["label"] for x in r.json()["results"]]
    assert labels == ["great", "other"], r.json()


# ----------------------------------------------------------------------------- units and bad arguments
@pytest.mark.parametrize("kw,name", [({"max_batch": 0}, "max_batch"), ({"max_queue": 0}, "max_queue"),
                                     ({"max_wait_ms": -1}, "max_wait_ms"), ({"timeout_s": 0}, "timeout_s"),
                                     ({"max_batch": 8, "max_queue": 4}, "max_queue"),
                                     ({"max_batch": 2.5}, "max_batch")])
def test_batch_config_rejects_bad_values(kw, name):
    CASES.append(f"BatchConfig {name}")
    with pytest.raises(ValueError, match=name):
        BatchConfig(**kw)


@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.0.1", "8.8.8.8", "example.com"])
def test_server_and_load_generator_refuse_non_loopback_hosts(host):
    from bmlib.loadgen import run_load

    CASES.append(f"non-loopback {host}")
    with pytest.raises(ValueError, match="host"):
        check_host(host)
    with pytest.raises(ValueError, match="host"):
        run_load(f"http://{host}:8000/v1/classify", lambda i: {}, 1, 1)


def test_create_app_rejects_bad_models():
    CASES.append("create_app bad models")
    with pytest.raises(TypeError, match="models"):
        create_app([])
    with pytest.raises(ValueError, match="distinct"):
        create_app([Classifier("a", ("x",), lambda t: t), Classifier("a", ("x",), lambda t: t)])


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 10_000), min_size=1, max_size=40), st.integers(1, 8))
def test_batcher_returns_each_caller_its_own_result(items, max_batch):
    """Property: whatever the grouping, every caller gets f(its item), and no batch exceeds max_batch."""
    seen = []

    def f(batch):
        seen.append(len(batch))
        return [x * 2 + 1 for x in batch]

    async def go():
        b = DynamicBatcher(f, BatchConfig(max_batch=max_batch, max_wait_ms=2, max_queue=64))
        await b.start()
        out = await asyncio.gather(*(b.submit(x) for x in items))
        await b.stop()
        return out

    assert asyncio.run(go()) == [x * 2 + 1 for x in items]
    assert sum(seen) == len(items) and max(seen) <= max_batch


def test_batcher_queue_full_raises_at_once():
    CASES.append("QueueFull")

    async def go():
        b = DynamicBatcher(lambda xs: (time.sleep(0.2), xs)[1], BatchConfig(max_batch=1, max_queue=1, max_wait_ms=0))
        await b.start()
        first = asyncio.ensure_future(b.submit(1))
        await asyncio.sleep(0.05)  # the first is running; the queue is empty again
        second = asyncio.ensure_future(b.submit(2))
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):
            await b.submit(3)
        assert await first == 1 and await second == 2
        await b.stop()

    asyncio.run(go())


def test_free_port_is_free():
    p = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", p))


def test_cli_serve_starts_answers_and_stops_on_sigterm():
    """``python -m bmlib serve`` as a user runs it: a subprocess on a free loopback port
    (through :class:`ServerProcess`, which the chapter's load test uses)."""
    import signal

    CASES.append("CLI serve + SIGTERM")
    srv = ServerProcess(["minilm-sentiment"], batch=BatchConfig(max_batch=4, max_wait_ms=50),
                        max_length=8, threads=1)
    url = srv.start()
    try:
        texts = ["Wonderful, tasty, perfect.", "Stale, awful, never again.", "Great!"]
        with concurrent.futures.ThreadPoolExecutor(3) as pool:  # three requests at once: one batch
            rs = list(pool.map(lambda t: post(url, "/v1/classify", {"model": "minilm-sentiment", "texts": [t]}),
                               texts))
        assert [r.json()["results"][0]["label"] for r in rs] == ["great", "other", "great"]
        sizes = srv.batch_sizes("minilm-sentiment")
        assert sum(sizes) == 3 and max(sizes) <= 4, sizes
        with pytest.raises(ValueError, match="model"):
            srv.batch_sizes("gpt-cpu")
    finally:
        srv.stop()
    # uvicorn shuts down gracefully, then re-raises the signal it caught, as a process should
    assert srv.exit_code in (0, -signal.SIGTERM), srv.output()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", srv.port), timeout=1).close()


def test_server_process_refuses_bad_arguments_before_starting():
    CASES.append("ServerProcess bad arguments")
    for kw in (dict(models="minilm-sentiment"), dict(models=["no-such"]), dict(models=[])):
        with pytest.raises(ValueError, match="models"):
            ServerProcess(**kw)
    with pytest.raises(ValueError, match="max_length"):
        ServerProcess(["minilm-sentiment"], max_length=0)
    with pytest.raises(ValueError, match="threads"):
        ServerProcess(["minilm-sentiment"], threads=True)
    with pytest.raises(TypeError, match="batch"):
        ServerProcess(["minilm-sentiment"], batch={"max_batch": 4})
    with pytest.raises(ValueError, match="port"):
        ServerProcess(["minilm-sentiment"], port=70000)


def test_cli_serve_refuses_a_non_loopback_host_before_loading_models():
    from bmlib.cli import main

    CASES.append("CLI non-loopback host")
    with pytest.raises(ValueError, match="host"):
        main(["serve", "--model", "minilm-sentiment", "--host", "0.0.0.0"])


def test_load_generator_counts_answers_errors_and_its_own_cpu(server):
    """run_load against the real server: every request answered once, 4xx counted as errors."""
    from bmlib.loadgen import run_load

    CASES.append("load generator counts")
    url, _, _ = server
    ok = run_load(url + "/v1/classify", lambda i: {"model": "toy", "texts": [f"text {i}"]}, 4, 40)
    assert (ok.sent, ok.ok, ok.errors) == (40, 40, {}) and len(ok.latencies_ms) == 40
    assert 0 < ok.client_cpu_s and 0 < ok.row()["client_cpu_share"] <= 1.5
    bad = run_load(url + "/v1/classify", lambda i: {"model": "toy", "texts": []} if i % 2 else
                   {"model": "toy", "texts": ["x"]}, 3, 12)
    assert (bad.sent, bad.ok, bad.errors) == (12, 6, {"422": 6})
    with pytest.raises(ValueError, match="Content-Length"):  # a streamed answer is not what it measures
        run_load(url + "/v1/generate", lambda i: {"model": "slowgen", "prompt": "a", "max_new_tokens": 2}, 1, 1)


def test_load_generator_reads_one_answer_and_sees_connection_close():
    from bmlib.loadgen import _post

    class Writer:
        def __init__(self):
            self.sent = b""

        def write(self, b):
            self.sent += b

        async def drain(self):
            pass

    async def go(answer):
        reader = asyncio.StreamReader()
        reader.feed_data(answer)
        w = Writer()
        out = await _post((reader, w), b"127.0.0.1:1", b"/v1/classify", b'{"a": 1}')
        return out, w.sent, reader

    (code, keep), sent, reader = asyncio.run(go(b"HTTP/1.1 429 Too Many Requests\r\ncontent-length: 2\r\n"
                                                b"connection: close\r\n\r\n{}HTTP/1.1 200 OK"))
    assert (code, keep) == (429, False)
    assert sent.startswith(b"POST /v1/classify HTTP/1.1\r\n") and sent.endswith(b'Content-Length: 8\r\n\r\n{"a": 1}')
    (code, keep), _, _ = asyncio.run(go(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
    assert (code, keep) == (200, True)
