"""Seeded crafting worlds of our own: invented item names, no third-party data.

Level 0 holds base items ("<material> <raw>": "umber sap"); level d holds items whose main recipe takes one
ingredient from level d-1 and the rest from any lower level, so depth, branching (ingredients per recipe),
counts and output counts are all set by the config. Level-1 items share a few forms ("glimmer rod", "sable rod");
each form with two or more items becomes a tag ("rods") that deeper recipes may ask for, like TextCraft's
"planks". Some items get a second, alternative recipe. The same config gives the same world, byte for byte.
"""
from __future__ import annotations

import random

from pydantic import BaseModel, ConfigDict, Field, model_validator

from stages.envs.craft_world import CraftWorld, Ingredient, Recipe, world_id

MATERIALS = [
    "amber", "ashen", "bramble", "brine", "cinder", "dusk", "ember", "fen", "frost", "gale", "glimmer", "hearth",
    "kelp", "loam", "marrow", "mire", "moss", "myrrh", "nacre", "ochre", "opal", "pewter", "quill", "rune",
    "sable", "sorrel", "thorn", "tide", "umber", "vesper", "wisp", "zephyr",
]
RAW = ["sap", "ore", "fiber", "sand", "petal", "scale", "shell", "root", "resin", "clay", "husk", "pebble"]
FORMS = ["rod", "plank", "thread", "ingot", "brick", "shard", "gear", "coil", "plate", "bead", "strap", "tile"]
DEVICES = [
    "lantern", "compass", "loom", "anvil", "kettle", "drum", "lute", "sextant", "clock", "barrel", "crate",
    "ladder", "bell", "mirror", "spindle", "bellows", "chest", "cart", "sled", "kite", "harp", "flute", "crown",
    "helm", "shield", "totem", "idol", "orb", "wand", "staff", "banner", "quiver", "saddle", "easel", "abacus",
    "prism", "beacon", "sceptre", "chalice", "locket",
]


class CraftGenConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed: int = Field(0, description="generator seed: the same config gives the same world")
    base_items: int = Field(16, ge=2, le=len(MATERIALS) * len(RAW), description="number of base items (depth 0)")
    depth: int = Field(4, ge=1, le=12, description="levels of crafted items above the base items (deepest goal)")
    items_per_level: int = Field(10, ge=1, le=200, description="crafted items made at each level")
    forms: int = Field(4, ge=1, le=len(FORMS), description="distinct forms among level-1 items; a form shared by "
                                                           "two or more items becomes a tag (an item type)")
    min_ingredients: int = Field(1, ge=1, le=9, description="fewest distinct ingredients in a recipe")
    max_ingredients: int = Field(3, ge=1, le=9, description="most distinct ingredients in a recipe (branching)")
    max_ingredient_count: int = Field(4, ge=1, le=64, description="most units of one ingredient a recipe takes")
    max_output_count: int = Field(4, ge=1, le=64, description="most units one craft makes")
    alt_recipe_prob: float = Field(0.2, ge=0, le=1, description="chance an item gets a second recipe")
    tag_prob: float = Field(0.3, ge=0, le=1, description="chance an ingredient that has a tag is asked for by its "
                                                         "tag (any member will do)")

    @model_validator(mode="after")
    def _check(self):
        if self.min_ingredients > self.max_ingredients:
            raise ValueError("min_ingredients must be <= max_ingredients")
        if self.items_per_level > len(MATERIALS) * len(DEVICES):
            raise ValueError("items_per_level is larger than the name space")
        return self


def generate_world(cfg: CraftGenConfig) -> CraftWorld:
    rng = random.Random(f"craft-gen:{cfg.seed}")
    used: set[str] = set()

    def name(words: list[str]) -> str:
        for _ in range(10_000):
            n = f"{rng.choice(MATERIALS)} {rng.choice(words)}"
            if n not in used:
                used.add(n)
                return n
        raise ValueError("ran out of names; lower the item counts")

    levels: list[list[str]] = [[name(RAW) for _ in range(cfg.base_items)]]
    forms = rng.sample(FORMS, cfg.forms)
    form_of: dict[str, str] = {}
    recipes: list[Recipe] = []

    def ingredient(item: str) -> Ingredient:
        n = rng.randint(1, cfg.max_ingredient_count)
        tag = form_of.get(item)
        return Ingredient(f"{tag}s" if tag and rng.random() < cfg.tag_prob else item, n)

    def make_recipe(out: str, d: int, anchor: bool) -> Recipe:
        lower = [i for lv in levels[:d] for i in lv]
        k = rng.randint(cfg.min_ingredients, cfg.max_ingredients)
        first = [rng.choice(levels[d - 1])] if anchor else []
        rest = [i for i in lower if i not in first]
        rng.shuffle(rest)
        ings: list[Ingredient] = []
        kinds: set[str] = set()       # one ingredient per form: never "rods" beside "sable rod"
        for p in first + rest:
            kind = f"{form_of[p]}s" if p in form_of else p
            if kind not in kinds:
                kinds.add(kind)
                ings.append(ingredient(p))
                if len(ings) == k:
                    break
        return Recipe(out, rng.randint(1, cfg.max_output_count), tuple(ings))

    for d in range(1, cfg.depth + 1):
        level = []
        for _ in range(cfg.items_per_level):
            if d == 1:
                form = rng.choice(forms)
                out = name([form])
                form_of[out] = form
            else:
                out = name(DEVICES)
            recipes.append(make_recipe(out, d, anchor=True))
            if rng.random() < cfg.alt_recipe_prob:
                alt = make_recipe(out, d, anchor=False)
                if alt.text() != recipes[-1].text() and {i.name for i in alt.inputs} != \
                        {i.name for i in recipes[-1].inputs}:
                    recipes.append(alt)
            level.append(out)
        levels.append(level)
    tags: dict[str, set[str]] = {}
    for item, form in form_of.items():
        tags.setdefault(f"{form}s", set()).add(item)
    # a form with a single item is no type: recipes that named it ask for the item itself
    lone = {t: next(iter(m)) for t, m in tags.items() if len(m) < 2}
    if lone:
        recipes = [Recipe(r.output, r.count, tuple(Ingredient(lone.get(i.name, i.name), i.count) for i in r.inputs))
                   for r in recipes]
        tags = {t: m for t, m in tags.items() if t not in lone}
    items = {i for lv in levels for i in lv}
    return CraftWorld(world_id("gen", recipes, tags), recipes, tags, items, source=f"generated:{cfg.model_dump()}")
