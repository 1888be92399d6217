"""The rollout stage: a policy model acts in an environment, one ReAct turn at a time (problems -> trajectories).

Each problems row is an env task (`env`, `env_config_json`: the env spec and the task, see stages/envs/spec.py).
For each task the stage runs `n` episodes of the role's model (`policy` by default), and with `gold: true` also
the env's gold path (the craft planner, TWX's gold actions), marked `gold`.

An episode is Agent-R's conversation: the instruction with the ReAct format (user), "OK" (assistant), the first
observation (user), then the model's turns (`Thought: ...\\nAction: ...`) and the env's observations, up to
`max_steps` turns. Before each turn the prompt is trimmed to the context: the oldest (assistant, user) pairs after
the opening go first, counted with the engine's own tokenizer and chat template (stages/agents/tokens.py).
A turn without a parseable action is recorded as written (parse_ok False) and the env is sent an invalid action,
which it answers as such; unparsed turns and invalid actions are counted on the row and in the stage's counts.

Throughput: every episode of the shard (up to `concurrency` at once) is a coroutine of one asyncio loop; each turn
is one request to the shared engine, so the turns of many episodes batch together in the engine. Env calls run in
each env's own worker thread (stages/agents/episodes.py), off the loop and off the engine's path. Envs come from a
pool per shard (`env_pool` of them, each set up once: a JVM each for twx).

Failures: an episode that cannot finish (the env died or hung, the engine refused a request, the context could not
fit even after trimming, a gold path that does not solve its task) is not a trajectory: it becomes an `errors`
row (reason: twx_jvm_died, env_timeout, prompt_too_long, context_too_long, gold_failed, ...) with the task as raw
input and the partial trajectory as raw output; the task's other episodes and the build go on. An engine that
fails as a whole (not one request) fails the shard, which a rerun resumes.
"""
from __future__ import annotations

import asyncio
import json
from typing import Any, Literal, Optional

from pydantic import Field

from schemas.errors import RowError
from schemas.agent_rows import Trajectory
from schemas.rows import make_id
from stages.agents.episodes import EnvPool, expand_env_tasks, gold_trajectory, new_trajectory, run_episode
from stages.base import ExpandStage, Failed, ShardInfo, StageStats, columns_except
from stages.engines.base import GenerationRequest
from stages.envs import Env, EnvTask, make_env
from stages.agents.react import ReactTurnFormat
from stages.llm import BudgetLLMMixin, ConstrainedOptions


class RolloutConfig(ConstrainedOptions):
    role: str = Field("policy", description="engine role of the policy model (a key of the recipe's `engines`)")
    template: Literal["react_agent"] = Field(
        "react_agent", description="the opening's wording (stages/prompts/react_agent.txt: the ReAct format, then "
                                   "the task instruction); recorded on rows as name@version")
    temperature: float = Field(0.7, ge=0, description="sampling temperature of each turn")
    max_tokens: int = Field(128, ge=1, description="max new tokens of one turn")
    n: int = Field(1, ge=1, description="episodes per task")
    stop: list[str] = Field(default_factory=lambda: ["\nObservation:"],
                            description="stop strings of a turn (the model must not write the env's observation)")
    max_steps: int = Field(20, ge=1, description="most turns of an episode")
    concurrency: int = Field(16, ge=1, description="episodes in flight at once per shard; their turns share the "
                                                   "engine's batch")
    env_pool: Optional[int] = Field(None, ge=1, description="env instances per shard, each set up once and reused "
                                                            "(a JVM each for twx); none = one per concurrent "
                                                            "episode")
    step_timeout_s: Optional[float] = Field(60.0, gt=0, description="longest one env call (reset, step) may take; "
                                                                    "the episode then fails with env_timeout and "
                                                                    "the env is replaced")
    gold: bool = Field(False, description="also record each task's gold trajectory (craft planner, TWX gold path), "
                                          "marked gold")
    context_tokens: Optional[int] = Field(None, ge=1, description="prompt token budget for trimming; none = the "
                                                                  "engine's max_model_len minus max_tokens")
    tokenizer: Optional[str] = Field(None, description="tokenizer that counts prompt tokens (a model directory, "
                                                       "hub id or 'embedded'); none = the policy engine's model "
                                                       "(fake engine: words; openai: its model name if it "
                                                       "loads, else an estimate)")


def error_reason(error: str) -> str:
    """The reason tag of an episode's error string ("reason: message")."""
    return (error or "episode_failed").split(":", 1)[0].strip() or "episode_failed"


class RolloutStage(BudgetLLMMixin, ExpandStage):
    kind = "rollout"
    fills = {"trajectories": columns_except(Trajectory)}
    description = "the policy model acts in each task's environment (ReAct turns), n episodes per task"
    output_format = ReactTurnFormat()
    config_class = RolloutConfig
    source, target = "problems", "trajectories"
    reads = {"problems": ("problem_id", "env", "env_config_json")}


    def describe(self) -> dict[str, Any]:
        c = self.config
        return {**super().describe(), "episodes_per_task": c.n, "max_steps": c.max_steps,
                "concurrency": c.concurrency, "env_pool": c.env_pool, "gold": c.gold}

    def episode_key(self) -> str:
        """What determines an episode besides its task: the generation key, max_steps and the context budget."""
        return make_id(self.generation_key(), self.config.max_steps, self.budget)

    # --- the shard ------------------------------------------------------------------------------------------------
    def expand(self, rows, tables, stats: StageStats, shard: ShardInfo):
        return expand_env_tasks(rows, lambda jobs: self._run_all(jobs, stats, shard))

    async def _run_all(self, jobs, stats: StageStats, shard: ShardInfo) -> list[tuple[dict, list]]:
        c = self.config
        sem = asyncio.Semaphore(c.concurrency)
        fatal: list[BaseException] = []
        keys = [json.dumps(spec, sort_keys=True, default=str) for _, spec, _ in jobs]
        episodes = {key: keys.count(key) * (c.n + int(c.gold)) for key in keys}
        pools: dict[str, EnvPool] = {}          # one pool per env spec (a shard usually has one)
        for key, (_, spec, _) in zip(keys, jobs):
            if key not in pools:
                size = min(c.env_pool or c.concurrency, c.concurrency, episodes[key])
                pools[key] = EnvPool(lambda s=spec: make_env(s["kind"], dict(s["config"]), s["class"]), size)
        coros = []
        for key, (p, spec, task) in zip(keys, jobs):
            pool = pools[key]
            for k in range(c.n):
                coros.append(self._episode(p, spec, task, k, pool, sem, fatal, stats, shard))
            if c.gold:
                coros.append(self._gold(p, spec, task, pool, sem, stats))
        try:
            results = await asyncio.gather(*coros)
        finally:
            for pool in pools.values():
                await pool.close()
        if fatal:
            raise fatal[0]
        return results

    async def _episode(self, p: dict, spec: dict, task: EnvTask, k: int, pool: EnvPool, sem: asyncio.Semaphore,
                       fatal: list, stats: StageStats, shard: ShardInfo) -> tuple[dict, list]:
        c = self.config
        acc = {"prompt_tokens": 0, "completion_tokens": 0}
        sampling = self.sampling_params(n=1)
        rid = f"{p['problem_id']}:{k}"

        async def policy(messages: list[dict], action_pattern: Optional[str] = None) -> str:
            if fatal:
                raise RowError("aborted", "the engine failed for another episode of this shard")
            msgs = [{"role": m["role"], "content": m["content"]} for m in messages]
            if c.system_prompt:
                msgs.insert(0, {"role": "system", "content": c.system_prompt})
            turn = sampling
            if self.constrained:
                turn = self.sampling_params(n=1, **self.format_sampling(action_pattern=action_pattern,
                                                                        max_tokens=c.max_tokens))
            req = GenerationRequest(messages=msgs, sampling=turn, request_id=rid)
            try:
                (res,) = await self._llm.agenerate([req], tag=self.name, shard=shard.shard_id)
            except Exception as e:       # the engine as a whole failed: the shard fails (a rerun resumes)
                fatal.append(e)
                raise RowError("engine_failed", f"{type(e).__name__}: {e}") from e
            acc["prompt_tokens"] += res.prompt_tokens
            stats.prompt_tokens += res.prompt_tokens
            if not res.ok or not res.completions:
                raise RowError(res.error_reason or "no_completions", res.error_message or "")
            comp = res.completions[0]
            acc["completion_tokens"] += comp.completion_tokens
            stats.completion_tokens += comp.completion_tokens
            return comp.text

        async with sem:
            try:
                env = await pool.acquire()
            except Exception as e:
                traj = new_trajectory(spec["kind"], task)
                traj["error"] = f"env_setup: {type(e).__name__}: {e}"
                return p, [self._failed(p, task, traj, str(k), stats)]
            traj = None
            try:
                traj = await run_episode(env, task, policy, c.max_steps, self.count_prompt, self.budget,
                                         pool.executor_for(env), c.step_timeout_s,
                                         action_patterns=self.constrained)
            finally:    # an env that hung is replaced, as run_episodes does
                pool.release(env, discard=traj is None or error_reason(traj["error"] or "") == "env_timeout")
        if traj["error"]:
            return p, [self._failed(p, task, traj, str(k), stats)]
        return p, [self._row(p, spec, task, traj, k, acc, stats, env)]

    async def _gold(self, p: dict, spec: dict, task: EnvTask, pool: EnvPool, sem: asyncio.Semaphore,
                    stats: StageStats) -> tuple[dict, list]:
        stats.count("gold_episodes")
        async with sem:
            try:
                env = await pool.acquire()
            except Exception as e:
                traj = new_trajectory(spec["kind"], task, gold=True)
                traj["error"] = f"env_setup: {type(e).__name__}: {e}"
                return p, [self._failed(p, task, traj, "gold", stats)]
            try:
                if type(env).gold_plan is Env.gold_plan:
                    traj = new_trajectory(env.name, task, gold=True)
                    traj["error"] = f"no_gold_plan: {type(env).__name__} does not implement gold_plan"
                else:
                    loop = asyncio.get_running_loop()
                    traj = await loop.run_in_executor(pool.executor_for(env), gold_trajectory, env, task)
            finally:
                pool.release(env)
        if traj["error"]:
            return p, [self._failed(p, task, traj, "gold", stats)]
        stats.count("gold_success")
        return p, [self._row(p, spec, task, traj, 0, None, stats, env)]

    # --- rows -----------------------------------------------------------------------------------------------------
    def _failed(self, p: dict, task: EnvTask, traj: dict, key: str, stats: StageStats) -> Failed:
        stats.count("episodes_failed")
        return Failed(error_reason(traj["error"]), traj["error"], raw_input=p.get("env_config_json"),
                      raw_output=json.dumps({k: traj[k] for k in ("task_id", "gold", "n_steps", "messages", "steps")},
                                            ensure_ascii=False, default=str)[:200000],
                      key=key)

    def _row(self, p: dict, spec: dict, task: EnvTask, traj: dict, k: int, acc: Optional[dict],
             stats: StageStats, env: Env) -> dict:
        gold = traj["gold"]
        steps = [dict(s) for s in traj["steps"]]
        unparsed = sum(not s["parse_ok"] for s in steps)
        invalid = sum(bool(s.get("invalid")) for s in steps)
        finish = "done" if steps and steps[-1]["done"] else "max_steps"
        if not gold:
            stats.count("episodes")
            stats.count("turns", len(steps))
            stats.count("parsed", len(steps))
            stats.count("parse_ok", len(steps) - unparsed)
            stats.count("unparsed", unparsed)
            stats.count("invalid_actions", invalid)
            stats.count(f"finish_{finish}")
            if traj["success"]:
                stats.count("success")
            if traj["dropped_pairs"]:
                stats.count("trimmed_episodes")
        tid = (make_id(p["problem_id"], "gold", prefix="t-") if gold
               else make_id(p["problem_id"], self.episode_key(), k, prefix="t-"))
        return {
            "trajectory_id": tid, "problem_id": p["problem_id"], "task_id": task.task_id, "env": spec["kind"],
            "env_name": env.name, "split": task.split, "seed": task.seed, "sample_index": k, "gold": gold,
            "model": f"gold:{env.name}" if gold else self.model_label,
            "engine": "" if gold else self.engine_config.kind,
            "sampling_json": "" if gold else self.sampling_json(), "prompt_template": self.template.ref,
            "max_steps": self.config.max_steps, "messages": traj["messages"], "steps": steps,
            "n_steps": traj["n_steps"], "success": bool(traj["success"]), "final_reward": traj["final_reward"],
            "finish": finish, "n_unparsed": unparsed, "n_invalid": invalid, "dropped_pairs": traj["dropped_pairs"],
            "prompt_tokens": acc["prompt_tokens"] if acc else 0,
            "completion_tokens": acc["completion_tokens"] if acc else 0, "drop_reason": None,
            **self.lineage([p["problem_id"]])}

