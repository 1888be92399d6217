"""Filter stage: drop samples that make bad training data, each with its reason; nothing is deleted.

A dropped row keeps all its columns and gets `drop_reason`; kept rows get `drop_reason = None`. Every drop is
counted in the stage stats as `dropped_<reason>`. Rows already failed or dropped upstream pass through untouched.

Checks, in this order; a row gets the first reason that applies (so each drop is counted once):
1. `truncated` -- finish_reason == 'length' (cut off by max_tokens), if `FilterConfig.drop_truncated`;
2. `no_answer` -- answer_parse_ok is False (no final answer could be parsed), if `drop_no_answer`;
3. `duplicate` -- same normalized completion text (whitespace collapsed, case folded) as an earlier *kept*
   sample of the same problem_id in this batch, if `drop_duplicates`. The first copy stays. Batches are the
   runner's shards, which hold every sample of a problem, so this is per problem.
"""
from __future__ import annotations

import re
from typing import Any, Optional

from stages.base import Stage, StageStats

__all__ = ["FilterStage", "normalize_completion", "DROP_REASONS"]

DROP_REASONS = ("truncated", "no_answer", "duplicate")


def normalize_completion(text: Optional[str]) -> str:
    """The text two samples are compared on: whitespace runs collapsed, ends stripped, case folded."""
    return re.sub(r"\s+", " ", text or "").strip().casefold()


class FilterStage(Stage):
    name = "filter"
    input_columns = ("problem_id", "completion", "finish_reason", "answer_parse_ok")
    output_columns = ("drop_reason",)

    def __init__(self, config=None):
        if config is None:
            from pipelines.config import FilterConfig  # config models only; no Ray/Prefect
            config = FilterConfig()
        self.config = config

    def describe(self) -> dict[str, Any]:
        return {"order": list(DROP_REASONS), **self.config.model_dump()}

    def _reason(self, row: dict, seen: dict[Any, set[str]]) -> Optional[str]:
        c = self.config
        if c.drop_truncated and row.get("finish_reason") == "length":
            return "truncated"
        if c.drop_no_answer and row.get("answer_parse_ok") is False:
            return "no_answer"
        if c.drop_duplicates:
            key = normalize_completion(row.get("completion"))
            texts = seen.setdefault(row.get("problem_id"), set())
            if key in texts:
                return "duplicate"
            texts.add(key)
        return None

    def process_live(self, rows: list[dict], stats: StageStats) -> list[dict]:
        seen: dict[Any, set[str]] = {}
        out = []
        for row in rows:
            r = dict(row)
            reason = self._reason(r, seen)
            r["drop_reason"] = reason
            if reason is not None:
                stats.drop(reason)
            out.append(r)
        return out
