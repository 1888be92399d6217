"""The OpenAI engine against a real local HTTP server: retries only on transient failures (429, 5xx, timeouts,
disconnects), row errors for the rest, key handling (sent, never logged), raw prompts, bounded concurrency; outages
of the server as a whole (requests held and resubmitted, or EngineUnavailable), never error rows."""
from __future__ import annotations

import asyncio
import json
import logging
import pickle
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipelines.config import EngineConfig
from schemas.errors import ConfigError, EngineUnavailable, error_chain
from stages.engines import make_engine
from stages.engines.base import GenerationRequest, SamplingParams


def run(coro):
    return asyncio.run(coro)


def chat(text, n=1, rid="r"):
    return GenerationRequest(messages=[{"role": "user", "content": text}], sampling=SamplingParams(n=n),
                             request_id=rid)


class ScriptedServer:
    """A local OpenAI-compatible server. `plan[key]` is a list of (status, body) served in order for requests whose
    content (chat) or prompt (completions) contains `key`; the last entry repeats; status 0 closes the connection
    without a response (a server killed mid-request). Records every request. GET (the health URL, `/v1/models`)
    answers `health` (a status). `go_down()` stops it as a killed server stops: requests in flight get no response,
    new connections are refused; `come_back()` serves again on the same port."""

    def __init__(self, delay: float = 0.0):
        self.plan: dict[str, list[tuple[int, dict | str]]] = {}
        self.hits: list[dict] = []
        self.probes: list[str] = []
        self.health = 200
        self.down = False
        self.lock = threading.Lock()
        self.delay = delay
        self.in_flight = 0
        self.max_in_flight = 0
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                outer.probes.append(self.path)
                raw = json.dumps({"object": "list", "data": [{"id": "served-model", "object": "model"}]})
                self.send_response(outer.health)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw.encode())

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                text = (body["messages"][-1]["content"] if "messages" in body else body.get("prompt", ""))
                with outer.lock:
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                    outer.hits.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization"),
                                       "text": text})
                    key = next((k for k in outer.plan if k in text), None)
                    seq = outer.plan.get(key) or [(200, None)]
                    status, payload = seq.pop(0) if len(seq) > 1 else seq[0]
                time.sleep(outer.delay)
                if payload is None:
                    payload = outer.ok_payload(body, text)
                raw = payload if isinstance(payload, str) else json.dumps(payload)
                with outer.lock:
                    outer.in_flight -= 1
                if status == 0 or outer.down:   # the server goes away mid-request: no response at all
                    self.close_connection = True
                    return
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(raw)))
                    self.end_headers()
                    self.wfile.write(raw.encode())
                except (BrokenPipeError, ConnectionResetError):   # the client timed out and left
                    pass

        self.handler = H
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @staticmethod
    def ok_payload(body, text):
        n = body.get("n", 1)
        if "messages" in body:
            choices = [{"index": i, "message": {"role": "assistant", "content": f"reply {i} to {text}"},
                        "finish_reason": "stop"} for i in range(n)]
        else:
            choices = [{"index": i, "text": f" completion {i}", "finish_reason": "length"} for i in range(n)]
        return {"choices": list(reversed(choices)), "usage": {"prompt_tokens": 11, "completion_tokens": 7 * n}}

    def hits_for(self, key):
        return [h for h in self.hits if key in h["text"]]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *a):
        self.go_down()

    def go_down(self):
        self.down = True
        if self.httpd is not None:
            httpd, self.httpd = self.httpd, None
            httpd.shutdown()
            httpd.server_close()

    def come_back(self):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), self.handler)
        self.down = False
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def later(self, *steps, once=lambda: True):
        """In a thread, once `once()` holds: (seconds, callable) steps one after the other (e.g. go down, then come
        back)."""
        def go():
            while not once():
                time.sleep(0.01)
            for wait, fn in steps:
                time.sleep(wait)
                fn()
        t = threading.Thread(target=go, daemon=True)
        t.start()
        return t


SECRET = "sk-test-SECRET-never-log-me-123"


@pytest.fixture
def server():
    with ScriptedServer() as s:
        yield s


def openai_engine(url, monkeypatch, **kw):
    monkeypatch.setenv("ERRATA_TEST_KEY", SECRET)
    cfg = EngineConfig(kind="openai", model="served-model", base_url=url, api_key_env="ERRATA_TEST_KEY",
                       max_retries=kw.pop("max_retries", 3), request_timeout_s=kw.pop("timeout", 5.0), **kw)
    e = make_engine(cfg)
    e.backoff_base_s = 0.01
    return e


async def _gen(engine, reqs):
    await engine.start()
    try:
        return await engine.generate(reqs)
    finally:
        await engine.close()


def test_openai_retries_503_then_succeeds(server, monkeypatch):
    server.plan["flaky"] = [(503, {"error": "overloaded"}), (200, None)]
    e = openai_engine(server.url, monkeypatch)
    [r] = run(_gen(e, [chat("flaky question", n=2)]))
    assert r.ok and len(server.hits_for("flaky")) == 2 and e.retries == 1
    assert [c.text for c in r.completions] == ["reply 0 to flaky question", "reply 1 to flaky question"]
    assert r.prompt_tokens == 11 and [c.completion_tokens for c in r.completions] == [7, 7]
    h = server.hits[-1]
    assert h["path"] == "/v1/chat/completions" and h["body"]["model"] == "served-model" and h["body"]["n"] == 2
    assert "seed" not in h["body"]


def test_openai_429_exhausts_retries_without_killing_the_batch(server, monkeypatch):
    server.plan["busy"] = [(429, {"error": "rate limited"})]
    e = openai_engine(server.url, monkeypatch, max_retries=2)
    res = run(_gen(e, [chat("busy one", rid="x"), chat("fine one", rid="y")]))
    assert [r.request_id for r in res] == ["x", "y"]
    assert res[0].error_reason == "transient_exhausted" and "429" in res[0].error_message
    assert len(server.hits_for("busy")) == 3          # 1 try + max_retries
    assert res[1].ok and res[1].completions[0].text == "reply 0 to fine one"


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_openai_non_transient_4xx_is_a_row_error_not_retried(server, monkeypatch, status):
    server.plan["bad"] = [(status, {"error": {"message": "invalid request"}}), (200, None)]
    e = openai_engine(server.url, monkeypatch)
    res = run(_gen(e, [chat("bad request"), chat("good request")]))
    assert res[0].error_reason == f"http_{status}" and "invalid request" in res[0].error_message
    assert len(server.hits_for("bad")) == 1 and e.retries == 0
    assert res[1].ok


def test_openai_transient_5xx_family_all_retried(server, monkeypatch):
    for code in (500, 502, 503, 504):
        server.plan[f"c{code}"] = [(code, "oops"), (200, None)]
    e = openai_engine(server.url, monkeypatch)
    res = run(_gen(e, [chat(f"c{code}") for code in (500, 502, 503, 504)]))
    assert all(r.ok for r in res) and e.retries == 4
    for code in (500, 502, 503, 504):
        assert len(server.hits_for(f"c{code}")) == 2


def test_openai_server_disconnect_is_retried(server, monkeypatch):
    """'Server disconnected without sending a response' (a vLLM server killed mid-build) is retried like a 5xx."""
    server.plan["drop"] = [(0, None), (0, None), (200, None)]
    e = openai_engine(server.url, monkeypatch)
    [r] = asyncio.run(_gen(e, [GenerationRequest(messages=[{"role": "user", "content": "drop me"}])]))
    assert r.ok and r.completions[0].text == "reply 0 to drop me"
    assert len(server.hits_for("drop")) == 3 and e.retries == 2


def test_openai_timeout_is_transient(monkeypatch):
    with ScriptedServer(delay=0.5) as slow:
        e = openai_engine(slow.url, monkeypatch, max_retries=1, timeout=0.1)
        [r] = run(_gen(e, [chat("slow")]))
    assert r.error_reason == "transient_exhausted" and "Timeout" in r.error_message
    assert len(slow.hits) == 2


def test_openai_connect_refused_with_nothing_listening_is_an_outage_not_error_rows(monkeypatch):
    """Connections refused, health URL refused too: the engine as a whole is down. Once outage_timeout_s has passed
    the batch raises EngineUnavailable; no request comes back as an error result."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()                                           # nothing listens there now
    e = openai_engine(f"http://127.0.0.1:{port}/v1", monkeypatch, max_retries=2, outage_timeout_s=0.3)
    seen = []

    async def go():
        await e.start()
        try:
            return await e.generate([chat("anyone?", rid="a"), chat("hello?", rid="b")],
                                    on_result=lambda i, r: seen.append(r))
        finally:
            await e.close()
    with pytest.raises(EngineUnavailable) as ei:
        run(go())
    msg = str(ei.value)
    assert f"127.0.0.1:{port}/v1" in msg and "waited" in msg and "ConnectError" in msg, msg
    assert seen == [] and e.retries >= 2 and e.outages == 1
    assert error_chain(ei.value) == [ei.value]   # nothing transient chained (Prefect would retry the task)


def test_openai_malformed_body_is_a_row_error(server, monkeypatch):
    server.plan["junk"] = [(200, "not json at all")]
    e = openai_engine(server.url, monkeypatch)
    [r] = run(_gen(e, [chat("junk")]))
    assert r.error_reason == "bad_response" and e.retries == 0


def test_openai_raw_prompt_uses_completions(server, monkeypatch):
    e = openai_engine(server.url, monkeypatch)
    req = GenerationRequest(prompt="Once upon a time", sampling=SamplingParams(n=3, max_tokens=5, stop=["\n"]))
    [r] = run(_gen(e, [req]))
    h = server.hits[-1]
    assert h["path"] == "/v1/completions" and h["body"]["prompt"] == "Once upon a time"
    assert h["body"]["max_tokens"] == 5 and h["body"]["stop"] == ["\n"]
    assert [c.text for c in r.completions] == [" completion 0", " completion 1", " completion 2"]
    assert [c.finish_reason for c in r.completions] == ["length"] * 3
    assert sum(c.completion_tokens for c in r.completions) == 21
    assert "min_tokens" not in h["body"]


def test_openai_min_tokens_is_sent_only_when_asked(server, monkeypatch):
    e = openai_engine(server.url, monkeypatch)
    run(_gen(e, [GenerationRequest(prompt="x", sampling=SamplingParams(max_tokens=7, min_tokens=7))]))
    assert server.hits[-1]["body"]["min_tokens"] == 7 and server.hits[-1]["body"]["max_tokens"] == 7


def test_openai_key_is_sent_but_never_logged_or_described(server, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    server.plan["flaky"] = [(503, "x"), (200, None)]
    server.plan["bad"] = [(400, "nope")]
    e = openai_engine(server.url, monkeypatch)
    res = run(_gen(e, [chat("flaky"), chat("bad")]))
    assert all(h["auth"] == f"Bearer {SECRET}" for h in server.hits) and len(server.hits) == 3
    assert any("transient" in rec.message for rec in caplog.records)   # the retry was logged...
    assert SECRET not in caplog.text                                      # ...without the key
    assert SECRET not in json.dumps(e.describe()) and SECRET not in repr(e)
    assert all(SECRET not in (r.error_message or "") for r in res)
    assert SECRET not in pickle.dumps(e).decode("latin-1")


def test_openai_without_key_sends_no_auth_header(server, monkeypatch):
    monkeypatch.delenv("ERRATA_NO_SUCH_KEY", raising=False)
    e = make_engine(EngineConfig(kind="openai", base_url=server.url, api_key_env="ERRATA_NO_SUCH_KEY"))
    [r] = run(_gen(e, [chat("hi")]))
    assert r.ok and server.hits[-1]["auth"] is None


def test_openai_needs_base_url():
    with pytest.raises(ConfigError, match="base_url"):
        run(make_engine(EngineConfig(kind="openai")).start())


def test_openai_concurrency_is_bounded(monkeypatch):
    with ScriptedServer(delay=0.15) as s:
        e = openai_engine(s.url, monkeypatch, max_concurrency=2)
        t0 = time.perf_counter()
        res = run(_gen(e, [chat(f"q{i}", rid=str(i)) for i in range(6)]))
        dt = time.perf_counter() - t0
    assert all(r.ok for r in res) and [r.request_id for r in res] == [str(i) for i in range(6)]
    assert s.max_in_flight == 2          # all submitted at once, never more than 2 on the wire
    assert dt >= 3 * 0.15 * 0.9


# --- outages: the server as a whole goes away -------------------------------------------------------------------
def outage_engine(url, monkeypatch, **kw):
    e = openai_engine(url, monkeypatch, **kw)
    e.probe_base_s, e.probe_max_s = 0.05, 0.2
    return e


def test_openai_server_down_mid_batch_and_back_every_request_completes(monkeypatch, caplog):
    """Killed with requests in flight (no response, then connections refused), back on the same port ~1.5 s later:
    the requests wait for it behind one prober, are resubmitted, and all complete; no error result."""
    caplog.set_level(logging.WARNING, logger="stages.engines.openai_engine")
    with ScriptedServer(delay=0.3) as s:
        e = outage_engine(s.url, monkeypatch, max_retries=2, outage_timeout_s=30)
        s.later((0.05, s.go_down), (1.5, s.come_back), once=lambda: len(s.hits) >= 6)    # all 6 in flight
        t0 = time.perf_counter()
        res = run(_gen(e, [chat(f"q{i}", rid=str(i)) for i in range(6)]))
        took = time.perf_counter() - t0
    assert [r.request_id for r in res] == [str(i) for i in range(6)]
    assert all(r.ok for r in res), [r.error_message for r in res]
    assert [r.completions[0].text for r in res] == [f"reply 0 to q{i}" for i in range(6)]
    assert took >= 1.5
    assert e.outages == 1 and e.resubmitted == 6 and e.outage_seconds > 0
    d = e.describe()
    assert d["outages"] == 1 and d["resubmitted"] == 6
    down = [r for r in caplog.records if "is down" in r.getMessage()]
    back = [r for r in caplog.records if "is back after" in r.getMessage()]
    assert len(down) == 1 and len(back) == 1, caplog.text
    assert all(len(s.hits_for(f"q{i}")) >= 2 for i in range(6))       # sent before the outage and after it


def test_openai_server_stays_down_longer_than_outage_timeout_raises_engine_unavailable(monkeypatch):
    """Through the EngineHost a stage calls: EngineUnavailable reaches the caller (not taken for a dead engine to
    restart), no request became a result, and while the server stays down a later call fails at once."""
    from stages.engines.host import EngineHost
    from stages.engines.openai_engine import OpenAIEngine
    monkeypatch.setattr(OpenAIEngine, "backoff_base_s", 0.01)
    monkeypatch.setattr(OpenAIEngine, "probe_base_s", 0.05)
    monkeypatch.setattr(OpenAIEngine, "probe_max_s", 0.2)
    with ScriptedServer(delay=0.3) as s:
        host = EngineHost(EngineConfig(kind="openai", model="m", base_url=s.url, max_retries=1,
                                       outage_timeout_s=0.8))

        async def go():
            await host.start()
            s.later((0.05, s.go_down), once=lambda: len(s.hits) >= 4)
            try:
                with pytest.raises(EngineUnavailable) as first:
                    await host.generate([chat(f"q{i}", rid=str(i)) for i in range(4)], tag="generate", shard=0)
                t0 = time.perf_counter()
                with pytest.raises(EngineUnavailable, match="still down"):
                    await host.generate([chat("later")], tag="generate", shard=1)
                return first.value, time.perf_counter() - t0, host.describe()
            finally:
                await host.close()
        exc, second_took, described = run(go())
    msg = str(exc)
    assert s.url in msg and "waited" in msg and "outage_timeout_s=0.8" in msg and "last failure" in msg, msg
    assert error_chain(exc) == [exc]
    assert second_took < 0.5                        # no second wait of outage_timeout_s
    assert host.restarts == 0 and host.starts == 1
    p = host.progress()["generate"]
    assert p["done_requests"] == 0 and p["failed_requests"] == 0    # no error results
    assert described["outages"] == 1 and described["resubmitted"] == 0


def test_openai_one_bad_prompt_while_the_server_is_healthy_is_one_error_result(server, monkeypatch):
    server.plan["too long"] = [(400, {"error": {"message": "prompt is too long for max_model_len"}})]
    e = outage_engine(server.url, monkeypatch)
    res = run(_gen(e, [chat("fine 1"), chat("way too long prompt"), chat("fine 2")]))
    assert [r.ok for r in res] == [True, False, True]
    assert res[1].error_reason == "http_400" and "too long" in res[1].error_message
    assert e.outages == 0 and server.probes == []


def test_openai_request_timing_out_while_health_answers_is_a_row_error_not_an_outage(monkeypatch):
    with ScriptedServer(delay=0.5) as slow:
        slow.plan["fast"] = [(200, None)]
        e = outage_engine(slow.url, monkeypatch, max_retries=1, timeout=0.2)
        res = run(_gen(e, [chat("slow one")]))
    assert res[0].error_reason == "transient_exhausted" and "Timeout" in res[0].error_message
    assert e.outages == 0 and slow.probes == ["/v1/models"]          # one probe: the server answers


def test_openai_repeated_5xx_with_health_down_is_an_outage_then_resubmitted(server, monkeypatch):
    """A proxy whose backend is gone: 502 for every request and for the health URL; the backend comes back."""
    server.health = 502
    server.plan["q"] = [(502, "bad gateway")] * 4 + [(200, None)]
    e = outage_engine(server.url, monkeypatch, max_retries=1, outage_timeout_s=30)

    def back():
        server.health = 200
    server.later((0.1, back), once=lambda: len(server.probes) >= 2)    # down by the first request's probe
    res = run(_gen(e, [chat("q1"), chat("q2")]))
    assert all(r.ok for r in res) and e.outages == 1 and e.resubmitted == 2
    assert len(server.probes) >= 2


def test_openai_health_url_default_relative_and_key_only_to_the_same_server(monkeypatch):
    from stages.engines.openai_engine import OpenAIEngine
    base = "http://127.0.0.1:9/v1"
    assert OpenAIEngine(EngineConfig(kind="openai", base_url=base)).health_url == base + "/models"
    assert OpenAIEngine(EngineConfig(kind="openai", base_url=base + "/", health_url="/health")).health_url == \
        "http://127.0.0.1:9/health"
    for url, keyed in (("/health", True), ("http://elsewhere:8000/health", False)):
        e = openai_engine(base, monkeypatch, health_url=url)
        run(e.start())
        assert ("Authorization" in e._health.headers) == keyed
        run(e.close())


def test_progress_shows_the_openai_engine_s_tokens_per_s_from_its_usage_figures(monkeypatch):
    """The openai engine counts no tokens while the server generates: the stage's line reads its tokens/s from the
    usage figures of the finished requests over the stage's time."""
    from pipelines.progress import ProgressMonitor
    from stages.engines.host import EngineHost
    with ScriptedServer(delay=0.2) as s:
        host = EngineHost(EngineConfig(kind="openai", model="m", base_url=s.url))

        async def go():
            await host.start()
            try:
                await host.generate([chat(f"q{i}", n=2) for i in range(3)], tag="generate", shard=0)
                return host.progress(), host.describe()
            finally:
                await host.close()
        progress, described = run(go())

    class Plan:
        shard_ids = [0]

        def pending(self, tag):
            return [0]

    class Engines:
        def progress(self):
            return {tag: {"k": p} for tag, p in progress.items()}
    import io
    out = io.StringIO()
    (ln,) = ProgressMonitor(Engines(), Plan(), stream=out, log_every=0).render(Engines().progress())
    assert progress["__engine__"]["completion_tokens"] == 3 * 14 and progress["generate"]["completion_tokens"] == 42
    assert ln["done"] == ln["total"] == 6 and ln["tokens_per_s"] > 0 and ln["down_s"] is None
    g = progress["generate"]
    assert ln["tokens_per_s"] == pytest.approx(42 / (g["last_done"] - g["first_submit"]))   # over the stage's time
    assert f"6/6 sequences, 1/1 shards, {ln['tokens_per_s']:.0f} tok/s" in out.getvalue()
    assert described["kind"] == "openai" and described["outages"] == 0


def test_progress_line_says_when_the_stage_s_engine_is_down():
    from pipelines.progress import status_line
    a = {"done_sequences": 2, "planned_sequences": 8, "shards": 1, "completion_tokens": 100, "first_submit": 100.0,
         "last_done": 105.0}
    ln = status_line("generate", a, shards_pending=1, now=110.0, down_s=23.4)
    assert ln["text"].endswith(", engine down for 23 s") and ln["tokens_per_s"] == 10.0
    done = dict(a, done_sequences=8)
    assert status_line("generate", done, shards_pending=1, now=200.0)["tokens_per_s"] == 20.0  # up to last_done


def test_openai_refused_while_health_answers_gets_one_more_round_then_is_a_row_error(server, monkeypatch):
    """Refused connections that outlast the retries while the health URL answers: the server has just come back, so
    the request gets one more round of retries (no error row); refused through that round too, it is a row error."""
    from stages.engines import openai_engine as oe
    e = outage_engine(server.url, monkeypatch, max_retries=1)
    real = oe.OpenAIEngine._post_once
    refusals = {"came back": 2, "never": 100}

    async def post(self, path, body):
        key = next(k for k in refusals if k in body["messages"][-1]["content"])
        if refusals[key] > 0:
            refusals[key] -= 1
            raise oe._Transient("ConnectError: refused", refused=True)
        return await real(self, path, body)
    monkeypatch.setattr(oe.OpenAIEngine, "_post_once", post)
    came_back, never = run(_gen(e, [chat("came back"), chat("never")]))
    assert came_back.ok and came_back.completions[0].text == "reply 0 to came back"
    assert never.error_reason == "transient_exhausted" and "refused" in never.error_message
    assert refusals["never"] == 100 - 4                  # two rounds of 1 try + 1 retry, no more
    assert e.outages == 0 and len(server.probes) == 3    # one probe after each used-up round
