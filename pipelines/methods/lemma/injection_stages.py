"""LEMMA's injected errors: `InjectStage` (a teacher's of types drawn by weight, and/or the rules injector's with
their fix & continue revisions), then `VerifyInjections` and `InjectionFilter` (kept only when verified wrong)."""
from __future__ import annotations

import json
import random
from typing import Any, Literal, Optional

from pydantic import Field, field_validator

from schemas.rows import make_id
from stages.base import ExpandStage, Failed, FilterStage, is_live
from stages.filter import verified_drop_reason
from stages.engines.base import GenerationRequest
from pipelines.methods.lemma.injection_reply import InjectionFormat
from pipelines.methods.lemma.revision_checks import segments_text
from pipelines.methods.lemma.rules_injector import SUPPORTED_TYPES, inject_error
from pipelines.methods.lemma.taxonomy import INJECTION_TYPES, TRANSITION_PHRASES, definition
from stages.llm import ConstrainedOptions, LLMMixin
from stages.options import Options
from stages.verify import VerifyStage


RULES_MODEL = "rules:arithmetic"


class InjectConfig(ConstrainedOptions):
    role: str = Field("teacher", description="engine role of the injecting teacher")
    template: str = Field("lemma_inject", description="prompt template name (a <name>.txt in stages/prompts/ or the method's prompts/)")
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


class InjectStage(LLMMixin, ExpandStage):
    """problems -> injections; the rules injector's fix & continue revisions go to `revisions` (emitted)."""
    kind = "lemma_inject"
    description = "erroneous solutions: a teacher's of types drawn by weight (llm), programmatic ones (rules)"
    config_class = InjectConfig
    output_format = InjectionFormat()
    source = "problems"
    target = "injections"
    reads = {"problems": ("problem_id", "question", "reference_solution", "reference_answer", "gold_steps_json"),
             "attempts": ("problem_id", "is_correct"),
             "error_type_weights": ("error_type", "weight")}
    writes = ("injections", "revisions")
    fills = {"injections": ("problem_id", "source", "error_type", "sample_index", "model", "prompt_template",
                            "prompt", "raw_text", "solution", "explanation", "parse_ok", "parse_error",
                            "finish_reason", "prompt_tokens", "completion_tokens", "first_error_step",
                            "first_error_source", "injected_at", "reference_revision_json"),
             "revisions": ("problem_id", "strategy", "kind", "error_source", "injection_id", "first_error_step",
                           "error_type", "erroneous_prefix", "transition", "segments", "text", "model",
                           "finish_reason", "prompt_tokens", "completion_tokens")}


    def describe(self) -> dict[str, Any]:
        c = self.config
        return {**super().describe(), "source": c.source,
                "samples_per_problem": c.samples_per_problem, "rules_types": c.rules_types,
                "rules_samples_per_type": c.rules_samples_per_type, "seed": c.seed}

    def setup(self, engines: Any = None) -> None:
        if self.config.source != "rules":
            super().setup(engines)

    def expand(self, rows, tables, stats, shard):
        made: dict[str, list] = {p["problem_id"]: [] for p in rows}
        if self.config.source in ("rules", "both"):
            self._inject_rules(rows, made, stats)
        if self.config.source in ("llm", "both"):
            self._inject_llm(rows, tables, made, stats, shard)
        for inj in (x for xs in made.values() for x in xs if isinstance(x, dict)):
            stats.count(f"injected_{inj['source']}_{inj['error_type']}")
        return [made[p["problem_id"]] for p in rows]

    def _inject_rules(self, problems, made, stats) -> None:
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
                    made[p["problem_id"]].append({
                        "injection_id": iid, "problem_id": p["problem_id"], "source": "rules",
                        "error_type": inj.error_type, "sample_index": s, "model": RULES_MODEL,
                        "prompt_template": None, "prompt": None, "raw_text": inj.solution, "solution": inj.solution,
                        "explanation": inj.explanation, "parse_ok": True, "parse_error": None,
                        "finish_reason": "stop", "prompt_tokens": 0, "completion_tokens": 0,
                        "first_error_step": inj.first_error_step, "first_error_source": "rules",
                        "injected_at": inj.injected_at, "reference_revision_json": json.dumps(inj.segments),
                        "drop_reason": None, **self.lineage([p["problem_id"]])})
                    self.emit("revisions", [{
                        "revision_id": make_id(iid, "fix_continue", "rules", prefix="r-"),
                        "problem_id": p["problem_id"], "strategy": "fix_continue", "kind": "revision",
                        "error_source": "injected",
                        "attempt_id": None, "injection_id": iid, "judgement_id": None,
                        "first_error_step": inj.first_error_step, "error_type": inj.error_type,
                        "erroneous_prefix": inj.erroneous_prefix, "transition": inj.transition,
                        "restart_reference": None, "restart_attempt_id": None, "segments": inj.segments,
                        "text": segments_text(inj.segments), "model": RULES_MODEL, "prompt_template": None,
                        "prompt": None, "raw_text": None, "check_reason": None, "finish_reason": "stop",
                        "prompt_tokens": 0, "completion_tokens": 0, "drop_reason": None,
                        **self.lineage([iid, p["problem_id"]])}])
                    stats.count("rules_revisions")

    def _inject_llm(self, problems, tables, made, stats, shard) -> None:
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
        fmt = self.format_sampling(max_tokens=c.max_tokens)
        reqs = [GenerationRequest(messages=self.messages(u), sampling=self.sampling_params(n=1, **fmt),
                                  request_id=f"{p['problem_id']}:{k}") for p, t, k, u in jobs]
        results = self.call(reqs, shard, stats)
        key, model = self.generation_key(), self.model_label
        for (p, t, k, user), res in zip(jobs, results):
            if not res.ok or not res.completions:
                made[p["problem_id"]].append(Failed(
                    res.error_reason or "no_completions", res.error_message or "", raw_input=json.dumps(user),
                    key=f"inject:{k}"))
                continue
            comp = res.completions[0]
            parsed = self.output_format.parse(comp.text)
            self.count_parse(stats, parsed.parse_ok)
            stats.count("llm_parse_ok" if parsed.parse_ok else f"llm_unparsed_{parsed.reason}")
            made[p["problem_id"]].append({
                "injection_id": make_id(p["problem_id"], "llm", t, key, k, prefix="i-"),
                "problem_id": p["problem_id"], "source": "llm", "error_type": t, "sample_index": k,
                "model": model, "prompt_template": self.template.ref, "prompt": user, "raw_text": comp.text,
                "solution": parsed.solution, "explanation": parsed.explanation, "parse_ok": parsed.parse_ok,
                "parse_error": parsed.reason, "finish_reason": comp.finish_reason,
                "prompt_tokens": res.prompt_tokens, "completion_tokens": comp.completion_tokens,
                "first_error_step": None, "first_error_source": None, "injected_at": None,
                "reference_revision_json": None, "drop_reason": None, **self.lineage([p["problem_id"]])})


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
        return [verified_drop_reason(r, c.drop_truncated, self.parse_reason(r), keep_correct=False) for r in rows]

    def parse_reason(self, r: dict) -> Optional[str]:
        """An unparsed injection's reason (a missing <explanation> only when it is required)."""
        if not r.get("parse_ok") and (r.get("parse_error") != "no_explanation" or self.config.require_explanation):
            return r.get("parse_error") or "unparsed"
        return None
