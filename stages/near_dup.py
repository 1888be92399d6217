"""Near-duplicate rows across the whole build (global): MinHash LSH over one text column of one table.

The stage scans the build shard by shard (`scans_shards`): for each live row, in shard order, it computes the
MinHash signature of the text's word shingles and asks the LSH index of the rows kept so far for the most similar
one. At or above `threshold` (estimated Jaccard) the row joins that row's cluster and is dropped with reason
`near_duplicate`; else it is kept and indexed. Only the kept rows' signatures (and ids) stay in memory, never the
texts. `within` (a column, e.g. problem_id) compares only rows that share its value. A cluster is one kept row
(the first seen) and the rows that matched it: a row is compared with kept rows only, so clusters do not chain
(A~B and B~C with A!~C leave C kept). Every member of a cluster of two or more gets a row in the build-scope table
`near_duplicates` (cluster id, kept or not, similarity).

A recipe turns it on with one line, `clean: {near_dup: {table: attempts, column: completion}}` (pipelines/clean.py
places it: before the method's stages for `problems`, after them for any other table).
"""
from __future__ import annotations

import time
from typing import Any, Literal, Optional

from pydantic import Field

from schemas.clean_rows import NearDuplicate  # noqa: F401  (registers near_duplicates)
from schemas.registry import get_table
from schemas.rows import make_id
from stages.base import GlobalStage, StageContext, StageStats
from stages.minhash import MinHasher, MinHashIndex
from stages.options import Options

NEAR_DUPLICATE = "near_duplicate"


class NearDupConfig(Options):
    table: str = Field("attempts", description="the table whose rows are compared (problems: before the method's "
                                               "stages, so no work is spent on a repeat; any other: after them)")
    column: str = Field("completion", description="the text column compared (e.g. problems.question, "
                                                  "attempts.completion)")
    threshold: float = Field(0.8, gt=0, le=1, description="estimated Jaccard similarity of word shingles at or "
                                                          "above which a row is a near duplicate of a kept row")
    shingle_size: int = Field(5, ge=1, description="words per shingle (texts shorter than this: one shingle)")
    num_perm: int = Field(128, ge=8, le=1024, description="MinHash permutations (signature length; more: finer "
                                                          "similarity estimates, more memory: 4 bytes each per "
                                                          "kept row)")
    within: Optional[str] = Field(None, description="compare only rows with the same value of this column (e.g. "
                                                    "problem_id: the samples of one problem); none: the whole "
                                                    "table")
    backend: Literal["rensa", "datasketch"] = Field("rensa", description="MinHash library: rensa (Rust, the "
                                                                         "faster one here) or datasketch")


class NearDuplicates(GlobalStage):
    kind = "near_dup"
    description = "global: drop near-duplicate rows of a table's text column (MinHash LSH), keep one per cluster"
    config_class = NearDupConfig
    build_tables = ("near_duplicates",)
    scans_shards = True

    def __init__(self, config: Optional[Options] = None, name: Optional[str] = None,
                 context: StageContext = StageContext()):
        config = config if config is not None else NearDupConfig()
        self.table = config.table
        super().__init__(config, name, context)
        spec = get_table(self.table)
        cols = {config.column, spec.id_column, "drop_reason", *([config.within] if config.within else [])}
        if "problem_id" in spec.columns:
            cols.add("problem_id")
        self.reads = {self.table: tuple(sorted(cols))}
        self._reset()

    def _reset(self) -> None:
        self._index: Optional[MinHashIndex] = None
        self._kept: list[tuple[str, Optional[str]]] = []     # index key -> (row id, problem id) of a kept row
        self._members: dict[int, list[tuple[str, Optional[str], float]]] = {}   # key -> dropped (id, pid, sim)
        self._rows = self._empty = 0
        self._seconds = 0.0

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), **self.config.model_dump()}

    def scan(self, tables: dict[str, list[dict]]) -> None:
        t0 = time.perf_counter()
        c = self.config
        if self._index is None:
            self._index = MinHashIndex(MinHasher(c.backend, c.num_perm, c.shingle_size), c.threshold)
        id_col = get_table(self.table).id_column
        for r in tables.get(self.table, []):
            if r.get("drop_reason"):
                continue
            self._rows += 1
            sk = self._index.hasher.sketch(r.get(c.column), None if c.within is None else str(r.get(c.within)))
            if sk is None:              # no words: nothing to compare, kept
                self._empty += 1
                continue
            hit = self._index.best_match(sk)
            if hit is None:
                self._index.add(sk)
                self._kept.append((str(r[id_col]), r.get("problem_id")))
            else:
                self._members.setdefault(hit[0], []).append((str(r[id_col]), r.get("problem_id"), hit[1]))
        self._seconds += time.perf_counter() - t0

    def decide(self, tables: dict[str, list[dict]]) -> dict[str, str]:
        return {rid: NEAR_DUPLICATE for members in self._members.values() for rid, _, _ in members}

    def summarize(self, tables: dict[str, list[dict]], stats: StageStats) -> dict[str, list[dict]]:
        rows = []
        for key, members in sorted(self._members.items()):
            kept_id, kept_pid = self._kept[key]
            cluster = make_id(self.name, self.table, kept_id, prefix="c-")
            for rid, pid, sim, kept in [(kept_id, kept_pid, 1.0, True), *((m[0], m[1], m[2], False)
                                                                          for m in members)]:
                rows.append({"near_duplicate_id": make_id(self.name, self.table, rid, prefix="nd-"),
                             "stage": self.name, "table": self.table, "row_id": rid, "problem_id": pid,
                             "cluster_id": cluster, "kept": kept, "kept_row_id": kept_id,
                             "similarity": round(sim, 4), **self.lineage([rid])})
        stats.count("rows_scanned", self._rows)
        stats.count("rows_without_words", self._empty)
        stats.count("clusters", len(self._members))
        stats.count("signature_kib", self._index.signature_bytes // 1024 if self._index else 0)
        stats.count("scan_ms", int(self._seconds * 1000))
        return {"near_duplicates": rows}
