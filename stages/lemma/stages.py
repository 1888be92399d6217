"""The LEMMA stages (method `lemma`, pipelines/methods.py), on the recipe contract of stages/base.py.

Per shard, after the spine's generate / verify / filter of the student's attempts:

- `JudgeStage` (attempts -> judgements, role `teacher`): each verified-wrong attempt is shown to the teacher as
  numbered steps with the reference solution; the answer is parsed by stages/lemma/judge.py into a verdict
  (`located` with a 1-based first wrong step, `says_correct`, `unparsed`), the error type, raw text and parse_ok.
  `says_correct` and `unparsed` are recorded as such and never used as a located error.
- `TypeWeightsStage` (global; writes the build-scope table `error_type_weights`): the weights of the injection
  types for the LLM injector: `measured` (the student's judged error types over the whole build, add-`prior`
  smoothed; LEMMA's choice), `uniform`, or `explicit`.
- `InjectStage` (problems -> injections + revisions): `source` llm, rules or both. llm: the teacher writes
  `samples_per_problem` erroneous solutions per problem, each of a type drawn (seeded) from the weights, one
  request per (problem, type, sample). rules: built-in arithmetic problems get programmatic errors with the
  exact first wrong step (stages/lemma/rules_injector.py) and, for each, the fix & continue revision written
  from the gold steps (a `revisions` row, author `rules`).
- `VerifyInjections` / `InjectionFilter`: the spine's verifier on the injections; kept only when verified wrong.
- `JudgeInjectionsStage` (injections -> judgements): locates the error of LLM injections (their revisions start
  there); rules injections are judged too (`judge_rules`), and the judge's first-error accuracy on them (exact
  and within one step) is counted in the stage stats, hence in the manifest.
- `ReviseStage` (judgements -> revisions, role `teacher`): for each located judgement of a wrong attempt or a
  kept LLM injection, one revision per strategy: fix_continue (prefix through the first wrong step verbatim, one
  transition phrase, the fix, the rest) and fresh_restart (same prefix and transition, then another approach
  anchored on one of the student's own correct samples of that problem, else the reference solution). The
  teacher's text is checked (prefix kept, exactly one transition right after it, no forbidden phrases, a final
  answer); the check's verdict is `check_reason`. Unparsed and says-correct judgements give a dropped row
  (`judge_unparsed`, `judge_says_correct`), so the yield is visible in the table.
- `VerifyRevisions` / `RevisionFilter`: the verifier on revisions; drops truncated, the check's reason,
  no_answer, answer_wrong. Only verified-correct revisions survive (and are exported).
"""
from __future__ import annotations

import json
import random
from collections import Counter
from typing import Any, Literal, Optional

from pydantic import Field, field_validator

import schemas.lemma_rows  # noqa: F401  (registers injections, revisions, error_type_weights)
from schemas.rows import make_id
from stages.base import ExpandStage, Failed, FilterStage, GlobalStage, ShardInfo, Stage, StageResult, StageStats, \
    is_live
from stages.engines.base import GenerationRequest
from stages.lemma.inject_parse import parse_injection
from stages.lemma.judge import parse_judgement
from stages.lemma.revisions import (FORBIDDEN_PHRASES, STRATEGIES, segments_from_teacher, segments_text,
                                    smoothing_drop_reason)
from stages.lemma.rules_injector import SUPPORTED_TYPES, inject_error
from stages.lemma.taxonomy import (ERROR_LABELS, INJECTION_TYPES, TRANSITION_PHRASES, canonical_label,
                                   choose_transition, definition, format_label_list)
from stages.llm import LLMMixin, LLMOptions
from stages.options import Options
from stages.prompts import load_template
from stages.steps import number_steps, prefix_through, split_solution
from stages.verify import VerifyConfig, VerifyStage

RULES_MODEL = "rules:arithmetic"


# ------------------------------------------------------------------------------------------------ judging
class JudgeConfig(LLMOptions):
    role: str = Field("teacher", description="engine role of the judge (a key of the recipe's `engines`)")
    template: str = Field("lemma_judge", description="prompt template name (stages/prompts/<name>.txt)")
    temperature: float = Field(0.0, ge=0, description="sampling temperature (0: the judge's most likely answer)")
    max_tokens: int = Field(128, ge=1, description="max new tokens of a judgement")
    judge_role: str = Field("teacher", description="recorded on judgements: teacher, self or critic")


class _JudgeBase(LLMMixin, ExpandStage):
    """Shared by the two judges: numbered steps of `text_column`, the judge prompt, parse_judgement."""

    config_class = JudgeConfig
    target = "judgements"
    text_column = ""
    id_column = ""

    def __init__(self, *a: Any, **k: Any):
        super().__init__(*a, **k)
        self._init_llm()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), **self.llm_describe(), "judge_role": self.config.judge_role}

    def todo(self, rows: list[dict], tables: dict, stats: StageStats) -> list[dict]:
        raise NotImplementedError

    def after(self, row: dict, judged: dict, stats: StageStats) -> None:
        """Per judged row: extra counting."""

    def expand(self, rows, tables, stats: StageStats, shard: ShardInfo):
        problems = {p["problem_id"]: p for p in tables.get("problems", [])}
        todo = self.todo(rows, tables, stats)
        splits = {r[self.id_column]: split_solution(r.get(self.text_column) or "") for r in todo}
        prompts = {}
        for r in todo:
            p = problems.get(r["problem_id"], {})
            prompts[r[self.id_column]] = self.template.render(
                question=p.get("question", ""), reference_solution=p.get("reference_solution") or
                p.get("reference_answer") or "", numbered_steps=number_steps(splits[r[self.id_column]]),
                labels=format_label_list())
        reqs = [GenerationRequest(messages=self.messages(prompts[r[self.id_column]]),
                                  sampling=self.sampling_params(n=1), request_id=r[self.id_column]) for r in todo]
        results = dict(zip((r[self.id_column] for r in todo), self.call(reqs, shard, stats)))
        key, model = self.generation_key(), self.model_label
        out: list[list[dict] | Failed] = []
        for r in rows:
            rid = r[self.id_column]
            if rid not in results:
                out.append([])
                continue
            res = results[rid]
            if not res.ok or not res.completions:
                out.append(Failed(res.error_reason or "no_completions", res.error_message or "",
                                  raw_input=json.dumps(prompts[rid])))
                continue
            text = res.completions[0].text
            n_steps = len(splits[rid])
            jr = parse_judgement(text, n_steps)
            stats.count(jr.verdict)
            stats.count("parse_ok" if jr.parse_ok else "unparsed_" + (jr.reason or "unknown"))
            stats.count("type_parse_ok" if jr.type_parse_ok else "type_unparsed")
            row = {"judgement_id": make_id(self.target_table_name, rid, key, prefix="j-"),
                   "target_table": self.target_table_name, "target_id": rid, "problem_id": r["problem_id"],
                   "judge_model": model, "judge_role": self.config.judge_role, "prompt_template": self.template.ref,
                   "verdict": jr.verdict, "first_error_step": jr.first_error_step, "error_type": jr.error_type,
                   "type_parse_ok": jr.type_parse_ok, "raw_text": text, "parse_ok": jr.parse_ok,
                   "parse_error": jr.reason, "drop_reason": None, **self.lineage([rid])}
            self.after(r, row, stats)
            out.append([row])
        return out

    @property
    def target_table_name(self) -> str:
        return self.source


class JudgeStage(_JudgeBase):
    kind = "lemma_judge"
    description = "the teacher names the first wrong step and the error type of each verified-wrong attempt"
    source = "attempts"
    text_column, id_column = "completion", "attempt_id"
    reads = {"attempts": ("attempt_id", "problem_id", "completion", "is_correct"),
             "problems": ("problem_id", "question", "reference_solution", "reference_answer")}

    def todo(self, rows, tables, stats):
        wrong = [a for a in rows if a.get("is_correct") is False]
        stats.count("not_wrong", len(rows) - len(wrong))
        return wrong


class JudgeInjectionsConfig(JudgeConfig):
    judge_rules: bool = Field(True, description="judge the rules injections too, to measure the judge's "
                                                "first-error accuracy on their exact labels (their revisions use "
                                                "the exact step either way)")


class JudgeInjectionsStage(_JudgeBase):
    kind = "lemma_judge_injections"
    description = ("the teacher locates the error of each kept injection; on rules injections its accuracy "
                   "against the exact step is counted (labelled, exact, within_1)")
    config_class = JudgeInjectionsConfig
    source, append = "injections", True
    text_column, id_column = "solution", "injection_id"
    reads = {"injections": ("injection_id", "problem_id", "solution", "source", "first_error_step"),
             "problems": ("problem_id", "question", "reference_solution", "reference_answer")}

    def todo(self, rows, tables, stats):
        if self.config.judge_rules:
            return list(rows)
        keep = [r for r in rows if r.get("source") != "rules"]
        stats.count("skipped_rules", len(rows) - len(keep))
        return keep

    def after(self, row, judged, stats):
        gold = row.get("first_error_step")
        if row.get("source") == "rules" and gold:
            stats.count("labelled")
            got = judged["first_error_step"]
            if got is not None:
                stats.count("exact" if got == gold else "not_exact")
                if abs(got - gold) <= 1:
                    stats.count("within_1")
            else:
                stats.count("not_located")


def judge_accuracy(stage_stats: dict) -> dict[str, Optional[float]]:
    """Exact and +-1 first-error accuracy of the judge on the rules-labelled injections, from the stats of a
    JudgeInjectionsStage (manifest `stages[name]`). A judgement that located nothing counts as a miss."""
    c = stage_stats.get("counts", {})
    n = c.get("labelled", 0)
    return {"labelled": n, "exact": c.get("exact", 0) / n if n else None,
            "within_1": c.get("within_1", 0) / n if n else None}


# ------------------------------------------------------------------------------------------------ weights
class TypeWeightsConfig(Options):
    mode: Literal["measured", "uniform", "explicit"] = Field(
        "measured", description="measured: the student's judged error-type distribution in this build (LEMMA's "
                                "choice); uniform; explicit: the `weights` given")
    types: list[str] = Field(default_factory=lambda: list(INJECTION_TYPES),
                             description="the error types the LLM injector may ask for (taxonomy labels)")
    weights: dict[str, float] = Field(default_factory=dict, description="explicit mode: type -> weight (>= 0)")
    prior: float = Field(1.0, ge=0, description="measured mode: pseudo-count added to every type (0: types the "
                                                "student never made get no requests)")

    @field_validator("types")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        out = []
        for t in v:
            c = canonical_label(t)
            if c is None:
                raise ValueError(f"unknown error type {t!r} (known: {', '.join(ERROR_LABELS)})")
            out.append(c)
        if not out:
            raise ValueError("at least one error type")
        return out


class TypeWeightsStage(GlobalStage):
    kind = "lemma_type_weights"
    description = "global: the injection-type weights (measured from the judged student errors, uniform, explicit)"
    config_class = TypeWeightsConfig
    build_tables = ("error_type_weights",)
    reads = {"judgements": ("judgement_id", "target_table", "verdict", "error_type")}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), **self.config.model_dump()}

    def summarize(self, tables, stats: StageStats):
        c = self.config
        measured = Counter(j.get("error_type") or "unknown" for j in tables.get("judgements", [])
                           if j.get("target_table") == "attempts" and j.get("verdict") == "located")
        for lab, n in measured.items():
            stats.count(f"measured_{lab}", n)
        if c.mode == "uniform":
            raw = {t: 1.0 for t in c.types}
        elif c.mode == "explicit":
            raw = {t: float(c.weights.get(t, 0.0)) for t in c.types}
            if sum(raw.values()) <= 0:
                raise ValueError("type_weights: explicit mode needs a positive weight for one of the types")
        else:
            raw = {t: measured.get(t, 0) + c.prior for t in c.types}
            if sum(raw.values()) <= 0:      # nothing measured and no prior: fall back to uniform, say so
                stats.count("fallback_uniform")
                raw = {t: 1.0 for t in c.types}
        total = sum(raw.values())
        stats.rows_out = len(c.types)
        return {"error_type_weights": [
            {"weight_id": make_id(c.mode, t, prefix="w-"), "error_type": t, "mode": c.mode,
             "count": measured.get(t, 0), "weight": raw[t] / total, **self.lineage([])} for t in c.types]}


# ------------------------------------------------------------------------------------------------ injecting
class InjectConfig(LLMOptions):
    role: str = Field("teacher", description="engine role of the injecting teacher")
    template: str = Field("lemma_inject", description="prompt template name (stages/prompts/<name>.txt)")
    source: Literal["llm", "rules", "both"] = Field(
        "llm", description="llm: the teacher writes erroneous solutions; rules: programmatic errors in built-in "
                           "arithmetic problems (exact first-error step, no model); both")
    samples_per_problem: int = Field(2, ge=0, description="llm: requests per problem, each of a type drawn from "
                                                          "error_type_weights (LEMMA: 5 per type x 6 types)")
    only_problems_with_errors: bool = Field(True, description="llm: skip problems with no verified-wrong attempt "
                                                              "(as LEMMA does)")
    rules_types: list[str] = Field(default_factory=lambda: list(SUPPORTED_TYPES),
                                   description="rules: the error types to make (those the injector supports)")
    rules_samples_per_type: int = Field(1, ge=1, description="rules: injections per (problem, type)")
    transitions: list[str] = Field(default_factory=lambda: list(TRANSITION_PHRASES),
                                   description="transition phrases of the rules revisions")
    seed: int = Field(0, description="seed of the type draws (llm) and of the error choice (rules)")
    temperature: float = Field(0.7, ge=0, description="sampling temperature (LEMMA: 0.7)")
    max_tokens: int = Field(384, ge=1, description="max new tokens of an injected solution")

    @field_validator("rules_types")
    @classmethod
    def _supported(cls, v: list[str]) -> list[str]:
        bad = [t for t in v if t not in SUPPORTED_TYPES]
        if bad:
            raise ValueError(f"the rules injector cannot make {bad} (supported: {', '.join(SUPPORTED_TYPES)})")
        return v


class InjectStage(LLMMixin, Stage):
    kind = "lemma_inject"
    description = "erroneous solutions: a teacher's of types drawn by weight (llm), programmatic ones (rules)"
    config_class = InjectConfig
    reads = {"problems": ("problem_id", "question", "reference_solution", "reference_answer", "gold_steps_json"),
             "attempts": ("problem_id", "is_correct"),
             "error_type_weights": ("error_type", "weight")}
    writes = ("injections", "revisions")

    def __init__(self, *a: Any, **k: Any):
        super().__init__(*a, **k)
        self._init_llm()

    def describe(self) -> dict[str, Any]:
        c = self.config
        return {**super().describe(), **self.llm_describe(), "source": c.source,
                "samples_per_problem": c.samples_per_problem, "rules_types": c.rules_types,
                "rules_samples_per_type": c.rules_samples_per_type, "seed": c.seed}

    def setup(self, engines: Any = None) -> None:
        if self.config.source != "rules":
            super().setup(engines)

    def run(self, tables: dict[str, list[dict]], shard: ShardInfo = ShardInfo()) -> StageResult:
        stats, t0 = self._begin()
        problems = [p for p in tables.get("problems", []) if is_live(p)]
        stats.rows_in = len(problems)
        injections: list[dict] = []
        revisions: list[dict] = []
        errors: list[dict] = []
        if self.config.source in ("rules", "both"):
            self._inject_rules(problems, injections, revisions, stats)
        if self.config.source in ("llm", "both"):
            self._inject_llm(problems, tables, injections, errors, stats, shard)
        stats.rows_out = len(injections)
        for inj in injections:
            stats.count(f"injected_{inj['source']}_{inj['error_type']}")
        return StageResult({"injections": injections, "revisions": revisions}, errors, self._end(stats, t0))

    def _inject_rules(self, problems, injections, revisions, stats) -> None:
        c = self.config
        for p in problems:
            seen: set[str] = set()
            for t in c.rules_types:
                for s in range(c.rules_samples_per_type):
                    res = inject_error(p, t, seed=c.seed, sample=s, phrases=c.transitions)
                    if not res.ok:
                        stats.count(f"rules_{res.reason}")
                        if res.reason == "no_gold_steps":
                            break
                        continue
                    inj = res.injection
                    if inj.solution in seen:
                        stats.count("rules_duplicate")
                        continue
                    seen.add(inj.solution)
                    iid = make_id(p["problem_id"], "rules", t, c.seed, s, prefix="i-")
                    injections.append({
                        "injection_id": iid, "problem_id": p["problem_id"], "source": "rules",
                        "error_type": inj.error_type, "sample_index": s, "model": RULES_MODEL,
                        "prompt_template": None, "prompt": None, "raw_text": inj.solution, "solution": inj.solution,
                        "explanation": inj.explanation, "parse_ok": True, "parse_error": None,
                        "finish_reason": "stop", "prompt_tokens": 0, "completion_tokens": 0,
                        "first_error_step": inj.first_error_step, "first_error_source": "rules",
                        "injected_at": inj.injected_at, "reference_revision_json": json.dumps(inj.segments),
                        "final_answer": None, "answer_parse_ok": False, "is_correct": None, "reward": None,
                        "verifier": None, "drop_reason": None, **self.lineage([p["problem_id"]])})
                    revisions.append({
                        "revision_id": make_id(iid, "fix_continue", "rules", prefix="r-"),
                        "problem_id": p["problem_id"], "strategy": "fix_continue", "kind": "revision",
                        "error_source": "injected",
                        "attempt_id": None, "injection_id": iid, "judgement_id": None,
                        "first_error_step": inj.first_error_step, "error_type": inj.error_type,
                        "erroneous_prefix": inj.erroneous_prefix, "transition": inj.transition,
                        "restart_reference": None, "restart_attempt_id": None, "segments": inj.segments,
                        "text": segments_text(inj.segments), "model": RULES_MODEL, "prompt_template": None,
                        "prompt": None, "raw_text": None, "check_reason": None, "finish_reason": "stop",
                        "prompt_tokens": 0, "completion_tokens": 0, "final_answer": None, "answer_parse_ok": False,
                        "is_correct": None, "reward": None, "verifier": None, "drop_reason": None,
                        **self.lineage([iid, p["problem_id"]])})
                    stats.count("rules_revisions")

    def _inject_llm(self, problems, tables, injections, errors, stats, shard) -> None:
        c = self.config
        weights = {w["error_type"]: float(w["weight"]) for w in tables.get("error_type_weights", [])}
        types = [t for t in weights if weights[t] > 0] or list(INJECTION_TYPES)
        wts = [weights.get(t, 1.0) for t in types]
        wrong = {a["problem_id"] for a in tables.get("attempts", []) if a.get("is_correct") is False
                 and is_live(a)}
        jobs = []
        for p in problems:
            if c.only_problems_with_errors and p["problem_id"] not in wrong:
                stats.count("llm_skipped_no_wrong_attempt")
                continue
            rng = random.Random(f"errata-lemma-inject:{c.seed}:{p['problem_id']}")
            for k in range(c.samples_per_problem):
                t = rng.choices(types, weights=wts)[0]
                user = self.template.render(question=p.get("question", ""),
                                            reference_solution=p.get("reference_solution") or
                                            p.get("reference_answer") or "",
                                            error_type=t, error_definition=definition(t))
                jobs.append((p, t, k, user))
        reqs = [GenerationRequest(messages=self.messages(u), sampling=self.sampling_params(n=1),
                                  request_id=f"{p['problem_id']}:{k}") for p, t, k, u in jobs]
        results = self.call(reqs, shard, stats)
        key, model = self.generation_key(), self.model_label
        for (p, t, k, user), res in zip(jobs, results):
            if not res.ok or not res.completions:
                errors.append(self.error_record(p, "problems", Failed(
                    res.error_reason or "no_completions", res.error_message or "", raw_input=json.dumps(user),
                    key=f"inject:{k}")))
                stats.error(res.error_reason or "no_completions")
                continue
            comp = res.completions[0]
            parsed = parse_injection(comp.text)
            stats.count("llm_parse_ok" if parsed.parse_ok else f"llm_unparsed_{parsed.reason}")
            injections.append({
                "injection_id": make_id(p["problem_id"], "llm", t, key, k, prefix="i-"),
                "problem_id": p["problem_id"], "source": "llm", "error_type": t, "sample_index": k,
                "model": model, "prompt_template": self.template.ref, "prompt": user, "raw_text": comp.text,
                "solution": parsed.solution, "explanation": parsed.explanation, "parse_ok": parsed.parse_ok,
                "parse_error": parsed.reason, "finish_reason": comp.finish_reason,
                "prompt_tokens": res.prompt_tokens, "completion_tokens": comp.completion_tokens,
                "first_error_step": None, "first_error_source": None, "injected_at": None,
                "reference_revision_json": None, "final_answer": None, "answer_parse_ok": False,
                "is_correct": None, "reward": None, "verifier": None, "drop_reason": None,
                **self.lineage([p["problem_id"]])})


class VerifyInjections(VerifyStage):
    kind = "verify_injections"
    description = "the spine's verifier on the injected solutions"
    table = "injections"
    reads = {"injections": ("injection_id", "problem_id", "solution"),
             "problems": ("problem_id", "reference_answer")}
    text_column = "solution"


class InjectionFilterConfig(Options):
    require_explanation: bool = Field(False, description="drop LLM injections without an <explanation> "
                                                         "(reason no_explanation)")
    drop_truncated: bool = Field(True, description="drop injections cut off by max_tokens (reason truncated)")


class InjectionFilter(FilterStage):
    kind = "filter_injections"
    description = "keep an injection only when its answer is verified wrong (answer_correct, no_answer, ...)"
    config_class = InjectionFilterConfig
    table = "injections"
    reads = {"injections": ("injection_id", "source", "error_type", "parse_ok", "parse_error", "finish_reason",
                            "answer_parse_ok", "is_correct")}

    def process(self, rows, tables, stats, shard):
        out = super().process(rows, tables, stats, shard)
        for r in out:       # the injected-type histogram of the kept data (vs type_weights' measured_<type>)
            if r.get("drop_reason") is None:
                stats.count(f"kept_{r.get('source')}_{r.get('error_type') or 'unknown'}")
        return out

    def drop_reasons(self, rows, tables):
        c = self.config
        out: list[Optional[str]] = []
        for r in rows:
            reason = None
            if c.drop_truncated and r.get("finish_reason") == "length":
                reason = "truncated"
            elif not r.get("parse_ok") and (r.get("parse_error") != "no_explanation" or c.require_explanation):
                reason = r.get("parse_error") or "unparsed"
            elif not r.get("answer_parse_ok") or r.get("is_correct") is None:
                reason = "no_answer"
            elif r.get("is_correct"):
                reason = "answer_correct"
            out.append(reason)
        return out


# ------------------------------------------------------------------------------------------------ revising
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
        self._init_llm()
        self.restart_template = load_template(self.config.restart_template)

    def templates(self) -> dict[str, str]:
        return {**super().templates(), self.restart_template.name: self.restart_template.version}

    def describe(self) -> dict[str, Any]:
        c = self.config
        return {**super().describe(), **self.llm_describe(), "restart_template": self.restart_template.ref,
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
                    "completion_tokens": 0, "final_answer": None, "answer_parse_ok": False, "is_correct": None,
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
        out: list[Optional[str]] = []
        for r in rows:
            if self.config.drop_truncated and r.get("finish_reason") == "length":
                out.append("truncated")
            elif r.get("check_reason"):
                out.append(r["check_reason"])
            elif not r.get("answer_parse_ok") or r.get("is_correct") is None:
                out.append("no_answer")
            elif r.get("is_correct") is False:
                out.append("answer_wrong")
            else:
                out.append(None)
        return out


# ------------------------------------------------------------------------------------------------ smoothing
class SmoothConfig(LLMOptions):
    role: str = Field("teacher", description="engine role of the smoothing teacher")
    template: str = Field("lemma_smooth", description="prompt template name (stages/prompts/<name>.txt)")
    enabled: bool = Field(False, description="write a smoothed variant of every kept revision (LEMMA's optional "
                                             "'smooth reflection connection' pass)")
    temperature: float = Field(0.7, ge=0, description="sampling temperature")
    max_tokens: int = Field(512, ge=1, description="max new tokens of a smoothed revision")


class SmoothStage(LLMMixin, ExpandStage):
    kind = "lemma_smooth"
    description = ("optional: the teacher rewrites each kept revision as one line of thought; the variant must keep "
                   "the final answer and every number (answer_changed, numbers_changed, markdown, ...)")
    config_class = SmoothConfig
    source, target, append = "revisions", "revisions", True
    reads = {"revisions": ("revision_id", "problem_id", "text", "is_correct", "smoothed_from", "strategy"),
             "problems": ("problem_id", "question")}

    def __init__(self, *a: Any, **k: Any):
        super().__init__(*a, **k)
        self._init_llm()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), **self.llm_describe(), "enabled": self.config.enabled}

    def setup(self, engines: Any = None) -> None:
        if self.config.enabled:
            super().setup(engines)

    def expand(self, rows, tables, stats: StageStats, shard: ShardInfo):
        if not self.config.enabled:
            stats.count("disabled", len(rows))
            return [[] for _ in rows]
        question = {p["problem_id"]: p["question"] for p in tables.get("problems", [])}
        todo = [r for r in rows if r.get("is_correct") is True and not r.get("smoothed_from")]
        prompts = {r["revision_id"]: self.template.render(question=question.get(r["problem_id"], ""),
                                                          revision=r["text"]) for r in todo}
        reqs = [GenerationRequest(messages=self.messages(prompts[r["revision_id"]]), sampling=self.sampling_params(n=1),
                                  request_id=r["revision_id"]) for r in todo]
        results = dict(zip((r["revision_id"] for r in todo), self.call(reqs, shard, stats)))
        key, model = self.generation_key(), self.model_label
        out: list[list[dict] | Failed] = []
        for r in rows:
            res = results.get(r["revision_id"])
            if res is None:
                out.append([])
                continue
            if not res.ok or not res.completions:
                out.append(Failed(res.error_reason or "no_completions", res.error_message or "",
                                  raw_input=json.dumps(prompts[r["revision_id"]])))
                continue
            comp = res.completions[0]
            reason = smoothing_drop_reason(r["text"], comp.text)
            stats.count("check_ok" if reason is None else f"check_{reason}")
            out.append([dict(r, revision_id=make_id(r["revision_id"], "smoothed", key, prefix="r-"),
                             smoothed_from=r["revision_id"], model=model, prompt_template=self.template.ref,
                             prompt=prompts[r["revision_id"]], raw_text=comp.text, check_reason=reason,
                             segments=[{"text": comp.text.strip(), "author": "teacher", "loss": True}],
                             text=comp.text.strip(), finish_reason=comp.finish_reason,
                             prompt_tokens=res.prompt_tokens, completion_tokens=comp.completion_tokens,
                             final_answer=None, answer_parse_ok=False, is_correct=None, reward=None, verifier=None,
                             drop_reason=None, **self.lineage([r["revision_id"]]))])
        return out


class VerifySmoothedConfig(VerifyConfig):
    only_unverified: bool = Field(True, description="check only rows no verifier has looked at yet (the smoothed "
                                                    "variants)")


class VerifySmoothed(VerifyRevisions):
    kind = "verify_smoothed"
    description = "the verifier on the smoothed variants (rows not verified yet)"
    config_class = VerifySmoothedConfig


TEACHER_STAGES = ("judge", "injections", "judge_injections", "revise", "smooth")


def lemma_yield(stages: dict[str, dict]) -> dict[str, int]:
    """The yield per stage of a lemma build, from its manifest's `stages`: wrong attempts -> judged -> located ->
    revision requests -> passed the checks -> kept (verified correct; rules revisions included)."""
    g = lambda name, key: stages.get(name, {}).get(key, 0)                       # noqa: E731
    c = lambda name, key: stages.get(name, {}).get("counts", {}).get(key, 0)     # noqa: E731
    return {"wrong_attempts": g("judge", "in") - c("judge", "not_wrong"), "judged": g("judge", "out"),
            "located": c("judge", "located"), "injections_kept": g("filter_injections", "out"),
            "revision_requests": g("revise", "out"), "revisions_passed_checks": c("revise", "check_ok"),
            "rules_revisions": c("injections", "rules_revisions"), "kept": g("filter_revisions", "out"),
            "smoothed_kept": g("filter_smoothed", "out") - g("filter_revisions", "out")
            if "filter_smoothed" in stages else 0}


def type_histograms(stages: dict[str, dict]) -> dict[str, dict[str, int]]:
    """The error types of the kept injections (per source) beside the student's measured distribution (located
    judgements of its attempts), from a lemma build's manifest `stages`."""
    def pick(name: str, prefix: str) -> dict[str, int]:
        counts = stages.get(name, {}).get("counts", {})
        return {k[len(prefix):]: v for k, v in sorted(counts.items()) if k.startswith(prefix)}
    return {"measured_student": pick("type_weights", "measured_"),
            "kept_llm_injections": pick("filter_injections", "kept_llm_"),
            "kept_rules_injections": pick("filter_injections", "kept_rules_")}


def lemma_summary(stages: dict[str, dict]) -> dict[str, Any]:
    """What `errata build` prints after a lemma build: the yield per stage and the judge's accuracy on the rules
    labels (both stored in the manifest's stage stats)."""
    acc = judge_accuracy(stages.get("judge_injections", {}))
    fmt = lambda x: "n/a" if x is None else f"{x:.2f}"       # noqa: E731
    return {"yield": " -> ".join(f"{k} {v}" for k, v in lemma_yield(stages).items()),
            "judge on rules labels": f"{acc['labelled']} labelled, exact {fmt(acc['exact'])}, "
                                     f"within 1 step {fmt(acc['within_1'])}",
            **{f"error types, {k.replace('_', ' ')}": ", ".join(f"{t} {n}" for t, n in h.items()) or "none"
               for k, h in type_histograms(stages).items()}}
