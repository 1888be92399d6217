"""Task sources: where problems come from.

- `builtin_problems(count, seed)`: seeded multi-step arithmetic word problems written here (offline, no download),
  each with a GSM8K-style gold solution (one step a line, the arithmetic written out, last line `#### N`).
- `load_problems(config)`: dispatch on `TaskSourceConfig.kind`: builtin, jsonl, parquet, hf (`datasets`).

Files are GSM8K-style (`question`, `answer` ending in `#### N`) or MATH-style (`problem`, `solution` ending in a
`\\boxed{}`, optional `answer`); fields are auto-detected or named in the config. Input is validated in full
before anything runs: the first bad row raises `InputError` naming the file, the 1-based line (JSONL) or row
(Parquet, datasets) and the field.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

from schemas.errors import InputError
from schemas.rows import make_id
from stages.answers import reference_answer_from_solution

__all__ = ["builtin_problems", "load_problems", "problems_from_records", "BUILTIN_SOURCE"]

BUILTIN_SOURCE = "builtin:arithmetic"

# ---------------------------------------------------------------------------------------------------------------
# Built-in generator
# ---------------------------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------------------------
# File and dataset sources
# ---------------------------------------------------------------------------------------------------------------

_QUESTION_FIELDS = ("question", "problem")
_ANSWER_FIELDS = ("answer",)
_SOLUTION_FIELDS = ("solution",)


def _type_name(v: Any) -> str:
    return type(v).__name__


def _detect(first: dict, configured: Optional[str], candidates: tuple[str, ...]) -> Optional[str]:
    if configured:
        return configured
    return next((c for c in candidates if c in first), None)


class _RowParser:
    """Turns one source record into a Problem row; raises InputError naming path/line/field."""

    def __init__(self, config, source: str, path: str, first: dict, where: str):
        self.config, self.source, self.path, self.where = config, source, path, where
        self.q_field = _detect(first, config.question_field, _QUESTION_FIELDS)
        self.a_field = _detect(first, config.answer_field, _ANSWER_FIELDS)
        self.s_field = _detect(first, config.solution_field, _SOLUTION_FIELDS)
        if self.q_field is None:
            raise InputError(f"no question field: the first {where} has fields {sorted(first)}; expected one of "
                             f"{list(_QUESTION_FIELDS)} (or set tasks.question_field)", path=path, line=1,
                             field="question")
        if self.a_field is None and self.s_field is None:
            raise InputError(f"no answer field: the first {where} has fields {sorted(first)}; expected "
                             f"'answer' (GSM8K '#### N' or a final answer) or 'solution' with a \\boxed{{}} "
                             f"(or set tasks.answer_field / tasks.solution_field)", path=path, line=1,
                             field="answer")

    def _get(self, rec: dict, field: str, line: int, *, required: bool, kinds: tuple[type, ...] = (str,)):
        if field not in rec or rec[field] is None:
            if required:
                raise InputError(f"missing field '{field}' (the {self.where} has {sorted(rec)})", path=self.path,
                                 line=line, field=field)
            return None
        v = rec[field]
        if isinstance(v, bool) or not isinstance(v, kinds):
            want = " or ".join(k.__name__ for k in kinds)
            raise InputError(f"expected {'string' if kinds == (str,) else want}, got {_type_name(v)} "
                             f"({str(v)[:60]!r})", path=self.path, line=line, field=field)
        return v

    def parse(self, rec: Any, line: int, index: int) -> dict:
        if not isinstance(rec, dict):
            raise InputError(f"expected a JSON object per {self.where}, got {_type_name(rec)}", path=self.path,
                             line=line)
        question = self._get(rec, self.q_field, line, required=True)
        if not question.strip():
            raise InputError("question is empty", path=self.path, line=line, field=self.q_field)
        solution = None
        if self.s_field:
            solution = self._get(rec, self.s_field, line, required=self.a_field is None)
        answer_raw = None
        if self.a_field:
            answer_raw = self._get(rec, self.a_field, line, required=solution is None, kinds=(str, int, float))
        if answer_raw is not None and not isinstance(answer_raw, str):
            answer_raw = str(answer_raw)
        reference: Optional[str]
        if answer_raw is not None and answer_raw.strip():
            if "####" in answer_raw or "\\boxed" in answer_raw or "\n" in answer_raw.strip():
                # a worked solution in the answer field (GSM8K: steps, then '#### N')
                reference = reference_answer_from_solution(answer_raw)
                if not reference:
                    raise InputError(f"no extractable final answer: expected a '#### N' line or a \\boxed{{...}} "
                                     f"(got ...{answer_raw[-80:]!r})", path=self.path, line=line,
                                     field=self.a_field)
                if solution is None:
                    solution = answer_raw
            else:  # a final answer (MATH: 'answer' next to 'solution')
                reference = answer_raw.strip()
        else:  # no answer given: take it from the solution's last \boxed{}
            reference = reference_answer_from_solution(solution) if solution else None
            if not reference:
                field = self.s_field if solution is not None else self.a_field
                text = solution if solution is not None else (answer_raw or "")
                raise InputError(f"no extractable final answer: expected a '#### N' line or a \\boxed{{...}} "
                                 f"(got ...{text[-80:]!r})", path=self.path, line=line, field=field)
        ident: Any = index
        if self.config.id_field:
            ident = self._get(rec, self.config.id_field, line, required=True, kinds=(str, int))
        return {
            "problem_id": make_id(self.source, self.config.split, ident, prefix="p-"),
            "source": self.source,
            "split": self.config.split,
            "source_index": index,
            "question": question,
            "reference_solution": solution,
            "reference_answer": reference,
            "env": None,
            "env_config_json": None,
            "parent_ids": [],
        }


def problems_from_records(records: Iterable[tuple[int, Any]], config, *, source: str, path: str,
                          where: str = "row", limit: Optional[int] = None) -> list[dict]:
    """Validate and convert (1-based position, record) pairs. Fails on the first bad record."""
    out: list[dict] = []
    if limit is not None and limit <= 0:
        return out
    parser: Optional[_RowParser] = None
    for pos, rec in records:
        if limit is not None and len(out) >= limit:
            break
        if parser is None:
            if not isinstance(rec, dict):
                raise InputError(f"expected a JSON object per {where}, got {_type_name(rec)}", path=path,
                                 line=pos)
            parser = _RowParser(config, source, path, rec, where)
        out.append(parser.parse(rec, pos, pos))
    if not out:
        raise InputError(f"no problems: the input is empty (no {where}s with data)", path=path)
    return out


def _check_file(path: Optional[str], kind: str) -> Path:
    if not path:
        raise InputError(f"tasks.kind={kind} needs tasks.path", field="tasks.path")
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError("file not found", path=str(path))
    if p.is_dir():
        raise InputError(f"is a directory, expected a {kind} file (use tasks.kind=hf for a dataset directory)",
                         path=str(path))
    return p


def _jsonl_records(p: Path) -> Iterator[tuple[int, Any]]:
    with p.open("r", encoding="utf-8") as f:
        lineno = 0
        while True:
            try:
                line = f.readline()
            except UnicodeDecodeError as e:
                raise InputError(f"not UTF-8 text: {e.reason}", path=str(p), line=lineno + 1) from None
            if not line:
                return
            lineno += 1
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"malformed JSON: {e.msg} at column {e.colno}", path=str(p),
                                 line=lineno) from None
            yield lineno, rec


def _parquet_records(p: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq
    try:
        pf = pq.ParquetFile(p)
    except Exception as e:  # pyarrow raises ArrowInvalid on a non-Parquet file
        raise InputError(f"not a readable Parquet file: {e}", path=str(p)) from None
    n = 0
    for batch in pf.iter_batches(batch_size=4096):
        for rec in batch.to_pylist():
            n += 1
            yield n, rec


def _load_hf(config, limit: Optional[int]) -> list[dict]:
    path = config.path
    if not path:
        raise InputError("tasks.kind=hf needs tasks.path (a local dataset path or a hub id)", field="tasks.path")
    try:
        import datasets
    except ImportError as e:  # pragma: no cover - datasets is a dependency
        raise InputError(f"the 'datasets' package is needed for tasks.kind=hf: {e}") from None
    p = Path(path).expanduser()
    split = config.split
    try:
        if p.is_dir() and ((p / "state.json").exists() or (p / "dataset_dict.json").exists()):
            ds = datasets.load_from_disk(str(p))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise InputError(f"split '{split}' not in the saved dataset (splits: {sorted(ds)})",
                                     path=path, field="split")
                ds = ds[split]
        elif p.is_file():
            builder = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}.get(p.suffix)
            if builder is None:
                raise InputError(f"unknown file type '{p.suffix}' for tasks.kind=hf (use .jsonl/.json/.parquet/.csv, "
                                 f"or tasks.kind=jsonl/parquet)", path=path)
            ds = datasets.load_dataset(builder, data_files={split: str(p)}, split=split)
        elif p.exists():
            ds = datasets.load_dataset(str(p), split=split)
        else:
            ds = datasets.load_dataset(path, split=split)
    except InputError:
        raise
    except ValueError as e:
        if "split" in str(e).lower():
            raise InputError(f"split '{split}' not found: {e}", path=path, field="split") from None
        raise InputError(f"could not load dataset: {e}", path=path) from None
    except Exception as e:
        where = "local path" if p.exists() else "hub id (not a local path; loading from the hub needs network " \
                                                "access, so offline use a local copy)"
        raise InputError(f"could not load dataset as a {where}: {type(e).__name__}: {e}", path=path) from None
    source = p.name if p.exists() else path
    records = ((i + 1, rec) for i, rec in enumerate(ds))
    return problems_from_records(records, config, source=source, path=path, where="row", limit=limit)


def load_problems(config, limit: Optional[int] = None) -> list[dict]:
    """Problems of a task source (`TaskSourceConfig`), at most `limit`. Raises InputError on bad input."""
    kind = config.kind
    if kind == "builtin":
        n = config.count if limit is None else min(config.count, limit)
        return builtin_problems(n, config.seed, config.split, config.max_steps)
    if kind == "jsonl":
        p = _check_file(config.path, kind)
        return problems_from_records(_jsonl_records(p), config, source=p.name, path=str(config.path),
                                     where="line", limit=limit)
    if kind == "parquet":
        p = _check_file(config.path, kind)
        return problems_from_records(_parquet_records(p), config, source=p.name, path=str(config.path),
                                     where="row", limit=limit)
    if kind == "hf":
        return _load_hf(config, limit)
    raise InputError(f"unknown task source kind '{kind}'", field="tasks.kind")
