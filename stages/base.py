"""The stage contract.

A stage is plain Python over one shard's tables (each a list of row dicts). It declares what it reads (tables and the
columns it needs), what it writes (tables) and the columns it fills (`fills`, table -> columns), so a recipe's chain
is checked before any work: a column a stage needs must be filled by an earlier stage or given by the task source. `setup()` builds
clients (an LLM engine client for the role it names), never the constructor, so a stage pickles into a Ray actor.
`run()` maps the shard's input tables to output tables and reports what happened in StageStats:
in / out / dropped_<reason> / errors, never a silent drop.

Three shapes cover almost every stage; each implements only its per-batch step, never the loop:
- MapStage (1:1): rows of `table` in, the same rows (with new columns) out, same order;
- ExpandStage (one -> many): each live row of `source` gives 0..n rows of `target`;
- FilterStage: each live row of `table` is kept or gets a `drop_reason`.
A row that fails (prompt too long, checker timeout, unparseable in a way that makes the row unusable) comes back as
`Failed(reason, ...)`: it leaves the table and becomes an `errors` record with stage, table, row id, reason and raw
input/output. A dropped row stays in its table with `drop_reason` set (queryable, skipped by later stages and by
exports). A GlobalStage sees one table across the whole build (dedup, balancing) and runs between per-shard stages.

The shapes hold stages to their declarations: a per-batch step that returns more or fewer results than the rows it
was given, sets a column it does not declare in `fills`, or emits rows of a table it does not declare in `writes`
raises StageError naming the stage. A stage writes a second table without overriding `run()`: `self.emit(table,
rows)` inside its per-batch step. The id column, `drop_reason` and the lineage columns need no declaration.
"""
from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, fields as dataclass_fields
from typing import Any, ClassVar, Optional

from schemas.errors import StageError
from schemas.rows import Lineage, make_id, utcnow
from schemas.registry import get_table
from stages.options import NoOptions, Options


# --- counting --------------------------------------------------------------------------------------------------
@dataclass
class StageStats:
    """Counts of one stage over one or more shards. `dropped` maps reason -> count; `counts` holds stage-specific
    counters (parse_ok, located, ...); t_start/t_end are wall-clock bounds (epoch seconds) of the work."""
    rows_in: int = 0
    rows_out: int = 0
    errors: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    error_reasons: dict[str, int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    t_start: Optional[float] = None
    t_end: Optional[float] = None

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n

    def error(self, reason: str, n: int = 1) -> None:
        self.errors += n
        self.error_reasons[reason] = self.error_reasons.get(reason, 0) + n

    def count(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n

    def merge(self, other: "StageStats") -> "StageStats":
        self.rows_in += other.rows_in
        self.rows_out += other.rows_out
        self.errors += other.errors
        for k, v in other.dropped.items():
            self.drop(k, v)
        for k, v in other.error_reasons.items():
            self.error_reasons[k] = self.error_reasons.get(k, 0) + v
        for k, v in other.counts.items():
            self.count(k, v)
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.seconds += other.seconds
        if other.t_start is not None:
            self.t_start = other.t_start if self.t_start is None else min(self.t_start, other.t_start)
        if other.t_end is not None:
            self.t_end = other.t_end if self.t_end is None else max(self.t_end, other.t_end)
        return self

    @property
    def wall_seconds(self) -> float:
        return max(0.0, self.t_end - self.t_start) if self.t_start is not None and self.t_end is not None else 0.0

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"in": self.rows_in, "out": self.rows_out, "errors": self.errors}
        d.update({f"dropped_{k}": v for k, v in sorted(self.dropped.items())})
        if self.error_reasons:
            d["error_reasons"] = dict(sorted(self.error_reasons.items()))
        if self.counts:
            d["counts"] = dict(sorted(self.counts.items()))
            if self.counts.get("parsed"):       # an LLM stage that parses its replies: its parse rate
                d["parse_rate"] = round(self.counts.get("parse_ok", 0) / self.counts["parsed"], 4)
        if self.prompt_tokens or self.completion_tokens:
            d["prompt_tokens"], d["completion_tokens"] = self.prompt_tokens, self.completion_tokens
        d["seconds"] = round(self.seconds, 3)
        if self.t_start is not None:
            d["t_start"], d["t_end"] = round(self.t_start, 3), round(self.t_end or self.t_start, 3)
            d["wall_seconds"] = round(self.wall_seconds, 3)
            if self.completion_tokens and self.wall_seconds > 0:
                d["tokens_per_s"] = round(self.completion_tokens / self.wall_seconds, 1)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StageStats":
        s = cls(rows_in=d.get("in", 0), rows_out=d.get("out", 0), errors=d.get("errors", 0),
                prompt_tokens=d.get("prompt_tokens", 0), completion_tokens=d.get("completion_tokens", 0),
                seconds=d.get("seconds", 0.0), error_reasons=dict(d.get("error_reasons", {})),
                counts=dict(d.get("counts", {})), t_start=d.get("t_start"), t_end=d.get("t_end"))
        s.dropped = {k[len("dropped_"):]: v for k, v in d.items() if k.startswith("dropped_")}   # parse_rate: derived
        return s


# --- what stages get and give ------------------------------------------------------------------------------------
@dataclass
class Failed:
    """The outcome of a row that failed inside a stage (it becomes an `errors` record)."""
    reason: str
    message: str = ""
    raw_input: Optional[str] = None     # what the stage sent (a prompt, a JSON of the inputs); default: the row
    raw_output: Optional[str] = None    # what came back, if anything
    key: str = ""                       # tells apart several failures of one row (one per episode of a task)


@dataclass(frozen=True)
class StageContext:
    """Build-level facts a stage records on its rows, and the build's engine settings by role (what an LLM stage
    records as its model; the engines themselves are started by the build, not by stages)."""
    run_id: str = ""
    method: str = ""
    engines: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ShardInfo:
    shard_id: int = 0
    shards_total: int = 1


@dataclass
class StageResult:
    tables: dict[str, list[dict]]       # the tables this stage writes, whole for the shard
    errors: list[dict]                  # `errors` records of rows that failed here
    stats: StageStats


def is_live(row: dict) -> bool:
    """A row later stages still work on: not dropped."""
    return not row.get("drop_reason")


def _json(obj: Any, limit: int = 20000) -> str:
    return json.dumps(obj, default=str, ensure_ascii=False)[:limit]


LINEAGE_COLUMNS = tuple(f.name for f in dataclass_fields(Lineage))


def columns_except(row_type: type, *excluded: str) -> tuple[str, ...]:
    """The columns of `row_type` but `excluded` (and the lineage columns): what a stage that makes whole rows fills,
    less what later stages fill."""
    return tuple(f.name for f in dataclass_fields(row_type) if f.name not in excluded and f.name not in LINEAGE_COLUMNS)
_EMITTED = threading.local()      # per thread: id(stage) -> {table: rows emitted during its per-batch step}


# --- the base class ------------------------------------------------------------------------------------------------
class Stage:
    """Base of every stage. A subclass sets `kind`, `config_class`, `reads` (table -> columns needed) and `writes`,
    and implements `run` (or uses one of the shapes below). Instances carry a `name` (the recipe's name for this
    step; config section and stats key) and their typed `config`."""

    kind: ClassVar[str] = "stage"
    description: ClassVar[str] = ""
    config_class: ClassVar[type[Options]] = NoOptions
    reads: dict[str, tuple[str, ...]] = {}
    writes: tuple[str, ...] = ()
    # table -> the columns this stage fills in it (beyond the id column, drop_reason and lineage). A table it writes
    # but does not name here: every column (a stage of a third party that declares nothing is not held to it).
    fills: dict[str, tuple[str, ...]] = {}
    is_global: ClassVar[bool] = False

    def __init__(self, config: Optional[Options] = None, name: Optional[str] = None,
                 context: StageContext = StageContext()):
        self.config = config if config is not None else self.config_class()
        self.name = name or self.kind
        self.context = context
        self.reads = dict(type(self).reads)
        self.writes = tuple(type(self).writes)
        self.fills = dict(type(self).fills)

    @property
    def where(self) -> str:
        return f"stage '{self.name}' ({self.kind})"

    def filled_columns(self, table: str) -> Optional[set[str]]:
        """The columns this stage may set in `table` (None: any column, it declares none for that table)."""
        if table not in self.fills:
            return None
        return set(self.fills[table]) | {get_table(table).id_column, "drop_reason", *LINEAGE_COLUMNS}

    def check_result_count(self, got: int, want: int, table: str) -> None:
        if got != want:
            raise StageError(f"{self.where} returned {got} results for {want} rows of '{table}': a per-batch step "
                             f"returns exactly one result per row")

    def check_new_row(self, table: str, row: dict) -> None:
        """A row this stage made sets only columns it fills (a null or an empty list or text is not a value: a
        placeholder for a later stage)."""
        allowed = self.filled_columns(table)
        if allowed is not None:
            extra = sorted(k for k, v in row.items() if k not in allowed and v is not None and v != [] and v != "")
            if extra:
                raise StageError(f"{self.where} sets {table}.{extra[0]}, which it does not declare in `fills` "
                                 f"({', '.join(sorted(self.fills[table]))})")

    def check_changed_row(self, table: str, before: dict, after: dict) -> None:
        """A row this stage passed on changes only columns it fills."""
        allowed = self.filled_columns(table)
        if allowed is not None:
            extra = sorted(k for k, v in after.items() if k not in allowed and before.get(k) != v)
            if extra:
                raise StageError(f"{self.where} changes {table}.{extra[0]}, which it does not declare in `fills` "
                                 f"({', '.join(sorted(self.fills[table]))})")

    # --- a second table
    def emit(self, table: str, rows: list[dict]) -> None:
        """Rows of another table this stage writes (declared in `writes`), made in its per-batch step."""
        buffers = getattr(_EMITTED, "by_stage", {}).get(id(self))
        if buffers is None:
            raise StageError(f"{self.where}: emit() is for the per-batch step (process, expand, ...)")
        if table not in buffers:
            raise StageError(f"{self.where} emits rows of '{table}', which is not one of the other tables it "
                             f"declares in `writes` ({', '.join(sorted(buffers)) or 'none'})")
        for r in rows:
            self.check_new_row(table, r)
        buffers[table].extend(rows)

    @contextmanager
    def collecting(self, primary: str):
        """Collect what the per-batch step emits: {table: rows} for each written table other than `primary`."""
        by_stage = getattr(_EMITTED, "by_stage", None)
        if by_stage is None:
            by_stage = _EMITTED.by_stage = {}
        buffers: dict[str, list[dict]] = {t: [] for t in self.writes if t != primary}
        outer = by_stage.get(id(self))
        by_stage[id(self)] = buffers
        try:
            yield buffers
        finally:
            if outer is None:
                by_stage.pop(id(self), None)
            else:
                by_stage[id(self)] = outer

    # --- lifecycle
    @property
    def role(self) -> Optional[str]:
        """The engine role this stage uses (LLM stages name it in their config), else None."""
        return getattr(self.config, "role", None)

    @property
    def roles(self) -> tuple[str, ...]:
        """Every engine role this stage uses: its `role`, and more for a stage that calls several models (STeP's
        synthesis asks an agent and a teacher). The build starts and keeps the engines of all of them."""
        return (self.role,) if self.role else ()

    def setup(self, engines: Any = None) -> None:
        """Build clients. `engines.client(role)` gives the shared engine of a role. Called once per process."""

    def teardown(self) -> None:
        """Release what setup built."""

    def describe(self) -> dict[str, Any]:
        """What the manifest records about this stage (settings, template versions)."""
        return {"kind": self.kind, **({"role": self.role} if self.role else {})}

    def templates(self) -> dict[str, str]:
        """Prompt templates this stage uses: name -> version."""
        return {}

    # --- work
    def run(self, tables: dict[str, list[dict]], shard: ShardInfo = ShardInfo()) -> StageResult:
        raise NotImplementedError

    # --- helpers for subclasses
    def lineage(self, parents: list[str]) -> dict[str, Any]:
        return {"run_id": self.context.run_id, "method": self.context.method, "created_at": utcnow(),
                "parent_ids": [p for p in parents if p]}

    def error_record(self, row: dict, table: str, failed: Failed) -> dict:
        """An `errors` row for `row` of `table` that failed here."""
        id_col = get_table(table).id_column
        row_id = str(row.get(id_col) or "")
        raw_input = failed.raw_input
        if raw_input is None:
            raw_input = _json({k: v for k, v in row.items() if v is not None and k not in ("created_at",)})
        key = (failed.key,) if failed.key else ()
        return {"error_id": make_id(self.name, table, row_id, failed.reason, *key, prefix="e-"),
                "row_id": row_id, "table": table, "problem_id": row.get("problem_id"), "stage": self.name,
                "reason": failed.reason, "message": (failed.message or "")[:2000], "raw_input": raw_input,
                "raw_output": failed.raw_output, **self.lineage([row_id])}

    def _begin(self) -> tuple[StageStats, float]:
        t0 = time.perf_counter()
        return StageStats(t_start=time.time()), t0

    @staticmethod
    def _end(stats: StageStats, t0: float) -> StageStats:
        stats.seconds = time.perf_counter() - t0
        stats.t_end = time.time()
        return stats


class MapStage(Stage):
    """1:1 over `table`: each live row comes back as a row (same order) or as Failed. Dropped rows pass through."""

    table: ClassVar[str] = ""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        if not self.writes:
            self.writes = (self.table,)

    def process(self, rows: list[dict], tables: dict[str, list[dict]], stats: StageStats,
                shard: ShardInfo) -> list[dict | Failed]:
        raise NotImplementedError

    def run(self, tables: dict[str, list[dict]], shard: ShardInfo = ShardInfo()) -> StageResult:
        stats, t0 = self._begin()
        rows = tables.get(self.table, [])
        live = [r for r in rows if is_live(r)]
        stats.rows_in = len(live)
        with self.collecting(self.table) as emitted:
            results = list(self.process(live, tables, stats, shard)) if live else []
        self.check_result_count(len(results), len(live), self.table)
        done = iter(results)
        out, errors = [], []
        for r in rows:
            if not is_live(r):
                out.append(r)
                continue
            res = next(done)
            if isinstance(res, Failed):
                errors.append(self.error_record(r, self.table, res))
                stats.error(res.reason)
            else:
                self.check_changed_row(self.table, r, res)
                out.append(res)
                if is_live(res):
                    stats.rows_out += 1
                else:
                    stats.drop(res["drop_reason"])
        return StageResult({self.table: out, **emitted}, errors, self._end(stats, t0))


class FilterStage(MapStage):
    """Keep or drop each live row of `table`: `drop_reasons` returns a reason (or None) per row, in order."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.fills.setdefault(self.table, ())      # a filter sets drop_reason only

    def drop_reasons(self, rows: list[dict], tables: dict[str, list[dict]]) -> list[Optional[str]]:
        raise NotImplementedError

    def process(self, rows, tables, stats, shard):
        reasons = list(self.drop_reasons(rows, tables))
        self.check_result_count(len(reasons), len(rows), self.table)
        return [dict(r, drop_reason=reason) for r, reason in zip(rows, reasons)]


class ExpandStage(Stage):
    """One -> many: each live row of `source` gives a list of `target` rows (or Failed). The target table is
    replaced for the shard, or extended when `append` is set (then the stage also reads it). The list may also
    hold Failed items: units of the row that failed alone (one episode of a task), each an `errors` record while
    its siblings stand (give each a distinct `key`)."""

    source: ClassVar[str] = ""
    target: ClassVar[str] = ""
    append: ClassVar[bool] = False

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        if not self.writes:
            self.writes = (self.target,)
        if self.append:
            self.reads.setdefault(self.target, ())

    def expand(self, rows: list[dict], tables: dict[str, list[dict]], stats: StageStats,
               shard: ShardInfo) -> list[list[dict] | Failed]:
        raise NotImplementedError

    def run(self, tables: dict[str, list[dict]], shard: ShardInfo = ShardInfo()) -> StageResult:
        stats, t0 = self._begin()
        live = [r for r in tables.get(self.source, []) if is_live(r)]
        stats.rows_in = len(live)
        out = list(tables.get(self.target, [])) if self.append else []
        errors = []
        with self.collecting(self.target) as emitted:
            results = list(self.expand(live, tables, stats, shard)) if live else []
        self.check_result_count(len(results), len(live), self.source)
        for r, res in zip(live, results):
            if isinstance(res, Failed):
                errors.append(self.error_record(r, self.source, res))
                stats.error(res.reason)
                continue
            for child in res:
                if isinstance(child, Failed):
                    errors.append(self.error_record(r, self.source, child))
                    stats.error(child.reason)
                    continue
                self.check_new_row(self.target, child)
                out.append(child)
                if is_live(child):
                    stats.rows_out += 1
                else:
                    stats.drop(child["drop_reason"])
        return StageResult({self.target: out, **emitted}, errors, self._end(stats, t0))


class GlobalStage(Stage):
    """Sees the whole build: `decide` gets the columns it `reads` of every shard (one list of rows per table, each
    row with its `__shard`), and returns drop reasons by row id for `table`; the runner applies them shard by shard
    (so full rows are never all in memory at once). A global stage may also write build-scope tables (registered
    with scope="build", e.g. a distribution measured over every shard) by returning them from `summarize`; later
    stages of every shard read them like any table. Counting and error rules are those of every stage.

    A stage whose data would not fit in memory at once (the text of every row) sets `scans_shards`: the runner then
    hands it one shard at a time to `scan` (the columns it reads, each row with its `__shard`) and calls `decide`
    and `summarize` with no rows ({}) afterwards; the stage keeps what it needs across shards (signatures, not
    texts). Shards are scanned in order, so the decisions are the same on a rerun."""

    is_global = True
    table: ClassVar[str] = ""            # the shard table it may drop rows of ("" when it only summarizes)
    build_tables: ClassVar[tuple[str, ...]] = ()
    scans_shards: ClassVar[bool] = False

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        if not self.writes:
            self.writes = tuple(t for t in (self.table, *self.build_tables) if t)
        if self.table:
            self.fills.setdefault(self.table, ())  # a global stage's decisions set drop_reason only
            self.reads.setdefault(self.table, ())
            cols = set(self.reads[self.table]) | {get_table(self.table).id_column, "drop_reason"}
            self.reads[self.table] = tuple(sorted(cols))

    def scan(self, tables: dict[str, list[dict]]) -> None:
        """`scans_shards` stages: one shard's rows (the columns it reads), before `decide`."""

    def decide(self, tables: dict[str, list[dict]]) -> dict[str, str]:
        """row id -> drop reason, for rows of `table` to drop."""
        return {}

    def summarize(self, tables: dict[str, list[dict]], stats: StageStats) -> dict[str, list[dict]]:
        """Build-scope tables to write (name -> rows). Counters for the manifest go into `stats`."""
        return {}

    def apply(self, rows: list[dict], drops: dict[str, str]) -> StageResult:
        """Apply the decisions to one shard's rows of `table`."""
        stats, t0 = self._begin()
        id_col = get_table(self.table).id_column
        out = []
        for r in rows:
            if is_live(r):
                stats.rows_in += 1
                reason = drops.get(str(r.get(id_col)))
                if reason:
                    r = dict(r, drop_reason=reason)
                    stats.drop(reason)
                else:
                    stats.rows_out += 1
            out.append(r)
        return StageResult({self.table: out}, [], self._end(stats, t0))

