"""The crafting world behind the craft env: items, item types (tags), recipes, depths, the recipe list an episode
shows, recipe matching, and an exact planner. Loading TextCraft-format recipe files is here too; the seeded
generator of our own worlds is in craft_gen.py.

Names are display names ("oak planks"), the same strings the agent types. A *tag* is an item type ("planks"): a
recipe ingredient that any member item satisfies (TextCraft's item tags, and a recipe's `group` as a tag of its
output). Base items are the items no recipe makes; they are the ones `get` hands out.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from schemas.errors import ConfigError, InputError


@dataclass(frozen=True)
class Ingredient:
    name: str       # an item or a tag
    count: int


@dataclass(frozen=True)
class Recipe:
    output: str
    count: int                           # how many one craft makes
    inputs: tuple[Ingredient, ...]

    def text(self) -> str:
        ins = ", ".join(f"{i.count} {i.name}" for i in self.inputs)
        return f"craft {self.count} {self.output} using {ins}"


class CraftWorld:
    """An acyclic recipe graph. `recipes` must already be free of cycles (loaders and the generator ensure it)."""

    def __init__(self, world_id: str, recipes: list[Recipe], tags: dict[str, set[str]], items: set[str],
                 source: str):
        self.world_id, self.source = world_id, source
        self.recipes = list(recipes)
        self.by_output: dict[str, list[Recipe]] = defaultdict(list)
        for r in self.recipes:
            self.by_output[r.output].append(r)
        self.by_output = dict(self.by_output)
        # a tag with no craftable member cannot be crafted: it is a plain base item (TextCraft does the same)
        self.tags = {t: frozenset(sorted(m for m in ms if m in self.by_output)) for t, ms in tags.items()}
        self.tags = {t: ms for t, ms in self.tags.items() if ms and t not in self.by_output}
        self.tag_of: dict[str, set[str]] = defaultdict(set)
        for t, ms in self.tags.items():
            for m in ms:
                self.tag_of[m].add(t)
        self.items = set(items) | set(self.by_output)
        for r in self.recipes:
            self.items.update(i.name for i in r.inputs if i.name not in self.tags)
        self.uses: dict[str, list[Recipe]] = defaultdict(list)
        for r in self.recipes:
            for i in r.inputs:
                self.uses[i.name].append(r)
        self._depth: dict[str, int] = {}
        self._needed: dict[str, list[Recipe]] = {}

    # --- what a name is -------------------------------------------------------------------------------------
    def is_tag(self, name: str) -> bool:
        return name in self.tags

    def is_craftable(self, name: str) -> bool:
        return name in self.by_output or name in self.tags

    def is_base(self, name: str) -> bool:
        return name in self.items and name not in self.by_output

    def satisfies(self, item: str, ingredient: str) -> bool:
        """Can `item` stand for `ingredient` in a recipe (the same item, or a member of that tag)?"""
        return item == ingredient or ingredient in self.tag_of.get(item, ())

    def recipes_for(self, name: str) -> list[Recipe]:
        """Recipes that make `name`; for a tag, those of all its members."""
        if name in self.tags:
            return [r for m in sorted(self.tags[name]) for r in self.by_output[m]]
        return self.by_output.get(name, [])

    # --- depth: base 0; a recipe 1 + its deepest input; an item its easiest recipe; a tag its easiest member ---
    def depth(self, name: str) -> int:
        d = self._depth.get(name)
        if d is None:
            if name in self.tags:
                d = min(self.depth(m) for m in self.tags[name])
            elif name in self.by_output:
                d = min(self.recipe_depth(r) for r in self.by_output[name])
            else:
                d = 0
            self._depth[name] = d
        return d

    def recipe_depth(self, r: Recipe) -> int:
        return 1 + max(self.depth(i.name) for i in r.inputs)

    def goals(self, min_depth: int = 1, max_depth: Optional[int] = None) -> list[str]:
        """Craftable items whose depth lies in [min_depth, max_depth], sorted by name."""
        return sorted(i for i in self.by_output
                      if self.depth(i) >= min_depth and (max_depth is None or self.depth(i) <= max_depth))

    # --- the recipe list an episode shows ---------------------------------------------------------------------
    def needed_recipes(self, goal: str) -> list[Recipe]:
        """Every recipe in the goal's crafting tree: all recipes of the goal, and recursively of every ingredient
        (all members of a tag), as TextCraft lists them. Deterministic order."""
        if goal not in self._needed:
            seen, out, todo = set(), [], [goal]
            while todo:
                name = todo.pop()
                if name in seen:
                    continue
                seen.add(name)
                for r in self.recipes_for(name):
                    if r not in out:
                        out.append(r)
                    todo.extend(i.name for i in reversed(r.inputs))
            self._needed[goal] = out
        return self._needed[goal]

    def distractor_candidates(self, goal: str) -> list[Recipe]:
        """Recipes outside the goal's tree that use one of its ingredients (TextCraft's distractors)."""
        needed = self.needed_recipes(goal)
        texts = {r.text() for r in needed}
        names = {i.name for r in needed for i in r.inputs}
        cands = {r.text(): r for n in names for r in self.uses.get(n, []) if r.text() not in texts}
        return [cands[t] for t in sorted(cands)]

    def recipe_lines(self, goal: str, n_distractors: int, rng: random.Random) -> list[str]:
        lines = sorted({r.text() for r in self.needed_recipes(goal)})
        cands = [r.text() for r in self.distractor_candidates(goal)]
        lines += rng.sample(cands, min(n_distractors, len(cands)))
        rng.shuffle(lines)
        return lines

    # --- crafting ---------------------------------------------------------------------------------------------
    def match(self, output: str, given: dict[str, int]) -> Optional[Recipe]:
        """The recipe for `output` whose ingredients are exactly `given` (item -> count; a tag ingredient is
        met by one member item with that count; nothing left over). None if no recipe matches."""
        for r in self.by_output.get(output, []):
            if len(r.inputs) == len(given) and _assign(self, list(r.inputs), dict(given)):
                return r
        return None

    # --- planner ----------------------------------------------------------------------------------------------
    def plan(self, goal: str) -> list[tuple[str, str]]:
        """An exact plan from an empty inventory: (kind, action) pairs, kind "get" or "craft", ending with the
        craft of the goal. Each item uses its easiest recipe and each tag its easiest member (ties by name);
        demand is summed over the whole tree first and every producer runs before its consumers, so no craft
        ever lacks an ingredient or eats one another craft needs."""
        if goal not in self.by_output:
            raise ValueError(f"{goal!r} cannot be crafted")
        choice: dict[str, tuple[Recipe, tuple[tuple[str, int], ...]]] = {}

        def recipe(item: str) -> tuple[Recipe, tuple[tuple[str, int], ...]]:
            """The item's easiest recipe, with the concrete item used for each ingredient."""
            if item not in choice:
                r = min(self.by_output[item], key=lambda r: (self.recipe_depth(r), r.text()))
                used = {i.name for i in r.inputs if i.name not in self.tags}
                concrete = []
                for ing in r.inputs:
                    name = ing.name
                    if name in self.tags:      # the easiest member not already named in this recipe
                        name = min((m for m in self.tags[name] if m not in used),
                                   key=lambda m: (self.depth(m), m))
                        used.add(name)
                    concrete.append((name, ing.count))
                choice[item] = (r, tuple(concrete))
            return choice[item]

        # producers before consumers (post-order over the chosen recipes; the graph is acyclic)
        order: list[str] = []
        seen: set[str] = set()

        def visit(item: str) -> None:
            if item in seen:
                return
            seen.add(item)
            if item in self.by_output:
                for name, _ in recipe(item)[1]:
                    visit(name)
            order.append(item)

        visit(goal)
        demand: dict[str, int] = defaultdict(int)
        demand[goal] = 1
        crafts: dict[str, int] = {}
        for item in reversed(order):           # a consumer's demand is final before its producers are sized
            if item in self.by_output:
                r, concrete = recipe(item)
                crafts[item] = -(-demand[item] // r.count)
                for name, count in concrete:
                    demand[name] += crafts[item] * count
        steps = [("get", f"get {demand[i]} {i}") for i in order if i not in self.by_output]
        for item in order:
            if item in crafts:
                r, concrete = recipe(item)
                ins = ", ".join(f"{count} {name}" for name, count in concrete)
                steps += [("craft", f"craft {r.count} {item} using {ins}")] * crafts[item]
        return steps


def _assign(world: CraftWorld, inputs: list[Ingredient], given: dict[str, int]) -> bool:
    """Backtracking match of recipe ingredients to given items (at most 9 of each)."""
    if not inputs:
        return not given
    ing, rest = inputs[0], inputs[1:]
    for item, n in list(given.items()):
        if n == ing.count and world.satisfies(item, ing.name):
            del given[item]
            ok = _assign(world, rest, given)
            given[item] = n
            if ok:
                return True
    return False


def world_id(prefix: str, recipes: list[Recipe], tags: dict[str, set[str]]) -> str:
    """A stable id from the content: the same recipes and tags give the same id on any machine."""
    body = json.dumps([sorted(r.text() for r in recipes), sorted((t, sorted(m)) for t, m in tags.items())])
    return f"{prefix}-{hashlib.sha256(body.encode()).hexdigest()[:10]}"


# --- TextCraft-format recipe files (Minecraft 1.16 crafting JSON) ----------------------------------------------

CRAFTING_TYPES = ("minecraft:crafting_shaped", "minecraft:crafting_shapeless")


def display(mc_id: str) -> str:
    """'minecraft:oak_planks' -> 'oak planks'."""
    return mc_id.split(":", 1)[-1].replace("_", " ")


def _ingredient(spec, path: str, field: str) -> tuple[str, bool]:
    """(name, is_tag) of a key/ingredient entry; a list of alternatives means its first one (as TextCraft)."""
    if isinstance(spec, list):
        if not spec:
            raise InputError("empty list of alternatives", path=path, field=field)
        spec = spec[0]
    if isinstance(spec, dict) and isinstance(spec.get("item"), str):
        return display(spec["item"]), False
    if isinstance(spec, dict) and isinstance(spec.get("tag"), str):
        return display(spec["tag"]), True
    raise InputError("expected {\"item\": id} or {\"tag\": id}", path=path, field=field)


def read_recipe_file(path: Path) -> Optional[tuple[Recipe, Optional[str], set[str]]]:
    """(recipe, group tag of its output, tags among its inputs), or None for a non-crafting type."""
    p = str(path)
    try:
        d = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"not a readable JSON recipe: {e}", path=p) from None
    if not isinstance(d, dict) or not isinstance(d.get("type"), str):
        raise InputError("a recipe is an object with a string 'type'", path=p, field="type")
    if d["type"] not in CRAFTING_TYPES:
        return None
    counts: dict[str, int] = {}
    tags: set[str] = set()
    if d["type"] == "minecraft:crafting_shaped":
        pattern, key = d.get("pattern"), d.get("key")
        if not isinstance(pattern, list) or not all(isinstance(x, str) for x in pattern):
            raise InputError("expected a list of strings", path=p, field="pattern")
        if not isinstance(key, dict):
            raise InputError("expected a mapping of symbol -> ingredient", path=p, field="key")
        for sym, spec in key.items():
            name, is_tag = _ingredient(spec, p, f"key.{sym}")
            n = sum(row.count(sym) for row in pattern)
            if n:
                counts[name] = counts.get(name, 0) + n
                if is_tag:
                    tags.add(name)
    else:
        ings = d.get("ingredients")
        if not isinstance(ings, list) or not ings:
            raise InputError("expected a non-empty list", path=p, field="ingredients")
        for k, spec in enumerate(ings):
            name, is_tag = _ingredient(spec, p, f"ingredients[{k}]")
            counts[name] = counts.get(name, 0) + 1
            if is_tag:
                tags.add(name)
    res = d.get("result")
    if isinstance(res, str):
        out, n_out = display(res), 1
    elif isinstance(res, dict) and isinstance(res.get("item"), str):
        out, n_out = display(res["item"]), res.get("count") or 1
    else:
        raise InputError("expected an item id or {\"item\": id, \"count\": n}", path=p, field="result")
    if not isinstance(n_out, int) or n_out < 1:
        raise InputError("count must be a positive integer", path=p, field="result.count")
    if not counts:
        raise InputError("a crafting recipe needs at least one ingredient", path=p, field="key")
    group = d.get("group")
    group_tag = display(group) if isinstance(group, str) and group and display(group) != out else None
    return Recipe(out, n_out, tuple(Ingredient(k, v) for k, v in counts.items())), group_tag, tags


def load_textcraft_dir(directory: str | os.PathLike) -> CraftWorld:
    """A world from a directory of Minecraft recipe JSON files, with TextCraft's rules: shaped and shapeless
    crafting only (counts from the pattern / repeated ingredients), the first of alternative ingredients,
    item tags as ingredients, `group` as a tag of the output, recipes that only unpack a block (one ingredient
    named *_block) dropped, and a recipe dropped when it would close a cycle (files read in name order)."""
    root = Path(directory)
    if not root.is_dir():
        raise ConfigError(f"env.config.recipes_dir: no such directory: {root}")
    files = sorted(f for f in root.iterdir() if f.suffix == ".json")
    if not files:
        raise ConfigError(f"env.config.recipes_dir: no *.json recipe files in {root}")
    accepted: list[Recipe] = []
    tags: dict[str, set[str]] = defaultdict(set)      # tag -> members (outputs of recipes in that group)
    items: set[str] = set()
    graph = _Graph()
    for f in files:
        got = read_recipe_file(f)
        if got is None:
            continue
        recipe, group_tag, input_tags = got
        items.add(recipe.output)
        items.update(i.name for i in recipe.inputs if i.name not in input_tags)
        for t in input_tags:
            tags.setdefault(t, set())
        if len(recipe.inputs) == 1 and recipe.inputs[0].name.endswith(" block"):
            continue
        if group_tag:
            tags[group_tag].add(recipe.output)
        if graph.would_cycle(recipe, group_tag, tags):
            continue
        graph.add(recipe)
        accepted.append(recipe)
    # a tag that is also an item name would be ambiguous in an action: the item wins
    tags = {t: m for t, m in tags.items() if t not in items}
    return CraftWorld(world_id("textcraft", accepted, tags), accepted, tags, items, source=str(root))


class _Graph:
    """Accepted recipes as a dependency graph, to refuse a recipe that would make a cycle."""

    def __init__(self):
        self.deps: dict[str, set[str]] = defaultdict(set)     # item -> ingredient names of its recipes

    def add(self, r: Recipe) -> None:
        self.deps[r.output].update(i.name for i in r.inputs)

    def would_cycle(self, r: Recipe, group_tag: Optional[str], tags: dict[str, set[str]]) -> bool:
        targets = {r.output} | ({group_tag} if group_tag else set())
        seen, todo = set(), [i.name for i in r.inputs]
        while todo:
            n = todo.pop()
            if n in targets:
                return True
            if n in seen:
                continue
            seen.add(n)
            todo.extend(self.deps.get(n, ()))
            todo.extend(m for m in tags.get(n, ()) if m != r.output)
        return False
