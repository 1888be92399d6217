"""Output formats: one declaration per format a stage parses, giving both the engine's constraint and the parser.

A stage whose model output is parsed names its format (`OutputFormat`); the format builds the request's
`Constraint` (a regex, a choice, a JSON schema or a grammar, from the same pieces the parser reads: labels, the
allowed values) and parses the text that comes back, raw text and parse_ok kept by the caller. Whether a stage sends
the constraint is its `constrain` option: `auto` (where the role's engine can hold a completion to that kind of
constraint), `on` (a ConfigError at the chain check where it cannot), `off`.

Engines and the constraint kinds they take: vllm (vLLM's structured outputs: regex, choice, json, grammar), fake
(honours regex, choice and json; tests), openai with `structured_outputs: vllm` (a vLLM server: every kind) or
`openai` (OpenAI's `response_format`: json only), transformers (none: `auto` turns it off).
"""
from __future__ import annotations

import re
from typing import Any, Iterable, Literal, Optional

from schemas.errors import ConfigError
from stages.engines.base import Constraint
from stages.engines.config import EngineConfig

ConstrainMode = Literal["auto", "on", "off"]


def literal(text: str) -> str:
    """`text` as a regex that matches it literally (spaces left plain: engines' regex dialects differ on `\\ `)."""
    return re.escape(text).replace("\\ ", " ")


def one_of(options: Iterable[str]) -> str:
    """A regex group matching exactly one of these strings (longest first, so a prefix never wins early)."""
    opts = sorted({o for o in options if o}, key=lambda o: (-len(o), o))
    if not opts:
        raise ValueError("one_of needs at least one option")
    return "(" + "|".join(literal(o) for o in opts) + ")"


def number_in(lo: int, hi: int) -> str:
    """A regex group matching the integers lo..hi written plainly."""
    return one_of(str(i) for i in range(lo, hi + 1))


LINE = r"[^\n]"            # one character of a line (regex pieces use no `.`: engines differ on newlines)


def supported_constraints(engine: EngineConfig) -> frozenset[str]:
    """The constraint kinds an engine of this setting can hold a completion to."""
    if engine.kind in ("vllm",):
        return frozenset({"regex", "choice", "json", "grammar"})
    if engine.kind == "fake":
        return frozenset({"regex", "choice", "json"})
    if engine.kind == "openai":
        mode = getattr(engine, "structured_outputs", "vllm")
        return frozenset({"regex", "choice", "json", "grammar"}) if mode == "vllm" else \
            frozenset({"json"}) if mode == "openai" else frozenset()
    return frozenset()


class OutputFormat:
    """A format a model's output is parsed in. Subclasses set `name`, `kind` (the constraint kind they build) and
    implement `constraint(**context)` and `parse(text, **context)` from the same declaration."""
    name: str = "format"
    kind: str = "regex"

    def constraint(self, **context: Any) -> Constraint:
        raise NotImplementedError

    def parse(self, text: str, **context: Any) -> Any:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"format": self.name, "kind": self.kind}


def resolve_constrain(mode: str, fmt: OutputFormat, engine: EngineConfig, where: str) -> bool:
    """Whether a stage sends its format's constraint (see ConstrainedOptions); `on` with an engine that cannot is
    a ConfigError naming the stage and the engine."""
    can = fmt.kind in supported_constraints(engine)
    if mode == "on" and not can:
        raise ConfigError(f"{where}: constrain=on, but a {engine.kind} engine"
                          + (f" (structured_outputs: {getattr(engine, 'structured_outputs', '')})"
                             if engine.kind == "openai" else "")
                          + f" cannot hold its output to a {fmt.kind} constraint; use constrain=auto or off, or "
                            f"another engine")
    return mode != "off" and can


def text_budget(max_tokens: int, reserve: int = 16) -> int:
    """Characters of free text a constrained reply may spend so its fixed parts still fit in max_tokens (about
    2.5 characters a token, a conservative figure for English and numbers)."""
    return max(20, int((max_tokens - reserve) * 2.5))


def parse_rate(counts: dict[str, int], prefix: str = "") -> Optional[float]:
    """parse_ok / parsed from a stage's counters (None when nothing was parsed)."""
    n = counts.get(f"{prefix}parsed", 0)
    return round(counts.get(f"{prefix}parse_ok", 0) / n, 4) if n else None
