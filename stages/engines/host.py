"""An EngineHost owns one engine for a build: it starts it once (and again only if it died), counts the starts,
serves every stage that uses it (many calls in flight at once, so the engine's batch stays full), and keeps
progress per stage tag: requests and sequences planned and done, tokens, the shards seen.

The same class runs in process (`LocalEngines`, for `runner: local` and tests) and as a Ray actor
(pipelines/engines.py), so the build's one engine per model is the same object either way.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from schemas.errors import ConfigError, EngineError, EngineUnavailable, TransientEngineError
from stages.engines.base import Engine, GenerationRequest, GenerationResult
from stages.engines.config import EngineConfig, budget_counts, group_roles

log = logging.getLogger(__name__)


@dataclass
class TagProgress:
    """One stage's use of an engine."""
    planned_requests: int = 0
    planned_sequences: int = 0
    done_requests: int = 0
    done_sequences: int = 0
    failed_requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    shards: list = field(default_factory=list)
    first_submit: Optional[float] = None
    last_done: Optional[float] = None


def _normal_priority() -> None:
    """Ray starts its workers at nice 15; the engine is the build's critical path, so its process (and the engine
    processes it spawns, which inherit this) go back to normal priority where the OS lets us."""
    try:
        if os.getpriority(os.PRIO_PROCESS, 0) > 0:
            os.setpriority(os.PRIO_PROCESS, 0, 0)
    except (OSError, AttributeError):
        pass


_STOPPING = threading.Event()     # the process is being interrupted (stop_restarting)
RESTART_GRACE_S = 1.0             # how long a death waits for an interrupt that may have caused it


def stop_restarting() -> None:
    """This process is being interrupted (Ctrl-C, SIGTERM): an engine that dies now most likely died of the same
    signal (a terminal's Ctrl-C reaches vLLM's engine process too), so it is not started again. Safe to call from
    a signal handler."""
    _STOPPING.set()


class EngineHost:
    """One engine of a build. `await start()`, `await generate(requests, tag, shard)`, `progress()`, `describe()`."""

    restart_limit = 2   # an engine that died is started again at most this often per host

    def __init__(self, config: EngineConfig, models_dir: str = "data/models", key: str = "",
                 engines_on_device: int = 1):
        self.config = config
        self.models_dir = models_dir
        self.key = key or config.key()
        self.engines_on_device = engines_on_device   # vLLM engines of the build sharing this one's device
        self.starts = 0
        self.start_seconds: list[float] = []
        self.restarts = 0
        self._engine: Optional[Engine] = None
        self._lock: Optional[asyncio.Lock] = None
        self._progress: dict[str, TagProgress] = {}
        self._engine_info: dict[str, Any] = {}    # what the engine said about itself (kept after close)

    def _make_engine(self) -> Engine:
        from stages.engines import make_engine
        return make_engine(self.config, self.models_dir, self.engines_on_device)

    async def start(self) -> dict[str, Any]:
        """Start the engine unless it runs; returns describe(). Start failures raise (TransientEngineError when
        a retry may help)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._engine is None:
                _normal_priority()
                engine = self._make_engine()
                t0 = time.perf_counter()
                await engine.start()
                self.start_seconds.append(round(time.perf_counter() - t0, 2))
                self.starts += 1
                self._engine = engine
                self._engine_info = engine.describe()
                log.info("engine %s (%s %s) started in %.1f s", self.key, self.config.kind, self.config.label(),
                         self.start_seconds[-1])
        return self.describe()

    def pid(self) -> int:
        return os.getpid()

    async def generate(self, requests: list[GenerationRequest], tag: str = "",
                       shard: Optional[int] = None) -> list[GenerationResult]:
        if not requests:
            return []
        p = self._progress.setdefault(tag, TagProgress())
        p.planned_requests += len(requests)
        p.planned_sequences += sum(r.sampling.n for r in requests)
        if shard is not None and shard not in p.shards:
            p.shards.append(shard)
        if p.first_submit is None:
            p.first_submit = time.time()

        def on_result(i: int, res: GenerationResult) -> None:
            p.done_requests += 1
            p.prompt_tokens += res.prompt_tokens
            if res.ok:
                p.done_sequences += len(res.completions)
                p.completion_tokens += sum(c.completion_tokens for c in res.completions)
            else:
                p.failed_requests += 1
                p.done_sequences += requests[i].sampling.n
            p.last_done = time.time()

        while True:
            await self.start()
            engine = self._engine
            try:
                return await engine.generate(requests, on_result=on_result)
            except (ConfigError, TransientEngineError, EngineUnavailable):
                raise   # an outage outlasted its timeout (the engine waited already): the shard fails, no restart
            except EngineError as e:   # the engine died under us: start a new one and resubmit the batch
                if not _STOPPING.is_set():
                    await asyncio.sleep(RESTART_GRACE_S)   # a Ctrl-C that killed it reaches errata's handler too
                if _STOPPING.is_set():
                    raise
                if self._engine is not engine:   # another batch on the same engine saw it die and replaced it
                    continue
                if self.restarts >= self.restart_limit:
                    raise EngineUnavailable(f"engine {self.key} ({self.config.kind} {self.config.label()}) died "
                                            f"{self.restarts + 1} times and was not restarted again (last: {e})") \
                        from e
                self.restarts += 1
                log.warning("engine %s died (%s); restarting it (%d/%d) and resubmitting %d request(s)",
                            self.key, e, self.restarts, self.restart_limit, len(requests))
                self._engine = None
                try:
                    await engine.close()
                except Exception:
                    pass

    def progress(self) -> dict[str, dict]:
        """Per stage tag: the TagProgress counters; under "__engine__": the engine's live counters."""
        out: dict[str, dict] = {tag: asdict(p) for tag, p in self._progress.items()}
        live = self._engine.live_stats() if self._engine is not None else {}
        out["__engine__"] = dict(live, at=time.time())
        return out

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"key": self.key, "kind": self.config.kind, "model": self.config.label()}
        if self._engine is not None:
            self._engine_info = self._engine.describe()
        d.update(self._engine_info)
        d.update(starts=self.starts, restarts=self.restarts, start_seconds=self.start_seconds)
        return d

    async def close(self) -> None:
        if self._engine is not None:
            self._engine_info = self._engine.describe()     # final counters (prefix-cache hits) stay described
            engine, self._engine = self._engine, None
            await engine.close()


class LocalEngines:
    """The build's engines in this process: one EngineHost per distinct engine setting, all running on one
    background event loop (engines such as vLLM's AsyncLLM belong to the loop they started in), shared by every
    stage of the process. `client(role)` gives a stage its engine."""

    def __init__(self, roles: dict[str, EngineConfig], models_dir: str = "data/models",
                 sharing: Optional[dict[str, int]] = None):
        self.roles = dict(roles)
        self.models_dir = models_dir
        self.role_keys, configs = group_roles(self.roles)
        counts = budget_counts(configs, sharing)    # sharing: engine key -> engines up with it (engines_sharing)
        self.hosts: dict[str, EngineHost] = {k: EngineHost(cfg, models_dir, k, counts[k]) for k, cfg in configs.items()}
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._starting: dict[str, concurrent.futures.Future] = {}     # begun, not yet waited for (begin)

    def __getstate__(self):
        raise TypeError("LocalEngines cannot be pickled: it serves stages of this process only")

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            loop = asyncio.new_event_loop()
            t = threading.Thread(target=loop.run_forever, name="errata-engines", daemon=True)
            t.start()
            self._loop, self._thread = loop, t
        return self._loop

    def submit(self, coro) -> concurrent.futures.Future:
        return asyncio.run_coroutine_threadsafe(coro, self._ensure_loop())

    def begin(self, roles: Optional[list[str]] = None) -> None:
        """Ask the engines these roles need to start and return at once (they load on the engines' loop while
        the caller does other work); `start` waits for them and raises what their start raised."""
        for k in sorted({self.role_keys[r] for r in (roles if roles is not None else self.roles)}):
            if k not in self._starting:
                self._starting[k] = self.submit(self.hosts[k].start())

    def start(self, roles: Optional[list[str]] = None) -> dict[str, dict]:
        keys = sorted({self.role_keys[r] for r in (roles if roles is not None else self.roles)})
        self.begin(roles)
        return {k: self._starting.pop(k).result() for k in keys}

    def running(self) -> list[str]:
        return sorted(k for k, h in self.hosts.items() if h._engine is not None)

    def client(self, role: str) -> "LocalEngineClient":
        if role not in self.role_keys:
            raise ConfigError(f"no engine for role '{role}' (roles: {', '.join(sorted(self.role_keys))})")
        return LocalEngineClient(self, self.hosts[self.role_keys[role]])

    def progress(self) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for h in self.hosts.values():
            for tag, p in h.progress().items():
                out.setdefault(tag, {}).update({h.key: p})
        return out

    def describe(self) -> dict[str, dict]:
        return {k: dict(h.describe(), roles=sorted(r for r, kk in self.role_keys.items() if kk == k))
                for k, h in self.hosts.items()}

    def stop(self, keys: Optional[list[str]] = None) -> None:
        if self._loop is None:
            return
        for k in (keys if keys is not None else list(self.hosts)):
            try:
                pending = self._starting.pop(k, None)
                if pending is not None:     # a start in flight would leave its engine running after the close
                    concurrent.futures.wait([pending], timeout=600)
                self.submit(self.hosts[k].close()).result(timeout=120)
            except Exception as e:  # never let a close failure hide the build's result
                log.warning("closing engine %s failed: %s", k, e)
        if keys is None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()
            self._loop = self._thread = None


class LocalEngineClient:
    """A stage's handle on an in-process engine: `generate` (blocking) or `await agenerate` (async)."""

    def __init__(self, engines: LocalEngines, host: EngineHost):
        self.engines, self.host = engines, host

    @property
    def config(self) -> EngineConfig:
        return self.host.config

    def generate(self, requests: list[GenerationRequest], tag: str = "",
                 shard: Optional[int] = None) -> list[GenerationResult]:
        return self.engines.submit(self.host.generate(requests, tag, shard)).result()

    async def agenerate(self, requests: list[GenerationRequest], tag: str = "",
                        shard: Optional[int] = None) -> list[GenerationResult]:
        return await asyncio.wrap_future(self.engines.submit(self.host.generate(requests, tag, shard)))
