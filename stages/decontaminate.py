"""Decontamination against evaluation sets (global): a problem (or an output) that contains an evaluation item is
dropped with reason `contaminated:<set>`, and the item it matched is recorded.

The recipe names the sets (`clean.decontaminate.sets`), each a task source errata reads (jsonl, parquet, hf, ...:
stages/tasks.py; only the question, and `id_field` if set, is read: no answer needed) with a name. Their questions are loaded once per build and indexed two ways:
- word n-grams (`ngram`, 13 by default, as common in the field): a row that shares at least `min_ngram_matches`
  of an item's n-grams matches it. An item shorter than `ngram` words is indexed whole (its own length), if it has
  at least `min_words` words (shorter items would match too much ordinary text);
- MinHash LSH (stages/minhash.py) when `near_dup` is on: a row whose estimated Jaccard similarity to an item's
  word shingles reaches `threshold` matches it (a paraphrase with a changed number or name shares no 13-gram).

`Decontaminate` checks `problems.question` and runs before the method's stages (no work is spent on a contaminated
problem); `DecontaminateOutputs` checks the table and column named in `outputs` (e.g. attempts.completion) after
them. Both scan the build shard by shard and write what they found to the build-scope table `contamination`. The
sets' names, sizes and checksums go into the manifest (the stage's entry under `models`).
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import Field, field_validator

from schemas.clean_rows import Contamination  # noqa: F401  (registers contamination)
from schemas.errors import ConfigError
from schemas.registry import get_table
from schemas.rows import make_id
from stages.base import GlobalStage, StageContext, StageStats
from stages.minhash import MinHasher, MinHashIndex, words
from stages.options import Options
from stages.tasks import TaskSourceConfig, load_problems

CONTAMINATED = "contaminated"


class EvalSetConfig(TaskSourceConfig):
    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$", description="the set's name: drop reason "
                                                                     "contaminated:<name>, contamination.eval_set")


class DecontaminateConfig(Options):
    sets: list[EvalSetConfig] = Field(..., description="evaluation sets to check against: each a "
                                                                        "task source (kind, path, fields as in "
                                                                        "`tasks`) with a name")
    ngram: int = Field(13, ge=1, description="words per n-gram of the overlap check")
    min_ngram_matches: int = Field(1, ge=1, description="n-grams a row must share with one evaluation item to "
                                                        "match it")
    min_words: int = Field(8, ge=1, description="an evaluation item shorter than `ngram` words is indexed whole "
                                                "if it has at least this many words (else only by similarity)")
    near_dup: bool = Field(True, description="also match by MinHash similarity (paraphrases sharing no n-gram)")
    threshold: float = Field(0.7, gt=0, le=1, description="estimated Jaccard similarity of word shingles at or "
                                                          "above which a row matches an item")
    shingle_size: int = Field(5, ge=1, description="words per shingle of the similarity check")
    num_perm: int = Field(128, ge=8, le=1024, description="MinHash permutations of the similarity check")
    backend: Literal["rensa", "datasketch"] = Field("rensa", description="MinHash library")
    outputs: Optional[str] = Field(None, description="also check an output column after the method's stages: "
                                                     "TABLE.COLUMN, e.g. attempts.completion")

    @field_validator("sets")
    @classmethod
    def _unique_names(cls, v: list[EvalSetConfig]) -> list[EvalSetConfig]:
        if not v:
            raise ValueError("name at least one evaluation set ({name, kind, path})")
        names = [s.name for s in v]
        if len(set(names)) != len(names):
            raise ValueError(f"evaluation set names must be unique ({names})")
        return v

    @field_validator("outputs")
    @classmethod
    def _table_dot_column(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and (v.count(".") != 1 or not all(v.split("."))):
            raise ValueError(f"expected TABLE.COLUMN (e.g. attempts.completion), got {v!r}")
        return v


def _file_sha256(path: str) -> Optional[str]:
    p = Path(path).expanduser()
    if not p.is_file():
        return None
    h = hashlib.sha256()
    with p.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_LOADED: dict[str, tuple[list[dict], dict[str, Any]]] = {}    # set config JSON -> (items, description)


def load_eval_set(s: EvalSetConfig) -> tuple[list[dict], dict[str, Any]]:
    """(items {eval_id, question}, description {name, kind, path, rows, sha256, file_sha256}) of one set, loaded
    once per process. sha256: of the questions as compared (in order), whatever the kind; file_sha256: of the file
    itself (jsonl, parquet)."""
    key = s.model_dump_json()
    if key not in _LOADED:
        src = TaskSourceConfig(**{k: v for k, v in s.model_dump().items() if k != "name"})
        if src.kind in ("version", "env"):
            raise ConfigError(f"clean.decontaminate.sets: '{s.name}' has kind {src.kind}; an evaluation set is a "
                              f"file or dataset (jsonl, parquet, hf) or builtin")
        rows = load_problems(src, None, questions_only=True)
        items = [{"eval_id": p.get("source_id", str(p.get("source_index"))), "question": p["question"]}
                 for p in rows]
        h = hashlib.sha256("\x1e".join(i["question"] for i in items).encode("utf-8")).hexdigest()
        desc = {"name": s.name, "kind": src.kind, **({"path": src.path} if src.path else {}), "rows": len(items),
                "sha256": h}
        if src.kind in ("jsonl", "parquet") and src.path:
            desc["file_sha256"] = _file_sha256(src.path)
        _LOADED[key] = (items, desc)
    return _LOADED[key]


class EvalIndex:
    """The evaluation items' n-grams and MinHash signatures; `match(text)` -> the best match or None."""

    def __init__(self, c: DecontaminateConfig):
        self.c = c
        self.ngrams: dict[str, list[int]] = {}         # n-gram text -> item numbers that have it
        self.short_lengths: set[int] = set()           # lengths of the items indexed whole (< ngram words)
        self.items: list[tuple[str, str, int]] = []    # item number -> (set, eval id, its n-gram count)
        self.index = MinHashIndex(MinHasher(c.backend, c.num_perm, c.shingle_size), c.threshold) \
            if c.near_dup else None
        self.index_items: list[int] = []               # MinHash key -> item number
        self.described = []
        for s in c.sets:
            rows, desc = load_eval_set(s)
            self.described.append(desc)
            for it in rows:
                self._add(s.name, it)

    def _add(self, set_name: str, item: dict) -> None:
        n = len(self.items)
        w = words(item["question"])
        grams = self._grams(w)
        if len(w) < self.c.ngram:
            if len(w) >= self.c.min_words:
                self.short_lengths.add(len(w))
            else:
                grams = set()
        for g in grams:
            lst = self.ngrams.setdefault(g, [])
            if not lst or lst[-1] != n:
                lst.append(n)
        self.items.append((set_name, item["eval_id"], len(grams)))
        if self.index is not None:
            sk = self.index.hasher.sketch(item["question"])
            if sk is not None:
                self.index.add(sk)
                self.index_items.append(n)

    def _grams(self, w: list[str]) -> set[str]:
        n = self.c.ngram
        if len(w) < n:
            return {" ".join(w)} if w else set()
        return {" ".join(w[i:i + n]) for i in range(len(w) - n + 1)}

    def match(self, text: Optional[str]) -> Optional[dict[str, Any]]:
        w = words(text)
        if not w:
            return None
        grams = self._grams(w) if len(w) >= self.c.ngram else set()
        for L in self.short_lengths:
            grams |= {" ".join(w[i:i + L]) for i in range(len(w) - L + 1)}
        hits: dict[int, list[str]] = {}
        for g in grams:
            for n in self.ngrams.get(g, ()):
                hits.setdefault(n, []).append(g)
        best = max(hits, key=lambda n: (len(hits[n]), -n), default=None)
        if best is not None and len(hits[best]) >= self.c.min_ngram_matches:
            set_name, eval_id, _ = self.items[best]
            return {"eval_set": set_name, "eval_id": eval_id, "match": "ngram",
                    "score": round(len(hits[best]) / max(1, len(grams)), 4), "evidence": sorted(hits[best])[0]}
        if self.index is not None and self.index.size:
            sk = self.index.hasher.sketch(text)
            hit = self.index.best_match(sk) if sk is not None else None
            if hit is not None:
                set_name, eval_id, _ = self.items[self.index_items[hit[0]]]
                return {"eval_set": set_name, "eval_id": eval_id, "match": "near_duplicate",
                        "score": round(hit[1], 4), "evidence": None}
        return None


class Decontaminate(GlobalStage):
    kind = "decontaminate"
    description = "global: drop problems that match an evaluation set (n-gram overlap, MinHash similarity)"
    config_class = DecontaminateConfig
    build_tables = ("contamination",)
    scans_shards = True

    def __init__(self, config: Optional[Options] = None, name: Optional[str] = None,
                 context: StageContext = StageContext()):
        config = config if config is not None else DecontaminateConfig()
        self.table, self.column = self.target(config)
        super().__init__(config, name, context)
        spec = get_table(self.table)
        cols = {self.column, spec.id_column, "drop_reason"} | ({"problem_id"} & set(spec.columns))
        self.reads = {self.table: tuple(sorted(cols))}
        self._index: Optional[EvalIndex] = None
        self._found: list[dict] = []
        self._rows = 0
        self._seconds = 0.0

    @staticmethod
    def target(config: DecontaminateConfig) -> tuple[str, str]:
        return "problems", "question"

    def describe(self) -> dict[str, Any]:
        c = self.config
        sets = [load_eval_set(s)[1] for s in c.sets]
        return {**super().describe(), "table": self.table, "column": self.column, "eval_sets": sets,
                **c.model_dump(exclude={"sets"})}

    def scan(self, tables: dict[str, list[dict]]) -> None:
        t0 = time.perf_counter()
        if self._index is None:
            self._index = EvalIndex(self.config)
        id_col = get_table(self.table).id_column
        for r in tables.get(self.table, []):
            if r.get("drop_reason"):
                continue
            self._rows += 1
            m = self._index.match(r.get(self.column))
            if m is not None:
                self._found.append({"row_id": str(r[id_col]), "problem_id": r.get("problem_id"), **m})
        self._seconds += time.perf_counter() - t0

    def decide(self, tables: dict[str, list[dict]]) -> dict[str, str]:
        return {f["row_id"]: f"{CONTAMINATED}:{f['eval_set']}" for f in self._found}

    def summarize(self, tables: dict[str, list[dict]], stats: StageStats) -> dict[str, list[dict]]:
        rows = [{"contamination_id": make_id(self.name, self.table, f["row_id"], prefix="ct-"), "stage": self.name,
                 "table": self.table, **f, **self.lineage([f["row_id"]])} for f in self._found]
        stats.count("rows_scanned", self._rows)
        stats.count("eval_items", len(self._index.items) if self._index else 0)
        for f in self._found:
            stats.count(f"match_{f['match']}")
        stats.count("scan_ms", int(self._seconds * 1000))
        return {"contamination": rows}


class DecontaminateOutputs(Decontaminate):
    kind = "decontaminate_outputs"
    description = "global: drop output rows (clean.decontaminate.outputs) that match an evaluation set"

    @staticmethod
    def target(config: DecontaminateConfig) -> tuple[str, str]:
        if not config.outputs:
            raise ConfigError("clean.decontaminate.outputs: set TABLE.COLUMN to check outputs")
        table, column = config.outputs.split(".")
        return table, column

