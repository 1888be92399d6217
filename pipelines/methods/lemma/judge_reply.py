"""Parse a teacher judge's answer: the first wrong step of a numbered solution and its error type.

The prompt (pipelines/methods/lemma/prompts/lemma_judge.txt) asks for exactly this format::

    Verdict: incorrect
    First wrong step: 3
    Error type: calculation_error
    Reason: 4 * 7 is 28, not 24.

or, when the judge finds no wrong step::

    Verdict: correct

`parse_judgement(raw, n_steps)` reads that format and common free-text variants ("the first wrong step is step
3", "Step 3 is wrong", "the first error occurs in step 3", markdown bold, "**First Wrong Step:** #3", number
words, "the wrong type is 'calculation_error'"). It returns a `JudgeResult` that keeps the raw text and says which
of three things the judge said:

- ``located``      -- a first wrong step N with 1 <= N <= n_steps (the number of steps the judge was shown);
- ``says_correct`` -- the judge found no wrong step (it disagrees with the answer checker; data, not an error);
- ``unparsed``     -- anything else, with `reason`: empty, no_verdict, no_step_number, step_out_of_range,
                      contradictory (says correct and names a step), ambiguous (two different "first" steps).

"Says correct" and "unparsed" are never a located error, and a located step is always a number written in the
text (the parser never guesses one). The error type is one of the 12 taxonomy labels (aliases such as
`question_misinterpretation` are mapped) or None; `type_parse_ok` says whether one was found.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Iterable, Optional

from pipelines.methods.lemma.taxonomy import ERROR_LABELS, LABEL_ALIASES, canonical_label
from stages.engines.base import Constraint
from stages.formats import LINE, OutputFormat, number_in, one_of, text_budget

__all__ = ["JudgeResult", "ParseRates", "parse_judgement", "parse_rates", "VERDICTS", "UNPARSED_REASONS",
           "format_judgement"]

VERDICTS = ("located", "says_correct", "unparsed")
# the answer's fields, as the prompt names them (prompts/lemma_judge.txt), the constraint builds them and the
# parser reads them
VERDICT_FIELD, STEP_FIELD, TYPE_FIELD, REASON_FIELD = "Verdict", "First wrong step", "Error type", "Reason"
UNPARSED_REASONS = ("empty", "no_verdict", "no_step_number", "step_out_of_range", "contradictory", "ambiguous")


@dataclass(frozen=True)
class JudgeResult:
    """A parsed judgement. `first_error_step` is 1-based and set only when verdict == 'located'."""

    verdict: str
    first_error_step: Optional[int]
    error_type: Optional[str]
    type_parse_ok: bool
    raw_text: str
    n_steps: int
    reason: Optional[str] = None

    @property
    def parse_ok(self) -> bool:
        """The judge's answer was understood (a located step or a 'correct' verdict)."""
        return self.verdict != "unparsed"


def format_judgement(first_error_step: Optional[int], error_type: Optional[str] = None, reason: str = "") -> str:
    """The answer format the prompt asks for (used in few-shot examples and tests)."""
    if first_error_step is None:
        return f"{VERDICT_FIELD}: correct"
    lines = [f"{VERDICT_FIELD}: incorrect", f"{STEP_FIELD}: {first_error_step}", f"{TYPE_FIELD}: {error_type or ''}"]
    if reason:
        lines.append(f"{REASON_FIELD}: {reason}")
    return "\n".join(lines)


class JudgementFormat(OutputFormat):
    """`Verdict: correct`, or `Verdict: incorrect` with the first wrong step (a number among the steps shown), one
    of the 12 error labels and a one-line reason: the constraint and `parse_judgement` read the same fields."""
    name, kind = "lemma_judgement", "regex"

    def constraint(self, n_steps: int, max_tokens: int = 96) -> Constraint:
        reason = f"{LINE}{{1,{max(10, text_budget(max_tokens, reserve=32))}}}"
        located = (f"incorrect\n{STEP_FIELD}: {number_in(1, max(1, n_steps))}\n{TYPE_FIELD}: {one_of(ERROR_LABELS)}"
                   f"\n{REASON_FIELD}: {reason}")
        return Constraint(regex=f"{VERDICT_FIELD}: (correct|{located})")

    def parse(self, text: str, n_steps: int) -> "JudgeResult":
        return parse_judgement(text, n_steps)


# --------------------------------------------------------------------------------------------- patterns

_NUM_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}
_ORDINALS = {w: i for i, w in enumerate(
    "zeroth first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth thirteenth "
    "fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth twentieth".split())}
_N = r"(?P<n>\d{1,6}|" + "|".join(sorted(_NUM_WORDS, key=len, reverse=True)) + r")\b"
_ORD = r"(?P<ord>" + "|".join(sorted(_ORDINALS, key=len, reverse=True)) + r")"
_BAD = r"(?:wrong|incorrect|erroneous|mistaken|faulty|flawed|bad|invalid)"
_STEP_REF = r"(?:step|paragraph)\s*(?:number\s*|no\.?\s*)?#?\s*"
_NONE_VALUE = re.compile(r"^\s*(?:none|n/?a|null|nil|no\b|not applicable|-+|no\s+(?:wrong|incorrect|error))",
                         re.IGNORECASE)

_FIELD_STEP = re.compile(
    r"(?:^|(?<=[\s.;,>*(|]))first[ \t]+" + _BAD + r"[ \t]+step[ \t]*(?:number|no\.?|index)?[ \t]*(?:is)?[ \t]*"
    r"[:=\-–][ \t]*"
    r"(?P<val>[^\n]*)", re.IGNORECASE | re.MULTILINE)
_FIELD_VERDICT = re.compile(
    r"(?:^|(?<=[\s.;,>*(|]))(?:verdict|judgement|judgment|conclusion|assessment)[ \t]*[:=\-–][ \t]*(?P<val>[^\n]*)",
    re.IGNORECASE | re.MULTILINE)
_FIELD_TYPE = re.compile(
    r"(?:^|(?<=[\s.;,>*(|]))(?:error[ \t]+type|type[ \t]+of[ \t]+(?:the[ \t]+)?error|wrong[ \t]+type"
    r"|error[ \t]+category|error[ \t]+label|type)[ \t]*[:=\-–][ \t]*(?P<val>[^\n]*)", re.IGNORECASE | re.MULTILINE)

# "the first wrong step is step 3", "first incorrect step: the third step", "the first error occurs in step 3"
_FIRST_PHRASES = [
    re.compile(r"\bfirst\s+" + _BAD + r"\s+step\s+(?:is|was|would\s+be|occurs\s+(?:at|in)|appears\s+(?:at|in)|"
               r"comes\s+(?:at|in)|happens\s+(?:at|in)|:)?\s*(?:in\s+|at\s+)?(?:" + _STEP_REF + _N + r"|the\s+"
               + _ORD + r"\s+(?:step|one)\b)", re.IGNORECASE),
    re.compile(r"\bfirst\s+(?:error|mistake|wrong\s+move|problem|issue)\s+(?:is\s+|was\s+)?(?:made\s+|found\s+|"
               r"located\s+|occurs\s+|appears\s+|happens\s+|comes\s+|arises\s+|shows\s+up\s+)?(?:in|at|on)\s+(?:"
               + _STEP_REF + _N + r"|the\s+" + _ORD + r"\s+step\b)", re.IGNORECASE),
    re.compile(r"\b" + _STEP_REF + _N + r"\s+(?:is|was)\s+(?:where\s+)?(?:the\s+)?first\s+(?:" + _BAD +
               r"\s+(?:step|one)|error|mistake|(?:" + _BAD + r"))", re.IGNORECASE),
    re.compile(r"\bthe\s+(?:" + _BAD + r"\s+step|error|mistake)\s+(?:first\s+)?(?:is|occurs|appears|starts|"
               r"begins)\s+(?:in|at|on)\s+(?:" + _STEP_REF + _N + r"|the\s+" + _ORD + r"\s+step\b)",
               re.IGNORECASE),
]
# "Step 3 is wrong", "step 3 contains an error", "the error is in step 3": any wrong step; the first is the least
_ANY_PHRASES = [
    re.compile(r"\b" + _STEP_REF + _N + r"\s*(?:\([^)]*\)\s*)?(?:is|was|seems|looks|appears)\s+(?:to\s+be\s+)?"
               r"(?:clearly\s+|definitely\s+|already\s+)?" + _BAD + r"\b", re.IGNORECASE),
    re.compile(r"\b" + _STEP_REF + _N + r"\s+(?:contains|has|makes|introduces)\s+(?:an?\s+|the\s+)?"
               r"(?:first\s+)?(?:error|mistake)", re.IGNORECASE),
    re.compile(r"\b(?:error|mistake)\s+(?:is\s+|was\s+)?(?:made\s+|found\s+|located\s+)?(?:in|at|on)\s+"
               + _STEP_REF + _N, re.IGNORECASE),
    re.compile(r"\bthe\s+" + _ORD + r"\s+step\s+(?:is|was)\s+" + _BAD + r"\b", re.IGNORECASE),
    re.compile(r"\b" + _BAD + r"\s+step\s*(?:is|:)\s*" + _STEP_REF + _N, re.IGNORECASE),
]
_SAYS_CORRECT = [
    re.compile(r"\b(?:the\s+)?(?:whole\s+|entire\s+|student'?s?\s+|proposed\s+|given\s+|above\s+)?"
               r"(?:solution|reasoning|response|work)\s+is\s+(?:entirely\s+|completely\s+|fully\s+|all\s+|"
               r"totally\s+|perfectly\s+)?(?:correct|right|valid)\b"
               r"(?!\s*(?:up\s+to|until|till|except|before|through|apart|but|only|for\s+the\s+first|in\s+step|"
               r"at\s+step|so\s+far|\.\.\.))", re.IGNORECASE),
    re.compile(r"\ball\s+(?:of\s+)?(?:the\s+)?steps\s+(?:are|look|seem)\s+(?:correct|right|valid|fine)\b",
               re.IGNORECASE),
    re.compile(r"\bevery\s+step\s+is\s+(?:correct|right|valid|fine)\b", re.IGNORECASE),
    re.compile(r"\bno\s+(?:" + _BAD + r"\s+steps?|errors?\s+(?:were\s+|was\s+)?found|steps?\s+(?:is|are)\s+"
               + _BAD + r")\b", re.IGNORECASE),
    re.compile(r"\bthere\s+(?:is|are)\s+no\s+(?:errors?|mistakes?|" + _BAD + r"\s+steps?)\b", re.IGNORECASE),
]
_VERDICT_CORRECT = re.compile(r"^\s*(?:the\s+solution\s+is\s+)?(?:correct|right|valid|no\s+errors?|all\s+correct|"
                              r"true|pass(?:es)?)\b", re.IGNORECASE)
_VERDICT_WRONG = re.compile(r"^\s*(?:the\s+solution\s+is\s+)?(?:incorrect|not\s+correct|wrong|invalid|"
                            r"erroneous|has\s+(?:an?\s+)?errors?|false|fail(?:s)?)\b", re.IGNORECASE)
_TYPE_PHRASE = re.compile(
    r"\b(?:wrong|error|mistake)\s+type\s+(?:is|was|:)\s*(?P<val>[^\n.;]*)|\btype\s+of\s+(?:the\s+)?(?:error|mistake)"
    r"\s+(?:is|was|:)\s*(?P<val2>[^\n.;]*)|\b(?:this|it|that)\s+is\s+an?\s+(?P<val3>[a-z_ \-']{4,60}?)(?:\.|,|\n|$)",
    re.IGNORECASE)


def _label_regex() -> re.Pattern:
    names = sorted(set(ERROR_LABELS) | set(LABEL_ALIASES), key=len, reverse=True)
    alts = [r"[\s_\-]+".join(re.escape(part) for part in n.split("_")) for n in names]
    return re.compile(r"(?<![A-Za-z])(?:" + "|".join(alts) + r")(?![A-Za-z])", re.IGNORECASE)


_LABEL_RX = _label_regex()
_MARKDOWN = re.compile(r"\*\*|__|`|~~|^#{1,6}[ \t]*", re.MULTILINE)


def _clean(text: str) -> str:
    return _MARKDOWN.sub("", text.replace("\r\n", "\n").replace("\u00a0", " "))


def _number(m: re.Match) -> Optional[int]:
    gd = m.groupdict()
    if gd.get("n"):
        v = gd["n"].lower()
        return int(v) if v.isdigit() else _NUM_WORDS.get(v)
    if gd.get("ord"):
        return _ORDINALS.get(gd["ord"].lower())
    return None


def _labels_in(text: str) -> list[str]:
    """Distinct taxonomy labels mentioned in text, in order of first mention."""
    out: list[str] = []
    for m in _LABEL_RX.finditer(text):
        lab = canonical_label(m.group(0))
        if lab and lab not in out:
            out.append(lab)
    return out


def _parse_type(text: str) -> Optional[str]:
    """The error type: the 'Error type:' field, else a 'the wrong type is X' phrase, else the one label the text
    names (None when it names none or several)."""
    for rx in (_FIELD_TYPE, _TYPE_PHRASE):
        for m in rx.finditer(text):
            val = next((v for v in m.groups() if v), "") if rx is _TYPE_PHRASE else m.group("val")
            lab = canonical_label(val)
            if lab:
                return lab
            found = _labels_in(val)
            if len(found) == 1:
                return found[0]
    found = _labels_in(text)
    return found[0] if len(found) == 1 else None


def _field_step(text: str) -> tuple[Optional[int], bool, bool]:
    """From a 'First wrong step: ...' field: (number, says_none, field_present)."""
    m = _FIELD_STEP.search(text)
    if not m:
        return None, False, False
    val = m.group("val").strip()
    if _NONE_VALUE.match(val):
        return None, True, True
    n = re.match(r"(?:the\s+)?(?:" + _STEP_REF + r")?(?:no\.?\s*)?#?\s*" + _N, val, re.IGNORECASE)
    if n:
        return _number(n), False, True
    o = re.match(r"(?:the\s+)?" + _ORD + r"\b", val, re.IGNORECASE)
    if o:
        return _number(o), False, True
    return None, False, True


def _phrase_step(text: str) -> tuple[Optional[int], Optional[str]]:
    """From free text: (step, None), or (None, 'ambiguous') when 'first' phrases disagree, or (None, None)."""
    firsts = [n for rx in _FIRST_PHRASES for m in rx.finditer(text) if (n := _number(m)) is not None]
    if firsts:
        if len(set(firsts)) > 1:
            return None, "ambiguous"
        return firsts[0], None
    anys = [n for rx in _ANY_PHRASES for m in rx.finditer(text) if (n := _number(m)) is not None]
    if anys:
        return min(anys), None
    return None, None


def parse_judgement(raw: Optional[str], n_steps: int) -> JudgeResult:
    """Parse a judge's answer about a solution shown as `n_steps` numbered steps. Never raises."""
    raw_text = raw if isinstance(raw, str) else ""

    def result(verdict: str, step: Optional[int] = None, reason: Optional[str] = None,
               etype: Optional[str] = None) -> JudgeResult:
        return JudgeResult(verdict=verdict, first_error_step=step if verdict == "located" else None,
                           error_type=etype if verdict == "located" else None,
                           type_parse_ok=verdict == "located" and etype is not None,
                           raw_text=raw_text, n_steps=n_steps, reason=reason)

    if not raw_text.strip():
        return result("unparsed", reason="empty")
    text = _clean(raw_text)

    verdict_field = None
    vm = _FIELD_VERDICT.search(text)
    if vm:
        val = vm.group("val")
        verdict_field = ("wrong" if _VERDICT_WRONG.match(val) else "correct" if _VERDICT_CORRECT.match(val)
                         else None)
    step, field_none, field_present = _field_step(text)
    phrase_reason = None
    if step is None and not field_none:
        step, phrase_reason = _phrase_step(text)
    says_correct_phrase = any(rx.search(text) for rx in _SAYS_CORRECT)

    if step is not None:
        if verdict_field == "correct" or (says_correct_phrase and not field_present and verdict_field != "wrong"):
            return result("unparsed", reason="contradictory")
        if not 1 <= step <= n_steps:
            return result("unparsed", reason="step_out_of_range")
        return result("located", step=step, etype=_parse_type(text))
    if phrase_reason == "ambiguous":
        return result("unparsed", reason="ambiguous")
    if field_none or verdict_field == "correct":
        if verdict_field == "wrong":
            return result("unparsed", reason="contradictory")
        return result("says_correct")
    if verdict_field == "wrong" or field_present:
        return result("unparsed", reason="no_step_number")
    if says_correct_phrase:
        return result("says_correct")
    return result("unparsed", reason="no_verdict")


# --------------------------------------------------------------------------------------------- rates

@dataclass(frozen=True)
class ParseRates:
    """How a batch of judgements parsed. Rates are over all judgements; type_parse_ok_rate over located ones."""

    n: int
    located: int
    says_correct: int
    unparsed: int
    type_parse_ok: int
    unparsed_reasons: dict = field(default_factory=dict)

    @property
    def parse_ok_rate(self) -> float:
        return (self.located + self.says_correct) / self.n if self.n else 0.0

    @property
    def located_rate(self) -> float:
        return self.located / self.n if self.n else 0.0

    @property
    def type_parse_ok_rate(self) -> float:
        return self.type_parse_ok / self.located if self.located else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(parse_ok_rate=self.parse_ok_rate, located_rate=self.located_rate,
                 type_parse_ok_rate=self.type_parse_ok_rate)
        return d


def parse_rates(results: Iterable[JudgeResult]) -> ParseRates:
    """Counts and rates of a batch of parsed judgements (for a manifest or an evaluation report)."""
    verdicts: Counter = Counter()
    reasons: Counter = Counter()
    type_ok = 0
    for r in results:
        verdicts[r.verdict] += 1
        if r.verdict == "unparsed":
            reasons[r.reason or "unknown"] += 1
        type_ok += r.type_parse_ok
    return ParseRates(n=sum(verdicts.values()), located=verdicts["located"], says_correct=verdicts["says_correct"],
                      unparsed=verdicts["unparsed"], type_parse_ok=type_ok, unparsed_reasons=dict(reasons))
