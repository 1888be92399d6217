"""Agent-R's search trees as objects and as data: Node, Tree, paths and their messages, and the `nodes` / `trees`
table rows (`tree_rows`, `tree_summary`; `tree_from_rows` rebuilds a Tree). The search itself is pipelines/methods/agent_r/mcts.py.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from schemas.rows import make_id
from stages.envs.base import EnvTask


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



def path_messages(tree: Tree, node: Node, loss: bool = False) -> list[dict]:
    """The conversation up to `node`: the opening, then per step the policy's text (assistant, `loss`) and the
    env's observation (user, no loss)."""
    msgs = [dict(m) for m in tree.opening]
    for n in node.lineage()[1:]:
        msgs.append({"role": "assistant", "content": n.raw_text, "loss": loss})
        msgs.append({"role": "user", "content": n.observation, "loss": False})
    return msgs



def total_stats(trees: Sequence[Tree]) -> Counter:
    """The trees' counters summed, plus `trees` and `trees_failed`."""
    out: Counter = Counter()
    for t in trees:
        out.update(t.stats)
    out["trees"] = len(trees)
    out["trees_failed"] = sum(1 for t in trees if t.error)
    return out



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
