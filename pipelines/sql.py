"""Read-only SQL over every published version, with DuckDB.

Every dataset is a schema holding its tables at the latest version (`demo.attempts`); every version is a schema
of its own (`demo_v1.attempts`); `errata_versions` lists them all. Nothing is downloaded (extension autoinstall
and autoload are off), only SELECT/EXPLAIN statements run, and on a local root DuckDB may read nothing outside it
(exports written under the root can be joined).
"""
from __future__ import annotations

import json
from typing import Any, Optional

import duckdb
import pyarrow as pa

from pipelines.catalog import Catalog
from pipelines.files import Root
from schemas.errors import ErrataError

ALLOWED = {"SELECT", "EXPLAIN"}


class SQLError(ErrataError):
    """A query was refused or failed."""


def _q(ident: str) -> str:
    return '"' + ident.replace('"', '""') + '"'


def _lit(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def sandboxed_connection(root: Optional[Root], tables: Optional[dict[str, pa.Table]] = None,
                         setup: Any = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB that downloads nothing and may read only under `root` (nothing at all without one).
    `tables` are registered as views first; `setup(con)` may create more before the configuration is locked."""
    con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    for name, t in (tables or {}).items():
        con.register(name, t)
    if setup is not None:
        setup(con)
    if root is None or root.local:
        if root is not None:
            con.execute(f"SET allowed_directories=[{_lit(root.path() + '/')}]")
        con.execute("SET enable_external_access=false")
    con.execute("SET lock_configuration=true")
    return con


def connect(root: Root | Catalog | str) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with views over every published version, locked to read-only use."""
    catalog = root if isinstance(root, Catalog) else Catalog(root)
    store = catalog.root

    def views(con: duckdb.DuckDBPyConnection) -> None:
        rows = []
        for ds in catalog.datasets():
            versions = catalog.versions(ds)
            for v in versions:
                m = catalog.manifest(ds, v)
                schemas = [f"{ds}_v{v}"] + ([ds] if v == versions[-1] else [])
                for schema in schemas:
                    con.execute(f"CREATE SCHEMA IF NOT EXISTS {_q(schema)}")
                    for table in m.tables:
                        files = catalog.table_files(m, table)
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
                             json.dumps({t: e.rows for t, e in m.tables.items()}), m.code_version,
                             json.dumps(m.parents)))
        con.execute("CREATE TABLE errata_versions (dataset VARCHAR, version INTEGER, latest BOOLEAN, "
                    "created_at VARCHAR, run_id VARCHAR, method VARCHAR, recipe_hash VARCHAR, row_counts JSON, "
                    "code_version VARCHAR, parents JSON)")
        if rows:
            con.executemany("INSERT INTO errata_versions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)

    return sandboxed_connection(store, None, views)


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
