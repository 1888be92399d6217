"""A test-only table and teacher stage (attempts -> test_checks), shared by the local and Ray build tests.

It lives in one module so that both test files register the very same table class (a module imported under two
names would register two different classes under one table name).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from schemas.rows import Lineage
from schemas.registry import TableSpec, register_table
from stages.base import ExpandStage, Failed
from stages.engines.base import GenerationRequest
from stages.llm import LLMMixin, LLMOptions


@dataclass
class Check(Lineage):
    """A test table: the teacher's yes/no check of an attempt."""
    check_id: str = ""
    attempt_id: str = ""
    problem_id: str = ""
    judge_model: str = ""
    says_correct: Optional[bool] = None
    raw_text: str = ""
    parse_ok: bool = False
    drop_reason: Optional[str] = None


register_table(TableSpec("test_checks", Check, "check_id", ("attempt_id",), description="test only"))


class CheckConfig(LLMOptions):
    role: str = "teacher"
    template: str = "math_step_by_step"
    temperature: float = 0.0


class CheckStage(LLMMixin, ExpandStage):
    """attempts -> test_checks, one teacher call per attempt (the fake engine echoes the gold marker)."""
    kind = "check"
    config_class = CheckConfig
    source, target = "attempts", "test_checks"
    reads = {"attempts": ("attempt_id", "problem_id", "completion"),
             "problems": ("problem_id", "question")}

    def expand(self, rows, tables, stats, shard):
        q = {p["problem_id"]: p["question"] for p in tables["problems"]}
        reqs = [GenerationRequest(messages=self.messages(q[a["problem_id"]] + "\n" + a["completion"]),
                                  sampling=self.sampling_params(n=1), request_id=a["attempt_id"]) for a in rows]
        out = []
        for a, res in zip(rows, self.call(reqs, shard, stats)):
            if not res.ok:
                out.append(Failed(res.error_reason or "failed"))
                continue
            text = res.completions[0].text
            out.append([{"check_id": "c-" + a["attempt_id"], "attempt_id": a["attempt_id"],
                         "problem_id": a["problem_id"], "judge_model": self.model_label,
                         "says_correct": "The answer is" in text, "raw_text": text, "parse_ok": True,
                         **self.lineage([a["attempt_id"]])}])
        return out
