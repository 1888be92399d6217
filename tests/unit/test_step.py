"""STeP (method `step`) with a scripted teacher: the verdict and correction formats, the intervention logic (an
erroneous step kept without loss, its observation, the reflection + corrected step executed in the env), the cap,
unparsed verdicts, the masking (per message and per segment, through tokenization), the env's measure of each
intervention, replay from reset, the golden mix, and the method end to end with its three exports."""
from __future__ import annotations

import asyncio
import re

import pyarrow.parquet as pq
import pytest

from pipelines.build import build
from pipelines.catalog import Catalog
from pipelines.chat_tokens import IGNORE, message_spans, tokenize_conversation
from pipelines.config import load_recipe, validate_recipe
from pipelines.export import export
from pipelines.methods.step.episode import StepSettings, outcome_score, run_step_episode, split_turn
from pipelines.methods.step.exports import dpo_pairs, segmented_messages
from pipelines.methods.step.synth_stages import SelectConfig, SelectStage, golden_needed
from pipelines.methods.step.teacher import CorrectionFormat, VerdictFormat, parse_correction, parse_verdict
from schemas.errors import ConfigError
from stages.agents.tokens import load_tokenizer, plain_messages
from stages.base import StageContext
from stages.engines.fake_engine import register_script
from stages.envs import make_env
from stages.envs.base import EnvTask
from stages.envs.spec import read_task_record
from stages.engines.model_prep import embedded_model_dir
from tests.agent_envs import CounterEnv
from tests.conftest import MODELS_DIR

COUNTER = "tests.agent_envs:CounterEnv"
GEN = {"generate": {"seed": 0, "depth": 3}, "max_goal_depth": 1, "distractors": 2}
needs_model = pytest.mark.skipif(not embedded_model_dir(MODELS_DIR).is_dir(),
                                 reason="the embedded model is not prepared (make model)")


# --- scripted agent and teacher ------------------------------------------------------------------------------------
def _last_action(prompt: str) -> str:
    return re.search(r"The agent's latest step:\nThought: .*\nAction: (.*)\n", prompt).group(1)


def agent_script(first: str = "look", then: str = "inc"):
    """The agent's turns: `first` at its first turn, `then` afterwards."""
    async def agent(messages, pattern=None):
        turns = sum(m["role"] == "assistant" for m in messages) - 1
        return f"Thought: I try.\nAction: {first if turns == 0 else then}"
    return agent


def teacher_script(judge=lambda action: "ok" if action == "inc" else "error", fix: str = "inc",
                   raw_judge=None, calls=None):
    async def teacher(kind, prompt, pattern=None):
        if calls is not None:
            calls.append(kind)
        if kind == "judge":
            if raw_judge is not None:
                return raw_judge
            return f"Reason: the count must go up.\nVerdict: {judge(_last_action(prompt))}"
        return f"Reflection: I sent an action the env does not know.\nThought: Count up.\nAction: {fix}"
    return teacher


def episode(env, agent, teacher, task=None, **settings):
    task = task or env.tasks("train", 1)[0]
    return asyncio.run(run_step_episode(env, task, agent, teacher, StepSettings(**settings), action_patterns=False))


def replay_observations(env, task, steps):
    obs, _ = env.reset(task)
    return [env.step(s["executed_action"])[0] for s in steps]


# --- formats ---------------------------------------------------------------------------------------------------------
def test_verdict_parser_reads_ok_error_and_never_guesses():
    assert parse_verdict("Verdict: error\nReason: the env refused it") == ("error", "the env refused it", True)
    assert parse_verdict("**Verdict:** OK\nReason: fine") == ("ok", "fine", True)
    assert parse_verdict("Verdict: correct") == ("ok", "", True)
    assert parse_verdict("Reason: it was refused.\nVerdict: error") == ("error", "it was refused.", True)
    assert parse_verdict("I think the step is wrong.") == ("unparsed", "", False)
    assert parse_verdict("Verdict: maybe\nReason: hmm") == ("unparsed", "", False)
    c = parse_correction("Reflection: wrong item.\nThought: get it\nAction: get 1 oak log")
    assert (c.reflection, c.thought, c.action, c.parse_ok) == ("wrong item.", "get it", "get 1 oak log", True)
    assert not parse_correction("Thought: x\nAction: inc").parse_ok           # no reflection: no intervention
    assert not parse_correction("Reflection: oops\nThought: hmm").parse_ok     # no action


def test_constraints_accept_what_the_parsers_read():
    v = VerdictFormat().constraint(max_tokens=48).regex
    assert re.fullmatch(v, "Reason: it was refused.\nVerdict: error") and not re.fullmatch(v, "Reason: x\nVerdict: maybe")
    c = CorrectionFormat().constraint(action_pattern="(inc|dec)", max_tokens=96).regex
    assert re.fullmatch(c, "Reflection: oops.\nThought: up.\nAction: inc")
    assert not re.fullmatch(c, "Reflection: oops.\nThought: up.\nAction: jump")


# --- the intervention logic ----------------------------------------------------------------------------------------
def test_an_error_keeps_the_step_and_its_observation_then_a_correction_the_env_executes():
    env = CounterEnv(target=2)
    task = env.tasks("train", 1)[0]
    t = episode(env, agent_script(), teacher_script(), task, max_steps=6, max_interventions=2)
    assert t["error"] is None and t["success"] and t["interventions"] == 1
    authors = [(s["author"], s["executed_action"], s["verdict"]) for s in t["steps"]]
    assert authors == [("agent", "look", "error"), ("teacher", "inc", "none"), ("agent", "inc", "ok")]
    bad, fix, ok = t["steps"]
    assert not bad["loss"] and not bad["thought_loss"] and bad["invalid"] and bad["verdict_reason"]
    assert fix["loss"] and fix["reflection"] == "I sent an action the env does not know." and fix["intervention"] == 0
    assert fix["observation"] == "The count is 1." and fix["vs_agent"] == "better" and fix["compare"] == "after_error"
    m = t["messages"]
    assert [(x["role"], x["loss"]) for x in m[3:]] == [("assistant", False), ("user", False), ("assistant", True),
                                                       ("user", False), ("assistant", True), ("user", False)]
    assert m[4]["content"] == bad["observation"] and "Invalid action" in m[4]["content"]   # the error's own reply
    assert m[5]["content"].startswith("Reflection: I sent") and m[5]["content"].endswith("Action: inc")
    assert replay_observations(CounterEnv(target=2), task, t["steps"]) == [s["observation"] for s in t["steps"]]
    # segments join to their messages
    for k, msg in enumerate(m):
        assert "".join(sg["text"] for sg in t["segments"] if sg["message"] == k) == msg["content"]


def test_at_most_max_interventions_later_errors_are_masked_not_corrected():
    env = CounterEnv(target=3)
    calls: list[str] = []
    t = episode(env, agent_script("look", "look"), teacher_script(fix="look", calls=calls), max_steps=8,
                max_interventions=2)
    assert t["interventions"] == 2 and calls.count("correct") == 2
    agent = [s for s in t["steps"] if s["author"] == "agent"]
    assert len(t["steps"]) == 8 and all(s["verdict"] == "error" and not s["loss"] for s in agent)
    assert len(agent) == 6 and calls.count("judge") == 6
    # a corrected step the env refuses as well is measured equal to the agent's
    assert [s["vs_agent"] for s in t["steps"] if s["author"] == "teacher"] == ["equal", "equal"]
    t0 = episode(CounterEnv(target=3), agent_script("look", "look"), teacher_script(), max_steps=3, max_interventions=0)
    assert t0["interventions"] == 0 and all(s["author"] == "agent" and not s["loss"] for s in t0["steps"])


def test_an_unparsed_verdict_never_means_error():
    calls: list[str] = []
    t = episode(CounterEnv(target=2), agent_script("inc", "inc"),
                teacher_script(raw_judge="I cannot say.", calls=calls), max_steps=4)
    assert t["success"] and t["interventions"] == 0 and "correct" not in calls
    assert all(s["verdict"] == "unparsed" and s["verdict_parse_ok"] is False and s["verdict_raw"] == "I cannot say."
               and s["loss"] for s in t["steps"])


def test_an_unparsed_correction_makes_no_intervention():
    async def teacher(kind, prompt, pattern=None):
        return "Verdict: error\nReason: no" if kind == "judge" else "I do not know what to do."
    t = episode(CounterEnv(target=2), agent_script("look", "inc"), teacher, max_steps=4)
    assert t["interventions"] == 0 and t["steps"][0]["correction_parse_ok"] is False
    assert t["steps"][0]["correction_raw"] == "I do not know what to do." and not t["steps"][0]["loss"]


def test_a_teacher_false_positive_shows_as_a_worse_outcome_from_the_same_state():
    """Craft can snapshot: the corrected action is also tried from the agent's state and compared there."""
    env = make_env("craft", GEN)
    env.setup()
    task = env.tasks("train", 1)[0]
    plan = env.gold_plan(task)
    first = plan[0][1]

    async def agent(messages, pattern=None):
        k = sum(m["role"] == "assistant" for m in messages) - 1
        return f"Thought: plan\nAction: {plan[min(k, len(plan) - 1)][1]}"

    # the teacher calls the planner's first step an error and "corrects" it with an action the env refuses
    t = episode(env, agent, teacher_script(judge=lambda a: "error" if a == first else "ok", fix="get 1 nothing"),
                task, max_steps=8, max_interventions=1)
    fix = next(s for s in t["steps"] if s["author"] == "teacher")
    assert fix["compare"] == "same_state" and fix["counterfactual_outcome"] == 0 and fix["vs_agent"] == "worse"
    replay = make_env("craft", GEN)
    replay.setup()
    assert replay_observations(replay, task, t["steps"]) == [s["observation"] for s in t["steps"]]


def test_outcome_order():
    assert outcome_score(1.0, True, True, False) > outcome_score(0.5, False, None, False) > \
        outcome_score(0.0, False, None, False) > outcome_score(0.0, False, None, True) > \
        outcome_score(0.0, True, False, False)


# --- masking ---------------------------------------------------------------------------------------------------------
def test_split_turn_cuts_at_the_action_line():
    assert split_turn("Thought: a b\nAction: inc") == ("Thought: a b\n", "Action: inc")
    assert split_turn("no action here") == ("", "no action here")


@pytest.fixture(scope="module")
def smol():
    return load_tokenizer(str(embedded_model_dir(MODELS_DIR)))


def _labelled_text(row: dict, tok, k: int, messages: list[dict]) -> tuple[str, str]:
    """(text of the labelled tokens, text of the unlabelled tokens) inside message k's span."""
    full, spans = message_spans(messages, lambda ms: tok.apply_chat_template(plain_messages(ms), tokenize=False))
    enc = tok(full, add_special_tokens=False, return_offsets_mapping=True)
    s, e = spans[k]
    on = "".join(full[a:b] for (a, b), lab in zip(enc["offset_mapping"], row["labels"]) if s <= a < e and lab != IGNORE)
    off = "".join(full[a:b] for (a, b), lab in zip(enc["offset_mapping"], row["labels"]) if s <= a < e and lab == IGNORE)
    return on, off


@needs_model
def test_the_loss_flags_survive_tokenization(smol):
    for mask_thought in (True, False):
        t = episode(CounterEnv(target=2), agent_script(), teacher_script(), max_steps=6,
                    mask_error_thought=mask_thought)
        msgs = segmented_messages({"messages": t["messages"], "segments": t["segments"]})
        row = tokenize_conversation(msgs, smol)
        on, off = _labelled_text(row, smol, 3, msgs)                 # the erroneous turn
        if mask_thought:
            assert on == "" and "Thought: I try." in off and "Action: look" in off
        else:
            assert "I try." in on and "look" not in on and "Action: look" in off
        on, off = _labelled_text(row, smol, 5, msgs)                 # reflection + correction: every token
        assert off.strip() == "" and "Reflection: I sent" in on and "Action: inc" in on
        on, off = _labelled_text(row, smol, 4, msgs)                 # the error's observation: context only
        assert on == "" and "Invalid action" in off


# --- the golden mix --------------------------------------------------------------------------------------------------
def test_golden_rows_are_mixed_at_the_ratio_tasks_without_a_kept_row_first():
    assert golden_needed(6, 0.25) == 2 and golden_needed(6, 0.0) == 0 and golden_needed(3, 1.0) is None
    rows = [{"revision_id": f"s{i}", "problem_id": f"p{i}", "is_golden": False, "success": i < 6, "drop_reason": None,
             "masked_fraction": 0.1, "assistant_tokens": 10, "masked_tokens": 1, "interventions": 1}
            for i in range(8)]
    rows += [{"revision_id": f"g{i}", "problem_id": f"p{i}", "is_golden": True, "success": True, "drop_reason": None,
              "masked_fraction": 0.0, "assistant_tokens": 5, "masked_tokens": 0, "interventions": 0} for i in range(8)]
    st = SelectStage(SelectConfig(golden_ratio=0.25), name="select",
                     context=StageContext(run_id="r", method="step", engines={}))
    drops = st.decide({"step_trajectories": rows})
    assert {k for k, v in drops.items() if v == "not_successful"} == {"s6", "s7"}
    kept_golden = {r["revision_id"] for r in rows if r["is_golden"] and r["revision_id"] not in drops}
    assert kept_golden == {"g6", "g7"}                                # the tasks the agent did not solve
    assert sum(v == "golden_over_ratio" for v in drops.values()) == 6


# --- the method, end to end ------------------------------------------------------------------------------------------
def script_agent(req, i):
    turns = sum(m["role"] == "assistant" for m in req.messages) - 1
    return f"Thought: I count.\nAction: {'look' if turns == 0 else 'inc'}"


def script_teacher(req, i):
    prompt = req.messages[-1]["content"]
    if "The agent's latest step:" in prompt:
        return f"Reason: only inc counts.\nVerdict: {'ok' if _last_action(prompt) == 'inc' else 'error'}"
    if "Reflection:" in prompt:
        return "Reflection: look is not an action here.\nThought: Count up.\nAction: inc"
    return "Thought: Count up.\nAction: inc"                       # the teacher's own (golden) episode


register_script("step_agent", script_agent)
register_script("step_teacher", script_teacher)


def step_recipe(data_root, **over):
    d = {"dataset": "steps", "method": "step", "env": {"kind": "python", "class": COUNTER, "config": {"target": 2}},
         "tasks": {"kind": "env", "count": 4},
         "engines": {"agent": {"kind": "fake", "fake_script": "step_agent"},
                     "teacher": {"kind": "fake", "fake_script": "step_teacher"}},
         "synthesize": {"n": 1, "max_steps": 3, "golden": "planner"}, "select": {"golden_ratio": 0.2},
         "execution": {"runner": "local", "shard_size": 2}, "storage": {"root": str(data_root)}}
    for k, v in over.items():
        d[k] = {**d[k], **v} if isinstance(v, dict) and isinstance(d.get(k), dict) else v
    return validate_recipe(d)


def test_the_recipe_loads_with_its_roles_and_switches_env():
    cfg = load_recipe("step", ["env.kind=python", f"env.class={COUNTER}", "env.config={target: 2}"])
    assert cfg.method == "step" and set(cfg.engines) == {"agent", "teacher"} and cfg.env.kind == "python"
    assert load_recipe("step", ["env.kind=twx", "env.config={game: coin}"]).env.kind == "twx"
    with pytest.raises(ConfigError):
        load_recipe("step", ["synthesize.max_interventions=-1"])


def test_step_build_counts_every_stage_and_exports(data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("ERRATA_MODELS", str(MODELS_DIR))
    res = build(step_recipe(data_root), progress=False)
    m = res.manifest
    syn, sel = m.stages["synthesize"]["counts"], m.stages["select"]["counts"]
    assert syn["episodes"] == 4 and syn["golden_episodes"] == 4 and syn["judged"] == 8
    assert syn["verdict_error"] == 4 and syn["verdict_ok"] == 4 and syn["interventions"] == 4
    assert syn["intervention_better"] == 4 and syn["success"] == 4 and syn["golden_success"] == 4
    assert sel["kept"] == 5 and sel["kept_golden"] == 1 and m.stages["select"]["dropped_golden_over_ratio"] == 3
    assert 0 < sel["masked_fraction_ppm_max"] < 1e6
    assert set(m.engines) and {r for e in m.engines.values() for r in e["roles"]} == {"agent", "teacher"}
    rows = Catalog(str(data_root)).read_table(m, "step_trajectories").to_pylist()
    kept = [r for r in rows if r["drop_reason"] is None]
    for r in rows:
        env = CounterEnv(target=2)
        task = EnvTask(task_id=r["task_id"], seed=r["seed"], split=r["split"])
        assert replay_observations(env, task, r["steps"]) == [s["observation"] for s in r["steps"]]
        assert r["masked_fraction"] == pytest.approx(r["masked_tokens"] / r["assistant_tokens"], abs=1e-6)
        assert r["is_golden"] == (r["trajectory_kind"] == "golden")
    assert all(r["masked_fraction"] > 0 for r in kept if not r["is_golden"])
    # sft: per-message loss; erroneous turns false
    out = export(str(data_root), m.ref, "sft", str(tmp_path / "sft"), jsonl=True)
    assert out.rows == 5
    # dpo: chosen = the corrected step, rejected = the erroneous step, the same prompt
    out = export(str(data_root), m.ref, "dpo", str(tmp_path / "dpo"))
    dpo = pq.read_table(tmp_path / "dpo" / "train-00000-of-00001.parquet").to_pylist()
    assert out.rows == 4 and all(d["rejected"][0]["content"].endswith("Action: look") and
                                 d["chosen"][0]["content"] == "Thought: Count up.\nAction: inc" and
                                 d["prompt"][-1]["role"] == "user" and d["vs_agent"] == "better" for d in dpo)
    r0 = next(r for r in kept if not r["is_golden"])
    (pair,) = dpo_pairs(r0, "x")
    assert pair["prompt"] == plain_messages(r0["messages"][:3])
    # a summary line per figure the issue asks for
    from pipelines.methods.step import step_summary
    s = step_summary(m.stages)
    assert "episodes 4" in s["yield"] and "judged steps 8" in s["yield"] and "kept 5" in s["yield"]
    assert s["interventions vs the agent's step"].startswith("better 4, equal 0, worse 0")


@needs_model
def test_step_tokenized_export_labels_no_erroneous_token(data_root, tmp_path, monkeypatch, smol):
    monkeypatch.setenv("ERRATA_MODELS", str(MODELS_DIR))
    m = build(step_recipe(data_root, synthesize={"mask_error_thought": False}), progress=False).manifest
    rows = Catalog(str(data_root)).read_table(m, "step_trajectories").to_pylist()
    export(str(data_root), m.ref, "sft-tokenized", str(tmp_path / "tok"), options={"tokenizer": "embedded"})
    tok_rows = {r["revision_id"]: r for r in pq.read_table(tmp_path / "tok" / "train-00000-of-00001.parquet").to_pylist()}
    seen = {"error": 0, "teacher": 0}
    for r in rows:
        if r["revision_id"] not in tok_rows:
            continue
        msgs = segmented_messages(r)
        t = tok_rows[r["revision_id"]]
        for j, s in enumerate(r["steps"]):
            on, off = _labelled_text(t, smol, 3 + 2 * j, msgs)
            if s["verdict"] == "error":
                assert "look" not in on and "Action: look" in off and "I count." in on   # the thought kept
                seen["error"] += 1
            if s["author"] == "teacher":
                assert off.strip() == "" and on.startswith("Reflection:")
                seen["teacher"] += 1
    assert seen == {"error": 4, "teacher": 4}


def test_golden_rows_from_the_teachers_own_episodes_are_marked(data_root, monkeypatch):
    monkeypatch.setenv("ERRATA_MODELS", str(MODELS_DIR))
    m = build(step_recipe(data_root, synthesize={"golden": "teacher"}, select={"golden_ratio": 1.0}),
              progress=False).manifest
    rows = Catalog(str(data_root)).read_table(m, "step_trajectories").to_pylist()
    golden = [r for r in rows if r["is_golden"]]
    assert len(golden) == 4 and all(r["golden_source"] == "teacher" and r["trajectory_kind"] == "golden" and
                                    r["agent_model"] == "fake:step_teacher" and r["success"] for r in golden)
    assert all(s["author"] == "golden" and s["verdict"] == "none" and s["loss"] for r in golden for s in r["steps"])
    assert all(r["masked_fraction"] == 0 and r["drop_reason"] is None for r in golden)
    assert m.stages["synthesize"]["counts"]["judged"] == 8                 # golden episodes are not judged


needs_twx = pytest.mark.skipif(__import__("shutil").which("java") is None, reason="TextWorldExpress needs java")


@needs_twx
def test_step_on_twx_corrections_are_real_replies_and_replay(data_root, monkeypatch):
    """TextWorldExpress cannot snapshot: each intervention is measured after the error; replay from reset gives
    every observation again."""
    monkeypatch.setenv("ERRATA_MODELS", str(MODELS_DIR))
    env = {"kind": "twx", "class": None, "config": {"game": "coin", "game_params": "numLocations=2"}}
    m = build(step_recipe(data_root, env=env, tasks={"count": 1},
                          synthesize={"max_steps": 3, "env_pool": 1, "constrain": "off"}), progress=False).manifest
    rows = Catalog(str(data_root)).read_table(m, "step_trajectories").to_pylist()
    (agent,) = [r for r in rows if not r["is_golden"]]
    fixes = [s for s in agent["steps"] if s["author"] == "teacher"]
    assert fixes and all(s["compare"] == "after_error" for s in fixes)     # 'look' judged error, 'inc' refused
    twx = make_env("twx", env["config"])
    twx.setup()
    try:
        (prob,) = Catalog(str(data_root)).read_table(m, "problems").to_pylist()
        _, task = read_task_record(prob["env_config_json"])
        assert task.task_id == agent["task_id"]
        assert replay_observations(twx, task, agent["steps"]) == [s["observation"] for s in agent["steps"]]
    finally:
        twx.close()


def test_on_the_ray_runner_both_roles_get_their_engines(data_root, monkeypatch):
    """A stage with two roles (Stage.roles) on Ray: the build starts both engines and the stage's actor reaches
    both (built-in fake scripts: Ray's workers do not see this module's)."""
    monkeypatch.setenv("ERRATA_MODELS", str(MODELS_DIR))
    cfg = step_recipe(data_root, execution={"runner": "ray", "shard_size": 2},
                      engines={"agent": {"kind": "fake", "fake_script": "echo_answer"},
                               "teacher": {"kind": "fake", "fake_script": "mixed"}})
    m = build(cfg, progress=False).manifest
    c = m.stages["synthesize"]["counts"]
    assert c["episodes"] == 4 and c["judged"] == c["agent_turns"] == 8 and m.stages["synthesize"]["errors"] == 0
    assert sorted(r for e in m.engines.values() for r in e["roles"]) == ["agent", "teacher"] and len(m.engines) == 2
