"""A build: recipe -> inputs -> shards through the method's stages -> staging -> a new published version.

1. plan (pipelines/plan.py): check the recipe and inputs, open or resume staging, write each shard's inputs;
2. execute (pipelines/execute.py), inside one lock and one session (pipelines/session.py: Ray and the engines for
   the build's life);
3. publish (pipelines/publish.py): the finished shards become a new immutable version with its manifest.

A failure publishes nothing; finished work stays in staging for the rerun.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from pipelines.config import RecipeConfig
from pipelines.execute import execute
from pipelines.plan import BuildPlan, Log, build_lock, plan_build
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


def run_build(plan: BuildPlan, progress: bool = True, log: Log = print) -> BuildResult:
    with build_lock(plan):
        with BuildSession(plan, progress) as session:
            execute(session, log)
            engines = session.describe_engines()
        m = publish_plan(plan, engines)
    return BuildResult(m, plan.catalog.version_dir(m.dataset, m.version), plan.resumed_shards,
                       round(time.time() - plan.started, 3), plan.root.root_url)


def build(config: RecipeConfig, progress: bool = True, log: Log = print) -> BuildResult:
    """Plan, execute and publish. A failure publishes nothing; finished work stays for the rerun."""
    return run_build(plan_build(config, log=log), progress=progress, log=log)
