"""Agent-R's stages (method `agent_r`, METHODS.md §2): search -> pairs -> judge -> splice.

- `mcts` (MCTSStage, problems -> trees, nodes): one tree per env task, searched by the policy model
  (stages/agents/mcts.py). Every tree of the shard is a coroutine of one asyncio loop (up to `concurrency` at
  once), so expansions of different trees batch in the shared engine; an expansion asks for `children` samples
  of one prompt in one request, so siblings share the prompt's KV cache (prefix caching; its hit rate is in the
  manifest's engine description). Context is trimmed as in the rollouts (oldest turns after the opening first).
  A tree whose search failed (env setup/reset) is an `errors` row. An engine that fails as a whole fails the shard.
- `pairs` (PairsStage, trees + nodes -> pairs): leaf pairs with good > alpha and gap > beta (floats), shuffled
  with a seed; trees whose root value is 0 give none (counted: `skipped_root_value_zero`). Leaves with value >
  alpha also become `good_leaf` rows (Agent-R's good data).
- `judge` (JudgeStage, pairs -> pairs, judgements): the policy judges each pair's bad path step by step from the
  divergence child, stopping at the first Bad (stages/agents/judge.py); one `judgements` row per judged node,
  raw text beside the verdict. An unparseable reply stops the walk and drops the pair (`judgement_unparsed`)
  unless `on_unparsed: treat_as_bad`.
- `splice` (SpliceStage, pairs -> revisions): the revision trajectory of each kept pair (strategy `splice`,
  kind `revision`) and each good leaf's path (kind `good`), messages and segments with loss flags
  (stages/agents/splice.py). The env's reply to the revision turn's `Action: wait` comes from replaying the
  bad path from reset in a fresh env (checked against the recorded observations).
"""
from __future__ import annotations

import asyncio
import concurrent.futures as cf
import itertools
import json
from collections import defaultdict
from typing import Any, Awaitable, Callable, Literal, Optional

from pydantic import Field, field_validator

from schemas.agent_r_rows import NodeRow, PairRow, TreeRow  # noqa: F401  (registers trees, nodes, pairs)
from schemas.errors import RowError
from schemas.revision_rows import Revision  # noqa: F401  (registers revisions)
from schemas.rows import make_id
from stages.agents.judge import JudgeSettings, Judgement, StepJudge, first_error_walk
from stages.agents.mcts import MCTSSettings, search_many
from stages.agents.tree import Node, Tree, total_stats, tree_from_rows, tree_rows, tree_summary
from stages.agents.pairs import DEFAULT_ALPHA, DEFAULT_BETA, Pair, PairSettings, good_leaves, make_pairs
from stages.agents.react import initial_messages, parse_react, trim_context
from stages.agents.splice import MIN_SIGNALS, REVISION_SIGNALS, WAIT_ACTION, choose_signal, good_path, splice
from stages.base import ExpandStage, Failed, MapStage, ShardInfo, Stage, StageResult, StageStats, is_live
from stages.engines.base import GenerationRequest
from stages.envs import EnvTask, make_env
from stages.envs.spec import read_task_record
from stages.llm import BudgetLLMMixin, LLMMixin, LLMOptions
from stages.options import Options


# ---- the policy's engine -------------------------------------------------------------------------------------------
def engine_policy(stage: LLMMixin, stats: StageStats, shard: ShardInfo, request_prefix: str,
                  unit: str) -> tuple[Callable[..., Awaitable[list[str]]], list[BaseException]]:
    """(policy, fatal): `await policy(messages, n, temperature)` is the texts of n samples of the stage's engine
    (its system prompt in front; tokens counted in stats). An engine that fails as a whole (not one request) is
    appended to `fatal`, for the caller to raise (the shard fails; a rerun resumes); later calls raise "aborted"."""
    c = stage.config
    fatal: list[BaseException] = []
    ids = itertools.count()

    async def policy(messages: list[dict], n: int, temperature: float) -> list[str]:
        if fatal:
            raise RowError("aborted", f"the engine failed for another {unit} of this shard")
        msgs = [{"role": m["role"], "content": m["content"]} for m in messages]
        if c.system_prompt:
            msgs.insert(0, {"role": "system", "content": c.system_prompt})
        req = GenerationRequest(messages=msgs, sampling=stage.sampling_params(n=n, temperature=temperature),
                                request_id=f"{request_prefix}:{shard.shard_id}:{next(ids)}")
        try:
            (res,) = await stage._llm.agenerate([req], tag=stage.name, shard=shard.shard_id)
        except Exception as e:
            fatal.append(e)
            raise RowError("engine_failed", f"{type(e).__name__}: {e}") from e
        stats.prompt_tokens += res.prompt_tokens
        if not res.ok or not res.completions:
            raise RowError(res.error_reason or "no_completions", res.error_message or "")
        stats.completion_tokens += sum(x.completion_tokens for x in res.completions)
        return [x.text for x in res.completions]
    return policy, fatal


# ---- search --------------------------------------------------------------------------------------------------------
class MCTSConfig(LLMOptions):
    role: str = Field("policy", description="engine role of the policy model (a key of the recipe's `engines`)")
    template: Literal["react_agent"] = Field("react_agent", description="the opening's wording (the ReAct format, "
                                                                        "then the task instruction)")
    temperature: float = Field(1.0, ge=0, description="sampling temperature of expansions (Agent-R TEMP)")
    max_tokens: int = Field(128, ge=1, description="max new tokens of one policy turn")
    n: int = Field(1, ge=1, le=1, description="unused by the search (a request asks for `children` samples); "
                                              "keep 1")
    stop: list[str] = Field(default_factory=lambda: ["\nObservation:"],
                            description="stop strings of a turn (the model must not write the env's observation)")
    iterations: int = Field(8, ge=1, description="walks from the root per tree (Agent-R ITERA; spec default 8)")
    children: int = Field(4, ge=1, description="samples per expansion before de-duplication by action (N_GEN; "
                                               "spec default 4)")
    max_depth: int = Field(10, ge=0, description="a node deeper than this is terminal (MAX_DEPTH; spec default 10)")
    c: float = Field(0.25, ge=0, description="UCT exploration constant")
    seed: int = Field(0, description="seeds each tree's tie-breaking RNG (with the tree id)")
    leaf_value: Literal["return", "last_reward"] = Field("return", description="what a leaf backs up: its path's "
                                                                               "return, or the last reward")
    use_snapshots: bool = Field(True, description="restore parent snapshots where the env can (else replay)")
    check_replay: bool = Field(True, description="replays must reproduce the recorded observations")
    iteration: int = Field(0, ge=0, description="self-training round of the policy (recorded on every row; a "
                                                "later round reads the previous version's problems with a new "
                                                "policy model)")
    concurrency: int = Field(16, ge=1, description="trees searched at once per shard; their expansions share the "
                                                   "engine's batch")
    context_tokens: Optional[int] = Field(None, ge=1, description="prompt token budget for trimming; none = the "
                                                                  "engine's max_model_len minus max_tokens")
    tokenizer: Optional[str] = Field(None, description="tokenizer counting prompt tokens; none = the policy's "
                                                       "(fake engine: words)")

    def settings(self) -> MCTSSettings:
        return MCTSSettings(iterations=self.iterations, children=self.children, max_depth=self.max_depth,
                            c=self.c, temperature=self.temperature, seed=self.seed, leaf_value=self.leaf_value,
                            use_snapshots=self.use_snapshots, check_replay=self.check_replay)


def _spec_key(spec: dict) -> str:
    return json.dumps(spec, sort_keys=True, default=str)


class MCTSStage(BudgetLLMMixin, Stage):
    kind = "agent_r_mcts"
    description = "Agent-R tree search per env task with the policy model (trees and nodes as rows)"
    config_class = MCTSConfig
    reads = {"problems": ("problem_id", "env", "env_config_json")}
    writes = ("trees", "nodes")

    def __init__(self, *a: Any, **k: Any):
        super().__init__(*a, **k)
        self._init_llm()
        self._init_budget()

    def describe(self) -> dict[str, Any]:
        c = self.config
        return {**super().describe(), **self.llm_describe(), "search": c.settings().model_dump(),
                "iteration": c.iteration, "concurrency": c.concurrency, **self.budget_describe()}

    def tree_id(self, problem_id: str, task: EnvTask) -> str:
        """Stable over reruns; differs by model, sampling, search settings and round."""
        what = self.config.settings().model_dump(exclude={"use_snapshots", "check_replay"})
        return make_id("agent_r_tree", problem_id, task.task_id, self.generation_key(), self.config.iteration,
                       json.dumps(what, sort_keys=True), prefix="t-")

    def run(self, tables: dict[str, list[dict]], shard: ShardInfo = ShardInfo()) -> StageResult:
        stats, t0 = self._begin()
        rows = [p for p in tables.get("problems", []) if is_live(p)]
        stats.rows_in = len(rows)
        errors: list[dict] = []
        groups: dict[str, tuple[dict, list[tuple[dict, EnvTask]]]] = {}
        for p in rows:
            try:
                spec, task = read_task_record(p.get("env_config_json") or "")
            except (ValueError, TypeError, KeyError) as e:
                errors.append(self.error_record(p, "problems", Failed("not_an_env_task", f"env_config_json: {e}")))
                stats.error("not_an_env_task")
                continue
            groups.setdefault(_spec_key(spec), (spec, []))[1].append((p, task))
        results = asyncio.run(self._search(list(groups.values()), stats, shard)) if groups else []
        trees_out, nodes_out, trees = [], [], []
        for p, tree in results:
            trees.append(tree)
            if tree.error:
                reason = tree.error.split(":", 1)[0].strip() or "tree_failed"
                errors.append(self.error_record(p, "problems", Failed(
                    reason, tree.error, raw_input=p.get("env_config_json"),
                    raw_output=json.dumps(tree_summary(tree), default=str)[:200000])))
                stats.error(reason)
                continue
            trees_out.append({**tree_summary(tree), "problem_id": p["problem_id"], "model": self.model_label,
                              "sampling_json": self.sampling_json(), "drop_reason": None,
                              **self.lineage([p["problem_id"]])})
            for r in tree_rows(tree):
                nodes_out.append({**r, "problem_id": p["problem_id"],
                                  **self.lineage([r["parent_id"] or tree.tree_id])})
            stats.rows_out += 1
        for k, v in total_stats(trees).items():
            stats.count(k, int(v))
        stats.count("nodes", len(nodes_out))
        return StageResult({"trees": trees_out, "nodes": nodes_out}, errors, self._end(stats, t0))

    async def _search(self, groups, stats: StageStats, shard: ShardInfo) -> list[tuple[dict, Tree]]:
        c = self.config
        settings = c.settings()
        policy, fatal = engine_policy(self, stats, shard, "mcts", "tree")

        def trim(messages: list[dict]) -> list[dict]:
            ctx, dropped = trim_context(messages, self.count_prompt, self.budget)
            if dropped:
                stats.count("trimmed_prompts")
            if self.count_prompt(ctx) > self.budget:
                raise RowError("context_too_long",
                               f"{self.count_prompt(ctx)} tokens after trimming, budget {self.budget}")
            return ctx

        def parse(text: str) -> tuple[Optional[str], bool]:
            t = parse_react(text)
            return t.action, t.parse_ok

        def opening(task: EnvTask, obs: str) -> list[dict]:
            return initial_messages(task.instruction, obs)

        out: list[tuple[dict, Tree]] = []
        executor = cf.ThreadPoolExecutor(max_workers=c.concurrency, thread_name_prefix="mcts-env")
        try:
            async def one_group(spec: dict, jobs: list[tuple[dict, EnvTask]]) -> list[tuple[dict, Tree]]:
                by_task = {id(t): p for p, t in jobs}
                tasks = [t for _, t in jobs]
                trees = await search_many(
                    tasks, lambda: make_env(spec["kind"], dict(spec["config"]), spec["class"]), policy, parse,
                    settings, concurrency=c.concurrency, trim=trim, opening=opening, iteration=c.iteration,
                    executor=executor, tree_id=lambda t: self.tree_id(by_task[id(t)]["problem_id"], t))
                return [(by_task[id(t.task)], t) for t in trees]

            for res in await asyncio.gather(*(one_group(spec, jobs) for spec, jobs in groups)):
                out.extend(res)
        finally:
            executor.shutdown(wait=False)
        if fatal:
            raise fatal[0]
        return out


# ---- trees from rows -----------------------------------------------------------------------------------------------
def trees_from_tables(tables: dict[str, list[dict]]) -> dict[str, Tree]:
    """tree id -> Tree rebuilt from the `trees` and `nodes` rows (no env snapshots)."""
    nodes: dict[str, list[dict]] = defaultdict(list)
    for r in tables.get("nodes", []):
        nodes[r["tree_id"]].append(r)
    return {t["tree_id"]: tree_from_rows(nodes[t["tree_id"]], summary=t)
            for t in tables.get("trees", []) if nodes.get(t["tree_id"])}


def pair_from_row(tree: Tree, row: dict) -> Pair:
    good, bad = tree.node(row["good_leaf_id"]), tree.node(row["bad_leaf_id"])
    return Pair(tree.tree_id, good, bad, float(row["good_leaf_value"]), float(row["bad_leaf_value"]),
                tree.node(row["divergence_node_id"]), tree.node(row["good_child_id"]), tree.node(row["bad_child_id"]))


# ---- pairs ---------------------------------------------------------------------------------------------------------
class PairsConfig(Options):
    alpha: float = Field(DEFAULT_ALPHA, description="a good leaf's value/visits must be > alpha (float). Default "
                                                    "0.5: with rewards in [0, 1] the good leaf earned more than "
                                                    "half the task's reward (in success/failure envs: it solved "
                                                    "it); a lower bar puts half-failed episodes under loss")
    beta: float = Field(DEFAULT_BETA, ge=0, description="good minus bad value/visits must be > beta (float). "
                                                        "Default 0.3: the bad leaf is clearly worse (a third of "
                                                        "the reward scale), not score noise between near-equal "
                                                        "branches; with binary rewards any beta in [0, 1) is the "
                                                        "same")
    seed: int = Field(123, description="seeds each tree's pair shuffle (with the tree id); Agent-R uses 123")
    max_pairs_per_tree: Optional[int] = Field(None, ge=1, description="keep at most N pairs per tree after the "
                                                                      "shuffle (counted); none = all")
    good: bool = Field(True, description="also emit leaves with value > alpha as good_leaf rows (Agent-R's good "
                                         "trajectories)")

    def settings(self) -> PairSettings:
        return PairSettings(alpha=self.alpha, beta=self.beta, seed=self.seed,
                            max_pairs_per_tree=self.max_pairs_per_tree)


class PairsStage(ExpandStage):
    kind = "agent_r_pairs"
    description = "Agent-R leaf pairs (good > alpha, gap > beta) with their divergence, and good leaves"
    config_class = PairsConfig
    source, target = "trees", "pairs"
    reads = {"trees": ("tree_id", "root_value", "settings_json"), "nodes": ("tree_id", "node_id", "parent_id")}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), **self.config.model_dump()}

    def expand(self, rows, tables, stats: StageStats, shard: ShardInfo):
        trees = trees_from_tables({"trees": rows, "nodes": tables.get("nodes", [])})
        s = self.config.settings()
        out = []
        for t in rows:
            tree = trees.get(t["tree_id"])
            if tree is None:
                out.append(Failed("no_nodes", "the tree has no node rows"))
                continue
            tp = make_pairs(tree, s)
            for k, v in tp.counts.items():
                stats.count(k, v)
            base = {"tree_id": tree.tree_id, "problem_id": t["problem_id"], "task_id": tree.task.task_id,
                    "env": tree.env_name, "iteration": tree.iteration, "alpha": float(s.alpha),
                    "judgement_ids": [], "drop_reason": None}
            res = [dict(base, **_pair_fields(p), beta=float(s.beta), kind="pair",
                        **self.lineage([p.good.node_id, p.bad.node_id])) for p in tp.pairs]
            if self.config.good and tp.skipped != "tree_error":
                for leaf in good_leaves(tree, s.alpha):
                    res.append(dict(base, pair_id=make_id(tree.tree_id, leaf.node_id, "good", prefix="g-"),
                                    kind="good_leaf", good_leaf_id=leaf.node_id,
                                    good_leaf_value=float(leaf.value) / leaf.visits, **self.lineage([leaf.node_id])))
                    stats.count("good_leaves")
            out.append(res)
        return out


def _pair_fields(p: Pair) -> dict[str, Any]:
    return {"pair_id": p.pair_id, "good_leaf_id": p.good.node_id, "good_leaf_value": float(p.good_value),
            "bad_leaf_id": p.bad.node_id, "bad_leaf_value": float(p.bad_value), "value_gap": float(p.gap),
            "divergence_node_id": p.divergence.node_id, "divergence_depth": p.divergence.depth,
            "good_child_id": p.good_child.node_id, "bad_child_id": p.bad_child.node_id}


# ---- judge ---------------------------------------------------------------------------------------------------------
ENV_NAMES = {"craft": "a text-based crafting game", "twx": "a text-based game (TextWorldExpress)"}


class JudgeConfig(LLMOptions):
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


class JudgeStage(LLMMixin, MapStage):
    kind = "agent_r_judge"
    description = "the policy judges each pair's bad path step by step; stop at the first Bad"
    config_class = JudgeConfig
    table = "pairs"
    reads = {"pairs": ("pair_id", "kind", "tree_id", "good_leaf_id", "bad_leaf_id", "divergence_node_id"),
             "trees": ("tree_id",), "nodes": ("tree_id", "node_id")}
    writes = ("pairs", "judgements")

    def __init__(self, *a: Any, **k: Any):
        super().__init__(*a, **k)
        self._init_llm()
        # judgements made per shard, keyed by shard id: shards of one stage object may run in parallel threads
        self._judgements: dict[int, list[dict]] = {}

    def describe(self) -> dict[str, Any]:
        c = self.config
        return {**super().describe(), **self.llm_describe(), "on_unparsed": c.on_unparsed,
                "environment": c.environment or "from the env", "max_history_steps": c.max_history_steps}

    def run(self, tables, shard: ShardInfo = ShardInfo()) -> StageResult:
        self._judgements[shard.shard_id] = []
        try:
            res = super().run(tables, shard)
            res.tables["judgements"] = self._judgements[shard.shard_id]
        finally:
            self._judgements.pop(shard.shard_id, None)
        return res

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
                                   max_history_steps=c.max_history_steps)
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
        made = self._judgements[shard.shard_id]
        for tid, judge in judges.items():
            for k, v in judge.stats.items():
                stats.count(k, v)
            for j in judge.judged():
                jid = self.judgement_id(j)
                if jid not in seen:
                    seen.add(jid)
                    made.append(self.judgement_row(j, jid, problem_of.get(tid) or "", judge))
        stats.count("judgements", len(made))
        return results

    def judgement_id(self, j: Judgement) -> str:
        return make_id(j.node_id, self.generation_key(), self.config.environment or "", prefix="j-")

    def judgement_row(self, j: Judgement, jid: str, problem_id: str, judge: StepJudge) -> dict:
        return {"judgement_id": jid, "target_table": "nodes", "target_id": j.node_id, "problem_id": problem_id,
                "judge_model": self.model_label, "judge_role": "self", "prompt_template": judge.template,
                "verdict": j.verdict, "first_error_step": j.depth if j.verdict == "bad" else None,
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
    description = "splice each judged pair into a revision trajectory; good leaves as good trajectories"
    config_class = SpliceConfig
    source, target = "pairs", "revisions"
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
        key = _spec_key(spec)
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
                "iteration": tree.iteration, "tree_id": tree.tree_id, "final_answer": None, "drop_reason": None}
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
