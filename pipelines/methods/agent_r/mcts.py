"""Agent-R's Monte Carlo tree search, one tree per task, written as coroutines so many trees share one engine.

    tree = await search_tree(task, env, policy, parse_action, MCTSSettings())
    trees = await search_many(tasks, env_factory, policy, parse_action, settings, concurrency=16)
    rows = tree_rows(tree)      # (pipelines/methods/agent_r/tree.py) the `nodes` table; tree_from_rows(rows) rebuilds it

`policy(messages, n, temperature) -> list[str]` asks for n samples of one prompt in one request.
`parse_action(text) -> (action, parse_ok)` reads the action out of a policy turn.

The search (as Agent-R's published search):
- Each iteration walks from the root and **expands every node it visits**: one policy call of `children` samples
  at `temperature`, de-duplicated by the action sent to the env (the first sample of an action is kept, the rest
  are counted on it as `duplicates`). Text with no parseable action is kept as a child with parse_ok False, and
  the env gets `unparsed_action` (it answers with its own "invalid action" observation), so all unparseable
  samples of one expansion collapse into one child.
- Each child's action is executed from its parent's state: `restore(parent snapshot)` where the env can
  snapshot, else reset + replay of the parent's actions (checked against the recorded observations when
  `check_replay`: a mismatch makes the child an env error, never a silently wrong tree).
- Selection: unvisited children first, then UCT = value/visits + c·sqrt(ln N_parent / n); ties are broken by
  the tree's own seeded RNG (seed, tree id), so a tree is the same whatever other trees run beside it.
  Terminal children are skipped; a node with no live child is terminal ("exhausted") and so, upwards, is every
  ancestor all of whose children are terminal.
- A child is terminal when the env says done, when its depth > max_depth (as Agent-R: a path holds at most
  max_depth + 1 actions), or when the step's reward is negative: a "disaster", whose reward counts as 0.
- Backup: when a terminal child is made, its leaf value goes to every node on its path to the root
  (visits + 1, value += leaf value). A leaf is backed up exactly once, so a leaf's value/visits is its own leaf
  value. `leaf_value="return"` (default) is the sum of the path's step rewards (the env's score for envs whose
  reward is a score change, as TWX; the same as the last reward for envs that pay only at the end, as craft);
  `"last_reward"` is Agent-R's env_score (the terminal step's reward). A disaster's leaf value is 0.
- Failures never end other trees: an EnvFailure while executing a child makes that child an error node
  (terminal, not backed up, never paired); a failing policy call or trim makes the node being expanded an error
  node; a failing reset, or anything unexpected, sets `tree.error` and keeps what was searched.

Everything is counted in `tree.stats` (expansions, policy calls and samples, duplicates, unparsed samples, env
resets/steps/restores/snapshots, replay steps, errors by kind, disasters, depth limits, terminal leaves).
"""
from __future__ import annotations

import asyncio
import concurrent.futures as cf
import functools
import json
import math
import random
from collections import Counter
from typing import Any, Awaitable, Callable, Literal, Optional, Sequence

from pydantic import BaseModel, ConfigDict, Field

from schemas.rows import make_id
from pipelines.methods.agent_r.tree import Node, Tree, node_id_for, path_messages
from stages.envs.base import Env, EnvFailure, EnvTask

Policy = Callable[..., Awaitable[list[str]]]    # (messages, n, temperature, constraint=None) -> n texts
TurnConstraint = Callable[[Optional[str]], Any]  # the env's action pattern at a node -> the turn's constraint
ParseAction = Callable[[str], tuple[Optional[str], bool]]
Trim = Callable[[list[dict]], list[dict]]
Opening = Callable[[EnvTask, str], list[dict]]

# What the env gets when a sample has no parseable action: no env accepts it, so it answers "invalid action".
INVALID_ACTION = "(no parseable action)"
OK = "OK"


class MCTSSettings(BaseModel):
    """Agent-R's tree search; defaults as Agent-R's (8 iterations, 4 children, depth 10)."""
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    iterations: int = Field(8, ge=1, description="walks from the root per tree (Agent-R ITERA)")
    children: int = Field(4, ge=1, description="samples asked of the policy per expansion, before de-duplication "
                                                "by action (Agent-R N_GEN)")
    max_depth: int = Field(10, ge=0, description="a node deeper than this is terminal (Agent-R MAX_DEPTH)")
    c: float = Field(0.25, ge=0.0, description="UCT exploration constant: value/visits + c*sqrt(ln N / n)")
    temperature: float = Field(1.0, ge=0.0, description="policy sampling temperature for expansions (Agent-R TEMP)")
    seed: int = Field(0, description="seeds each tree's tie-breaking RNG (with the tree id)")
    leaf_value: Literal["return", "last_reward"] = Field(
        "return", description="what a terminal leaf backs up: the sum of its path's step rewards, or only the "
                              "terminal step's reward (Agent-R's env_score); a disaster backs up 0")
    use_snapshots: bool = Field(True, description="restore a parent's snapshot where the env can; False replays "
                                                  "the parent's actions from reset even then")
    check_replay: bool = Field(True, description="when replaying, compare each observation with the recorded one; "
                                                 "a mismatch makes the child an env error (replay_mismatch)")
    unparsed_action: str = Field(INVALID_ACTION, description="what the env gets for a sample with no parseable "
                                                             "action")


# settings that change how a tree is computed but not what it holds: left out of the tree id
_HOW_NOT_WHAT = ("use_snapshots", "check_replay")


def default_tree_id(task: EnvTask, env_name: str, iteration: int, settings: MCTSSettings) -> str:
    what = settings.model_dump(exclude=set(_HOW_NOT_WHAT))
    return make_id("agent_r_tree", env_name, task.task_id, task.seed, task.split, iteration,
                   json.dumps(what, sort_keys=True), prefix="t-")


def default_opening(task: EnvTask, first_observation: str) -> list[dict]:
    """Agent-R's opening: the instruction (user), "OK" (assistant, no loss), the first observation (user)."""
    return [{"role": "user", "content": task.instruction, "loss": False},
            {"role": "assistant", "content": OK, "loss": False},
            {"role": "user", "content": first_observation, "loss": False}]


def uct(parent: Node, child: Node, c: float) -> float:
    """value/visits + c*sqrt(ln N_parent / n) for a visited child (the exploration term is 0 while N_parent is 0)."""
    explore = math.sqrt(math.log(parent.visits) / child.visits) if parent.visits > 0 else 0.0
    return child.value / child.visits + c * explore


def select_child(node: Node, c: float, rng: random.Random, stats: Optional[Counter] = None) -> Optional[Node]:
    """The child to walk into: terminal children skipped, unvisited ones first, then the highest UCT; ties are
    broken by `rng` (drawn from only when there is a tie). None when every child is terminal."""
    best: list[Node] = []
    best_score = -math.inf
    for ch in node.children:
        if ch.terminal:
            continue
        score = math.inf if ch.visits == 0 else uct(node, ch, c)
        if score > best_score:
            best, best_score = [ch], score
        elif score == best_score:
            best.append(ch)
    if not best:
        return None
    if len(best) == 1:
        return best[0]
    if stats is not None:
        stats["ties"] += 1
    return rng.choice(best)


def _short(e: BaseException) -> str:
    return str(e) if isinstance(e, EnvFailure) else f"{type(e).__name__}: {e}"


class _Search:
    """The state of one tree's search (kept off the Tree so a Tree stays plain data)."""

    def __init__(self, tree: Tree, env: Env, policy: Policy, parse_action: ParseAction, settings: MCTSSettings,
                 trim: Optional[Trim], opening: Optional[Opening], executor: Optional[cf.Executor],
                 turn_constraint: Optional[TurnConstraint] = None):
        self.tree, self.env, self.policy, self.parse_action = tree, env, policy, parse_action
        self.turn_constraint = turn_constraint
        self.s, self.trim, self.executor = settings, trim, executor
        self.opening = opening or default_opening
        self.stats = tree.stats
        self.rng = random.Random(f"{settings.seed}:{tree.tree_id}")
        self.snapshots = bool(settings.use_snapshots and getattr(env, "can_snapshot", False))
        self._at: Optional[Node] = None     # the node whose state the env is in now (None: unknown)

    async def call(self, fn, *args):
        if self.executor is None:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self.executor, functools.partial(fn, *args))

    # ---- env

    async def reset(self) -> tuple[str, dict]:
        self.stats["env_resets"] += 1
        self._at = None
        return await self.call(self.env.reset, self.tree.task)

    async def step(self, action: str) -> tuple[str, float, bool, dict]:
        self.stats["env_steps"] += 1
        self._at = None
        return await self.call(self.env.step, action)

    async def goto(self, node: Node) -> None:
        """Put the env in the state after `node`'s step (nothing to do when it is there already)."""
        if self._at is node:
            return
        self._at = None
        if self.snapshots:
            self.stats["env_restores"] += 1
            await self.call(self.env.restore, node.state)
            self._at = node
            return
        await self.reset()
        for n in node.lineage()[1:]:
            self.stats["replay_steps"] += 1
            obs, *_ = await self.step(n.executed_action)
            if self.s.check_replay and obs != n.observation:
                raise _ReplayMismatch(f"replaying depth {n.depth} ({n.executed_action!r}) gave a different "
                                      f"observation than recorded")
        self._at = node

    # ---- search

    async def run(self) -> None:
        tree, s = self.tree, self.s
        try:
            obs, _info = await self.reset()
            root = Node(node_id=node_id_for(tree.tree_id, ()), path=(), parent=None, depth=0, observation=obs)
            self._at = root
            if self.snapshots:
                self.stats["env_snapshots"] += 1
                root.state = await self.call(self.env.snapshot)
        except Exception as e:
            tree.error = f"env_reset: {_short(e)}"
            self.stats["tree_errors"] += 1
            return
        tree.root = root
        tree.nodes.append(root)
        tree.opening = [dict(m) for m in self.opening(tree.task, obs)]
        try:
            for _ in range(s.iterations):
                if root.terminal:
                    self.stats["stopped_early"] += 1
                    break
                self.stats["iterations"] += 1
                await self.walk(root)
        except Exception as e:                      # a bug or an unexpected failure: keep what was searched
            tree.error = f"search: {_short(e)}"
            self.stats["tree_errors"] += 1

    async def walk(self, node: Node) -> None:
        while not node.terminal:
            if not node.expanded:
                await self.expand(node)
                if node.terminal:
                    return
            child = self.select(node)
            if child is None:                       # every child is terminal
                self.set_terminal(node, "exhausted")
                self.propagate_terminal(node.parent)
                return
            node = child

    def select(self, node: Node) -> Optional[Node]:
        return select_child(node, self.s.c, self.rng, self.stats)

    async def expand(self, node: Node) -> None:
        tree, s = self.tree, self.s
        node.expanded = True
        self.stats["expansions"] += 1
        messages = path_messages(tree, node)
        try:
            prompt = self.trim(messages) if self.trim is not None else messages
        except Exception as e:
            self.fail(node, f"trim: {_short(e)}", "trim_errors")
            return
        self.stats["policy_calls"] += 1
        try:
            if self.turn_constraint is not None:     # the env's actions at this node hold the samples
                await self.goto(node)
                pattern = await self.call(self.env.action_pattern)
                texts = list(await self.policy(prompt, s.children, s.temperature,
                                               constraint=self.turn_constraint(pattern)))
            else:
                texts = list(await self.policy(prompt, s.children, s.temperature))
        except Exception as e:
            self.fail(node, f"policy: {_short(e)}", "policy_errors")
            return
        if not texts:
            self.fail(node, "policy: returned no samples", "policy_errors")
            return
        self.stats["policy_samples"] += len(texts)
        by_action: dict[str, Node] = {}
        for i, text in enumerate(texts):
            text = text if isinstance(text, str) else ""
            action, ok = self.parse_action(text)
            ok = bool(ok and action)
            if not ok:
                action = None
                self.stats["unparsed_samples"] += 1
            executed = action if ok else s.unparsed_action
            if executed in by_action:
                by_action[executed].duplicates += 1
                self.stats["duplicate_samples"] += 1
                continue
            path = node.path + (len(node.children),)
            child = Node(node_id=node_id_for(tree.tree_id, path), path=path, parent=node, depth=node.depth + 1,
                         raw_text=text, action=action, parse_ok=ok, executed_action=executed, sample_index=i)
            by_action[executed] = child
            node.children.append(child)
            tree.nodes.append(child)
            self.stats["children"] += 1
            await self.execute(node, child)
        for child in node.children:
            if child.terminal and child.error is None:
                self.backup(child)
        self.propagate_terminal(node)

    async def execute(self, parent: Node, child: Node) -> None:
        try:
            await self.goto(parent)
            obs, reward, done, info = await self.step(child.executed_action)
            self._at = child
            if self.snapshots:
                self.stats["env_snapshots"] += 1
                child.state = await self.call(self.env.snapshot)
        except _ReplayMismatch as e:
            child.error = f"replay_mismatch: {e}"
            self.set_terminal(child, "error")
            self.stats["replay_mismatches"] += 1
            return
        except EnvFailure as e:
            child.error = f"env_failure: {e}"
            self.set_terminal(child, "error")
            self.stats["env_errors"] += 1
            return
        info = info if isinstance(info, dict) else {}
        child.observation = obs if isinstance(obs, str) else str(obs)
        child.env_reward = float(reward)
        child.done = bool(done)
        child.invalid = bool(info.get("invalid", False))
        if "success" in info:
            child.success = bool(info["success"])
        if child.env_reward < 0:
            child.disaster = True
            child.reward = 0.0
            self.stats["disasters"] += 1
        else:
            child.reward = child.env_reward
        child.path_return = parent.path_return + child.reward
        if child.disaster:
            self.set_terminal(child, "disaster")
        elif child.done:
            self.set_terminal(child, "done")
        elif child.depth > self.s.max_depth:
            self.set_terminal(child, "max_depth")
            self.stats["depth_limits"] += 1

    def set_terminal(self, node: Node, reason: str) -> None:
        node.terminal = True
        node.terminal_reason = node.terminal_reason or reason

    def fail(self, node: Node, error: str, counter: str) -> None:
        node.error = error
        self.stats[counter] += 1
        self.set_terminal(node, "error")
        self.propagate_terminal(node.parent)

    def backup(self, leaf: Node) -> None:
        if leaf.disaster:
            v = 0.0
        elif self.s.leaf_value == "return":
            v = leaf.path_return
        else:
            v = leaf.reward
        leaf.leaf_value = v
        self.stats["terminal_leaves"] += 1
        n: Optional[Node] = leaf
        while n is not None:
            n.visits += 1
            n.value += v
            n = n.parent

    def propagate_terminal(self, node: Optional[Node]) -> None:
        """A node whose children are all terminal is terminal; so, upwards, are its ancestors."""
        while node is not None and node.children and all(ch.terminal for ch in node.children):
            if node.terminal:
                node = node.parent
                continue
            self.set_terminal(node, "exhausted")
            node = node.parent


class _ReplayMismatch(Exception):
    pass


async def search_tree(task: EnvTask, env: Env, policy: Policy, parse_action: ParseAction,
                      settings: Optional[MCTSSettings] = None, *, trim: Optional[Trim] = None,
                      opening: Optional[Opening] = None, iteration: int = 0, tree_id: Optional[str] = None,
                      executor: Optional[cf.Executor] = None, turn_constraint: Optional[TurnConstraint] = None) -> Tree:
    """Search one task's tree. Never raises for env or policy failures (see the module docstring).
    `env` must be set up; env calls run on the event loop unless an `executor` is given (use one for envs that
    block, such as a JVM). `opening(task, first_observation)` builds the conversation's start (default: Agent-R's
    instruction / "OK" / first observation); `trim(messages)` shortens a prompt before each policy call."""
    settings = settings or MCTSSettings()
    env_name = getattr(env, "name", type(env).__name__)
    tree = Tree(tree_id=tree_id or default_tree_id(task, env_name, iteration, settings), task=task,
                env_name=env_name, iteration=iteration, settings=settings.model_dump())
    await _Search(tree, env, policy, parse_action, settings, trim, opening, executor, turn_constraint).run()
    return tree


async def search_many(tasks: Sequence[EnvTask], env_factory: Callable[[], Env], policy: Policy,
                      parse_action: ParseAction, settings: Optional[MCTSSettings] = None, *, concurrency: int = 8,
                      trim: Optional[Trim] = None, opening: Optional[Opening] = None, iteration: int = 0,
                      executor: Optional[cf.Executor] = None,
                      on_tree: Optional[Callable[[Tree], None]] = None,
                      tree_id: Optional[Callable[[EnvTask], str]] = None,
                      turn_constraint: Optional[TurnConstraint] = None) -> list[Tree]:
    """Search every task's tree, `concurrency` trees at a time: each worker owns one env (made by `env_factory`,
    set up once, reused for its tasks, closed at the end), so the trees' policy calls interleave on the engine.
    Returns the trees in task order. A worker whose env cannot be made or set up gives the task it holds an error
    tree (`env_setup: ...`) and tries a fresh env for its next task. `on_tree` is called as each tree finishes.
    `tree_id(task)` names each tree (default: `default_tree_id`)."""
    settings = settings or MCTSSettings()
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    results: list[Optional[Tree]] = [None] * len(tasks)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(tasks)):
        queue.put_nowait(i)

    async def call(fn, *args):
        if executor is None:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(executor, functools.partial(fn, *args))

    async def worker() -> None:
        env: Optional[Env] = None
        try:
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                task = tasks[i]
                if env is None:
                    try:
                        env = env_factory()
                        await call(env.setup)
                    except Exception as e:
                        env = None
                        name = "env"
                        tid = tree_id(task) if tree_id else default_tree_id(task, name, iteration, settings)
                        tree = Tree(tree_id=tid, task=task,
                                    env_name=name, iteration=iteration, settings=settings.model_dump(),
                                    error=f"env_setup: {_short(e)}")
                        tree.stats["tree_errors"] += 1
                        results[i] = tree
                        if on_tree is not None:
                            on_tree(tree)
                        continue
                tree = await search_tree(task, env, policy, parse_action, settings, trim=trim, opening=opening,
                                         iteration=iteration, executor=executor,
                                         tree_id=tree_id(task) if tree_id else None,
                                         turn_constraint=turn_constraint)
                results[i] = tree
                if on_tree is not None:
                    on_tree(tree)
        finally:
            if env is not None:
                try:
                    await call(env.close)
                except Exception:
                    pass                            # closing is best effort; the trees are already made

    await asyncio.gather(*(worker() for _ in range(min(concurrency, max(len(tasks), 1)))))
    return [t for t in results if t is not None]

