"""craft: a text crafting world with TextCraft's mechanics, on a generated world or TextCraft-format recipe files.

    env = CraftEnv(generate={"seed": 3, "depth": 3})       # or CraftEnv(recipes_dir="path/to/recipes")
    env.setup()
    task = env.tasks("train", 1)[0]
    obs, info = env.reset(task)       # "Crafting commands:\\n...\\n\\nGoal: craft <item>."
    env.step("get 2 umber sap")       # "Got 2 umber sap"
    env.step("craft 4 sable rod using 2 umber sap")
    env.step("inventory")             # "Inventory: [sable rod] (4)"

Mechanics (as TextCraft's): `get N item` hands out base items only (items no recipe makes); `craft N X using
N A, N B` applies one recipe exactly once: the ingredients must match one of X's recipes in items and counts
(one craft = one batch; no multiples, no partial use); a tag ingredient ("planks") is met by any member item
("oak planks"), never by the tag's own name; the N before X is informational, the recipe decides the output
count. Reward 1 and done when the goal is crafted. Any failure answers "Could not ..." with the reason, reward 0,
info["invalid"] True. Actions are read case-insensitively, with spaces collapsed, "_" read as a space, a
"minecraft:" prefix and a final "." ignored. `valid_actions()` is None: like TextCraft, the env lists recipes,
not actions. `can_snapshot`: a snapshot is a copy of (goal, inventory, done).

Tasks: goals are the items whose depth lies in [min_goal_depth, max_goal_depth]; `split_seed` shuffles them and
the first `test_fraction` of them are test goals, the rest train goals (a split is by goal item, so test goals
are never trained on). Task k of a split is goal k mod G, its recipe list shuffled and sampled with a seed drawn
from (world, split, k): `craft:<world-id>:<split>:<k>` is the same task on any machine.
"""
from __future__ import annotations

import random
import re
from functools import lru_cache
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

from stages.envs.base import Env, EnvTask
from stages.envs.craft_gen import CraftGenConfig, generate_world
from stages.envs.craft_world import CraftWorld, load_textcraft_dir
from schemas.errors import ConfigError

SPLITS = ("train", "test")

INSTRUCTION = """You are in a crafting world and start with nothing. Actions:
- get N ITEM: take N of a base item (an item that no crafting command makes).
- craft N ITEM using N A, N B, ...: use one of the listed crafting commands once. The ingredients and their \
counts must match the command exactly. A generic ingredient (an item type, such as "planks") must be given as a \
specific item of that type (such as "oak planks").
- inventory: list what you hold.
The task is done when the goal item is in your inventory."""


class CraftConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    recipes_dir: Optional[str] = Field(None, description="a directory of TextCraft-format recipe JSON files "
                                                         "(Minecraft shaped/shapeless crafting); none = a "
                                                         "generated world (see `generate`)")
    generate: CraftGenConfig = Field(default_factory=CraftGenConfig, description="the generated world's settings "
                                                                                 "(used when recipes_dir is none)")
    min_goal_depth: int = Field(1, ge=1, description="shallowest goal: crafting steps on the easiest path")
    max_goal_depth: Optional[int] = Field(None, ge=1, description="deepest goal; none = no limit")
    distractors: int = Field(10, ge=0, description="recipes outside the goal's tree shown with it")
    test_fraction: float = Field(0.2, ge=0, le=1, description="share of goal items held out as the test split")
    split_seed: int = Field(0, description="seed of the train/test split of goal items")

    @model_validator(mode="after")
    def _check(self):
        if self.max_goal_depth is not None and self.max_goal_depth < self.min_goal_depth:
            raise ValueError("max_goal_depth must be >= min_goal_depth")
        return self


@lru_cache(maxsize=16)
def _world(recipes_dir: Optional[str], gen_json: str) -> CraftWorld:
    """Worlds are read-only after construction: one per config per process."""
    if recipes_dir:
        return load_textcraft_dir(recipes_dir)
    return generate_world(CraftGenConfig.model_validate_json(gen_json))


_SPACE = re.compile(r"\s+")
_GET = re.compile(r"get (\d+) (.+)")
_CRAFT = re.compile(r"craft (.+?) using (.+)")
_COUNTED = re.compile(r"(\d+) (.+)")


def _norm(text: str) -> str:
    t = _SPACE.sub(" ", text.replace("_", " ")).strip().lower()
    return t[:-1].rstrip() if t.endswith(".") else t


def _item(text: str) -> str:
    t = text.strip()
    return t[len("minecraft:"):].strip() if t.startswith("minecraft:") else t


class CraftEnv(Env):
    name = "craft"
    can_snapshot = True

    def __init__(self, **config: Any):
        self.config = CraftConfig.model_validate(config)
        self.world: Optional[CraftWorld] = None
        self.goal: Optional[str] = None
        self.inventory: dict[str, int] = {}
        self.done = False
        self._commands: list[str] = []     # the crafting commands the task shows (action_pattern)

    # --- world and tasks --------------------------------------------------------------------------------------
    def setup(self) -> None:
        if self.world is None:
            self.world = _world(self.config.recipes_dir, self.config.generate.model_dump_json())

    def split_goals(self, split: str) -> list[str]:
        """The goal items of a split, in task order."""
        if split not in SPLITS:
            raise ConfigError(f"split: craft has splits {', '.join(SPLITS)}, not {split!r}")
        self.setup()
        goals = self.world.goals(self.config.min_goal_depth, self.config.max_goal_depth)
        random.Random(f"{self.world.world_id}:{self.config.split_seed}").shuffle(goals)
        n_test = round(len(goals) * self.config.test_fraction)
        return goals[:n_test] if split == "test" else goals[n_test:]

    def task(self, split: str, k: int) -> EnvTask:
        goals = self.split_goals(split)
        if not goals:
            raise ConfigError(f"split: no {split} goals with depth in [{self.config.min_goal_depth}, "
                              f"{self.config.max_goal_depth}] in world {self.world.world_id}")
        wid = self.world.world_id
        goal = goals[k % len(goals)]
        seed = random.Random(f"{wid}:{split}:{k}").getrandbits(31)
        return EnvTask(task_id=f"craft:{wid}:{split}:{k}", seed=seed, split=split,
                       config={"world_id": wid, "goal": goal}, instruction=INSTRUCTION)

    def tasks(self, split: str, count: int, seed: int = 0) -> list[EnvTask]:
        """`count` tasks of `split`: task indices 0..count-1 for seed 0, else `count` distinct indices drawn by
        `seed` from the first max(count, G) (G = goals in the split). Each goal appears once before any repeats
        (with another recipe shuffle) as long as count <= G."""
        g = len(self.split_goals(split))
        pool = max(count, g)
        ks = list(range(count)) if seed == 0 else random.Random(seed).sample(range(pool), count)
        return [self.task(split, k) for k in ks]

    # --- episode ----------------------------------------------------------------------------------------------
    def reset(self, task: EnvTask) -> tuple[str, dict[str, Any]]:
        self.setup()
        w = self.world
        goal, wid = task.config.get("goal"), task.config.get("world_id", w.world_id)
        if wid != w.world_id:
            raise ConfigError(f"task {task.task_id} belongs to world {wid}, this env has {w.world_id}")
        if goal not in w.by_output:
            raise ConfigError(f"task {task.task_id}: goal {goal!r} cannot be crafted in world {w.world_id}")
        self.goal, self.inventory, self.done = goal, {}, False
        lines = w.recipe_lines(goal, self.config.distractors, random.Random(task.seed))
        self._commands = list(lines)
        obs = "Crafting commands:\n{}\n\nGoal: craft {}.".format("\n".join(lines), goal)
        return obs, {"goal": goal, "depth": w.depth(goal), "world_id": w.world_id}

    def step(self, action: str) -> tuple[str, float, bool, dict[str, Any]]:
        if self.goal is None:
            raise RuntimeError("step before reset")
        if self.done:
            return "The task is already done.", 0.0, True, {"invalid": True, "success": True}
        action = action if isinstance(action, str) else ""
        a = _norm(action)
        if a == "inventory":
            return self._show_inventory(), 0.0, False, {}
        m = _GET.fullmatch(a)
        if m:
            return self._get(int(m.group(1)), _item(m.group(2)))
        m = _CRAFT.fullmatch(a)
        if m:
            return self._craft(m.group(1), m.group(2))
        return self._fail(f"Could not execute {action.strip()!r}: actions are 'get N item', "
                          f"'craft N item using N item, N item, ...' and 'inventory'.")

    def action_pattern(self) -> Optional[str]:
        """The actions that can work now (as TextWorldExpress's valid actions): `get N item` for the base items the
        task's crafting commands use (N from 1 to 64), each crafting command as shown whose ingredients are held
        now (an item type's ingredient written as any member held in that number), and `inventory`."""
        if self.goal is None:
            return None
        from stages.formats import literal, number_in, one_of
        w, bases, crafts = self.world, set(), []
        for line in self._commands:
            m = _CRAFT.fullmatch(_norm(line))
            if not m:
                crafts.append(literal(line))
                continue
            parts, held = [], True
            for part in m.group(2).split(","):
                c = _COUNTED.fullmatch(part.strip())
                if not c:
                    held = False
                    continue
                n, name = int(c.group(1)), _item(c.group(2))
                members = [x for x in w.tags[name]] if w.is_tag(name) else [name]
                bases.update(x for x in members if w.is_base(x))
                enough = [x for x in members if self.inventory.get(x, 0) >= n]
                held = held and bool(enough)
                parts.append(f"{n} {one_of(enough)}" if enough else "")
            if held:
                crafts.append(f"craft {literal(m.group(1))} using " + ", ".join(parts))
        options = [f"({'|'.join(crafts)})", "inventory"] if crafts else ["inventory"]
        if bases:
            options.insert(0, f"get {number_in(1, 64)} {one_of(bases)}")
        return "|".join(options)

    @staticmethod
    def _fail(text: str) -> tuple[str, float, bool, dict[str, Any]]:
        return text, 0.0, False, {"invalid": True}

    def _show_inventory(self) -> str:
        if not self.inventory:
            return "Inventory: You are not carrying anything."
        return "Inventory: " + " ".join(f"[{k}] ({v})" for k, v in self.inventory.items())

    def _get(self, n: int, item: str):
        w = self.world
        if n < 1:
            return self._fail(f"Could not find {n} {item}: ask for at least 1.")
        if w.is_craftable(item):
            what = "an item type" if w.is_tag(item) else "made by crafting"
            return self._fail(f"Could not find {item}: it is {what}, not a base item; craft it instead.")
        if item not in w.items:
            return self._fail(f"Could not find {item}: there is no such item.")
        self.inventory[item] = self.inventory.get(item, 0) + n
        return f"Got {n} {item}", 0.0, False, {}

    def _craft(self, target: str, ingredients: str):
        w = self.world
        m = _COUNTED.fullmatch(target)
        out = _item(m.group(2) if m else target)
        given: dict[str, int] = {}
        for part in ingredients.split(","):
            pm = _COUNTED.fullmatch(part.strip())
            if not pm or int(pm.group(1)) < 1:
                return self._fail(f"Wrong item format: {part.strip()!r}. Write each ingredient as 'N item', "
                                  f"separated by commas.")
            name = _item(pm.group(2))
            given[name] = given.get(name, 0) + int(pm.group(1))
        for name, n in given.items():
            have = self.inventory.get(name, 0)
            if have < n:
                hint = (f" {name} is an item type: name a specific item of that type." if w.is_tag(name) else "")
                return self._fail(f"Could not find enough items to craft {out}: need {n} {name}, have {have}."
                                  + hint)
        recipe = w.match(out, given)
        if recipe is None:
            if not w.is_craftable(out) or w.is_tag(out):
                why = ("it is an item type; craft a specific item" if w.is_tag(out) else
                       "it is a base item; get it" if out in w.items else "there is no such item")
            else:
                why = "no recipe takes exactly these ingredients and counts"
            return self._fail(f"Could not find a valid recipe for {out}: {why}.")
        for name, n in given.items():
            left = self.inventory[name] - n
            if left:
                self.inventory[name] = left
            else:
                del self.inventory[name]
        self.inventory[out] = self.inventory.get(out, 0) + recipe.count
        obs = f"Crafted {recipe.count} {out}"
        if out == self.goal:
            self.done = True
            return obs, 1.0, True, {"success": True}
        return obs, 0.0, False, {}

    # --- state ------------------------------------------------------------------------------------------------
    def snapshot(self) -> Any:
        return {"goal": self.goal, "inventory": dict(self.inventory), "done": self.done,
                "commands": list(self._commands)}

    def restore(self, state: Any) -> None:
        self.setup()
        self.goal, self.inventory, self.done = state["goal"], dict(state["inventory"]), state["done"]
        self._commands = list(state.get("commands", self._commands))

    def gold_plan(self, task: EnvTask) -> list[tuple[str, str]]:
        self.setup()
        goal = task.config["goal"]
        out = []
        for kind, action in self.world.plan(goal):
            if kind == "get":
                thought = f"{action[4:].split(' ', 1)[1]} is a base item the recipes need; I get what I need."
            elif action.startswith("craft ") and action.split(" using ")[0].split(" ", 2)[2] == goal:
                thought = f"I have every ingredient for the goal, {goal}; I craft it."
            else:
                thought = f"I have the ingredients, so I {action.split(' using ')[0]}."
            out.append((thought, action))
        return out

    def describe(self) -> dict[str, Any]:
        self.setup()
        return {"env": self.name, "world_id": self.world.world_id, "source": self.world.source,
                "recipes": len(self.world.recipes), "config": self.config.model_dump(mode="json")}
