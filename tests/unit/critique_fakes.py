"""The `critique` fake script: a scripted critic and refiner for the critique method's tests (registered on import).

- critic prompts (the reference answer shown): a path whose last "The answer is:" line equals the reference gets
  every step Correct; another gets the steps from step min(2, n) on Wrong and a Wrong final verdict. Critique
  sample 0 names the answer ("the answer should be X"), sample 1 does not (its refinements then fail). A path
  whose text carries "[garble]" gets an unparseable reply.
- refine prompts: with "the answer should be X" in the critique, sample 0 copies the first solution's lines and
  ends in X (verified, past the barrier), sample 1 writes only "The answer is: X" (a shortcut); without it, a
  wrong answer.
- anything else: the `mixed` script (solving prompts).
"""
from __future__ import annotations

import re

from pipelines.methods.critique.critique_format import format_critique
from stages.engines.fake_engine import register_script, request_text, script_mixed

_REF = re.compile(r"Reference answer: ([^\n]+)")
_SHOULD = re.compile(r"the answer should be ([^\s.]+)")


def script_critique(req, i: int) -> str:
    text = request_text(req)
    if "Correctness of the step" in text and "Student's solution, numbered:" in text:
        body = text.split("Student's solution, numbered:\n", 1)[1].split("\n\nFor every step", 1)[0]
        n = len(re.findall(r"^Step \d+:", body, re.MULTILINE))
        if "[garble]" in body:
            return "I think it is fine overall."
        ref = _REF.search(text)
        answers = re.findall(r"(?:The answer is:?|####)\s*([^\s]+)", body)
        ok = bool(ref) and bool(answers) and answers[-1].rstrip(".") == ref.group(1).strip()
        if ok:
            return format_critique([("correct", "right")] * n, True, "it matches")
        k = min(2, n)
        labels = [("correct", "right")] * (k - 1) + [("wrong", "off")] * (n - k + 1)
        why = f"the answer should be {ref.group(1).strip()}" if ref and i == 0 else "recheck it"
        return format_critique(labels, False, why)
    if "First solution:" in text and "Critique:" in text:
        m = _SHOULD.search(text)
        if not m:
            return "Step 1: I redo it.\nThe answer is: -7"
        if i % 2 == 1:
            return f"The answer is: {m.group(1)}"
        first = text.split("First solution:\n", 1)[1].split("\n\nCritique:", 1)[0]
        lines = [ln for ln in first.splitlines() if not ln.startswith("The answer is")]
        return "\n".join(lines + [f"The answer is: {m.group(1)}"])
    return script_mixed(req, i)


register_script("critique", script_critique)
