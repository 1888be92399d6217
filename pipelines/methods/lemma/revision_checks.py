"""Revision trajectories: segments, and the checks a teacher-written revision must pass.

A LEMMA revision is: the erroneous prefix (the attempt through its first wrong step, verbatim), one transition
phrase, then either a fix of that step and the rest of the solution ("fix_continue") or a different approach
("fresh_restart"). It is stored as segments ``[{"text", "author", "loss"}]`` whose texts, joined with "", give the
revision text. A segment's leading whitespace belongs to it (the transition segment starts with the break after
the prefix), so the first segment is exactly the prefix. Authors:

- ``model``    -- the attempt's own text: the erroneous prefix (always the first segment; mask it to train
                  only on the correction);
- ``template`` -- the transition phrase (chosen by us, whoever wrote it out);
- ``teacher``  -- an LLM teacher's fix / restart and continuation;
- ``rules``    -- a programmatic fix and continuation (pipelines/methods/lemma/rules_injector.py).

`loss` is True on every segment, LEMMA's convention (its SFT trains on the erroneous prefix too); an export that
masks errors sets loss=False on the ``model`` segment.

The teacher is asked to copy the prefix, so its output is checked (`revision_drop_reason`): prefix_changed,
no_transition, several_transitions, transition_not_after_prefix, mentions_forbidden (it talks about a previous
attempt or a reference, see FORBIDDEN_PHRASES), no_continuation, no_final_answer, or None when it passes.
`segments_from_teacher` then cuts it into segments, putting the original prefix text (not the teacher's copy) in
the ``model`` segment. Whether the final answer is right is the verify stage's job.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Optional, Sequence

from stages.answers import extract_answer
from pipelines.methods.lemma.injection_reply import same_answer
from pipelines.methods.lemma.taxonomy import TRANSITION_PHRASES, check_transition_after, find_transitions

__all__ = ["Segment", "SEGMENT_AUTHORS", "STRATEGIES", "FORBIDDEN_PHRASES", "DROP_REASONS", "make_segments",
           "fix_continue_segments", "fresh_restart_segments", "segments_text", "prefix_segment", "prefix_end",
           "prefix_intact", "transition_count_after_prefix", "mentions_forbidden", "revision_drop_reason",
           "segments_from_teacher", "smoothing_drop_reason"]

SEGMENT_AUTHORS = ("model", "template", "teacher", "rules")
STRATEGIES = ("fix_continue", "fresh_restart")
DROP_REASONS = ("empty", "prefix_changed", "no_transition", "several_transitions", "transition_not_after_prefix",
                "mentions_forbidden", "no_continuation", "no_final_answer")

# what the teacher must not say: it writes as the solver, who has no earlier attempt and no reference
FORBIDDEN_PHRASES: tuple[str, ...] = (
    "previous attempt", "prior attempt", "earlier attempt", "original attempt", "last attempt", "first attempt",
    "attempt above", "the above attempt", "ground truth", "reference solution", "reference answer",
    "given solution", "provided solution", "proposed solution", "solution provided", "solution above",
    "above solution", "correct solution given", "answer key", "gold answer", "gold solution", "student's solution",
    "student solution", "student's attempt", "transition phrase", "as instructed",
)

TRANSITION_SEPARATOR = "\n"
CONTINUATION_SEPARATOR = " "


@dataclass(frozen=True)
class Segment:
    text: str
    author: str
    loss: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def make_segments(prefix: str, transition: str, continuation: str, author: str = "teacher") -> list[dict]:
    """[prefix (model), "\\n" + transition (template), " " + continuation (author)], loss True on all."""
    if author not in SEGMENT_AUTHORS or author in ("model", "template"):
        raise ValueError(f"continuation author must be 'teacher' or 'rules', got {author!r}")
    if not prefix.strip() or not transition.strip() or not continuation.strip():
        raise ValueError("prefix, transition and continuation must all be non-empty")
    return [Segment(prefix, "model").to_dict(),
            Segment(TRANSITION_SEPARATOR + transition.strip(), "template").to_dict(),
            Segment(CONTINUATION_SEPARATOR + continuation.strip(), author).to_dict()]


def fix_continue_segments(prefix: str, transition: str, continuation: str, author: str = "teacher") -> list[dict]:
    """Fix & continue: `continuation` names and fixes the wrong step, then finishes the solution."""
    return make_segments(prefix, transition, continuation, author)


def fresh_restart_segments(prefix: str, transition: str, continuation: str, author: str = "teacher") -> list[dict]:
    """Fresh & restart: `continuation` drops the approach and solves the problem another way."""
    return make_segments(prefix, transition, continuation, author)


def segments_text(segments: Sequence[dict]) -> str:
    return "".join(s["text"] for s in segments)


def prefix_segment(segments: Sequence[dict]) -> Optional[dict]:
    """The erroneous-prefix segment (author 'model', first), or None."""
    return segments[0] if segments and segments[0].get("author") == "model" else None


# --------------------------------------------------------------------------------------------- checks

def prefix_end(revision_text: str, prefix: str) -> Optional[int]:
    """Where the copy of `prefix` ends in `revision_text`, when the revision starts with the prefix up to
    whitespace (any run of whitespace matches any other run; none may be added inside a word or number); else
    None. The copy may run straight into the next word only if the prefix ends in punctuation."""
    words = prefix.split()
    if not words:
        return 0
    i, n = 0, len(revision_text)
    while i < n and revision_text[i].isspace():
        i += 1
    for k, w in enumerate(words):
        if revision_text[i:i + len(w)] != w:
            return None
        i += len(w)
        if k < len(words) - 1:
            if i >= n or not revision_text[i].isspace():
                return None
            while i < n and revision_text[i].isspace():
                i += 1
    if i < n and not revision_text[i].isspace() and words[-1][-1].isalnum():
        return None  # "... = 54" copied as "... = 540": a changed number, not a copy
    return i


def prefix_intact(revision_text: str, prefix: str) -> bool:
    """Does the revision start with the prefix, unchanged but for whitespace?"""
    return prefix_end(revision_text or "", prefix or "") is not None


def transition_count_after_prefix(revision_text: str, prefix: str,
                                  phrases: Sequence[str] = TRANSITION_PHRASES) -> int:
    """How many transition phrases follow the prefix (the whole text is searched when the prefix is not intact)."""
    end = prefix_end(revision_text, prefix)
    return len(find_transitions(revision_text[end or 0:], phrases))


@lru_cache(maxsize=16)
def _forbidden_regex(phrases: tuple[str, ...]) -> re.Pattern:
    alts = [r"[\s\-_]*".join(re.escape(w) for w in p.split()) for p in sorted(phrases, key=len, reverse=True)]
    return re.compile(r"(?<![A-Za-z])(?:" + "|".join(alts) + r")(?![A-Za-z])", re.IGNORECASE)


def mentions_forbidden(text: Optional[str], phrases: Sequence[str] = FORBIDDEN_PHRASES) -> list[str]:
    """The forbidden phrases the text uses (as written in it), in order; [] when none."""
    if not text or not phrases:
        return []
    return [m.group(0) for m in _forbidden_regex(tuple(phrases)).finditer(text)]


def revision_drop_reason(revision_text: Optional[str], prefix: str,
                         phrases: Sequence[str] = TRANSITION_PHRASES,
                         forbidden: Sequence[str] = FORBIDDEN_PHRASES) -> Optional[str]:
    """Why a teacher's revision cannot be kept (one of DROP_REASONS), or None when it passes every check."""
    if not revision_text or not revision_text.strip():
        return "empty"
    end = prefix_end(revision_text, prefix)
    if end is None:
        return "prefix_changed"
    check = check_transition_after(revision_text, end, phrases)
    if check.reason:
        return check.reason
    after = revision_text[end:]
    if mentions_forbidden(after, forbidden):
        return "mentions_forbidden"
    continuation = revision_text[check.match.end:]
    if not continuation.strip():
        return "no_continuation"
    ans = extract_answer(continuation)
    if ans is None or ans.method != "answer_is":
        return "no_final_answer"
    return None


def segments_from_teacher(revision_text: str, prefix: str, phrases: Sequence[str] = TRANSITION_PHRASES,
                          forbidden: Sequence[str] = FORBIDDEN_PHRASES) -> tuple[Optional[list[dict]], Optional[str]]:
    """Cut a teacher's revision into [prefix (model), transition (template), continuation (teacher)]:
    (segments, None), or (None, drop reason). The model segment holds `prefix` itself, so the trajectory
    starts with exactly what the attempt said."""
    reason = revision_drop_reason(revision_text, prefix, phrases, forbidden)
    if reason:
        return None, reason
    end = prefix_end(revision_text, prefix)
    m = check_transition_after(revision_text, end, phrases).match
    return [Segment(prefix, "model").to_dict(),
            Segment(revision_text[end:m.end], "template").to_dict(),
            Segment(revision_text[m.end:].rstrip(), "teacher").to_dict()], None


# --------------------------------------------------------------------------------------------- smoothing

_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:,\d{3})*(?:\.\d+)?")


def _numbers(text: str) -> set[str]:
    return {m.group(0).replace(",", "") for m in _NUMBER.finditer(text)}


def smoothing_drop_reason(original: str, smoothed: Optional[str]) -> Optional[str]:
    """Why a smoothed revision cannot replace the original, or None: empty, no_final_answer,
    answer_changed, numbers_changed (a number of the original is gone), markdown (bold or bullets, which the
    smoothing prompt forbids)."""
    if not smoothed or not smoothed.strip():
        return "empty"
    new = extract_answer(smoothed)
    if new is None or new.method != "answer_is":
        return "no_final_answer"
    old = extract_answer(original)
    if old is not None and not same_answer(str(new), str(old)):
        return "answer_changed"
    if _numbers(original) - _numbers(smoothed):
        return "numbers_changed"
    if "**" in smoothed or re.search(r"^\s*[-*•]\s", smoothed, re.MULTILINE):
        return "markdown"
    return None
