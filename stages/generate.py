"""The generate stage: problems in, n attempts per problem out (an expanding LLM stage).

Every request of the shard goes to the role's engine at once (the engine batches them, and other shards' requests
share the batch). A problem whose request failed (prompt too long, HTTP 4xx, retries exhausted, ...) becomes an
`errors` record with the reason and the prompt; nothing is lost.

An attempt's `steps` are its completion as `stages.steps.split_solution` splits it, numbered from 1: the split a
judge is shown, so a judgement's `first_error_step` N is the attempt's step with idx N.

Attempt ids are stable: make_id(problem_id, generation key, sample_index), where the generation key hashes what
determines the text (engine kind, model, sampling, template version, system prompt), not the run.
"""
from __future__ import annotations

import json
from typing import Any

from pydantic import Field

from schemas.rows import make_id
from stages.base import ExpandStage, Failed, ShardInfo, StageStats
from stages.engines.base import Completion, GenerationRequest, GenerationResult
from stages.llm import LLMMixin, LLMOptions
from stages.steps import step_rows


def attempt_row(stage: LLMMixin, attempt_id: str, problem_id: str, sample_index: int, prompt: str,
                res: GenerationResult, comp: Completion, lineage: dict[str, Any]) -> dict[str, Any]:
    """An `attempts` row of one completion of the stage's model, not yet verified (a verify stage fills the answer)."""
    return {"attempt_id": attempt_id, "problem_id": problem_id, "sample_index": sample_index,
            "model": stage.model_label, "engine": stage.engine_config.kind, "sampling_json": stage.sampling_json(),
            "prompt_template": stage.template.ref, "prompt": prompt, "completion": comp.text,
            "finish_reason": comp.finish_reason, "prompt_tokens": res.prompt_tokens,
            "completion_tokens": comp.completion_tokens, "steps": step_rows(comp.text), "drop_reason": None,
            **lineage}


# the columns of an attempt its model's call fills (a verify stage fills the answer: VERIFY_COLUMNS)
ATTEMPT_COLUMNS = ("problem_id", "sample_index", "model", "engine", "sampling_json", "prompt_template", "prompt",
                   "completion", "finish_reason", "prompt_tokens", "completion_tokens", "steps")


class GenerateConfig(LLMOptions):
    template: str = Field("math_step_by_step", description="prompt template name (a <name>.txt in stages/prompts/ or the method's prompts/)")
    n: int = Field(4, ge=1, description="samples per problem")


class GenerateStage(LLMMixin, ExpandStage):
    kind = "generate"
    fills = {"attempts": ATTEMPT_COLUMNS}
    description = "the role's model answers each problem n times"
    config_class = GenerateConfig
    source, target = "problems", "attempts"
    reads = {"problems": ("problem_id", "question")}



    def expand(self, rows, tables, stats: StageStats, shard: ShardInfo):
        sp = self.sampling_params()
        prompts = [self.template.render(question=p["question"]) for p in rows]
        requests = [GenerationRequest(messages=self.messages(u), sampling=sp, request_id=str(p["problem_id"]))
                    for p, u in zip(rows, prompts)]
        results = self.call(requests, shard, stats)
        key = self.generation_key()
        out: list[list[dict] | Failed] = []
        for problem, user, req, res in zip(rows, prompts, requests, results):
            if not res.ok or not res.completions:
                out.append(Failed(res.error_reason or "no_completions", res.error_message or "",
                                  raw_input=json.dumps(req.messages)))
                continue
            lineage = self.lineage([problem["problem_id"]])
            out.append([attempt_row(self, make_id(problem["problem_id"], key, i, prefix="a-"), problem["problem_id"],
                                    i, user, res, comp, lineage) for i, comp in enumerate(res.completions)])
        return out
