"""Agent-R's judge and splice stages (method `agent_r`, docs/methods/agent_r.md): from a pair's failed path to its revision.
Search and pairs, and the helpers both files use, are in pipelines/methods/agent_r/search_stages.py.

- `judge` (JudgeBadPathsStage, pairs -> pairs, judgements): the policy judges each pair's bad path step by step from the
  divergence child, stopping at the first Bad (pipelines/methods/agent_r/step_judge.py); one `judgements` row per judged node,
  raw text beside the verdict. An unparseable reply stops the walk and drops the pair (`judgement_unparsed`)
  unless `on_unparsed: treat_as_bad`.
- `splice` (SpliceStage, pairs -> revision_trajectories): the revision trajectory of each kept pair (strategy `splice`,
  kind `revision`) and each good leaf's path (kind `good`), messages and segments with loss flags
  (pipelines/methods/agent_r/splice.py). The env's reply to the revision turn's `Action: wait` comes from replaying the
  bad path from reset in a fresh env (checked against the recorded observations).
"""
from __future__ import annotations

import asyncio
import json
from typing import Any, Literal, Optional

from pydantic import Field, field_validator

from schemas.errors import RowError
from pipelines.methods.agent_r.rows import JUDGE_COLUMNS, RevisionTrajectory
from schemas.rows import make_id
from pipelines.methods.agent_r.search_stages import engine_policy, env_spec_key, pair_from_row, trees_from_tables
from pipelines.methods.agent_r.step_judge import (JudgeSettings, Judgement, StepJudge, StepJudgementFormat,
                                                  first_error_walk)
from pipelines.methods.agent_r.splice import MIN_SIGNALS, REVISION_SIGNALS, WAIT_ACTION, choose_signal, good_path, splice
from pipelines.methods.agent_r.tree import Node, Tree
from stages.base import ExpandStage, Failed, MapStage, ShardInfo, StageStats, columns_except
from stages.envs import make_env
from stages.envs.spec import read_task_record
from stages.llm import ConstrainedOptions, LLMMixin
from stages.options import Options


# ---- judge ---------------------------------------------------------------------------------------------------------
ENV_NAMES = {"craft": "a text-based crafting game", "twx": "a text-based game (TextWorldExpress)"}


class JudgeConfig(ConstrainedOptions):
    role: str = Field("policy", description="engine role of the judge: Agent-R's actor judges itself (policy)")
    template: Literal["agent_r_judge"] = Field("agent_r_judge", description="the step-judgement prompt")
    temperature: float = Field(0.0, ge=0, description="judge sampling temperature (0: a step's verdict is "
                                                      "reproducible)")
    max_tokens: int = Field(160, ge=1, description="max new tokens of a judgement")
    on_unparsed: Literal["stop", "treat_as_bad"] = Field(
        "stop", description="an unparseable judgement: stop the walk and drop the pair as judgement_unparsed "
                            "(stop), or take the step as the first error as the reference code did "
                            "(treat_as_bad); the verdict is recorded as unparsed either way")
    environment: Optional[str] = Field(None, description="how the prompt names the environment; none = from the "
                                                         "env (craft: a text-based crafting game, twx: a "
                                                         "text-based game, else the env's name)")
    max_history_steps: Optional[int] = Field(None, ge=0, description="earlier steps shown to the judge (none: all)")
    concurrency: int = Field(32, ge=1, description="walks in flight at once per shard")


def environment_name(env: str) -> str:
    return ENV_NAMES.get(env, f"a text-based environment ({env})")


class JudgeBadPathsStage(LLMMixin, MapStage):
    kind = "agent_r_judge"
    fills = {"pairs": JUDGE_COLUMNS,
             "judgements": ("target_table", "target_id", "problem_id", "judge_model", "judge_role",
                            "prompt_template", "verdict", "first_error_step", "raw_text", "parse_ok", "parse_error")}
    description = "the policy judges each pair's bad path step by step; stop at the first Bad"
    config_class = JudgeConfig
    output_format = StepJudgementFormat()
    table = "pairs"
    reads = {"pairs": ("pair_id", "kind", "tree_id", "good_leaf_id", "bad_leaf_id", "divergence_node_id"),
             "trees": ("tree_id",), "nodes": ("tree_id", "node_id")}
    writes = ("pairs", "judgements")

    def describe(self) -> dict[str, Any]:
        c = self.config
        return {**super().describe(), "on_unparsed": c.on_unparsed,
                "environment": c.environment or "from the env", "max_history_steps": c.max_history_steps}

    def process(self, rows, tables, stats: StageStats, shard: ShardInfo):
        trees = trees_from_tables(tables)
        return asyncio.run(self._walk_all(rows, trees, tables, stats, shard))

    async def _walk_all(self, rows, trees: dict[str, Tree], tables, stats: StageStats, shard: ShardInfo):
        c = self.config
        policy, fatal = engine_policy(self, stats, shard, "judge", "walk")

        judges: dict[str, StepJudge] = {}
        sem = asyncio.Semaphore(c.concurrency)
        problem_of = {t["tree_id"]: t.get("problem_id") for t in tables.get("trees", [])}

        async def one(row: dict):
            if row.get("kind") != "pair":
                stats.count("good_leaves_passed")
                return row
            tree = trees.get(row["tree_id"])
            if tree is None:
                return Failed("no_tree", f"tree {row['tree_id']} has no rows")
            if tree.tree_id not in judges:
                js = JudgeSettings(temperature=c.temperature, on_unparsed=c.on_unparsed,
                                   environment=c.environment or environment_name(tree.env_name),
                                   max_history_steps=c.max_history_steps,
                                   constraint=self.format_sampling(max_tokens=c.max_tokens).get("constraint"))
                judges[tree.tree_id] = StepJudge(tree, policy, js)
            async with sem:
                walk = await first_error_walk(tree, pair_from_row(tree, row), judges[tree.tree_id])
            stats.count(f"walk_{walk.status}")
            if walk.status == "judge_error":
                return Failed("judge_failed", walk.error or "", raw_input=json.dumps(row, default=str))
            jids = [self.judgement_id(j) for j in walk.judgements]
            out = dict(row, judge_status=walk.status, first_error_depth=walk.first_error_depth,
                       first_error_node_id=walk.end.node_id if walk.first_error_depth is not None else None,
                       bad_end_node_id=walk.end.node_id if walk.end else None,
                       bad_end_depth=walk.end.depth if walk.end else None, judgement_ids=jids)
            if walk.status == "unparsed":
                out["drop_reason"] = "judgement_unparsed"
            return out

        results = await asyncio.gather(*(one(r) for r in rows))
        if fatal:
            raise fatal[0]
        seen: set[str] = set()
        made: list[dict] = []
        for tid, judge in judges.items():
            for k, v in judge.stats.items():
                stats.count(k, v)
            for j in judge.judged():
                self.count_parse(stats, j.parse_ok)
                jid = self.judgement_id(j)
                if jid not in seen:
                    seen.add(jid)
                    made.append(self.judgement_row(j, jid, problem_of.get(tid) or "", judge))
        stats.count("judgements", len(made))
        self.emit("judgements", made)
        return results

    def judgement_id(self, j: Judgement) -> str:
        return make_id(j.node_id, self.generation_key(), self.config.environment or "", prefix="j-")

    def judgement_row(self, j: Judgement, jid: str, problem_id: str, judge: StepJudge) -> dict:
        return {"judgement_id": jid, "target_table": "nodes", "target_id": j.node_id, "problem_id": problem_id,
                "judge_model": self.model_label, "judge_role": "self", "prompt_template": judge.template,
                "verdict": j.verdict, "steps": [], "first_error_step": j.depth if j.verdict == "bad" else None,
                "error_type": None, "type_parse_ok": None, "raw_text": j.raw_text, "parse_ok": j.parse_ok,
                "parse_error": None if j.parse_ok else "no final 'Judgement: Good|Bad|Uncertain' line",
                "drop_reason": None, **self.lineage([j.node_id])}


# ---- splice --------------------------------------------------------------------------------------------------------
class SpliceConfig(Options):
    signals: list[str] = Field(default_factory=lambda: list(REVISION_SIGNALS),
                               description=f"revision signals (at least {MIN_SIGNALS}, distinct); each revision "
                                           "draws one from the whole list, recorded with its index")
    signal_seed: int = Field(0, description="seeds the signal draw (with the pair id)")
    wait_action: str = Field(WAIT_ACTION, description="the revision turn's action; the env's reply to it follows")

    @field_validator("signals")
    @classmethod
    def _enough_signals(cls, v: list[str]) -> list[str]:
        if len(v) < MIN_SIGNALS or len(set(v)) != len(v) or any(not s.strip() for s in v):
            raise ValueError(f"needs at least {MIN_SIGNALS} distinct non-empty signals (got {len(set(v))})")
        return v


class SpliceStage(ExpandStage):
    kind = "agent_r_splice"
    fills = {"revision_trajectories": columns_except(RevisionTrajectory)}
    description = "splice each judged pair into a revision trajectory; good leaves as good trajectories"
    config_class = SpliceConfig
    source, target = "pairs", "revision_trajectories"
    reads = {"pairs": ("pair_id", "kind", "tree_id", "bad_end_node_id", "judge_status"),
             "trees": ("tree_id",), "nodes": ("tree_id", "node_id"),
             "problems": ("problem_id", "env_config_json")}

    def describe(self) -> dict[str, Any]:
        c = self.config
        return {**super().describe(), "signals": len(c.signals), "signal_seed": c.signal_seed,
                "wait_action": c.wait_action}

    def expand(self, rows, tables, stats: StageStats, shard: ShardInfo):
        trees = trees_from_tables(tables)
        specs = {p["problem_id"]: p.get("env_config_json") for p in tables.get("problems", [])}
        envs: dict[str, Any] = {}
        try:
            return [self._one(r, trees, specs, envs, stats) for r in rows]
        finally:
            for env in envs.values():
                try:
                    env.close()
                except Exception:
                    pass

    def _env(self, problem_id: str, specs: dict, envs: dict):
        spec, _ = read_task_record(specs.get(problem_id) or "")
        key = env_spec_key(spec)
        if key not in envs:
            env = make_env(spec["kind"], dict(spec["config"]), spec["class"])
            env.setup()
            envs[key] = env
        return envs[key]

    def wait_reply(self, tree: Tree, end: Node, problem_id: str, specs: dict, envs: dict) -> str:
        """The env's answer to the wait action after `end`: reset, replay its path (checked), step."""
        env = self._env(problem_id, specs, envs)
        env.reset(tree.task)
        for n in end.lineage()[1:]:
            obs, *_ = env.step(n.executed_action)
            if obs != n.observation:
                raise RowError("replay_mismatch", f"replaying depth {n.depth} gave another observation")
        obs, *_ = env.step(self.config.wait_action)
        return obs if isinstance(obs, str) else str(obs)

    def _one(self, row: dict, trees: dict, specs: dict, envs: dict, stats: StageStats):
        c = self.config
        tree = trees.get(row["tree_id"])
        if tree is None:
            return Failed("no_tree", f"tree {row['tree_id']} has no rows")
        base = {"problem_id": row["problem_id"], "env": tree.env_name, "task_id": tree.task.task_id,
                "iteration": tree.iteration, "tree_id": tree.tree_id, "drop_reason": None}
        if row.get("kind") == "good_leaf":            # pairs.good decides whether there are any
            leaf = tree.node(row["good_leaf_id"])
            sp = good_path(tree, leaf)
            stats.count("rows_good")
            return [dict(base, revision_id=make_id(row["pair_id"], "good", prefix="r-"), strategy="none",
                         kind="good", pair_id=row["pair_id"], messages=sp.messages, segments=sp.segments,
                         is_correct=leaf.success, final_reward=float(row["good_leaf_value"]),
                         good_leaf_id=leaf.node_id, good_leaf_value=float(row["good_leaf_value"]),
                         prefix_len=sp.prefix_len, **self.lineage([row["pair_id"], leaf.node_id]))]
        if not row.get("judge_status"):
            return Failed("not_judged", "the pair has no judge walk (run the judge stage first)")
        pair = pair_from_row(tree, row)
        end = tree.node(row["bad_end_node_id"])
        idx, signal = choose_signal(row["pair_id"], c.signal_seed, c.signals)
        try:
            reply = self.wait_reply(tree, end, row["problem_id"], specs, envs)
        except RowError as e:
            return Failed(e.reason, str(e))
        except Exception as e:
            return Failed("wait_reply_failed", f"{type(e).__name__}: {e}")
        sp = splice(tree, pair, end, signal, reply, c.wait_action)
        stats.count("rows_revision")
        stats.count(f"signal_{idx}")
        return [dict(base, revision_id=make_id(row["pair_id"], "splice", c.signal_seed, prefix="r-"),
                     strategy="splice", kind="revision", pair_id=row["pair_id"], messages=sp.messages,
                     segments=sp.segments, is_correct=pair.good.success, final_reward=float(pair.good_value),
                     revision_signal=signal, revision_signal_index=idx, good_leaf_id=pair.good.node_id,
                     bad_leaf_id=pair.bad.node_id, good_leaf_value=float(pair.good_value),
                     bad_leaf_value=float(pair.bad_value), divergence_depth=pair.divergence.depth,
                     first_error_depth=row.get("first_error_depth"), bad_end_depth=end.depth,
                     judge_status=row["judge_status"], wait_reply=reply, prefix_len=sp.prefix_len,
                     revision_turn_index=sp.revision_turn_index,
                     **self.lineage([row["pair_id"], *row.get("judgement_ids", [])]))]
