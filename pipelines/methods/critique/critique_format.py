"""The critique format (MathCritique's, `selfimprove/critic.py`): per step a verdict and an explanation, then the
final answer's verdict. One declaration gives the engine's constraint and the parser::

    Step 1:
    Correctness of the step: Correct
    Explanation: 3 * 4 = 12 is right.
    Step 2:
    Correctness of the step: Wrong
    Explanation: 12 + 5 is 17, not 18.
    Correctness of the final answer: Wrong
    Explanation: it carries the wrong sum.

`parse_critique(text, n_steps)` reads that and free-text variants (a "Step sentence: ..." line, markdown bold,
"Incorrect" for Wrong). It is ok only with a verdict for every one of the n steps shown, in order, and one
final-answer verdict; anything else is unparsed with a reason (empty, no_final_verdict, step_count_mismatch,
step_order, several_final_verdicts) and never read as a verdict.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

from stages.engines.base import Constraint
from stages.formats import LINE, OutputFormat, text_budget

STEP_FIELD = "Correctness of the step"
FINAL_FIELD = "Correctness of the final answer"
EXPLANATION_FIELD = "Explanation"
VERDICT_WORDS = ("Correct", "Wrong")
UNPARSED_REASONS = ("empty", "no_final_verdict", "several_final_verdicts", "step_count_mismatch", "step_order")

_V = r"\**\s*(?P<v>correct|wrong|incorrect)\b"
_STEP_VERDICT = re.compile(r"correctness\s+of\s+(?:the\s+)?step\s*\**\s*[:\-]\s*" + _V, re.IGNORECASE)
_FINAL_VERDICT = re.compile(r"correctness\s+of\s+(?:the\s+)?final\s+answer\s*\**\s*[:\-]\s*" + _V, re.IGNORECASE)
_STEP_HEADER = re.compile(r"(?:^|\n)\s*[#*\s]*step\s*(?P<n>\d{1,3})\b", re.IGNORECASE)
_EXPLANATION = re.compile(r"explanation\s*\**\s*[:\-]\s*\**\s*(?P<e>[^\n]*)", re.IGNORECASE)


@dataclass(frozen=True)
class CritiqueResult:
    parse_ok: bool
    reason: Optional[str]
    verdicts: list = field(default_factory=list)        # per step: (verdict "correct"/"wrong", explanation)
    final_correct: Optional[bool] = None
    final_explanation: str = ""

    @property
    def first_wrong_step(self) -> Optional[int]:
        if not self.parse_ok:
            return None
        return next((i for i, (v, _) in enumerate(self.verdicts, 1) if v == "wrong"), None)

    @property
    def consistent(self) -> Optional[bool]:
        if not self.parse_ok:
            return None
        return (self.first_wrong_step is not None) == (self.final_correct is False)


def _verdict(word: str) -> str:
    return "correct" if word.lower() == "correct" else "wrong"


def _explanation(text: str, start: int, end: int) -> str:
    m = _EXPLANATION.search(text, start, end)
    return m.group("e").strip().strip("*").strip() if m else ""


def parse_critique(text: Optional[str], n_steps: int) -> CritiqueResult:
    """See the module doc."""
    text = text or ""
    if not text.strip():
        return CritiqueResult(False, "empty")
    finals = list(_FINAL_VERDICT.finditer(text))
    if not finals:
        return CritiqueResult(False, "no_final_verdict")
    if len({_verdict(m.group("v")) for m in finals}) > 1:
        return CritiqueResult(False, "several_final_verdicts")
    final = finals[0]
    steps = [m for m in _STEP_VERDICT.finditer(text) if m.start() < final.start()]
    if len(steps) != n_steps:
        return CritiqueResult(False, "step_count_mismatch")
    verdicts, prev_end = [], 0
    for k, m in enumerate(steps, 1):
        headers = [h for h in _STEP_HEADER.finditer(text, prev_end, m.start())]
        if headers and int(headers[-1].group("n")) != k:
            return CritiqueResult(False, "step_order")
        nxt = steps[k].start() if k < len(steps) else final.start()
        verdicts.append((_verdict(m.group("v")), _explanation(text, m.end(), nxt)))
        prev_end = m.end()
    nxt_final = finals[1].start() if len(finals) > 1 else len(text)
    return CritiqueResult(True, None, verdicts, _verdict(final.group("v")) == "correct",
                          _explanation(text, final.end(), nxt_final))


def format_critique(labels: list[tuple[str, str]], final_correct: bool, final_explanation: str = "ok") -> str:
    """The format the prompt asks for, from (verdict, explanation) per step (tests, few-shot examples)."""
    out = []
    for i, (v, e) in enumerate(labels, 1):
        out += [f"Step {i}:", f"{STEP_FIELD}: {'Correct' if v == 'correct' else 'Wrong'}", f"{EXPLANATION_FIELD}: {e}"]
    out += [f"{FINAL_FIELD}: {'Correct' if final_correct else 'Wrong'}", f"{EXPLANATION_FIELD}: {final_explanation}"]
    return "\n".join(out)


class CritiqueFormat(OutputFormat):
    """Exactly n step blocks (header, verdict, one-line explanation) and the final verdict: the constraint and
    `parse_critique` read the same fields."""
    name, kind = "critique", "regex"

    def constraint(self, n_steps: int, max_tokens: int = 256) -> Constraint:
        n = max(1, n_steps)
        fixed = 14 * (n + 1) + 8                         # tokens of the fixed parts, generously
        per = max(8, min(160, text_budget(max_tokens, reserve=fixed) // (n + 1)))
        expl = f"{EXPLANATION_FIELD}: {LINE}{{1,{per}}}"
        verdict = "(" + "|".join(VERDICT_WORDS) + ")"
        blocks = "".join(f"Step {i}:\n{STEP_FIELD}: {verdict}\n{expl}\n" for i in range(1, n + 1))
        return Constraint(regex=f"{blocks}{FINAL_FIELD}: {verdict}\n{expl}")

    def parse(self, text: str, n_steps: int) -> CritiqueResult:
        return parse_critique(text, n_steps)
