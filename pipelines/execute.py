"""Executing a planned build in its session, in one of two ways, same output:

- streaming (`execute`): per-shard stages run as one run per segment (on Ray, one Ray Data run: all stages of a
  shard flow through, later stages overlap earlier ones); a global stage runs between runs;
- stage by stage (`run_stage` for each stage; the Prefect flow's tasks): each stage over every shard it has not
  finished, so a retried or rerun stage skips finished shards and a failure never reruns an earlier stage.

Either way each (shard, stage) output is a Parquet checkpoint in staging, so a crash loses at most in-flight work;
`merged_stats` reads the stages' counters back from those checkpoints.
"""
from __future__ import annotations

import time
from typing import Optional

from pipelines.plan import BuildPlan, Log, streaming_segments
from pipelines.runner import run_global_stage
from pipelines.session import BuildSession
from schemas.errors import StorageError
from stages.base import Stage, StageStats


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
    for seg in streaming_segments(stages):
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
