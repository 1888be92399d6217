"""The built-in task source: seeded arithmetic word problems, written by this project (offline, no download).

Each problem has a GSM8K-style gold solution: one step a line with the arithmetic written out, last line `#### N`.
Templates span 1 (warm-up) to 5 steps; answers are non-negative integers.
"""
from __future__ import annotations

import random
from typing import Callable, Optional

from schemas.rows import make_id

BUILTIN_SOURCE = "builtin:arithmetic"

_NAMES = ["Sam", "Maya", "Leo", "Aisha", "Noah", "Priya", "Omar", "Lena", "Jonas", "Chloe", "Diego", "Yuki",
          "Fatima", "Ben", "Ines", "Kofi", "Mila", "Ravi", "Sofia", "Tom", "Zara", "Hugo", "Nadia", "Eli"]
_ITEMS = [("apple", "apples"), ("notebook", "notebooks"), ("pencil", "pencils"), ("mango", "mangoes"),
          ("sticker", "stickers"), ("cupcake", "cupcakes"), ("marble", "marbles"), ("comic book", "comic books"),
          ("orange", "oranges"), ("toy car", "toy cars"), ("candle", "candles"), ("sandwich", "sandwiches")]
_SWEETS = ["candies", "cookies", "grapes", "crackers", "strawberries", "chocolates"]
_PRODUCTS = ["bracelets", "birdhouses", "scarves", "clay pots", "wooden spoons", "paper lanterns"]
_VEHICLES = ["car", "bus", "van", "motorbike", "truck"]
_BAKED = [("cookies", "cups of flour"), ("muffins", "eggs"), ("pancakes", "cups of milk"),
          ("biscuits", "spoons of butter")]


def _pick_names(rng: random.Random, k: int) -> list[str]:
    return rng.sample(_NAMES, k)


def _t_shopping(rng: random.Random) -> tuple[str, list[str], int]:
    a = _pick_names(rng, 1)[0]
    (i1, i1s), (i2, i2s) = rng.sample(_ITEMS, 2)
    n1, p1 = rng.randint(2, 9), rng.randint(2, 12)
    n2, p2 = rng.randint(2, 9), rng.randint(2, 12)
    c1, c2 = n1 * p1, n2 * p2
    total = c1 + c2
    if rng.random() < 0.5:
        q = (f"{a} buys {n1} {i1s} for ${p1} each and {n2} {i2s} for ${p2} each. "
             f"How many dollars does {a} spend in total?")
        steps = [f"The {i1s} cost {n1} * {p1} = {c1} dollars.",
                 f"The {i2s} cost {n2} * {p2} = {c2} dollars.",
                 f"In total {a} spends {c1} + {c2} = {total} dollars."]
        return q, steps, total
    bill = next(x for x in (20, 50, 100, 200, 500) if x > total)
    change = bill - total
    q = (f"{a} buys {n1} {i1s} at ${p1} each and {n2} {i2s} at ${p2} each, and pays with a ${bill} bill. "
         f"How much change, in dollars, does {a} get back?")
    steps = [f"The {i1s} cost {n1} * {p1} = {c1} dollars.",
             f"The {i2s} cost {n2} * {p2} = {c2} dollars.",
             f"Together they cost {c1} + {c2} = {total} dollars.",
             f"The change is {bill} - {total} = {change} dollars."]
    return q, steps, change


def _t_sharing(rng: random.Random) -> tuple[str, list[str], int]:
    a = _pick_names(rng, 1)[0]
    thing = rng.choice(_SWEETS)
    k = rng.randint(2, 8)
    packs, per_pack = rng.randint(2, 6), rng.randint(3, 12)
    bought = packs * per_pack
    each = rng.randint(bought // k + 1, bought // k + 15)
    total = each * k
    have = total - bought
    q = (f"{a} has {have} {thing}. {a} buys {packs} packs with {per_pack} {thing} in each pack, then shares all "
         f"the {thing} equally among {k} friends. How many {thing} does each friend get?")
    steps = [f"The packs hold {packs} * {per_pack} = {bought} {thing}.",
             f"{a} then has {have} + {bought} = {total} {thing}.",
             f"Each friend gets {total} / {k} = {each} {thing}."]
    return q, steps, each


def _t_rates(rng: random.Random) -> tuple[str, list[str], int]:
    a = _pick_names(rng, 1)[0]
    prod = rng.choice(_PRODUCTS)
    r, h, d = rng.randint(2, 12), rng.randint(2, 9), rng.randint(2, 7)
    per_day = r * h
    made = per_day * d
    if rng.random() < 0.5:
        q = (f"{a} makes {r} {prod} every hour and works {h} hours a day. How many {prod} does {a} make "
             f"in {d} days?")
        steps = [f"Each day {a} makes {r} * {h} = {per_day} {prod}.",
                 f"In {d} days {a} makes {per_day} * {d} = {made} {prod}."]
        return q, steps, made
    bad = rng.randint(1, max(1, made // 4))
    price = rng.randint(2, 9)
    good = made - bad
    money = good * price
    q = (f"{a} makes {r} {prod} an hour, {h} hours a day, for {d} days. {bad} of them break, and {a} sells the "
         f"rest for ${price} each. How many dollars does {a} earn?")
    steps = [f"Each day {a} makes {r} * {h} = {per_day} {prod}.",
             f"Over {d} days that is {per_day} * {d} = {made} {prod}.",
             f"After {bad} break, {made} - {bad} = {good} are left.",
             f"Selling them earns {good} * {price} = {money} dollars."]
    return q, steps, money


def _t_savings(rng: random.Random) -> tuple[str, list[str], int]:
    a = _pick_names(rng, 1)[0]
    item = rng.choice(["bike", "guitar", "tablet", "tent", "telescope", "skateboard"])
    allowance = rng.randint(8, 40)
    spend = rng.randint(1, allowance - 2)
    save = allowance - spend
    weeks = rng.randint(2, 15)
    have = rng.randint(0, 60)
    need = weeks * save
    price = have + need
    q = (f"{a} wants a {item} that costs ${price} and already has ${have}. Each week {a} gets ${allowance} "
         f"and spends ${spend} of it. How many weeks until {a} can buy the {item}?")
    steps = [f"{a} saves {allowance} - {spend} = {save} dollars a week.",
             f"{a} still needs {price} - {have} = {need} dollars.",
             f"That takes {need} / {save} = {weeks} weeks."]
    return q, steps, weeks


def _t_comparison(rng: random.Random) -> tuple[str, list[str], int]:
    a, b, c = _pick_names(rng, 3)
    _, things = rng.choice(_ITEMS)
    x, k = rng.randint(3, 25), rng.randint(2, 5)
    bx = x * k
    m = rng.randint(1, bx - 1)
    cx = bx - m
    total = x + bx + cx
    q = (f"{a} has {x} {things}. {b} has {k} times as many {things} as {a}, and {c} has {m} fewer {things} "
         f"than {b}. How many {things} do the three of them have together?")
    steps = [f"{b} has {x} * {k} = {bx} {things}.",
             f"{c} has {bx} - {m} = {cx} {things}.",
             f"Together they have {x} + {bx} + {cx} = {total} {things}."]
    return q, steps, total


def _t_travel(rng: random.Random) -> tuple[str, list[str], int]:
    a = _pick_names(rng, 1)[0]
    veh = rng.choice(_VEHICLES)
    v1, h1 = rng.randint(20, 70), rng.randint(1, 5)
    v2, h2 = rng.randint(20, 70), rng.randint(1, 5)
    d1, d2 = v1 * h1, v2 * h2
    total = d1 + d2
    if rng.random() < 0.5 or d1 == d2:
        q = (f"{a} drives a {veh} at {v1} miles per hour for {h1} hours, then at {v2} miles per hour for {h2} "
             f"hours. How many miles does {a} travel in all?")
        steps = [f"The first part is {v1} * {h1} = {d1} miles.",
                 f"The second part is {v2} * {h2} = {d2} miles.",
                 f"In all {a} travels {d1} + {d2} = {total} miles."]
        return q, steps, total
    lo, hi = sorted((d1, d2))
    diff = hi - lo
    q = (f"{a} drives a {veh} at {v1} miles per hour for {h1} hours on Monday and at {v2} miles per hour for "
         f"{h2} hours on Tuesday. How many more miles does {a} drive on the longer day than on the shorter day?")
    steps = [f"On Monday {a} drives {v1} * {h1} = {d1} miles.",
             f"On Tuesday {a} drives {v2} * {h2} = {d2} miles.",
             f"The difference is {hi} - {lo} = {diff} miles."]
    return q, steps, diff


def _t_recipe(rng: random.Random) -> tuple[str, list[str], int]:
    a = _pick_names(rng, 1)[0]
    food, ingr = rng.choice(_BAKED)
    per_batch, ingr_per = rng.randint(6, 24), rng.randint(2, 6)
    batches = rng.randint(2, 9)
    want = per_batch * batches
    needed = batches * ingr_per
    has = rng.randint(1, needed - 1)
    more = needed - has
    q = (f"One batch of {food} makes {per_batch} {food} and uses {ingr_per} {ingr}. {a} wants to make {want} "
         f"{food} and has {has} {ingr}. How many more {ingr} does {a} need?")
    steps = [f"{a} needs {want} / {per_batch} = {batches} batches.",
             f"That uses {batches} * {ingr_per} = {needed} {ingr}.",
             f"{a} needs {needed} - {has} = {more} more {ingr}."]
    return q, steps, more


def _t_ages(rng: random.Random) -> tuple[str, list[str], int]:
    a, b, c = _pick_names(rng, 3)
    x = rng.randint(4, 30)
    y = rng.randint(2, 20)
    bx = x + y
    if bx % 2:
        bx += 1
        y += 1
    cx = bx // 2
    n = rng.randint(2, 10)
    now = x + bx + cx
    later = 3 * n
    total = now + later
    q = (f"{a} is {x} years old. {b} is {y} years older than {a}, and {c} is half as old as {b}. "
         f"What will the sum of their three ages be in {n} years?")
    steps = [f"{b} is {x} + {y} = {bx} years old.",
             f"{c} is {bx} / 2 = {cx} years old.",
             f"Their ages now add up to {x} + {bx} + {cx} = {now} years.",
             f"In {n} years each is {n} years older, which adds 3 * {n} = {later} years.",
             f"The sum will be {now} + {later} = {total} years."]
    return q, steps, total


def _t_discount(rng: random.Random) -> tuple[str, list[str], int]:
    a = _pick_names(rng, 1)[0]
    _, things = rng.choice(_ITEMS)
    pct = rng.choice([10, 20, 25, 50])
    unit = 100 // {10: 10, 20: 20, 25: 25, 50: 50}[pct]  # price must be a multiple of this for a whole discount
    price = unit * rng.randint(2, 30)
    off = price * pct // 100
    new = price - off
    qty = rng.randint(2, 8)
    total = new * qty
    q = (f"A shop sells {things} for ${price} each. During a sale everything is {pct}% off. {a} buys {qty} "
         f"{things} in the sale. How many dollars does {a} pay?")
    steps = [f"The discount is {price} * {pct} / 100 = {off} dollars.",
             f"Each costs {price} - {off} = {new} dollars in the sale.",
             f"{qty} of them cost {new} * {qty} = {total} dollars."]
    return q, steps, total


def _t_one_step(rng: random.Random) -> tuple[str, list[str], int]:
    """Warm-up problems: one operation (small models get some right, so a demo has both right and wrong)."""
    a = _pick_names(rng, 1)[0]
    _, items = rng.choice(_ITEMS)
    kind = rng.randrange(3)
    if kind == 0:
        x, y = rng.randint(2, 30), rng.randint(2, 30)
        q = f"{a} has {x} {items} and gets {y} more. How many {items} does {a} have now?"
        return q, [f"{a} has {x} + {y} = {x + y} {items}."], x + y
    if kind == 1:
        x = rng.randint(10, 40)
        y = rng.randint(1, x - 1)
        q = f"{a} has {x} {items} and gives away {y}. How many {items} does {a} have left?"
        return q, [f"{a} has {x} - {y} = {x - y} {items} left."], x - y
    x, y = rng.randint(2, 9), rng.randint(2, 9)
    q = f"{a} has {x} boxes with {y} {items} in each box. How many {items} does {a} have?"
    return q, [f"{a} has {x} * {y} = {x * y} {items}."], x * y


_TEMPLATES: list[Callable[[random.Random], tuple[str, list[str], int]]] = [
    _t_shopping, _t_sharing, _t_rates, _t_savings, _t_comparison, _t_travel, _t_recipe, _t_ages, _t_discount,
    _t_one_step]


def builtin_problems(count: int, seed: int, split: str = "train", max_steps: Optional[int] = None) -> list[dict]:
    """`count` distinct arithmetic word problems, deterministic in (seed, index): the same seed gives the same
    problems, and a larger count extends a smaller one. `split` is only recorded on the rows. `max_steps` keeps
    only problems whose gold solution has at most that many steps (easier problems for small models)."""
    if count < 0:
        raise ValueError("count must be >= 0")
    rows: list[dict] = []
    seen: set[str] = set()
    for index in range(count):
        for attempt in range(1000):
            rng = random.Random(f"errata-builtin:{seed}:{index}:{attempt}")
            template = _TEMPLATES[rng.randrange(len(_TEMPLATES))]
            question, steps, answer = template(rng)
            if question not in seen and (max_steps is None or len(steps) <= max_steps):
                break
        else:  # pragma: no cover - the space of problems is far larger than any count we use
            raise RuntimeError("could not generate a distinct problem")
        seen.add(question)
        assert isinstance(answer, int) and answer >= 0
        solution = "\n".join(steps + [f"#### {answer}"])
        rows.append({
            "problem_id": (make_id("builtin", seed, index, prefix="p-") if max_steps is None
                           else make_id("builtin", seed, f"max{max_steps}", index, prefix="p-")),
            "source": BUILTIN_SOURCE,
            "split": split,
            "source_index": index,
            "question": question,
            "reference_solution": solution,
            "reference_answer": str(answer),
            "env": None,
            "env_config_json": None,
            "parent_ids": [],
        })
    return rows
