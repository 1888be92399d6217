"""The closed loop: `RefineStage` (critiques -> refinements, role `actor`: the actor rewrites a wrong path given a
critique that found it wrong), `VerifyRefinements`, `RefinementFilter` (verified correct, the shortcut barrier,
at most `reserved_per_critique` kept) and `CritiqueFilter` (a critique is training data only when its verdict
agrees with the verified correctness and, for a wrong path, a refinement it led to was kept)."""
from __future__ import annotations

import re
from typing import Any, Literal, Optional

from pydantic import Field

from pipelines.methods.critique.critique_stages import REFINE_COLUMNS
from pipelines.methods.critique.rows import Refinement
from schemas.rows import make_id
from stages.base import ExpandStage, FilterStage, ShardInfo, StageStats, columns_except
from stages.llm import LLMMixin, LLMOptions
from stages.options import Options
from stages.verify import VERIFY_COLUMNS, VerifyStage

_NUMERAL = re.compile(r"\d+(?:[.,]\d+)*")
BARRIER_COLUMNS = ("numerals", "barrier", "passes_barrier")
REFINEMENT_DROP_ORDER = ("verdict_disagrees", "truncated", "no_answer", "refinement_wrong", "shortcut", "over_reserved")
CRITIQUE_DROP_ORDER = ("unparsed", "verdict_disagrees", "inconsistent", "no_refinement", "refinement_wrong",
                       "shortcut")


def count_numerals(text: Optional[str]) -> int:
    """Numbers written in a text (MathCritique's shortcut barrier counts them)."""
    return len(_NUMERAL.findall(text or ""))


def shortcut_barrier(reference: Optional[str], original: Optional[str]) -> int:
    """min(numerals of the reference solution, numerals of the original) - 2: a refinement with fewer numbers
    copied the answer instead of working it out."""
    return min(count_numerals(reference), count_numerals(original)) - 2


class RefineConfig(LLMOptions):
    role: str = Field("actor", description="engine role of the actor that refines")
    template: str = Field("critique_refine", description="prompt template name")
    temperature: float = Field(0.7, ge=0, description="sampling temperature (MathCritique: 0.7)")
    max_tokens: int = Field(256, ge=1, description="max new tokens of a refinement")
    n: int = Field(1, ge=1, description="refinements per critique")
    when: Literal["wrong_path", "wrong_verdict"] = Field(
        "wrong_path", description="which parsed critiques the actor refines from: wrong_path (every critique of a "
                                  "verified-wrong path, its verdict aside, as MathCritique's loop does; the "
                                  "refinements of a disagreeing critique are measured, then dropped) or "
                                  "wrong_verdict (only critiques that call the path wrong: less compute)")


class RefineStage(LLMMixin, ExpandStage):
    kind = "critique_refine"
    description = "the actor rewrites each verified-wrong path given a parsed critique of it"
    config_class = RefineConfig
    source, target = "critiques", "refinements"
    reads = {"critiques": ("critique_id", "path_id", "problem_id", "raw_text", "parse_ok", "final_verdict",
                           "path_is_correct"),
             "paths": ("path_id", "text"),
             "problems": ("problem_id", "question")}
    fills = {"refinements": columns_except(Refinement, *VERIFY_COLUMNS, *BARRIER_COLUMNS)}

    def expand(self, rows, tables, stats: StageStats, shard: ShardInfo):
        paths = {p["path_id"]: p for p in tables.get("paths", [])}
        q = {p["problem_id"]: p.get("question", "") for p in tables.get("problems", [])}
        prompts = {}
        for c in rows:
            if c.get("path_is_correct") is not False:
                stats.count("skipped_path_correct")
            elif not c.get("parse_ok"):
                stats.count("skipped_unparsed")
            elif c.get("final_verdict") is not False and self.config.when == "wrong_verdict":
                stats.count("skipped_critique_says_correct")
            else:
                prompts[c["critique_id"]] = self.template.render(
                    question=q.get(c["problem_id"], ""), solution=paths[c["path_id"]]["text"],
                    critique=c["raw_text"].strip())
        results = self.ask(prompts, shard, stats)
        key, model = self.generation_key(), self.model_label
        out = []
        for c in rows:
            cid = c["critique_id"]
            if cid not in results:
                out.append([])
                continue
            res = results[cid]
            failed = self.failure(res, prompts[cid])
            if failed:
                out.append(failed)
                continue
            out.append([{"refinement_id": make_id(cid, key, i, prefix="rf-"), "critique_id": cid,
                         "path_id": c["path_id"], "problem_id": c["problem_id"], "sample_index": i,
                         "model": model, "prompt_template": self.template.ref, "prompt": prompts[cid],
                         "text": comp.text, "finish_reason": comp.finish_reason,
                         "prompt_tokens": res.prompt_tokens, "completion_tokens": comp.completion_tokens,
                         "drop_reason": None, **self.lineage([cid, c["path_id"]])}
                        for i, comp in enumerate(res.completions)])
        return out


class VerifyRefinements(VerifyStage):
    kind = "verify_refinements"
    description = "the spine's verifier on the refinements"
    table = "refinements"
    reads = {"refinements": ("refinement_id", "problem_id", "text"), "problems": ("problem_id", "reference_answer")}
    text_column = "text"


class RefinementFilterConfig(Options):
    reserved_per_critique: int = Field(1, ge=1, description="refinements kept per critique at most "
                                                            "(MathCritique's reserved_new_data)")
    drop_truncated: bool = Field(True, description="drop refinements cut off by max_tokens (reason truncated)")
    barrier_margin: int = Field(2, ge=0, description="the shortcut barrier: numerals >= min(reference, original) "
                                                     "- margin")


class RefinementFilter(FilterStage):
    kind = "filter_refinements"
    description = ("keep a refinement when its critique agrees with the verified correctness, it verifies "
                   "correct and passes the shortcut barrier, at most reserved_per_critique per critique "
                   "(verdict_disagrees, truncated, no_answer, refinement_wrong, shortcut, over_reserved)")
    config_class = RefinementFilterConfig
    table = "refinements"
    reads = {"refinements": ("refinement_id", "critique_id", "path_id", "problem_id", "sample_index", "text",
                             "finish_reason", "answer_parse_ok", "is_correct"),
             "critiques": ("critique_id", "agrees"),
             "paths": ("path_id", "text"), "problems": ("problem_id", "reference_solution", "reference_answer")}
    fills = {"refinements": BARRIER_COLUMNS}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "order": list(REFINEMENT_DROP_ORDER), **self.config.model_dump()}

    def process(self, rows, tables, stats, shard):
        c = self.config
        paths = {p["path_id"]: p.get("text") for p in tables.get("paths", [])}
        refs = {p["problem_id"]: p.get("reference_solution") or p.get("reference_answer")
                for p in tables.get("problems", [])}
        agrees = {c["critique_id"]: c.get("agrees") for c in tables.get("critiques", [])}
        kept: dict[str, int] = {}
        out: list[Optional[dict]] = [None] * len(rows)
        for k in sorted(range(len(rows)), key=lambda k: (rows[k]["critique_id"], rows[k]["sample_index"])):
            r = rows[k]
            if r.get("is_correct") is True:
                stats.count("verified_correct")
            numerals = count_numerals(r.get("text"))
            barrier = min(count_numerals(refs.get(r["problem_id"])), count_numerals(paths.get(r["path_id"]))) \
                - c.barrier_margin
            reason = None
            if agrees.get(r["critique_id"]) is not True:
                reason = "verdict_disagrees"
            elif c.drop_truncated and r.get("finish_reason") == "length":
                reason = "truncated"
            elif not r.get("answer_parse_ok") or r.get("is_correct") is None:
                reason = "no_answer"
            elif not r["is_correct"]:
                reason = "refinement_wrong"
            elif numerals < barrier:
                reason = "shortcut"
            elif kept.get(r["critique_id"], 0) >= c.reserved_per_critique:
                reason = "over_reserved"
            else:
                kept[r["critique_id"]] = kept.get(r["critique_id"], 0) + 1
            out[k] = dict(r, numerals=numerals, barrier=barrier, passes_barrier=numerals >= barrier,
                          drop_reason=reason)
        return out


class CritiqueFilterConfig(Options):
    require_consistent: bool = Field(True, description="drop a critique whose step verdicts contradict its final "
                                                       "verdict (a Wrong step with a Correct answer, or the "
                                                       "reverse): reason inconsistent")


class CritiqueFilter(FilterStage):
    kind = "filter_critiques"
    description = ("the closed loop: keep a critique only when its final verdict agrees with the verified "
                   "correctness and, for a wrong path, a refinement it led to was kept (unparsed, "
                   "verdict_disagrees, inconsistent, no_refinement, refinement_wrong, shortcut)")
    config_class = CritiqueFilterConfig
    table = "critiques"
    reads = {"critiques": ("critique_id", "parse_ok", "agrees", "consistent", "path_is_correct"),
             "refinements": ("refinement_id", "critique_id", "is_correct", "passes_barrier", "drop_reason")}
    fills = {"critiques": REFINE_COLUMNS}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "order": list(CRITIQUE_DROP_ORDER), **self.config.model_dump()}

    def process(self, rows, tables, stats, shard):
        by: dict[str, list[dict]] = {}
        for r in tables.get("refinements", []):
            by.setdefault(r["critique_id"], []).append(r)
        out = []
        for c in rows:
            refs = by.get(c["critique_id"], [])
            tried = len(refs)
            correct = sum(1 for r in refs if r.get("is_correct") is True)
            kept = sum(1 for r in refs if r.get("drop_reason") is None)
            reason = None
            if not c.get("parse_ok"):
                reason = "unparsed"
            elif not c.get("agrees"):
                reason = "verdict_disagrees"
            elif self.config.require_consistent and c.get("consistent") is False:
                reason = "inconsistent"
            elif c.get("path_is_correct") is False:
                if not tried:
                    reason = "no_refinement"
                elif not correct:
                    reason = "refinement_wrong"
                elif not kept:
                    reason = "shortcut" if any(r.get("is_correct") and r.get("passes_barrier") is False
                                               for r in refs) else "refinement_wrong"
            if reason is None:
                stats.count(f"kept_{'wrong' if c.get('path_is_correct') is False else 'correct'}_path")
            out.append(dict(c, refinements_tried=tried, refinements_correct=correct, refinements_kept=kept,
                            drop_reason=reason))
        return out
