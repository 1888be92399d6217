"""The LEMMA judges: `JudgeAttemptsStage` locates and types the first error of each verified-wrong attempt,
`JudgeInjectionsStage` that of each kept injection (counting its accuracy on the rules labels); the teacher's
answer is parsed by pipelines/methods/lemma/judge_reply.py."""
from __future__ import annotations

from typing import Any

from pydantic import Field

from schemas.rows import make_id
from stages.base import ExpandStage, Failed, ShardInfo, StageStats
from pipelines.methods.lemma.judge_reply import JudgementFormat
from pipelines.methods.lemma.taxonomy import format_label_list
from stages.llm import ConstrainedOptions, LLMMixin
from stages.steps import number_steps, split_solution, step_rows

JUDGE_FILLS = {"judgements": ("target_table", "target_id", "problem_id", "judge_model", "judge_role",
                              "prompt_template", "verdict", "steps", "first_error_step", "error_type",
                              "type_parse_ok", "raw_text", "parse_ok", "parse_error")}


class JudgeConfig(ConstrainedOptions):
    role: str = Field("teacher", description="engine role of the judge (a key of the recipe's `engines`)")
    template: str = Field("lemma_judge", description="prompt template name (a <name>.txt in stages/prompts/ or the method's prompts/)")
    temperature: float = Field(0.0, ge=0, description="sampling temperature (0: the judge's most likely answer)")
    max_tokens: int = Field(128, ge=1, description="max new tokens of a judgement")
    judge_role: str = Field("teacher", description="recorded on judgements: teacher, self or critic")


class _JudgeBase(LLMMixin, ExpandStage):
    """Shared by the two judges: numbered steps of `text_column`, the judge prompt, parse_judgement. The steps shown
    (`split_solution` of the text, numbered from 1) are kept on the judgement row (`steps`), so its
    `first_error_step` N is the step there with idx N: the same split, and numbering, as an attempt's `steps`."""

    config_class = JudgeConfig
    output_format = JudgementFormat()
    target = "judgements"
    text_column = ""
    id_column = ""


    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "judge_role": self.config.judge_role}

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
        constraints = {rid: self.format_sampling(n_steps=len(splits[rid]), max_tokens=self.config.max_tokens)
                       for rid in prompts}
        results = self.ask(prompts, shard, stats, per_request=constraints, n=1)
        key, model = self.generation_key(), self.model_label
        out: list[list[dict] | Failed] = []
        for r in rows:
            rid = r[self.id_column]
            if rid not in results:
                out.append([])
                continue
            res = results[rid]
            failed = self.failure(res, prompts[rid])
            if failed:
                out.append(failed)
                continue
            text = res.completions[0].text
            n_steps = len(splits[rid])
            jr = self.output_format.parse(text, n_steps)
            self.count_parse(stats, jr.parse_ok)
            stats.count(jr.verdict)
            if not jr.parse_ok:
                stats.count("unparsed_" + (jr.reason or "unknown"))
            stats.count("type_parse_ok" if jr.type_parse_ok else "type_unparsed")
            row = {"judgement_id": make_id(self.target_table_name, rid, key, prefix="j-"),
                   "target_table": self.target_table_name, "target_id": rid, "problem_id": r["problem_id"],
                   "judge_model": model, "judge_role": self.config.judge_role, "prompt_template": self.template.ref,
                   "verdict": jr.verdict, "steps": step_rows(splits[rid]), "first_error_step": jr.first_error_step,
                   "error_type": jr.error_type,
                   "type_parse_ok": jr.type_parse_ok, "raw_text": text, "parse_ok": jr.parse_ok,
                   "parse_error": jr.reason, "drop_reason": None, **self.lineage([rid])}
            self.after(r, row, stats)
            out.append([row])
        return out

    @property
    def target_table_name(self) -> str:
        return self.source


class JudgeAttemptsStage(_JudgeBase):
    kind = "lemma_judge"
    fills = JUDGE_FILLS
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
    fills = JUDGE_FILLS
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
            n = max(1, len(judged.get("steps") or []))      # a judge naming a step at random among those shown:
            near = sum(1 for k in range(1, n + 1) if abs(k - gold) <= 1)
            stats.count("random_exact_milli", round(1000 / n))          # its expected hits, in thousandths
            stats.count("random_within_1_milli", round(1000 * near / n))
            got = judged["first_error_step"]
            if got is not None:
                stats.count("exact" if got == gold else "not_exact")
                if abs(got - gold) <= 1:
                    stats.count("within_1")
            else:
                stats.count("not_located")
