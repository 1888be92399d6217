"""A build: recipe -> inputs -> shards through the method's stages -> staging -> a new published version.

`plan_build` validates everything before anything runs (recipe chain, input files, local engine models), then opens
(or resumes) the staging area and writes each shard's inputs once. A `BuildSession` holds what lives for the whole
build: Ray (when the runner is ray) and the engines, one per distinct engine setting, started once and shared by
every stage of every shard. The pending work then runs in one of two ways, same output:

- streaming (`execute`, used by `build` and `errata build --no-prefect`): per-shard stages run as one Ray Data run
  (all stages of a shard flow through, later stages overlap earlier ones); a global stage runs between runs;
- stage by stage (`run_stage` for each stage; the Prefect flow's tasks): each stage over every shard it has not
  finished, so a retried or rerun stage skips finished shards and a failure never reruns an earlier stage.

Either way each (shard, stage) output is a Parquet checkpoint in staging, so a crash loses at most in-flight work.
`publish` turns the finished shards into a new immutable version.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import subprocess
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from pipelines.catalog import Catalog
from pipelines.chain import check_chain
from pipelines.config import RecipeConfig, data_root
from pipelines.files import Root
from pipelines.inputs import input_tables, load_inputs, shard_inputs
from pipelines.publish import publish as publish_version
from pipelines.runner import LocalRunner, RayRunner, choose_runner, run_global_stage, start_ray
from pipelines.staging import Staging
from schemas.errors import StorageError
from schemas.manifest import Manifest
from schemas.registry import ERRORS, Method, get_method
from stages.base import Stage, StageContext, StageStats
from stages.engines.config import engines_sharing

Log = Callable[[str], None]
log = logging.getLogger("errata.build")


def code_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        v = version("errata")
    except PackageNotFoundError:
        v = "0+unknown"
    repo = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        if sha:
            return f"{v}+g{sha}{'.dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        pass
    return v


def make_stages(method: Method, config: RecipeConfig, run_id: str = "") -> list[Stage]:
    """Stage objects for this recipe (cheap: no engine or worker starts)."""
    ctx = StageContext(run_id=run_id, method=config.method, engines=dict(config.engines))
    return [s.stage(config.stage_config(s.name), name=s.name, context=ctx) for s in method.stages]


def check_recipe(config: RecipeConfig) -> list[Stage]:
    """The recipe's stages, after checking the chain (tables, columns, roles). No engine starts."""
    stages = make_stages(get_method(config.method), config)
    check_chain(stages, input_tables(config.tasks), list(config.engines))
    return stages


def stage_names(config: RecipeConfig) -> list[str]:
    return get_method(config.method).stage_names()


@dataclass
class BuildPlan:
    config: RecipeConfig
    root: Root
    staging: Staging
    run_id: str
    resumed: bool
    shard_ids: list[int]
    inputs: dict[str, Any] = field(default_factory=dict)
    parents: list[str] = field(default_factory=list)
    input_tables: list[str] = field(default_factory=list)
    resumed_shards: int = 0
    started: float = field(default_factory=time.time)
    runner: str = "local"           # what runs the stages, "ray" or "local" (choose_runner), and why
    runner_reason: str = ""

    @property
    def method(self) -> Method:
        return get_method(self.config.method)

    @property
    def catalog(self) -> Catalog:
        return Catalog(self.root)

    @property
    def build_key(self) -> str:
        return self.staging.build_key

    def make_stages(self) -> list[Stage]:
        return make_stages(self.method, self.config, self.run_id)

    def pending(self, stage: str) -> list[int]:
        return [s for s in self.shard_ids if not self.staging.done(s, stage)]


@dataclass
class BuildResult:
    manifest: Manifest
    path: str
    resumed_shards: int
    seconds: float
    root: str = "data"


def plan_build(config: RecipeConfig, log: Log = print) -> BuildPlan:
    """Validate the recipe and its inputs, open (or resume) the staging area, write each shard's inputs once.
    Raises ConfigError / InputError before anything is written."""
    from stages.engines.model_prep import check_model
    check_recipe(config)
    root = Root(data_root(config))
    inputs = load_inputs(config.tasks, config.limit, root, config.env)
    if not config.execution.ray_address:   # on a cluster the workers' filesystem is what counts: not checked
        for role, eng in config.engines.items():
            if eng.kind in ("vllm", "transformers"):
                check_model(eng.model, field=f"engines.{role}.model")
    staging = Staging(root, config.dataset, f"b-{config.config_hash()}")
    rec, resumed = staging.open(config.model_dump(mode="json"))
    run_id = rec["run_id"]
    import datetime as dt
    now = dt.datetime.now(dt.timezone.utc)
    for p in inputs.tables["problems"]:
        if not p.get("run_id"):     # rows of a source version keep their own lineage
            p.update(run_id=run_id, method=config.method, created_at=now, parent_ids=list(p.get("parent_ids") or []))
    shards = shard_inputs(inputs, config.execution.shard_size)
    for sid, tables in enumerate(shards):
        if not staging.inputs_done(sid):
            staging.write_inputs(sid, tables)
    plan = BuildPlan(config, root, staging, run_id, resumed, list(range(len(shards))), inputs.describe,
                     inputs.parents, inputs.names)
    plan.runner, plan.runner_reason = choose_runner(config.execution.runner, config.execution.ray_address)
    if resumed:
        names = stage_names(config)
        finished = [s for s in plan.shard_ids if names and staging.done(s, names[-1])]
        partly = [s for s in plan.shard_ids if s not in finished and staging.last_done(s, names) >= 0]
        plan.resumed_shards = len(finished) + len(partly)
        log(f"resuming {run_id}: {len(finished)}/{len(shards)} shards already finished"
            + (f", {len(partly)} through some stages" if partly else ""))
    return plan


@contextlib.contextmanager
def build_lock(plan: BuildPlan) -> Iterator[None]:
    """One process at a time per staging area (local roots; object stores rely on the version claim)."""
    path = plan.staging.lock_path()
    if path is None:
        yield
        return
    with open(path, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StorageError(f"another build of this recipe is running on {plan.staging.dir}") from None
        yield


# --- the session: Ray + engines for the build's life --------------------------------------------------------------
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
        roles = sorted({s.role for s in stages if s.role})
        if roles:
            self._announce(self.engines.start(roles))

    def engines_starting(self, stages: list[Stage]) -> Optional[Future]:
        """Begin starting the engines these stages use and return at once: a Future that waits for them in a
        thread (and logs each start); its result() raises what the start raised. On Ray the stages' workers get
        ready while the engines load: a worker that starts beside a running engine competes with it for the CPU
        and can take long enough to leave the engine's batch half empty. In process: ensure_engines, None."""
        roles = sorted({s.role for s in stages if s.role})
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
        keep = {self.engines.role_keys[s.role] for s in still_needed if s.role}
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
    steps = [[s] for s in stages] if stage_by_stage else _segments(stages)
    return engines_sharing([[s.role for s in step if s.role] for step in steps], dict(cfg.engines))


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
                started.engines.begin([first.role])
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


def _segments(stages: list[Stage]) -> list[list[Stage]]:
    """Consecutive per-shard stages form one run; a global stage is a segment of its own."""
    out: list[list[Stage]] = []
    for st in stages:
        if st.is_global or not out or out[-1][0].is_global:
            out.append([st])
        else:
            out[-1].append(st)
    return out


def _run_segment(session: BuildSession, segment: list[Stage], before: list[str], log: Log) -> None:
    plan = session.plan
    if segment[0].is_global:
        t0 = time.time()
        stats = run_global_stage(segment[0], plan.staging, plan.shard_ids, before)
        log(f"{segment[0].name}: global, in {stats.get('in', 0)}, out {stats.get('out', 0)}"
            + "".join(f", {k} {v}" for k, v in stats.items() if k.startswith("dropped_"))
            + f" ({time.time() - t0:.1f} s)")
        return
    pending = plan.pending(segment[-1].name)
    if not pending:
        return
    starting = session.engines_starting(segment)
    try:
        for r in session.runner.run(pending, len(plan.shard_ids), segment, before, plan.staging,
                                    session.provider(), progress=session.progress):
            if session.monitor is not None:
                session.monitor.shard_done(r)
        if session.monitor is not None:
            session.monitor.flush()
    finally:
        if starting is not None:
            # an engine that could not start is the reason (raised here), not the stage that waited on it
            starting.result()


def execute(session: BuildSession, log: Log = print) -> None:
    """Streaming: every pending shard through every stage (a Ray Data run per segment between global stages)."""
    stages = session.plan.make_stages()
    names = [s.name for s in stages]
    done = 0
    for seg in _segments(stages):
        _run_segment(session, seg, names[:done], log)
        done += len(seg)
        session.release_engines(stages[done:])


def run_stage(session: BuildSession, stage_name: str, log: Log = print) -> dict:
    """Stage by stage: one stage over every shard it has not finished, reading each shard's tables from the
    earlier stages' checkpoints. Returns {"stage", "shards_run", "shards_skipped", "stats"}."""
    plan = session.plan
    stages = plan.make_stages()
    names = [s.name for s in stages]
    k = names.index(stage_name)
    stage = stages[k]
    if k:
        prev = stages[k - 1]
        behind = ([] if plan.staging.global_done(prev.name) else list(plan.shard_ids)) if prev.is_global \
            else [s for s in plan.shard_ids if not plan.staging.done(s, prev.name)]
        if behind:
            raise StorageError(f"shards {behind[:10]} of {plan.config.dataset} have not been through stage "
                               f"'{prev.name}' (staging {plan.staging.dir})")
    todo = ([] if plan.staging.global_done(stage_name) else list(plan.shard_ids)) if stage.is_global \
        else plan.pending(stage_name)
    t0 = time.time()
    if todo:
        _run_segment(session, [stage], names[:k], log)
    session.release_engines(stages[k + 1:])
    stats = merged_stats(plan, [stage_name], todo).get(stage_name, {})
    if not stage.is_global:
        log(f"{stage_name}: {len(todo)} shard(s) run, {len(plan.shard_ids) - len(todo)} already done; rows in "
            f"{stats.get('in', 0)}, out {stats.get('out', 0)}, errors {stats.get('errors', 0)}"
            + (f", {stats['tokens_per_s']} tok/s" if stats.get("tokens_per_s") else "")
            + f", {time.time() - t0:.1f} s")
    elif not todo:      # a global stage that ran has said so ("<stage>: global, in .., out ..") in _run_segment
        log(f"{stage_name}: global, already done")
    return {"stage": stage_name, "shards_run": len(todo), "shards_skipped": len(plan.shard_ids) - len(todo),
            "stats": stats}


def merged_stats(plan: BuildPlan, names: list[str], shard_ids: Optional[list[int]] = None) -> dict[str, dict]:
    """Per-stage stats merged over shards (from each shard's checkpoint marker; a global stage's own counters
    from its global marker)."""
    out = {}
    for name in names:
        s = StageStats()
        if plan.staging.global_done(name):
            s.merge(StageStats.from_dict(plan.staging.global_marker(name).get("stats", {})))
        for sid in plan.shard_ids if shard_ids is None else shard_ids:
            if plan.staging.done(sid, name):
                s.merge(StageStats.from_dict(plan.staging.marker(sid, name)["stats"]))
        out[name] = s.as_dict()
    return out


def method_summary(method: str, stats: dict[str, dict]) -> dict[str, Any]:
    """The method's own figures from the merged stage stats (its `summary` hook); {} when it has none."""
    summary = get_method(method).summary
    return dict(summary(stats)) if summary is not None else {}


def publish(plan: BuildPlan, engines: Optional[dict] = None) -> Manifest:
    cfg = plan.config
    stages = plan.make_stages()
    names = [s.name for s in stages]
    stats = merged_stats(plan, names)
    tokens = {"prompt": sum(s.get("prompt_tokens", 0) for s in stats.values()),
              "completion": sum(s.get("completion_tokens", 0) for s in stats.values())}
    templates: dict[str, str] = {}
    for s in stages:
        templates.update(s.templates())
    tables = list(dict.fromkeys([*plan.input_tables, *[t for s in stages for t in s.writes]]))
    unfinished = [s.name for s in stages if (not plan.staging.global_done(s.name) if s.is_global
                                             else plan.pending(s.name))]
    if unfinished:
        raise StorageError(f"cannot publish {cfg.dataset}: stage(s) {unfinished} have not finished every shard")
    fields = dict(
        run_id=plan.run_id, parents=list(plan.parents), method=cfg.method, recipe=cfg.model_dump(mode="json"),
        recipe_hash=cfg.config_hash(), code_version=code_version(), models={s.name: s.describe() for s in stages},
        engines=engines or {}, prompt_templates=templates, stages=stats, tokens=tokens, inputs=plan.inputs,
        timings={"build_seconds": round(time.time() - plan.started, 3),
                 **{f"{k}_seconds": v.get("wall_seconds", v.get("seconds", 0.0)) for k, v in stats.items()}},
        shards={"total": len(plan.shard_ids), "resumed": plan.resumed_shards},
        execution={"runner": plan.runner, "reason": plan.runner_reason},
        summary=method_summary(cfg.method, stats))
    shard_steps = [s.name for s in stages if not s.is_global or s.table]
    return publish_version(plan.staging, plan.catalog, plan.shard_ids, shard_steps,
                           [t for t in tables if t != ERRORS], fields, names)


def run_build(plan: BuildPlan, progress: bool = True, log: Log = print) -> BuildResult:
    with build_lock(plan):
        with BuildSession(plan, progress) as session:
            execute(session, log)
            engines = session.describe_engines()
        m = publish(plan, engines)
    return BuildResult(m, plan.catalog.version_dir(m.dataset, m.version), plan.resumed_shards,
                       round(time.time() - plan.started, 3), plan.root.root_url)


def build(config: RecipeConfig, progress: bool = True, log: Log = print) -> BuildResult:
    """Plan, execute and publish. A failure publishes nothing; finished work stays for the rerun."""
    return run_build(plan_build(config, log=log), progress=progress, log=log)
