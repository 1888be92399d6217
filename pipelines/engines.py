"""The build's engines: one per distinct engine setting, started once per build, shared by every stage that names one
of its roles, in streaming and in stage-by-stage (Prefect) builds alike.

- `runner: local` (and unit tests): `LocalEngines` (stages/engines/host.py), in this process.
- `runner: ray`: `RayEngines`, one Ray actor per engine (or `num_actors` replicas) holding an EngineHost. Stages
  in other actors reach it through an `EngineRefs` (picklable: actor names) and its `RayEngineClient`. The actors
  belong to the driver (not detached): if the build's process dies, Ray ends them; nothing is left running.

Why actors and not Ray Serve LLM: an actor holding vLLM's AsyncLLM is what Serve's LLM deployment wraps, without
the controller/proxy/replica machinery; measured on this machine Serve took 74 s to bring an app to RUNNING where the
engine itself starts in ~31 s. Actors still get Ray's placement (GPUs on a cluster), replicas and
restarts (`max_restarts`); the client resubmits a call whose actor died once the actor is back.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Optional

from schemas.errors import EngineUnavailable
from stages.engines.base import GenerationRequest, GenerationResult
from stages.engines.config import EngineConfig, budget_counts, group_roles

log = logging.getLogger(__name__)
NAMESPACE = "errata"
ACTOR_RESTARTS = 2


class EngineRefs:
    """Picklable handle on the build's Ray engine actors: role -> actor names."""

    def __init__(self, role_actors: dict[str, list[str]], namespace: str = NAMESPACE,
                 models_dir: Optional[str] = None):
        self.role_actors = role_actors
        self.namespace = namespace
        self.models_dir = models_dir      # where prepared models live (stages that load a tokenizer)

    def client(self, role: str) -> "RayEngineClient":
        if role not in self.role_actors:
            from schemas.errors import ConfigError
            raise ConfigError(f"no engine for role '{role}' (roles: {', '.join(sorted(self.role_actors))})")
        return RayEngineClient(self.role_actors[role], self.namespace)

    def wait_ready(self, role: str) -> None:
        """Block until the engine(s) of this role run (the build starts them beside the stages' workers). A start
        that failed raises errata's error."""
        import ray
        handles = [ray.get_actor(n, namespace=self.namespace) for n in self.role_actors.get(role, [])]
        try:
            ray.get([h.start.remote() for h in handles])
        except Exception as e:
            raise _unwrap(e) from None


class RayEngineClient:
    """A stage's handle on a Ray engine actor (round-robin over replicas). A call whose actor died (the engine
    process was killed, ran out of memory) is resubmitted once Ray has restarted the actor."""

    resubmits = 3
    wait_s = 600.0

    def __init__(self, names: list[str], namespace: str):
        self.names, self.namespace = list(names), namespace
        self._handles: dict[str, Any] = {}
        self._next = 0

    def __getstate__(self):
        return {"names": self.names, "namespace": self.namespace, "_handles": {}, "_next": 0}

    def _handle(self):
        import ray
        name = self.names[self._next % len(self.names)]
        self._next += 1
        if name not in self._handles:
            self._handles[name] = ray.get_actor(name, namespace=self.namespace)
        return self._handles[name]

    def _gone(self, e: BaseException) -> BaseException:
        """An engine actor that died for good is an outage (the shard fails, no error rows); other errors as they
        are."""
        import ray.exceptions as rex
        if isinstance(e, (rex.RayActorError, rex.ActorUnavailableError)):
            gone = EngineUnavailable(f"engine actor died and did not come back ({type(e).__name__}: "
                                     f"{str(e).strip().splitlines()[0][:300] if str(e).strip() else ''})")
            gone.__cause__ = e
            return gone
        return e

    def _final(self, e: BaseException) -> BaseException:
        """What a call that will not be resubmitted raises: errata's own error out of Ray's wrapper
        (EngineUnavailable, ...), an outage for an engine actor that died for good, else the error as it came."""
        inner = _errata(e)
        return inner if inner is not e else self._gone(e)

    def _died(self, e: BaseException, tries: int) -> bool:
        import ray.exceptions as rex
        if not isinstance(e, (rex.RayActorError, rex.ActorUnavailableError)) or tries >= self.resubmits:
            return False
        if isinstance(e, rex.ActorDiedError) and "restart" not in str(e).lower() and tries > 0:
            return False
        log.warning("engine actor unavailable (%s); resubmitting once it is back (%d/%d)",
                    type(e).__name__, tries + 1, self.resubmits)
        return True

    def generate(self, requests: list[GenerationRequest], tag: str = "",
                 shard: Optional[int] = None) -> list[GenerationResult]:
        import ray
        tries = 0
        while True:
            h = self._handle()
            try:
                return ray.get(h.generate.remote(requests, tag, shard), timeout=None)
            except Exception as e:
                if not self._died(e, tries):
                    final = self._final(e)
                    if final is e:
                        raise
                    raise final
                tries += 1
                self._wait_alive(h)

    async def agenerate(self, requests: list[GenerationRequest], tag: str = "",
                        shard: Optional[int] = None) -> list[GenerationResult]:
        tries = 0
        while True:
            h = self._handle()
            try:
                return await h.generate.remote(requests, tag, shard)
            except Exception as e:
                if not self._died(e, tries):
                    final = self._final(e)
                    if final is e:
                        raise
                    raise final
                tries += 1
                await asyncio.to_thread(self._wait_alive, h)

    def _wait_alive(self, h) -> None:
        import ray
        deadline = time.time() + self.wait_s
        while time.time() < deadline:
            try:
                ray.get(h.pid.remote(), timeout=30)
                return
            except Exception:
                time.sleep(1.0)
        raise EngineUnavailable(f"engine actor did not come back within {self.wait_s:.0f} s")


class RayEngines:
    """The build's engines as Ray actors. `start(roles)` creates and starts what is missing; `stop(keys)`."""

    def __init__(self, roles: dict[str, EngineConfig], models_dir: str, run_id: str,
                 sharing: Optional[dict[str, int]] = None):
        self.role_keys, self.configs = group_roles(roles)
        self.counts = budget_counts(self.configs, sharing)  # sharing: engine key -> engines up with it
        self.models_dir, self.run_id = models_dir, run_id
        self.actors: dict[str, list[Any]] = {}
        self.names: dict[str, list[str]] = {}
        self.described: dict[str, dict] = {}
        self.stopped: dict[str, dict] = {}
        self._starting: dict[str, list[Any]] = {}    # engine key -> start() calls not yet waited for

    def keys_for(self, roles: list[str]) -> list[str]:
        return sorted({self.role_keys[r] for r in roles})

    def running(self) -> list[str]:
        return sorted(self.actors)

    def begin(self, roles: list[str]) -> None:
        """Create the engine actors these roles need and ask them to start, without waiting: the engines load
        while the caller gets the stages' workers ready. `start(roles)` waits for them."""
        import ray
        from stages.engines.host import EngineHost
        for k in self.keys_for(roles):
            if k in self.actors:
                continue
            cfg = self.configs[k]
            cls = ray.remote(EngineHost)
            names = [f"errata-engine-{self.run_id}-{k}-{i}" for i in range(cfg.num_actors)]
            self.actors[k] = [cls.options(name=n, namespace=NAMESPACE, num_cpus=cfg.num_cpus_per_actor,
                                          num_gpus=cfg.num_gpus_per_actor, max_restarts=ACTOR_RESTARTS,
                                          max_concurrency=10000).remote(
                                              cfg, self.models_dir, k, self.counts[k])
                              for n in names]
            self.names[k] = names
            self._starting[k] = [a.start.remote() for a in self.actors[k]]

    def start(self, roles: list[str]) -> dict[str, dict]:
        """Start what these roles need (unless started) and wait until their engines run; returns describe()
        per engine key. A start failure kills that engine's actors and raises errata's error."""
        import ray
        self.begin(roles)
        for k in self.keys_for(roles):
            refs = self._starting.pop(k, None)
            if refs is None:
                continue
            try:
                descs = ray.get(refs)
            except Exception as e:
                self._kill(k)
                raise _unwrap(e) from None
            self.described[k] = dict(descs[0], replicas=len(descs), start_seconds=[
                s for d in descs for s in d.get("start_seconds", [])], starts=sum(d.get("starts", 0) for d in descs))
        return {k: self.described[k] for k in self.keys_for(roles)}

    def refs(self) -> EngineRefs:
        return EngineRefs({r: self.names[k] for r, k in self.role_keys.items() if k in self.names},
                          models_dir=self.models_dir)

    def progress(self) -> dict[str, dict]:
        import ray
        out: dict[str, dict] = {}
        for k, actors in list(self.actors.items()):
            for a in actors:
                try:
                    p = ray.get(a.progress.remote(), timeout=5)
                except Exception:
                    continue
                for tag, v in p.items():
                    out.setdefault(tag, {})[f"{k}:{id(a)}"] = v
        return out

    def describe(self) -> dict[str, dict]:
        import ray
        for k, actors in list(self.actors.items()):
            try:
                descs = ray.get([a.describe.remote() for a in actors], timeout=30)
                self.described[k] = dict(descs[0], replicas=len(actors),
                                         starts=sum(d.get("starts", 0) for d in descs),
                                         restarts=sum(d.get("restarts", 0) for d in descs),
                                         start_seconds=[s for d in descs for s in d.get("start_seconds", [])])
            except Exception:
                pass
        out = {**self.stopped, **self.described}
        return {k: dict(d, roles=sorted(r for r, kk in self.role_keys.items() if kk == k)) for k, d in out.items()}

    def stop(self, keys: Optional[list[str]] = None) -> None:
        import ray
        self.describe()
        for k in list(self.actors) if keys is None else keys:
            if k not in self.actors:
                continue
            try:
                ray.get([a.close.remote() for a in self.actors[k]], timeout=120)
            except Exception as e:
                log.warning("closing engine %s failed: %s", k, e)
            self._kill(k)
            if k in self.described:
                self.stopped[k] = self.described.pop(k)

    def _kill(self, k: str) -> None:
        import ray
        self._starting.pop(k, None)
        for a in self.actors.pop(k, []):
            try:
                ray.kill(a, no_restart=True)
            except Exception:
                pass
        self.names.pop(k, None)


def _errata(e: BaseException) -> BaseException:
    """The engine's own ErrataError (EngineUnavailable: the stage sees what it sees in process) out of Ray's
    wrapper; any other error as it came."""
    from schemas.errors import ErrataError
    inner = _unwrap(e)
    if isinstance(inner, ErrataError) and inner is not e:
        inner.__cause__, inner.__suppress_context__ = None, True
        return inner
    return e


def _unwrap(e: BaseException) -> BaseException:
    """Ray wraps an actor's exception; give back errata's own error when there is one."""
    from schemas.errors import ErrataError, error_chain
    for x in error_chain(e):
        if isinstance(x, ErrataError):
            inner = getattr(x, "cause", None)   # Ray's RayTaskError(ConfigError) prints as its traceback header
            return inner if isinstance(inner, ErrataError) else x
    cause = getattr(e, "cause", None)
    return cause if isinstance(cause, BaseException) else e
