"""`CritiqueStage` (paths -> critiques, role `critic`): the critic labels each step Correct / Wrong with an
explanation, then the final answer, in the format of critique_format.py (constrained where the engine can); the
parse is compared with the path's verified correctness and, where known, its true first wrong step."""
from __future__ import annotations

from typing import Any

from pydantic import Field

from pipelines.methods.critique.critique_format import CritiqueFormat
from pipelines.methods.critique.rows import Critique
from schemas.rows import make_id
from stages.base import ExpandStage, ShardInfo, StageStats, columns_except
from stages.llm import ConstrainedOptions, LLMMixin
from stages.steps import number_steps

REFINE_COLUMNS = ("refinements_tried", "refinements_correct", "refinements_kept")


class CritiqueConfig(ConstrainedOptions):
    role: str = Field("critic", description="engine role of the critic (a key of the recipe's `engines`)")
    template: str = Field("critique_critic", description="prompt template name (a <name>.txt in stages/prompts/ "
                                                         "or the method's prompts/)")
    temperature: float = Field(0.0, ge=0, description="sampling temperature (MathCritique's critic: 0)")
    max_tokens: int = Field(384, ge=1, description="max new tokens of a critique")
    n: int = Field(1, ge=1, description="critiques per path (2 or more give critic-dpo pairs)")
    show_reference: bool = Field(True, description="show the critic the reference answer (AutoMathCritique's "
                                                   "annotator sees it); the critic-sft prompt never has it")
    sources: list[str] = Field(default_factory=list, description="critique only paths of these sources (empty: "
                                                                 "all)")


def first_error_match(predicted, true, known: bool, parse_ok: bool) -> tuple:
    """(exact, within_1) of a critique's first Wrong step against a known true one (None, None when unknown).
    A correct path (true None) is matched only by a critique with no Wrong step; an unparsed critique misses."""
    if not known:
        return None, None
    if not parse_ok:
        return False, False
    if true is None or predicted is None:
        return predicted == true, predicted == true
    return predicted == true, abs(predicted - true) <= 1


class CritiqueStage(LLMMixin, ExpandStage):
    kind = "critique"
    description = "the critic labels each step Correct/Wrong with an explanation, then the final answer"
    config_class = CritiqueConfig
    output_format = CritiqueFormat()
    source, target = "paths", "critiques"
    reads = {"paths": ("path_id", "problem_id", "source", "steps", "is_correct", "first_error_step",
                       "first_error_known"),
             "problems": ("problem_id", "question", "reference_answer")}
    fills = {"critiques": columns_except(Critique, *REFINE_COLUMNS)}

    def describe(self) -> dict[str, Any]:
        c = self.config
        return {**super().describe(), "n": c.n, "show_reference": c.show_reference, "sources": c.sources}

    def _prompt(self, question: str, steps: list[dict], reference: str) -> str:
        return self.template.render(question=question, reference=reference,
                                    numbered_steps=number_steps([s["text"] for s in steps]))

    def expand(self, rows, tables, stats: StageStats, shard: ShardInfo):
        c = self.config
        problems = {p["problem_id"]: p for p in tables.get("problems", [])}
        todo = [r for r in rows if not c.sources or r["source"] in c.sources]
        stats.count("skipped_source", len(rows) - len(todo))
        prompts, train = {}, {}
        for r in todo:
            p = problems.get(r["problem_id"], {})
            ref = str(p.get("reference_answer") or "").strip()
            train[r["path_id"]] = self._prompt(p.get("question", ""), r["steps"], "")
            prompts[r["path_id"]] = (self._prompt(p.get("question", ""), r["steps"], f"Reference answer: {ref}\n")
                                     if c.show_reference and ref else train[r["path_id"]])
        constraints = {pid: self.format_sampling(n_steps=len(r["steps"]), max_tokens=c.max_tokens)
                       for r in todo for pid in [r["path_id"]]}
        results = self.ask(prompts, shard, stats, per_request=constraints)
        key, model = self.generation_key(), self.model_label
        out = []
        for r in rows:
            pid = r["path_id"]
            if pid not in results:
                out.append([])
                continue
            res = results[pid]
            failed = self.failure(res, prompts[pid])
            if failed:
                out.append(failed)
                continue
            made = []
            for i, comp in enumerate(res.completions):
                cr = self.output_format.parse(comp.text, len(r["steps"]))
                self.count_parse(stats, cr.parse_ok)
                if not cr.parse_ok:
                    stats.count(f"unparsed_{cr.reason}")
                agrees = None if not cr.parse_ok or r.get("is_correct") is None else \
                    cr.final_correct == bool(r["is_correct"])
                if agrees is not None:
                    stats.count("agrees" if agrees else "disagrees")
                exact, near = first_error_match(cr.first_wrong_step, r.get("first_error_step"),
                                                bool(r.get("first_error_known")), cr.parse_ok)
                if exact is not None:
                    self._count_labelled(stats, r, exact, near)
                labels = [{"idx": s["idx"], "step_text": s["text"], "verdict": v, "explanation": e}
                          for s, (v, e) in zip(r["steps"], cr.verdicts)]
                made.append({
                    "critique_id": make_id(pid, key, i, prefix="c-"), "path_id": pid, "problem_id": r["problem_id"],
                    "path_source": r["source"], "sample_index": i, "critic_model": model,
                    "prompt_template": self.template.ref, "prompt": prompts[pid], "train_prompt": train[pid],
                    "raw_text": comp.text, "parse_ok": cr.parse_ok, "parse_error": cr.reason, "step_labels": labels,
                    "first_wrong_step": cr.first_wrong_step, "final_verdict": cr.final_correct,
                    "consistent": cr.consistent, "path_is_correct": r.get("is_correct"), "agrees": agrees,
                    "true_first_error_step": r.get("first_error_step"),
                    "first_error_known": bool(r.get("first_error_known")), "first_error_exact": exact,
                    "first_error_within_1": near, "finish_reason": comp.finish_reason,
                    "prompt_tokens": res.prompt_tokens, "completion_tokens": comp.completion_tokens,
                    "drop_reason": None, **self.lineage([pid])})
            out.append(made)
        return out

    @staticmethod
    def _count_labelled(stats: StageStats, path: dict, exact: bool, near: bool) -> None:
        """Counters of the first-error accuracy on labelled paths (ProcessBench's split: erroneous / correct),
        and the number of steps shown (`steps_<kind>_<n>`: a critic naming one of (no error, step 1..n) at random
        hits 1/(n+1) of them)."""
        kind = "erroneous" if path.get("first_error_step") is not None else "correct"
        n = max(1, len(path.get("steps") or []))
        stats.count("labelled")
        stats.count(f"labelled_{kind}")
        stats.count(f"steps_{kind}_{n}")
        if exact:
            stats.count(f"exact_{kind}")
        if near:
            stats.count(f"within_1_{kind}")
