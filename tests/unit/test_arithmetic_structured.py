"""stages.gold_steps: structured gold steps, and stages.arithmetic's generator text unchanged by them."""
import hashlib
import json
import re
from fractions import Fraction
from pathlib import Path

import pytest

from stages.arithmetic import builtin_problems
from stages.gold_steps import (GoldStep, Operand, apply_ops, gold_steps, gold_steps_from_json, gold_steps_to_json,
                               parse_gold_steps, render_expression)

FIXTURE = Path(__file__).parent / "fixtures" / "builtin_arithmetic_hashes.json"
_NUM = re.compile(r"(?<!\d)(?<!\d\.)\d+(?!\d|\.\d)")


def _row_hash(row: dict) -> str:
    row = {k: v for k, v in row.items() if k != "gold_steps_json"}
    return hashlib.sha256(json.dumps(row, sort_keys=True).encode()).hexdigest()[:16]


@pytest.mark.parametrize("key,kwargs", [("seed=0", dict(seed=0)), ("seed=1", dict(seed=1)), ("seed=2", dict(seed=2)),
                                        ("seed=0,max_steps=3", dict(seed=0, max_steps=3)),
                                        ("seed=7,split=test", dict(seed=7, split="test"))])
def test_rows_are_byte_identical_to_before_structured_steps(key, kwargs):
    """Hashes of the first 300 rows, captured from the generator before gold steps were added (commit 826abb6)."""
    expected = json.loads(FIXTURE.read_text())["rows"][key]
    got = [_row_hash(r) for r in builtin_problems(300, **kwargs)]
    assert got == expected


def test_the_fixture_covers_questions_solutions_and_ids():
    row = builtin_problems(1, seed=0)[0]
    tampered = dict(row, question=row["question"] + " ")
    assert _row_hash(tampered) != _row_hash(row)
    assert _row_hash(dict(row, problem_id="p-x")) != _row_hash(row)


def _check_structure(row: dict, steps: list) -> None:
    lines = row["reference_solution"].split("\n")[:-1]
    assert [s.text for s in steps] == lines
    q_numbers = {int(n) for n in _NUM.findall(row["question"])}
    for i, s in enumerate(steps, 1):
        assert s.index == i
        assert len(s.ops) == len(s.operands) - 1 and set(s.ops) <= {"+", "-", "*", "/"}
        assert apply_ops(s.ops, [o.value for o in s.operands]) == s.result
        assert s.expression in s.text
        for o in s.operands:
            assert o.kind in ("question", "step", "constant")
            if o.kind == "step":
                assert 1 <= o.step < i and steps[o.step - 1].result == o.value
            else:
                assert o.step is None
            if o.kind == "question":
                assert o.value in q_numbers, (o, row["question"])
    assert str(steps[-1].result) == row["reference_answer"]


def test_every_row_carries_exact_structured_steps():
    ops_seen, roles = set(), set()
    for seed in (0, 1, 2):
        for row in builtin_problems(300, seed):
            steps = gold_steps_from_json(row["gold_steps_json"])
            _check_structure(row, steps)
            used = {o.step for s in steps for o in s.operands if o.kind == "step"}
            assert used == set(range(1, len(steps)))     # every intermediate result is used later
            for s in steps:
                ops_seen.add(s.op)
                roles |= {o.role for o in s.operands if o.kind == "constant"}
                assert all(o.role for o in s.operands if o.kind == "constant")
    assert ops_seen == {"+", "-", "*", "/", "mixed"}
    assert roles == {"half", "count", "percent"}


def test_a_known_problem():
    row = builtin_problems(1, seed=0)[0]
    assert row["question"].startswith("A shop sells cupcakes for $100 each. During a sale everything is 25% off.")
    steps = gold_steps(row)
    assert [(s.ops, [(o.kind, o.value, o.step, o.role) for o in s.operands], s.result) for s in steps] == [
        (("*", "/"), [("question", 100, None, None), ("question", 25, None, None), ("constant", 100, None, "percent")],
         25),
        (("-",), [("question", 100, None, None), ("step", 25, 1, None)], 75),
        (("*",), [("step", 75, 2, None), ("question", 2, None, None)], 150)]
    assert steps[0].op == "mixed" and steps[1].op == "-"
    assert steps[0].expression == "100 * 25 / 100 = 25"


def test_json_round_trip():
    row = builtin_problems(5, seed=3)[4]
    steps = gold_steps(row)
    assert gold_steps_from_json(gold_steps_to_json(steps)) == steps
    assert GoldStep.from_dict(steps[0].to_dict()) == steps[0]
    d = json.loads(row["gold_steps_json"])[0]
    assert set(d) == {"index", "ops", "operands", "result", "text"}
    assert set(d["operands"][0]) == {"kind", "value", "step", "role"}


def test_apply_ops_and_render():
    assert apply_ops(("*", "/"), [100, 25, 100]) == 25
    assert apply_ops(("-",), [3, 5]) == -2
    assert apply_ops(("/",), [7, 2]) == Fraction(7, 2)
    assert render_expression(("+", "+"), [1, 2, 3], 6) == "1 + 2 + 3 = 6"
    with pytest.raises(ZeroDivisionError):
        apply_ops(("/",), [1, 0])
    with pytest.raises(ValueError):
        apply_ops(("+",), [1])
    with pytest.raises(ValueError):
        apply_ops(("^",), [1, 2])


def test_rows_without_the_field_are_rebuilt_from_text():
    """What a row read back from storage gets (the Problem schema has no gold_steps_json column yet)."""
    exact = total = 0
    for seed in (0, 1, 2):
        for row in builtin_problems(300, seed):
            bare = {k: v for k, v in row.items() if k != "gold_steps_json"}
            rebuilt = gold_steps(bare)
            _check_structure(row, rebuilt)
            exact += rebuilt == gold_steps(row)
            total += 1
    assert exact / total > 0.95, exact / total


def test_parse_gold_steps_rejects_text_it_cannot_read():
    assert parse_gold_steps("q", "") is None
    assert parse_gold_steps("q", "#### 5") is None
    assert parse_gold_steps("Sam has 2 and 3.", "He has 2 + 3 = 6.\n#### 6") is None     # wrong arithmetic
    assert parse_gold_steps("Sam has 2 and 3.", "He has five.\n#### 5") is None           # no calculation
    assert parse_gold_steps("x", "1 + 1 = 2 and 2 + 2 = 4\n#### 4") is None                # two calculations
    assert parse_gold_steps("x", "It is 4 / 0 = 0.\n#### 0") is None
    steps = parse_gold_steps("Sam has 2 apples and 3 pears.", "He has 2 + 3 = 5 fruits.\nTwice that is 5 * 2 = 10.")
    assert [[(o.kind, o.step) for o in s.operands] for s in steps] == [[("question", None), ("question", None)],
                                                                       [("step", 1), ("question", None)]]
    assert Operand("question", 2) == steps[0].operands[0]
