"""Output formats: one declaration gives the engine's constraint and the parser, and they agree; engines take a
constraint per request (the fake engine honours it, vLLM gets StructuredOutputsParams, an engine that cannot is
refused at the chain check with constrain=on and left free with auto); a constrained rollout parses every turn."""
from __future__ import annotations

import json
import re

import pytest

from pipelines.methods.agent_r.step_judge import StepJudgementFormat, parse_judgement as parse_step_judgement
from pipelines.methods.lemma.injection_reply import InjectionFormat
from pipelines.methods.lemma.judge_reply import JudgementFormat
from pipelines.methods.self_correct.self_check_stages import VerdictFormat
from pipelines.config import load_recipe
from pipelines.plan import check_recipe
from schemas.errors import ConfigError
from stages.agents.react import ReactTurnFormat
from stages.engines.base import Constraint
from stages.engines.fake_engine import honour_constraint, shortest_match
from stages.envs.craft import CraftEnv
from stages.formats import one_of

GEN = {"generate": {"seed": 0, "depth": 3}, "max_goal_depth": 2}


@pytest.mark.parametrize("fmt, ctx, check", [
    (ReactTurnFormat(), {"action_pattern": "inventory|get [1-9] oak log"}, lambda p: p.parse_ok and p.action),
    (ReactTurnFormat(), {}, lambda p: p.parse_ok and p.action),
    (JudgementFormat(), {"n_steps": 4}, lambda p: p.parse_ok),
    (InjectionFormat(), {}, lambda p: p.parse_ok and p.final_answer is not None),
    (VerdictFormat(), {}, lambda p: p[0] in ("correct", "incorrect")),
    (StepJudgementFormat(), {}, lambda p: p[2] and p[0] in ("good", "bad", "uncertain")),
])
def test_what_the_constraint_allows_the_parser_reads(fmt, ctx, check):
    c = fmt.constraint(**ctx)
    text = shortest_match(c.regex)
    assert re.fullmatch(c.regex, text)
    parse_ctx = {"n_steps": ctx["n_steps"]} if "n_steps" in ctx else {}
    assert check(fmt.parse(text, **parse_ctx)), (fmt.name, text)


def test_the_lemma_judge_constraint_allows_only_steps_shown_and_the_twelve_labels():
    rx = re.compile(JudgementFormat().constraint(n_steps=3).regex)
    ok = "Verdict: incorrect\nFirst wrong step: 2\nError type: calculation_error\nReason: 3 * 4 is 12."
    assert rx.fullmatch(ok) and rx.fullmatch("Verdict: correct")
    assert not rx.fullmatch(ok.replace("step: 2", "step: 4"))                  # only steps 1..3 were shown
    assert not rx.fullmatch(ok.replace("calculation_error", "arithmetic_slip"))


def test_the_step_judgement_and_its_parser_share_the_label():
    text = "The action was refused.\nJudgement: Bad"
    assert re.fullmatch(StepJudgementFormat().constraint().regex, text)
    assert parse_step_judgement(text)[:1] == ("bad",)


def test_the_fake_engine_honours_each_constraint_kind():
    rx = Constraint(regex=r"Action: (north|south)")
    assert honour_constraint("Action: south", rx) == "Action: south"
    assert honour_constraint("I think.\nAction: north\nbye", rx) == "Action: north"     # the part that holds
    assert honour_constraint("no idea", rx) == "Action: north"                          # the shortest that holds
    ch = Constraint(choice=("Good", "Bad"))
    assert honour_constraint("that was bad", ch) == "Bad" and honour_constraint("??", ch) == "Good"
    js = Constraint(json=json.dumps({"type": "object"}))
    assert honour_constraint('{"a": 1}', js) == '{"a": 1}' and honour_constraint("nope", js) == "{}"
    with pytest.raises(ValueError, match="exactly one"):
        Constraint(regex="a", choice=("a",))


def test_vllm_gets_structured_outputs_for_a_constrained_request():
    from stages.engines.base import GenerationRequest, SamplingParams
    from stages.engines.vllm_engine import VLLMEngine
    eng = VLLMEngine.__new__(VLLMEngine)
    sp = eng._sampling(GenerationRequest(messages=[], sampling=SamplingParams(constraint=Constraint(regex="a|b"))))
    assert sp.structured_outputs is not None and sp.structured_outputs.regex == "a|b"
    sp = eng._sampling(GenerationRequest(messages=[], sampling=SamplingParams(constraint=Constraint(choice=("x",)))))
    assert sp.structured_outputs.choice == ["x"]
    assert eng._sampling(GenerationRequest(messages=[], sampling=SamplingParams())).structured_outputs is None


def test_an_engine_that_cannot_constrain_is_refused_with_on_and_left_free_with_auto():
    over = ["engines.policy.kind=transformers", "rollout.constrain=on"]
    with pytest.raises(ConfigError, match=r"stage 'rollout' \(rollout\): constrain=on, but a transformers engine "
                                          r"cannot hold its output to a regex constraint"):
        check_recipe(load_recipe("agent_demo", over))
    stages = check_recipe(load_recipe("agent_demo", ["engines.policy.kind=transformers"]))
    assert stages[0].constrained is False
    assert stages[0].describe()["output_format"] == {"format": "react_turn", "kind": "regex", "constrained": False}
    assert check_recipe(load_recipe("agent_demo"))[0].constrained is True          # vllm: on by default


def test_the_craft_action_pattern_admits_every_gold_action_when_it_can_work_and_refuses_others():
    env = CraftEnv(**GEN)
    env.setup()
    for task in env.tasks("train", 8):
        obs, _ = env.reset(task)
        first = re.compile(env.action_pattern())
        assert first.fullmatch("inventory") and not first.fullmatch("look around")
        assert not first.fullmatch("get 1 banana")
        commands = [ln for ln in obs.splitlines() if ln.startswith("craft ")]
        assert not any(first.fullmatch(c) for c in commands)        # nothing held yet: no craft can work
        for _, action in env.world.plan(task.config["goal"]):
            assert re.fullmatch(env.action_pattern(), action), action
            env.step(action)


def test_an_env_that_lists_its_valid_actions_gets_them_as_its_pattern():
    from stages.envs.base import Env

    class Listing(Env):
        def valid_actions(self):
            return ["open door", "go north"]
    assert Listing().action_pattern() == one_of(["open door", "go north"]) == "(open door|go north)"
    assert Env().action_pattern() is None


def test_a_constrained_rollout_parses_every_turn_and_records_its_format(data_root):
    """The 'garbage' script writes prose; held to the ReAct format and the env's actions every turn parses and
    every action is one the env offers."""
    import tests.unit.test_rollout  # noqa: F401  (registers the scripts)
    from pipelines.build import build
    from tests.unit.test_rollout import agent_recipe
    cfg = agent_recipe(data_root, {"kind": "craft", "config": GEN}, script="garbage",
                       rollout={"constrain": "on", "gold": False})
    m = build(cfg, progress=False).manifest
    st = m.stages["rollout"]
    assert st["counts"]["parsed"] == st["counts"]["parse_ok"] > 0 and st["parse_rate"] == 1.0
    assert m.models["rollout"]["output_format"] == {"format": "react_turn", "kind": "regex", "constrained": True}
    from pipelines.catalog import Catalog
    trajs = Catalog(str(data_root)).read_table(m, "trajectories").to_pylist()
    assert trajs and all(s["parse_ok"] and not s["invalid"] for t in trajs for s in t["steps"])


def test_the_openai_engine_sends_a_constraint_as_the_server_takes_it():
    from stages.engines.openai_engine import constraint_fields
    rx = Constraint(regex="Judgement: (Good|Bad)")
    assert constraint_fields(rx, "vllm") == {"structured_outputs": {"regex": "Judgement: (Good|Bad)"}}
    assert constraint_fields(Constraint(choice=("a", "b")), "vllm") == {"structured_outputs": {"choice": ["a", "b"]}}
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    rf = constraint_fields(Constraint(json=json.dumps(schema)), "openai")["response_format"]
    assert rf["type"] == "json_schema" and rf["json_schema"]["schema"] == schema
    with pytest.raises(ConfigError, match="cannot send a regex constraint"):
        constraint_fields(rx, "openai")


def test_an_openai_engine_of_an_openai_style_server_leaves_regex_formats_free_with_auto():
    over = ["engines.policy.kind=openai", "engines.policy.base_url=http://127.0.0.1:9/v1",
            "engines.policy.structured_outputs=openai"]
    assert check_recipe(load_recipe("agent_demo", over))[0].constrained is False
    with pytest.raises(ConfigError, match=r"openai engine \(structured_outputs: openai\) cannot hold its output to "
                                          r"a regex constraint"):
        check_recipe(load_recipe("agent_demo", [*over, "rollout.constrain=on"]))
    assert check_recipe(load_recipe("agent_demo", over[:2]))[0].constrained is True      # a vLLM server


def test_a_constraint_travels_in_a_pickled_request():
    """Ray ships requests to the engine actor pickled: the constraint goes with them."""
    import pickle
    from stages.engines.base import GenerationRequest, SamplingParams
    req = GenerationRequest(messages=[{"role": "user", "content": "x"}], request_id="r",
                            sampling=SamplingParams(constraint=Constraint(regex="a|b")))
    assert pickle.loads(pickle.dumps(req)).sampling.constraint == Constraint(regex="a|b")


@pytest.mark.integration
def test_a_constrained_rollout_on_the_ray_runner(data_root):
    """The same constrained rollout on Ray (the engine an actor, the stage in a Ray Data worker). The built-in
    `no_answer` script writes no ReAct turn at all (a script registered by a test module is not known in Ray's
    workers)."""
    from pipelines.build import build
    from tests.unit.test_rollout import agent_recipe
    cfg = agent_recipe(data_root, {"kind": "craft", "config": GEN}, script="no_answer",
                       rollout={"constrain": "on", "gold": False}, execution={"runner": "ray"})
    m = build(cfg, progress=False).manifest
    assert m.execution["runner"] == "ray"
    assert m.stages["rollout"]["parse_rate"] == 1.0 and m.stages["rollout"]["counts"]["parsed"] > 0
