"""The stage contract.

A stage is plain Python over a batch of rows (list of dicts) with declared input and output columns. `setup()`
builds clients and models (so a stage pickles into a Ray actor before setup runs); `process()` maps a batch to a
batch and reports what happened in a StageStats: in / out / dropped_<reason> / errors, never a silent drop.

Row state travels with the row:
- `error_stage`/`error_reason`/`error_message`/`error_raw` set: the row failed; later stages pass it through
  untouched and the writer files it in the `errors` table.
- `drop_reason` set: the filter dropped it; later stages pass it through, it stays queryable, exports skip it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

from schemas.errors import RowError


@dataclass
class StageStats:
    """Counts of one stage over one or more batches. `dropped` maps reason -> count."""
    rows_in: int = 0
    rows_out: int = 0
    errors: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    error_reasons: dict[str, int] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n

    def error(self, reason: str, n: int = 1) -> None:
        self.errors += n
        self.error_reasons[reason] = self.error_reasons.get(reason, 0) + n

    def merge(self, other: "StageStats") -> "StageStats":
        self.rows_in += other.rows_in
        self.rows_out += other.rows_out
        self.errors += other.errors
        for k, v in other.dropped.items():
            self.drop(k, v)
        for k, v in other.error_reasons.items():
            self.error_reasons[k] = self.error_reasons.get(k, 0) + v
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.seconds += other.seconds
        return self

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"in": self.rows_in, "out": self.rows_out, "errors": self.errors}
        d.update({f"dropped_{k}": v for k, v in sorted(self.dropped.items())})
        if self.error_reasons:
            d["error_reasons"] = dict(sorted(self.error_reasons.items()))
        if self.prompt_tokens or self.completion_tokens:
            d["prompt_tokens"], d["completion_tokens"] = self.prompt_tokens, self.completion_tokens
        d["seconds"] = round(self.seconds, 3)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StageStats":
        s = cls(rows_in=d.get("in", 0), rows_out=d.get("out", 0), errors=d.get("errors", 0),
                prompt_tokens=d.get("prompt_tokens", 0), completion_tokens=d.get("completion_tokens", 0),
                seconds=d.get("seconds", 0.0), error_reasons=dict(d.get("error_reasons", {})))
        s.dropped = {k[len("dropped_"):]: v for k, v in d.items() if k.startswith("dropped_")}
        return s


def is_live(row: dict) -> bool:
    """A row later stages still work on: not failed, not dropped."""
    return not row.get("error_stage") and not row.get("drop_reason")


def mark_error(row: dict, stage: str, err: RowError | Exception) -> dict:
    """Turn a row into a failed row of `stage`; the reason is kept, the row is not lost."""
    reason = err.reason if isinstance(err, RowError) else type(err).__name__
    row = dict(row)
    row["error_stage"] = stage
    row["error_reason"] = reason
    row["error_message"] = str(err)[:2000]
    row["error_raw"] = getattr(err, "raw", None)
    return row


class Stage:
    """Base class. Subclasses set `name`, `input_columns`, `output_columns` and implement `process_live`
    (the rows still live) or override `process` for expanding stages."""

    name: ClassVar[str] = "stage"
    input_columns: ClassVar[tuple[str, ...]] = ()
    output_columns: ClassVar[tuple[str, ...]] = ()
    uses_engine: ClassVar[bool] = False   # holds an LLM engine: runs on the engine's CPUs/GPUs, one per replica

    def setup(self) -> None:
        """Build clients/models. Called once per process before the first batch."""

    def teardown(self) -> None:
        """Release what setup built."""

    def describe(self) -> dict[str, Any]:
        """What the manifest records about this stage (model, template versions, settings)."""
        return {}

    def check_columns(self, rows: list[dict]) -> None:
        for r in rows:
            if not is_live(r):
                continue
            missing = [c for c in self.input_columns if c not in r]
            if missing:
                raise KeyError(f"stage '{self.name}' needs columns {missing}; row has {sorted(r)}")
            break

    def process(self, rows: list[dict]) -> tuple[list[dict], StageStats]:
        """Batch in, batch out. Failed/dropped rows pass through; live rows go to process_live."""
        t0 = time.perf_counter()
        self.check_columns(rows)
        stats = StageStats()
        live = [r for r in rows if is_live(r)]
        stats.rows_in = len(live)
        done = self.process_live(live, stats) if live else []
        it = iter(done)
        out = [next(it) if is_live(r) else r for r in rows]
        stats.rows_out = sum(1 for r in done if is_live(r))
        stats.seconds = time.perf_counter() - t0
        return out, stats

    def process_live(self, rows: list[dict], stats: StageStats) -> list[dict]:
        """Map live rows 1:1 (same order). Mark failures with mark_error + stats.error, drops with
        row['drop_reason'] + stats.drop."""
        raise NotImplementedError
