"""The transformers fallback engine with the embedded model: real HF generate on CPU."""
import asyncio

import pytest

from stages.engines.config import EngineConfig
from stages.engines import make_engine
from stages.engines.base import GenerationRequest, SamplingParams
from tests.conftest import MODELS_DIR

pytestmark = pytest.mark.integration


def test_transformers_engine_generates_n_samples_per_request():
    eng = make_engine(EngineConfig(kind="transformers", model="embedded", dtype="float32", max_model_len=512),
                      str(MODELS_DIR))
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(eng.start())
        sp = SamplingParams(temperature=0.7, max_tokens=12, n=2)
        reqs = [GenerationRequest(messages=[{"role": "user", "content": q}], sampling=sp, request_id=str(i))
                for i, q in enumerate(["What is 2 plus 3?", "Name a colour."])]
        reqs.append(GenerationRequest(prompt="The capital of France is", request_id="raw",
                                      sampling=SamplingParams(temperature=0.0, max_tokens=6, n=1)))
        out = loop.run_until_complete(eng.generate(reqs))
    finally:
        loop.run_until_complete(eng.close())
        loop.close()
    assert [r.request_id for r in out] == ["0", "1", "raw"]
    for r in out[:2]:
        assert r.ok and len(r.completions) == 2 and r.prompt_tokens > 0
        for c in r.completions:
            assert c.text.strip() and 0 < c.completion_tokens <= 12 and c.finish_reason in ("stop", "length")
    assert out[2].ok and "Paris" in out[2].completions[0].text
