"""Any OpenAI-compatible server (`vllm serve`, hosted APIs) over httpx.

- `/chat/completions` for chat messages, `/completions` for a raw prompt; n samples in one call.
- At most `max_concurrency` requests in flight (asyncio.Semaphore); all requests of a batch are submitted at once.
- Retries only on named transient failures: timeouts, network errors (connect/read/write: refused, reset), a
  server that disconnects mid-response (httpx.RemoteProtocolError), HTTP 429/500/502/503/504,
  with exponential backoff plus jitter (a numeric Retry-After is honoured, capped), up to `max_retries` retries.
- A request that has used up its retries asks the server's health URL (`health_url`, default `<base_url>/models`;
  any HTTP answer below 500 means up) once. Up: the failure was the request's own and it comes back as an error
  result with reason `transient_exhausted`; the batch goes on. Down: an outage of the engine as a whole. One prober
  per engine then asks the health URL with capped exponential backoff for up to `outage_timeout_s`; every request
  in flight (and any sent meanwhile) waits for that same outage instead of spending its retries. When the server
  answers again they are all resubmitted with fresh retries; when the time is up they all raise EngineUnavailable
  (no error results: the shard fails, a rerun resumes), and later requests fail at once while the server still
  does not answer. One warning when an outage starts, one when it ends; describe() counts outages and resubmissions.
- Any other 4xx/5xx is an error result for that request alone (reason `http_<status>`), never a raise.
- The API key is read from os.environ[config.api_key_env] in start(); it is only ever put in the Authorization
  header and appears in no log line, describe() or repr.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any, Optional
from urllib.parse import urljoin, urlsplit

from stages.engines.base import Completion, Constraint, Engine, GenerationRequest, GenerationResult, OnResult
from schemas.errors import ConfigError, EngineUnavailable

log = logging.getLogger(__name__)

TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})


class _Transient(Exception):
    def __init__(self, what: str, retry_after: Optional[float] = None, refused: bool = False):
        self.what, self.retry_after = what, retry_after
        self.refused = refused      # the connection was refused: the request never reached the server
        super().__init__(what)


@dataclass
class _Outage:
    """The server as a whole is down. `done` resolves to None when it is back, or to the message of the
    EngineUnavailable every waiting request raises when it did not come back in time."""
    last_failure: str
    started: float = field(default_factory=time.monotonic)
    done: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    waiting: int = 0            # requests that waited for it
    last_probe: str = ""


def constraint_fields(c: Constraint, mode: str) -> dict[str, Any]:
    """The request fields that carry a constraint to the server: a vLLM server's `structured_outputs` (every kind),
    or OpenAI's `response_format` with a JSON schema (json only). Anything the server cannot take is refused here
    (the chain check already keeps constrain=auto stages free on such a server)."""
    if mode == "vllm":
        return {"structured_outputs": {c.kind: list(c.choice) if c.kind == "choice" else c.value}}
    if mode == "openai" and c.kind == "json":
        return {"response_format": {"type": "json_schema",
                                    "json_schema": {"name": "output", "schema": json.loads(c.json), "strict": True}}}
    raise ConfigError(f"openai engine (structured_outputs: {mode}) cannot send a {c.kind} constraint; set "
                      f"engines.<role>.structured_outputs=vllm for a vLLM server, or the stage's constrain=off")


class OpenAIEngine(Engine):
    kind = "openai"
    backoff_base_s: float = 0.5     # first retry waits ~base, then 2x each time (plus up to 100% jitter)
    backoff_max_s: float = 30.0
    probe_base_s: float = 0.5       # during an outage: first health probe after ~base, then 2x each time...
    probe_max_s: float = 15.0       # ...up to this
    probe_timeout_s: float = 5.0    # one health probe

    def __init__(self, config: Any):
        super().__init__(config)
        self._client = None
        self._health = None         # its own small client: probes never queue behind requests for a connection
        self._sem: Optional[asyncio.Semaphore] = None
        self._outage: Optional[_Outage] = None
        self._prober: Optional[asyncio.Task] = None
        self._gave_up: Optional[str] = None     # the last outage ran out of time (message); cleared once up again
        self.retries = 0            # transient retries made so far (observability, tests)
        self.outages = 0            # outages begun
        self.outage_seconds = 0.0   # time spent in outages that ended (the server came back)
        self.resubmitted = 0        # requests sent again after an outage
        self.requests_done = 0      # requests answered with a result (error results included)
        self.completion_tokens = 0  # from the server's usage figures

    def __repr__(self) -> str:
        return f"OpenAIEngine(base_url={self.config.base_url!r}, model={self.config.model!r})"

    def __getstate__(self) -> dict:
        d = dict(self.__dict__)
        d.update(_client=None, _health=None, _sem=None, _outage=None, _prober=None)
        return d

    @property
    def health_url(self) -> str:
        """config.health_url (relative to base_url when it is a path such as /health); unset: <base_url>/models."""
        base = self.config.base_url.rstrip("/") + "/"
        return urljoin(base, self.config.health_url) if self.config.health_url else base + "models"

    async def start(self) -> None:
        import httpx

        if not self.config.base_url:
            raise ConfigError("engine.kind=openai needs engine.base_url (e.g. http://localhost:8000/v1)")
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.config.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        else:
            log.info("openai engine: $%s is not set; sending requests without an API key",
                     self.config.api_key_env)
        limits = httpx.Limits(max_connections=self.config.max_concurrency,
                              max_keepalive_connections=self.config.max_concurrency)
        self._client = httpx.AsyncClient(base_url=self.config.base_url.rstrip("/") + "/", headers=headers,
                                         timeout=httpx.Timeout(self.config.request_timeout_s), limits=limits)
        # the key goes to the health URL only when it is on the same server as base_url
        same = _origin(self.health_url) == _origin(self.config.base_url)
        self._health = httpx.AsyncClient(headers=headers if same else {}, timeout=self.probe_timeout_s,
                                         limits=httpx.Limits(max_connections=2))
        self._sem = asyncio.Semaphore(self.config.max_concurrency)

    async def close(self) -> None:
        if self._outage is not None:    # requests still waiting for the server fail now rather than never
            self._end_outage(self._outage, f"the openai engine for {self.config.base_url} was closed during an "
                                           f"outage; last failure: {self._outage.last_failure}")
        if self._prober is not None:
            self._prober.cancel()
            self._prober = None
        for name in ("_client", "_health"):
            c = getattr(self, name)
            if c is not None:
                setattr(self, name, None)
                await c.aclose()

    def describe(self) -> dict[str, Any]:
        return {"engine": self.kind, "model": self.model_name, "base_url": self.config.base_url,
                "max_concurrency": self.config.max_concurrency, "max_retries": self.config.max_retries,
                "outage_timeout_s": self.config.outage_timeout_s, "retries": self.retries, "outages": self.outages,
                "outage_seconds": round(self.outage_seconds, 1), "resubmitted": self.resubmitted}

    def live_stats(self) -> dict[str, Any]:
        """Usage figures of the answered requests (the server counts no tokens for us while it generates), and
        `down_s`: how long the current outage has lasted (None when the server is up)."""
        o = self._outage
        return {"requests": self.requests_done, "completion_tokens": self.completion_tokens,
                "retries": self.retries, "outages": self.outages, "resubmitted": self.resubmitted,
                "down_s": round(time.monotonic() - o.started, 1) if o is not None else None}

    # ---- requests

    def _body(self, req: GenerationRequest) -> tuple[str, dict]:
        s = req.sampling
        body: dict[str, Any] = {"model": self.config.model, "temperature": s.temperature, "top_p": s.top_p,
                                "max_tokens": s.max_tokens, "n": s.n}
        if s.stop:
            body["stop"] = list(s.stop)
        if s.min_tokens:
            body["min_tokens"] = s.min_tokens     # vLLM's extra sampling field; OpenAI's own API has none
        if s.constraint is not None:
            body.update(constraint_fields(s.constraint, getattr(self.config, "structured_outputs", "vllm")))
        if req.messages is not None:
            body["messages"] = req.messages
            return "chat/completions", body
        body["prompt"] = req.prompt or ""
        return "completions", body

    def _backoff(self, attempt: int, retry_after: Optional[float]) -> float:
        base = min(self.backoff_max_s, self.backoff_base_s * (2 ** attempt))
        delay = base + random.uniform(0, base)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.backoff_max_s))
        return delay

    async def _post_once(self, path: str, body: dict) -> Any:
        import httpx

        try:
            resp = await self._client.post(path, json=body)
        except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as e:
            # timeouts, refused/reset connections, and a server that went away mid-response
            # ("Server disconnected without sending a response"): all worth a retry with backoff
            raise _Transient(_named(e), refused=isinstance(e, httpx.ConnectError)) from None
        if resp.status_code in TRANSIENT_STATUS:
            ra = resp.headers.get("retry-after")
            try:
                retry_after = float(ra) if ra is not None else None
            except ValueError:
                retry_after = None
            raise _Transient(f"HTTP {resp.status_code}: {resp.text[:300]}", retry_after)
        return resp

    # ---- health and outages

    async def _probe(self) -> tuple[bool, str]:
        """Ask the health URL once: (up, what it said). Any HTTP answer below 500 means up."""
        import httpx

        try:
            r = await self._health.get(self.health_url)
        except (httpx.HTTPError, OSError) as e:
            return False, _named(e)
        return r.status_code < 500, f"HTTP {r.status_code}"

    def _begin_outage(self, failure: str) -> None:
        if self._outage is not None:
            self._outage.last_failure = failure
            return
        o = self._outage = _Outage(failure)
        self.outages += 1
        log.warning("openai engine: the server at %s is down (%s); holding its requests and probing %s for up to "
                    "%.0f s (outage_timeout_s)", self.config.base_url, failure, self.health_url,
                    self.config.outage_timeout_s)
        self._prober = asyncio.get_running_loop().create_task(self._probe_until_up(o))

    def _end_outage(self, o: _Outage, verdict: Optional[str]) -> None:
        if self._outage is o:
            self._outage = None
        if not o.done.done():
            o.done.set_result(verdict)

    async def _probe_until_up(self, o: _Outage) -> None:
        """The one prober of an outage: health probes with capped exponential backoff until the server answers
        (every waiting request is resubmitted) or outage_timeout_s has passed (every waiting request raises)."""
        delay = self.probe_base_s
        deadline = o.started + self.config.outage_timeout_s
        try:
            while (left := deadline - time.monotonic()) > 0:
                await asyncio.sleep(min(delay, left))
                delay = min(delay * 2, self.probe_max_s)
                up, o.last_probe = await self._probe()
                if up:
                    took = time.monotonic() - o.started
                    self.outage_seconds += took
                    log.warning("openai engine: the server at %s is back after %.1f s; resubmitting the %d "
                                "request(s) that waited", self.config.base_url, took, o.waiting)
                    self._end_outage(o, None)
                    return
        except Exception as e:      # never leave the waiting requests waiting forever
            o.last_probe = f"prober failed: {type(e).__name__}: {e}"
        waited = time.monotonic() - o.started
        msg = (f"the OpenAI-compatible server at {self.config.base_url} is unavailable: waited {waited:.0f} s "
               f"(outage_timeout_s={self.config.outage_timeout_s:g}) for {self.health_url} to answer "
               f"(last probe: {o.last_probe or 'none'}); last failure: {o.last_failure}")
        log.warning("openai engine: gave up on the server at %s after %.0f s (outage_timeout_s); its %d waiting "
                    "request(s) fail with EngineUnavailable", self.config.base_url, waited, o.waiting)
        self._gave_up = msg
        self._end_outage(o, msg)

    async def _await_server(self, sent: bool) -> None:
        """Before a request is sent: wait out an outage in progress (raise EngineUnavailable when it ran out of
        time); after an outage that ran out of time, probe once and raise at once while the server is still down."""
        o = self._outage
        if o is not None:
            o.waiting += 1
            verdict = await asyncio.shield(o.done)
            if verdict is not None:
                raise EngineUnavailable(verdict)
            if sent:
                self.resubmitted += 1
        elif self._gave_up is not None:
            up, what = await self._probe()
            if not up:
                raise EngineUnavailable(f"{self._gave_up}; still down ({what})")
            self._gave_up = None

    # ---- requests

    async def _send(self, path: str, body: dict, res: GenerationResult) -> Any:
        """The server's response, or None with `res` made an error result (a failure of this request alone).
        Raises EngineUnavailable when the server as a whole stayed down longer than outage_timeout_s."""
        attempt = 0
        sent = False            # sent at least once: a send after an outage is a resubmission
        second_chance = False   # refused, yet the health URL answers: the server has just come back
        while True:
            await self._await_server(sent)
            try:
                return await self._post_once(path, body)
            except _Transient as t:
                failure = t
            sent = True
            if self._outage is not None:    # the server is down as a whole: wait with the others, then resubmit
                self._outage.last_failure = failure.what
                attempt = 0
                continue
            if attempt < self.config.max_retries:
                delay = self._backoff(attempt, failure.retry_after)
                log.warning("openai engine: transient failure (%s), retry %d/%d in %.2fs",
                            failure.what.split(":")[0], attempt + 1, self.config.max_retries, delay)
                self.retries += 1
                attempt += 1
                await asyncio.sleep(delay)
                continue
            up, what = await self._probe()
            if up and failure.refused and not second_chance:
                second_chance, attempt = True, 0
                continue
            if up:      # the server answers: the failure belongs to this request
                res.error_reason = "transient_exhausted"
                res.error_message = f"gave up after {attempt + 1} tries; last: {failure.what}"
                return None
            self._begin_outage(f"{failure.what}; health probe: {what}")
            attempt = 0

    async def _one(self, req: GenerationRequest) -> GenerationResult:
        res = GenerationResult(request_id=req.request_id)
        path, body = self._body(req)
        async with self._sem:
            resp = await self._send(path, body, res)
        self.requests_done += 1
        if resp is None:
            return res
        if resp.status_code >= 400:
            res.error_reason = f"http_{resp.status_code}"
            res.error_message = resp.text[:1000]
            return res
        try:
            data = resp.json()
            choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
            usage = data.get("usage") or {}
            res.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            total_completion = int(usage.get("completion_tokens") or 0)
            for k, c in enumerate(choices):
                text = (c["message"].get("content") or "") if "message" in c else (c.get("text") or "")
                # usage is per call; split it over the n choices (exact when n == 1)
                share = total_completion // len(choices) + (1 if k < total_completion % len(choices) else 0)
                res.completions.append(Completion(text=text, finish_reason=c.get("finish_reason"),
                                                  completion_tokens=share))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            res.completions = []
            res.error_reason = "bad_response"
            res.error_message = f"{type(e).__name__}: {e}; body: {resp.text[:500]}"
        self.completion_tokens += sum(c.completion_tokens for c in res.completions)
        return res

    async def generate(self, requests: list[GenerationRequest],
                       on_result: Optional[OnResult] = None) -> list[GenerationResult]:
        """Results in request order. EngineUnavailable (an outage that outlasted outage_timeout_s) cancels the
        batch's other requests and is raised: none of them becomes a result."""
        if self._client is None:
            await self.start()

        async def one(i: int, req: GenerationRequest) -> GenerationResult:
            r = await self._one(req)
            if on_result is not None:
                on_result(i, r)
            return r
        tasks = [asyncio.ensure_future(one(i, r)) for i, r in enumerate(requests)]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise


def _named(e: BaseException) -> str:
    """'Type: message', or the type alone when the message is empty (httpx's ReadError often is)."""
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _origin(url: str) -> tuple[str, str]:
    u = urlsplit(url)
    return u.scheme.lower(), u.netloc.lower()
