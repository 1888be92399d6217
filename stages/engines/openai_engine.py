"""Any OpenAI-compatible server (`vllm serve`, hosted APIs) over httpx.

- `/chat/completions` for chat messages, `/completions` for a raw prompt; n samples in one call.
- At most `max_concurrency` requests in flight (asyncio.Semaphore); all requests of a batch are submitted at once.
- Retries only on named transient failures: timeouts, network errors (connect/read/write: refused, reset), a
  server that disconnects mid-response (httpx.RemoteProtocolError), HTTP 429/500/502/503/504,
  with exponential backoff plus jitter (a numeric Retry-After is honoured, capped), up to `max_retries` retries.
  After that the request comes back as an error result with reason `transient_exhausted`; the batch goes on.
- Any other 4xx/5xx is an error result for that request alone (reason `http_<status>`), never a raise.
- The API key is read from os.environ[config.api_key_env] in start(); it is only ever put in the Authorization
  header and appears in no log line, describe() or repr.
"""
from __future__ import annotations

import asyncio
import logging
import os
import random
from typing import Any, Optional

from stages.engines.base import (Completion, Engine, GenerationRequest, GenerationResult, OnResult,
                                 gather_reporting)
from schemas.errors import ConfigError

log = logging.getLogger(__name__)

TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})


class _Transient(Exception):
    def __init__(self, what: str, retry_after: Optional[float] = None):
        self.what, self.retry_after = what, retry_after
        super().__init__(what)


class OpenAIEngine(Engine):
    kind = "openai"
    backoff_base_s: float = 0.5     # first retry waits ~base, then 2x each time (plus up to 100% jitter)
    backoff_max_s: float = 30.0

    def __init__(self, config: Any):
        super().__init__(config)
        self._client = None
        self._sem: Optional[asyncio.Semaphore] = None
        self.retries = 0            # transient retries made so far (observability, tests)

    def __repr__(self) -> str:
        return f"OpenAIEngine(base_url={self.config.base_url!r}, model={self.config.model!r})"

    def __getstate__(self) -> dict:
        d = dict(self.__dict__)
        d["_client"], d["_sem"] = None, None
        return d

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
        self._sem = asyncio.Semaphore(self.config.max_concurrency)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def describe(self) -> dict[str, Any]:
        return {"engine": self.kind, "model": self.model_name, "base_url": self.config.base_url,
                "max_concurrency": self.config.max_concurrency, "max_retries": self.config.max_retries}

    # ---- requests

    def _body(self, req: GenerationRequest) -> tuple[str, dict]:
        s = req.sampling
        body: dict[str, Any] = {"model": self.config.model, "temperature": s.temperature, "top_p": s.top_p,
                                "max_tokens": s.max_tokens, "n": s.n}
        if s.stop:
            body["stop"] = list(s.stop)
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
            raise _Transient(f"{type(e).__name__}: {e}") from None
        if resp.status_code in TRANSIENT_STATUS:
            ra = resp.headers.get("retry-after")
            try:
                retry_after = float(ra) if ra is not None else None
            except ValueError:
                retry_after = None
            raise _Transient(f"HTTP {resp.status_code}: {resp.text[:300]}", retry_after)
        return resp

    async def _one(self, req: GenerationRequest) -> GenerationResult:
        res = GenerationResult(request_id=req.request_id)
        path, body = self._body(req)
        async with self._sem:
            attempt = 0
            while True:
                try:
                    resp = await self._post_once(path, body)
                    break
                except _Transient as t:
                    if attempt >= self.config.max_retries:
                        res.error_reason = "transient_exhausted"
                        res.error_message = f"gave up after {attempt + 1} tries; last: {t.what}"
                        return res
                    delay = self._backoff(attempt, t.retry_after)
                    log.warning("openai engine: transient failure (%s), retry %d/%d in %.2fs",
                                t.what.split(":")[0], attempt + 1, self.config.max_retries, delay)
                    self.retries += 1
                    attempt += 1
                    await asyncio.sleep(delay)
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
        return res

    async def generate(self, requests: list[GenerationRequest],
                       on_result: Optional[OnResult] = None) -> list[GenerationResult]:
        if self._client is None:
            await self.start()
        return await gather_reporting([self._one(r) for r in requests], on_result)
