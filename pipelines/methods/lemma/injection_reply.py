"""Parse a teacher's injected-error solution (pipelines/methods/lemma/prompts/lemma_inject.txt).

The prompt asks for a solution written by a careless student that ends with a line ``The answer is: X``, then the
teacher's note inside ``<explanation>...</explanation>``. `parse_injection(raw)` splits the two and extracts the
final answer, keeping the raw text and a `parse_ok` flag with a reason:

- ``empty``            -- nothing was written;
- ``no_solution``      -- nothing before the explanation;
- ``no_final_answer``  -- the solution has no "The answer is: X" line (a last number is not taken as one);
- ``no_explanation``   -- no ``<explanation>`` block (nor an "Explanation:" line) or an empty one.

An unclosed ``<explanation>`` (cut by max_tokens or a stop string) still counts: the explanation runs to the end.
Text after the answer line and before the explanation (a stray note) is dropped from the solution.
`injection_drop_reason` adds LEMMA's filter: an injection whose answer equals the reference is not an error.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Optional

from stages.answers import extract_answer, normalize_number
from stages.engines.base import Constraint
from stages.formats import LINE, OutputFormat, literal, text_budget

__all__ = ["InjectionParse", "parse_injection", "injection_drop_reason", "same_answer"]

ANSWER_LINE = "The answer is: "                    # what the prompt asks the solution to end with
OPEN_TAG, CLOSE_TAG = "<explanation>", "</explanation>"
_OPEN = re.compile(r"<\s*explanation\s*>", re.IGNORECASE)
_CLOSE = re.compile(r"<\s*/\s*explanation\s*>", re.IGNORECASE)
_EXPLANATION_LINE = re.compile(r"^[ \t]*(?:\*\*|#+[ \t]*)?explanation(?:\*\*)?[ \t]*:(?:\*\*)?[ \t]*",
                               re.IGNORECASE | re.MULTILINE)
_LEADING_LABEL = re.compile(
    r"^\s*(?:\[\s*(?:solution|proposed solution|answer|student solution)\s*\]|(?:\*\*)?(?:solution|"
    r"(?:the\s+)?(?:careless\s+)?student'?s?\s+solution|proposed solution)(?:\*\*)?\s*:(?:\*\*)?)\s*",
    re.IGNORECASE)
_ANSWER_LINE = re.compile(r"^.*\bthe\s+(?:final\s+)?answer\s+is\b.*$", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class InjectionParse:
    solution: str
    explanation: Optional[str]
    final_answer: Optional[str]
    parse_ok: bool
    reason: Optional[str]
    raw_text: str


def parse_injection(raw: Optional[str]) -> InjectionParse:
    """Split an injected solution from its explanation and read its final answer. Never raises."""
    raw_text = raw if isinstance(raw, str) else ""
    if not raw_text.strip():
        return InjectionParse("", None, None, False, "empty", raw_text)
    explanation: Optional[str] = None
    m = _OPEN.search(raw_text)
    if m:
        solution = raw_text[:m.start()]
        c = _CLOSE.search(raw_text, m.end())
        explanation = raw_text[m.end():c.start() if c else len(raw_text)].strip()
    else:
        lines = list(_EXPLANATION_LINE.finditer(raw_text))
        if lines:
            solution = raw_text[:lines[-1].start()]
            explanation = raw_text[lines[-1].end():].strip()
        else:
            solution = _CLOSE.split(raw_text)[0]
    solution = _LEADING_LABEL.sub("", solution, count=1)
    answer_lines = list(_ANSWER_LINE.finditer(solution))
    if answer_lines:
        solution = solution[:answer_lines[-1].end()]
    solution = solution.strip()
    ans = extract_answer(solution) if solution else None
    final = str(ans) if ans is not None and ans.method == "answer_is" else None
    reason = None
    if not solution:
        reason = "no_solution"
    elif final is None:
        reason = "no_final_answer"
    elif not explanation:
        reason = "no_explanation"
    return InjectionParse(solution, explanation or None, final, reason is None, reason, raw_text)


class InjectionFormat(OutputFormat):
    """Solution lines, the line `The answer is: <number>`, then `<explanation>...</explanation>`
    (prompts/lemma_inject.txt): the constraint and `parse_injection` read the same answer line and tags."""
    name, kind = "lemma_injection", "regex"
    max_lines = 6

    def constraint(self, max_tokens: int = 256) -> Constraint:
        budget = text_budget(max_tokens, reserve=48)
        per_line = max(20, budget // (self.max_lines + 2))
        steps = rf"({LINE}{{1,{per_line}}}\n){{1,{self.max_lines}}}"
        answer = r"-?[0-9][0-9,]{0,12}(\.[0-9]{1,4})?"
        note = rf"[^<\n]{{1,{max(20, budget // 4)}}}"
        return Constraint(regex=f"{steps}{literal(ANSWER_LINE)}{answer}\n{literal(OPEN_TAG)}{note}{literal(CLOSE_TAG)}")

    def parse(self, text: str) -> "InjectionParse":
        return parse_injection(text)


def _as_number(s: str) -> Optional[Fraction]:
    s = normalize_number(s).replace("$", "").strip()
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def same_answer(a: str, b: str) -> bool:
    """A light equality for the injection filter: equal numbers ('72', '72.0', '1,000' vs '1000'), else equal
    text ignoring spaces and case. Use the verify stage's checker for LaTeX answers."""
    na, nb = _as_number(a), _as_number(b)
    if na is not None and nb is not None:
        return na == nb
    return re.sub(r"\s+", "", a).casefold() == re.sub(r"\s+", "", b).casefold()


def injection_drop_reason(parsed: InjectionParse, reference_answer: str,
                          equal: Callable[[str, str], bool] = same_answer) -> Optional[str]:
    """Why an injected solution is not kept, or None: its parse reason, or `answer_equals_reference` (an
    "error" that reaches the right answer is no error, LEMMA's filter)."""
    if not parsed.parse_ok:
        return parsed.reason
    if equal(parsed.final_answer or "", reference_answer):
        return "answer_equals_reference"
    return None
