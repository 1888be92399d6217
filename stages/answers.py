"""Final-answer extraction: from a model completion and from a gold solution. Pure functions, no I/O.

`extract_answer(text)` tries, in order (the first that yields a non-empty answer wins):

1. ``answer_is`` -- the last "The answer is: X" / "The final answer is X" / "Answer: X" (case-insensitive).
   X runs to the end of its line; a ``\\boxed{}`` inside it is unwrapped, then math delimiters (``$``, ``\\(``,
   ``**``), a trailing period and, when X is a plain number followed only by words ("18 dollars",
   "7 apples per box"), the unit words and a leading currency sign are removed.
2. ``boxed``     -- the content of the last ``\\boxed{...}`` / ``\\fbox{...}`` (balanced braces).
3. ``hashes``    -- the text after the last ``#### `` (GSM8K style), up to the end of its line.
4. ``last_number`` -- the last number in the text (``-3``, ``1,000``, ``2.5``, ``3/4``).

Numbers written with thousands separators (``1,000``) are returned without them (``1000``); anything else is
returned as written (LaTeX kept), so the verifier sees the model's own expression.

The result is an `ExtractedAnswer`: a `str` (use it anywhere an answer string is expected) that also carries
`.method`, the rule above that found it. `None` when nothing was found.
"""
from __future__ import annotations

import re
from typing import Optional

__all__ = ["ExtractedAnswer", "extract_answer", "reference_answer_from_solution", "last_boxed",
           "normalize_number", "clean_answer"]


class ExtractedAnswer(str):
    """An answer string that remembers how it was found (`method`: answer_is, boxed, hashes, last_number)."""

    method: str

    def __new__(cls, value: str, method: str) -> "ExtractedAnswer":
        obj = super().__new__(cls, value)
        obj.method = method
        return obj

    def __reduce__(self):  # pickles (Ray, multiprocessing) keep the method
        return (ExtractedAnswer, (str(self), self.method))

    def __repr__(self) -> str:
        return f"ExtractedAnswer({str(self)!r}, method={self.method!r})"


# "The answer is: 5", "the final answer is 5", "Answer: 5", "**Final Answer:** 5"
_ANSWER_IS = re.compile(
    r"(?:\b(?:the\s+)?(?:final\s+)?answer\s*(?:is|=)\s*:?|\b(?:final\s+)?answer\s*:)[ \t]*(?:\*\*)?[ \t]*"
    r"(?P<rest>[^\n]*)", re.IGNORECASE)
_HASHES = re.compile(r"####[ \t]*(?P<rest>[^\n]*)")
_BOX_START = re.compile(r"\\(?:boxed|fbox)\s*\{")
# a number: a minus is a sign only when it does not follow an operand ("5-3" ends in 3, "x = -3" in -3)
_NUMBER = re.compile(
    r"(?P<num>(?:(?<![\w)\]}])[-−])?(?<![\w.])(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?:/\d+)?)")
_SEP_NUMBER = re.compile(r"^[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_PLAIN_NUMBER = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?"
# "$18", "18 dollars", "-2.5 cm per hour", "1,000 apples." -> the number
_NUMBER_WITH_UNITS = re.compile(
    r"^(?:\\?\$\s*)?(?P<num>" + _PLAIN_NUMBER + r")\s*(?:\\?%|(?:[A-Za-z][A-Za-z'\-]*\.?\s*){1,4})?$")


def last_boxed(text: str) -> Optional[str]:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`) with balanced braces; None if none is complete."""
    if not text:
        return None
    starts = [m for m in _BOX_START.finditer(text)]
    for m in reversed(starts):
        depth, i = 1, m.end()
        while i < len(text):
            c = text[i]
            if c == "\\" and i + 1 < len(text) and text[i + 1] in "{}":
                i += 2
                continue
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    return text[m.end():i].strip()
            i += 1
    return None


def normalize_number(s: str) -> str:
    """'1,000' -> '1000', '−3' -> '-3'; anything that is not a separated number comes back stripped."""
    s = s.strip().replace("−", "-")
    if _SEP_NUMBER.match(s):
        return s.replace(",", "")
    return s


def _strip_delimiters(s: str) -> str:
    s = s.strip()
    changed = True
    while changed and s:
        changed = False
        for left, right in (("**", "**"), ("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
            if s.startswith(left) and s.endswith(right) and len(s) >= len(left) + len(right):
                inner = s[len(left):len(s) - len(right)].strip()
                if left == "$" and "$" in inner:  # "$5 and $6" is not a delimited expression
                    continue
                s, changed = inner, True
        for suffix in ("**",):
            if s.endswith(suffix) and not s.startswith(suffix):
                s, changed = s[: -len(suffix)].rstrip(), True
        if s.endswith((".", ",", ";")):
            s, changed = s[:-1].rstrip(), True
    return s


def clean_answer(raw: str) -> str:
    """Tidy an answer span: unwrap a boxed, drop delimiters/trailing period, reduce '18 dollars' to '18'."""
    s = raw.strip()
    boxed = last_boxed(s)
    if boxed is not None:
        s = boxed
    s = _strip_delimiters(s)
    m = _NUMBER_WITH_UNITS.match(s)
    if m:
        s = m.group("num")
    return normalize_number(s)


def _answer_is(text: str) -> Optional[str]:
    for m in reversed(list(_ANSWER_IS.finditer(text))):
        ans = clean_answer(m.group("rest"))
        if ans:
            return ans
    return None


def _last_number(text: str) -> Optional[str]:
    nums = [m.group("num") for m in _NUMBER.finditer(text)]
    if not nums:
        return None
    n = nums[-1].replace("−", "-")
    if n.startswith("+"):
        n = n[1:]
    return normalize_number(n)


def extract_answer(text: Optional[str]) -> Optional[ExtractedAnswer]:
    """The final answer of a completion (see the module doc for the rules), or None."""
    if not text or not isinstance(text, str):
        return None
    ans = _answer_is(text)
    if ans:
        return ExtractedAnswer(ans, "answer_is")
    boxed = last_boxed(text)
    if boxed:
        ans = clean_answer(boxed)
        if ans:
            return ExtractedAnswer(ans, "boxed")
    for m in reversed(list(_HASHES.finditer(text))):
        ans = clean_answer(m.group("rest"))
        if ans:
            return ExtractedAnswer(ans, "hashes")
    ans = _last_number(text)
    if ans:
        return ExtractedAnswer(ans, "last_number")
    return None


def reference_answer_from_solution(text: Optional[str]) -> Optional[str]:
    """Gold answer of a worked solution: GSM8K `#### 1,000` -> '1000'; else the last `\\boxed{...}`; else None."""
    if not text or not isinstance(text, str):
        return None
    for m in reversed(list(_HASHES.finditer(text))):
        rest = m.group("rest").strip()
        if rest:
            return clean_answer(rest)
    boxed = last_boxed(text)
    if boxed:
        return boxed.strip()
    return None
