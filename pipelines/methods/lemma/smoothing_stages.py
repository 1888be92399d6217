"""LEMMA's optional smoothing pass: `SmoothStage` rewrites each kept revision as one line of thought, and
`VerifySmoothed` verifies those variants."""
from __future__ import annotations

from typing import Any

from pydantic import Field

from pipelines.methods.lemma.rows import Revision
from schemas.rows import make_id
from stages.base import ExpandStage, Failed, ShardInfo, StageStats, columns_except
from pipelines.methods.lemma.revision_stages import VerifyRevisions
from pipelines.methods.lemma.revision_checks import smoothing_drop_reason
from stages.llm import LLMMixin, LLMOptions
from stages.verify import VERIFY_COLUMNS, VerifyConfig


class SmoothConfig(LLMOptions):
    role: str = Field("teacher", description="engine role of the smoothing teacher")
    template: str = Field("lemma_smooth", description="prompt template name (a <name>.txt in stages/prompts/ or the method's prompts/)")
    enabled: bool = Field(False, description="write a smoothed variant of every kept revision (LEMMA's optional "
                                             "'smooth reflection connection' pass)")
    temperature: float = Field(0.7, ge=0, description="sampling temperature")
    max_tokens: int = Field(512, ge=1, description="max new tokens of a smoothed revision")


class SmoothStage(LLMMixin, ExpandStage):
    kind = "lemma_smooth"
    fills = {"revisions": columns_except(Revision, *VERIFY_COLUMNS)}
    description = ("optional: the teacher rewrites each kept revision as one line of thought; the variant must keep "
                   "the final answer and every number (answer_changed, numbers_changed, markdown, ...)")
    config_class = SmoothConfig
    source, target, append = "revisions", "revisions", True
    reads = {"revisions": ("revision_id", "problem_id", "text", "is_correct", "smoothed_from", "strategy"),
             "problems": ("problem_id", "question")}


    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "enabled": self.config.enabled}

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
        results = self.ask(prompts, shard, stats, n=1)
        key, model = self.generation_key(), self.model_label
        out: list[list[dict] | Failed] = []
        for r in rows:
            res = results.get(r["revision_id"])
            if res is None:
                out.append([])
                continue
            failed = self.failure(res, prompts[r["revision_id"]])
            if failed:
                out.append(failed)
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
                             final_answer=None, answer_parse_ok=None, is_correct=None, reward=None, verifier=None,
                             drop_reason=None, **self.lineage([r["revision_id"]]))])
        return out


class VerifySmoothedConfig(VerifyConfig):
    only_unverified: bool = Field(True, description="check only rows no verifier has looked at yet (the smoothed "
                                                    "variants)")


class VerifySmoothed(VerifyRevisions):
    kind = "verify_smoothed"
    description = "the verifier on the smoothed variants (rows not verified yet)"
    config_class = VerifySmoothedConfig
