"""Run agent episodes with asyncio: one policy (an async callable, messages -> text), many episodes at once.

    traj = await run_episode(env, task, policy, max_steps=30)
    trajs = await run_episodes(tasks, policy, env_factory=lambda: make_env("craft", cfg), concurrency=16)
    async with EnvPool(lambda: make_env("twx", cfg), size=2) as pool:    # heavy envs: K JVMs, reused
        trajs = await run_episodes(tasks, policy, pool=pool, concurrency=8)
    gold = gold_trajectory(env, task)                                     # from the env's planner / gold path

Env calls (reset, step) run in a thread pool, never on the event loop, so a slow env (a JVM) does not hold up
the policy's requests of other episodes. Nothing raises for one episode: an env failure (EnvFailure, or any
error from the env), a policy error or a context that cannot fit the budget ends that episode with `error` set
and what happened so far kept.

A trajectory is a dict: task_id, env, split, seed, gold, messages [{role, content, loss}], steps [{idx, thought,
action, observation, reward, done, raw_text, parse_ok, invalid}], success, final_reward (sum of rewards), n_steps,
dropped_pairs (context trimming), error (None or "reason: message").
"""
from __future__ import annotations

import asyncio
import concurrent.futures as cf
import functools
from typing import Any, Awaitable, Callable, Optional, Sequence

from schemas.errors import RowError
from stages.agents.react import format_turn, initial_messages, message, parse_react, trim_context
from stages.envs.base import INVALID_ACTION, Env, EnvFailure, EnvTask
from stages.envs.spec import read_task_record

Policy = Callable[[list[dict]], Awaitable[str]]


def _error(e: BaseException, where: str) -> str:
    if isinstance(e, (EnvFailure, RowError)):      # "reason: message" already
        return str(e)
    return f"{where}: {type(e).__name__}: {e}"


def new_trajectory(env_name: Optional[str], task: EnvTask, gold: bool = False) -> dict[str, Any]:
    return {"task_id": task.task_id, "env": env_name, "split": task.split, "seed": task.seed, "gold": gold,
            "messages": [], "steps": [], "success": False, "final_reward": 0.0, "n_steps": 0, "dropped_pairs": 0,
            "error": None}


def _record(traj: dict, idx: int, thought, action, obs: str, reward: float, done: bool, raw: str, ok: bool,
            info: dict, loss: bool = True) -> None:
    traj["messages"] += [message("assistant", raw, loss=loss), message("user", obs)]
    traj["steps"].append({"idx": idx + 1, "thought": thought, "action": action, "observation": obs,
                          "reward": float(reward), "done": bool(done), "raw_text": raw, "parse_ok": ok,
                          "invalid": bool(info.get("invalid", False))})
    traj["final_reward"] += float(reward)
    traj["n_steps"] = len(traj["steps"])
    if done:
        traj["success"] = bool(info.get("success", reward > 0))


async def run_episode(env: Env, task: EnvTask, policy: Policy, max_steps: int,
                      count_tokens: Optional[Callable[[list[dict]], int]] = None, budget: Optional[int] = None,
                      executor: Optional[cf.Executor] = None, step_timeout_s: Optional[float] = None,
                      on_step: Optional[Callable[[dict, dict], None]] = None,
                      action_patterns: bool = False) -> dict[str, Any]:
    """One episode: reset, then up to `max_steps` turns of (trim context, ask the policy, parse, step).
    With `action_patterns` the policy is called as `policy(context, pattern)`, `pattern` being the env's
    `action_pattern()` at that turn (a regex or None), so it can hold its turn to the env's actions.
    Unparseable text is recorded with parse_ok False and the env gets INVALID_ACTION (it answers "invalid").
    A policy that raises RowError(reason, ...) (a request the engine refused) ends the episode with that reason.
    `step_timeout_s` bounds each env call (EnvFailure "env_timeout"; the env should then be discarded).
    `on_step(traj, step)` is called after each step (tests use it to inject faults)."""
    loop = asyncio.get_running_loop()
    traj = new_trajectory(env.name, task)

    async def env_call(fn, *args):
        fut = loop.run_in_executor(executor, functools.partial(fn, *args))
        if step_timeout_s is None:
            return await fut
        try:
            return await asyncio.wait_for(fut, step_timeout_s)
        except asyncio.TimeoutError:
            raise EnvFailure("env_timeout", f"{env.name} took over {step_timeout_s:g} s") from None

    try:
        obs, _ = await env_call(env.reset, task)
    except Exception as e:
        traj["error"] = _error(e, "env_reset")
        return traj
    traj["messages"] = initial_messages(task.instruction, obs)
    for idx in range(max_steps):
        context = traj["messages"]
        if count_tokens is not None and budget is not None:
            context, dropped = trim_context(traj["messages"], count_tokens, budget)
            traj["dropped_pairs"] = max(traj["dropped_pairs"], dropped)
            if count_tokens(context) > budget:
                traj["error"] = f"context_too_long: {count_tokens(context)} tokens after trimming, budget {budget}"
                return traj
        try:
            if action_patterns:
                pattern = await env_call(env.action_pattern)
                text = await policy(context, pattern)
            else:
                text = await policy(context)
        except Exception as e:
            traj["error"] = _error(e, "policy")
            return traj
        text = text if isinstance(text, str) else ""
        turn = parse_react(text)
        try:
            obs, reward, done, info = await env_call(env.step, turn.action if turn.parse_ok else INVALID_ACTION)
        except Exception as e:
            traj["error"] = _error(e, "env_step")
            return traj
        _record(traj, idx, turn.thought, turn.action, obs, reward, done, text, turn.parse_ok, info)
        if on_step is not None:
            on_step(traj, traj["steps"][-1])
        if done:
            break
    return traj


class EnvPool:
    """K environments, each set up once (a JVM each, for twx) and lent to one episode at a time. Created on
    first need. Each env has its own worker thread (its calls never interleave; a hung call holds only that
    thread); an env whose episode ended in an env timeout is closed and replaced by a new one."""

    def __init__(self, factory: Callable[[], Env], size: int):
        if size < 1:
            raise ValueError("an env pool needs size >= 1")
        self.factory, self.size = factory, size
        self._free: Optional[asyncio.Queue] = None      # idle envs; None = a free slot (an env was discarded)
        self._slots = 0                                   # slots handed out so far (at most size)
        self._threads: dict[int, cf.ThreadPoolExecutor] = {}
        self._envs: dict[int, Env] = {}

    def executor_for(self, env: Env) -> cf.Executor:
        return self._threads[id(env)]

    async def acquire(self) -> Env:
        if self._free is None:
            self._free = asyncio.Queue()
        if self._free.empty() and self._slots < self.size:
            self._slots += 1
            return await self._make()
        env = await self._free.get()
        return env if env is not None else await self._make()

    async def _make(self) -> Env:
        try:
            env = self.factory()
        except Exception:
            self._free.put_nowait(None)
            raise
        self._envs[id(env)] = env
        self._threads[id(env)] = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"env-{env.name}")
        try:
            await asyncio.get_running_loop().run_in_executor(self.executor_for(env), env.setup)
        except Exception:
            self.release(env, discard=True)
            raise
        return env

    def release(self, env: Env, discard: bool = False) -> None:
        if not discard:
            self._free.put_nowait(env)
            return
        self._envs.pop(id(env), None)
        thread = self._threads.pop(id(env))
        thread.submit(_quiet_close, env)          # after whatever the thread is still doing
        thread.shutdown(wait=False)
        self._free.put_nowait(None)               # the slot is free for a new env

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        for key, env in list(self._envs.items()):
            await loop.run_in_executor(self._threads[key], _quiet_close, env)
            self._threads.pop(key).shutdown(wait=False)
        self._envs, self._free, self._slots = {}, None, 0

    async def __aenter__(self) -> "EnvPool":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


def _quiet_close(env: Env) -> None:
    try:
        env.close()
    except Exception:
        pass


async def run_episodes(tasks: Sequence[EnvTask], policy: Policy, *, max_steps: int,
                       env_factory: Optional[Callable[[], Env]] = None, pool: Optional[EnvPool] = None,
                       concurrency: int = 8, count_tokens: Optional[Callable[[list[dict]], int]] = None,
                       budget: Optional[int] = None, step_timeout_s: Optional[float] = None,
                       on_step: Optional[Callable[[dict, dict], None]] = None) -> list[dict[str, Any]]:
    """Episodes for `tasks`, up to `concurrency` at once (and at most one per pooled env), in task order.
    Give `pool` for heavy envs, or `env_factory` for light ones (a pool of `concurrency` is made and closed)."""
    if (pool is None) == (env_factory is None):
        raise ValueError("give exactly one of env_factory and pool")
    own = pool is None
    pool = pool or EnvPool(env_factory, concurrency)
    sem = asyncio.Semaphore(concurrency)

    async def one(task: EnvTask) -> dict[str, Any]:
        async with sem:
            try:
                env = await pool.acquire()
            except Exception as e:
                traj = new_trajectory(None, task)
                traj["error"] = _error(e, "env_setup")
                return traj
            traj = None
            try:
                traj = await run_episode(env, task, policy, max_steps, count_tokens, budget, pool.executor_for(env),
                                         step_timeout_s, on_step)
                return traj
            finally:
                timed_out = traj is None or (traj["error"] or "").startswith("env_timeout")
                pool.release(env, discard=timed_out)

    try:
        return list(await asyncio.gather(*(one(t) for t in tasks)))
    finally:
        if own:
            await pool.close()


def gold_trajectory(env: Env, task: EnvTask, max_steps: Optional[int] = None) -> dict[str, Any]:
    """The env's gold plan played from reset, in the trajectory shape (gold=True, assistant turns in the
    canonical ReAct format with loss True). Sets error "gold_failed" if the plan does not solve the task."""
    traj = new_trajectory(env.name, task, gold=True)
    try:
        plan = env.gold_plan(task)
        obs, _ = env.reset(task)
        traj["messages"] = initial_messages(task.instruction, obs)
        for idx, (thought, action) in enumerate(plan[:max_steps] if max_steps else plan):
            obs, reward, done, info = env.step(action)
            _record(traj, idx, thought, action, obs, reward, done, format_turn(thought, action), True, info)
            if done:
                break
    except Exception as e:
        traj["error"] = _error(e, "gold")
        return traj
    if not traj["success"]:
        traj["error"] = "gold_failed: the gold plan did not solve the task"
    return traj


def expand_env_tasks(rows: list[dict], run_all: Callable[[list[tuple[dict, dict, EnvTask]]], Awaitable[list]]
                     ) -> list:
    """An agent stage's `expand` over env-task problems: each row's task record is read (a row without one fails as
    `not_an_env_task`), `run_all(jobs)` runs the (problem, spec, task) jobs and returns (problem, results) pairs;
    the results come back per input row, in order."""
    from stages.base import Failed
    jobs: list[tuple[dict, dict, EnvTask]] = []
    out: dict[str, Any] = {}
    for p in rows:
        try:
            spec, task = read_task_record(p.get("env_config_json") or "")
        except (ValueError, TypeError, KeyError) as e:
            out[p["problem_id"]] = Failed("not_an_env_task", f"env_config_json: {e}")
            continue
        jobs.append((p, spec, task))
    for p, res in asyncio.run(run_all(jobs)):
        out.setdefault(p["problem_id"], []).extend(res)
    return [out.get(p["problem_id"], []) for p in rows]
