"""A build's inputs: the task source's tables, split into shards by problem.

Most sources give `problems` (stages/tasks.py: builtin, jsonl, parquet, hf; env: an agent environment's
tasks). `tasks.kind: version` feeds a recipe from a published version: the rows of `tasks.table` that pass
`tasks.where` (a read-only DuckDB condition) and the problems they belong to, ids unchanged, so SQL joins across
versions work; the manifest records the parent version.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipelines.catalog import Catalog
from pipelines.files import Root
from schemas.errors import ConfigError, InputError
from schemas.registry import get_table
from stages.tasks import DUPLICATE_PROBLEM, TaskSourceConfig, flag_duplicate_problems, load_problems


@dataclass
class Inputs:
    tables: dict[str, list[dict]]
    parents: list[str] = field(default_factory=list)      # versions read, "name@N"
    describe: dict[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return list(self.tables)


def input_tables(tasks: TaskSourceConfig) -> list[str]:
    """The tables a task source gives (known before loading anything, for the recipe check)."""
    if tasks.kind == "version" and tasks.table != "problems":
        return ["problems", tasks.table]
    return ["problems"]


def load_inputs(tasks: TaskSourceConfig, limit: int | None, root: Root, env=None) -> Inputs:
    """`env`: the recipe's EnvSpec (for `tasks.kind: env`). Repeated problems are flagged (duplicate_problem)
    unless `tasks.keep_duplicates`; the count goes into the manifest's `inputs`."""
    inputs = _load(tasks, limit, root, env)
    problems = inputs.tables["problems"]
    flagged = 0 if tasks.keep_duplicates else flag_duplicate_problems(problems)
    if flagged:
        gone = {p["problem_id"] for p in problems if p.get("drop_reason") == DUPLICATE_PROBLEM}
        for t, rows in inputs.tables.items():       # a version's rows of a repeated problem: not worked on either
            if t != "problems" and "drop_reason" in get_table(t).columns:
                for r in rows:
                    if r.get("problem_id") in gone and not r.get("drop_reason"):
                        r["drop_reason"] = DUPLICATE_PROBLEM
    inputs.describe.update(problems=len(problems), duplicate_problems=flagged,
                           keep_duplicates=tasks.keep_duplicates)
    return inputs


def _load(tasks: TaskSourceConfig, limit: int | None, root: Root, env=None) -> Inputs:
    if tasks.kind != "version":
        problems = load_problems(tasks, limit, env)
        desc = {"kind": tasks.kind, **({"path": tasks.path} if tasks.path else {}),
                **({"count": tasks.count, "seed": tasks.seed} if tasks.kind in ("builtin", "env") else {})}
        if tasks.kind == "env":
            desc.update(split=tasks.split, env=env.as_dict())
        return Inputs({"problems": problems}, [], desc)
    return _from_version(tasks, limit, Catalog(root))


def _from_version(tasks: TaskSourceConfig, limit: int | None, catalog: Catalog) -> Inputs:
    if not tasks.ref:
        raise ConfigError("tasks.kind=version needs tasks.ref (DATASET or DATASET@N)")
    m = catalog.resolve(tasks.ref)
    spec = get_table(tasks.table)
    if tasks.table not in m.tables:
        raise ConfigError(f"tasks.table: {m.ref} has no table '{tasks.table}' (tables: {', '.join(m.tables)})")
    rows = select_rows(catalog, m, tasks.table, tasks.where)
    if tasks.table == "problems":
        problems = rows
        tables: dict[str, list[dict]] = {}
    else:
        if "problem_id" not in spec.columns:
            raise ConfigError(f"tasks.table: rows of '{tasks.table}' carry no problem_id, so they cannot feed a "
                              f"recipe")
        wanted = {r["problem_id"] for r in rows}
        problems = [p for p in select_rows(catalog, m, "problems", None) if p["problem_id"] in wanted]
        tables = {tasks.table: rows}
    problems.sort(key=lambda p: (p.get("source_index") or 0, p["problem_id"]))
    if limit is not None:
        problems = problems[:limit]
        keep = {p["problem_id"] for p in problems}
        tables = {t: [r for r in rs if r["problem_id"] in keep] for t, rs in tables.items()}
    if not problems:
        raise InputError(f"no problems: {m.ref} table '{tasks.table}' has no rows"
                         + (f" where {tasks.where}" if tasks.where else ""), field="tasks.where")
    return Inputs({"problems": problems, **tables}, [m.ref],
                  {"kind": "version", "ref": m.ref, "table": tasks.table, "where": tasks.where,
                   "rows": len(rows)})


def select_rows(catalog: Catalog, m, table: str, where: str | None) -> list[dict]:
    """Rows of a version's table passing a read-only SQL condition (DuckDB, sandboxed like `errata sql`)."""
    from pipelines.sql import SQLError, check_read_only, sandboxed_connection
    data = catalog.read_table(m, table)
    q = "SELECT * FROM input_rows" + (f" WHERE {where}" if where else "")
    try:
        check_read_only(q)
        con = sandboxed_connection(None, {"input_rows": data})
        return con.sql(q).to_arrow_table().to_pylist()
    except SQLError as e:
        raise ConfigError(f"tasks.where: {e}") from None
    except Exception as e:  # duckdb.Error: a bad column, a syntax error
        raise ConfigError(f"tasks.where: {str(e).strip().splitlines()[0]}") from None


def shard_inputs(inputs: Inputs, shard_size: int) -> list[dict[str, list[dict]]]:
    """Split by problem: a shard holds `shard_size` problems and every input row of those problems."""
    problems = inputs.tables["problems"]
    shards = []
    for i in range(0, len(problems), shard_size):
        chunk = problems[i:i + shard_size]
        ids = {p["problem_id"] for p in chunk}
        shard = {"problems": chunk}
        for t, rows in inputs.tables.items():
            if t != "problems":
                shard[t] = [r for r in rows if r.get("problem_id") in ids]
        shards.append(shard)
    return shards
