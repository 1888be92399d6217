"""LEMMA's error taxonomy and transition phrases, in this project's own words.

- `ERROR_LABELS`: the 12 labels a judge classifies a first wrong step with (LEMMA's few-shot classifier list).
- `INJECTION_TYPES`: the 6 types LEMMA asks a teacher to inject (its injector's list), spelled with our labels.
- `RULES_INJECTABLE`: the types `rules_injector` can make mechanically in built-in arithmetic problems.
- Label drift: LEMMA's classifier says `question_understanding_error`, its injector `question_misinterpretation`
  for the same thing. We store one spelling, `question_understanding_error`, and read both
  (`canonical_label`); `LEMMA_INJECTOR_NAMES` gives the injector's spelling when comparing with LEMMA's data.
- `TRANSITION_PHRASES`: sentences that open a revision right after the erroneous prefix. `find_transitions`
  finds them (case and whitespace tolerant); `check_transition_after` checks a revision holds exactly one, right
  after its prefix. Every function takes the phrase list as an argument, so a recipe can bring its own.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional, Sequence

__all__ = ["ERROR_TYPES", "ERROR_LABELS", "INJECTION_TYPES", "RULES_INJECTABLE", "LABEL_ALIASES",
           "LEMMA_INJECTOR_NAMES", "TRANSITION_PHRASES", "ErrorType", "TransitionMatch", "TransitionCheck",
           "canonical_label", "definition", "lemma_injector_name", "find_transitions", "check_transition_after",
           "choose_transition", "format_label_list"]


@dataclass(frozen=True)
class ErrorType:
    label: str
    definition: str


_TYPES = (
    ErrorType("calculation_error",
              "The step sets up the right numbers and the right operation but works out the result wrongly."),
    ErrorType("counting_error",
              "Something is counted wrongly (days, people, items, terms), so a number used in the step is off."),
    ErrorType("question_understanding_error",
              "The question is misread: a condition or quantity it states is ignored or taken to mean something "
              "else."),
    ErrorType("referencing_context_value_error",
              "A number taken from the question is the wrong one: another quantity's value or a miscopied one."),
    ErrorType("referencing_previous_step_value_error",
              "The step uses a wrong value for a result that an earlier step worked out."),
    ErrorType("unit_conversion_error",
              "A change of units (minutes to hours, grams to kilograms, cents to dollars) is skipped or uses the "
              "wrong factor."),
    ErrorType("operator_error",
              "The step uses the right numbers with the wrong operation, such as adding where it should multiply."),
    ErrorType("missing_step",
              "A needed step is left out, so a later step works with a value that was never computed."),
    ErrorType("confusing_formula_error",
              "The wrong formula is applied, such as a perimeter formula where an area is asked for."),
    ErrorType("confusing_concept_error",
              "Two related but different ideas are mixed up, such as the total instead of what is left, or "
              "revenue instead of profit."),
    ErrorType("adding_irrelevant_information",
              "The step brings in a fact or number the question does not give, and it changes the result."),
    ErrorType("nonsense_output_error",
              "The text stops making sense: garbled, off-topic or incoherent reasoning that does not address the "
              "problem."),
)

ERROR_TYPES: dict[str, ErrorType] = {t.label: t for t in _TYPES}
ERROR_LABELS: tuple[str, ...] = tuple(t.label for t in _TYPES)

INJECTION_TYPES: tuple[str, ...] = ("calculation_error", "missing_step", "confusing_concept_error",
                                    "question_understanding_error", "confusing_formula_error", "counting_error")

RULES_INJECTABLE: tuple[str, ...] = ("calculation_error", "operator_error", "referencing_previous_step_value_error",
                                     "referencing_context_value_error", "missing_step", "counting_error")

# other spellings seen in judge output or in LEMMA's files -> our label
LABEL_ALIASES: dict[str, str] = {
    "question_misinterpretation": "question_understanding_error",
    "question_misinterpretation_error": "question_understanding_error",
    "misinterpretation": "question_understanding_error",
    "misunderstanding": "question_understanding_error",
    "question_misunderstanding": "question_understanding_error",
    "arithmetic_error": "calculation_error",
    "computation_error": "calculation_error",
    "computational_error": "calculation_error",
    "miscalculation": "calculation_error",
    "operation_error": "operator_error",
    "wrong_operator": "operator_error",
    "wrong_operation": "operator_error",
    "missing_steps": "missing_step",
    "skipped_step": "missing_step",
    "missing_step_error": "missing_step",
    "irrelevant_information": "adding_irrelevant_information",
    "adding_irrelevant_information_error": "adding_irrelevant_information",
    "nonsense": "nonsense_output_error",
    "nonsense_output": "nonsense_output_error",
    "unit_error": "unit_conversion_error",
    "formula_error": "confusing_formula_error",
    "wrong_formula": "confusing_formula_error",
    "concept_error": "confusing_concept_error",
    "conceptual_error": "confusing_concept_error",
    "referencing_previous_value_error": "referencing_previous_step_value_error",
    "previous_step_value_error": "referencing_previous_step_value_error",
    "context_value_error": "referencing_context_value_error",
}

# our label -> the spelling LEMMA's injector uses (only where it differs)
LEMMA_INJECTOR_NAMES: dict[str, str] = {"question_understanding_error": "question_misinterpretation"}


def _norm_label(text: str) -> str:
    s = text.strip().lower()
    s = re.sub(r"[`'\"*\[\](){}<>.,;:!]", " ", s)
    s = re.sub(r"[\s\-/]+", "_", s.strip())
    return s.strip("_")


def canonical_label(text: Optional[str]) -> Optional[str]:
    """Our label for a label-like string ('Calculation Error', "'question_misinterpretation'",
    '**operator-error**'), or None when it is not one of the 12 labels or a known alias."""
    if not text or not isinstance(text, str):
        return None
    s = _norm_label(text)
    if not s:
        return None
    for cand in (s, s + "_error", s[:-len("_error")] if s.endswith("_error") else s):
        if cand in ERROR_TYPES:
            return cand
        if cand in LABEL_ALIASES:
            return LABEL_ALIASES[cand]
    return None


def definition(label: str) -> str:
    """The one-line definition of a label (aliases accepted); KeyError for an unknown label."""
    canon = canonical_label(label)
    if canon is None:
        raise KeyError(f"unknown error type {label!r}; known: {', '.join(ERROR_LABELS)}")
    return ERROR_TYPES[canon].definition


def lemma_injector_name(label: str) -> str:
    """The spelling LEMMA's injector uses for one of our labels (question_understanding_error ->
    question_misinterpretation; other labels unchanged)."""
    canon = canonical_label(label) or label
    return LEMMA_INJECTOR_NAMES.get(canon, canon)


def format_label_list(labels: Sequence[str] = ERROR_LABELS) -> str:
    """'- label: definition' lines, for a prompt."""
    return "\n".join(f"- {lab}: {ERROR_TYPES[lab].definition}" for lab in labels)


# --------------------------------------------------------------------------------------------- transitions

TRANSITION_PHRASES: tuple[str, ...] = (
    "Hold on, that step does not look right. Let me check it again.",
    "Wait, something is off here. Let me go back over this step.",
    "Hmm, I think I made a mistake in that step. Let me look at it again.",
    "Let me pause and double-check that last step.",
    "Actually, that cannot be right. Let me redo this part.",
    "Wait a moment, I should verify that step before going on.",
    "On second thought, that step seems wrong. Let me work it out again.",
    "Hmm, let me reread the question to make sure I have this right.",
    "Before going further, let me make sure that step is correct.",
    "Hold on, I need to revisit what I just did.",
    "That does not add up. Let me go through it again carefully.",
    "Wait, I may have slipped up there. Let me check.",
    "Let me stop and look at this more carefully.",
    "Something seems wrong with that result. Let me rethink it.",
    "Hmm, that looks suspicious. Let me go over it once more.",
    "Wait, I should reconsider that step.",
    "Hang on, let me retrace my reasoning here.",
    "Let me double-check this, because it may not be correct.",
)


@dataclass(frozen=True)
class TransitionMatch:
    start: int
    end: int
    phrase: str


@lru_cache(maxsize=64)
def _phrases_regex(phrases: tuple[str, ...]) -> re.Pattern:
    alts = []
    for p in sorted(set(phrases), key=len, reverse=True):  # longest first: no phrase hides a longer one
        words = p.split()
        if words:
            alts.append(r"\s+".join(re.escape(w) for w in words))
    if not alts:
        return re.compile(r"(?!x)x")
    return re.compile("(?:" + "|".join(alts) + ")", re.IGNORECASE)


def _canon_phrase(found: str, phrases: Sequence[str]) -> str:
    key = " ".join(found.split()).lower()
    return next((p for p in phrases if " ".join(p.split()).lower() == key), found)


def find_transitions(text: Optional[str], phrases: Sequence[str] = TRANSITION_PHRASES) -> list[TransitionMatch]:
    """Every occurrence of a transition phrase in text (case-insensitive, any whitespace between words),
    non-overlapping, in order."""
    if not text:
        return []
    rx = _phrases_regex(tuple(phrases))
    return [TransitionMatch(m.start(), m.end(), _canon_phrase(m.group(0), phrases)) for m in rx.finditer(text)]


@dataclass(frozen=True)
class TransitionCheck:
    """Result of `check_transition_after`: `count` phrases after the prefix; `reason` None when exactly one
    stands right after it (only whitespace between), else no_transition / several_transitions /
    transition_not_after_prefix."""

    count: int
    match: Optional[TransitionMatch]
    reason: Optional[str]

    @property
    def ok(self) -> bool:
        return self.reason is None


def check_transition_after(text: str, prefix_end: int,
                           phrases: Sequence[str] = TRANSITION_PHRASES) -> TransitionCheck:
    """Does `text[prefix_end:]` hold exactly one transition phrase, and does it come first (after whitespace)?"""
    found = find_transitions(text[prefix_end:], phrases)
    found = [TransitionMatch(m.start + prefix_end, m.end + prefix_end, m.phrase) for m in found]
    if not found:
        return TransitionCheck(0, None, "no_transition")
    if len(found) > 1:
        return TransitionCheck(len(found), found[0], "several_transitions")
    m = found[0]
    if text[prefix_end:m.start].strip():
        return TransitionCheck(1, m, "transition_not_after_prefix")
    return TransitionCheck(1, m, None)


def choose_transition(key: str, phrases: Sequence[str] = TRANSITION_PHRASES) -> str:
    """A phrase chosen deterministically from `key` (e.g. a row id): the same key always gets the same phrase,
    different keys spread over the list."""
    if not phrases:
        raise ValueError("no transition phrases to choose from")
    h = int(hashlib.sha256(key.encode()).hexdigest()[:12], 16)
    return phrases[h % len(phrases)]
