"""Agent-R's revision trajectories (and its `good` trajectories) as rows of messages with loss flags.

    sp = splice(tree, pair, end=walk_end_node, signal=text, wait_reply="You wait. Nothing happens.")
    sp.messages, sp.segments, sp.prefix_len, sp.revision_turn_index
    gd = good_path(tree, leaf)

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
   turn, loss False (the caller passes that text in, e.g. the splice stage's `wait_reply`);
5. the good branch from the divergence child (depth D+1) to the good leaf: assistant loss **True**, observations
   loss False.
Known limit (docs/methods/agent_r.md): the good branch's observations were produced from the divergence parent's state,
not from the state after the bad steps; the wait turn papers over that, which is faithful only where the bad
steps left the state the good branch needs (reversible actions, or mistakes that changed nothing).

A revision signal is drawn from a configured list (default `REVISION_SIGNALS`, our own wording, 26 of them) by
an RNG seeded with (seed, pair id) over the whole list (Agent-R drew from only 10 of its 20); the text and its
index go on the row. A `good` trajectory is a whole leaf path with value > alpha, loss True on every policy
turn ("OK" stays False).

Each message also comes as a segment {text, author, loss}: the instruction and "OK" and the revision turn are
`template`, policy turns `model`, observations and the wait reply `env`.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

from pipelines.methods.agent_r.tree import Node, Tree
from pipelines.methods.agent_r.pairs import Pair

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
MIN_SIGNALS = 20


def choose_signal(key: str, seed: int = 0, signals: Sequence[str] = REVISION_SIGNALS) -> tuple[int, str]:
    """(index, text): a revision signal drawn from the whole list by an RNG seeded with (seed, key)."""
    i = random.Random(f"{seed}:{key}").randrange(len(signals))
    return i, signals[i]


def revision_turn(signal: str, wait_action: str = WAIT_ACTION) -> str:
    return f"Thought: {signal}\nAction: {wait_action}"


@dataclass
class Spliced:
    messages: list[dict]            # {role, content, loss}
    segments: list[dict]            # {text, author, loss}, one per message
    prefix_len: int                 # messages of the opening + the shared prefix
    revision_turn_index: int        # index of the revision turn in messages (None for good paths: -1)


def _add(sp: Spliced, role: str, content: str, loss: bool, author: str) -> None:
    sp.messages.append({"role": role, "content": content, "loss": bool(loss)})
    sp.segments.append({"text": content, "author": author, "loss": bool(loss)})


def _opening(sp: Spliced, tree: Tree) -> None:
    for k, m in enumerate(tree.opening):
        _add(sp, m["role"], m["content"], False, "env" if k == 2 else "template")


def _turns(sp: Spliced, nodes: Sequence[Node], loss: bool) -> None:
    for n in nodes:
        _add(sp, "assistant", n.raw_text, loss, "model")
        _add(sp, "user", n.observation, False, "env")


def splice(tree: Tree, pair: Pair, end: Node, signal: str, wait_reply: str,
           wait_action: str = WAIT_ACTION) -> Spliced:
    """The revision trajectory of `pair` whose bad path is kept through `end` (see the module docstring)."""
    bad_path, good_path = pair.bad.lineage(), pair.good.lineage()
    d = pair.divergence.depth
    if end.depth <= d or end.depth >= len(bad_path) or bad_path[end.depth] is not end:
        raise ValueError("the splice's end is not a bad step after the divergence on the pair's bad path")
    sp = Spliced([], [], 0, -1)
    _opening(sp, tree)
    _turns(sp, good_path[1:d + 1], False)
    sp.prefix_len = len(sp.messages)
    _turns(sp, bad_path[d + 1:end.depth + 1], False)
    sp.revision_turn_index = len(sp.messages)
    _add(sp, "assistant", revision_turn(signal, wait_action), True, "template")
    _add(sp, "user", wait_reply, False, "env")
    _turns(sp, good_path[d + 1:], True)
    return sp


def good_path(tree: Tree, leaf: Node) -> Spliced:
    """A whole leaf path, loss on every policy turn."""
    sp = Spliced([], [], 0, -1)
    _opening(sp, tree)
    sp.prefix_len = len(sp.messages)
    _turns(sp, leaf.lineage()[1:], True)
    return sp
