"""Planning a build: the recipe's stages, checked before anything runs, and the plan every later step works from.

`plan_build` validates everything first (recipe chain, input files, local engine models), then opens (or resumes)
the staging area and writes each shard's inputs once. `build_lock` keeps a second process off the same staging
area.
"""
from __future__ import annotations

import contextlib
import fcntl
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from pipelines.catalog import Catalog
from pipelines.chain import check_chain
from pipelines.clean import clean_stages
from pipelines.config import RecipeConfig, data_root
from pipelines.files import Root
from pipelines.inputs import input_tables, load_inputs, shard_inputs
from pipelines.runner import choose_runner
from pipelines.staging import Staging
from schemas.errors import StorageError
from schemas.registry import Method, StageSpec, get_method
from stages.base import Stage, StageContext

Log = Callable[[str], None]


def recipe_stages(method: Method, config: RecipeConfig) -> list[StageSpec]:
    """The stages a recipe runs: the method's, with the cleaning stages of its `clean:` section around them."""
    before, after = clean_stages(config.clean, method.stage_names())
    return [*before, *method.stages, *after]


def make_stages(method: Method, config: RecipeConfig, run_id: str = "") -> list[Stage]:
    """Stage objects for this recipe (cheap: no engine or worker starts)."""
    ctx = StageContext(run_id=run_id, method=config.method, engines=dict(config.engines))
    return [s.stage(config.stage_config(s.name), name=s.name, context=ctx) for s in recipe_stages(method, config)]


def check_recipe(config: RecipeConfig) -> list[Stage]:
    """The recipe's stages, after checking the chain (tables, columns, roles). No engine starts."""
    stages = make_stages(get_method(config.method), config)
    check_chain(stages, input_tables(config.tasks), list(config.engines))
    return stages


def stage_names(config: RecipeConfig) -> list[str]:
    return [s.name for s in recipe_stages(get_method(config.method), config)]


def streaming_segments(stages: list[Stage]) -> list[list[Stage]]:
    """How a streaming build groups the stages: consecutive per-shard stages form one run; a global stage is a
    segment of its own."""
    out: list[list[Stage]] = []
    for st in stages:
        if st.is_global or not out or out[-1][0].is_global:
            out.append([st])
        else:
            out[-1].append(st)
    return out


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
