"""The generate stage: problems in, n attempts per problem out (an expanding stage).

setup() opens a private asyncio event loop and starts the engine in it; process() submits every request of the
batch at once (the engine batches them) and turns each result into attempt rows. A problem whose request failed
(prompt too long, HTTP 4xx, retries exhausted, ...) becomes one failed row carrying error_stage='generate' and the
reason, so nothing is lost. Rows that arrive failed or dropped pass through untouched.

Attempt ids are stable: make_id(problem_id, generation key, sample_index) where the generation key hashes what
determines the text (engine kind, model, sampling, template version, system prompt), not the run: a rebuild or a
resumed build gives the same ids.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import time
from typing import Any, Optional

from schemas.errors import RowError
from schemas.rows import make_id, utcnow
from stages.base import Stage, StageStats, is_live, mark_error
from stages.engines.base import Engine, GenerationRequest, GenerationResult, SamplingParams
from stages.prompts import load_template

# problem columns every attempt row keeps (verify needs reference_answer; lineage is the attempt's own)
PROBLEM_COLUMNS = ("problem_id", "source", "split", "source_index", "question", "reference_solution",
                   "reference_answer", "env", "env_config_json")


def split_steps(text: str) -> list[dict]:
    """One step per non-empty line, text kept as written (stripped of surrounding whitespace)."""
    lines = [ln.strip() for ln in (text or "").splitlines()]
    return [{"idx": i, "text": ln, "action": None, "observation": None}
            for i, ln in enumerate(ln for ln in lines if ln)]


class GenerateStage(Stage):
    name = "generate"
    uses_engine = True
    input_columns = ("problem_id", "question")
    output_columns = ("attempt_id", "sample_index", "model", "engine", "sampling_json", "prompt_template",
                      "prompt", "completion", "finish_reason", "prompt_tokens", "completion_tokens", "steps")

    def __init__(self, engine_config: Any, sampling: Any, generate: Any, models_dir: str = "data/models",
                 run_id: str = "", method: str = ""):
        self.engine_config = engine_config
        self.sampling = sampling
        self.generate = generate
        self.models_dir = str(models_dir)
        self.run_id = run_id
        self.method = method
        self.template = load_template(generate.template)   # fail fast on an unknown template
        self._engine: Optional[Engine] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None

    # ---- lifecycle

    def __getstate__(self) -> dict:
        d = dict(self.__dict__)
        d["_engine"], d["_loop"] = None, None
        return d

    def setup(self) -> None:
        if self._engine is not None:
            return
        from stages.engines import make_engine

        self._loop = asyncio.new_event_loop()
        engine = make_engine(self.engine_config, self.models_dir)
        try:
            self._loop.run_until_complete(engine.start())
        except BaseException:
            self._loop.close()
            self._loop = None
            raise
        self._engine = engine

    def teardown(self) -> None:
        if self._loop is None:
            return
        try:
            if self._engine is not None:
                self._loop.run_until_complete(self._engine.close())
        finally:
            self._engine = None
            self._loop.close()
            self._loop = None

    @property
    def engine(self) -> Optional[Engine]:
        return self._engine

    # ---- what it records

    def _sampling_params(self) -> SamplingParams:
        s = self.sampling
        return SamplingParams(temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens, n=s.n,
                              stop=list(s.stop))

    def sampling_json(self) -> str:
        d = self.sampling.model_dump() if hasattr(self.sampling, "model_dump") else dict(vars(self.sampling))
        d["seed"] = getattr(self.engine_config, "seed", None)   # engine-level seed shapes the samples too
        return json.dumps(d, sort_keys=True)

    def model_label(self) -> str:
        if self.engine_config.kind == "fake":
            return f"fake:{self.engine_config.fake_script or 'echo_answer'}"
        from stages.engines.model_prep import model_label
        return model_label(self.engine_config.model)

    def generation_key(self) -> str:
        key = json.dumps({"engine": self.engine_config.kind, "model": self.model_label(),
                          "sampling": self.sampling_json(), "template": self.template.ref,
                          "system": self.generate.system_prompt}, sort_keys=True)
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"engine": self.engine_config.kind, "model": self.model_label(),
                             "prompt_template": self.template.ref, "sampling": json.loads(self.sampling_json()),
                             "system_prompt": self.generate.system_prompt}
        if self.engine_config.kind == "vllm":
            c = self.engine_config
            d.update(dtype=c.dtype, max_model_len=c.max_model_len, max_num_seqs=c.max_num_seqs,
                     enforce_eager=c.enforce_eager, enable_prefix_caching=c.enable_prefix_caching)
        elif self.engine_config.kind == "openai":
            d["base_url"] = self.engine_config.base_url
        return d

    # ---- work

    def messages_for(self, problem: dict) -> tuple[str, list[dict[str, str]]]:
        user = self.template.render(question=problem["question"])
        msgs = []
        if self.generate.system_prompt:
            msgs.append({"role": "system", "content": self.generate.system_prompt})
        msgs.append({"role": "user", "content": user})
        return user, msgs

    def process(self, rows: list[dict]) -> tuple[list[dict], StageStats]:
        t0 = time.perf_counter()
        if self._engine is None:
            self.setup()
        self.check_columns(rows)
        stats = StageStats()
        live = [r for r in rows if is_live(r)]
        stats.rows_in = len(live)
        sp = self._sampling_params()
        prompts: list[tuple[str, list[dict]]] = [self.messages_for(p) for p in live]
        requests = [GenerationRequest(messages=msgs, sampling=sp, request_id=str(p["problem_id"]))
                    for p, (_, msgs) in zip(live, prompts)]
        results: list[GenerationResult] = (self._loop.run_until_complete(self._engine.generate(requests))
                                           if requests else [])
        if len(results) != len(requests):
            raise RuntimeError(f"engine returned {len(results)} results for {len(requests)} requests")

        key, sjson, model, created = self.generation_key(), self.sampling_json(), self.model_label(), utcnow()
        by_id: dict[int, list[dict]] = {}
        for k, (problem, (user, msgs), res) in enumerate(zip(live, prompts, results)):
            stats.prompt_tokens += res.prompt_tokens
            if not res.ok or not res.completions:
                reason = res.error_reason or "no_completions"
                stats.error(reason)
                err = RowError(reason, res.error_message or "", raw=json.dumps(msgs))
                by_id[k] = [mark_error(problem, self.name, err)]
                continue
            base = {c: problem.get(c) for c in PROBLEM_COLUMNS if c in problem}
            out = []
            for i, comp in enumerate(res.completions):
                stats.completion_tokens += comp.completion_tokens
                out.append({
                    **base,
                    "attempt_id": make_id(problem["problem_id"], key, i, prefix="a-"),
                    "sample_index": i, "model": model, "engine": self.engine_config.kind,
                    "sampling_json": sjson, "prompt_template": self.template.ref, "prompt": user,
                    "completion": comp.text, "finish_reason": comp.finish_reason,
                    "prompt_tokens": res.prompt_tokens, "completion_tokens": comp.completion_tokens,
                    "steps": split_steps(comp.text),
                    "final_answer": None, "answer_parse_ok": False, "is_correct": None, "reward": None,
                    "verifier": None, "drop_reason": None, "tree_id": None, "node_path": None,
                    "run_id": self.run_id, "method": self.method, "created_at": created,
                    "parent_ids": [problem["problem_id"]],
                })
            stats.rows_out += len(out)
            by_id[k] = out

        live_iter = iter(range(len(live)))
        output: list[dict] = []
        for r in rows:
            output.extend(by_id[next(live_iter)] if is_live(r) else [r])
        stats.seconds = time.perf_counter() - t0
        return output, stats
