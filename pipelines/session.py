"""The build session: what lives for the whole build (the runner, Ray when the runner is ray, and the engines, one
per distinct engine setting, started once and shared by every stage of every shard), and its early start.

The session starts a step's engines before the step and stops those no later stage uses after it (`engine_sharing`
sizes each vLLM engine's memory for the engines that share its device meanwhile). `early_start` lets the Prefect
path begin Ray and the first LLM stage's engine while Prefect's temporary server comes up; the session that this
process then opens for the same recipe takes them over.
"""
from __future__ import annotations

import contextlib
import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterator, Optional

from pipelines.config import RecipeConfig, data_root
from pipelines.files import Root
from pipelines.plan import BuildPlan, check_recipe, streaming_segments
from pipelines.runner import LocalRunner, RayRunner, choose_runner, start_ray
from pipelines.staging import Staging
from stages.base import Stage
from stages.engines.config import engines_sharing

log = logging.getLogger("errata.build")


class BuildSession:
    """What lives for the whole build: the runner, Ray (started here unless already up), and the engines."""

    def __init__(self, plan: BuildPlan, progress: bool = True, stage_by_stage: bool = False):
        self.plan = plan
        self.progress = progress
        self.stage_by_stage = stage_by_stage    # run_stage per stage (Prefect) rather than execute (streaming)
        self.ray_started = False
        self.engines: Any = None
        self.monitor: Any = None
        self._announced: set[str] = set()
        self._starter: Optional[ThreadPoolExecutor] = None    # waits for engines started beside a run
        ex = plan.config.execution
        self.local = plan.runner == "local"
        self.runner = (LocalRunner(ex.shards_in_flight) if self.local
                       else RayRunner(ex.shards_in_flight, ex.cpu_stage_concurrency, ex.fused()))

    def __enter__(self) -> "BuildSession":
        cfg = self.plan.config
        models_dir = self.plan.root.models_dir
        early = _EARLY.get(cfg.config_hash())
        if early is not None and early.runner == self.plan.runner:
            # Ray (on the Ray runner) and the first engines were started before the session (early_start)
            del _EARLY[cfg.config_hash()]
            self.ray_started, self.engines = early.ray_started, early.engines
        else:
            self.ray_started, self.engines = _make_engines(
                self.plan.runner, cfg, models_dir, self.plan.run_id,
                engine_sharing(self.plan.make_stages(), cfg, self.stage_by_stage))
        if self.progress:
            from pipelines.progress import ProgressMonitor
            self.monitor = ProgressMonitor(self.engines, self.plan).start()
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self._starter is not None:
                self._starter.shutdown(wait=True)
            if self.monitor is not None:
                self.monitor.stop()
            if self.engines is not None:
                self.engines.stop()
        finally:
            if self.ray_started:
                import ray
                ray.shutdown()

    def ensure_engines(self, stages: list[Stage]) -> None:
        """Start the engines these stages use (unless running) and wait for them."""
        roles = sorted({r for s in stages for r in s.roles})
        if roles:
            self._announce(self.engines.start(roles))

    def engines_starting(self, stages: list[Stage]) -> Optional[Future]:
        """Begin starting the engines these stages use and return at once: a Future that waits for them in a
        thread (and logs each start); its result() raises what the start raised. On Ray the stages' workers get
        ready while the engines load: a worker that starts beside a running engine competes with it for the CPU
        and can take long enough to leave the engine's batch half empty. In process: ensure_engines, None."""
        roles = sorted({r for s in stages for r in s.roles})
        if self.local or not roles:
            self.ensure_engines(stages)
            return None
        self.engines.begin(roles)
        if self._starter is None:
            self._starter = ThreadPoolExecutor(1, thread_name_prefix="errata-engine-start")
        return self._starter.submit(lambda: self._announce(self.engines.start(roles)))

    def _announce(self, described: dict[str, dict]) -> None:
        for key, d in described.items():
            if key in self._announced:
                continue
            self._announced.add(key)
            dtype = f", {d['dtype']} ({d.get('dtype_reason', 'dtype set')})" if d.get("dtype") else ""
            log.info("engine %s: %s %s%s, started in %s s", key, d.get("kind"), d.get("model"), dtype,
                     (d.get("start_seconds") or ["?"])[-1])
            if d.get("dtype_warning"):
                log.warning(d["dtype_warning"])

    def release_engines(self, still_needed: list[Stage]) -> None:
        """Stop engines no stage still to run uses (frees their memory)."""
        keep = {self.engines.role_keys[r] for s in still_needed for r in s.roles}
        drop = sorted(set(self.engines.running()) - keep)
        if drop:
            self.engines.stop(drop)

    def provider(self) -> Any:
        return self.engines if self.local else self.engines.refs()

    def describe_engines(self) -> dict[str, dict]:
        return self.engines.describe() if self.engines is not None else {}


def engine_sharing(stages: list[Stage], cfg: RecipeConfig, stage_by_stage: bool) -> dict[str, int]:
    """engine key -> how many vLLM engines share its device while it runs, for its default memory budget. The
    build starts a step's engines before the step and stops those no later stage uses after it; a step is one
    stage (stage by stage) or a segment of stages that stream together."""
    steps = [[s] for s in stages] if stage_by_stage else streaming_segments(stages)
    return engines_sharing([[r for s in step for r in s.roles] for step in steps], dict(cfg.engines))


def _ray_cpus(cfg: RecipeConfig) -> int:
    """CPUs Ray is started with: the machine's, or enough for the engines' actors."""
    need = sum(e.num_cpus_per_actor * e.num_actors for e in {e.key(): e for e in cfg.engines.values()}.values())
    return cfg.execution.num_cpus or max(os.cpu_count() or 1, int(need + 1.5))


def _make_engines(runner: str, cfg: RecipeConfig, models_dir: str, run_id: str,
                  sharing: dict[str, int]) -> tuple[bool, Any]:
    """The build's engines on `runner`: in this process, or as Ray actors (Ray started first). Returns
    (whether this call started Ray, the engines)."""
    if runner == "local":
        from stages.engines.host import LocalEngines
        return False, LocalEngines(dict(cfg.engines), models_dir, sharing)
    from pipelines.engines import RayEngines
    ray_started = start_ray(cfg.execution.ray_address, _ray_cpus(cfg))
    return ray_started, RayEngines(dict(cfg.engines), models_dir, run_id, sharing)


# --- starting Ray and the first engine early --------------------------------------------------------------------
@dataclass
class _EarlyStart:
    runner: str                 # "ray": Ray and RayEngines; "local": LocalEngines in this process
    ray_started: bool
    engines: Any


_EARLY: dict[str, _EarlyStart] = {}   # recipe hash -> what early_start began and no BuildSession has taken yet


@contextlib.contextmanager
def early_start(config: RecipeConfig) -> Iterator[None]:
    """Begin starting the engine(s) of the recipe's first LLM stage now (and Ray first, on the Ray runner), for
    the BuildSession that this process opens for the same recipe inside the block to take over. The Prefect path
    uses it: Prefect's temporary server takes ~18 s (2-core box) to come up before the flow's first task; the
    engine starts meanwhile instead of after it. Does nothing for a resumed build (its first LLM stage may be
    done) or when the recipe does not check out (the build itself reports that, as a failed flow run). What no
    session took over is stopped when the block ends."""
    started: Optional[_EarlyStart] = None
    key = config.config_hash()
    try:
        if key not in _EARLY:
            stages = check_recipe(config)
            first = next((s for s in stages if s.role), None)
            root = Root(data_root(config))
            if first is not None and not Staging(root, config.dataset, f"b-{key}").exists():
                import uuid
                runner, _ = choose_runner(config.execution.runner, config.execution.ray_address)
                started = _EarlyStart(runner, *_make_engines(runner, config, root.models_dir,
                                                             f"early-{uuid.uuid4().hex[:12]}",
                                                             engine_sharing(stages, config, stage_by_stage=True)))
                _EARLY[key] = started
                started.engines.begin(list(first.roles))
    except Exception as e:      # the build checks the same things and reports them in its own way
        log.debug("early start skipped: %s", e)
    try:
        yield
    finally:
        if started is not None and _EARLY.get(key) is started:     # no session took it over
            del _EARLY[key]
            try:
                started.engines.stop()
            finally:
                if started.ray_started:
                    import ray
                    ray.shutdown()
