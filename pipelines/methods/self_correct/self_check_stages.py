"""Self-checking and retrying: the student reviews its own attempts, then retries the wrong ones with its own review.

- `SelfCheckStage` (attempts -> judgements, role `student` by default): for each answered attempt, the model checks
  the solution and ends with "Verdict: correct|incorrect". The verdict is parsed beside the raw text; a reply
  without a verdict is recorded as `unparsed` (parse_ok False), never as "incorrect". The review sees the solution
  as written, not numbered steps, and names no step: the judgement's `steps` and `first_error_step` stay empty
  (the attempt's own `steps` are the split, should a later judge name one). How often the verdict agrees
  with the verifier is the model's self-verification accuracy (a SQL join away).
- `RetryStage` (attempts + judgements -> more attempts): every verified-wrong attempt gets `n` new attempts,
  prompted with the question, the wrong solution and the model's own review of it. The new attempts are appended
  to `attempts` (parents: the wrong attempt and its judgement) and verified by a later verify stage.
"""
from __future__ import annotations

import re
from typing import Any, Optional

from pydantic import Field

from schemas.rows import make_id
from stages.base import ExpandStage, Failed, ShardInfo, StageStats
from stages.engines.base import GenerationRequest
from stages.generate import ATTEMPT_COLUMNS, attempt_row
from stages.engines.base import Constraint
from stages.formats import LINE, OutputFormat, one_of, text_budget
from stages.llm import ConstrainedOptions, LLMMixin, LLMOptions

VERDICT_LABEL = "Verdict"
VERDICTS = ("correct", "incorrect")
_VERDICT = re.compile(rf"{VERDICT_LABEL}\s*[:：]?\s*\**\s*(correct|incorrect|wrong|right)\b", re.IGNORECASE)


def parse_verdict(text: Optional[str]) -> tuple[Optional[str], Optional[str]]:
    """(verdict, parse_error): the last "Verdict: correct|incorrect" of the text; wrong/right are read as
    incorrect/correct. (None, reason) when there is none."""
    found = list(_VERDICT.finditer(text or ""))
    if not found:
        return None, f"no '{VERDICT_LABEL}: {'|'.join(VERDICTS)}' line"
    word = found[-1].group(1).lower()
    return ("correct" if word in ("correct", "right") else "incorrect"), None


class VerdictFormat(OutputFormat):
    """A short review, then the last line `Verdict: correct|incorrect` (prompts/self_check.txt)."""
    name, kind = "review_verdict", "regex"
    lines = 4

    def constraint(self, max_tokens: int = 192) -> Constraint:
        per_line = max(10, text_budget(max_tokens) // self.lines)
        review = rf"({LINE}{{1,{per_line}}}\n){{0,{self.lines}}}"
        return Constraint(regex=f"{review}{VERDICT_LABEL}: {one_of(VERDICTS)}")

    def parse(self, text: str) -> tuple[Optional[str], Optional[str]]:
        return parse_verdict(text)


class SelfCheckConfig(ConstrainedOptions):
    template: str = Field("self_check", description="prompt template name (a <name>.txt in stages/prompts/ or the method's prompts/)")
    temperature: float = Field(0.0, ge=0, description="sampling temperature (0: the model's most likely review)")
    max_tokens: int = Field(192, ge=1, description="max new tokens of a review")
    judge_role: str = Field("self", description="recorded on judgements: self, teacher or critic")


class SelfCheckStage(LLMMixin, ExpandStage):
    kind = "self_check"
    fills = {"judgements": ("target_table", "target_id", "problem_id", "judge_model", "judge_role", "prompt_template",
                            "verdict", "raw_text", "parse_ok", "parse_error")}
    description = "the model reviews each answered attempt and says whether it is correct"
    config_class = SelfCheckConfig
    output_format = VerdictFormat()
    source, target = "attempts", "judgements"
    reads = {"attempts": ("attempt_id", "problem_id", "completion", "answer_parse_ok"),
             "problems": ("problem_id", "question")}


    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "judge_role": self.config.judge_role}

    def expand(self, rows, tables, stats: StageStats, shard: ShardInfo):
        question = {p["problem_id"]: p["question"] for p in tables.get("problems", [])}
        todo = [a for a in rows if a.get("answer_parse_ok")]
        reqs = [GenerationRequest(messages=self.messages(self.template.render(
                    question=question.get(a["problem_id"], ""), solution=a.get("completion") or "")),
                    sampling=self.sampling_params(n=1, **self.format_sampling(max_tokens=self.config.max_tokens)),
                    request_id=a["attempt_id"]) for a in todo]
        results = dict(zip((a["attempt_id"] for a in todo), self.call(reqs, shard, stats)))
        key, model = self.generation_key(), self.model_label
        out: list[list[dict] | Failed] = []
        for a in rows:
            if a["attempt_id"] not in results:
                stats.count("skipped_no_answer")
                out.append([])
                continue
            res = results[a["attempt_id"]]
            if not res.ok or not res.completions:
                out.append(Failed(res.error_reason or "no_completions", res.error_message or ""))
                continue
            text = res.completions[0].text
            verdict, err = self.output_format.parse(text)
            self.count_parse(stats, verdict is not None)
            if verdict is None:
                stats.count("unparsed")
            out.append([{"judgement_id": make_id(a["attempt_id"], key, prefix="j-"), "target_table": "attempts",
                         "target_id": a["attempt_id"], "problem_id": a["problem_id"], "judge_model": model,
                         "judge_role": self.config.judge_role, "prompt_template": self.template.ref,
                         "verdict": verdict or "unparsed", "steps": [], "raw_text": text, "parse_ok": verdict is not None,
                         "parse_error": err, "drop_reason": None, **self.lineage([a["attempt_id"]])}])
        return out


class RetryConfig(LLMOptions):
    template: str = Field("retry_with_review", description="prompt template name (a <name>.txt in stages/prompts/ or the method's prompts/)")
    n: int = Field(1, ge=1, description="new attempts per wrong attempt")


class RetryStage(LLMMixin, ExpandStage):
    kind = "retry"
    fills = {"attempts": ATTEMPT_COLUMNS}
    description = "each verified-wrong attempt is retried, prompted with the model's own review of it"
    config_class = RetryConfig
    source, target, append = "attempts", "attempts", True
    reads = {"attempts": ("attempt_id", "problem_id", "completion", "is_correct", "sample_index"),
             "judgements": ("target_id", "raw_text", "judgement_id"), "problems": ("problem_id", "question")}
    SAMPLE_OFFSET = 1000   # retried attempts get sample_index 1000 * (1 + index of the wrong attempt) + k



    def expand(self, rows, tables, stats: StageStats, shard: ShardInfo):
        question = {p["problem_id"]: p["question"] for p in tables.get("problems", [])}
        review = {j["target_id"]: j for j in tables.get("judgements", [])}
        wrong = [a for a in rows if a.get("is_correct") is False and a["attempt_id"] in review
                 and a.get("sample_index", 0) < self.SAMPLE_OFFSET]
        prompts = {a["attempt_id"]: self.template.render(question=question.get(a["problem_id"], ""),
                                                         solution=a.get("completion") or "",
                                                         review=review[a["attempt_id"]]["raw_text"])
                   for a in wrong}
        results = self.ask(prompts, shard, stats)
        key = self.generation_key()
        out: list[list[dict] | Failed] = []
        for a in rows:
            res = results.get(a["attempt_id"])
            if res is None:
                out.append([])
                continue
            failed = self.failure(res, prompts[a["attempt_id"]])
            if failed:
                out.append(failed)
                continue
            j = review[a["attempt_id"]]
            base = self.SAMPLE_OFFSET * (1 + int(a.get("sample_index") or 0))
            out.append([attempt_row(self, make_id(a["attempt_id"], key, i, prefix="a-"), a["problem_id"], base + i,
                                    prompts[a["attempt_id"]], res, c,
                                    self.lineage([a["attempt_id"], j["judgement_id"]]))
                        for i, c in enumerate(res.completions)])
        return out
