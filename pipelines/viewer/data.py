"""What the viewer reads, all of it through `errata sql`'s read-only DuckDB connection (pipelines/sql.py): the
same views (`<dataset>_v<N>.<table>`), the same statement check (only SELECT runs), the same sandbox (nothing
read outside the data root, nothing downloaded).

Rows are paged by keyset on the table's id column (`WHERE id > last ORDER BY id LIMIT n`), or by offset in file
order (`LIMIT n OFFSET k`, the fastest first page), so no page needs the version in memory; filters are the columns a table has (method, stage, drop_reason, verdict, error_type,
is_correct, and any other low-cardinality text column a new method adds), a free-text search over every column,
and a user's own SQL `WHERE` condition, checked like any `errata sql` query.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import duckdb

from pipelines.catalog import Catalog
from pipelines.sql import SQLError, check_read_only, connect
from schemas.errors import VersionNotFound
from schemas.manifest import Manifest
from schemas.registry import registered_tables

PAGE = 50
RELIST_S = 2.0
# filter name -> column; shown for a table when it has the column
FILTERS = {"method": "method", "stage": "stage", "drop_reason": "drop_reason", "verdict": "verdict",
           "error_type": "error_type", "correct": "is_correct", "strategy": "strategy", "kind": "kind",
           "judge_status": "judge_status", "reason": "reason", "source": "source"}
LINEAGE = ("run_id", "method", "created_at", "parent_ids")


def _q(ident: str) -> str:
    return '"' + ident.replace('"', '""') + '"'


def _lit(s: str) -> str:
    return "'" + str(s).replace("'", "''") + "'"


@dataclass
class Page:
    columns: list[str]
    rows: list[dict[str, Any]]
    total: int
    next_after: Optional[str]
    id_column: str
    sql: str
    filters: dict[str, str] = field(default_factory=dict)


class ViewerData:
    """Reads for the viewer over one data root. Thread-safe: each call runs on its own cursor of one connection,
    which is rebuilt when a version is published or removed."""

    def __init__(self, root: str | Catalog):
        self.catalog = root if isinstance(root, Catalog) else Catalog(root)
        self._lock = threading.Lock()
        self._con: Optional[duckdb.DuckDBPyConnection] = None
        self._seen: Optional[tuple] = None
        self._listed_at = 0.0

    # --- the connection --------------------------------------------------------------------------------------
    def _listing(self) -> tuple:
        return tuple((d, tuple(self.catalog.versions(d))) for d in self.catalog.datasets())

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor of the connection; the catalogue is listed again at most every RELIST_S seconds (a page runs
        dozens of queries) and the connection rebuilt when a version appeared or went."""
        with self._lock:
            now = time.monotonic()
            if self._con is None or now - self._listed_at > RELIST_S:
                seen, self._listed_at = self._listing(), now
                if self._con is None or seen != self._seen:
                    if self._con is not None:
                        self._con.close()
                    self._con, self._seen = connect(self.catalog), seen
            return self._con.cursor()

    def run(self, sql: str, params: Optional[list] = None) -> tuple[list[str], list[tuple]]:
        """One read-only statement (checked as `errata sql` checks it) with bound parameters."""
        check_read_only(sql)
        cur = self.cursor()
        try:
            rel = cur.execute(sql, params or [])
            return [d[0] for d in rel.description], rel.fetchall()
        except duckdb.Error as e:
            raise SQLError(str(e).strip()) from None
        finally:
            cur.close()

    # --- datasets and versions -------------------------------------------------------------------------------
    def datasets(self) -> list[dict[str, Any]]:
        out = []
        for ds, versions in self._listing():
            ms = [self.catalog.manifest(ds, v) for v in versions]
            out.append({"name": ds, "versions": [{"version": m.version, "ref": m.ref, "method": m.method,
                                                  "created_at": m.created_at[:19], "parents": m.parents,
                                                  "rows": {t: e.rows for t, e in m.tables.items()}}
                                                 for m in reversed(ms)]})
        return out

    def manifest(self, dataset: str, version: Optional[int] = None) -> Manifest:
        return self.catalog.manifest(dataset, version)

    def source(self, m: Manifest, table: str) -> str:
        if table not in m.tables:
            raise VersionNotFound(f"{m.ref} has no table '{table}' (tables: {', '.join(m.tables)})")
        return f"{_q(f'{m.dataset}_v{m.version}')}.{_q(table)}"

    def columns(self, m: Manifest, table: str) -> dict[str, str]:
        _, rows = self.run(f"DESCRIBE {self.source(m, table)}")
        return {r[0]: r[1] for r in rows}

    def id_column(self, m: Manifest, table: str) -> str:
        specs = registered_tables()
        if table in specs:
            return specs[table].id_column
        cols = self.columns(m, table)
        return next((c for c in cols if c.endswith("_id") and c != "run_id"), next(iter(cols)))

    def parent_columns(self, m: Manifest, table: str) -> list[str]:
        specs = registered_tables()
        cols = self.columns(m, table)
        declared = list(specs[table].parent_columns) if table in specs else []
        own = self.id_column(m, table)
        more = [c for c, t in cols.items() if c not in declared and c != own and c != "run_id"
                and (c.endswith("_id") and t == "VARCHAR" or c.endswith("_ids") and t == "VARCHAR[]")]
        return declared + more

    # --- filters and pages -----------------------------------------------------------------------------------
    def filter_options(self, m: Manifest, table: str) -> dict[str, list[str]]:
        """For each filter the table has a column for: its values (up to 40, most frequent first)."""
        cols = self.columns(m, table)
        out = {}
        for name, col in FILTERS.items():
            if col not in cols:
                continue
            _, rows = self.run(f"SELECT {_q(col)}::VARCHAR AS v, count(*) FROM {self.source(m, table)} GROUP BY 1 "
                               f"ORDER BY 2 DESC LIMIT 40")
            out[name] = ["(none)" if v is None else v for v, _ in rows]
        return out

    def where(self, m: Manifest, table: str, filters: dict[str, str]) -> tuple[list[str], list[Any]]:
        cols = self.columns(m, table)
        conds, params = [], []
        for name, value in filters.items():
            if value in (None, "") or name in ("q", "where"):
                continue
            col = FILTERS.get(name)
            if col is None or col not in cols:
                raise SQLError(f"{table} has no column for the filter '{name}'")
            if value == "(none)":
                conds.append(f"{_q(col)} IS NULL")
            else:
                conds.append(f"{_q(col)}::VARCHAR = ?")
                params.append(value)
        if filters.get("q"):
            # every text column; lists of structs (messages, segments, steps) only when no plain text column holds
            # the same words (a 10x slower cast on 1M rows otherwise)
            from pipelines.card import TEXT_COLUMNS
            search = [c for c, t in cols.items() if t == "VARCHAR" and c not in LINEAGE]
            if not any(c in TEXT_COLUMNS for c in search):
                search += [c for c, t in cols.items() if "VARCHAR" in t and t != "VARCHAR" and c not in LINEAGE]
            conds.append("(" + " OR ".join(f"{_q(c)}::VARCHAR ILIKE ?" for c in search) + ")")
            params += [f"%{filters['q']}%"] * len(search)
        if filters.get("where"):
            check_read_only(f"SELECT 1 WHERE {filters['where']}")   # '1=1; DROP ...' is two statements: refused
            conds.append(f"({filters['where']})")
        return conds, params

    def page(self, m: Manifest, table: str, filters: Optional[dict[str, str]] = None,
             after: Optional[str] = None, limit: int = PAGE, count: bool = True, order: str = "id",
             offset: int = 0) -> Page:
        """One page of rows. order "id": keyset paging, rows ordered by id, the first with id > `after` (stable
        whatever is published meanwhile; the first page is a top-N over the ids). order "file": offset paging in
        the version's file order (`LIMIT n OFFSET offset`: DuckDB stops reading once the page is full)."""
        filters = {k: v for k, v in (filters or {}).items() if v not in (None, "")}
        idc = self.id_column(m, table)
        conds, params = self.where(m, table, filters)
        base = f"FROM {self.source(m, table)}" + (f" WHERE {' AND '.join(conds)}" if conds else "")
        if order == "file":
            sql = f"SELECT * {base} LIMIT {int(limit) + 1} OFFSET {int(offset)}"
            args = params
        elif order == "id":
            keyset = conds + ([f"{_q(idc)} > ?"] if after else [])
            sql = (f"SELECT * FROM {self.source(m, table)}" + (f" WHERE {' AND '.join(keyset)}" if keyset else "")
                   + f" ORDER BY {_q(idc)} LIMIT {int(limit) + 1}")
            args = params + ([after] if after else [])
        else:
            raise SQLError(f"unknown order '{order}' (id or file)")
        cols, rows = self.run(sql, args)
        total = self.run(f"SELECT count(*) {base}", params)[1][0][0] if count else -1
        more = len(rows) > limit
        dicts = [dict(zip(cols, r)) for r in rows[:limit]]
        nxt = None
        if more and dicts:
            nxt = str(offset + limit) if order == "file" else str(dicts[-1][idc])
        return Page(cols, dicts, total, nxt, idc, sql, filters)

    # --- one row and its lineage -----------------------------------------------------------------------------
    def row(self, m: Manifest, table: str, row_id: str) -> Optional[dict[str, Any]]:
        idc = self.id_column(m, table)
        cols, rows = self.run(f"SELECT * FROM {self.source(m, table)} WHERE {_q(idc)} = ? LIMIT 1", [row_id])
        return dict(zip(cols, rows[0])) if rows else None

    def find(self, m: Manifest, row_id: str, prefer: tuple[str, ...] = ()) -> Optional[tuple[str, dict]]:
        """The (table, row) whose id is `row_id`, looking in `prefer` first, then every table of the version."""
        for table in dict.fromkeys([*[t for t in prefer if t in m.tables], *m.tables]):
            if not m.tables[table].rows:
                continue
            r = self.row(m, table, row_id)
            if r is not None:
                return table, r
        return None

    def parents(self, m: Manifest, table: str, row: dict[str, Any]) -> list[dict[str, Any]]:
        """Rows this one names: every id in its parent columns (and parent_ids), with the table it is in."""
        id_tables = {s.id_column: n for n, s in registered_tables().items() if n in m.tables}
        out, seen = [], set()
        for col in [*self.parent_columns(m, table), "parent_ids"]:
            vals = row.get(col)
            for v in (vals if isinstance(vals, list) else [vals]):
                if not v or not isinstance(v, str) or (col, v) in seen:
                    continue
                seen.add((col, v))
                prefer = tuple(t for t in (row.get("target_table"), id_tables.get(col), table) if t)
                hit = self.find(m, v, prefer)
                out.append({"column": col, "id": v, "table": hit[0] if hit else None,
                            "row": hit[1] if hit else None})
        return out

    def children(self, m: Manifest, row_id: str, limit: int = 20) -> list[dict[str, Any]]:
        """Rows of the version that name `row_id` in a parent column or parent_ids."""
        out = []
        for table, e in m.tables.items():
            if not e.rows:
                continue
            pcs = self.parent_columns(m, table)
            cols = self.columns(m, table)
            conds = [f"{_q(c)} = ?" if not c.endswith("_ids") else f"list_contains({_q(c)}, ?)" for c in pcs]
            if "parent_ids" in cols:
                conds.append("list_contains(parent_ids, ?)")
            if not conds:
                continue
            idc = self.id_column(m, table)
            _, rows = self.run(f"SELECT * FROM {self.source(m, table)} WHERE {' OR '.join(conds)} "
                               f"ORDER BY {_q(idc)} LIMIT {limit}", [row_id] * len(conds))
            names = list(cols)
            for r in rows:
                d = dict(zip(names, r))
                if d[idc] != row_id:
                    out.append({"table": table, "id": d[idc], "row": d})
        return out

    def export_rows(self, m: Manifest, row_id: str, limit: int = 20) -> list[dict[str, Any]]:
        """Rows of exports under <root>/exports that came from this version and name `row_id` (their lineage
        columns), with the export file they are in."""
        base = self.catalog.root.path("exports")
        if not self.catalog.root.local or not os.path.isdir(base):
            return []
        out = []
        for dirpath, _, files in sorted(os.walk(base)):
            for f in sorted(files):
                if not f.endswith(".parquet"):
                    continue
                path = os.path.join(dirpath, f)
                try:
                    cols, _ = self.run(f"SELECT * FROM read_parquet({_lit(path)}) LIMIT 0")
                except SQLError:
                    continue
                ids = [c for c in cols if c.endswith("_id")]
                if "source_version" not in cols or not ids:
                    continue
                cond = " OR ".join(f"{_q(c)} = ?" for c in ids)
                _, rows = self.run(f"SELECT file_row_number, {', '.join(_q(c) for c in ids)} FROM read_parquet("
                                   f"{_lit(path)}, file_row_number=true) WHERE source_version = ? AND ({cond}) "
                                   f"LIMIT {limit}", [m.ref] + [row_id] * len(ids))
                for r in rows:
                    out.append({"file": os.path.relpath(path, self.catalog.root.path()), "row": r[0],
                                "columns": [c for c, v in zip(ids, r[1:]) if v == row_id]})
        return out[:limit]

    def tree_nodes(self, m: Manifest, tree_id: str) -> list[dict[str, Any]]:
        if "nodes" not in m.tables:
            return []
        cols, rows = self.run(f"SELECT * FROM {self.source(m, 'nodes')} WHERE tree_id = ? ORDER BY seq", [tree_id])
        return [dict(zip(cols, r)) for r in rows]

    def card(self, m: Manifest) -> tuple[str, list[str], bool]:
        """(the card's markdown, its plot file names, whether it was written at publish time). A version published
        before cards existed gets one computed now (not written: published versions are never changed)."""
        from pipelines.card import CARD, PLOTS, build_card
        root = self.catalog.root
        vdir = self.catalog.version_dir(m.dataset, m.version)
        if root.exists(f"{vdir}/{CARD}"):
            with root.fs.open(f"{vdir}/{CARD}", "rb") as f:
                text = f.read().decode()
            return text, root.ls_names(f"{vdir}/{PLOTS}"), True
        return build_card(root, vdir, m, with_plots=False)[0], [], False
