"""Agent-R's pieces on the line world (tests/unit/agent_r_toys.py): leaf pairs (alpha/beta as floats, root value 0
skipped, seeded shuffle, divergence), the judgement parser on clean, messy and fuzzed replies, and the
first-error walk (stop at the first Bad; unparsed stops or, as a setting, counts as Bad)."""
from __future__ import annotations

import asyncio
import random
import string

import pytest

from agent_r_toys import RandomWalker, Scripted, SnapLineWorld, line_task, parse_action, turn
from pipelines.methods.agent_r.step_judge import JudgeSettings, StepJudge, first_error_walk, judge_prompt, parse_judgement
from pipelines.methods.agent_r.mcts import MCTSSettings, search_tree
from pipelines.methods.agent_r.pairs import PairSettings, divergence, leaf_value, make_pairs, sorted_leaves


def tree_of(k=0, **cfg):
    task = line_task(k, goal=2, coin=[1], lava=[-1], **cfg)
    return asyncio.run(search_tree(task, SnapLineWorld(), RandomWalker(seed=k), parse_action,
                                   MCTSSettings(iterations=8, children=4, max_depth=4)))


# ---- pairs --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", range(6))
def test_pairs_respect_alpha_beta_and_diverge_where_the_paths_split(k):
    tree = tree_of(k)
    s = PairSettings(alpha=0.5, beta=0.3)
    tp = make_pairs(tree, s)
    if tree.root.value <= 0:
        assert tp.skipped == "root_value_zero" and not tp.pairs
        return
    leaves = sorted_leaves(tree)
    n = len(leaves)
    assert tp.counts["candidates"] == n * (n - 1) // 2
    assert tp.counts["candidates"] == (tp.counts["pairs"] + tp.counts["gap_not_above_beta"]
                                       + tp.counts["good_not_above_alpha"])
    expected = {(a.node_id, b.node_id) for i, a in enumerate(leaves) for b in leaves[i + 1:]
                if leaf_value(a) - leaf_value(b) > 0.3 and leaf_value(a) > 0.5}
    assert {(p.good.node_id, p.bad.node_id) for p in tp.pairs} == expected
    for p in tp.pairs:
        assert isinstance(p.good_value, float) and p.gap > 0.3 and p.good_value > 0.5
        gp, bp = p.good.lineage(), p.bad.lineage()
        d = p.divergence.depth
        assert gp[:d + 1] == bp[:d + 1] and gp[d + 1] is p.good_child and bp[d + 1] is p.bad_child
        assert p.good_child is not p.bad_child and p.good_child.parent is p.divergence


def test_thresholds_are_strict_float_comparisons():
    tree = next(t for t in (tree_of(k) for k in range(12)) if t.root.value > 0 and len(sorted_leaves(t)) > 2)
    vals = sorted({leaf_value(n) for n in sorted_leaves(tree)})
    top = vals[-1]
    # alpha equal to the best value: nothing is "good" (strict >)
    assert not make_pairs(tree, PairSettings(alpha=top, beta=0.0)).pairs
    # beta equal to the largest gap: nothing passes (strict >)
    assert not make_pairs(tree, PairSettings(alpha=-1.0, beta=top - vals[0])).pairs
    # as floats, not strings: "10" < "9" as text, 0.25 vs "0.3"; pydantic gives floats from strings
    assert PairSettings(alpha="0.5").alpha == 0.5 and isinstance(PairSettings(beta="0.3").beta, float)


def test_root_value_zero_is_skipped_and_counted():
    pol = Scripted({}, default=[turn("look"), turn("left")])        # never reaches the goal, lava is a disaster
    tree = asyncio.run(search_tree(line_task(0, goal=5, lava=[-1]), SnapLineWorld(), pol, parse_action,
                                   MCTSSettings(iterations=4, children=2, max_depth=2)))
    assert tree.root.value == 0
    tp = make_pairs(tree)
    assert tp.skipped == "root_value_zero" and tp.counts["skipped_root_value_zero"] == 1 and not tp.pairs


def test_shuffle_is_seeded_and_capping_is_counted():
    tree = next(t for t in (tree_of(k) for k in range(12)) if len(make_pairs(t).pairs) > 3)
    a = [p.pair_id for p in make_pairs(tree, PairSettings(seed=1)).pairs]
    assert a == [p.pair_id for p in make_pairs(tree, PairSettings(seed=1)).pairs]
    assert a != [p.pair_id for p in make_pairs(tree, PairSettings(seed=2)).pairs] and sorted(a) == sorted(
        p.pair_id for p in make_pairs(tree, PairSettings(seed=2)).pairs)
    capped = make_pairs(tree, PairSettings(seed=1, max_pairs_per_tree=2))
    assert [p.pair_id for p in capped.pairs] == a[:2] and capped.counts["over_max_pairs_per_tree"] == len(a) - 2


def test_divergence_of_an_ancestor_is_an_error():
    tree = tree_of(1)
    leaf = sorted_leaves(tree)[0]
    with pytest.raises(ValueError):
        divergence(leaf, leaf.parent)


# ---- judgement parsing --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,verdict", [
    ("It moves closer.\nJudgement: Good", "good"),
    ("Judgement: Bad", "bad"),
    ("hmm\nJudgment: uncertain.", "uncertain"),
    ("**Judgement:** Bad", "bad"),
    ("Judgement: `Good`", "good"),
    ("Judgement： BAD!", "bad"),
    ("Judgement: Good\nwait, no.\nJudgement: Bad", "bad"),             # the last label counts
    ("reasoning...\n\n**Judgement**: Uncertain\n", "uncertain"),
])
def test_parse_judgement_reads_messy_labels(text, verdict):
    v, rationale, ok = parse_judgement(text)
    assert (v, ok) == (verdict, True)
    assert "Judge" not in rationale or text.lower().count("judgement") > 1


@pytest.mark.parametrize("text", ["", "Bad", "This step is bad.", "Judgement: Good or Bad", "Judgement:",
                                  "Judgement: maybe", "Judgement: not good", None, "Judgement: Goodish"])
def test_unparseable_judgements_are_unparsed_never_bad(text):
    v, rationale, ok = parse_judgement(text)
    assert v == "unparsed" and ok is False


def test_parse_judgement_fuzz():
    """Random text, with or without a label and a verdict word spliced in: a verdict is only ever read from a
    'Judgement:' line whose first word is that verdict, and never made up."""
    rng = random.Random(0)
    alphabet = string.ascii_letters + string.digits + " \n\t*_`:.,!?-#>"
    for _ in range(3000):
        noise = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))
        word = rng.choice(["Good", "Bad", "Uncertain", "good", "BAD", "fine", ""])
        label = rng.choice(["Judgement:", "Judgment:", "**Judgement:**", "judgement :", ""])
        tail = "".join(rng.choice(string.ascii_lowercase + " ") for _ in range(rng.randint(0, 10)))
        text = f"{noise}\n{label} {word}{rng.choice(['', '.', ' ' + tail])}"
        v, _, ok = parse_judgement(text)
        assert v in ("good", "bad", "uncertain", "unparsed") and ok == (v != "unparsed")
        if ok:
            import re
            lines = [ln for ln in text.split("\n") if re.search(r"judge?ment", ln, re.I)]
            assert lines and v in lines[-1].lower()
        if not label and "judg" not in noise.lower():
            assert v == "unparsed"


# ---- the walk -----------------------------------------------------------------------------------------------------
class JudgeBy:
    """A judge policy: reads the reviewed action from the prompt and answers from a table."""

    def __init__(self, answers: dict[str, str], default="Judgement: Good"):
        self.answers, self.default, self.prompts = answers, default, []

    async def __call__(self, messages, n, temperature):
        text = messages[-1]["content"]
        self.prompts.append(text)
        action = text.split("The step to review:\nAction: ", 1)[1].split("\n", 1)[0]
        return [self.answers.get(action, self.default)]


def a_pair():
    """A pair whose bad branch has 2+ steps, the first two with parsed, different actions."""
    for k in range(40):
        tree = tree_of(k)
        for p in make_pairs(tree).pairs:
            steps = p.bad.lineage()[p.divergence.depth + 1:]
            if len(steps) >= 2 and steps[0].parse_ok and steps[1].parse_ok and steps[0].action != steps[1].action:
                return tree, p
    raise AssertionError("no pair with a bad branch of 2+ steps")


def test_walk_stops_at_the_first_bad_step_and_judges_each_node_once():
    tree, pair = a_pair()
    steps = pair.bad.lineage()[pair.divergence.depth + 1:]
    first_bad = steps[1]
    judge_policy = JudgeBy({first_bad.action or "": "no.\nJudgement: Bad"}, default="ok\nJudgement: Good")
    judge = StepJudge(tree, judge_policy, JudgeSettings(environment="a line world"))
    walk = asyncio.run(first_error_walk(tree, pair, judge))
    assert walk.status == "first_error" and walk.end is first_bad and walk.first_error_depth == first_bad.depth
    assert [j.verdict for j in walk.judgements] == ["good", "bad"] and walk.judgements[1].node_id == first_bad.node_id
    assert walk.first_error_depth >= pair.divergence.depth + 1
    assert all("a line world" in p and "science" not in p for p in judge_policy.prompts)
    n_calls = len(judge_policy.prompts)
    asyncio.run(first_error_walk(tree, pair, judge))
    assert len(judge_policy.prompts) == n_calls and judge.stats["judge_cache_hits"] > 0


def test_walk_without_a_bad_step_keeps_the_whole_bad_path():
    tree, pair = a_pair()
    walk = asyncio.run(first_error_walk(tree, pair, StepJudge(tree, JudgeBy({}))))
    assert walk.status == "no_error" and walk.end is pair.bad and walk.first_error_depth is None


def test_unparsed_stops_by_default_and_is_bad_only_as_a_setting():
    tree, pair = a_pair()
    garbled = JudgeBy({}, default="I cannot decide.")
    walk = asyncio.run(first_error_walk(tree, pair, StepJudge(tree, garbled)))
    assert walk.status == "unparsed" and walk.end is None and not walk.usable
    assert [j.verdict for j in walk.judgements] == ["unparsed"] and not walk.judgements[0].parse_ok
    walk = asyncio.run(first_error_walk(tree, pair, StepJudge(tree, JudgeBy({}, default="?"),
                                                              JudgeSettings(on_unparsed="treat_as_bad"))))
    assert walk.status == "unparsed_as_bad" and walk.end is pair.bad_child
    assert walk.judgements[0].verdict == "unparsed"


def test_a_failing_judge_call_is_a_judge_error():
    tree, pair = a_pair()

    async def broken(messages, n, temperature):
        raise RuntimeError("no engine")
    walk = asyncio.run(first_error_walk(tree, pair, StepJudge(tree, broken)))
    assert walk.status == "judge_error" and "no engine" in walk.error and not walk.usable


def test_judge_prompt_shows_task_history_and_the_step():
    tree, pair = a_pair()
    node = pair.bad.lineage()[-1]
    text = judge_prompt(tree, node, JudgeSettings(environment="a line world", max_history_steps=1))
    assert tree.task.instruction in text and node.observation in text and "a line world" in text
    assert text.rstrip().endswith("Judgement: Uncertain")
