"""The error budget: a build never publishes a stage whose results are mostly errors by accident.

A stage's error fraction is errors / (its results: rows out + dropped + errors). Above
`execution.max_error_fraction` (default 0.5) the build stops before publishing with ErrorBudgetExceeded, naming the
stage, the fraction and the top reasons, and forgets that stage's checkpoints (and every later stage's) on the
shards where it made errors: the finished shards stay, a rerun redoes the failed ones. With
`execution.allow_errors` (`errata build --allow-errors`) the build publishes anyway and the manifest's
`error_budget` lists the stages that were over it.
"""
from __future__ import annotations

from typing import Any

from pipelines.execute import merged_stats
from pipelines.plan import BuildPlan, Log
from schemas.errors import ErrorBudgetExceeded


def error_fraction(stats: dict[str, Any]) -> float:
    errors = int(stats.get("errors", 0))
    results = int(stats.get("out", 0)) + errors + sum(int(v) for k, v in stats.items() if k.startswith("dropped_"))
    return errors / results if results else 0.0


def top_reasons(stats: dict[str, Any], n: int = 3) -> str:
    reasons = sorted((stats.get("error_reasons") or {}).items(), key=lambda kv: (-kv[1], kv[0]))[:n]
    return ", ".join(f"{r} {c}" for r, c in reasons) or "no reason recorded"


def check_stage(plan: BuildPlan, stage: str, log: Log = print) -> dict[str, Any]:
    """The stage's error fraction over the build; over the budget (and not allowed): forget its work on the
    shards with errors and raise ErrorBudgetExceeded."""
    ex = plan.config.execution
    stats = merged_stats(plan, [stage]).get(stage, {})
    frac = error_fraction(stats)
    if frac <= ex.max_error_fraction:
        return {"fraction": round(frac, 4)}
    msg = (f"stage '{stage}': {stats.get('errors', 0)} of its results are errors ({frac:.0%} > "
           f"execution.max_error_fraction {ex.max_error_fraction:g}; {top_reasons(stats)})")
    if ex.allow_errors:
        log(f"warning: {msg}; publishing anyway (--allow-errors)")
        return {"fraction": round(frac, 4), "over_budget": True}
    names = [s.name for s in plan.make_stages()]
    later = names[names.index(stage):]
    redo = [sid for sid in plan.shard_ids
            if int(merged_stats(plan, [stage], [sid]).get(stage, {}).get("errors", 0)) > 0]
    for sid in redo:
        plan.staging.forget(sid, later)
    raise ErrorBudgetExceeded(f"{msg}; nothing published. {len(redo)} shard(s) with errors will be redone by the "
                              f"rerun; --allow-errors publishes as it is")


def check_build(plan: BuildPlan, log: Log = print) -> dict[str, Any]:
    """Every stage, in order (the first over budget raises); what the manifest records."""
    stages = {s.name: check_stage(plan, s.name, log) for s in plan.make_stages() if not s.is_global}
    return {"max_error_fraction": plan.config.execution.max_error_fraction,
            "allow_errors": plan.config.execution.allow_errors, "stages": stages,
            "over_budget": sorted(k for k, v in stages.items() if v.get("over_budget"))}
