"""Agent-R's Monte Carlo tree search, one tree per task, written as coroutines so many trees share one engine.

    tree = await search_tree(task, env, policy, parse_action, MCTSSettings())
    trees = await search_many(tasks, env_factory, policy, parse_action, settings, concurrency=16)
    rows = tree_rows(tree)                     # the `nodes` table; tree_from_rows(rows) rebuilds the tree

`policy(messages, n, temperature) -> list[str]` asks for n samples of one prompt in one request.
`parse_action(text) -> (action, parse_ok)` reads the action out of a policy turn.

The search (as Agent-R's `mcts_raw.py`, METHODS.md §2b):
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
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Literal, Optional, Sequence

from pydantic import BaseModel, ConfigDict, Field

from schemas.rows import make_id
from stages.envs.base import Env, EnvFailure, EnvTask

Policy = Callable[[list[dict], int, float], Awaitable[list[str]]]
ParseAction = Callable[[str], tuple[Optional[str], bool]]
Trim = Callable[[list[dict]], list[dict]]
Opening = Callable[[EnvTask, str], list[dict]]

# What the env gets when a sample has no parseable action: no env accepts it, so it answers "invalid action".
INVALID_ACTION = "(no parseable action)"
OK = "OK"


class MCTSSettings(BaseModel):
    """Agent-R's tree search; defaults as the spec (ITERA=8 as the maintainer recommends, N_GEN=4, MAX_DEPTH=10)."""
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


@dataclass(eq=False)
class Node:
    """One tree node: the policy turn that led here (raw text, parsed action) and the env's answer to it."""
    node_id: str
    path: tuple[int, ...]                 # child indices from the root; () is the root
    parent: Optional["Node"]
    depth: int
    raw_text: str = ""                    # the policy's text, as sampled ("" at the root)
    action: Optional[str] = None          # parsed action; None when parse_ok is False (and at the root)
    parse_ok: bool = True
    executed_action: Optional[str] = None  # what the env got (the action, or unparsed_action)
    sample_index: Optional[int] = None    # which of the expansion's samples this is
    duplicates: int = 0                   # later samples of the same action, folded into this node
    observation: str = ""                 # the env's answer (at the root: the first observation)
    env_reward: float = 0.0               # the step's reward as the env gave it
    reward: float = 0.0                   # the same, 0 for a disaster
    path_return: float = 0.0              # sum of `reward` from the root to here
    done: bool = False
    success: Optional[bool] = None        # info["success"] of a done step, where the env says
    invalid: bool = False                 # info["invalid"]: the env refused the action
    disaster: bool = False
    error: Optional[str] = None           # "env_failure: ...", "replay_mismatch: ...", "policy: ...", "trim: ..."
    terminal: bool = False
    terminal_reason: Optional[str] = None  # done | max_depth | disaster | exhausted | error
    leaf_value: Optional[float] = None    # what this node backed up (terminal, non-error leaves)
    visits: int = 0
    value: float = 0.0
    expanded: bool = False
    children: list["Node"] = field(default_factory=list)
    state: Any = field(default=None, repr=False)   # env snapshot after this node's step (snapshot envs only)

    def __repr__(self) -> str:                      # short: the default would walk parent and children
        return (f"Node({self.key or 'root'}, depth={self.depth}, action={self.action!r}, visits={self.visits}, "
                f"value={self.value:g}, terminal={self.terminal_reason if self.terminal else False})")

    @property
    def mean_value(self) -> float:
        return self.value / self.visits if self.visits else 0.0

    @property
    def is_leaf(self) -> bool:
        """A finished leaf: terminal with no children (error nodes included; see `usable_leaf`)."""
        return self.terminal and not self.children

    @property
    def usable_leaf(self) -> bool:
        """A leaf that backed up a value: what pairing and the good export use (not error leaves)."""
        return self.is_leaf and self.error is None and self.leaf_value is not None

    @property
    def key(self) -> str:
        return ".".join(str(i) for i in self.path)

    def lineage(self) -> list["Node"]:
        """The nodes from the root to this one, both included."""
        out, n = [], self
        while n is not None:
            out.append(n)
            n = n.parent
        return out[::-1]


@dataclass(eq=False)
class Tree:
    tree_id: str
    task: EnvTask
    env_name: str
    iteration: int = 0                    # self-training round of the policy that searched it
    settings: dict = field(default_factory=dict)
    opening: list[dict] = field(default_factory=list)   # the conversation before the first policy turn
    root: Optional[Node] = None
    nodes: list[Node] = field(default_factory=list)     # creation order; nodes[0] is the root
    stats: Counter = field(default_factory=Counter)
    error: Optional[str] = None

    def __repr__(self) -> str:
        return (f"Tree({self.tree_id}, task={self.task.task_id!r}, nodes={len(self.nodes)}, "
                f"error={self.error!r})")

    def node(self, node_id: str) -> Node:
        for n in self.nodes:
            if n.node_id == node_id:
                return n
        raise KeyError(node_id)

    def leaves(self) -> list[Node]:
        return [n for n in self.nodes if n.is_leaf]


def node_id_for(tree_id: str, path: Sequence[int]) -> str:
    return make_id(tree_id, ".".join(str(i) for i in path), prefix="n-")


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


def path_to(node: Node) -> list[Node]:
    """The nodes from the root to `node`, both included."""
    return node.lineage()


def path_messages(tree: Tree, node: Node, loss: bool = False) -> list[dict]:
    """The conversation up to `node`: the opening, then per step the policy's text (assistant, `loss`) and the
    env's observation (user, no loss)."""
    msgs = [dict(m) for m in tree.opening]
    for n in node.lineage()[1:]:
        msgs.append({"role": "assistant", "content": n.raw_text, "loss": loss})
        msgs.append({"role": "user", "content": n.observation, "loss": False})
    return msgs


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
                 trim: Optional[Trim], opening: Optional[Opening], executor: Optional[cf.Executor]):
        self.tree, self.env, self.policy, self.parse_action = tree, env, policy, parse_action
        self.s, self.trim, self.executor = settings, trim, executor
        self.opening = opening or default_opening
        self.stats = tree.stats
        self.rng = random.Random(f"{settings.seed}:{tree.tree_id}")
        self.snapshots = bool(settings.use_snapshots and getattr(env, "can_snapshot", False))

    async def call(self, fn, *args):
        if self.executor is None:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self.executor, functools.partial(fn, *args))

    # ---- env

    async def reset(self) -> tuple[str, dict]:
        self.stats["env_resets"] += 1
        return await self.call(self.env.reset, self.tree.task)

    async def step(self, action: str) -> tuple[str, float, bool, dict]:
        self.stats["env_steps"] += 1
        return await self.call(self.env.step, action)

    async def goto(self, node: Node) -> None:
        """Put the env in the state after `node`'s step."""
        if self.snapshots:
            self.stats["env_restores"] += 1
            await self.call(self.env.restore, node.state)
            return
        await self.reset()
        for n in node.lineage()[1:]:
            self.stats["replay_steps"] += 1
            obs, *_ = await self.step(n.executed_action)
            if self.s.check_replay and obs != n.observation:
                raise _ReplayMismatch(f"replaying depth {n.depth} ({n.executed_action!r}) gave a different "
                                      f"observation than recorded")

    # ---- search

    async def run(self) -> None:
        tree, s = self.tree, self.s
        try:
            obs, _info = await self.reset()
            root = Node(node_id=node_id_for(tree.tree_id, ()), path=(), parent=None, depth=0, observation=obs)
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
                      executor: Optional[cf.Executor] = None) -> Tree:
    """Search one task's tree. Never raises for env or policy failures (see the module docstring).
    `env` must be set up; env calls run on the event loop unless an `executor` is given (use one for envs that
    block, such as a JVM). `opening(task, first_observation)` builds the conversation's start (default: Agent-R's
    instruction / "OK" / first observation); `trim(messages)` shortens a prompt before each policy call."""
    settings = settings or MCTSSettings()
    env_name = getattr(env, "name", type(env).__name__)
    tree = Tree(tree_id=tree_id or default_tree_id(task, env_name, iteration, settings), task=task,
                env_name=env_name, iteration=iteration, settings=settings.model_dump())
    await _Search(tree, env, policy, parse_action, settings, trim, opening, executor).run()
    return tree


async def search_many(tasks: Sequence[EnvTask], env_factory: Callable[[], Env], policy: Policy,
                      parse_action: ParseAction, settings: Optional[MCTSSettings] = None, *, concurrency: int = 8,
                      trim: Optional[Trim] = None, opening: Optional[Opening] = None, iteration: int = 0,
                      executor: Optional[cf.Executor] = None,
                      on_tree: Optional[Callable[[Tree], None]] = None,
                      tree_id: Optional[Callable[[EnvTask], str]] = None) -> list[Tree]:
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
                                         tree_id=tree_id(task) if tree_id else None)
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


def total_stats(trees: Sequence[Tree]) -> Counter:
    """The trees' counters summed, plus `trees` and `trees_failed`."""
    out: Counter = Counter()
    for t in trees:
        out.update(t.stats)
    out["trees"] = len(trees)
    out["trees_failed"] = sum(1 for t in trees if t.error)
    return out


async def env_reply(env: Env, tree: Tree, node: Node, action: str, *,
                    executor: Optional[cf.Executor] = None) -> str:
    """The env's observation for `action` taken in the state after `node` (restore where the node kept a snapshot,
    else reset and replay its path). Used for the observation that answers a revision turn's `Action: wait`."""
    def run() -> str:
        if node.state is not None and getattr(env, "can_snapshot", False):
            env.restore(node.state)
        else:
            env.reset(tree.task)
            for n in node.lineage()[1:]:
                env.step(n.executed_action)
        obs, *_ = env.step(action)
        return obs
    if executor is None:
        return run()
    return await asyncio.get_running_loop().run_in_executor(executor, run)


# ---- trees as data

NODE_COLUMNS = ("tree_id", "task_id", "env", "iteration", "seq", "node_id", "node_path", "parent_id", "depth",
                "sample_index", "raw_text", "action", "parse_ok", "executed_action", "duplicates", "observation",
                "env_reward", "reward", "path_return", "done", "success", "invalid", "disaster", "error",
                "terminal", "terminal_reason", "leaf_value", "visits", "value", "mean_value", "expanded",
                "n_children", "opening_json")


def tree_rows(tree: Tree) -> list[dict]:
    """One row per node for the `nodes` table, `seq` numbering them in creation order. A node's turn is
    `raw_text` (assistant) and `observation` (user); the root's row carries the opening messages as
    `opening_json`, so `path_messages` can be rebuilt from rows alone (`tree_from_rows`)."""
    rows = []
    for seq, n in enumerate(tree.nodes):
        rows.append({
            "tree_id": tree.tree_id, "task_id": tree.task.task_id, "env": tree.env_name, "iteration": tree.iteration,
            "seq": seq, "node_id": n.node_id, "node_path": list(n.path),
            "parent_id": n.parent.node_id if n.parent is not None else None, "depth": n.depth,
            "sample_index": n.sample_index, "raw_text": n.raw_text, "action": n.action, "parse_ok": n.parse_ok,
            "executed_action": n.executed_action, "duplicates": n.duplicates, "observation": n.observation,
            "env_reward": n.env_reward, "reward": n.reward, "path_return": n.path_return, "done": n.done,
            "success": n.success, "invalid": n.invalid, "disaster": n.disaster, "error": n.error,
            "terminal": n.terminal, "terminal_reason": n.terminal_reason, "leaf_value": n.leaf_value,
            "visits": n.visits, "value": n.value, "mean_value": n.mean_value, "expanded": n.expanded,
            "n_children": len(n.children),
            "opening_json": json.dumps(tree.opening) if n.parent is None else None,
        })
    return rows


def tree_summary(tree: Tree) -> dict:
    """One row for a `trees` table."""
    root = tree.root
    return {"tree_id": tree.tree_id, "task_id": tree.task.task_id, "task_seed": tree.task.seed,
            "split": tree.task.split, "env": tree.env_name, "iteration": tree.iteration,
            "instruction": tree.task.instruction, "task_config_json": json.dumps(tree.task.config, sort_keys=True),
            "settings_json": json.dumps(tree.settings, sort_keys=True), "error": tree.error,
            "root_visits": root.visits if root else 0, "root_value": root.value if root else 0.0,
            "n_nodes": len(tree.nodes), "n_leaves": len(tree.leaves()),
            "stats_json": json.dumps(dict(tree.stats), sort_keys=True)}


def tree_from_rows(rows: Sequence[dict], task: Optional[EnvTask] = None, summary: Optional[dict] = None) -> Tree:
    """Rebuild a Tree (without env snapshots) from its `nodes` rows, as written by `tree_rows`. `summary` (a
    `tree_summary` row) restores the task, settings and error; else `task` or a bare EnvTask from the rows."""
    rows = sorted(rows, key=lambda r: r["seq"])                # creation order: a parent before its children
    if not rows:
        raise ValueError("no node rows")
    first = rows[0]
    if first["parent_id"] is not None:
        raise ValueError("the rows hold no root node")
    if summary is not None:
        task = EnvTask(task_id=summary["task_id"], seed=summary["task_seed"], split=summary["split"],
                       config=json.loads(summary["task_config_json"]), instruction=summary["instruction"])
    task = task or EnvTask(task_id=first["task_id"])
    tree = Tree(tree_id=first["tree_id"], task=task, env_name=first["env"], iteration=first["iteration"],
                settings=json.loads(summary["settings_json"]) if summary else {},
                opening=json.loads(first["opening_json"] or "[]"),
                error=summary["error"] if summary else None)
    if summary:
        tree.stats.update(json.loads(summary["stats_json"]))
    by_id: dict[str, Node] = {}
    fields = ("raw_text", "action", "parse_ok", "executed_action", "sample_index", "duplicates", "observation",
              "env_reward", "reward", "path_return", "done", "success", "invalid", "disaster", "error", "terminal",
              "terminal_reason", "leaf_value", "visits", "value", "expanded")
    for r in rows:
        parent = by_id[r["parent_id"]] if r["parent_id"] is not None else None
        n = Node(node_id=r["node_id"], path=tuple(r["node_path"]), parent=parent, depth=r["depth"],
                 **{k: r[k] for k in fields})
        by_id[n.node_id] = n
        if parent is not None:
            parent.children.append(n)
    for n in by_id.values():
        n.children.sort(key=lambda c: c.path)
    tree.root = by_id[first["node_id"]]
    tree.nodes = list(by_id.values())
    return tree
