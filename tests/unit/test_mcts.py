"""Agent-R's tree search (pipelines/methods/agent_r/mcts.py) on a deterministic line world and scripted async policies."""
from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest
from pydantic import ValidationError

from agent_r_toys import (DriftingLineWorld, LineWorld, RandomWalker, Scripted, SnapLineWorld, line_task,
                          parse_action, turn)
from pipelines.methods.agent_r.mcts import INVALID_ACTION, MCTSSettings, search_many, search_tree, select_child, uct
from pipelines.methods.agent_r.tree import Node, path_messages, total_stats, tree_from_rows, tree_rows, tree_summary


def run(coro):
    return asyncio.run(coro)


def search(task, policy, env=None, **settings):
    env = env or SnapLineWorld()
    return run(search_tree(task, env, policy, parse_action, MCTSSettings(**settings)))


def subtree(node):
    out = [node]
    for ch in node.children:
        out += subtree(ch)
    return out


# ---- settings

def test_settings_defaults_are_the_spec():
    s = MCTSSettings()
    assert (s.iterations, s.children, s.max_depth, s.c, s.temperature) == (8, 4, 10, 0.25, 1.0)
    with pytest.raises(ValidationError):
        MCTSSettings(iteration=3)                      # a typo is an error, not a silent default
    for name, f in MCTSSettings.model_fields.items():
        assert f.description, name


def test_policy_gets_children_and_temperature_in_one_request():
    pol = Scripted({}, default=[turn("look")])
    search(line_task(), pol, iterations=1, max_depth=1)
    assert pol.calls and all(n == 4 and t == 1.0 for _, n, t in pol.calls)
    pol = Scripted({}, default=[turn("look")])
    search(line_task(), pol, iterations=1, max_depth=1, children=2, temperature=0.7)
    assert all(n == 2 and t == 0.7 for _, n, t in pol.calls)


# ---- snapshot vs replay

@pytest.mark.parametrize("k", range(4))
def test_snapshot_and_replay_give_identical_trees(k):
    task = line_task(k, goal=2 + k % 2, coin=[1], lava=[-1 - k % 2])
    policy = RandomWalker(seed=k)
    snap = search(task, policy, env=SnapLineWorld())
    replay = search(task, RandomWalker(seed=k), env=LineWorld())
    assert tree_rows(snap) == tree_rows(replay)
    assert len(snap.nodes) > 10
    # the snapshot run restored, the replay run reset and replayed; neither when the env was at the node already
    # (the first child of an expansion right after the root's reset or a step to its parent)
    assert 0 < snap.stats["env_restores"] < snap.stats["children"] and snap.stats["replay_steps"] == 0
    assert replay.stats["env_restores"] == 0 and replay.stats["replay_steps"] > 0
    assert replay.stats["env_resets"] < replay.stats["children"] + 1
    assert snap.stats["env_resets"] == 1


def test_use_snapshots_false_replays_even_on_a_snapshot_env():
    env = SnapLineWorld()
    t = search(line_task(), RandomWalker(), env=env, use_snapshots=False)
    assert env.restores == 0 and t.stats["replay_steps"] > 0
    assert tree_rows(t) == tree_rows(search(line_task(), RandomWalker()))


def test_replay_of_a_nondeterministic_env_is_an_error_not_a_wrong_tree():
    pol = Scripted({0: [turn("look")], 1: [turn("right"), turn("look")]})
    t = search(line_task(), pol, env=DriftingLineWorld(), iterations=2, max_depth=3)
    mism = [n for n in t.nodes if n.error and n.error.startswith("replay_mismatch")]
    assert mism and t.stats["replay_mismatches"] == len(mism)
    assert all(n.terminal and n.visits == 0 for n in mism)
    assert t.error is None


# ---- selection

def _kids(parent_visits, specs):
    root = Node(node_id="r", path=(), parent=None, depth=0, visits=parent_visits, expanded=True)
    for i, (visits, value, terminal) in enumerate(specs):
        root.children.append(Node(node_id=f"c{i}", path=(i,), parent=root, depth=1, visits=visits, value=value,
                                  terminal=terminal))
    return root


def test_uct_formula():
    root = _kids(10, [(4, 3.0, False)])
    import math
    assert uct(root, root.children[0], 0.25) == pytest.approx(0.75 + 0.25 * math.sqrt(math.log(10) / 4))


def test_unvisited_first_then_uct_and_terminal_skipped():
    rng = random.Random(0)
    root = _kids(10, [(5, 5.0, False), (0, 0.0, False), (5, 0.0, False)])
    assert select_child(root, 0.25, rng).node_id == "c1"          # unvisited beats a perfect mean
    root = _kids(10, [(5, 5.0, True), (3, 1.0, False), (2, 0.0, False)])
    assert select_child(root, 0.25, rng).node_id == "c1"          # c0 is better but terminal
    # a large c prefers the less visited child, a small c the better mean
    root = _kids(10, [(8, 4.0, False), (1, 0.0, False)])
    assert select_child(root, 0.25, rng).node_id == "c0"
    assert select_child(root, 5.0, rng).node_id == "c1"
    assert select_child(_kids(3, [(1, 1.0, True), (2, 0.0, True)]), 0.25, rng) is None


def test_ties_are_broken_by_the_seeded_rng_only_among_the_tied():
    def pick(seed):
        root = _kids(12, [(4, 2.0, False), (4, 2.0, False), (4, 1.0, False), (0, 0.0, True)])
        return select_child(root, 0.25, random.Random(seed)).node_id
    picks = [pick(s) for s in range(40)]
    assert set(picks) == {"c0", "c1"}                              # both tied children, never the worse one
    assert picks == [pick(s) for s in range(40)]                   # the same seed, the same choice
    stats = Counter()
    select_child(_kids(12, [(4, 2.0, False), (4, 1.0, False)]), 0.25, random.Random(0), stats)
    assert stats["ties"] == 0
    select_child(_kids(12, [(0, 0.0, False), (0, 0.0, False)]), 0.25, random.Random(0), stats)
    assert stats["ties"] == 1


def test_tree_seed_changes_tie_breaks_and_same_seed_repeats():
    task = line_task(0, goal=4, coin=[1, 2])
    trees = [search(task, RandomWalker(), seed=s) for s in range(6)]
    again = search(task, RandomWalker(), seed=0)
    assert tree_rows(again) == tree_rows(trees[0])
    assert trees[0].stats["ties"] > 0
    assert len({tuple(tuple(r["node_path"]) for r in tree_rows(t)) for t in trees}) > 1


# ---- terminal, disasters, backup

def test_all_children_terminal_makes_the_root_terminal_and_stops_early():
    task = line_task(goal=1, lava=[-1])
    pol = Scripted({0: [turn("right"), turn("left")]})
    t = search(task, pol)
    right, left = t.root.children
    assert (right.terminal_reason, right.reward, right.success) == ("done", 1.0, True)
    assert (left.terminal_reason, left.disaster, left.env_reward, left.reward, left.leaf_value) == \
        ("disaster", True, -1.0, 0.0, 0.0)
    assert t.root.terminal and t.root.terminal_reason == "exhausted"
    assert (t.root.visits, t.root.value) == (2, 1.0)
    assert t.stats["iterations"] == 1 and t.stats["stopped_early"] == 1 and t.stats["disasters"] == 1
    assert t.stats["expansions"] == 1 == len(pol.calls)


def test_terminal_propagates_up_through_ancestors():
    # depth 0: only "right" (to 1); depth 1: "right" reaches the goal at 2, "left" is lava at 0
    task = line_task(goal=2, lava=[0, -1])
    pol = Scripted({0: [turn("right")], 1: [turn("right"), turn("left")]})
    t = search(task, pol)
    (a,) = t.root.children
    assert a.terminal and a.terminal_reason == "exhausted" and t.root.terminal
    assert t.stats["iterations"] == 1 and t.stats["expansions"] == 2


def test_one_iteration_expands_every_node_on_its_walk():
    pol = Scripted({}, default=[turn("look")])
    t = search(line_task(), pol, iterations=1, max_depth=3)
    assert [n.depth for n in t.nodes] == [0, 1, 2, 3, 4]
    assert [n.expanded for n in t.nodes] == [True, True, True, True, False]
    assert t.stats["expansions"] == 4 == len(pol.calls) and [d for d, _, _ in pol.calls] == [0, 1, 2, 3]
    assert t.nodes[-1].terminal_reason == "max_depth" and t.root.visits == 1


def test_depth_limit():
    pol = Scripted({}, default=[turn("look"), turn("wait")])
    t = search(line_task(), pol, max_depth=2, iterations=20)
    depths = {n.depth for n in t.nodes}
    assert max(depths) == 3                                       # depth > max_depth is terminal
    deep = [n for n in t.nodes if n.depth == 3]
    assert deep and all(n.terminal_reason == "max_depth" and n.leaf_value == 0.0 for n in deep)
    assert t.stats["depth_limits"] == len(deep)
    assert t.root.terminal and t.stats["stopped_early"] == 1


@pytest.mark.parametrize("env_cls", [LineWorld, SnapLineWorld])
def test_backup_visits_and_values_are_sums_over_leaves(env_cls):
    t = search(line_task(3, goal=3, coin=[1, 2], lava=[-1]), RandomWalker(seed=3), env=env_cls(), iterations=12)
    assert t.stats["terminal_leaves"] > 5
    for n in t.nodes:
        leaves = [x for x in subtree(n) if x.usable_leaf]
        assert n.visits == len(leaves)
        assert n.value == pytest.approx(sum(x.leaf_value for x in leaves))
    for leaf in t.leaves():
        if leaf.usable_leaf:
            assert leaf.visits == 1 and leaf.mean_value == leaf.leaf_value
    # a node with children is terminal exactly when all of its children are
    for n in t.nodes:
        if n.children:
            assert n.terminal == all(ch.terminal for ch in n.children)


def test_leaf_value_return_vs_last_reward():
    task = line_task(goal=2, coin=[1])
    pol = Scripted({0: [turn("right")], 1: [turn("right")]})
    ret = search(task, pol)
    goal = ret.nodes[-1]
    assert goal.done and goal.path_return == 1.25 and goal.leaf_value == 1.25 and ret.root.value == 1.25
    last = search(task, Scripted({0: [turn("right")], 1: [turn("right")]}), leaf_value="last_reward")
    assert last.nodes[-1].leaf_value == 1.0 and last.root.value == 1.0


# ---- de-duplication, unparsed samples

def test_dedup_by_parsed_action_and_unparsed_samples_share_one_child():
    pol = Scripted({0: ["Thought: a\nAction: right", "Thought: b\nAction: right", turn("left"), "no idea",
                        "Action:"]})
    t = search(line_task(goal=5, lava=[-5]), pol, iterations=1, children=5, max_depth=0)
    kids = t.root.children
    assert [k.action for k in kids] == ["right", "left", None]
    right, left, unparsed = kids
    assert right.raw_text == "Thought: a\nAction: right" and right.duplicates == 1 and right.sample_index == 0
    assert unparsed.parse_ok is False and unparsed.raw_text == "no idea" and unparsed.duplicates == 1
    assert unparsed.executed_action == INVALID_ACTION and unparsed.invalid
    assert unparsed.sample_index == 3
    assert t.stats["duplicate_samples"] == 2 and t.stats["unparsed_samples"] == 2
    assert t.stats["policy_samples"] == 5 and t.stats["children"] == 3


# ---- failures

def test_env_failure_marks_the_child_and_the_search_goes_on():
    task = line_task(goal=-2, broken=[1], lava=[-9])
    pol = Scripted({0: [turn("right"), turn("left")], 1: [turn("left")]})
    for env in (LineWorld(), SnapLineWorld()):
        t = search(task, pol, env=env)
        right, left = t.root.children
        assert right.error.startswith("env_failure: env_crash") and right.terminal and right.visits == 0
        assert not right.usable_leaf
        assert left.children[0].done and t.root.value == 1.0 and t.error is None
        assert t.stats["env_errors"] == 1


def test_policy_failure_and_trim_failure_mark_the_node():
    class Flaky:
        def __init__(self):
            self.calls = 0

        async def __call__(self, messages, n, temperature):
            depth = (len(messages) - 3) // 2
            if depth == 1 and "You are at 1" in messages[-1]["content"]:
                raise RuntimeError("engine refused the request")
            return [turn("right"), turn("left")]
    t = search(line_task(goal=3, lava=[-2]), Flaky(), iterations=4)
    failed = [n for n in t.nodes if n.error]
    assert failed and all(n.error.startswith("policy: RuntimeError") and n.terminal for n in failed)
    assert t.stats["policy_errors"] == len(failed) and t.error is None
    assert any(n.usable_leaf for n in t.nodes)

    def trim(messages):
        if len(messages) > 5:
            raise ValueError("context too long")
        return messages
    t = run(search_tree(line_task(goal=9), SnapLineWorld(), RandomWalker(), parse_action, trim=trim))
    trimmed = [n for n in t.nodes if n.error and n.error.startswith("trim: ValueError")]
    assert trimmed and t.stats["trim_errors"] == len(trimmed)
    assert {n.depth for n in trimmed} == {2} and max(n.depth for n in t.nodes) == 2   # 3 + 2*2 messages > 5


def test_trim_shapes_the_prompt_but_not_the_stored_path():
    seen = []

    def trim(messages):
        seen.append(len(messages))
        return messages[:3] + messages[-2:] if len(messages) > 5 else messages
    pol = RandomWalker(choices=("look",))
    t = run(search_tree(line_task(), SnapLineWorld(), pol, parse_action, MCTSSettings(max_depth=4), trim=trim))
    assert max(len(p) for p in pol.prompts) == 5 and max(seen) > 5
    deepest = max(t.nodes, key=lambda n: n.depth)
    assert len(path_messages(t, deepest)) == 3 + 2 * deepest.depth


def test_reset_failure_is_a_tree_error():
    t = search(line_task(reset_fails=True), RandomWalker())
    assert t.error.startswith("env_reset: env_crash") and t.root is None and t.nodes == []


# ---- many trees

def test_many_trees_interleave_their_policy_calls():
    """The first `k` policy calls wait for one another: the search can only finish if k calls are in flight at
    once, which needs k trees expanding concurrently (no timing involved)."""
    k = 4

    class Gate(RandomWalker):
        def __init__(self):
            super().__init__()
            self.in_flight = self.max_in_flight = 0
            self.arrived = 0
            self.open = asyncio.Event()

        async def __call__(self, messages, n, temperature):
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.arrived += 1
            if self.arrived == k:
                self.open.set()
            if self.arrived <= k:
                await asyncio.wait_for(self.open.wait(), 60)     # fails loudly instead of hanging
            try:
                return await super().__call__(messages, n, temperature)
            finally:
                self.in_flight -= 1

    tasks = [line_task(i, goal=2 + i % 3, coin=[1]) for i in range(7)]
    gate = Gate()
    envs = []

    def factory():
        envs.append(SnapLineWorld())
        return envs[-1]
    trees = run(search_many(tasks, factory, gate, parse_action, MCTSSettings(), concurrency=k))
    assert gate.max_in_flight >= k
    assert [t.task.task_id for t in trees] == [t.task_id for t in tasks]
    assert len(envs) == k and all(e.setups == 1 and e.closed == 1 for e in envs)
    # the same trees as one at a time
    alone = [search(task, RandomWalker()) for task in tasks]
    assert [tree_rows(t) for t in trees] == [tree_rows(t) for t in alone]
    tot = total_stats(trees)
    assert tot["trees"] == 7 and tot["policy_calls"] == gate.calls == sum(t.stats["expansions"] for t in trees)


def test_a_failing_tree_or_env_setup_does_not_stop_the_others():
    tasks = [line_task(0), line_task(1, reset_fails=True), line_task(2), line_task(3)]
    made = []

    def factory():
        made.append(1)
        if len(made) == 1:
            raise RuntimeError("no JVM today")
        return LineWorld()
    done = []
    trees = run(search_many(tasks, factory, RandomWalker(), parse_action, MCTSSettings(iterations=2),
                            concurrency=2, on_tree=done.append))
    assert len(trees) == 4 and len(done) == 4
    errors = [t.error for t in trees]
    assert sum(1 for e in errors if e and e.startswith("env_setup: RuntimeError")) == 1
    assert sum(1 for e in errors if e and e.startswith("env_reset")) == 1
    assert sum(1 for t in trees if t.error is None and t.root.visits > 0) == 2
    assert total_stats(trees)["trees_failed"] == 2


# ---- trees as data

def test_rows_round_trip_and_stable_ids():
    t = search(line_task(2, coin=[1], goal=3), RandomWalker(seed=2))
    rows = tree_rows(t)
    assert len({r["node_id"] for r in rows}) == len(rows) == len(t.nodes)
    assert rows[0]["parent_id"] is None and rows[0]["opening_json"]
    by_id = {r["node_id"]: r for r in rows}
    for r in rows[1:]:
        assert by_id[r["parent_id"]]["depth"] == r["depth"] - 1
    again = search(line_task(2, coin=[1], goal=3), RandomWalker(seed=2))
    assert [r["node_id"] for r in tree_rows(again)] == [r["node_id"] for r in rows]
    other = search(line_task(2, coin=[1], goal=3), RandomWalker(seed=2), iterations=7)
    assert other.tree_id != t.tree_id                              # other settings, other tree
    back = tree_from_rows(list(reversed(rows)), summary=tree_summary(t))
    assert tree_rows(back) == rows
    assert back.task == t.task and back.settings == t.settings and back.stats == t.stats
    leaf = max(back.leaves(), key=lambda n: n.depth)
    assert path_messages(back, leaf) == path_messages(t, t.node(leaf.node_id))


def test_path_to_and_messages():
    pol = Scripted({0: [turn("right")], 1: [turn("right")], 2: [turn("right")]})
    t = search(line_task(goal=3), pol)
    leaf = t.leaves()[0]
    assert [n.depth for n in leaf.lineage()] == [0, 1, 2, 3]
    msgs = path_messages(t, leaf, loss=True)
    assert [m["role"] for m in msgs] == ["user", "assistant", "user"] + ["assistant", "user"] * 3
    assert msgs[1] == {"role": "assistant", "content": "OK", "loss": False}
    assert msgs[0]["content"] == line_task().instruction and msgs[2]["content"].startswith("You stand at 0")
    assert all(m["loss"] for m in msgs[3::2]) and not any(m["loss"] for m in msgs[4::2])
    assert msgs[-1]["content"] == "You reach the goal at 3."
