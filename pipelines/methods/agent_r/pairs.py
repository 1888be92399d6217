"""Agent-R's leaf pairs: (good, bad) leaves of one tree whose values differ enough, and where they diverge.

    result = make_pairs(tree, PairSettings())      # TreePairs: pairs, skip reason, counts
    for p in result.pairs: p.divergence, p.good_child, p.bad_child, p.good_value, p.bad_value

Leaves are the terminal, childless, non-error nodes that backed up a value (`Node.usable_leaf`), sorted by
value/visits, highest first. A leaf is backed up exactly once (its creation), so its value/visits is its own leaf
value: the episode's reward (see mcts.py `leaf_value`), a number in [0, 1] for our envs (craft pays 1 on success,
TWX's score runs 0..1).

A tree is skipped, with its reason counted, when the search failed (`tree_error`), when its root value is 0 (no
leaf earned anything: `root_value_zero`, Agent-R's `root.value <= 0`) or when it has fewer than two leaves.
Every unordered pair of leaves is a candidate, oriented so the higher value is "good" (a kept pair always has
good > bad, since the gap must exceed beta >= 0). A candidate is kept when gap > beta and good > alpha, both
compared as floats (Agent-R compared them with environment-variable strings); otherwise it is counted under
`gap_not_above_beta` or `good_not_above_alpha`. The kept pairs are shuffled with an RNG seeded by (seed, tree id)
and optionally capped per tree (`over_max_pairs_per_tree`).

Defaults (Agent-R publishes none):
- **alpha = 0.5**: a "good" leaf must have earned more than half of the task's reward. In success/failure envs
  (craft, TWX games that end in a win) that means it solved the task; in partial-credit envs (a TWX score, a
  ScienceWorld-style score scaled to [0, 1]) it means most of the task was done. A lower bar would put half-failed
  episodes in the loss-bearing good continuation (and in the `good` export), teaching their mistakes.
- **beta = 0.3**: the bad leaf must be clearly worse, by about a third of the reward scale, so the revision
  teaches a real mistake, not a missed optional subgoal or score noise between two nearly-equal branches. With
  binary rewards any beta in [0, 1) gives the same pairs (1 vs 0); with partial credit, a perfect good leaf pairs
  with bad leaves under 0.7, a 0.6 one only with bad leaves under 0.3.
Both assume values in [0, 1]; set them for envs on another scale.

The divergence of a pair is the deepest common ancestor of its two leaves (`divergence`, the "divergence parent"),
and the divergence children are its children on each leaf's path. Distinct leaves are never ancestors of one
another (leaves have no children), so both children exist and differ.
"""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field

from schemas.rows import make_id
from pipelines.methods.agent_r.tree import Node, Tree

DEFAULT_ALPHA = 0.5
DEFAULT_BETA = 0.3


class PairSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    alpha: float = Field(DEFAULT_ALPHA, description="a good leaf's value/visits must be > alpha (Agent-R ALPHA)")
    beta: float = Field(DEFAULT_BETA, ge=0.0, description="good minus bad value/visits must be > beta (Agent-R "
                                                          "BETA)")
    seed: int = Field(123, description="seeds each tree's pair shuffle (with the tree id); Agent-R shuffles with "
                                       "seed 123")
    max_pairs_per_tree: Optional[int] = Field(None, ge=1, description="keep at most this many pairs per tree "
                                                                      "after the shuffle; None keeps all")


def leaf_value(node: Node) -> float:
    """value/visits as a float (0 when unvisited)."""
    return float(node.value) / node.visits if node.visits else 0.0


def sorted_leaves(tree: Tree) -> list[Node]:
    """The usable leaves, highest value/visits first (ties in node-path order, so the order is stable)."""
    return sorted((n for n in tree.nodes if n.usable_leaf), key=lambda n: (-leaf_value(n), n.path))


def divergence(a: Node, b: Node) -> tuple[Node, Node, Node]:
    """(deepest common ancestor, its child towards a, its child towards b). a and b must be distinct leaves (or
    any two nodes neither of which is an ancestor of the other) of one tree."""
    pa, pb = a.lineage(), b.lineage()
    if pa[0] is not pb[0]:
        raise ValueError("the nodes are not in one tree")
    d = 0
    while d + 1 < len(pa) and d + 1 < len(pb) and pa[d + 1] is pb[d + 1]:
        d += 1
    if d + 1 >= len(pa) or d + 1 >= len(pb):
        raise ValueError("one node is an ancestor of the other: there is no divergence")
    return pa[d], pa[d + 1], pb[d + 1]


@dataclass(eq=False)
class Pair:
    tree_id: str
    good: Node
    bad: Node
    good_value: float
    bad_value: float
    divergence: Node                      # the divergence parent: deepest common ancestor
    good_child: Node                      # the divergence parent's child towards the good leaf
    bad_child: Node                       # ... towards the bad leaf

    @property
    def pair_id(self) -> str:
        return make_id(self.tree_id, self.good.node_id, self.bad.node_id, prefix="p-")

    @property
    def gap(self) -> float:
        return self.good_value - self.bad_value

    @property
    def divergence_depth(self) -> int:
        return self.divergence.depth

    def __repr__(self) -> str:
        return (f"Pair(good={self.good.key}:{self.good_value:g}, bad={self.bad.key}:{self.bad_value:g}, "
                f"divergence={self.divergence.key or 'root'})")


@dataclass
class TreePairs:
    tree_id: str
    pairs: list[Pair] = field(default_factory=list)
    skipped: Optional[str] = None         # why the whole tree gave no pairs before any pairing, else None
    counts: Counter = field(default_factory=Counter)


def make_pairs(tree: Tree, settings: Optional[PairSettings] = None) -> TreePairs:
    s = settings or PairSettings()
    alpha, beta = float(s.alpha), float(s.beta)
    out = TreePairs(tree_id=tree.tree_id)
    c = out.counts
    if tree.error is not None or tree.root is None:
        out.skipped = "tree_error"
    elif tree.root.value <= 0:
        out.skipped = "root_value_zero"
    if out.skipped:
        c[f"skipped_{out.skipped}"] += 1
        return out
    leaves = sorted_leaves(tree)
    c["leaves"] = len(leaves)
    c["error_leaves"] = sum(1 for n in tree.nodes if n.is_leaf and n.error is not None)
    if len(leaves) < 2:
        out.skipped = "fewer_than_two_leaves"
        c[f"skipped_{out.skipped}"] += 1
        return out
    values = [leaf_value(n) for n in leaves]
    kept: list[Pair] = []
    for i in range(len(leaves)):
        for j in range(i + 1, len(leaves)):
            c["candidates"] += 1
            gv, bv = values[i], values[j]          # sorted: gv >= bv
            if not gv - bv > beta:
                c["gap_not_above_beta"] += 1
            elif not gv > alpha:
                c["good_not_above_alpha"] += 1
            else:
                parent, gchild, bchild = divergence(leaves[i], leaves[j])
                kept.append(Pair(tree.tree_id, leaves[i], leaves[j], gv, bv, parent, gchild, bchild))
    random.Random(f"{s.seed}:{tree.tree_id}").shuffle(kept)
    if s.max_pairs_per_tree is not None and len(kept) > s.max_pairs_per_tree:
        c["over_max_pairs_per_tree"] += len(kept) - s.max_pairs_per_tree
        kept = kept[:s.max_pairs_per_tree]
    out.pairs = kept
    c["pairs"] = len(kept)
    return out


def good_leaves(tree: Tree, alpha: float = DEFAULT_ALPHA) -> list[Node]:
    """Leaves whose value/visits > alpha, highest first (Agent-R's `good` data)."""
    return [n for n in sorted_leaves(tree) if leaf_value(n) > float(alpha)]
