"""LLM engines behind one async interface (base.py), hosted once per build (host.py). `make_engine` imports each kind
lazily, so importing stages never imports vllm, torch or httpx."""
from __future__ import annotations

from stages.engines.base import (Completion, Engine, GenerationRequest, GenerationResult,  # noqa: F401
                                 SamplingParams)
from stages.engines.config import ENGINE_KINDS, EngineConfig  # noqa: F401
from schemas.errors import ConfigError


def make_engine(config: EngineConfig, models_dir: str = "data/models", engines_on_device: int = 1) -> Engine:
    """Build (not start) the engine an EngineConfig names. Call `await engine.start()` before generating.
    `engines_on_device`: vLLM engines of the build sharing this one's device (they split its memory budget)."""
    kind = config.kind
    if kind == "vllm":
        from stages.engines.vllm_engine import VLLMEngine
        return VLLMEngine(config, models_dir, engines_on_device)
    if kind == "openai":
        from stages.engines.openai_engine import OpenAIEngine
        return OpenAIEngine(config)
    if kind == "transformers":
        from stages.engines.transformers_engine import TransformersEngine
        return TransformersEngine(config, models_dir)
    if kind == "fake":
        from stages.engines.fake_engine import FakeEngine
        return FakeEngine(config)
    raise ConfigError(f"unknown engine kind '{kind}' (known: {', '.join(ENGINE_KINDS)})")
