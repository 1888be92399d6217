"""A build: recipe -> problems -> shards through the stages -> staging -> a new published version.

`plan_build` validates everything (recipe, input files, a local engine model) before anything runs. Then the
pending shards (those not finished by an earlier, crashed run) are executed in one of two ways, same output:

- streaming (`execute_shards`, used by `run_build`/`build` and `errata build --no-prefect`): one Ray Data run in
  which every shard flows through all stages and is written; verify/filter overlap generation.
- stage by stage (`run_stage` for each stage, then `write_shards`; the Prefect flow's tasks): each stage runs over
  all pending shards and checkpoints each shard's rows (`after-<stage>.pkl`), so a retried or rerun stage skips
  the shards it already finished and a failure in a later stage never reruns an earlier one.

`publish` turns the finished shards into a new immutable version.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from pipelines.config import RecipeConfig, data_root
from pipelines.runner import (CheckpointReader, CheckpointWriter, LocalRunner, RayRunner, ShardWriter, merge_stats,
                              new_shard)
from pipelines.storage import ShardResult, Store
from schemas.errors import StorageError
from schemas.manifest import Manifest
from schemas.rows import Attempt
from stages.base import Stage

Log = Callable[[str], None]


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


def make_stages(config: RecipeConfig, run_id: str, models_dir: str) -> list[Stage]:
    """The stages of a sample_verify recipe: generate -> verify -> filter."""
    from stages.filter import FilterStage
    from stages.generate import GenerateStage
    from stages.verify import VerifyStage
    return [GenerateStage(config.engine, config.sampling, config.generate, models_dir=models_dir, run_id=run_id,
                          method=config.method),
            VerifyStage(config.verify),
            FilterStage(config.filter)]


def stage_names(config: RecipeConfig) -> list[str]:
    """The recipe's stages in order (building stage objects is cheap: no engine or worker starts)."""
    return [s.name for s in make_stages(config, "", "")]


@dataclass
class BuildPlan:
    config: RecipeConfig
    store: Store
    build_key: str
    run_id: str
    resumed: bool
    shards: list[tuple[int, list[dict]]]
    done: list[int]
    resumed_shards: int = 0   # shards an earlier run finished, or took through at least one stage
    started: float = field(default_factory=time.time)

    @property
    def pending(self) -> list[tuple[int, list[dict]]]:
        done = set(self.done)
        return [s for s in self.shards if s[0] not in done]


@dataclass
class BuildResult:
    manifest: Manifest
    path: str
    resumed_shards: int
    seconds: float
    root: str = "data"


def plan_build(config: RecipeConfig, log: Log = print) -> BuildPlan:
    """Validate inputs and open (or resume) the staging area. Raises InputError/ConfigError before any work."""
    from stages.engines.model_prep import check_model
    from stages.tasks import load_problems
    problems = load_problems(config.tasks, config.limit)
    if config.engine.kind in ("vllm", "transformers") and not config.execution.ray_address:
        check_model(config.engine.model)  # on a Ray cluster the workers' filesystem is what counts: not checked
    store = Store(data_root(config))
    build_key = f"b-{config.config_hash()}"
    rec, resumed = store.open_build(config.dataset, build_key, config.model_dump(mode="json"))
    run_id = rec["run_id"]
    now = dt.datetime.now(dt.timezone.utc)
    for p in problems:
        p.update(run_id=run_id, method=config.method, created_at=now, parent_ids=list(p.get("parent_ids") or []))
    size = config.execution.shard_size
    shards = [(i, problems[i * size:(i + 1) * size]) for i in range((len(problems) + size - 1) // size)]
    done = [sid for sid, _ in shards if store.shard_done(config.dataset, build_key, sid)]
    partly = 0
    if resumed:
        names = stage_names(config)
        finished = set(done)
        partly = sum(1 for sid, _ in shards if sid not in finished
                     and store.last_checkpoint(config.dataset, build_key, sid, names) >= 0)
        log(f"resuming {run_id}: {len(done)}/{len(shards)} shards already finished"
            + (f", {partly} through some stages" if partly else ""))
    return BuildPlan(config, store, build_key, run_id, resumed, shards, done, resumed_shards=len(done) + partly)


@contextlib.contextmanager
def build_lock(plan: BuildPlan) -> Iterator[None]:
    """One process at a time per staging area (local roots; object stores rely on the version claim)."""
    if not plan.store.local:
        yield
        return
    d = plan.store.staging_dir(plan.config.dataset, plan.build_key)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, ".lock"), "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StorageError(f"another build of this recipe is running on {d}") from None
        yield


def make_runner(cfg: RecipeConfig) -> LocalRunner | RayRunner:
    ex = cfg.execution
    if ex.runner == "local":
        return LocalRunner()
    return RayRunner(address=ex.ray_address, num_cpus=ex.num_cpus, cpu_stage_concurrency=ex.cpu_stage_concurrency,
                     engine_actors=cfg.engine.num_actors, engine_cpus=cfg.engine.num_cpus_per_actor,
                     engine_gpus=cfg.engine.num_gpus_per_actor)


def _root(plan: BuildPlan) -> str:
    return plan.store.root if plan.store.local else plan.store.root_url


def execute_shards(plan: BuildPlan, progress: bool = True, log: Log = print) -> list[ShardResult]:
    """Streaming: run the pending shards through all stages and write them; return every shard's result
    (finished earlier or now)."""
    cfg = plan.config
    results = [plan.store.read_shard(cfg.dataset, plan.build_key, sid) for sid in plan.done]
    pending = plan.pending
    if pending:
        stages = make_stages(cfg, plan.run_id, plan.store.models_dir)
        writer = ShardWriter(_root(plan), cfg.dataset, plan.build_key, Attempt)
        bar = _progress(len(plan.shards), len(plan.done), progress)
        for d in make_runner(cfg).run([new_shard(sid, probs) for sid, probs in pending], stages, writer,
                                      progress=progress):
            r = ShardResult(**d)
            results.append(r)
            plan.done.append(r.shard_id)
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(_postfix(r))
        if bar is not None:
            bar.close()
    return results


def refresh_done(plan: BuildPlan) -> None:
    """Re-read the shard markers (a retry or rerun must see what an earlier attempt finished)."""
    cfg = plan.config
    plan.done = [sid for sid, _ in plan.shards if plan.store.shard_done(cfg.dataset, plan.build_key, sid)]


def run_stage(plan: BuildPlan, stage_name: str, progress: bool = True, log: Log = print) -> dict:
    """Stage by stage: run one stage over every pending shard it has not finished yet, reading each shard from
    the previous stage's checkpoint and writing its own. Returns {"stage", "shards_run", "shards_skipped",
    "stats"} (stats merged over the shards run now)."""
    cfg = plan.config
    stages = make_stages(cfg, plan.run_id, plan.store.models_dir)
    names = [s.name for s in stages]
    k = names.index(stage_name)
    previous = names[k - 1] if k else None
    refresh_done(plan)
    todo, skipped = [], 0
    for sid, probs in plan.pending:
        last = plan.store.last_checkpoint(cfg.dataset, plan.build_key, sid, names)
        if last >= k:
            skipped += 1
        elif last == k - 1:
            todo.append(new_shard(sid, probs) if k == 0 else {"shard_id": sid})
        else:
            raise StorageError(f"shard {sid} of {cfg.dataset} has not been through stage '{previous}' "
                               f"(staging {plan.store.shard_dir(cfg.dataset, plan.build_key, sid)})")
    merged: dict[str, dict] = {}
    if todo:
        stage = stages[k]
        sink = CheckpointWriter(_root(plan), cfg.dataset, plan.build_key, stage_name, previous)
        source = CheckpointReader(_root(plan), cfg.dataset, plan.build_key, previous) if previous else None
        results = list(make_runner(cfg).run(todo, [stage], sink, progress=progress, source=source))
        merged = merge_stats([ShardResult(r["shard_id"], {}, r["stats"]) for r in results], [stage_name])
    c = merged.get(stage_name, {})
    log(f"{stage_name}: {len(todo)} shard(s) run, {skipped} already done; rows in {c.get('in', 0)}, "
        f"out {c.get('out', 0)}, errors {c.get('errors', 0)}, {c.get('seconds', 0.0):.1f} s")
    return {"stage": stage_name, "shards_run": len(todo), "shards_skipped": skipped,
            "stats": merged.get(stage_name, {})}


def write_shards(plan: BuildPlan) -> list[ShardResult]:
    """Stage by stage: write every pending shard's tables from its last checkpoint (then `_SUCCESS`); return
    every shard's result."""
    cfg = plan.config
    refresh_done(plan)
    names = stage_names(cfg)
    last = names[-1]
    writer = ShardWriter(_root(plan), cfg.dataset, plan.build_key, Attempt)
    written: dict[int, ShardResult] = {}
    for sid, _ in plan.pending:
        if plan.store.last_checkpoint(cfg.dataset, plan.build_key, sid, names) != len(names) - 1:
            raise StorageError(f"cannot write shard {sid} of {cfg.dataset}: it has not been through every stage")
        written[sid] = ShardResult(**writer(plan.store.read_checkpoint(cfg.dataset, plan.build_key, sid, last)))
        plan.store.drop_checkpoint(cfg.dataset, plan.build_key, sid, last)
        plan.done.append(sid)
    return [written.get(sid) or plan.store.read_shard(cfg.dataset, plan.build_key, sid) for sid, _ in plan.shards]


def _progress(total: int, done: int, on: bool):
    if not on:
        return None
    from tqdm import tqdm
    return tqdm(total=total, initial=done, desc="shards", unit="shard")


def _postfix(r: ShardResult) -> str:
    return " ".join(f"{k}:{v.get('in', 0)}>{v.get('out', 0)}" for k, v in r.stats.items())


def publish(plan: BuildPlan, results: list[ShardResult]) -> Manifest:
    cfg = plan.config
    missing = sorted({sid for sid, _ in plan.shards} - {r.shard_id for r in results})
    if missing:
        raise StorageError(f"cannot publish: shards {missing[:10]} not finished")
    order = stage_names(cfg)
    stages = merge_stats(results, order + sorted({n for r in results for n in r.stats} - set(order)))
    tokens = {"prompt": sum(s.get("prompt_tokens", 0) for s in stages.values()),
              "completion": sum(s.get("completion_tokens", 0) for s in stages.values())}
    describe = {}
    with contextlib.suppress(Exception):
        describe = {s.name: s.describe() for s in make_stages(cfg, plan.run_id, plan.store.models_dir)}
    templates = {d["prompt_template"].split("@")[0]: d["prompt_template"].split("@")[-1]
                 for d in describe.values() if isinstance(d, dict) and d.get("prompt_template")}
    fields = dict(
        run_id=plan.run_id, parents=[], method=cfg.method, recipe=cfg.model_dump(mode="json"),
        recipe_hash=cfg.config_hash(), code_version=code_version(), models=describe,
        prompt_templates=templates, stages=stages, tokens=tokens,
        timings={"build_seconds": round(time.time() - plan.started, 3),
                 **{f"{k}_seconds": v.get("seconds", 0.0) for k, v in stages.items()}},
        shards={"total": len(plan.shards), "resumed": plan.resumed_shards})
    return plan.store.publish(cfg.dataset, plan.build_key, results, fields)


def run_build(plan: BuildPlan, progress: bool = True, log: Log = print) -> BuildResult:
    with build_lock(plan):
        results = execute_shards(plan, progress=progress, log=log)
        m = publish(plan, results)
    return BuildResult(m, plan.store.version_dir(m.dataset, m.version), plan.resumed_shards,
                       round(time.time() - plan.started, 3), plan.store.root_url)


def build(config: RecipeConfig, progress: bool = True, log: Log = print) -> BuildResult:
    """Plan, execute and publish. A failure publishes nothing; finished shards stay for the rerun."""
    return run_build(plan_build(config, log=log), progress=progress, log=log)
