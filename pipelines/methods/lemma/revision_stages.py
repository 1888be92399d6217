"""LEMMA's revisions: `ReviseStage` (the teacher's fix & continue / fresh & restart from each located first
error, checked by pipelines/methods/lemma/revision_checks.py), then `VerifyRevisions` and `RevisionFilter`."""
from __future__ import annotations

import json
from typing import Any, Literal, Optional

from pydantic import Field, field_validator

from pipelines.methods.lemma.rows import Revision
from schemas.rows import make_id
from stages.base import ExpandStage, Failed, FilterStage, ShardInfo, StageStats, columns_except, is_live
from stages.engines.base import GenerationRequest
from pipelines.methods.lemma.revision_checks import FORBIDDEN_PHRASES, STRATEGIES, segments_from_teacher, segments_text
from pipelines.methods.lemma.taxonomy import TRANSITION_PHRASES, choose_transition
from stages.llm import LLMMixin, LLMOptions
from stages.options import Options
from stages.prompts import load_template
from stages.steps import prefix_through, split_solution
from stages.filter import verified_drop_reason
from stages.verify import VERIFY_COLUMNS, VerifyStage


class ReviseConfig(LLMOptions):
    role: str = Field("teacher", description="engine role of the revising teacher")
    template: str = Field("lemma_fix_continue", description="fix & continue prompt template")
    restart_template: str = Field("lemma_fresh_restart", description="fresh & restart prompt template")
    strategies: list[Literal["fix_continue", "fresh_restart"]] = Field(
        default_factory=lambda: list(STRATEGIES), description="revisions to write per located error")
    transitions: list[str] = Field(default_factory=lambda: list(TRANSITION_PHRASES),
                                   description="transition phrases (at least 13; one is chosen per revision from "
                                               "its id)")
    forbidden: list[str] = Field(default_factory=lambda: list(FORBIDDEN_PHRASES),
                                 description="phrases the teacher must not write after the prefix (a previous "
                                             "attempt, a reference, ...): reason mentions_forbidden")
    revise_injections: bool = Field(True, description="also revise kept LLM injections located by the judge")
    temperature: float = Field(0.7, ge=0, description="sampling temperature (LEMMA: 0.7)")
    max_tokens: int = Field(512, ge=1, description="max new tokens of a revision (prefix copy included)")

    @field_validator("transitions")
    @classmethod
    def _enough(cls, v: list[str]) -> list[str]:
        v = [p for p in v if p.strip()]
        if len(v) < 13:
            raise ValueError(f"at least 13 transition phrases (LEMMA uses 13), got {len(v)}")
        return v


class ReviseStage(LLMMixin, ExpandStage):
    kind = "lemma_revise"
    fills = {"revisions": columns_except(Revision, *VERIFY_COLUMNS)}
    description = "the teacher writes fix & continue / fresh & restart revisions from each located first error"
    config_class = ReviseConfig
    source, target, append = "judgements", "revisions", True
    reads = {"judgements": ("judgement_id", "target_table", "target_id", "problem_id", "verdict",
                            "first_error_step", "error_type"),
             "attempts": ("attempt_id", "problem_id", "completion", "is_correct", "sample_index", "drop_reason"),
             "injections": ("injection_id", "problem_id", "solution", "source", "error_type", "drop_reason"),
             "problems": ("problem_id", "question", "reference_solution", "reference_answer")}

    def __init__(self, *a: Any, **k: Any):
        super().__init__(*a, **k)
        self.restart_template = load_template(self.config.restart_template)

    def templates(self) -> dict[str, str]:
        return {**super().templates(), self.restart_template.name: self.restart_template.version}

    def describe(self) -> dict[str, Any]:
        c = self.config
        return {**super().describe(), "restart_template": self.restart_template.ref,
                "strategies": list(c.strategies), "transitions": len(c.transitions),
                "revise_injections": c.revise_injections}

    def _target(self, j: dict, attempts: dict, injections: dict, stats: StageStats) -> Optional[tuple[str, dict]]:
        """The (kind, row) a judgement is about, when it can be revised; None (counted) otherwise."""
        if j.get("target_table") == "attempts":
            a = attempts.get(j["target_id"])
            if a is None or not is_live(a) or a.get("is_correct") is not False:
                stats.count("skipped_attempt_not_wrong_or_dropped")
                return None
            return "self", a
        inj = injections.get(j["target_id"])
        if inj is None or not is_live(inj):
            stats.count("skipped_injection_dropped")
            return None
        if inj.get("source") == "rules":
            stats.count("skipped_rules_injection")   # revised from the exact step by the inject stage
            return None
        if not self.config.revise_injections:
            stats.count("skipped_injection")
            return None
        return "injected", inj

    def expand(self, rows, tables, stats: StageStats, shard: ShardInfo):
        c = self.config
        problems = {p["problem_id"]: p for p in tables.get("problems", [])}
        attempts = {a["attempt_id"]: a for a in tables.get("attempts", [])}
        injections = {i["injection_id"]: i for i in tables.get("injections", [])}
        correct: dict[str, list[dict]] = {}
        for a in sorted(attempts.values(), key=lambda a: a.get("sample_index", 0)):
            if a.get("is_correct") is True and is_live(a):
                correct.setdefault(a["problem_id"], []).append(a)
        key, model = self.generation_key(), self.model_label
        plans: dict[str, list[dict]] = {}
        jobs: list[tuple[str, dict, str]] = []      # (judgement id, revision row, prompt)
        for j in rows:
            got = self._target(j, attempts, injections, stats)
            if got is None:
                plans[j["judgement_id"]] = []
                continue
            kind, tgt = got
            text = tgt.get("completion") if kind == "self" else tgt.get("solution")
            p = problems.get(j["problem_id"], {})
            base = {"problem_id": j["problem_id"], "kind": "revision", "error_source": kind,
                    "attempt_id": tgt["attempt_id"] if kind == "self" else None,
                    "injection_id": tgt["injection_id"] if kind == "injected" else None,
                    "judgement_id": j["judgement_id"], "first_error_step": j.get("first_error_step"),
                    "error_type": j.get("error_type") if kind == "self" else tgt.get("error_type"),
                    "erroneous_prefix": "", "transition": "", "restart_reference": None, "restart_attempt_id": None,
                    "segments": [], "text": "", "model": model, "prompt_template": None, "prompt": None,
                    "raw_text": None, "check_reason": None, "finish_reason": None, "prompt_tokens": 0,
                    "completion_tokens": 0, "final_answer": None, "answer_parse_ok": None, "is_correct": None,
                    "reward": None, "verifier": None, "drop_reason": None,
                    **self.lineage([j["judgement_id"], tgt.get("attempt_id") or tgt.get("injection_id")])}
            out = []
            for strategy in c.strategies:
                rid = make_id(j["judgement_id"], strategy, key, prefix="r-")
                row = dict(base, revision_id=rid, strategy=strategy)
                if j.get("verdict") != "located":
                    row["drop_reason"] = "judge_says_correct" if j.get("verdict") == "says_correct" \
                        else "judge_unparsed"
                    out.append(row)
                    continue
                split = split_solution(text or "")
                n = int(j["first_error_step"])
                if not 1 <= n <= len(split):
                    row["drop_reason"] = "step_out_of_range"
                    out.append(row)
                    continue
                prefix = prefix_through(split, n)
                transition = choose_transition(f"{rid}", c.transitions)
                if strategy == "fix_continue":
                    tmpl = self.template
                    user = tmpl.render(question=p.get("question", ""), prefix=prefix, transition=transition,
                                       reference_solution=p.get("reference_solution") or
                                       p.get("reference_answer") or "")
                else:
                    tmpl = self.restart_template
                    own = correct.get(j["problem_id"], [])
                    if own:
                        pick = own[int(make_id(rid)[:8], 16) % len(own)]
                        anchor, ref_kind, ref_id = pick.get("completion") or "", "student_sample", pick["attempt_id"]
                    else:
                        anchor = p.get("reference_solution") or p.get("reference_answer") or ""
                        ref_kind, ref_id = "reference_solution", None
                    stats.count(f"restart_{ref_kind}")
                    user = tmpl.render(question=p.get("question", ""), prefix=prefix, transition=transition,
                                       correct_solution=anchor)
                    row.update(restart_reference=ref_kind, restart_attempt_id=ref_id)
                row.update(erroneous_prefix=prefix, transition=transition, prompt_template=tmpl.ref, prompt=user)
                out.append(row)
                jobs.append((j["judgement_id"], row, user))
            plans[j["judgement_id"]] = out
        reqs = [GenerationRequest(messages=self.messages(u), sampling=self.sampling_params(n=1),
                                  request_id=row["revision_id"]) for _, row, u in jobs]
        results = {row["revision_id"]: res for (_, row, _), res in zip(jobs, self.call(reqs, shard, stats))}
        answers: list[list[dict] | Failed] = []
        for j in rows:
            rows_out: list[dict | Failed] = []
            for row in plans[j["judgement_id"]]:
                res = results.get(row["revision_id"])
                if res is None:         # a dropped placeholder (judge_unparsed, ...)
                    rows_out.append(row)
                    continue
                if not res.ok or not res.completions:
                    rows_out.append(Failed(res.error_reason or "no_completions", res.error_message or "",
                                           raw_input=json.dumps(row["prompt"]), key=row["strategy"]))
                    continue
                comp = res.completions[0]
                segs, reason = segments_from_teacher(comp.text, row["erroneous_prefix"], c.transitions, c.forbidden)
                stats.count("check_ok" if reason is None else f"check_{reason}")
                row.update(raw_text=comp.text, check_reason=reason, finish_reason=comp.finish_reason,
                           prompt_tokens=res.prompt_tokens, completion_tokens=comp.completion_tokens,
                           segments=segs or [], text=segments_text(segs) if segs else comp.text)
                rows_out.append(row)
            answers.append(rows_out)
        return answers


class VerifyRevisions(VerifyStage):
    kind = "verify_revisions"
    description = "the spine's verifier on the revisions"
    table = "revisions"
    reads = {"revisions": ("revision_id", "problem_id", "text"), "problems": ("problem_id", "reference_answer")}
    text_column = "text"


class RevisionFilterConfig(Options):
    drop_truncated: bool = Field(True, description="drop revisions cut off by max_tokens (reason truncated)")


REVISION_DROP_ORDER = ("truncated", "<check_reason>", "no_answer", "answer_wrong")


class RevisionFilter(FilterStage):
    kind = "filter_revisions"
    description = ("keep only verified-correct revisions that passed the checks (truncated, prefix_changed, "
                   "no_transition, several_transitions, mentions_forbidden, ..., no_answer, answer_wrong)")
    config_class = RevisionFilterConfig
    table = "revisions"
    reads = {"revisions": ("revision_id", "finish_reason", "check_reason", "answer_parse_ok", "is_correct")}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "order": list(REVISION_DROP_ORDER), **self.config.model_dump()}

    def drop_reasons(self, rows, tables):
        return [verified_drop_reason(r, self.config.drop_truncated, r.get("check_reason"), keep_correct=True)
                for r in rows]
