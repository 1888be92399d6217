"""What every LLM stage shares: its options (role, template, sampling) and the call to its role's engine.

The engine is not the stage's own: `setup(engines)` takes a client of the build's shared engine for the stage's
role (one engine per distinct model per build, in process or a Ray actor). Requests carry the stage's name as
progress tag and the shard id, so the build shows sequences done / total and tokens/s per stage.
`BudgetLLMMixin` adds a prompt token budget for the stages that trim context (rollout, Agent-R's search).
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Optional

from pydantic import Field, field_validator

from schemas.errors import ConfigError
from stages.agents.tokens import counter_name, token_counter
from stages.base import Failed, ShardInfo, StageStats
from stages.engines.base import GenerationRequest, GenerationResult, SamplingParams
from stages.engines.config import EngineConfig
from stages.formats import ConstrainMode, OutputFormat, resolve_constrain
from stages.options import Options
from stages.prompts import PromptTemplate, load_template


class LLMOptions(Options):
    role: str = Field("student", description="engine role this stage uses (a key of the recipe's `engines`)")
    template: str = Field("", description="prompt template name (a <name>.txt in stages/prompts/ or the method's prompts/)")
    system_prompt: Optional[str] = Field(None, description="optional system message")
    temperature: float = Field(0.7, ge=0, description="sampling temperature")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling")
    max_tokens: int = Field(256, ge=1, description="max new tokens per sample")
    n: int = Field(1, ge=1, description="samples per request")
    stop: list[str] = Field(default_factory=list, description="stop strings")


class ConstrainedOptions(LLMOptions):
    constrain: ConstrainMode = Field("auto", description="hold the model's output to this stage's format with the "
                                                         "engine's structured outputs: auto (where the engine can), "
                                                         "on (refuse an engine that cannot), off")

    @field_validator("constrain", mode="before")
    @classmethod
    def _yaml_on_off(cls, v: Any) -> Any:      # YAML reads a bare on/off as true/false
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v


class LLMMixin:
    """Mixed into a Stage whose config is an LLMOptions (first among the bases). Checks the template and the role's
    engine at construction, records both in `describe()`, and gives `template`, `engine_config`,
    `sampling_params()`, `messages()`, `call()` and the identity of what produced a text (`generation_key`)."""

    config: LLMOptions
    name: str
    _llm: Any = None
    output_format: Optional[OutputFormat] = None    # the format this stage parses its output in (stages/formats.py)

    def __init__(self, *a: Any, **k: Any):
        super().__init__(*a, **k)
        self._init_llm()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), **self.llm_describe()}

    def _init_llm(self) -> None:
        self.template: PromptTemplate = load_template(self.config.template)   # fail fast on an unknown name
        engines = getattr(self.context, "engines", None) or {}
        if self.config.role not in engines:
            raise ConfigError(f"stage '{self.name}': role '{self.config.role}' has no engine "
                              f"(engines: {', '.join(sorted(engines)) or 'none'})")
        self.engine_config: EngineConfig = engines[self.config.role]
        self.constrained = self.output_format is not None and resolve_constrain(
            getattr(self.config, "constrain", "off"), self.output_format, self.engine_config,
            f"stage '{self.name}' ({getattr(self, 'kind', '')})")

    def format_sampling(self, **context: Any) -> dict[str, Any]:
        """`constraint=` for sampling_params: the format's constraint for this request, when this stage sends it."""
        return {"constraint": self.output_format.constraint(**context)} if self.constrained else {}

    @staticmethod
    def count_parse(stats: StageStats, ok: bool) -> None:
        """One parsed reply in the stage's counters (`parsed`, `parse_ok`: its parse rate in the manifest)."""
        stats.count("parsed")
        if ok:
            stats.count("parse_ok")

    def __getstate__(self) -> dict:
        d = dict(self.__dict__)
        d["_llm"] = None
        return d

    def setup(self, engines: Any = None) -> None:
        if self._llm is None:
            if engines is None:
                raise ConfigError(f"stage '{self.name}' needs an engine for role '{self.config.role}'")
            self._llm = engines.client(self.config.role)

    def teardown(self) -> None:
        self._llm = None

    def sampling_params(self, **over: Any) -> SamplingParams:
        c = self.config
        d = dict(temperature=c.temperature, top_p=c.top_p, max_tokens=c.max_tokens, n=c.n, stop=list(c.stop))
        d.update(over)
        return SamplingParams(**d)

    def sampling_json(self) -> str:
        c = self.config
        d = {k: getattr(c, k) for k in ("temperature", "top_p", "max_tokens", "n", "stop")}
        d["seed"] = self.engine_config.seed    # the engine-level seed shapes the samples too
        if getattr(self, "constrained", False):   # so does a constraint (ids of unconstrained data stay as they were)
            d["constraint"] = self.output_format.name
        return json.dumps(d, sort_keys=True)

    @property
    def model_label(self) -> str:
        return self.engine_config.label()

    def generation_key(self) -> str:
        """A hash of what determines the text (engine kind, model, sampling, template version, system prompt), not
        of the run: a rebuild or a resumed build gives the same ids."""
        key = json.dumps({"engine": self.engine_config.kind, "model": self.model_label,
                          "sampling": self.sampling_json(), "template": self.template.ref,
                          "system": self.config.system_prompt}, sort_keys=True)
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def messages(self, user: str) -> list[dict[str, str]]:
        msgs = []
        if self.config.system_prompt:
            msgs.append({"role": "system", "content": self.config.system_prompt})
        msgs.append({"role": "user", "content": user})
        return msgs

    def call(self, requests: list[GenerationRequest], shard: ShardInfo, stats: StageStats) -> list[GenerationResult]:
        """Send every request at once to the role's engine; count tokens."""
        if self._llm is None:
            raise ConfigError(f"stage '{self.name}' was not set up with an engine")
        results = self._llm.generate(requests, tag=self.name, shard=shard.shard_id) if requests else []
        if len(results) != len(requests):
            raise RuntimeError(f"engine returned {len(results)} results for {len(requests)} requests")
        for r in results:
            stats.prompt_tokens += r.prompt_tokens
            stats.completion_tokens += sum(c.completion_tokens for c in r.completions)
        return results

    def ask(self, prompts: dict[str, str], shard: ShardInfo, stats: StageStats,
            per_request: Optional[dict[str, dict[str, Any]]] = None, **sampling: Any) -> dict[str, GenerationResult]:
        """One chat request per user prompt (keyed by the row id it is for), all sent at once; the results by the
        same keys. `sampling` overrides the stage's sampling (e.g. n=1); `per_request[key]` one request's (e.g.
        its constraint)."""
        per_request = per_request or {}
        reqs = [GenerationRequest(messages=self.messages(p), request_id=k,
                                  sampling=self.sampling_params(**{**sampling, **per_request.get(k, {})}))
                for k, p in prompts.items()]
        return dict(zip(prompts, self.call(reqs, shard, stats)))

    @staticmethod
    def failure(res: GenerationResult, prompt: str) -> Optional[Failed]:
        """A result that gave no text as the Failed of its row (the engine's reason, the prompt as raw input); None
        when it has a completion."""
        if res.ok and res.completions:
            return None
        return Failed(res.error_reason or "no_completions", res.error_message or "", raw_input=json.dumps(prompt))

    def llm_describe(self) -> dict[str, Any]:
        return {"role": self.config.role, "model": self.model_label, "engine": self.engine_config.kind,
                "prompt_template": self.template.ref, "sampling": json.loads(self.sampling_json()),
                "system_prompt": self.config.system_prompt,
                **({"output_format": {**self.output_format.describe(), "constrained": self.constrained}}
                   if self.output_format is not None else {})}

    def templates(self) -> dict[str, str]:
        return {self.template.name: self.template.version}


class BudgetLLMMixin(LLMMixin):
    """An LLMMixin whose prompts are trimmed to a token budget (config `context_tokens`, `max_tokens`, `tokenizer`):
    `budget`, a token counter loaded at setup (`counter` names it) and `count_prompt(messages)`."""

    def __init__(self, *a: Any, **k: Any):
        super().__init__(*a, **k)
        self._init_budget()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), **self.budget_describe()}

    def _init_budget(self) -> None:
        c = self.config
        self.budget = c.context_tokens or (self.engine_config.max_model_len - c.max_tokens)
        if self.budget < 1:
            raise ConfigError(f"{self.name}.max_tokens: {c.max_tokens} leaves no room for the prompt in "
                              f"engines.{c.role}.max_model_len {self.engine_config.max_model_len}")
        self._count = None
        self.counter = ""

    def __getstate__(self) -> dict:
        d = super().__getstate__()
        d["_count"] = None
        return d

    def setup(self, engines: Any = None) -> None:
        super().setup(engines)
        if self._count is None:
            models_dir = (getattr(engines, "models_dir", None) or os.environ.get("ERRATA_MODELS")
                          or os.path.join("data", "models"))
            self._count, self.counter = token_counter(self.engine_config, models_dir, self.config.tokenizer)

    def budget_describe(self) -> dict[str, Any]:
        return {"context_tokens": self.budget,
                "token_counter": self.counter or counter_name(self.engine_config, self.config.tokenizer)}

    def count_prompt(self, messages: list[dict]) -> int:
        """Tokens of the prompt of `messages` (the system prompt, if any, in front)."""
        sp = self.config.system_prompt
        return self._count(([{"role": "system", "content": sp}] if sp else []) + messages)
