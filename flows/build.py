"""A build as a Prefect flow: one flow run per build; tasks plan -> one task per stage -> publish.

Prefect orchestrates, Ray (or the in-process runner) computes. The flow runs the same build as `errata build
--no-prefect` (`pipelines.build.build`), stage by stage, with Prefect tasks as its steps (`PREFECT_STEPS`); it adds
only what Prefect needs: the tasks, the run's tags and summary artifact, and (in `build_flow_run`) starting the first
engine while Prefect's temporary server comes up. The build opens one BuildSession for the whole run: Ray is started
once and the engines (one per distinct model) are started when the first stage that needs them runs and stopped
after the last one, so three LLM stages on one model start one engine. Each stage task runs its stage over every
shard it has not finished; every (shard, stage) output is a Parquet checkpoint in staging, which the next stage
reads. `publish` makes the new version.

- Retries: a stage task is retried (twice by default) only on transient failures: TransientEngineError (engine
  start, HTTP 429/5xx, timeouts, disconnects) and connection errors, also when Ray wraps them. A retry re-reads the
  checkpoints: shards the failed attempt finished are skipped, so a retry never repeats finished work or duplicates
  rows; a failure in a later stage never reruns an earlier one.
- Caching: each stage task is cached on (stage, recipe `config_hash()`, staging run id, shard count). A rerun of a
  build that failed after a stage finished reuses that stage's result without starting anything for it. The run id
  is part of the key because staging is deleted when a version is published: an identical build after a publish is
  a new run and really rebuilds. Below the task level, the checkpoints make a rerun reuse every finished
  (stage, shard) anyway.
- Results: the flow run gets tags `dataset:<name>`, `recipe:<name>`, `version:<name>@<N>` and a markdown artifact
  (key `build-<dataset>`) with the version, row counts, per-stage counts and timings.
- A failed build leaves a failed flow run whose message is the reason, and publishes nothing.
- A killed build (kill -9, a lost machine) cannot report its end: the flow run records its process (host, pid,
  start time) as labels when it starts, and the next build, `errata runs` or `errata serve` on that host marks a
  Running run whose process is gone Crashed (flows/lost_runs.py).
"""
from __future__ import annotations

from flows._env import prefect_env

prefect_env()

import datetime as dt  # noqa: E402
import logging  # noqa: E402
import time  # noqa: E402
from typing import Any, Optional  # noqa: E402

from prefect import flow, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.context import TaskRunContext  # noqa: E402

from flows._env import shorten_errata_tracebacks  # noqa: E402
from flows.lost_runs import mark_lost_runs_quietly, record_this_process  # noqa: E402
from flows.tags import add_tags  # noqa: E402

from pipelines.build import BuildResult, BuildSteps, build  # noqa: E402
from pipelines.config import RecipeConfig, load_recipe, validate_recipe  # noqa: E402
from pipelines.execute import run_stage  # noqa: E402
from pipelines.plan import BuildPlan, Log, plan_build  # noqa: E402
from pipelines.publish import publish_plan  # noqa: E402
from pipelines.session import BuildSession, early_start  # noqa: E402
from schemas.errors import ConfigError, EngineUnavailable, TransientEngineError, error_chain  # noqa: E402
from schemas.manifest import Manifest  # noqa: E402

BUILD_FLOW_NAME = "errata-build"
STAGE_RETRIES = 2
RETRY_DELAY_SECONDS = 5.0

shorten_errata_tracebacks()


# --- retry condition ------------------------------------------------------------------------------------------
def is_transient(exc: BaseException) -> bool:
    """Worth a task retry. An outage (EngineUnavailable) is not: the engine already waited outage_timeout_s."""
    if any(isinstance(e, EngineUnavailable) for e in error_chain(exc)):
        return False
    transient: tuple[type, ...] = (TransientEngineError, ConnectionError, TimeoutError)
    try:
        import httpx
        transient += (httpx.TransportError,)
    except ImportError:
        pass
    return any(isinstance(e, transient) for e in error_chain(exc))


def retry_if_transient(task, task_run, state) -> bool:
    exc = state.data
    return isinstance(exc, BaseException) and is_transient(exc)


# --- tasks ----------------------------------------------------------------------------------------------------
_SESSIONS: dict[str, BuildSession] = {}   # run id -> the open session of a flow run in this process


def _stage_cache_key(ctx: TaskRunContext, params: dict[str, Any]) -> Optional[str]:
    plan: BuildPlan = params["plan"]
    return f"errata-{params['stage']}-{plan.config.config_hash()}-{plan.run_id}-{len(plan.shard_ids)}"


@task(name="plan", cache_policy=NO_CACHE, persist_result=False)
def plan_task(config: RecipeConfig) -> BuildPlan:
    """Check the recipe and its inputs, open (or resume) the staging area, write each shard's inputs."""
    return plan_build(config, log=_log)


@task(name="stage", retries=STAGE_RETRIES, retry_delay_seconds=RETRY_DELAY_SECONDS,
      retry_condition_fn=retry_if_transient, cache_key_fn=_stage_cache_key,
      cache_expiration=dt.timedelta(days=7))
def stage_task(plan: BuildPlan, stage: str) -> dict:
    """Run one stage over every shard it has not finished (the flow names each run after its stage)."""
    return run_stage(_SESSIONS[plan.run_id], stage, log=_log)


@task(name="publish", cache_policy=NO_CACHE, persist_result=False)
def publish_task(plan: BuildPlan, engines: dict, error_budget: dict) -> Manifest:
    """Publish the finished shards as a new immutable version."""
    return publish_plan(plan, engines, error_budget)


def _plan_step(config: RecipeConfig, log: Log) -> BuildPlan:
    return plan_task(config)


def _stage_step(session: BuildSession, stage: str, log: Log) -> dict:
    """One stage as its own task run, named after the stage. The task's parameters are (plan, stage), which its
    cache key reads; it finds the open session by the plan's run id."""
    _SESSIONS[session.plan.run_id] = session
    try:
        return stage_task.with_options(name=stage, retry_delay_seconds=RETRY_DELAY_SECONDS)(session.plan, stage)
    finally:
        _SESSIONS.pop(session.plan.run_id, None)


PREFECT_STEPS = BuildSteps(plan=_plan_step, run_stage=_stage_step, publish=publish_task)


# --- the flow -------------------------------------------------------------------------------------------------
def _log(msg: str) -> None:
    """To the flow run's log (server history) and to errata's console."""
    from prefect.logging import get_run_logger
    logging.getLogger("errata.build").info(msg)
    try:
        get_run_logger().info(msg)
    except Exception:
        pass


def _run_name() -> str:
    from prefect.runtime import flow_run
    p = flow_run.parameters or {}
    name = p.get("recipe") or (p.get("config") or {}).get("dataset") or "build"
    return f"build-{str(name).rsplit('/', 1)[-1].removesuffix('.yaml')}-{dt.datetime.now():%Y%m%d-%H%M%S}"


def resolve_config(recipe: Optional[str], overrides: Optional[list[str]], config: Optional[dict]) -> RecipeConfig:
    if config is not None:
        return validate_recipe(config, source="config")
    if not recipe:
        raise ConfigError("a build needs a recipe (name or YAML path) or a config")
    return load_recipe(recipe, list(overrides or []))


def summary_markdown(result: BuildResult, recipe: str) -> str:
    m = result.manifest
    lines = [f"# {m.dataset}@{m.version}", "",
             f"Recipe `{recipe}` (hash `{m.recipe_hash}`), run `{m.run_id}`, code `{m.code_version}`.", "",
             f"Published to `{result.path}` in {result.seconds:.1f} s"
             + (f" ({result.resumed_shards} shards resumed)." if result.resumed_shards else "."), "",
             "| table | rows |", "|---|---|"]
    lines += [f"| {t} | {e.rows} |" for t, e in m.tables.items()]
    if m.drops:
        lines += ["", "| table | dropped: reason | rows |", "|---|---|---|"]
        lines += [f"| {t} | {r} | {n} |" for t, d in m.drops.items() for r, n in d.items()]
    lines += ["", "| stage | in | out | other counts | seconds |", "|---|---|---|---|---|"]
    for name, c in m.stages.items():
        extra = ", ".join(f"{k}={v}" for k, v in c.items()
                          if k not in ("in", "out", "seconds", "wall_seconds", "t_start", "t_end", "error_reasons")
                          and not isinstance(v, dict))
        lines.append(f"| {name} | {c.get('in')} | {c.get('out')} | {extra} | "
                     f"{c.get('wall_seconds', c.get('seconds', 0)):.2f} |")
    if m.engines:
        lines += ["", "| engine | roles | model | dtype | why | starts |", "|---|---|---|---|---|---|"]
        lines += [f"| {k} | {', '.join(e.get('roles', []))} | {e.get('model')} | {e.get('dtype')} | "
                  f"{e.get('dtype_reason', '')} | {e.get('starts')} |" for k, e in m.engines.items()]
    if m.tokens:
        lines += ["", "Tokens: " + ", ".join(f"{k}={v}" for k, v in m.tokens.items())]
    lines += ["", "Timings: " + ", ".join(f"{k}={v}" for k, v in m.timings.items())]
    return "\n".join(lines)


@flow(name=BUILD_FLOW_NAME, flow_run_name=_run_name, log_prints=False, persist_result=False,
      description="errata build: recipe -> the method's stages -> a new published dataset version")
def build_flow(recipe: Optional[str] = None, overrides: Optional[list[str]] = None,
               config: Optional[dict] = None, progress: bool = True) -> BuildResult:
    """One dataset build. Give a recipe name/path (+ `key=value` overrides), or a full recipe config."""
    started = time.time()
    record_this_process(log=_log)
    mark_lost_runs_quietly(log=_log)
    cfg = resolve_config(recipe, overrides, config)
    label = recipe or cfg.dataset
    add_tags([f"dataset:{cfg.dataset}", f"recipe:{label}", f"recipe_hash:{cfg.config_hash()}"])
    result = build(cfg, progress, log=_log, steps=PREFECT_STEPS, started=started)
    manifest = result.manifest
    add_tags([f"version:{manifest.ref}"])
    create_markdown_artifact(key=f"build-{cfg.dataset.replace('_', '-')}",
                             markdown=summary_markdown(result, label),
                             description=f"errata build {manifest.ref}")
    return result


def build_flow_run(config: RecipeConfig, progress: bool = True, recipe: Optional[str] = None) -> BuildResult:
    """Run one build as a Prefect flow run (the `errata build` path). Raises the build's own error on failure.
    Ray and the first LLM stage's engine start while Prefect's temporary server starts (early_start)."""
    from flows.temporary_server import start_temporary_server
    with early_start(config):
        start_temporary_server()
        return build_flow(recipe=recipe, config=config.model_dump(mode="json"), progress=progress)
