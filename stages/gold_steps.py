"""Structured gold steps of the built-in problems (stages/arithmetic.py describes the format): `Operand`,
`GoldStep`, applying and rendering a step's calculation, the JSON round trip, and `gold_steps(row)`, which reads a
row's `gold_steps_json` or rebuilds the steps from its text (`parse_gold_steps`)."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Optional, Sequence


OPERAND_KINDS = ("question", "step", "constant")
OPS = ("+", "-", "*", "/")


@dataclass(frozen=True)
class Operand:
    """One number in a step's calculation. `step` is set for kind 'step'; `role` for kind 'constant'."""

    kind: str
    value: int
    step: Optional[int] = None
    role: Optional[str] = None

    def to_dict(self) -> dict:
        return {"kind": self.kind, "value": self.value, "step": self.step, "role": self.role}


@dataclass(frozen=True)
class GoldStep:
    """A gold step: `text` (the solution line) writes out `expression` = operands joined by ops, '=', result."""

    index: int
    ops: tuple[str, ...]
    operands: tuple[Operand, ...]
    result: int
    text: str

    @property
    def op(self) -> str:
        """The step's operation: one of + - * /, or 'mixed' when it chains different ones."""
        return self.ops[0] if len(set(self.ops)) == 1 else "mixed"

    @property
    def expression(self) -> str:
        return render_expression(self.ops, [o.value for o in self.operands], self.result)

    def to_dict(self) -> dict:
        return {"index": self.index, "ops": list(self.ops), "operands": [o.to_dict() for o in self.operands],
                "result": self.result, "text": self.text}

    @staticmethod
    def from_dict(d: dict) -> "GoldStep":
        return GoldStep(index=int(d["index"]), ops=tuple(d["ops"]),
                        operands=tuple(Operand(o["kind"], o["value"], o.get("step"), o.get("role"))
                                       for o in d["operands"]),
                        result=d["result"], text=d["text"])


def apply_ops(ops: Sequence[str], values: Sequence[Any]) -> Fraction:
    """Left-to-right value of values[0] ops[0] values[1] ... (exact; ZeroDivisionError on a division by 0)."""
    if len(values) != len(ops) + 1 or not values:
        raise ValueError(f"{len(ops)} ops need {len(ops) + 1} operands, got {len(values)}")
    acc = Fraction(values[0])
    for op, v in zip(ops, values[1:]):
        v = Fraction(v)
        if op == "+":
            acc += v
        elif op == "-":
            acc -= v
        elif op == "*":
            acc *= v
        elif op == "/":
            acc /= v
        else:
            raise ValueError(f"unknown operation {op!r}")
    return acc


def render_expression(ops: Sequence[str], values: Sequence[Any], result: Any) -> str:
    """'a * b = c', the way the gold solutions write a calculation."""
    parts = [str(values[0])]
    for op, v in zip(ops, values[1:]):
        parts += [op, str(v)]
    return " ".join(parts) + f" = {result}"



def gold_steps_to_json(steps: Sequence[GoldStep]) -> str:
    return json.dumps([s.to_dict() for s in steps], separators=(",", ":"))


def gold_steps_from_json(text: str) -> list[GoldStep]:
    return [GoldStep.from_dict(d) for d in json.loads(text)]


_EXPR = re.compile(r"(?<!\d)(?<!\d\.)(\d+(?: [-+*/] \d+)+) = (\d+)(?!\d|\.\d)")


_NUM_IN_TEXT = re.compile(r"(?<!\d)(?<!\d\.)\d+(?!\d|\.\d)")
# numbers a question implies in words: (value, the operation just before it, a cue in the question) -> role
# ("after /": the number follows a '/'; "first *": the number opens a product)
_IMPLIED = ((2, "after /", re.compile(r"\bhalf\b", re.IGNORECASE), "half"),
            (100, "after /", re.compile(r"%"), "percent"),
            (3, "first *", re.compile(r"\btheir three\b", re.IGNORECASE), "count"))


def parse_gold_steps(question: str, solution: str) -> Optional[list[GoldStep]]:
    """Rebuild structured steps from a built-in problem's question and gold solution text; None when a step line
    does not write out exactly one calculation 'a op b ... = c' whose arithmetic holds.

    An operand can be: a number the question implies in words (2 after '/' with "half", 100 after '/' with a
    '%', 3 opening a product with "their three"), a number of the question, or the
    result of an earlier step with that value; a number that is none of these is a constant without a role.
    Of all readings in which every step but the last is used later, the first in that order of preference is
    taken (a search over the few ambiguous operands)."""
    if not solution:
        return None
    lines = [ln for ln in solution.split("\n") if ln.strip() and not ln.startswith("####")]
    question = question or ""
    in_question = {int(n) for n in _NUM_IN_TEXT.findall(question)}
    parsed: list[tuple[str, tuple[str, ...], list[int], int]] = []
    for line in lines:
        found = _EXPR.findall(line)
        if len(found) != 1:
            return None
        expr, res = found[0]
        toks = expr.split(" ")
        values, ops = [int(t) for t in toks[0::2]], tuple(toks[1::2])
        try:
            if apply_ops(ops, values) != int(res):
                return None
        except ZeroDivisionError:
            return None
        parsed.append((line, ops, values, int(res)))
    if not parsed:
        return None
    results = [r for _, _, _, r in parsed]
    # the readings of each operand, most preferred first
    slots: list[list[Operand]] = []
    for i, (_, ops, values, _) in enumerate(parsed):
        for pos, v in enumerate(values):
            where = f"after {ops[pos - 1]}" if pos else f"first {ops[0]}"
            implied = next((role for val, at, cue, role in _IMPLIED
                            if v == val and at == where and cue.search(question)), None)
            options = [Operand("constant", v, role=implied)] if implied else []
            if v in in_question:
                options.append(Operand("question", v))
            options += [Operand("step", v, step=j + 1) for j in range(i) if results[j] == v]
            slots.append(options or [Operand("constant", v)])
    n_steps = len(parsed)
    chosen: list[Operand] = []

    def search(k: int) -> bool:
        if k == len(slots):
            used = {o.step for o in chosen if o.kind == "step"}
            return all(j in used for j in range(1, n_steps))
        for option in slots[k]:
            chosen.append(option)
            if search(k + 1):
                return True
            chosen.pop()
        return False

    if not search(0):  # no reading uses every step: take the first choices
        chosen = [options[0] for options in slots]
    out: list[GoldStep] = []
    k = 0
    for i, (line, ops, values, res) in enumerate(parsed, 1):
        out.append(GoldStep(i, ops, tuple(chosen[k:k + len(values)]), res, line))
        k += len(values)
    return out


def gold_steps(problem_row: dict) -> Optional[list[GoldStep]]:
    """The structured gold steps of a built-in problem row: its `gold_steps_json` when present (exact), else
    rebuilt from its question and reference_solution (`parse_gold_steps`); None when neither works."""
    js = problem_row.get("gold_steps_json")
    if js:
        return gold_steps_from_json(js)
    return parse_gold_steps(problem_row.get("question") or "", problem_row.get("reference_solution") or "")
