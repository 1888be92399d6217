"""One STeP episode: the agent acts in ReAct turns, the teacher judges each step, and an erroneous step is followed
by the teacher's reflection and corrected step, which the environment executes (docs/methods/step.md).

    traj = await run_step_episode(env, task, agent, teacher, StepSettings(max_steps=10, max_interventions=2))

`agent(context, action_pattern) -> text` is the agent's turn; `teacher(kind, prompt, action_pattern) -> text` the
teacher's reply to a `judge` or `correct` prompt (pipelines/methods/step/teacher.py). Both may raise: the episode
then ends with `error` set, as stages/agents/episodes.py does.

The trajectory (messages, one row of `step_trajectories`):
- the opening (instruction, "OK", first observation), no loss;
- a step the teacher judged ok (or whose verdict did not parse): the agent's turn with loss, its observation;
- a step judged error: the agent's turn **without loss** (its thought keeps loss only with
  `mask_error_thought=False`, as a segment of the turn), the observation the env gave for it (context, no loss),
  then, below the cap, the teacher's turn "Reflection: ...\\nThought: ...\\nAction: ..." with loss, and the env's
  real observation of the corrected action; the agent goes on from there;
- an agent turn without a parseable action never carries loss, whatever the verdict.
Every executed action (the agent's and the teacher's) is a `steps` entry in order, so replaying `executed_action`
from reset reproduces every observation.

Each intervention is measured against the env: the corrected action's outcome (from the state before the error,
where the env can snapshot: `compare = same_state`; else the real one after the error: `after_error`) against the
agent's erroneous step's outcome (`outcome_score`), giving `vs_agent` better / equal / worse.
"""
from __future__ import annotations

import asyncio
import concurrent.futures as cf
import functools
import re
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Optional

from schemas.errors import RowError
from stages.agents.react import initial_messages, parse_react, trim_context
from stages.envs.base import INVALID_ACTION, Env, EnvFailure, EnvTask
from pipelines.methods.step.teacher import correct_prompt, correction_text, judge_prompt, parse_correction, \
    parse_verdict

Agent = Callable[[list[dict], Optional[str]], Awaitable[str]]
Teacher = Callable[[str, str, Optional[str]], Awaitable[str]]

_ACTION_LINE = re.compile(r"^[\s>*_#`\-]*action\s*[*_`]*\s*[:：]", re.IGNORECASE | re.MULTILINE)


@dataclass
class StepSettings:
    max_steps: int = 10                       # env actions per episode, the teacher's corrections included
    max_interventions: int = 2                # reflections + corrected steps per trajectory
    mask_error_thought: bool = True           # an erroneous step's thought carries no loss either
    environment: str = "a text-based environment"
    max_history: Optional[int] = 8            # earlier steps shown in the teacher's prompts
    count_tokens: Optional[Callable[[list[dict]], int]] = None    # the agent's prompt counter (trimming)
    budget: Optional[int] = None
    step_timeout_s: Optional[float] = None


def outcome_score(reward: float, done: bool, success: Optional[bool], invalid: bool) -> int:
    """What the env shows of one step, as an order: 3 solved the task, 2 a positive reward, 1 an accepted action,
    0 an action the env refused, -1 ended the episode unsolved or a negative reward."""
    if done and success:
        return 3
    if (done and not success) or reward < 0:
        return -1
    if reward > 0:
        return 2
    return 0 if invalid else 1


def compare(corrected: int, agent: int) -> str:
    return "better" if corrected > agent else "worse" if corrected < agent else "equal"


def split_turn(raw: str) -> tuple[str, str]:
    """(thought part, action part) of a turn's raw text: the action part starts at the line of its first Action
    label; no such line: ("", raw)."""
    m = _ACTION_LINE.search(raw)
    return (raw[:m.start()], raw[m.start():]) if m and m.start() > 0 else ("", raw)


def _step(idx: int, author: str, raw: str, thought, action, ok: bool, executed: str, obs: str, reward: float,
          done: bool, info: dict) -> dict:
    success = bool(info.get("success", reward > 0)) if done else None
    invalid = bool(info.get("invalid", False))
    return {"idx": idx, "author": author, "raw_text": raw, "thought": thought, "action": action, "parse_ok": ok,
            "executed_action": executed, "observation": obs if isinstance(obs, str) else str(obs),
            "reward": float(reward), "done": bool(done), "invalid": invalid, "success": success,
            "outcome": outcome_score(float(reward), bool(done), success, invalid), "verdict": "none",
            "verdict_reason": None, "verdict_raw": None, "verdict_parse_ok": None, "reflection": None,
            "correction_raw": None, "correction_parse_ok": None, "intervention": None, "loss": author == "teacher",
            "thought_loss": author == "teacher", "vs_agent": None, "compare": None, "counterfactual_outcome": None}


class _Trajectory:
    def __init__(self, env_name: str, task: EnvTask):
        self.d: dict[str, Any] = {"task_id": task.task_id, "env": env_name, "messages": [], "segments": [],
                                  "steps": [], "success": False, "final_reward": 0.0, "n_steps": 0,
                                  "interventions": 0, "dropped_pairs": 0, "error": None}

    def add(self, role: str, content: str, loss: bool, author: str, parts: Optional[list[tuple[str, bool]]] = None):
        k = len(self.d["messages"])
        self.d["messages"].append({"role": role, "content": content, "loss": bool(loss)})
        for text, l in (parts or [(content, loss)]):
            self.d["segments"].append({"text": text, "author": author, "loss": bool(l), "message": k})

    def executed(self, st: dict) -> None:
        self.d["steps"].append(st)
        self.d["final_reward"] += st["reward"]
        self.d["n_steps"] = len(self.d["steps"])
        if st["done"]:
            self.d["success"] = bool(st["success"])


async def run_step_episode(env: Env, task: EnvTask, agent: Agent, teacher: Teacher, s: StepSettings,
                           executor: Optional[cf.Executor] = None,
                           action_patterns: bool = True) -> dict[str, Any]:
    """One episode (see the module docstring). Never raises for the episode: failures set `error`."""
    loop = asyncio.get_running_loop()
    t = _Trajectory(env.name, task)
    d = t.d

    async def env_call(fn, *args):
        fut = loop.run_in_executor(executor, functools.partial(fn, *args))
        if s.step_timeout_s is None:
            return await fut
        try:
            return await asyncio.wait_for(fut, s.step_timeout_s)
        except asyncio.TimeoutError:
            raise EnvFailure("env_timeout", f"{env.name} took over {s.step_timeout_s:g} s") from None

    def fail(e: BaseException, where: str) -> dict:
        d["error"] = str(e) if isinstance(e, (EnvFailure, RowError)) else f"{where}: {type(e).__name__}: {e}"
        return d

    try:
        first_obs, _ = await env_call(env.reset, task)
    except Exception as e:
        return fail(e, "env_reset")
    task_text = task.instruction.strip() or "(see the first observation)"
    for k, m in enumerate(initial_messages(task.instruction, first_obs)):
        t.add(m["role"], m["content"], False, "env" if k == 2 else "template")
    snap = env.can_snapshot
    while d["n_steps"] < s.max_steps:
        context = d["messages"]
        if s.count_tokens is not None and s.budget is not None:
            context, dropped = trim_context(d["messages"], s.count_tokens, s.budget)
            d["dropped_pairs"] = max(d["dropped_pairs"], dropped)
            if s.count_tokens(context) > s.budget:
                d["error"] = f"context_too_long: {s.count_tokens(context)} tokens after trimming, budget {s.budget}"
                return d
        try:
            pattern = await env_call(env.action_pattern) if action_patterns else None
            text = await agent(context, pattern)
        except Exception as e:
            return fail(e, "agent")
        text = text if isinstance(text, str) else ""
        turn = parse_react(text)
        executed = turn.action if turn.parse_ok else INVALID_ACTION
        try:
            before = await env_call(env.snapshot) if snap and d["interventions"] < s.max_interventions else None
            obs, reward, done, info = await env_call(env.step, executed)
        except Exception as e:
            return fail(e, "env_step")
        st = _step(d["n_steps"] + 1, "agent", text, turn.thought, turn.action, turn.parse_ok, executed, obs,
                   reward, done, info)
        history = list(d["steps"])
        t.executed(st)
        try:
            vraw = await teacher("judge", judge_prompt(s.environment, task_text, first_obs, history, st,
                                                       s.max_history), None)
        except Exception as e:
            return fail(e, "teacher")
        verdict, reason, vok = parse_verdict(vraw)
        st.update(verdict=verdict, verdict_reason=reason or None, verdict_raw=vraw, verdict_parse_ok=vok)
        wrong = verdict == "error"
        st["loss"] = turn.parse_ok and not wrong
        st["thought_loss"] = turn.parse_ok and (not wrong or not s.mask_error_thought)
        thought_part, action_part = split_turn(text)
        if wrong and st["thought_loss"] and thought_part:
            t.add("assistant", text, False, "model", [(thought_part, True), (action_part, False)])
        else:
            t.add("assistant", text, st["loss"], "model")
        t.add("user", st["observation"], False, "env")
        if done:
            break
        if not wrong or d["interventions"] >= s.max_interventions or d["n_steps"] >= s.max_steps:
            continue
        # the teacher reflects and corrects; its action is executed from the state the error left
        try:
            cpattern = await env_call(env.action_pattern) if action_patterns else None
            craw = await teacher("correct", correct_prompt(s.environment, task_text, first_obs, list(d["steps"]),
                                                           reason, s.max_history), cpattern)
        except Exception as e:
            return fail(e, "teacher")
        corr = parse_correction(craw)
        st.update(correction_raw=craw, correction_parse_ok=corr.parse_ok)
        if not corr.parse_ok:
            continue
        cf_outcome = None
        try:
            if before is not None:         # the corrected action from the agent's state, then back
                after = await env_call(env.snapshot)
                await env_call(env.restore, before)
                o2, r2, dn2, i2 = await env_call(env.step, corr.action)
                cf_outcome = outcome_score(float(r2), bool(dn2), bool(i2.get("success", r2 > 0)) if dn2 else None,
                                           bool(i2.get("invalid", False)))
                await env_call(env.restore, after)
            obs, reward, done, info = await env_call(env.step, corr.action)
        except Exception as e:
            return fail(e, "env_step")
        n = d["interventions"]
        st["intervention"] = n
        body = correction_text(corr.reflection, corr.thought, corr.action)
        cst = _step(d["n_steps"] + 1, "teacher", body, corr.thought, corr.action, True, corr.action, obs, reward,
                    done, info)
        measured = cf_outcome if cf_outcome is not None else cst["outcome"]
        cst.update(reflection=corr.reflection, intervention=n, counterfactual_outcome=cf_outcome,
                   compare="same_state" if cf_outcome is not None else "after_error",
                   vs_agent=compare(measured, st["outcome"]))
        t.executed(cst)
        d["interventions"] = n + 1
        reflection_part = body[:body.index("\nThought:") + 1]
        t.add("assistant", body, True, "teacher", [(reflection_part, True), (body[len(reflection_part):], True)])
        t.add("user", cst["observation"], False, "env")
        if done:
            break
    return d


def assistant_tokens(messages: list[dict], segments: list[dict], count_text: Callable[[str], int]) -> tuple[int, int]:
    """(assistant tokens, masked ones) of a trajectory's step turns (the opening's "OK" left out), counted per
    segment so a turn whose thought keeps loss counts its action as masked."""
    total = masked = 0
    for sg in segments:
        k = sg["message"]
        if k < 3 or messages[k]["role"] != "assistant":
            continue
        n = count_text(sg["text"])
        total += n
        masked += 0 if sg["loss"] else n
    return total, masked
