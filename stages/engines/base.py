"""One async interface for every LLM engine.

A list of GenerationRequest in, a list of GenerationResult out (same order). Engines are built from an EngineConfig
by `make_engine`; nothing heavy happens until `await engine.start()` (called from a stage's setup), so configs and
stages pickle into Ray actors.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Optional


CONSTRAINT_KINDS = ("regex", "choice", "json", "grammar")


@dataclass(frozen=True)
class Constraint:
    """What an engine holds a completion to: exactly one of a regex (the whole completion matches it), a choice
    (the completion is one of these strings), a JSON schema, or a grammar (EBNF / GBNF as the engine's backend
    reads it). Built by an output format (stages/formats.py), which also parses what comes back."""
    regex: Optional[str] = None
    choice: Optional[tuple[str, ...]] = None
    json: Optional[str] = None          # a JSON schema, as JSON text (hashable, sent as is)
    grammar: Optional[str] = None

    def __post_init__(self):
        set_ = [k for k in CONSTRAINT_KINDS if getattr(self, k) is not None]
        if len(set_) != 1:
            raise ValueError(f"a Constraint sets exactly one of {CONSTRAINT_KINDS}, got {set_ or 'none'}")

    @property
    def kind(self) -> str:
        return next(k for k in CONSTRAINT_KINDS if getattr(self, k) is not None)

    @property
    def value(self) -> Any:
        return getattr(self, self.kind)


@dataclass
class SamplingParams:
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 256
    n: int = 1
    stop: list[str] = field(default_factory=list)
    constraint: Optional[Constraint] = None      # structured output; None: free text
    min_tokens: int = 0     # no end-of-sequence or stop string before this many tokens (benches compare equal lengths)


@dataclass
class GenerationRequest:
    """Chat messages ({role, content}) or a raw prompt string; exactly one is set."""
    messages: Optional[list[dict[str, str]]] = None
    prompt: Optional[str] = None
    sampling: SamplingParams = field(default_factory=SamplingParams)
    request_id: str = ""
    return_token_ids: bool = False


@dataclass
class Completion:
    text: str
    finish_reason: Optional[str] = None
    completion_tokens: int = 0
    token_ids: Optional[list[int]] = None


@dataclass
class GenerationResult:
    """n completions for one request, or an error (reason tag + message) for that request alone."""
    request_id: str
    completions: list[Completion] = field(default_factory=list)
    prompt_tokens: int = 0
    error_reason: Optional[str] = None
    error_message: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.error_reason is None


OnResult = Callable[[int, "GenerationResult"], None]


async def gather_reporting(coros: list[Awaitable["GenerationResult"]],
                           on_result: Optional[OnResult] = None) -> list["GenerationResult"]:
    """asyncio.gather that calls `on_result(index, result)` as each request finishes (progress in sequences)."""
    if on_result is None:
        return list(await asyncio.gather(*coros))

    async def tracked(i: int, c: Awaitable[GenerationResult]) -> GenerationResult:
        r = await c
        on_result(i, r)
        return r
    return list(await asyncio.gather(*(tracked(i, c) for i, c in enumerate(coros))))


class Engine:
    """Base class of engines. Subclasses implement start, generate, close."""

    kind: str = "base"

    def __init__(self, config: Any):
        self.config = config

    @property
    def model_name(self) -> str:
        return str(getattr(self.config, "model", ""))

    async def start(self) -> None:
        """Load the model / open the client. Raises TransientEngineError when a retry may help."""

    async def generate(self, requests: list[GenerationRequest],
                       on_result: Optional[OnResult] = None) -> list[GenerationResult]:
        """Results in request order; `on_result(i, result)` is called as each request finishes."""
        raise NotImplementedError

    async def close(self) -> None:
        """Release the model / client."""

    def live_stats(self) -> dict[str, Any]:
        """Counters the engine keeps while it runs (vLLM: tokens generated so far, prefix-cache hits)."""
        return {}

    def describe(self) -> dict[str, Any]:
        return {"engine": self.kind, "model": self.model_name}
