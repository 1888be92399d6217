"""A build: recipe -> inputs -> shards through the method's stages -> staging -> a new published version.

`build` is the one entry point: `errata build --no-prefect` calls it directly, and the Prefect flow
(flows/build.py) calls it with its own `BuildSteps` (Prefect tasks for plan, each stage, and publish). Either way
a build is the same three steps, each entered once:

1. plan (pipelines/plan.py): check the recipe and inputs, open or resume staging, write each shard's inputs;
2. execute (pipelines/execute.py), inside one lock and one session (pipelines/session.py: Ray and the engines for
   the build's life): streaming every pending shard through the stages, or stage by stage;
3. publish (pipelines/publish.py): the finished shards become a new immutable version with its manifest.

A failure publishes nothing; finished work stays in staging for the rerun.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from pipelines.config import RecipeConfig
from pipelines.error_budget import check_build, check_stage
from pipelines.execute import execute
from pipelines.plan import BuildPlan, Log, build_lock, plan_build, stage_names
from pipelines.publish import publish_plan
from pipelines.session import BuildSession
from schemas.manifest import Manifest


@dataclass
class BuildResult:
    manifest: Manifest
    path: str
    resumed_shards: int
    seconds: float
    root: str = "data"


@dataclass(frozen=True)
class BuildSteps:
    """How `build` calls its three steps. The defaults call them directly and stream every shard through the
    stages. With `run_stage` set the build runs stage by stage, one `run_stage(session, stage_name, log)` call per
    stage in order (the Prefect flow passes its tasks here, and for plan and publish)."""
    plan: Callable[[RecipeConfig, Log], BuildPlan] = plan_build
    run_stage: Optional[Callable[[BuildSession, str, Log], Any]] = None
    publish: Callable[[BuildPlan, dict, dict], Manifest] = publish_plan


DIRECT = BuildSteps()       # errata build --no-prefect


def build(config: RecipeConfig, progress: bool = True, log: Log = print, steps: BuildSteps = DIRECT,
          started: Optional[float] = None) -> BuildResult:
    """Plan, execute and publish. A failure publishes nothing; finished work stays for the rerun. `started`:
    when the caller's build began, for BuildResult.seconds (default: when the plan was made)."""
    return run_build(steps.plan(config, log), progress=progress, log=log, steps=steps, started=started)


def run_build(plan: BuildPlan, progress: bool = True, log: Log = print, steps: BuildSteps = DIRECT,
              started: Optional[float] = None) -> BuildResult:
    """Execute a plan (under its lock, in one session) and publish it."""
    with build_lock(plan):
        with BuildSession(plan, progress, stage_by_stage=steps.run_stage is not None) as session:
            if steps.run_stage is None:
                execute(session, log)
            else:
                for name in stage_names(plan.config):
                    steps.run_stage(session, name, log)
                    check_stage(plan, name, log)     # stop at the first stage over its error budget
            engines = session.describe_engines()
        budget = check_build(plan, log)
        m = steps.publish(plan, engines, budget)
    return BuildResult(m, plan.catalog.version_dir(m.dataset, m.version), plan.resumed_shards,
                       round(time.time() - (plan.started if started is None else started), 3), plan.root.root_url)
