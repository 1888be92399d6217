"""Filtering attempts: drop samples that make bad training data, each with its reason; nothing is deleted.

`AttemptFilter` (per shard) checks, in this order; a row gets the first reason that applies (each drop counted once):
1. `truncated` -- finish_reason == 'length' (cut off by max_tokens), if `drop_truncated`;
2. `no_answer` -- answer_parse_ok is False (no final answer could be parsed), if `drop_no_answer`;
3. `duplicate` -- same normalized completion text (whitespace collapsed, case folded) as an earlier *kept* sample of
   the same problem, if `drop_duplicates`. The first copy stays. A shard holds every sample of its problems.

`DuplicateProblems` (global: sees every shard) drops the attempts of a problem whose question repeats an earlier
problem's question (normalized text; the problem with the lowest source index keeps its attempts), reason
`duplicate_problem`: a task file listing the same question twice must not give twice the training data.
"""
from __future__ import annotations

import re
from typing import Any, Optional

from pydantic import Field

from stages.base import FilterStage, GlobalStage
from stages.options import Options

__all__ = ["AttemptFilter", "FilterConfig", "DuplicateProblems", "normalize_text", "DROP_REASONS",
           "verified_drop_reason"]

DROP_REASONS = ("truncated", "no_answer", "duplicate")


def normalize_text(text: Optional[str]) -> str:
    """The text two samples are compared on: whitespace runs collapsed, ends stripped, case folded."""
    return re.sub(r"\s+", " ", text or "").strip().casefold()


def verified_drop_reason(row: dict, drop_truncated: bool, own_reason: Optional[str], keep_correct: bool
                         ) -> Optional[str]:
    """The drop order of a verified text that must have a given verdict (an injection must be wrong, a revision
    right): `truncated` (cut off by max_tokens, if `drop_truncated`), then the row's own check (`own_reason`), then
    `no_answer` (no parsed answer or no verdict), then `answer_wrong` (keep_correct) or `answer_correct`."""
    if drop_truncated and row.get("finish_reason") == "length":
        return "truncated"
    if own_reason:
        return own_reason
    if not row.get("answer_parse_ok") or row.get("is_correct") is None:
        return "no_answer"
    if bool(row["is_correct"]) != keep_correct:
        return "answer_wrong" if keep_correct else "answer_correct"
    return None


class FilterConfig(Options):
    drop_truncated: bool = Field(True, description="drop samples cut off by max_tokens (finish_reason=length)")
    drop_no_answer: bool = Field(True, description="drop samples with no parseable final answer")
    drop_duplicates: bool = Field(True, description="drop samples whose text repeats an earlier sample "
                                                    "of the same problem")


class AttemptFilter(FilterStage):
    kind = "filter"
    description = "drop truncated, answerless and duplicate attempts (each with its reason)"
    config_class = FilterConfig
    table = "attempts"
    reads = {"attempts": ("problem_id", "completion", "finish_reason", "answer_parse_ok", "drop_reason")}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "order": list(DROP_REASONS), **self.config.model_dump()}

    def drop_reasons(self, rows, tables):
        c = self.config
        seen: dict[Any, set[str]] = {}
        out: list[Optional[str]] = []
        for row in rows:
            reason = None
            if c.drop_truncated and row.get("finish_reason") == "length":
                reason = "truncated"
            elif c.drop_no_answer and row.get("answer_parse_ok") is False:
                reason = "no_answer"
            elif c.drop_duplicates:
                texts = seen.setdefault(row.get("problem_id"), set())
                key = normalize_text(row.get("completion"))
                if key in texts:
                    reason = "duplicate"
                texts.add(key)
            out.append(reason)
        return out


class DedupConfig(Options):
    enabled: bool = Field(True, description="drop attempts of problems whose question repeats an earlier one")


class DuplicateProblems(GlobalStage):
    kind = "dedup_problems"
    description = "global: drop the attempts of repeated questions across the whole build"
    config_class = DedupConfig
    table = "attempts"
    reads = {"problems": ("problem_id", "question", "source_index"), "attempts": ("attempt_id", "problem_id")}

    def decide(self, tables: dict[str, list[dict]]) -> dict[str, str]:
        if not self.config.enabled:
            return {}
        first: dict[str, tuple[int, str]] = {}
        for p in sorted(tables.get("problems", []), key=lambda p: (p.get("source_index") or 0, p["problem_id"])):
            first.setdefault(normalize_text(p.get("question")), (p.get("source_index") or 0, p["problem_id"]))
        keep = {pid for _, pid in first.values()}
        return {str(a["attempt_id"]): "duplicate_problem" for a in tables.get("attempts", [])
                if a.get("problem_id") not in keep and not a.get("drop_reason")}
