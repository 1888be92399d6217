"""GenerateStage on the fake engine: expansion, stable ids, failures become rows, nothing is lost."""
from __future__ import annotations

import datetime as dt
import json
import pickle

import pytest

from pipelines.config import EngineConfig, GenerateConfig, SamplingConfig
from schemas.rows import Attempt, Problem, columns, make_id, to_table, validate_row
from stages.generate import GenerateStage, split_steps
from stages.prompts import load_template


def problem(i, question=None, gold=None):
    gold = str(10 + i) if gold is None else gold
    return {"problem_id": f"p-{i}", "source": "test", "split": "train", "source_index": i,
            "question": question or f"What is {i} plus 10? [gold={gold}]", "reference_solution": f"{i}+10={gold}",
            "reference_answer": gold, "env": None, "env_config_json": None,
            "run_id": "r-problems", "method": "sample_verify", "created_at": None, "parent_ids": []}


def stage(script="mixed", n=3, run_id="run-1", system=None, **eng):
    return GenerateStage(EngineConfig(kind="fake", fake_script=script, **eng), SamplingConfig(n=n, max_tokens=64),
                         GenerateConfig(system_prompt=system), models_dir="unused", run_id=run_id,
                         method="sample_verify")


def run_stage(st, rows):
    st.setup()
    try:
        return st.process(rows)
    finally:
        st.teardown()


def test_expands_each_problem_into_n_full_attempt_rows():
    probs = [problem(i) for i in range(3)]
    st = stage(n=4)
    out, stats = run_stage(st, probs)
    assert len(out) == 12
    assert [r["problem_id"] for r in out] == [p["problem_id"] for p in probs for _ in range(4)]
    assert [r["sample_index"] for r in out] == [0, 1, 2, 3] * 3
    tmpl = load_template("math_step_by_step")
    for r in out:
        assert set(columns(Attempt)) <= set(r)
        validate_row(r, Attempt)
        for c in ("question", "reference_answer", "reference_solution", "source"):
            assert r[c] == probs[int(r["problem_id"][2:])][c]
        assert r["engine"] == "fake" and r["model"] == "fake:mixed"
        assert r["prompt_template"] == tmpl.ref
        assert r["prompt"] == tmpl.render(question=r["question"])
        assert json.loads(r["sampling_json"])["n"] == 4
        assert r["finish_reason"] == "stop" and r["completion_tokens"] == len(r["completion"].split())
        assert r["prompt_tokens"] > 0
        assert r["run_id"] == "run-1" and r["method"] == "sample_verify"
        assert r["parent_ids"] == [r["problem_id"]]
        assert isinstance(r["created_at"], dt.datetime) and r["created_at"].tzinfo is not None
        assert r["is_correct"] is None and r["drop_reason"] is None and not r.get("error_stage")
        gold = r["reference_answer"]
        expect = gold if r["sample_index"] % 2 == 0 else str(int(gold) + 1)
        assert r["completion"].endswith(f"The answer is: {expect}")
        assert [s["text"] for s in r["steps"]] == [ln for ln in r["completion"].splitlines() if ln.strip()]
        assert [s["idx"] for s in r["steps"]] == list(range(len(r["steps"])))
    table = to_table(out, Attempt)
    assert table.num_rows == 12 and table.column("steps").type.value_type.num_fields == 4
    assert stats.rows_in == 3 and stats.rows_out == 12 and stats.errors == 0
    assert stats.prompt_tokens == sum(out[i * 4]["prompt_tokens"] for i in range(3))
    assert stats.completion_tokens == sum(r["completion_tokens"] for r in out)
    assert stats.seconds > 0


def test_all_requests_of_a_batch_go_to_the_engine_at_once():
    st = stage(n=2)
    st.setup()
    st.process([problem(i) for i in range(5)])
    eng = st.engine
    assert eng.generate_calls == 1 and len(eng.requests) == 5
    assert all(r.sampling.n == 2 and r.messages[-1]["role"] == "user" for r in eng.requests)
    assert [r.request_id for r in eng.requests] == [f"p-{i}" for i in range(5)]
    st.teardown()
    assert eng.closed and st.engine is None


def test_attempt_ids_are_stable_across_runs_and_unique():
    probs = [problem(i) for i in range(3)]
    a, _ = run_stage(stage(run_id="run-1"), probs)
    b, _ = run_stage(stage(run_id="run-2"), probs)
    ids = [r["attempt_id"] for r in a]
    assert ids == [r["attempt_id"] for r in b]           # same build, other run: same ids (resume-safe)
    assert len(set(ids)) == len(ids) and all(i.startswith("a-") for i in ids)
    c, _ = run_stage(GenerateStage(EngineConfig(kind="fake", fake_script="mixed"),
                                   SamplingConfig(n=3, max_tokens=64, temperature=1.0), GenerateConfig(),
                                   run_id="run-1"), probs)
    assert not set(ids) & {r["attempt_id"] for r in c}   # other sampling: other attempts


def test_failed_requests_become_error_rows_and_nothing_is_lost():
    probs = [problem(0), problem(1, question="Impossible [fail=engine_overloaded]"), problem(2),
             problem(3, question="very " * 60 + "long [gold=1]")]
    st = stage(n=2, max_model_len=90)
    out, stats = run_stage(st, probs)
    assert [r["problem_id"] for r in out] == ["p-0", "p-0", "p-1", "p-2", "p-2", "p-3"]
    bad = {r["problem_id"]: r for r in out if r.get("error_stage")}
    assert set(bad) == {"p-1", "p-3"}
    assert bad["p-1"]["error_stage"] == "generate" and bad["p-1"]["error_reason"] == "engine_overloaded"
    assert bad["p-3"]["error_reason"] == "prompt_too_long" and "90" in bad["p-3"]["error_message"]
    assert json.loads(bad["p-3"]["error_raw"])[-1]["role"] == "user"       # what was sent is kept
    for pid, r in bad.items():                                           # the problem row itself, intact
        src = probs[int(pid[2:])]
        assert {k: r[k] for k in src} == src and "attempt_id" not in r
        validate_row(r, Problem)
    assert stats.rows_in == 4 and stats.rows_out == 4 and stats.errors == 2
    assert stats.error_reasons == {"engine_overloaded": 1, "prompt_too_long": 1}


def test_failed_and_dropped_rows_pass_through_in_place():
    failed = dict(problem(1), error_stage="load", error_reason="bad_input", error_message="x", error_raw=None)
    dropped = dict(problem(2), drop_reason="duplicate")
    rows = [problem(0), failed, dropped, problem(3)]
    st = stage(n=2)
    out, stats = run_stage(st, rows)
    assert [r["problem_id"] for r in out] == ["p-0", "p-0", "p-1", "p-2", "p-3", "p-3"]
    assert out[2] is failed and out[3] is dropped
    st2 = stage(n=1)
    st2.setup()
    st2.process(rows)
    assert [r.request_id for r in st2.engine.requests] == ["p-0", "p-3"]
    st2.teardown()
    assert stats.rows_in == 2 and stats.rows_out == 4


def test_empty_and_all_failed_batches():
    st = stage()
    out, stats = run_stage(st, [])
    assert out == [] and stats.rows_in == 0 and stats.rows_out == 0
    gone = [dict(problem(0), drop_reason="x")]
    out, stats = run_stage(stage(), gone)
    assert out == gone and stats.rows_in == 0


def test_missing_question_column_is_reported():
    with pytest.raises(KeyError, match="question"):
        run_stage(stage(), [{"problem_id": "p"}])


def test_system_prompt_is_sent_first():
    st = stage(system="You are careful.")
    st.setup()
    st.process([problem(0)])
    msgs = st.engine.requests[0].messages
    st.teardown()
    assert msgs[0] == {"role": "system", "content": "You are careful."} and msgs[1]["role"] == "user"


def test_stage_pickles_before_and_after_setup():
    st = stage()
    clone = pickle.loads(pickle.dumps(st))
    assert clone.engine is None
    st.setup()
    clone2 = pickle.loads(pickle.dumps(st))
    assert clone2.engine is None and clone2._loop is None
    st.teardown()
    out, _ = run_stage(clone2, [problem(0)])
    assert len(out) == 3


def test_describe_names_engine_model_template_and_sampling():
    d = stage(n=5).describe()
    assert d["engine"] == "fake" and d["model"] == "fake:mixed"
    assert d["prompt_template"] == load_template("math_step_by_step").ref
    assert d["sampling"]["n"] == 5 and d["sampling"]["max_tokens"] == 64
    v = GenerateStage(EngineConfig(), SamplingConfig(), GenerateConfig(), run_id="r").describe()
    assert v["engine"] == "vllm" and v["model"] == "embedded:SmolLM2-135M-Instruct" and v["enforce_eager"] is True


def test_unknown_template_fails_at_construction():
    from schemas.errors import ConfigError
    with pytest.raises(ConfigError, match="known"):
        GenerateStage(EngineConfig(kind="fake"), SamplingConfig(), GenerateConfig(template="nope"))


def test_split_steps():
    assert split_steps("Step 1: a\n\n  Step 2: b  \nThe answer is: 3\n") == [
        {"idx": 0, "text": "Step 1: a", "action": None, "observation": None},
        {"idx": 1, "text": "Step 2: b", "action": None, "observation": None},
        {"idx": 2, "text": "The answer is: 3", "action": None, "observation": None}]
    assert split_steps("") == [] and split_steps(None) == []


def test_generate_stage_over_openai_engine_end_to_end(monkeypatch):
    """The stage over a real HTTP server: a 400 for one problem becomes its error row, the rest are attempts."""
    from tests.unit.test_engines import ScriptedServer
    with ScriptedServer() as s:
        s.plan["What is 1 plus"] = [(400, {"error": "bad"})]
        st = GenerateStage(EngineConfig(kind="openai", model="m", base_url=s.url),
                           SamplingConfig(n=2), GenerateConfig(), run_id="r")
        out, stats = run_stage(st, [problem(0), problem(1), problem(2)])
    assert [r["problem_id"] for r in out] == ["p-0", "p-0", "p-1", "p-2", "p-2"]
    assert out[2]["error_reason"] == "http_400" and stats.errors == 1 and stats.rows_out == 4
    assert out[0]["completion"].startswith("reply 0 to Solve") and out[1]["sample_index"] == 1
    assert out[0]["engine"] == "openai" and out[0]["model"] == "m"
