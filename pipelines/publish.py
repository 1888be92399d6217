"""Publishing: a finished build becomes a new immutable version.

`publish_plan` is the build's last step: it checks that every stage finished every shard and gathers what the
manifest records (provenance, merged stage stats, tokens, timings, the method's summary); `publish` then makes the
version from staging.

For every table, each shard's latest file (the last stage that wrote it, else the shard's input) is hard-linked into
`<table>/part-sNNNNN.parquet` (errors: every stage's file, `errors/part-sNNNNN-<stage>.parquet`); a table with no
file at all gets one empty file so its schema is there for SQL. The dataset card (README.md and plots/,
pipelines/card.py) is written next, from those files; the manifest is written last. The claimed version
number is recorded in build.json and reused by a rerun after a crash; staging is deleted only after the manifest
exists, so a crash at any point loses nothing already written.
"""
from __future__ import annotations

import datetime as dt
import time
from typing import Any, Optional

from pipelines.card import write_card
from pipelines.catalog import MANIFEST, Catalog
from pipelines.execute import merged_stats
from pipelines.plan import BuildPlan
from pipelines.provenance import code_version
from pipelines.staging import INPUT, Staging, table_from_rows
from schemas.errors import StorageError
from schemas.manifest import FileEntry, Manifest, TableEntry
from schemas.registry import ERRORS, get_method, get_table


def method_summary(method: str, stats: dict[str, dict]) -> dict[str, Any]:
    """The method's own figures from the merged stage stats (its `summary` hook); {} when it has none."""
    summary = get_method(method).summary
    return dict(summary(stats)) if summary is not None else {}


def publish_plan(plan: BuildPlan, engines: Optional[dict] = None, error_budget: Optional[dict] = None) -> Manifest:
    """Publish a build whose stages have finished every shard; `engines`: the session's describe_engines();
    `error_budget`: what pipelines.error_budget.check_build found."""
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
        execution={"runner": plan.runner, "reason": plan.runner_reason}, error_budget=error_budget or {},
        summary=method_summary(cfg.method, stats))
    shard_steps = [s.name for s in stages if not s.is_global or s.table]
    return publish(plan.staging, plan.catalog, plan.shard_ids, shard_steps,
                   [t for t in tables if t != ERRORS], fields, names)


def publish(staging: Staging, catalog: Catalog, shard_ids: list[int], stages: list[str], tables: list[str],
            manifest_fields: dict, all_stages: list[str] | None = None) -> Manifest:
    """`stages`: the stages that write per-shard checkpoints, in order; `all_stages`: every stage (global ones
    included, for build-scope tables)."""
    root = staging.root
    missing = [sid for sid in shard_ids if stages and not staging.done(sid, stages[-1])]
    if missing:
        raise StorageError(f"cannot publish {staging.dataset}: shards {missing[:10]} have not been through "
                           f"every stage")
    rec = staging.record()
    version = rec.get("claimed_version")
    if version is not None:
        vdir = catalog.version_dir(staging.dataset, version)
        if root.exists(f"{vdir}/{MANIFEST}"):   # published before a crash removed staging: done
            return catalog.manifest(staging.dataset, version)
        root.rm(vdir, recursive=True)
        root.makedirs(vdir)
    else:
        version = catalog.claim_version(staging.dataset)
        staging.update_record(claimed_version=version)
    vdir = catalog.version_dir(staging.dataset, version)

    entries: dict[str, TableEntry] = {t: TableEntry(rows=0) for t in [*tables, ERRORS]}

    def link(sid: int, step: str, table: str, rel: str) -> None:
        f = staging.marker(sid, step)["tables"][table]
        root.link_or_copy(staging.table_path(sid, step, table), f"{vdir}/{rel}")
        e = entries[table]
        e.rows += f["rows"]
        e.files.append(FileEntry(path=rel, rows=f["rows"], bytes=f["bytes"], sha256=f["sha256"]))

    shard_tables = [t for t in tables if get_table(t).scope != "build"]
    for table in tables:
        if table not in shard_tables:
            # every global stage that wrote it (the decontamination of problems and of outputs both add findings)
            writers = [st for st in (all_stages or stages)
                       if staging.global_done(st) and table in staging.global_marker(st).get("tables", {})]
            for step in writers:
                f = staging.global_marker(step)["tables"][table]
                rel = f"{table}/part-build.parquet" if len(writers) == 1 else f"{table}/part-build-{step}.parquet"
                root.link_or_copy(staging.build_table_path(step, table), f"{vdir}/{rel}")
                entries[table].rows += f["rows"]
                entries[table].files.append(FileEntry(path=rel, rows=f["rows"], bytes=f["bytes"],
                                                      sha256=f["sha256"]))
    for sid in sorted(shard_ids):
        for table in shard_tables:
            step = staging.latest_writer(sid, table, stages)
            if step is not None:
                link(sid, step, table, f"{table}/part-s{sid:05d}.parquet")
        for step in [INPUT, *stages]:
            if ERRORS in staging.marker(sid, step)["tables"]:
                link(sid, step, ERRORS, f"{ERRORS}/part-s{sid:05d}-{step}.parquet")
    for table, e in entries.items():
        if not e.files:   # keep the table (and its schema) visible even when it has no rows
            f = root.write_parquet(f"{vdir}/{table}/part-empty.parquet", table_from_rows([], table))
            e.files.append(FileEntry(path=f"{table}/part-empty.parquet", rows=0, bytes=f["bytes"],
                                     sha256=f["sha256"]))
    m = Manifest(dataset=staging.dataset, version=version, tables=entries, drops=drop_counts(root, vdir, entries),
                 created_at=dt.datetime.now(dt.timezone.utc).isoformat(), **manifest_fields)
    write_card(root, vdir, m)   # README.md + plots/, from the files just linked; before the manifest
    root.write_json_atomic(f"{vdir}/{MANIFEST}", m.model_dump(mode="json"))
    staging.drop()
    return m


def drop_counts(root, vdir: str, entries: dict[str, TableEntry]) -> dict[str, dict[str, int]]:
    """Per table with a drop_reason column: dropped rows by reason (each from its table's files; dropped rows stay
    in their table). Tables without drops are left out."""
    import pyarrow.compute as pc
    out: dict[str, dict[str, int]] = {}
    for table, e in entries.items():
        if table == ERRORS or "drop_reason" not in get_table(table).columns:
            continue
        counts: dict[str, int] = {}
        for f in e.files:
            if not f.rows:
                continue
            col = root.read_parquet(f"{vdir}/{f.path}", columns=["drop_reason"]).column("drop_reason")
            for item in pc.value_counts(col.drop_null()).to_pylist():
                counts[item["values"]] = counts.get(item["values"], 0) + item["counts"]
        if counts:
            out[table] = dict(sorted(counts.items()))
    return out
