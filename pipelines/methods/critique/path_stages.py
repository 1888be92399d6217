"""The paths a critic is shown: `PathsStage` (problems -> paths, from the actor's verified attempts, injected
errors at a known step and references), `VerifyPaths` (the shared verifier) and `PathFilter`."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from pipelines.methods.critique.rows import Path
from pipelines.methods.lemma.rules_injector import SUPPORTED_TYPES, inject_error
from schemas.rows import make_id
from stages.base import ExpandStage, FilterStage, columns_except, is_live
from stages.options import Options
from stages.steps import step_rows
from stages.verify import VERIFY_COLUMNS, VerifyStage

SOURCES = ("actor", "injected", "reference")
RULES_ORIGIN = "rules:arithmetic"


class PathsConfig(Options):
    sources: list[Literal["actor", "injected", "reference"]] = Field(
        default_factory=lambda: list(SOURCES), description="where paths come from: the actor's verified attempts, "
                                                           "injected errors at a known step, reference solutions")
    injected_from: Literal["rules", "input"] = Field(
        "rules", description="rules: the LEMMA rules injector on built-in problems; input: the `injections` rows "
                             "the task source gives (`tasks: {kind: version, ref: LEMMA_VERSION, table: "
                             "injections}`)")
    rules_types: list[str] = Field(default_factory=lambda: list(SUPPORTED_TYPES),
                                   description="rules: the error types to inject")
    rules_samples_per_type: int = Field(1, ge=1, description="rules: injections per (problem, type)")
    max_injected_per_problem: int = Field(2, ge=0, description="injected paths per problem at most (0: no limit)")
    seed: int = Field(0, description="seed of the rules injector")

    @field_validator("rules_types")
    @classmethod
    def _supported(cls, v: list[str]) -> list[str]:
        bad = [t for t in v if t not in SUPPORTED_TYPES]
        if bad:
            raise ValueError(f"the rules injector cannot make {bad} (supported: {', '.join(SUPPORTED_TYPES)})")
        return v


class PathsStage(ExpandStage):
    kind = "critique_paths"
    description = "paths to critique: the actor's verified attempts, injected errors at a known step, references"
    config_class = PathsConfig
    source, target = "problems", "paths"
    reads = {"problems": ("problem_id", "question", "reference_solution", "reference_answer", "gold_steps_json"),
             "attempts": ("attempt_id", "problem_id", "completion", "model", "finish_reason", "is_correct",
                          "drop_reason")}
    fills = {"paths": columns_except(Path, *VERIFY_COLUMNS)}

    def __init__(self, *a: Any, **k: Any):
        super().__init__(*a, **k)
        if "injected" in self.config.sources and self.config.injected_from == "input":
            self.reads["injections"] = ("injection_id", "problem_id", "solution", "model", "error_type",
                                        "first_error_step", "is_correct", "drop_reason")
        if "actor" not in self.config.sources:
            self.reads.pop("attempts", None)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), **self.config.model_dump()}

    def _row(self, p: dict, source: str, origin: str, text: str, parents: list[str], **over: Any) -> dict:
        key = over.get("attempt_id") or over.get("injection_id") or origin
        return {"path_id": make_id(p["problem_id"], source, key, prefix="pa-"), "problem_id": p["problem_id"],
                "source": source, "origin": origin, "attempt_id": None, "injection_id": None, "error_type": None,
                "text": text, "steps": step_rows(text), "first_error_step": None, "first_error_known": False,
                "finish_reason": "stop", "drop_reason": None, **over, **self.lineage(parents)}

    def expand(self, rows, tables, stats, shard):
        c = self.config
        attempts: dict[str, list[dict]] = {}
        for a in tables.get("attempts", []):
            if is_live(a):
                attempts.setdefault(a["problem_id"], []).append(a)
        injections: dict[str, list[dict]] = {}
        for i in tables.get("injections", []):
            if is_live(i) and i.get("is_correct") is not True:
                injections.setdefault(i["problem_id"], []).append(i)
        out = []
        for p in rows:
            made = []
            if "actor" in c.sources:
                for a in sorted(attempts.get(p["problem_id"], []), key=lambda a: a["attempt_id"]):
                    made.append(self._row(p, "actor", a.get("model") or "", a.get("completion") or "",
                                          [a["attempt_id"], p["problem_id"]], attempt_id=a["attempt_id"],
                                          finish_reason=a.get("finish_reason")))
                    stats.count("actor_" + {True: "right", False: "wrong"}.get(a.get("is_correct"), "unverified"))
            if "injected" in c.sources:
                inj = self._injected(p, injections.get(p["problem_id"], []), stats)
                if c.max_injected_per_problem:
                    inj = inj[:c.max_injected_per_problem]
                made += inj
            if "reference" in c.sources:
                ref = p.get("reference_solution")
                if ref and ref.strip():
                    made.append(self._row(p, "reference", "reference_solution", ref, [p["problem_id"]],
                                          first_error_known=True))
                else:
                    stats.count("reference_missing")
            for r in made:
                stats.count(f"source_{r['source']}")
                if r["first_error_known"]:
                    stats.count("labelled")
            out.append(made)
        return out

    def _injected(self, p: dict, given: list[dict], stats) -> list[dict]:
        c = self.config
        made = []
        if c.injected_from == "input":
            for i in sorted(given, key=lambda i: i["injection_id"]):
                step = i.get("first_error_step")
                made.append(self._row(p, "injected", i.get("model") or "", i.get("solution") or "",
                                      [i["injection_id"], p["problem_id"]], injection_id=i["injection_id"],
                                      error_type=i.get("error_type"), first_error_step=step,
                                      first_error_known=step is not None))
            return made
        seen: set[str] = set()
        for t in c.rules_types:
            for s in range(c.rules_samples_per_type):
                res = inject_error(p, t, seed=c.seed, sample=s)
                if not res.ok:
                    stats.count(f"rules_{res.reason}")
                    if res.reason == "no_gold_steps":
                        return made
                    continue
                inj = res.injection
                if inj.solution in seen:
                    continue
                seen.add(inj.solution)
                iid = make_id(p["problem_id"], "rules", t, c.seed, s, prefix="i-")
                made.append(self._row(p, "injected", RULES_ORIGIN, inj.solution, [p["problem_id"]],
                                      injection_id=iid, error_type=inj.error_type,
                                      first_error_step=inj.first_error_step, first_error_known=True))
        return made


class VerifyPaths(VerifyStage):
    kind = "verify_paths"
    description = "the spine's verifier on the paths"
    table = "paths"
    reads = {"paths": ("path_id", "problem_id", "text"), "problems": ("problem_id", "reference_answer")}
    text_column = "text"


class PathFilter(FilterStage):
    kind = "filter_paths"
    description = ("keep paths whose correctness is verified: truncated, no_answer, reference_wrong (a reference "
                   "that does not verify), injection_correct (an injected error that left the answer right)")
    table = "paths"
    reads = {"paths": ("path_id", "source", "finish_reason", "answer_parse_ok", "is_correct", "first_error_step")}

    def drop_reasons(self, rows, tables):
        out = []
        for r in rows:
            if r.get("finish_reason") == "length":
                out.append("truncated")
            elif not r.get("answer_parse_ok") or r.get("is_correct") is None:
                out.append("no_answer")
            elif r["source"] == "reference" and r["is_correct"] is False:
                out.append("reference_wrong")
            elif r["source"] == "injected" and r["is_correct"] is True:
                out.append("injection_correct")
            else:
                out.append(None)
        return out
