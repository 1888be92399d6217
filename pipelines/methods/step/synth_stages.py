"""STeP's stages (method `step`, docs/methods/step.md).

- `synthesize` (SynthesizeStage, problems -> step_trajectories; roles `agent` and `teacher`): for each env task,
  `n` episodes of the agent with the teacher judging every step and correcting erroneous ones
  (pipelines/methods/step/episode.py), plus the task's golden trajectory (`golden: planner`: the env's gold plan;
  `teacher`: the teacher's own episode; `none`). Every row carries its masked-token figures.
- `select` (SelectStage, global over step_trajectories): keeps the successful trajectories (`not_successful`
  otherwise) and mixes in golden ones at `golden_ratio` of the kept rows (`golden_over_ratio` for the rest);
  the masked fraction of the kept rows goes to the manifest.

Failures: an episode that cannot finish (the env died, a request failed, the context could not fit) becomes an
`errors` row with the partial trajectory; a gold plan that fails too.
"""
from __future__ import annotations

import asyncio
import json
import os
from typing import Any, Callable, Literal, Optional

from pydantic import Field

from schemas.errors import ConfigError, RowError
from schemas.rows import make_id
from stages.agents.episodes import EnvPool, expand_env_tasks, gold_trajectory, run_episode
from stages.agents.react import ReactTurnFormat
from stages.agents.tokens import load_tokenizer
from stages.base import ExpandStage, Failed, GlobalStage, ShardInfo, StageStats, columns_except
from stages.engines.base import GenerationRequest
from stages.envs import EnvTask, make_env
from stages.envs.base import Env
from stages.formats import resolve_constrain
from stages.llm import BudgetLLMMixin, ConstrainedOptions
from stages.options import Options
from pipelines.methods.step.episode import StepSettings, assistant_tokens, outcome_score, run_step_episode
from pipelines.methods.step.rows import StepTrajectory
from pipelines.methods.step.teacher import CorrectionFormat, VerdictFormat, environment_name

GOLDEN = ("planner", "teacher", "none")


class SynthesizeConfig(ConstrainedOptions):
    role: str = Field("agent", description="engine role of the agent (a key of the recipe's `engines`)")
    teacher_role: str = Field("teacher", description="engine role of the teacher that judges and corrects steps")
    template: Literal["react_agent"] = Field("react_agent", description="the agent's opening (the ReAct format, "
                                                                        "then the task instruction)")
    temperature: float = Field(0.7, ge=0, description="the agent's sampling temperature")
    max_tokens: int = Field(96, ge=1, description="max new tokens of an agent turn")
    n: int = Field(1, ge=1, description="agent episodes per task")
    stop: list[str] = Field(default_factory=lambda: ["\nObservation:"],
                            description="stop strings of an agent turn")
    max_steps: int = Field(10, ge=1, description="env actions per episode (the teacher's corrections included)")
    max_interventions: int = Field(2, ge=0, description="most reflections + corrected steps per trajectory; "
                                                        "later erroneous steps are judged and masked, not corrected")
    mask_error_thought: bool = Field(True, description="an erroneous step's thought carries no loss either "
                                                       "(false: only its action is masked; the thought keeps loss "
                                                       "as a segment, honoured by the sft-tokenized export)")
    teacher_temperature: float = Field(0.0, ge=0, description="the teacher's sampling temperature (0: a verdict "
                                                              "is reproducible)")
    judge_max_tokens: int = Field(64, ge=8, description="max new tokens of a verdict")
    correct_max_tokens: int = Field(128, ge=16, description="max new tokens of a reflection + corrected step")
    max_history_steps: Optional[int] = Field(8, ge=0, description="earlier steps shown in the teacher's prompts "
                                                                  "(none: all)")
    environment: Optional[str] = Field(None, description="how the teacher's prompts name the environment; none = "
                                                         "from the env kind")
    golden: Literal[GOLDEN] = Field("planner", description="golden trajectories per task: planner (the env's gold "
                                                           "plan), teacher (the teacher's own episode, unjudged), "
                                                           "none")
    concurrency: int = Field(8, ge=1, description="episodes in flight at once per shard")
    env_pool: Optional[int] = Field(None, ge=1, description="env instances per shard (none: one per concurrent "
                                                            "episode)")
    step_timeout_s: Optional[float] = Field(60.0, gt=0, description="longest one env call may take")
    context_tokens: Optional[int] = Field(None, ge=1, description="the agent's prompt token budget; none = its "
                                                                  "engine's max_model_len minus max_tokens")
    tokenizer: Optional[str] = Field(None, description="tokenizer that counts tokens (trimming, masked "
                                                       "fractions); none = the agent engine's model (fake: words)")


def _message_segments(messages: list[dict], author_of: Callable[[int, dict], str]) -> list[dict]:
    return [{"text": m["content"], "author": author_of(k, m), "loss": bool(m["loss"]), "message": k}
            for k, m in enumerate(messages)]


class SynthesizeStage(BudgetLLMMixin, ExpandStage):
    kind = "step_synthesize"
    fills = {"step_trajectories": columns_except(StepTrajectory)}
    description = "the agent acts in each task's env; the teacher judges each step and corrects erroneous ones"
    output_format = ReactTurnFormat()
    config_class = SynthesizeConfig
    source, target = "problems", "step_trajectories"
    reads = {"problems": ("problem_id", "env", "env_config_json")}

    def __init__(self, *a: Any, **k: Any):
        super().__init__(*a, **k)
        c = self.config
        engines = getattr(self.context, "engines", None) or {}
        if c.teacher_role not in engines:
            raise ConfigError(f"stage '{self.name}': teacher_role '{c.teacher_role}' has no engine "
                              f"(engines: {', '.join(sorted(engines)) or 'none'})")
        self.teacher_config = engines[c.teacher_role]
        where = f"stage '{self.name}' ({self.kind}) teacher"
        self.teacher_constrained = resolve_constrain(c.constrain, VerdictFormat(), self.teacher_config, where)
        self._teacher = None
        self._count_text: Optional[Callable[[str], int]] = None

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.config.role, self.config.teacher_role)))

    def __getstate__(self) -> dict:
        d = super().__getstate__()
        d["_teacher"], d["_count_text"] = None, None
        return d

    def setup(self, engines: Any = None) -> None:
        super().setup(engines)
        if self._teacher is None:
            self._teacher = engines.client(self.config.teacher_role)
        if self._count_text is None:
            self._count_text = self._text_counter(engines)

    def teardown(self) -> None:
        super().teardown()
        self._teacher = None

    def _text_counter(self, engines: Any) -> Callable[[str], int]:
        """Tokens of a text with the agent's tokenizer (the `tokenizer` option first); fake / openai: words."""
        name = self.config.tokenizer or (self.engine_config.model
                                         if self.engine_config.kind in ("vllm", "transformers") else None)
        if not name:
            return lambda text: len(text.split())
        from stages.engines.model_prep import resolve_model
        models_dir = (getattr(engines, "models_dir", None) or os.environ.get("ERRATA_MODELS")
                      or os.path.join("data", "models"))
        tok = load_tokenizer(resolve_model(name, models_dir))
        return lambda text: len(tok(text, add_special_tokens=False)["input_ids"])

    def describe(self) -> dict[str, Any]:
        c = self.config
        return {**super().describe(), "teacher_role": c.teacher_role, "teacher_model": self.teacher_config.label(),
                "teacher_engine": self.teacher_config.kind, "teacher_constrained": self.teacher_constrained,
                "teacher_templates": self.templates(), "max_steps": c.max_steps,
                "max_interventions": c.max_interventions, "mask_error_thought": c.mask_error_thought,
                "golden": c.golden, "episodes_per_task": c.n}

    def templates(self) -> dict[str, str]:
        from stages.prompts import load_template
        out = super().templates()
        for name in ("step_judge", "step_correct"):
            t = load_template(name)
            out[t.name] = t.version
        return out

    def teacher_sampling_json(self) -> str:
        c = self.config
        return json.dumps({"temperature": c.teacher_temperature, "judge_max_tokens": c.judge_max_tokens,
                           "correct_max_tokens": c.correct_max_tokens, "seed": self.teacher_config.seed,
                           "constrained": self.teacher_constrained, "templates": self.templates()}, sort_keys=True)

    def episode_key(self) -> str:
        c = self.config
        return make_id(self.generation_key(), self.teacher_config.label(), self.teacher_sampling_json(), c.max_steps,
                       c.max_interventions, c.mask_error_thought, c.max_history_steps, c.environment or "",
                       self.budget)

    # --- the shard ------------------------------------------------------------------------------------------------
    def expand(self, rows, tables, stats: StageStats, shard: ShardInfo):
        return expand_env_tasks(rows, lambda jobs: self._run_all(jobs, stats, shard))

    async def _run_all(self, jobs, stats: StageStats, shard: ShardInfo):
        c = self.config
        sem = asyncio.Semaphore(c.concurrency)
        fatal: list[BaseException] = []
        pools: dict[str, EnvPool] = {}
        coros = []
        for p, spec, task in jobs:
            key = json.dumps(spec, sort_keys=True, default=str)
            if key not in pools:
                size = min(c.env_pool or c.concurrency, c.concurrency, len(jobs) * (c.n + 1))
                pools[key] = EnvPool(lambda s=spec: make_env(s["kind"], dict(s["config"]), s["class"]), size)
            for k in range(c.n):
                coros.append(self._episode(p, spec, task, k, pools[key], sem, fatal, stats, shard))
            if c.golden != "none":
                coros.append(self._golden(p, spec, task, pools[key], sem, fatal, stats, shard))
        try:
            results = await asyncio.gather(*coros)
        finally:
            for pool in pools.values():
                await pool.close()
        if fatal:
            raise fatal[0]
        return results

    async def _ask(self, client, messages: list[dict], sampling, rid: str, fatal: list, stats: StageStats,
                   shard: ShardInfo, acc: dict) -> str:
        if fatal:
            raise RowError("aborted", "the engine failed for another episode of this shard")
        msgs = [{"role": m["role"], "content": m["content"]} for m in messages]
        if self.config.system_prompt:
            msgs.insert(0, {"role": "system", "content": self.config.system_prompt})
        req = GenerationRequest(messages=msgs, sampling=sampling, request_id=rid)
        try:
            (res,) = await client.agenerate([req], tag=self.name, shard=shard.shard_id)
        except Exception as e:        # the engine as a whole failed: the shard fails (a rerun resumes)
            fatal.append(e)
            raise RowError("engine_failed", f"{type(e).__name__}: {e}") from e
        stats.prompt_tokens += res.prompt_tokens
        if not res.ok or not res.completions:
            raise RowError(res.error_reason or "no_completions", res.error_message or "")
        stats.completion_tokens += res.completions[0].completion_tokens
        acc["calls"] = acc.get("calls", 0) + 1
        return res.completions[0].text

    def _agent(self, rid: str, fatal, stats, shard, acc):
        c = self.config

        async def agent(messages: list[dict], pattern: Optional[str] = None) -> str:
            extra = self.format_sampling(action_pattern=pattern, max_tokens=c.max_tokens)
            return await self._ask(self._llm, messages, self.sampling_params(n=1, **extra), rid, fatal, stats,
                                   shard, acc)
        return agent

    def _teacher_fn(self, rid: str, fatal, stats, shard, acc):
        c = self.config

        async def teacher(kind: str, prompt: str, pattern: Optional[str] = None) -> str:
            if kind == "judge":
                fmt, mt, ctx = VerdictFormat(), c.judge_max_tokens, {}
            else:
                fmt, mt, ctx = CorrectionFormat(), c.correct_max_tokens, {"action_pattern": pattern}
            extra = {"constraint": fmt.constraint(max_tokens=mt, **ctx)} if self.teacher_constrained else {}
            sampling = self.sampling_params(n=1, temperature=c.teacher_temperature, max_tokens=mt, stop=[], **extra)
            return await self._ask(self._teacher, [{"role": "user", "content": prompt}], sampling, f"{rid}:{kind}",
                                   fatal, stats, shard, acc)
        return teacher

    async def _episode(self, p, spec, task: EnvTask, k: int, pool: EnvPool, sem, fatal, stats, shard):
        c = self.config
        rid = f"{p['problem_id']}:{k}"
        acc: dict = {}
        settings = StepSettings(max_steps=c.max_steps, max_interventions=c.max_interventions,
                                mask_error_thought=c.mask_error_thought,
                                environment=c.environment or environment_name(spec["kind"]),
                                max_history=c.max_history_steps, count_tokens=self.count_prompt, budget=self.budget,
                                step_timeout_s=c.step_timeout_s)
        async with sem:
            try:
                env = await pool.acquire()
            except Exception as e:
                return p, [self._failed(p, {"error": f"env_setup: {type(e).__name__}: {e}"}, str(k), stats)]
            traj = None
            try:
                traj = await run_step_episode(env, task, self._agent(rid, fatal, stats, shard, acc),
                                              self._teacher_fn(rid, fatal, stats, shard, acc), settings,
                                              pool.executor_for(env), action_patterns=self.constrained)
            finally:
                pool.release(env, discard=traj is None or (traj["error"] or "").startswith("env_timeout"))
        stats.count("episodes")
        if traj["error"]:
            return p, [self._failed(p, traj, str(k), stats)]
        return p, [self._row(p, spec, task, traj, k, env, stats, golden=None)]

    async def _golden(self, p, spec, task: EnvTask, pool: EnvPool, sem, fatal, stats, shard):
        c = self.config
        stats.count("golden_episodes")
        async with sem:
            try:
                env = await pool.acquire()
            except Exception as e:
                return p, [self._failed(p, {"error": f"env_setup: {type(e).__name__}: {e}"}, "golden", stats)]
            traj = None
            try:
                if c.golden == "planner":
                    if type(env).gold_plan is Env.gold_plan:
                        traj = {"error": f"no_gold_plan: {type(env).__name__} does not implement gold_plan"}
                    else:
                        loop = asyncio.get_running_loop()
                        traj = await loop.run_in_executor(pool.executor_for(env), gold_trajectory, env, task,
                                                          c.max_steps)
                else:
                    tc = self.config

                    async def policy(messages, pattern=None):
                        extra = ({"constraint": self.output_format.constraint(action_pattern=pattern,
                                                                              max_tokens=tc.max_tokens)}
                                 if self.teacher_constrained else {})
                        return await self._ask(self._teacher, messages,
                                               self.sampling_params(n=1, temperature=tc.teacher_temperature, **extra),
                                               f"{p['problem_id']}:golden", fatal, stats, shard, {})
                    traj = await run_episode(env, task, policy, c.max_steps, self.count_prompt, self.budget,
                                             pool.executor_for(env), c.step_timeout_s,
                                             action_patterns=self.teacher_constrained)
            finally:
                pool.release(env, discard=traj is None or (traj.get("error") or "").startswith("env_timeout"))
        if traj["error"]:
            return p, [self._failed(p, traj, "golden", stats)]
        return p, [self._row(p, spec, task, self._golden_shape(traj), 0, env, stats, golden=c.golden)]

    @staticmethod
    def _golden_shape(traj: dict) -> dict:
        """A golden trajectory (stages/agents/episodes.py shape) in this method's: steps unjudged, full loss."""
        msgs = [dict(m) for m in traj["messages"]]
        steps = []
        for s in traj["steps"]:
            invalid = bool(s.get("invalid"))
            success = bool(traj["success"]) if s["done"] else None
            steps.append({"idx": s["idx"], "author": "golden", "raw_text": s["raw_text"], "thought": s["thought"],
                          "action": s["action"], "parse_ok": s["parse_ok"],
                          "executed_action": s["action"] if s["parse_ok"] else "(no parseable action)",
                          "observation": s["observation"], "reward": s["reward"], "done": s["done"],
                          "invalid": invalid, "success": success,
                          "outcome": outcome_score(s["reward"], s["done"], success, invalid), "verdict": "none",
                          "loss": s["parse_ok"], "thought_loss": s["parse_ok"]})
            msgs[1 + 2 * s["idx"]]["loss"] = bool(s["parse_ok"])      # an unparsed turn never carries loss
        segs = _message_segments(msgs, lambda k, m: "template" if k < 2 else "env" if m["role"] == "user"
                                 else "model")
        return {**traj, "messages": msgs, "steps": steps, "segments": segs, "interventions": 0}

    # --- rows -----------------------------------------------------------------------------------------------------
    def _failed(self, p: dict, traj: dict, key: str, stats: StageStats) -> Failed:
        stats.count("episodes_failed")
        err = traj.get("error") or "episode_failed"
        return Failed(err.split(":", 1)[0].strip() or "episode_failed", err, raw_input=p.get("env_config_json"),
                      raw_output=json.dumps({k: traj.get(k) for k in ("n_steps", "messages", "steps")},
                                            ensure_ascii=False, default=str)[:200000], key=key)

    def _row(self, p: dict, spec: dict, task: EnvTask, traj: dict, k: int, env: Env, stats: StageStats,
             golden: Optional[str]) -> dict:
        steps = traj["steps"]
        agent_steps = [s for s in steps if s["author"] == "agent"]
        verdicts = [s["verdict"] for s in agent_steps]
        outcomes = [s["vs_agent"] for s in steps if s["author"] == "teacher"]
        total, masked = assistant_tokens(traj["messages"], traj["segments"], self._count_text or
                                         (lambda t: len(t.split())))
        finish = "done" if steps and steps[-1]["done"] else "max_steps"
        if golden is None:
            stats.count("agent_turns", len(agent_steps))
            for s in agent_steps:
                self.count_parse(stats, s["parse_ok"])
            stats.count("judged", len(verdicts))
            for v in ("ok", "error", "unparsed"):
                stats.count(f"verdict_{v}", verdicts.count(v))
            stats.count("interventions", traj["interventions"])
            stats.count("corrections_unparsed", sum(s.get("correction_parse_ok") is False for s in agent_steps))
            for o in ("better", "equal", "worse"):
                stats.count(f"intervention_{o}", outcomes.count(o))
            stats.count("errors_on_rewarded_steps", sum(s["verdict"] == "error" and s["outcome"] >= 2
                                                        for s in agent_steps))
            if traj["success"]:
                stats.count("success")
            if traj["dropped_pairs"]:
                stats.count("trimmed_episodes")
        elif traj["success"]:
            stats.count("golden_success")
        stats.count("assistant_tokens", total)
        stats.count("masked_tokens", masked)
        kind = "golden" if golden else "self_reflected"
        rid = make_id(p["problem_id"], "golden", golden, prefix="s-") if golden else \
            make_id(p["problem_id"], self.episode_key(), k, prefix="s-")
        model = (f"gold:{env.name}" if golden == "planner" else self.teacher_config.label() if golden
                 else self.model_label)
        return {"revision_id": rid, "strategy": "none" if golden else "reflect_correct",
                "kind": "good" if golden or not traj["interventions"] else "revision", "problem_id": p["problem_id"],
                "segments": traj["segments"], "trajectory_kind": kind, "is_golden": bool(golden),
                "golden_source": golden, "task_id": task.task_id, "env": spec["kind"], "env_name": env.name,
                "split": task.split, "seed": task.seed, "sample_index": k, "agent_model": model,
                "teacher_model": self.teacher_config.label(),
                "sampling_json": json.dumps({"agent": json.loads(self.sampling_json()),
                                             "teacher": json.loads(self.teacher_sampling_json())}, sort_keys=True),
                "messages": traj["messages"], "steps": steps, "n_steps": len(steps), "n_judged": len(verdicts),
                "n_ok": verdicts.count("ok"), "n_error": verdicts.count("error"),
                "n_unparsed": verdicts.count("unparsed"), "interventions": traj["interventions"],
                "better": outcomes.count("better"), "equal": outcomes.count("equal"),
                "worse": outcomes.count("worse"), "success": bool(traj["success"]),
                "final_reward": float(traj["final_reward"]), "finish": finish, "assistant_tokens": total,
                "masked_tokens": masked, "masked_fraction": round(masked / total, 6) if total else 0.0,
                "dropped_pairs": traj.get("dropped_pairs", 0), "drop_reason": None,
                **self.lineage([p["problem_id"]])}


class SelectConfig(Options):
    golden_ratio: float = Field(0.25, ge=0, le=1, description="golden rows as a fraction of the kept rows (0: "
                                                              "none; 1: golden only); golden rows of tasks with no "
                                                              "kept self-reflected row are taken first")
    seed: int = Field(0, description="seeds the order of the golden rows within each group")


def golden_needed(n_self: int, ratio: float) -> Optional[int]:
    """Golden rows so they are `ratio` of golden + self-reflected rows; None: no limit (ratio 1)."""
    if ratio >= 1:
        return None
    return 0 if ratio <= 0 else int(n_self * ratio / (1.0 - ratio) + 0.5)


class SelectStage(GlobalStage):
    kind = "step_select"
    description = "keep successful trajectories; mix golden ones in at golden_ratio"
    config_class = SelectConfig
    table = "step_trajectories"
    reads = {"step_trajectories": ("problem_id", "is_golden", "success", "assistant_tokens", "masked_tokens",
                                   "masked_fraction", "interventions")}

    def decide(self, tables: dict[str, list[dict]]) -> dict[str, str]:
        import hashlib
        rows = [r for r in tables["step_trajectories"] if r.get("drop_reason") is None]
        drops = {r["revision_id"]: "not_successful" for r in rows if not r["success"]}
        ok_self = [r for r in rows if r["success"] and not r["is_golden"]]
        golden = [r for r in rows if r["success"] and r["is_golden"]]
        covered = {r["problem_id"] for r in ok_self}
        key = lambda r: (r["problem_id"] in covered,                                      # noqa: E731
                         hashlib.sha256(f"{self.config.seed}:{r['revision_id']}".encode()).hexdigest())
        need = golden_needed(len(ok_self), self.config.golden_ratio)
        for i, r in enumerate(sorted(golden, key=key)):
            if need is not None and i >= need:
                drops[r["revision_id"]] = "golden_over_ratio"
        self._kept = [r for r in rows if r["revision_id"] not in drops]
        return drops

    def summarize(self, tables: dict[str, list[dict]], stats: StageStats) -> dict[str, list[dict]]:
        kept = getattr(self, "_kept", None)
        if kept is None:
            self.decide(tables)
            kept = self._kept
        fr = [float(r["masked_fraction"]) for r in kept]
        stats.count("kept", len(kept))
        stats.count("kept_self_reflected", sum(not r["is_golden"] for r in kept))
        stats.count("kept_golden", sum(bool(r["is_golden"]) for r in kept))
        stats.count("kept_with_interventions", sum(r["interventions"] > 0 for r in kept))
        stats.count("kept_assistant_tokens", sum(int(r["assistant_tokens"]) for r in kept))
        stats.count("kept_masked_tokens", sum(int(r["masked_tokens"]) for r in kept))
        # per-row masked fractions (parts per million: counters are integers)
        stats.count("masked_fraction_ppm_sum", int(round(sum(fr) * 1e6)))
        stats.count("masked_fraction_ppm_max", int(round(max(fr, default=0.0) * 1e6)))
        stats.count("rows_with_masked_tokens", sum(f > 0 for f in fr))
        return {}
