"""A build as a Prefect flow: one flow run per build; tasks plan -> one task per stage -> write_shards -> publish.

Prefect orchestrates, Ray (or the in-process runner) computes. Each stage task (`generate`, `verify`, `filter`)
is one Ray Data run of that stage over every pending shard; it checkpoints each shard's rows in staging
(`after-<stage>.pkl`), and the next stage reads them. `write_shards` writes the tables of every shard from its
last checkpoint (then the shard's `_SUCCESS`), `publish` makes the new version. Each stage task starts and
stops its own local Ray (or connects to the cluster), so the engine and its memory are gone when generate ends.

- Retries: a stage task is retried (twice by default) only on transient failures: TransientEngineError (engine
  start, HTTP 429/5xx, timeouts) and connection errors, also when Ray wraps them. A retry re-reads the
  checkpoints: shards the failed attempt finished are skipped, the others run again from the previous stage's
  checkpoint, so a retry never repeats finished work or duplicates rows; a failure in `verify` never reruns
  `generate`.
- Caching: each stage task is cached on (stage, recipe `config_hash()`, staging run id, shard ids). A rerun of a
  build that failed after a stage finished (e.g. in publish) reuses that stage's result without starting Ray or
  the engine. The run id is part of the key because staging is deleted when a version is published: an identical
  build after a publish is a new run and really rebuilds. Below the task level, the checkpoints and shard
  markers make a rerun reuse every finished (stage, shard) anyway.
- Results: the flow run gets tags `dataset:<name>`, `recipe:<name>`, `version:<name>@<N>` and a markdown
  artifact (key `build-<dataset>`) with the version, row counts, per-stage counts and timings.
- A failed build leaves a failed flow run whose message is the reason, and publishes nothing.
"""
from __future__ import annotations

from flows._env import prefect_env

prefect_env()

import datetime as dt  # noqa: E402
import time  # noqa: E402
from typing import Any, Optional  # noqa: E402

from prefect import flow, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.context import TaskRunContext  # noqa: E402

from flows._env import shorten_errata_tracebacks  # noqa: E402

from pipelines import build as pb  # noqa: E402
from pipelines.config import RecipeConfig, load_recipe, validate_recipe  # noqa: E402
from pipelines.storage import ShardResult  # noqa: E402
from schemas.errors import ConfigError, TransientEngineError, error_chain  # noqa: E402
from schemas.manifest import Manifest  # noqa: E402

BUILD_FLOW_NAME = "errata-build"
STAGE_RETRIES = 2
RETRY_DELAY_SECONDS = 5.0

shorten_errata_tracebacks()


# --- retry condition ------------------------------------------------------------------------------------------
def is_transient(exc: BaseException) -> bool:
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
def _stage_cache_key(ctx: TaskRunContext, params: dict[str, Any]) -> Optional[str]:
    plan: pb.BuildPlan = params["plan"]
    shard_ids = ",".join(str(sid) for sid, _ in plan.shards)
    return f"errata-{params['stage']}-{plan.config.config_hash()}-{plan.run_id}-{shard_ids}"


@task(name="plan", cache_policy=NO_CACHE, persist_result=False)
def plan_task(config: RecipeConfig) -> pb.BuildPlan:
    """Validate the task input and open (or resume) the staging area."""
    return pb.plan_build(config, log=_log)


@task(name="stage", retries=STAGE_RETRIES, retry_delay_seconds=RETRY_DELAY_SECONDS,
      retry_condition_fn=retry_if_transient, cache_key_fn=_stage_cache_key,
      cache_expiration=dt.timedelta(days=7))
def stage_task(plan: pb.BuildPlan, stage: str, progress: bool = False) -> dict:
    """Run one stage over every pending shard it has not finished (the flow names each run after its stage)."""
    return pb.run_stage(plan, stage, progress=progress, log=_log)


@task(name="write_shards", cache_policy=NO_CACHE, persist_result=False)
def write_task(plan: pb.BuildPlan) -> list[ShardResult]:
    """Write each shard's tables from its last checkpoint."""
    return pb.write_shards(plan)


@task(name="publish", cache_policy=NO_CACHE, persist_result=False)
def publish_task(plan: pb.BuildPlan, results: list[ShardResult]) -> Manifest:
    """Publish the finished shards as a new immutable version."""
    return pb.publish(plan, results)


# --- the flow -------------------------------------------------------------------------------------------------
def _log(msg: str) -> None:
    from prefect.logging import get_run_logger
    try:
        get_run_logger().info(msg)
    except Exception:
        print(msg)


def _run_name() -> str:
    from prefect.runtime import flow_run
    p = flow_run.parameters or {}
    name = p.get("recipe") or (p.get("config") or {}).get("dataset") or "build"
    return f"build-{str(name).rsplit('/', 1)[-1].removesuffix('.yaml')}-{dt.datetime.now():%Y%m%d-%H%M%S}"


def _add_tags(tags: list[str]) -> None:
    """Add tags to the current flow run (they are how `errata runs` finds recipe and version)."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run
    run_id = flow_run.id
    if not run_id:
        return
    with get_client(sync_client=True) as client:
        fr = client.read_flow_run(run_id)
        client.update_flow_run(run_id, tags=sorted(set(fr.tags or []) | set(tags)))


def resolve_config(recipe: Optional[str], overrides: Optional[list[str]], config: Optional[dict]) -> RecipeConfig:
    if config is not None:
        return validate_recipe(config, source="config")
    if not recipe:
        raise ConfigError("a build needs a recipe (name or YAML path) or a config")
    return load_recipe(recipe, list(overrides or []))


def summary_markdown(result: pb.BuildResult, recipe: str) -> str:
    m = result.manifest
    lines = [f"# {m.dataset}@{m.version}", "",
             f"Recipe `{recipe}` (hash `{m.recipe_hash}`), run `{m.run_id}`, code `{m.code_version}`.", "",
             f"Published to `{result.path}` in {result.seconds:.1f} s"
             + (f" ({result.resumed_shards} shards resumed)." if result.resumed_shards else "."), "",
             "| table | rows |", "|---|---|"]
    lines += [f"| {t} | {e.rows} |" for t, e in m.tables.items()]
    lines += ["", "| stage | in | out | other counts | seconds |", "|---|---|---|---|---|"]
    for name, c in m.stages.items():
        extra = ", ".join(f"{k}={v}" for k, v in c.items()
                          if k not in ("in", "out", "seconds", "error_reasons") and not isinstance(v, dict))
        lines.append(f"| {name} | {c.get('in')} | {c.get('out')} | {extra} | {c.get('seconds', 0):.2f} |")
    if m.tokens:
        lines += ["", "Tokens: " + ", ".join(f"{k}={v}" for k, v in m.tokens.items())]
    lines += ["", "Timings: " + ", ".join(f"{k}={v}" for k, v in m.timings.items())]
    return "\n".join(lines)


@flow(name=BUILD_FLOW_NAME, flow_run_name=_run_name, log_prints=False, persist_result=False,
      description="errata build: recipe -> generate/verify/filter -> a new published dataset version")
def build_flow(recipe: Optional[str] = None, overrides: Optional[list[str]] = None,
               config: Optional[dict] = None, progress: bool = False) -> pb.BuildResult:
    """One dataset build. Give a recipe name/path (+ `key=value` overrides), or a full recipe config."""
    started = time.time()
    cfg = resolve_config(recipe, overrides, config)
    label = recipe or cfg.dataset
    _add_tags([f"dataset:{cfg.dataset}", f"recipe:{label}", f"recipe_hash:{cfg.config_hash()}"])
    plan = plan_task(cfg)
    with pb.build_lock(plan):
        for name in pb.stage_names(cfg):
            stage_task.with_options(name=name, retry_delay_seconds=RETRY_DELAY_SECONDS)(plan, name, progress)
        results = write_task(plan)
        manifest = publish_task(plan, results)
    result = pb.BuildResult(manifest, plan.store.version_dir(manifest.dataset, manifest.version),
                            plan.resumed_shards, round(time.time() - started, 3), plan.store.root_url)
    _add_tags([f"version:{manifest.ref}"])
    create_markdown_artifact(key=f"build-{cfg.dataset.replace('_', '-')}",
                             markdown=summary_markdown(result, label),
                             description=f"errata build {manifest.ref}")
    return result


def build_flow_run(config: RecipeConfig, progress: bool = True, recipe: Optional[str] = None) -> pb.BuildResult:
    """Run one build as a Prefect flow run (the `errata build` path). Raises the build's own error on failure."""
    return build_flow(recipe=recipe, config=config.model_dump(mode="json"), progress=progress)
