"""Read-only SQL over every published version, with DuckDB.

Every dataset is a schema holding its tables at the latest version (`demo.attempts`); every version is a schema
of its own (`demo_v1.attempts`); `errata_versions` lists them all. Nothing is downloaded (extension autoinstall
and autoload are off), only SELECT/EXPLAIN statements run, and on a local root DuckDB may read nothing outside it (exports written under the root can be joined).
"""
from __future__ import annotations

import json
from typing import Any

import duckdb

from pipelines.storage import Store
from schemas.errors import ErrataError

ALLOWED = {"SELECT", "EXPLAIN"}


class SQLError(ErrataError):
    """A query was refused or failed."""


def _q(ident: str) -> str:
    return '"' + ident.replace('"', '""') + '"'


def _lit(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def connect(store: Store) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with views over every published version, locked to read-only use."""
    con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    rows = []
    for ds in store.datasets():
        versions = store.versions(ds)
        for v in versions:
            m = store.manifest(ds, v)
            schemas = [f"{ds}_v{v}"] + ([ds] if v == versions[-1] else [])
            for schema in schemas:
                con.execute(f"CREATE SCHEMA IF NOT EXISTS {_q(schema)}")
                for table in m.tables:
                    files = store.table_files(m, table)
                    if store.local:
                        src = f"read_parquet([{', '.join(_lit(f) for f in files)}])"
                    else:
                        import pyarrow.dataset as pads
                        name = f"__{schema}_{table}"
                        con.register(name, pads.dataset([store.fs._strip_protocol(f) for f in files],
                                                         filesystem=store.fs, format="parquet"))
                        src = _q(name)
                    con.execute(f"CREATE VIEW {_q(schema)}.{_q(table)} AS SELECT * FROM {src}")
            rows.append((ds, v, v == versions[-1], m.created_at, m.run_id, m.method, m.recipe_hash,
                         json.dumps({t: e.rows for t, e in m.tables.items()}), m.code_version))
    con.execute("CREATE TABLE errata_versions (dataset VARCHAR, version INTEGER, latest BOOLEAN, "
                "created_at VARCHAR, run_id VARCHAR, method VARCHAR, recipe_hash VARCHAR, row_counts JSON, "
                "code_version VARCHAR)")
    if rows:
        con.executemany("INSERT INTO errata_versions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    if store.local:
        con.execute(f"SET allowed_directories=[{_lit(store.path() + '/')}]")
        con.execute("SET enable_external_access=false")
    con.execute("SET lock_configuration=true")
    return con


def check_read_only(query: str) -> None:
    try:
        stmts = duckdb.extract_statements(query)
    except duckdb.Error as e:
        raise SQLError(f"cannot parse query: {e}") from None
    if not stmts:
        raise SQLError("empty query")
    for s in stmts:
        kind = str(s.type).rsplit(".", 1)[-1]
        if kind not in ALLOWED:
            raise SQLError(f"read-only: {kind} statements are not allowed (only SELECT / EXPLAIN)")


def query(con: duckdb.DuckDBPyConnection, sql: str) -> duckdb.DuckDBPyRelation | None:
    check_read_only(sql)
    try:
        return con.sql(sql)
    except duckdb.Error as e:
        raise SQLError(str(e).strip()) from None


def fetch(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    rel = query(con, sql)
    if rel is None:
        return [], []
    return rel.columns, rel.fetchall()
