"""Agent-R's stages (method `agent_r`, docs/methods/agent_r.md): search -> pairs -> judge -> splice. Search and pairs are
here; judge and splice, which turn a failed path into its revision, are in pipelines/methods/agent_r/revision_stages.py.

- `mcts` (MCTSStage, problems -> trees, nodes): one tree per env task, searched by the policy model
  (pipelines/methods/agent_r/mcts.py). Every tree of the shard is a coroutine of one asyncio loop (up to `concurrency` at
  once), so expansions of different trees batch in the shared engine; an expansion asks for `children` samples
  of one prompt in one request, so siblings share the prompt's KV cache (prefix caching; its hit rate is in the
  manifest's engine description). Context is trimmed as in the rollouts (oldest turns after the opening first).
  A tree whose search failed (env setup/reset) is an `errors` row. An engine that fails as a whole fails the shard.
- `pairs` (PairsStage, trees + nodes -> pairs): leaf pairs with good > alpha and gap > beta (floats), shuffled
  with a seed; trees whose root value is 0 give none (counted: `skipped_root_value_zero`). Leaves with value >
  alpha also become `good_leaf` rows (Agent-R's good data).
- `judge`, `splice`: pipelines/methods/agent_r/revision_stages.py.
"""
from __future__ import annotations

import asyncio
import concurrent.futures as cf
import itertools
import json
from collections import defaultdict
from typing import Any, Awaitable, Callable, Literal, Optional

from pydantic import Field

from pipelines.methods.agent_r.rows import JUDGE_COLUMNS, NodeRow, PairRow, TreeRow
from schemas.errors import RowError
from schemas.rows import make_id
from pipelines.methods.agent_r.mcts import MCTSSettings, search_many
from pipelines.methods.agent_r.tree import Tree, total_stats, tree_from_rows, tree_rows, tree_summary
from pipelines.methods.agent_r.pairs import DEFAULT_ALPHA, DEFAULT_BETA, Pair, PairSettings, good_leaves, make_pairs
from stages.agents.react import ReactTurnFormat, initial_messages, trim_context
from stages.base import ExpandStage, Failed, ShardInfo, StageStats, columns_except
from stages.engines.base import Constraint, GenerationRequest
from stages.envs import EnvTask, make_env
from stages.envs.spec import read_task_record
from stages.llm import BudgetLLMMixin, ConstrainedOptions, LLMMixin, LLMOptions
from stages.options import Options


# ---- the policy's engine -------------------------------------------------------------------------------------------
def engine_policy(stage: LLMMixin, stats: StageStats, shard: ShardInfo, request_prefix: str,
                  unit: str) -> tuple[Callable[..., Awaitable[list[str]]], list[BaseException]]:
    """(policy, fatal): `await policy(messages, n, temperature, constraint=None)` is the texts of n samples of the
    stage's engine (its system prompt in front; tokens counted in stats; a constraint holds them to a format). An engine that fails as a whole (not one request) is
    appended to `fatal`, for the caller to raise (the shard fails; a rerun resumes); later calls raise "aborted"."""
    c = stage.config
    fatal: list[BaseException] = []
    ids = itertools.count()

    async def policy(messages: list[dict], n: int, temperature: float,
                     constraint: Optional[Constraint] = None) -> list[str]:
        if fatal:
            raise RowError("aborted", f"the engine failed for another {unit} of this shard")
        msgs = [{"role": m["role"], "content": m["content"]} for m in messages]
        if c.system_prompt:
            msgs.insert(0, {"role": "system", "content": c.system_prompt})
        req = GenerationRequest(messages=msgs, sampling=stage.sampling_params(n=n, temperature=temperature,
                                                                               constraint=constraint),
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
class MCTSConfig(ConstrainedOptions):
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


def env_spec_key(spec: dict) -> str:
    return json.dumps(spec, sort_keys=True, default=str)


class MCTSStage(BudgetLLMMixin, ExpandStage):
    """problems -> trees (one per env task); each tree's nodes go to `nodes` (emitted)."""
    kind = "agent_r_mcts"
    fills = {"trees": columns_except(TreeRow), "nodes": columns_except(NodeRow)}
    description = "Agent-R tree search per env task with the policy model (trees and nodes as rows)"
    config_class = MCTSConfig
    source = "problems"
    target = "trees"
    output_format = ReactTurnFormat()
    reads = {"problems": ("problem_id", "env", "env_config_json")}
    writes = ("trees", "nodes")


    def describe(self) -> dict[str, Any]:
        c = self.config
        return {**super().describe(), "search": c.settings().model_dump(),
                "iteration": c.iteration, "concurrency": c.concurrency}

    def tree_id(self, problem_id: str, task: EnvTask) -> str:
        """Stable over reruns; differs by model, sampling, search settings and round."""
        what = self.config.settings().model_dump(exclude={"use_snapshots", "check_replay"})
        return make_id("agent_r_tree", problem_id, task.task_id, self.generation_key(), self.config.iteration,
                       json.dumps(what, sort_keys=True), prefix="t-")

    def expand(self, rows, tables, stats, shard):
        out: dict[int, Failed | list[dict]] = {}
        groups: dict[str, tuple[dict, list[tuple[dict, EnvTask]]]] = {}
        for k, p in enumerate(rows):
            try:
                spec, task = read_task_record(p.get("env_config_json") or "")
            except (ValueError, TypeError, KeyError) as e:
                out[k] = Failed("not_an_env_task", f"env_config_json: {e}")
                continue
            groups.setdefault(env_spec_key(spec), (spec, []))[1].append((p, task))
        results = asyncio.run(self._search(list(groups.values()), stats, shard)) if groups else []
        index = {id(p): k for k, p in enumerate(rows)}
        trees, nodes = [], []
        for p, tree in results:
            trees.append(tree)
            if tree.error:
                reason = tree.error.split(":", 1)[0].strip() or "tree_failed"
                out[index[id(p)]] = Failed(reason, tree.error, raw_input=p.get("env_config_json"),
                                           raw_output=json.dumps(tree_summary(tree), default=str)[:200000])
                continue
            out[index[id(p)]] = [{**tree_summary(tree), "problem_id": p["problem_id"], "model": self.model_label,
                                  "sampling_json": self.sampling_json(), "drop_reason": None,
                                  **self.lineage([p["problem_id"]])}]
            for r in tree_rows(tree):
                nodes.append({**r, "problem_id": p["problem_id"], **self.lineage([r["parent_id"] or tree.tree_id])})
        totals = total_stats(trees)
        for k, v in totals.items():
            stats.count(k, int(v))
        stats.count("parsed", int(totals.get("policy_samples", 0)))
        stats.count("parse_ok", int(totals.get("policy_samples", 0) - totals.get("unparsed_samples", 0)))
        stats.count("nodes", len(nodes))
        self.emit("nodes", nodes)
        return [out[k] for k in range(len(rows))]

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
            t = self.output_format.parse(text)
            return t.action, t.parse_ok

        turn_constraint = ((lambda pattern: self.output_format.constraint(action_pattern=pattern,
                                                                          max_tokens=c.max_tokens))
                           if self.constrained else None)

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
                    executor=executor, tree_id=lambda t: self.tree_id(by_task[id(t)]["problem_id"], t),
                    turn_constraint=turn_constraint)
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
    fills = {"pairs": columns_except(PairRow, *JUDGE_COLUMNS)}
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
