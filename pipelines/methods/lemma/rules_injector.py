"""Programmatic error injection for the built-in arithmetic problems (no LLM), with exact first-error steps.

LEMMA asks a teacher model to write wrong solutions of a given error type; for our own arithmetic problems we can
make them mechanically and *know* where they go wrong. From a problem's structured gold steps
(`stages.gold_steps.gold_steps`) the injector lists every mechanical error of a type, recomputes the later steps
with the wrong value (so the error propagates to the answer), and keeps only errors whose final answer differs
from the gold one and whose values stay non-negative whole numbers. One is drawn with a seeded RNG, so a
(problem, type, seed, sample) always gives the same injection.

Error types (taxonomy labels):
- ``calculation_error``                     -- a step's result is worked out wrongly (off by 1, 2 or 10, or two
                                               digits swapped); operands and operation stay right.
- ``operator_error``                        -- a step uses another operation on the same numbers.
- ``referencing_previous_step_value_error`` -- a step uses the result of a different earlier step.
- ``referencing_context_value_error``       -- a step uses a different number of the question.
- ``missing_step``                          -- a step is left out: a later step uses one of its operands in its
                                               place ("forgot to halve"), or, for the last step, the solution
                                               stops one step early.
- ``counting_error``                        -- an implied count is off by one (the ages template's "their three
                                               ages": 3 people); other templates have nothing to count.
- ``unit_conversion_error`` is not offered: no template converts units (all quantities stay in the unit the
  question uses), so there is no conversion to get wrong.

The record (`RulesInjection`) holds the erroneous solution (step lines in the gold style, then
``The answer is: X``), the type, the gold step where the error was made (`injected_at`), the exact first wrong
step of the erroneous solution (`first_error_step`: 1-based, the first step whose value differs from gold, as
`stages.steps.split_solution` numbers it; the answer line counts as a step, and is the first wrong one when a
solution stops early), an explanation, and the fix & continue revision: the erroneous prefix through the first
wrong step verbatim (author ``model``), one transition phrase (``template``), then a named fix of the step and the
gold continuation ending ``The answer is: <gold>`` (``rules``); loss True on every segment (LEMMA's convention).
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Optional, Sequence

from stages.gold_steps import GoldStep, apply_ops, gold_steps, render_expression
from pipelines.methods.lemma.revision_checks import fix_continue_segments, segments_text
from pipelines.methods.lemma.taxonomy import RULES_INJECTABLE, TRANSITION_PHRASES, choose_transition
from stages.steps import prefix_through, split_solution

__all__ = ["RulesInjection", "InjectResult", "Mutation", "candidate_mutations", "inject_error", "SUPPORTED_TYPES",
           "UNSUPPORTED_TYPES"]

SUPPORTED_TYPES: tuple[str, ...] = RULES_INJECTABLE
UNSUPPORTED_TYPES = {"unit_conversion_error": "no built-in template converts units"}
_NUM_IN_TEXT = re.compile(r"(?<!\d)(?<!\d\.)\d+(?!\d|\.\d)")


@dataclass(frozen=True)
class Mutation:
    """One mechanical error: at gold step `at` (1-based). Fields used depend on `error_type`:
    result (calculation_error), ops (operator_error), operand/value (referencing_*, counting_error),
    operand/value as the stand-in for the skipped step's value (missing_step; operand None: stop early)."""

    error_type: str
    at: int
    result: Optional[int] = None
    ops: Optional[tuple[str, ...]] = None
    operand: Optional[int] = None
    value: Optional[int] = None


@dataclass(frozen=True)
class RulesInjection:
    problem_id: str
    error_type: str
    injected_at: int
    first_error_step: int
    solution: str
    final_answer: str
    gold_answer: str
    explanation: str
    erroneous_prefix: str
    transition: str
    segments: list = field(default_factory=list)
    revision_text: str = ""
    gold_values: list = field(default_factory=list)
    error_values: list = field(default_factory=list)
    n_candidates: int = 0


@dataclass(frozen=True)
class InjectResult:
    """`injection` when one could be made, else `reason`: no_gold_steps, unsupported_type, no_candidate."""

    injection: Optional[RulesInjection]
    reason: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.injection is not None


# --------------------------------------------------------------------------------------------- evaluation

@dataclass(frozen=True)
class _Line:
    gold_index: int               # the gold step this line stands for
    ops: tuple[str, ...]
    values: tuple[int, ...]
    result: int


def _whole(x: Fraction) -> Optional[int]:
    return int(x) if x.denominator == 1 and x >= 0 else None


def _evaluate(steps: Sequence[GoldStep], m: Mutation) -> Optional[list[_Line]]:
    """The erroneous solution's calculations, propagated; None when a value is negative, fractional or a
    division by zero, or the mutation changes nothing at its own step."""
    values: dict[int, int] = {}          # gold index -> erroneous value
    out: list[_Line] = []
    for s in steps:
        if m.error_type == "missing_step" and s.index == m.at:
            if m.operand is None:        # stop early: the last step is never written
                continue
            values[s.index] = m.value    # later steps use the stand-in
            continue
        ops = m.ops if (m.error_type == "operator_error" and s.index == m.at) else s.ops
        vals = []
        for pos, o in enumerate(s.operands):
            v = values[o.step] if o.kind == "step" else o.value
            if s.index == m.at and pos == m.operand and m.error_type in (
                    "referencing_previous_step_value_error", "referencing_context_value_error", "counting_error"):
                v = m.value
            vals.append(v)
        try:
            res = _whole(apply_ops(ops, vals))
        except ZeroDivisionError:
            return None
        if m.error_type == "calculation_error" and s.index == m.at:
            res = m.result
        if res is None:
            return None
        if s.index == m.at and m.error_type != "missing_step" and res == s.result:
            return None                  # e.g. 2 * 2 read as 2 + 2: no visible error
        values[s.index] = res
        out.append(_Line(s.index, tuple(ops), tuple(vals), res))
    return out


def _first_difference(steps: Sequence[GoldStep], lines: Sequence[_Line]) -> int:
    """1-based index of the first erroneous line whose value differs from its gold step's; len(lines)+1 (the
    answer line) when every written line has its gold value."""
    for i, ln in enumerate(lines, 1):
        if ln.result != steps[ln.gold_index - 1].result:
            return i
    return len(lines) + 1


# --------------------------------------------------------------------------------------------- candidates

def _slips(r: int) -> list[int]:
    """Plausible wrong results: off by 1, 2 or 10, or the last two digits swapped (56 -> 65)."""
    out = {r + d for d in (-10, -2, -1, 1, 2, 10)}
    d = str(r)
    if len(d) >= 2 and d[-1] != d[-2] and not (len(d) == 2 and d[-1] == "0"):
        out.add(int(d[:-2] + d[-1] + d[-2]))
    return sorted(x for x in out if x >= 0 and x != r)


def candidate_mutations(steps: Sequence[GoldStep], question: str, error_type: str) -> list[Mutation]:
    """Every mechanical error of `error_type` for these gold steps (before checking its effect)."""
    out: list[Mutation] = []
    q_numbers = sorted({int(n) for n in _NUM_IN_TEXT.findall(question or "")})
    for s in steps:
        if error_type == "calculation_error":
            out += [Mutation(error_type, s.index, result=r) for r in _slips(s.result)]
        elif error_type == "operator_error":
            for p, op in enumerate(s.ops):
                for new in "+-*/":
                    if new != op:
                        out.append(Mutation(error_type, s.index, ops=s.ops[:p] + (new,) + s.ops[p + 1:]))
        elif error_type == "referencing_previous_step_value_error":
            for p, o in enumerate(s.operands):
                if o.kind == "step":
                    for other in steps[:s.index - 1]:
                        if other.index != o.step and other.result != o.value:
                            out.append(Mutation(error_type, s.index, operand=p, value=other.result))
        elif error_type == "referencing_context_value_error":
            for p, o in enumerate(s.operands):
                if o.kind == "question":
                    out += [Mutation(error_type, s.index, operand=p, value=v) for v in q_numbers if v != o.value]
        elif error_type == "counting_error":
            for p, o in enumerate(s.operands):
                if o.kind == "constant" and o.role == "count":
                    out += [Mutation(error_type, s.index, operand=p, value=v) for v in (o.value - 1, o.value + 1)
                            if v >= 1]
        elif error_type == "missing_step":
            if s.index == len(steps):
                if len(steps) >= 2:
                    out.append(Mutation(error_type, s.index))
            else:
                stand_ins = sorted({o.value for o in s.operands if o.kind != "constant" and o.value != s.result})
                out += [Mutation(error_type, s.index, operand=0, value=v) for v in stand_ins]
    return out


# --------------------------------------------------------------------------------------------- text

def _line_text(step: GoldStep, line: _Line) -> str:
    return step.text.replace(step.expression, render_expression(line.ops, line.values, line.result), 1)


def _lhs(ops: Sequence[str], values: Sequence[int]) -> str:
    return render_expression(ops, values, 0).rsplit(" = ", 1)[0]


def _describe(steps: Sequence[GoldStep], m: Mutation, lines: Sequence[_Line]) -> tuple[str, str]:
    """(fix sentence for the revision, explanation for the record)."""
    g = steps[m.at - 1]
    gold_lhs = _lhs(g.ops, [o.value for o in g.operands])
    by_gold = {ln.gold_index: ln for ln in lines}
    line = by_gold.get(m.at)
    if m.error_type == "calculation_error":
        fix = f"The arithmetic there is wrong: {gold_lhs} is {g.result}, not {line.result}."
        why = f"{gold_lhs} is worked out as {line.result} instead of {g.result}."
    elif m.error_type == "operator_error":
        wrong_lhs = _lhs(line.ops, line.values)
        fix = f"That step uses the wrong operation: it should be {gold_lhs}, not {wrong_lhs}."
        why = f"the step computes {wrong_lhs} where {gold_lhs} is needed."
    elif m.error_type == "referencing_previous_step_value_error":
        right = g.operands[m.operand].value
        fix = f"That step uses the wrong earlier result: it needs {right}, not {m.value}."
        why = f"the step uses {m.value}, another step's result, where the earlier result {right} belongs."
    elif m.error_type == "referencing_context_value_error":
        right = g.operands[m.operand].value
        fix = f"I took the wrong number from the question: it should be {right}, not {m.value}."
        why = f"the step uses {m.value} from the question where {right} belongs."
    elif m.error_type == "counting_error":
        right = g.operands[m.operand].value
        fix = f"I miscounted: there are {right} of them, not {m.value}."
        why = f"the step counts {m.value} where there are {right}."
    elif m.operand is None:
        fix = "I stopped one step too early; there is one more step to do."
        why = f"the last step ({g.text}) is never done, so the solution ends at {lines[-1].result}."
    else:
        fix = "I skipped a step before this one."
        why = (f"the step '{g.text}' is left out, and a later step uses {m.value} where its result {g.result} "
               f"belongs.")
    return fix, why


def inject_error(problem_row: dict, error_type: Optional[str] = None, *, seed: int = 0, sample: int = 0,
                 types: Sequence[str] = SUPPORTED_TYPES,
                 phrases: Sequence[str] = TRANSITION_PHRASES) -> InjectResult:
    """Inject one error into a built-in problem. `error_type` None draws a type (uniformly among `types` that
    have a candidate); the draw and the choice of error are seeded by (seed, problem_id, type, sample)."""
    steps = gold_steps(problem_row)
    if not steps:
        return InjectResult(None, "no_gold_steps")
    wanted = [error_type] if error_type else list(types)
    if any(t not in SUPPORTED_TYPES for t in wanted):
        return InjectResult(None, "unsupported_type")
    pid = str(problem_row.get("problem_id", ""))
    gold_answer = str(problem_row.get("reference_answer") or steps[-1].result)
    gold_value = steps[-1].result
    valid: dict[str, list[tuple[Mutation, list[_Line]]]] = {}
    for t in wanted:
        for m in candidate_mutations(steps, problem_row.get("question", ""), t):
            lines = _evaluate(steps, m)
            if lines and lines[-1].result != gold_value:
                valid.setdefault(t, []).append((m, lines))
    if not valid:
        return InjectResult(None, "no_candidate")
    rng = random.Random(f"errata-rules-inject:{seed}:{pid}:{error_type or 'any'}:{sample}")
    chosen_type = rng.choice(sorted(valid))
    m, lines = rng.choice(valid[chosen_type])

    texts = [_line_text(steps[ln.gold_index - 1], ln) for ln in lines]
    final = str(lines[-1].result)
    solution = "\n".join(texts + [f"The answer is: {final}"])
    first = _first_difference(steps, lines)
    split = split_solution(solution)
    prefix = prefix_through(split, first)

    fix, why = _describe(steps, m, lines)
    if m.error_type == "missing_step":
        if m.operand is None:
            rest = [steps[-1].text]
        else:
            wrong_gold = lines[first - 1].gold_index
            rest = [steps[m.at - 1].text] + [s.text for s in steps[wrong_gold - 1:]]
    else:
        rest = [s.text for s in steps[m.at - 1:]]
    continuation = fix + " " + "\n".join(rest) + f"\nThe answer is: {gold_answer}"
    transition = choose_transition(f"{pid}:{chosen_type}:{seed}:{sample}", phrases)
    segments = fix_continue_segments(prefix, transition, continuation, author="rules")
    explanation = (f"{chosen_type}: {why[0].upper()}{why[1:]} The first wrong step is step {first}; the later "
                   f"steps build on it, so the answer becomes {final} instead of {gold_answer}.")
    return InjectResult(RulesInjection(
        problem_id=pid, error_type=chosen_type, injected_at=m.at, first_error_step=first, solution=solution,
        final_answer=final, gold_answer=gold_answer, explanation=explanation, erroneous_prefix=prefix,
        transition=transition, segments=segments, revision_text=segments_text(segments),
        gold_values=[s.result for s in steps], error_values=[ln.result for ln in lines],
        n_candidates=len(valid[chosen_type])))
