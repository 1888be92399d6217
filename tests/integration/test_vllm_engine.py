"""The real vLLM CPU engine with the embedded SmolLM2 model (slow: ~30 s engine start, one engine at a time)."""
from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from stages.engines.config import EngineConfig
from stages.engines.base import GenerationRequest, SamplingParams

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
MAX_LEN = 1024


@pytest.fixture(scope="session")
def embedded_model() -> Path:
    from stages.engines.model_prep import ensure_embedded_model
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return ensure_embedded_model(REPO / "data" / "models")


@pytest.fixture(scope="module")
def engine(embedded_model):
    from stages.engines import make_engine
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    loop = asyncio.new_event_loop()
    eng = make_engine(EngineConfig(kind="vllm", max_model_len=MAX_LEN, enforce_eager=True),
                      str(REPO / "data" / "models"))
    loop.run_until_complete(eng.start())
    yield eng, loop
    loop.run_until_complete(eng.close())
    loop.close()


def test_embedded_model_is_bf16_safetensors(embedded_model):
    cfg = json.loads((embedded_model / "config.json").read_text())
    assert cfg["dtype"] == "bfloat16" and (embedded_model / "model.safetensors").exists()


def test_chat_prompts_n2_and_overlong_prompt(engine):
    eng, loop = engine
    sp = SamplingParams(n=2, max_tokens=48, temperature=0.7)
    reqs = [GenerationRequest(messages=[{"role": "user", "content": f"What is {i} + {i + 3}? Think step by step."}],
                              sampling=sp, request_id=f"q{i}") for i in range(4)]
    long = GenerationRequest(messages=[{"role": "user", "content": "count: " + " ".join(["one"] * 2 * MAX_LEN)}],
                             sampling=sp, request_id="too-long")
    reqs.insert(2, long)
    res = loop.run_until_complete(eng.generate(reqs))
    assert [r.request_id for r in res] == ["q0", "q1", "too-long", "q2", "q3"]
    bad = res[2]
    assert bad.error_reason == "prompt_too_long" and bad.completions == [] and bad.prompt_tokens > MAX_LEN
    for r in res[:2] + res[3:]:
        assert r.ok, r.error_message
        assert len(r.completions) == 2
        assert 10 < r.prompt_tokens < 100           # chat template + question, tokenized
        for c in r.completions:
            assert c.text.strip() and 0 < c.completion_tokens <= 48
            assert c.finish_reason in ("stop", "length")
    # n samples differ (temperature 0.7) at least somewhere
    assert any(r.completions[0].text != r.completions[1].text for r in res if r.ok)


def test_raw_prompt_and_greedy_is_deterministic(engine):
    eng, loop = engine
    sp = SamplingParams(n=1, max_tokens=12, temperature=0.0)
    reqs = [GenerationRequest(prompt="The capital of France is", sampling=sp, request_id=str(i),
                              return_token_ids=True) for i in range(2)]
    a, b = loop.run_until_complete(eng.generate(reqs))
    assert a.ok and a.completions[0].text == b.completions[0].text
    assert "Paris" in a.completions[0].text
    assert len(a.completions[0].token_ids) == a.completions[0].completion_tokens > 0


def test_min_tokens_holds_the_end_back(engine):
    """What bench/constraints.py relies on to compare free and constrained text at equal lengths: with min_tokens
    neither the end of sequence nor a stop string ends the text early (a space stops the free one at once)."""
    eng, loop = engine
    q = [{"role": "user", "content": "Tell me about the sea."}]
    free, held = loop.run_until_complete(eng.generate([
        GenerationRequest(messages=q, sampling=SamplingParams(max_tokens=40, stop=[" "]), request_id="free"),
        GenerationRequest(messages=q, sampling=SamplingParams(max_tokens=40, min_tokens=40, stop=[" "]),
                          request_id="held")]))
    assert free.completions[0].completion_tokens < 40 and free.completions[0].finish_reason == "stop"
    assert held.completions[0].completion_tokens == 40


def test_generate_stage_on_vllm(engine, embedded_model):
    """The stage drives its own engine; run after the module engine exists so only one loads at a time."""
    eng, loop = engine
    loop.run_until_complete(eng.close())          # free the module engine: one vLLM engine at a time
    from stages.generate import GenerateConfig, GenerateStage
    from stages.engines.host import LocalEngines
    from tests.helpers import context
    st = GenerateStage(GenerateConfig(n=2, max_tokens=64),
                       context=context("it", student=EngineConfig(kind="vllm", max_model_len=MAX_LEN)))
    engines = LocalEngines(dict(st.context.engines), str(REPO / "data" / "models"))
    st.setup(engines)
    try:
        probs = [{"problem_id": f"p{i}", "question": f"Tom has {i + 2} apples and buys {i + 5} more. How many?",
                  "reference_answer": str(2 * i + 7), "reference_solution": None, "source": "test"}
                 for i in range(3)]
        res = st.run({"problems": probs})
        described = engines.describe()
    finally:
        st.teardown()
        engines.stop()
    out, stats = res.tables["attempts"], res.stats
    (eng,) = described.values()
    assert eng["starts"] == 1 and eng["dtype"] in ("float32", "bfloat16") and "->" in eng["dtype_reason"]
    batch = eng["batch"]    # counted from vLLM's own per-step stats: 3 requests x n=2 run together
    assert batch["steps"] > 0 and 1 <= batch["mean_running"] <= 6 and batch["max_num_seqs"] == 64
    assert batch["preempted"] == 0 and batch["steps_short_while_waiting"] == 0
    assert len(out) == 6 and stats.rows_out == 6 and stats.errors == 0
    assert stats.completion_tokens == sum(r["completion_tokens"] for r in out) > 0
    assert all(r["completion"].strip() and r["steps"] and r["model"] == "embedded:SmolLM2-135M-Instruct"
               for r in out)
