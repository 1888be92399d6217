"""Agent rollouts on the scripted fake engine: the env task source, the rollout stage (ReAct turns, Agent-R's
conversation, unparsed turns, context trimming, concurrency, failed episodes as error rows, gold paths), the
agent_rollout method end to end, and a user's env by class path."""
from __future__ import annotations

import asyncio
import json
import re

import pytest

from pipelines.build import build
from pipelines.catalog import Catalog
from pipelines.config import load_recipe, validate_recipe
from schemas.errors import ConfigError
from schemas.rows import to_table
from schemas.registry import get_table
from stages.agents.react import initial_messages
from stages.base import StageContext
from stages.engines.config import EngineConfig
from stages.engines.fake_engine import FakeFailure, register_script
from stages.envs.craft import CraftEnv
from stages.envs.spec import EnvSpec, read_task_record
from pipelines.methods.agent_rollout.rollout_stages import RolloutConfig, RolloutStage
from stages.tasks import TaskSourceConfig, env_problems, load_problems
from tests.helpers import Harness

GEN = {"generate": {"seed": 0, "depth": 3}, "max_goal_depth": 2}
CRAFT = EnvSpec(kind="craft", config=GEN)
COUNTER = "tests.agent_envs:CounterEnv"
_world = CraftEnv(**GEN)
_world.setup()


def _goal(req) -> str:
    text = next(m["content"] for m in req.messages if "Goal: craft" in m["content"])
    return re.search(r"Goal: craft (.+)\.$", text).group(1)


def _turn(req) -> int:
    return sum(m["role"] == "assistant" for m in req.messages) - 1      # less the opening "OK"


def script_planner(req, i):
    """Plays the craft planner's actions (untrimmed conversations), plain and markdown turns alternating."""
    plan = [a for _, a in _world.world.plan(_goal(req))]
    k = _turn(req)
    a = plan[min(k, len(plan) - 1)]
    return f"Thought: step {k}\nAction: {a}" if k % 2 == 0 else f"**Thought:** next\n**Action:** `{a}`"


def script_garbage(req, i):
    return "I am not sure what to do here, let me think about the crafting world."


def script_verbose(req, i):
    """A long first line, then an action the env rejects: conversations grow until they must be trimmed."""
    return "Thought: " + " ".join(["hmm"] * 30) + "\nAction: jump around"


def script_fail_second_turn(req, i):
    if _turn(req) == 1 and "Reach" in req.messages[0]["content"]:
        raise FakeFailure("prompt_too_long", "scripted")
    return "Thought: count\nAction: inc"


def script_inc(req, i):
    return "Thought: I count up.\nAction: inc"


def script_look(req, i):
    return "Thought: I look.\nAction: look around"


for _name, _fn in (("planner", script_planner), ("garbage", script_garbage), ("verbose", script_verbose),
                   ("fail_second_turn", script_fail_second_turn), ("inc", script_inc), ("look", script_look)):
    register_script(_name, _fn)


def stage(script="planner", max_model_len=4096, **opts) -> RolloutStage:
    """The rollout stage on a scripted policy; unconstrained unless asked (these tests read the scripts' own text:
    markdown turns, garbage, ...)."""
    opts.setdefault("constrain", "off")
    ctx = StageContext(run_id="run-1", method="agent_rollout",
                       engines={"policy": EngineConfig(kind="fake", fake_script=script, max_model_len=max_model_len)})
    return RolloutStage(RolloutConfig(**opts), name="rollout", context=ctx)


def craft_problems(n=4):
    return env_problems(CRAFT, "train", n)


def run(st, problems):
    with Harness(st) as h:
        res = h.run({"problems": problems})
        return res, h.engine("policy")


# --- the env task source -----------------------------------------------------------------------------------------
def test_env_task_source_gives_problems_with_the_env_and_task():
    rows = load_problems(TaskSourceConfig(kind="env", split="train", count=5), env=CRAFT)
    assert len(rows) == 5 and len({r["problem_id"] for r in rows}) == 5
    tasks = CraftEnv(**GEN).tasks("train", 5)
    for r, t in zip(rows, tasks):
        spec, task = read_task_record(r["env_config_json"])
        assert spec == {"kind": "craft", "class": None, "config": GEN} and task == t
        assert r["env"] == "craft" and r["question"] == t.instruction and r["source"] == "env:craft"
        assert r["reference_solution"] is None and r["reference_answer"] == "" and r["split"] == "train"
    assert load_problems(TaskSourceConfig(kind="env", count=5), env=CRAFT) == rows          # same ids every time
    assert len(load_problems(TaskSourceConfig(kind="env", count=5), limit=2, env=CRAFT)) == 2
    other = load_problems(TaskSourceConfig(kind="env", count=5, seed=3), env=CRAFT)
    assert [r["problem_id"] for r in other] != [r["problem_id"] for r in rows]
    to_table(rows, get_table("problems").row_type)


def test_env_task_source_needs_an_env_section_and_names_bad_fields():
    with pytest.raises(ConfigError, match="tasks.kind=env .* add an `env:` section"):
        validate_recipe({"dataset": "x", "method": "agent_rollout", "tasks": {"kind": "env"}})
    with pytest.raises(ConfigError, match=r"env\.class: cannot import module"):
        env_problems(EnvSpec(kind="python", **{"class": "no_such_pkg.envs:Env"}), "train", 2)
    with pytest.raises(ConfigError, match=r"env\.config\.speed"):
        env_problems(EnvSpec(kind="python", config={"speed": 2}, **{"class": COUNTER}), "train", 2)


def test_recipe_env_section_takes_class_and_set_overrides():
    cfg = load_recipe("agent_demo", ["env.kind=python", f"env.class={COUNTER}", "env.config={target: 2}",
                                     "tasks.count=3"])
    assert cfg.env.as_dict() == {"kind": "python", "class": COUNTER, "config": {"target": 2}}
    assert cfg.engines["policy"].model == "embedded" and cfg.rollout.gold
    with pytest.raises(ConfigError, match="unknown key 'env.klass'"):
        load_recipe("agent_demo", ["env.klass=x"])


# --- the stage -------------------------------------------------------------------------------------------------------
def test_opening_template_is_the_react_opening():
    st = stage()
    # the template file and stages.agents.react's opening say the same
    assert st.template.render(instruction="<i>") == initial_messages("<i>", "")[0]["content"]
    assert st.template.name == "react_agent"


def test_policy_episodes_follow_agent_r_and_record_everything():
    problems = craft_problems(3)
    res, engine = run(stage(n=2, max_steps=12), problems)
    rows = res.tables["trajectories"]
    assert len(rows) == 6 and res.errors == [] and res.stats.rows_out == 6
    to_table(rows, get_table("trajectories").row_type)                 # fits the schema
    for t in rows:
        spec, task = read_task_record(next(p for p in problems if p["problem_id"] == t["problem_id"])
                                      ["env_config_json"])
        assert t["success"] and t["finish"] == "done" and t["final_reward"] == 1.0 and not t["gold"]
        assert (t["task_id"], t["seed"], t["env"], t["env_name"]) == (task.task_id, task.seed, "craft", "craft")
        assert t["model"] == "fake:planner" and t["engine"] == "fake" and t["prompt_template"].startswith(
            "react_agent@")
        msgs, steps = t["messages"], t["steps"]
        first_obs = CraftEnv(**GEN).reset(task)[0]
        assert msgs[:3] == initial_messages(task.instruction, first_obs)
        assert [m["role"] for m in msgs[3:]] == ["assistant", "user"] * len(steps)
        assert [m["loss"] for m in msgs] == [False, False, False] + [True, False] * len(steps)
        assert [s["raw_text"] for s in steps] == [m["content"] for m in msgs[3::2]]      # raw model text kept
        assert [s["observation"] for s in steps] == [m["content"] for m in msgs[4::2]]
        assert all(s["parse_ok"] and not s["invalid"] for s in steps) and t["n_unparsed"] == t["n_invalid"] == 0
        assert steps[1]["action"] == [a for _, a in _world.world.plan(task.config["goal"])][1]   # markdown parsed
        assert t["prompt_tokens"] > 0 and t["completion_tokens"] > 0 and t["parent_ids"] == [t["problem_id"]]
    assert len({t["trajectory_id"] for t in rows}) == 6
    assert sorted(t["sample_index"] for t in rows) == [0, 0, 0, 1, 1, 1]
    c = res.stats.counts
    assert c["episodes"] == 6 and c["success"] == 6 and c["turns"] == c["parse_ok"] == sum(
        t["n_steps"] for t in rows) and c.get("unparsed", 0) == 0
    # one request per turn, each the conversation so far without loss flags
    assert len(engine.requests) == c["turns"]
    assert all(set(m) == {"role", "content"} for r in engine.requests for m in r.messages)
    assert all(r.sampling.n == 1 and r.sampling.stop == ["\nObservation:"] for r in engine.requests)
    again, _ = run(stage(n=2, max_steps=12), problems)                   # stable ids: a rerun duplicates nothing
    assert sorted(t["trajectory_id"] for t in again.tables["trajectories"]) == sorted(
        t["trajectory_id"] for t in rows)


def test_unparseable_turns_are_recorded_counted_and_answered_as_invalid():
    res, _ = run(stage("garbage", max_steps=4), craft_problems(2))
    rows = res.tables["trajectories"]
    assert len(rows) == 2 and res.errors == []
    for t in rows:
        assert t["n_steps"] == 4 and t["finish"] == "max_steps" and not t["success"]
        assert t["n_unparsed"] == 4 and t["n_invalid"] == 4
        for s in t["steps"]:
            assert not s["parse_ok"] and s["action"] is None and s["invalid"]
            assert s["raw_text"] == script_garbage(None, 0)
            assert s["observation"].startswith("Could not execute")       # the env's own "invalid" answer
    c = res.stats.counts
    assert c["unparsed"] == 8 and c["invalid_actions"] == 8 and c["finish_max_steps"] == 2 and "parse_ok" in c


def test_context_is_trimmed_to_the_engines_window():
    st = stage("verbose", max_model_len=700, max_tokens=64, max_steps=14)
    assert st.budget == 636
    res, engine = run(st, craft_problems(2))
    rows = res.tables["trajectories"]
    assert res.errors == [] and len(rows) == 2
    words = [len("\n".join(m["content"] for m in r.messages).split()) for r in engine.requests]
    assert max(words) <= 636                                             # every prompt fit the budget
    for t in rows:
        assert t["n_steps"] == 14 and t["dropped_pairs"] > 0
        total = len("\n".join(m["content"] for m in t["messages"]).split())
        assert total > 636                                               # the untrimmed conversation is kept
    for t in rows:                 # each turn's prompt: the opening three messages, then the latest pairs
        opening = t["messages"][:3]
        sent = [[{"role": m["role"], "content": m["content"]} for m in r.messages] for r in engine.requests
                if r.messages[2]["content"] == opening[2]["content"]]
        assert len(sent) == 14
        for j, msgs in enumerate(sent):
            full = [{"role": m["role"], "content": m["content"]} for m in t["messages"][:3 + 2 * j]]
            assert msgs[:3] == full[:3] and msgs[3:] == full[len(full) - (len(msgs) - 3):]
        assert len(sent[-1]) < 3 + 2 * 13                                # the last prompts were trimmed
    assert res.stats.counts["trimmed_episodes"] == 2


def test_a_context_that_cannot_fit_fails_the_episode_as_an_error_row():
    res, _ = run(stage("planner", max_model_len=150, max_tokens=64), craft_problems(2))
    assert res.tables["trajectories"] == [] and len(res.errors) == 2
    assert {e["reason"] for e in res.errors} == {"context_too_long"} and res.stats.errors == 2


def test_failed_requests_and_envs_become_error_rows_and_the_rest_goes_on():
    spec = EnvSpec(kind="python", config={"target": 3}, **{"class": COUNTER})
    problems = env_problems(spec, "train", 3)
    problems[1]["env_config_json"] = problems[1]["env_config_json"].replace("Reach 3", "Reach 3 [fail=x]")
    res, _ = run(stage("inc", n=2), problems)
    rows, errors = res.tables["trajectories"], res.errors
    assert len(rows) == 4 and all(t["success"] and t["n_steps"] == 3 for t in rows)
    assert len(errors) == 2 and {e["reason"] for e in errors} == {"x"}
    assert len({e["error_id"] for e in errors}) == 2                     # one error row per failed episode
    e = errors[0]
    assert e["row_id"] == problems[1]["problem_id"] == e["problem_id"] and e["table"] == "problems"
    assert e["stage"] == "rollout" and e["raw_input"] == problems[1]["env_config_json"]
    partial = json.loads(e["raw_output"])
    assert partial["n_steps"] == 0 and partial["messages"][1]["content"] == "OK"
    assert res.stats.error_reasons == {"x": 2} and res.stats.counts["episodes_failed"] == 2
    # a request that fails mid-episode keeps the steps so far in the error row
    res, _ = run(stage("fail_second_turn"), env_problems(spec, "train", 1))
    (e,) = res.errors
    assert e["reason"] == "prompt_too_long" and json.loads(e["raw_output"])["n_steps"] == 1


def test_a_row_that_is_not_an_env_task_is_an_error_row():
    rows = craft_problems(2)
    rows[0] = dict(rows[0], env_config_json=None)
    res, _ = run(stage(), rows)
    assert [e["reason"] for e in res.errors] == ["not_an_env_task"] and len(res.tables["trajectories"]) == 1


def test_gold_paths_are_recorded_and_marked():
    res, _ = run(stage("garbage", gold=True, max_steps=2), craft_problems(3))
    rows = res.tables["trajectories"]
    gold = [t for t in rows if t["gold"]]
    assert len(gold) == 3 and len(rows) == 6
    for t in gold:
        assert t["success"] and t["model"] == "gold:craft" and t["engine"] == "" and t["sampling_json"] == ""
        assert t["prompt_tokens"] == 0 and all(s["parse_ok"] for s in t["steps"])
        assert t["messages"][3]["content"].startswith("Thought: ") and t["messages"][3]["loss"]
        assert t["trajectory_id"] not in {x["trajectory_id"] for x in rows if not x["gold"]}
    assert res.stats.counts["gold_success"] == 3 and res.stats.counts["episodes"] == 3


def test_gold_of_an_env_without_a_planner_is_an_error_row():
    spec = EnvSpec(kind="python", config={"target": 2}, **{"class": "tests.agent_envs:NoGoldCounterEnv"})
    res, _ = run(stage("inc", gold=True), env_problems(spec, "train", 2))
    assert len(res.tables["trajectories"]) == 2 and [e["reason"] for e in res.errors] == ["no_gold_plan"] * 2


class GatheringClient:
    """Wraps the engine client: the first `k` turns wait until `k` are waiting at once (never true if episodes
    ran one after another; a generous safety net ends the wait then, and the test fails on max_in_flight)."""

    def __init__(self, inner, k):
        self.inner, self.k, self.waiting, self.max_in_flight, self.in_flight, self.calls = inner, k, 0, 0, 0, 0
        self.event = None

    async def agenerate(self, requests, tag="", shard=None):
        self.event = self.event or asyncio.Event()
        self.calls += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.calls <= self.k:
                if self.in_flight == self.k:
                    self.event.set()
                try:
                    await asyncio.wait_for(self.event.wait(), 30)
                except asyncio.TimeoutError:
                    pass
            return await self.inner.agenerate(requests, tag, shard)
        finally:
            self.in_flight -= 1


@pytest.mark.parametrize("concurrency", [1, 4])
def test_episodes_run_concurrently_up_to_the_limit(concurrency):
    st = stage(concurrency=concurrency, n=2, max_steps=12)
    with Harness(st) as h:
        st._llm = client = GatheringClient(st._llm, min(concurrency, 4))
        res = h.run({"problems": craft_problems(4)})
    assert len(res.tables["trajectories"]) == 8 and all(t["success"] for t in res.tables["trajectories"])
    assert client.max_in_flight == concurrency


def test_engine_failure_fails_the_shard_not_the_episode():
    class Broken:
        async def agenerate(self, requests, tag="", shard=None):
            raise RuntimeError("engine died")

    st = stage()
    with Harness(st) as h:
        st._llm = Broken()
        with pytest.raises(RuntimeError, match="engine died"):
            h.run({"problems": craft_problems(2)})


# --- the method, end to end ----------------------------------------------------------------------------------------
def agent_recipe(data_root, env, script="planner", **over):
    d = {"dataset": "agents", "method": "agent_rollout", "env": env, "tasks": {"kind": "env", "count": 5},
         "engines": {"policy": {"kind": "fake", "fake_script": script}},
         "rollout": {"n": 2, "gold": True, "max_steps": 12, "constrain": "off"},
         "execution": {"runner": "local", "shard_size": 2}, "storage": {"root": str(data_root)}}
    for k, v in over.items():
        d[k] = {**d[k], **v} if isinstance(v, dict) and isinstance(d.get(k), dict) else v
    return validate_recipe(d)


def test_agent_build_publishes_trajectories_with_counts(data_root):
    cfg = agent_recipe(data_root, {"kind": "craft", "config": GEN})
    m = build(cfg, progress=False).manifest
    assert m.method == "agent_rollout" and m.tables["problems"].rows == 5
    assert m.tables["trajectories"].rows == 15 and m.tables["errors"].rows == 0
    st = m.stages["rollout"]
    assert st["in"] == 5 and st["out"] == 15 and st["counts"]["episodes"] == 10 and st["counts"]["gold_success"] == 5
    assert m.inputs["kind"] == "env" and m.inputs["env"]["kind"] == "craft"
    assert m.models["rollout"]["role"] == "policy" and m.models["rollout"]["max_steps"] == 12
    (eng,) = m.engines.values()
    assert eng["roles"] == ["policy"] and eng["starts"] == 1
    traj = Catalog(str(data_root)).read_table(m, "trajectories").to_pylist()
    assert sum(t["gold"] for t in traj) == 5 and all(t["run_id"] == m.run_id for t in traj)
    m2 = build(cfg, progress=False).manifest                          # same recipe: same ids
    traj2 = Catalog(str(data_root)).read_table(m2, "trajectories").to_pylist()
    assert sorted(t["trajectory_id"] for t in traj) == sorted(t["trajectory_id"] for t in traj2)


def test_bring_your_own_env_by_class_path(data_root):
    cfg = agent_recipe(data_root, {"kind": "python", "class": COUNTER, "config": {"target": 2}}, "inc",
                       tasks={"count": 3})
    m = build(cfg, progress=False).manifest
    traj = Catalog(str(data_root)).read_table(m, "trajectories").to_pylist()
    assert len(traj) == 9 and all(t["success"] and t["n_steps"] == 2 for t in traj)
    assert {t["env"] for t in traj} == {"python"} and {t["env_name"] for t in traj} == {"counter"}
    probs = Catalog(str(data_root)).read_table(m, "problems").to_pylist()
    assert {p["source"] for p in probs} == {f"env:python:{COUNTER}"}


needs_twx = pytest.mark.skipif(__import__("shutil").which("java") is None, reason="TextWorldExpress needs java")


@needs_twx
def test_twx_jvm_killed_mid_episode_becomes_an_error_row_and_the_build_goes_on(data_root):
    env = {"kind": "python", "class": "tests.agent_envs:KillingTwxEnv",
           "config": {"kill_seed": 1, "game": "coin", "game_params": "numLocations=2"}}
    cfg = agent_recipe(data_root, env, "look", tasks={"count": 3}, rollout={"n": 1, "gold": False, "max_steps": 3,
                                                                           "env_pool": 1, "concurrency": 2},
                       execution={"shard_size": 3})
    m = build(cfg, progress=False).manifest
    cat = Catalog(str(data_root))
    traj, errors = cat.read_table(m, "trajectories").to_pylist(), cat.read_table(m, "errors").to_pylist()
    assert sorted(t["seed"] for t in traj) == [0, 2] and all(t["n_steps"] == 3 for t in traj)
    assert all(s["action"] == "look around" for t in traj for s in t["steps"])
    (e,) = errors
    assert e["reason"] == "twx_jvm_died" and e["stage"] == "rollout"
    assert read_task_record(e["raw_input"])[1].seed == 1 and json.loads(e["raw_output"])["n_steps"] == 0
    assert m.stages["rollout"]["errors"] == 1 and m.stages["rollout"]["out"] == 2


@needs_twx
def test_twx_coin_rollouts_and_gold_paths(data_root):
    cfg = agent_recipe(data_root, {"kind": "twx", "config": {"game": "coin", "game_params": "numLocations=2"}},
                       "look", tasks={"count": 2}, rollout={"n": 1, "gold": True, "max_steps": 2, "env_pool": 1})
    m = build(cfg, progress=False).manifest
    traj = Catalog(str(data_root)).read_table(m, "trajectories").to_pylist()
    gold = [t for t in traj if t["gold"]]
    assert len(traj) == 4 and len(gold) == 2 and all(t["success"] for t in gold)
    assert all(t["env_name"] == "twx" and t["task_id"].startswith("twx:coin:") for t in traj)
    assert all(t["n_steps"] == 2 and not t["success"] for t in traj if not t["gold"])
