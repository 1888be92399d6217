"""Staging: a build in progress. Checkpoints are the data: each stage's output for a shard is Parquet per table.

    staging/<dataset>/<build_key>/build.json                     run id, config, claimed version
    staging/<dataset>/<build_key>/shards/s00000/input/<table>.parquet   the shard's inputs, written once at plan time
    staging/<dataset>/<build_key>/shards/s00000/<stage>/<table>.parquet the tables the stage wrote for the shard
    staging/<dataset>/<build_key>/shards/s00000/<stage>/errors.parquet  rows that failed in the stage (if any)
    staging/<dataset>/<build_key>/shards/s00000/<stage>/_SUCCESS        written last: file list, checksums, stats
    staging/<dataset>/<build_key>/global/<stage>/<table>.parquet         a build-scope table a global stage wrote
    staging/<dataset>/<build_key>/global/<stage>/_SUCCESS               a global stage finished every shard

A (shard, stage) pair is done when its `_SUCCESS` exists, and that is the resume point: a rerun skips it and reads
its files. A stage reads each table from the latest earlier stage that wrote it for the shard (else the inputs).
Publishing links, for every table, the latest file of each shard into the version.
"""
from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Optional

import pyarrow as pa

from pipelines.files import Root
from schemas.rows import to_table
from schemas.registry import ERRORS, get_table

SUCCESS = "_SUCCESS"
INPUT = "input"


def table_from_rows(rows: list[dict], table: str) -> pa.Table:
    return to_table(rows, get_table(table).row_type)


class Staging:
    """One build's staging area. Picklable (a root URL and names), so Ray workers open it themselves."""

    def __init__(self, root: Root | str, dataset: str, build_key: str):
        self.root = root if isinstance(root, Root) else Root(root)
        self.dataset, self.build_key = dataset, build_key
        self.dir = self.root.path("staging", dataset, build_key)

    def __reduce__(self):
        return (Staging, (self.root, self.dataset, self.build_key))

    # --- the build record ------------------------------------------------------------------------------------
    @property
    def record_path(self) -> str:
        return f"{self.dir}/build.json"

    def open(self, config: dict) -> tuple[dict, bool]:
        """Start or resume a build. Returns (build record, resumed?)."""
        if self.root.exists(self.record_path):
            rec = self.root.read_json(self.record_path)
            rec["resumes"] = rec.get("resumes", 0) + 1
            self.root.write_json_atomic(self.record_path, rec)
            return rec, True
        now = dt.datetime.now(dt.timezone.utc)
        rec = {"run_id": f"run-{now:%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}", "dataset": self.dataset,
               "build_key": self.build_key, "config": config, "resumes": 0, "started_at": now.isoformat()}
        self.root.write_json_atomic(self.record_path, rec)
        return rec, False

    def record(self) -> dict:
        return self.root.read_json(self.record_path)

    def update_record(self, **fields: Any) -> dict:
        rec = self.record()
        rec.update(fields)
        self.root.write_json_atomic(self.record_path, rec)
        return rec

    def exists(self) -> bool:
        return self.root.exists(self.dir)

    def drop(self) -> None:
        self.root.rm(self.dir, recursive=True)

    # --- shards ------------------------------------------------------------------------------------------------
    def shard_dir(self, shard_id: int) -> str:
        return f"{self.dir}/shards/s{shard_id:05d}"

    def step_dir(self, shard_id: int, step: str) -> str:
        return f"{self.shard_dir(shard_id)}/{step}"

    def inputs_done(self, shard_id: int) -> bool:
        return self.root.exists(f"{self.step_dir(shard_id, INPUT)}/{SUCCESS}")

    def write_inputs(self, shard_id: int, tables: dict[str, list[dict]]) -> None:
        """The shard's input tables (problems, and rows of a source version), written once at plan time."""
        self._write_step(shard_id, INPUT, {t: table_from_rows(rows, t) for t, rows in tables.items()}, None, {})

    def done(self, shard_id: int, stage: str) -> bool:
        return self.root.exists(f"{self.step_dir(shard_id, stage)}/{SUCCESS}")

    def marker(self, shard_id: int, step: str) -> dict:
        return self.root.read_json(f"{self.step_dir(shard_id, step)}/{SUCCESS}")

    def write_stage(self, shard_id: int, stage: str, tables: dict[str, pa.Table], errors: Optional[pa.Table],
                    stats: dict) -> dict:
        """A stage's output for a shard: tables, errors, then the marker (last). Returns the marker."""
        return self._write_step(shard_id, stage, tables, errors, stats)

    def _write_step(self, shard_id: int, step: str, tables: dict[str, pa.Table], errors: Optional[pa.Table],
                    stats: dict) -> dict:
        d = self.step_dir(shard_id, step)
        files = {}
        for name, t in tables.items():
            f = self.root.write_parquet(f"{d}/{name}.parquet", t)
            files[name] = {k: v for k, v in f.items() if k != "path"}
        if errors is not None and errors.num_rows:
            f = self.root.write_parquet(f"{d}/{ERRORS}.parquet", errors)
            files[ERRORS] = {k: v for k, v in f.items() if k != "path"}
        marker = {"shard_id": shard_id, "step": step, "tables": files, "stats": stats}
        self.root.write_json_atomic(f"{d}/{SUCCESS}", marker)
        return marker

    def table_path(self, shard_id: int, step: str, table: str) -> str:
        return f"{self.step_dir(shard_id, step)}/{table}.parquet"

    def latest_writer(self, shard_id: int, table: str, stages_before: list[str]) -> Optional[str]:
        """The step (a stage name, or 'input') whose file holds the shard's current `table`, looking at the
        stages before the one about to run (latest first); None if nothing wrote it."""
        for step in list(reversed(stages_before)) + [INPUT]:
            if self.done(shard_id, step) and table in self.marker(shard_id, step)["tables"]:
                return step
        return None

    def read_table(self, shard_id: int, table: str, stages_before: list[str],
                   columns: list[str] | None = None) -> Optional[pa.Table]:
        if get_table(table).scope == "build":
            step = self.build_writer(table, stages_before)
            return None if step is None else self.root.read_parquet(self.build_table_path(step, table),
                                                                    columns=columns)
        step = self.latest_writer(shard_id, table, stages_before)
        if step is None:
            return None
        return self.root.read_parquet(self.table_path(shard_id, step, table), columns=columns)

    def last_done(self, shard_id: int, stages: list[str]) -> int:
        """Index in `stages` of the last consecutive stage done for the shard (-1: none)."""
        k = -1
        for i, s in enumerate(stages):
            if not self.done(shard_id, s):
                break
            k = i
        return k

    def forget(self, shard_id: int, steps: list[str]) -> None:
        """Drop these steps' checkpoints of a shard (marker first), and the markers of those that are global: the
        next run redoes them."""
        for step in steps:
            d = self.step_dir(shard_id, step)
            if self.root.exists(f"{d}/{SUCCESS}"):
                self.root.rm(f"{d}/{SUCCESS}")
            if self.root.exists(d):
                self.root.rm(d, recursive=True)
            if self.global_done(step):
                self.root.rm(f"{self.dir}/global/{step}/{SUCCESS}")

    # --- global stages -----------------------------------------------------------------------------------------
    def global_done(self, stage: str) -> bool:
        return self.root.exists(f"{self.dir}/global/{stage}/{SUCCESS}")

    def mark_global_done(self, stage: str, info: dict) -> None:
        self.root.write_json_atomic(f"{self.dir}/global/{stage}/{SUCCESS}", info)

    def global_marker(self, stage: str) -> dict:
        return self.root.read_json(f"{self.dir}/global/{stage}/{SUCCESS}")

    def build_table_path(self, stage: str, table: str) -> str:
        return f"{self.dir}/global/{stage}/{table}.parquet"

    def write_build_table(self, stage: str, table: str, t: pa.Table) -> dict:
        """A build-scope table (one for the whole build), written by a global stage before its marker."""
        f = self.root.write_parquet(self.build_table_path(stage, table), t)
        return {k: v for k, v in f.items() if k != "path"}

    def build_writer(self, table: str, stages_before: list[str]) -> Optional[str]:
        """The latest global stage before the current one that wrote build-scope `table`."""
        for step in reversed(stages_before):
            if self.global_done(step) and table in self.global_marker(step).get("tables", {}):
                return step
        return None

    # --- locking -----------------------------------------------------------------------------------------------
    def lock_path(self) -> Optional[str]:
        if not self.root.local:
            return None
        self.root.makedirs(self.dir)
        return f"{self.dir}/.lock"
