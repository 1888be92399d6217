"""GenerateStage on the fake engine: expansion, stable ids, failures become error records, nothing is lost."""
from __future__ import annotations

import datetime as dt
import json

import pickle

import pytest

from schemas.rows import Attempt, to_table
from schemas.errors import ConfigError
from stages.engines.config import EngineConfig
from stages.generate import GenerateConfig, GenerateStage
from stages.steps import number_steps, split_solution, step_rows
from stages.verify import VERIFY_COLUMNS
from stages.prompts import load_template
from tests.helpers import Harness, context, run_stage, validate_row


def problem(i, question=None, gold=None):
    gold = str(10 + i) if gold is None else gold
    return {"problem_id": f"p-{i}", "source": "test", "split": "train", "source_index": i,
            "question": question or f"What is {i} plus 10? [gold={gold}]", "reference_solution": f"{i}+10={gold}",
            "reference_answer": gold, "env": None, "env_config_json": None,
            "run_id": "r-problems", "method": "sample_verify", "created_at": None, "parent_ids": []}


def stage(script="mixed", n=3, run_id="run-1", system=None, **eng):
    return GenerateStage(GenerateConfig(n=n, max_tokens=64, system_prompt=system),
                         context=context(run_id, student=EngineConfig(kind="fake", fake_script=script, **eng)))


def test_expands_each_problem_into_n_full_attempt_rows():
    probs = [problem(i) for i in range(3)]
    res = run_stage(stage(n=4), {"problems": probs})
    out, stats = res.tables["attempts"], res.stats
    assert len(out) == 12 and res.errors == [] and list(res.tables) == ["attempts"]
    assert [r["problem_id"] for r in out] == [p["problem_id"] for p in probs for _ in range(4)]
    assert [r["sample_index"] for r in out] == [0, 1, 2, 3] * 3
    tmpl = load_template("math_step_by_step")
    by_id = {p["problem_id"]: p for p in probs}
    for r in out:
        validate_row(r, Attempt)
        assert r["engine"] == "fake" and r["model"] == "fake:mixed"
        assert r["prompt_template"] == tmpl.ref
        assert r["prompt"] == tmpl.render(question=by_id[r["problem_id"]]["question"])
        assert json.loads(r["sampling_json"])["n"] == 4
        assert r["finish_reason"] == "stop" and r["completion_tokens"] == len(r["completion"].split())
        assert r["prompt_tokens"] > 0
        assert r["run_id"] == "run-1" and r["method"] == "sample_verify"
        assert r["parent_ids"] == [r["problem_id"]]
        assert isinstance(r["created_at"], dt.datetime) and r["created_at"].tzinfo is not None
        assert r["drop_reason"] is None
        assert not set(VERIFY_COLUMNS) & set(r), "generate writes its request and the text; verify fills the answer"
        gold = by_id[r["problem_id"]]["reference_answer"]
        expect = gold if r["sample_index"] % 2 == 0 else str(int(gold) + 1)
        assert r["completion"].endswith(f"The answer is: {expect}")
        # the split a judge is shown, numbered from 1
        assert [s["text"] for s in r["steps"]] == split_solution(r["completion"]).texts
        assert [s["idx"] for s in r["steps"]] == list(range(1, len(r["steps"]) + 1))
    table = to_table(out, Attempt)
    assert table.num_rows == 12 and table.column("steps").type.value_type.num_fields == 4
    assert stats.rows_in == 3 and stats.rows_out == 12 and stats.errors == 0
    assert stats.prompt_tokens == sum(out[i * 4]["prompt_tokens"] for i in range(3))
    assert stats.completion_tokens == sum(r["completion_tokens"] for r in out)
    assert stats.seconds > 0 and stats.t_end >= stats.t_start


def test_all_requests_of_a_shard_go_to_the_engine_at_once_tagged_with_the_stage():
    with Harness(stage(n=2)) as h:
        h.run({"problems": [problem(i) for i in range(5)]})
        eng = h.engine()
        prog = h.engines.progress()
    assert eng.generate_calls == 1 and len(eng.requests) == 5
    assert all(r.sampling.n == 2 and r.messages[-1]["role"] == "user" for r in eng.requests)
    assert [r.request_id for r in eng.requests] == [f"p-{i}" for i in range(5)]
    (p,) = prog["generate"].values()
    assert p["planned_sequences"] == p["done_sequences"] == 10 and p["shards"] == [0]
    assert eng.closed


def test_attempt_ids_are_stable_across_runs_and_unique():
    probs = {"problems": [problem(i) for i in range(3)]}
    a = run_stage(stage(run_id="run-1"), probs).tables["attempts"]
    b = run_stage(stage(run_id="run-2"), probs).tables["attempts"]
    ids = [r["attempt_id"] for r in a]
    assert ids == [r["attempt_id"] for r in b]           # same build, other run: same ids (resume-safe)
    assert len(set(ids)) == len(ids) and all(i.startswith("a-") for i in ids)
    other = GenerateStage(GenerateConfig(n=3, max_tokens=64, temperature=1.0),
                          context=context("run-1", student=EngineConfig(kind="fake", fake_script="mixed")))
    c = run_stage(other, probs).tables["attempts"]
    assert not set(ids) & {r["attempt_id"] for r in c}   # other sampling: other attempts


def test_failed_requests_become_error_records_and_nothing_is_lost():
    probs = [problem(0), problem(1, question="Impossible [fail=engine_overloaded]"), problem(2),
             problem(3, question="very " * 60 + "long [gold=1]")]
    res = run_stage(stage(n=2, max_model_len=90), {"problems": probs})
    assert [r["problem_id"] for r in res.tables["attempts"]] == ["p-0", "p-0", "p-2", "p-2"]
    bad = {e["row_id"]: e for e in res.errors}
    assert set(bad) == {"p-1", "p-3"}
    for e in bad.values():
        assert e["stage"] == "generate" and e["table"] == "problems" and e["problem_id"] == e["row_id"]
        assert e["error_id"].startswith("e-") and e["run_id"] == "run-1"
    assert bad["p-1"]["reason"] == "engine_overloaded"
    assert bad["p-3"]["reason"] == "prompt_too_long" and "90" in bad["p-3"]["message"]
    assert json.loads(bad["p-3"]["raw_input"])[-1]["role"] == "user"       # what was sent is kept
    stats = res.stats
    assert stats.rows_in == 4 and stats.rows_out == 4 and stats.errors == 2
    assert stats.error_reasons == {"engine_overloaded": 1, "prompt_too_long": 1}


def test_empty_shard():
    res = run_stage(stage(), {"problems": []})
    assert res.tables == {"attempts": []} and res.stats.rows_in == 0 and res.stats.rows_out == 0


def test_system_prompt_is_sent_first():
    with Harness(stage(system="You are careful.")) as h:
        h.run({"problems": [problem(0)]})
        msgs = h.engine().requests[0].messages
    assert msgs[0] == {"role": "system", "content": "You are careful."} and msgs[1]["role"] == "user"


def test_stage_pickles_before_and_after_setup():
    st = stage()
    clone = pickle.loads(pickle.dumps(st))
    with Harness(st):
        clone2 = pickle.loads(pickle.dumps(st))     # the engine client is not pickled along
    assert clone2._llm is None
    assert len(run_stage(clone, {"problems": [problem(0)]}).tables["attempts"]) == 3


def test_a_stage_without_an_engine_for_its_role_fails_at_construction():
    with pytest.raises(ConfigError, match="role 'teacher'"):
        GenerateStage(GenerateConfig(role="teacher"), context=context())


def test_describe_names_role_engine_model_template_and_sampling():
    d = stage(n=5).describe()
    assert d["kind"] == "generate" and d["role"] == "student"
    assert d["engine"] == "fake" and d["model"] == "fake:mixed"
    assert d["prompt_template"] == load_template("math_step_by_step").ref
    assert d["sampling"]["n"] == 5 and d["sampling"]["max_tokens"] == 64
    v = GenerateStage(GenerateConfig(), context=context(student=EngineConfig())).describe()
    assert v["engine"] == "vllm" and v["model"] == "embedded:SmolLM2-135M-Instruct"


def test_unknown_template_fails_at_construction():
    with pytest.raises(ConfigError, match="known"):
        GenerateStage(GenerateConfig(template="nope"), context=context())


def test_step_rows_are_the_judges_split_numbered_from_1():
    text = "Step 1: a\n\n  Step 2: b  \nThe answer is: 3\n"
    assert step_rows(text) == [
        {"idx": 1, "text": "Step 1: a", "action": None, "observation": None},
        {"idx": 2, "text": "Step 2: b", "action": None, "observation": None},
        {"idx": 3, "text": "The answer is: 3", "action": None, "observation": None}]
    assert step_rows(split_solution(text)) == step_rows(text)
    # not one step per line: a step running over two lines is one step, as the judge sees it
    two_lines = "Step 1: The cost is\n3 * 4 = 12.\nStep 2: So 12 + 1 = 13.\nThe answer is: 13"
    rows = step_rows(two_lines)
    assert [s["text"] for s in rows] == ["Step 1: The cost is\n3 * 4 = 12.", "Step 2: So 12 + 1 = 13.",
                                         "The answer is: 13"]
    shown = number_steps(split_solution(two_lines)).split("\nStep ")
    assert len(shown) == len(rows) and shown[1].startswith("2: So 12 + 1")
    assert step_rows("") == [] and step_rows(None) == []


def test_generate_stage_over_openai_engine_end_to_end():
    """The stage over a real HTTP server: a 400 for one problem becomes its error record, the rest are attempts."""
    from tests.unit.test_openai_engine import ScriptedServer
    with ScriptedServer() as s:
        s.plan["What is 1 plus"] = [(400, {"error": "bad"})]
        st = GenerateStage(GenerateConfig(n=2), context=context(
            student=EngineConfig(kind="openai", model="m", base_url=s.url)))
        res = run_stage(st, {"problems": [problem(0), problem(1), problem(2)]})
    out = res.tables["attempts"]
    assert [r["problem_id"] for r in out] == ["p-0", "p-0", "p-2", "p-2"]
    assert res.errors[0]["reason"] == "http_400" and res.stats.errors == 1 and res.stats.rows_out == 4
    assert out[0]["completion"].startswith("reply 0 to Solve") and out[1]["sample_index"] == 1
    assert out[0]["engine"] == "openai" and out[0]["model"] == "m"
