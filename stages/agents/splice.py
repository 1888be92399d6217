"""Agent-R's revision trajectories (and its `good` trajectories) as rows of messages with loss flags.

    row = revision_row(tree, pair, walk, wait_reply="You wait. Nothing happens.")
    rows = good_rows(tree, alpha=0.5)

A revision row's messages, in order (D = divergence depth, E = the depth of the last bad step kept):
1. the opening (instruction, "OK", first observation): loss False;
2. the shared prefix, the steps at depths 1..D that both leaves share: assistant turns loss **False**. Both
   branches took them, so they are not what separates success from failure; the lesson is the bad branch's
   mistake, the signal that notices it, and the good continuation. Training on the prefix would also weight
   early steps by how many pairs share them (the root's first steps sit in nearly every pair of a tree);
3. the bad branch from the divergence child (depth D+1) through the judged first error (depth E, included
   verbatim), or through the bad leaf when nothing was judged Bad: assistant loss False (the model must not learn
   the mistake), observations as user turns, loss False;
4. one revision turn, "Thought: {signal}\\nAction: wait", loss **True**, then the env's reply to "wait" as a user
   turn, loss False (the caller passes that text in, e.g. from `mcts.env_reply`);
5. the good branch from the divergence child (depth D+1) to the good leaf: assistant loss **True**, observations
   loss False.
Known limit (METHODS.md §2f): the good branch's observations were produced from the divergence parent's state,
not from the state after the bad steps; the wait turn papers over that, which is faithful only where the bad
steps left the state the good branch needs (reversible actions, or mistakes that changed nothing).

A revision signal is drawn from all of `REVISION_SIGNALS` (our own wording) by an RNG seeded with (seed, tree,
good leaf, bad leaf); the text and its index are on the row. A `good` row is a whole leaf path with value >
alpha, loss True on every policy turn ("OK" stays False).

Every row has the same keys (`ROW_KEYS`), None where a field does not apply to its kind.
"""
from __future__ import annotations

import random

from schemas.rows import make_id
from stages.agents.judge import Walk
from stages.agents.mcts import Node, Tree
from stages.agents.pairs import DEFAULT_ALPHA, DEFAULT_BETA, Pair, good_leaves, leaf_value

# How the model says it has noticed a mistake and is about to change course. Written for errata; every one is
# used (the choice is over the whole tuple).
REVISION_SIGNALS: tuple[str, ...] = (
    "Looking back at my last few actions, they are not getting me closer to the goal. I should change course.",
    "I made a mistake somewhere in the steps above. Let me stop and reconsider what to do.",
    "This is not working. My recent actions were based on a wrong assumption, so I will try a different approach.",
    "The observations show that my plan went wrong. I need to step back and choose a better action.",
    "I have been heading in the wrong direction. Time to rethink my strategy before going further.",
    "My previous actions did not produce what I expected. I should revise my plan instead of continuing.",
    "Wait, that was an error on my part. Let me reconsider the task and pick a more suitable action.",
    "I notice my recent steps were not helpful for the task. I will correct my approach now.",
    "Something in my last actions was wrong. Before continuing, I should rethink what the task requires.",
    "Reviewing the feedback from the environment, I can see I took a wrong turn. Let me fix my plan.",
    "These actions are leading me away from the goal. I need a new approach.",
    "I went down the wrong path. Let me go back to what I know and plan the next step more carefully.",
    "The environment's responses tell me my strategy is flawed. I will revise it.",
    "I should not keep repeating this line of action; it is not working. Let me think again.",
    "That did not go as planned. I misjudged the situation and need to take a different action.",
    "On reflection, my last steps were a mistake. I will reconsider and proceed differently.",
    "I realize I misread what the task needs. Let me correct course.",
    "My approach so far has a problem. Instead of pushing on, I will reassess and change my plan.",
    "The result of my actions shows I chose poorly. Let me think about a better way to reach the goal.",
    "I am off track. I should pause, look at what went wrong, and try another way.",
    "My earlier reasoning led to an unhelpful action. I need to revise my thinking before acting again.",
    "These steps wasted effort without progress. I will rethink the plan and act more carefully.",
    "Let me reconsider: the path I took is not solving the task, so I will switch to a different strategy.",
    "I see now that my choice was wrong given what the environment told me. I will adjust my approach.",
    "Continuing like this will not complete the task. I need to correct my mistake and try again.",
    "Hold on, I overlooked something important. Let me revise my plan based on the observations so far.",
)

WAIT_ACTION = "wait"

ROW_KEYS = ("row_id", "kind", "tree_id", "task_id", "env", "iteration", "pair_id", "good_leaf_id", "bad_leaf_id",
            "good_leaf_value", "bad_leaf_value", "value_gap", "alpha", "beta", "divergence_node_id",
            "divergence_depth", "good_child_id", "bad_child_id", "judge_status", "judge_template",
            "first_error_depth", "bad_end_node_id", "bad_end_depth", "end_of_trajectory", "judgements",
            "revision_signal", "revision_signal_index", "wait_reply", "prefix_len", "revision_turn_index",
            "messages")


def choose_signal(key: str, seed: int = 0) -> tuple[int, str]:
    """(index, text): a revision signal drawn from the whole list by an RNG seeded with (seed, key)."""
    i = random.Random(f"{seed}:{key}").randrange(len(REVISION_SIGNALS))
    return i, REVISION_SIGNALS[i]


def revision_turn(signal: str) -> str:
    return f"Thought: {signal}\nAction: {WAIT_ACTION}"


def _msg(role: str, content: str, loss: bool) -> dict:
    return {"role": role, "content": content, "loss": bool(loss)}


def _turns(nodes: list[Node], loss: bool) -> list[dict]:
    out = []
    for n in nodes:
        out.append(_msg("assistant", n.raw_text, loss))
        out.append(_msg("user", n.observation, False))
    return out


def _opening(tree: Tree) -> list[dict]:
    return [_msg(m["role"], m["content"], False) for m in tree.opening]


def _row(tree: Tree, **fields) -> dict:
    row = dict.fromkeys(ROW_KEYS)
    row.update(tree_id=tree.tree_id, task_id=tree.task.task_id, env=tree.env_name, iteration=tree.iteration)
    row.update(fields)
    return row


def revision_row(tree: Tree, pair: Pair, walk: Walk, *, wait_reply: str, alpha: float = DEFAULT_ALPHA,
                 beta: float = DEFAULT_BETA, signal_seed: int = 0) -> dict:
    """The revision trajectory of one pair (see the module docstring). `walk` must be usable (a first error, or
    no error found); `alpha`/`beta` are recorded on the row for the checks."""
    if not walk.usable:
        raise ValueError(f"walk status {walk.status!r} gives no splice")
    end = walk.end
    bad_path = pair.bad.lineage()
    good_path = pair.good.lineage()
    d = pair.divergence.depth
    if bad_path[end.depth] is not end:
        raise ValueError("the walk's end is not on the pair's bad path")
    idx, signal = choose_signal(f"{tree.tree_id}:{pair.good.node_id}:{pair.bad.node_id}", signal_seed)
    messages = _opening(tree) + _turns(good_path[1:d + 1], False)
    prefix_len = len(messages)
    messages += _turns(bad_path[d + 1:end.depth + 1], False)
    revision_at = len(messages)
    messages += [_msg("assistant", revision_turn(signal), True), _msg("user", wait_reply, False)]
    messages += _turns(good_path[d + 1:], True)
    return _row(tree, row_id=make_id(tree.tree_id, pair.good.node_id, pair.bad.node_id, "revision", prefix="r-"),
                kind="revision", pair_id=pair.pair_id, good_leaf_id=pair.good.node_id, bad_leaf_id=pair.bad.node_id,
                good_leaf_value=float(pair.good_value), bad_leaf_value=float(pair.bad_value),
                value_gap=float(pair.gap), alpha=float(alpha), beta=float(beta),
                divergence_node_id=pair.divergence.node_id, divergence_depth=d,
                good_child_id=pair.good_child.node_id, bad_child_id=pair.bad_child.node_id,
                judge_status=walk.status, judge_template=walk.template, first_error_depth=walk.first_error_depth,
                bad_end_node_id=end.node_id, bad_end_depth=end.depth, end_of_trajectory=walk.end_of_trajectory,
                judgements=[j.as_row() for j in walk.judgements], revision_signal=signal,
                revision_signal_index=idx, wait_reply=wait_reply, prefix_len=prefix_len,
                revision_turn_index=revision_at, messages=messages)


def good_row(tree: Tree, leaf: Node, alpha: float = DEFAULT_ALPHA) -> dict:
    """A whole leaf path, loss on every policy turn."""
    messages = _opening(tree) + _turns(leaf.lineage()[1:], True)
    return _row(tree, row_id=make_id(tree.tree_id, leaf.node_id, "good", prefix="r-"), kind="good",
                good_leaf_id=leaf.node_id, good_leaf_value=leaf_value(leaf), alpha=float(alpha), judgements=[],
                messages=messages)


def good_rows(tree: Tree, alpha: float = DEFAULT_ALPHA) -> list[dict]:
    """Agent-R's `good` data: every leaf path with value/visits > alpha."""
    return [good_row(tree, leaf, alpha) for leaf in good_leaves(tree, alpha)]

