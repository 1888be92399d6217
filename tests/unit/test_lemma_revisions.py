"""pipelines.methods.lemma.revision_checks: segments, prefix fidelity, transition and forbidden-phrase checks, smoothing checks."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.methods.lemma.revision_checks import (DROP_REASONS, FORBIDDEN_PHRASES, fix_continue_segments, fresh_restart_segments,
                                    make_segments, mentions_forbidden, prefix_end, prefix_intact, prefix_segment,
                                    revision_drop_reason, segments_from_teacher, segments_text,
                                    smoothing_drop_reason, transition_count_after_prefix)
from pipelines.methods.lemma.taxonomy import TRANSITION_PHRASES

PREFIX = "The pens cost 3 * 4 = 12 dollars.\nThe pencils cost 5 * 2 = 12 dollars."
T = TRANSITION_PHRASES[0]
FIX = "5 * 2 is 10, not 12. The pencils cost 5 * 2 = 10 dollars.\nIn total 12 + 10 = 22 dollars.\nThe answer is: 22"


def good_revision(sep="\n"):
    return PREFIX + sep + T + " " + FIX


def test_segments_join_to_the_revision_and_mark_the_prefix():
    segs = fix_continue_segments(PREFIX, T, FIX)
    assert [s["author"] for s in segs] == ["model", "template", "teacher"]
    assert all(s["loss"] is True for s in segs)
    assert segs[0]["text"] == PREFIX and prefix_segment(segs) is segs[0]
    assert segments_text(segs) == good_revision()
    assert revision_drop_reason(segments_text(segs), PREFIX) is None
    rules = fresh_restart_segments(PREFIX, T, FIX, author="rules")
    assert rules[-1]["author"] == "rules"
    for bad in ("model", "template", "critic"):
        with pytest.raises(ValueError):
            make_segments(PREFIX, T, FIX, author=bad)
    with pytest.raises(ValueError):
        make_segments(PREFIX, " ", FIX)
    assert prefix_segment([{"text": "x", "author": "teacher", "loss": True}]) is None


def test_prefix_intact_ignores_whitespace_only():
    assert prefix_intact(good_revision(), PREFIX)
    assert prefix_intact("  " + PREFIX.replace("\n", "  ") + "\n\n" + T, PREFIX)
    assert not prefix_intact(PREFIX.replace("5 * 2", "5 x 2") + " " + T, PREFIX)
    assert not prefix_intact(PREFIX.replace("= 12 dollars.\nThe pencils", "= 12 dollars.\nPencils") + T, PREFIX)
    assert not prefix_intact("The pens cost 3 * 4 = 120", "The pens cost 3 * 4 = 12")      # a changed number
    assert prefix_intact("The pens cost 3 * 4 = 12.Wait", "The pens cost 3 * 4 = 12.")     # runs on after a stop
    assert not prefix_intact("The pens cost 3*4 = 12.", "The pens cost 3 * 4 = 12.")       # spaces removed
    assert not prefix_intact("", PREFIX) and prefix_intact("anything", "")
    end = prefix_end(good_revision(), PREFIX)
    assert good_revision()[:end] == PREFIX


@pytest.mark.parametrize("text,reason", [
    ("", "empty"), ("   ", "empty"),
    (PREFIX.replace("5 * 2", "5 * 3") + "\n" + T + " " + FIX, "prefix_changed"),
    (PREFIX + "\n" + FIX, "no_transition"),
    (PREFIX + "\n" + T + " " + FIX + " " + TRANSITION_PHRASES[5], "several_transitions"),
    (PREFIX + "\nSo far so good. " + T + " " + FIX, "transition_not_after_prefix"),
    (PREFIX + "\n" + T + " In my previous attempt I erred. " + FIX, "mentions_forbidden"),
    (PREFIX + "\n" + T + " The reference solution says 22. " + FIX, "mentions_forbidden"),
    (PREFIX + "\n" + T, "no_continuation"),
    (PREFIX + "\n" + T + " 5 * 2 is 10, so the total is 22.", "no_final_answer"),
])
def test_revision_drop_reasons(text, reason):
    assert reason in DROP_REASONS
    assert revision_drop_reason(text, PREFIX) == reason
    segs, why = segments_from_teacher(text, PREFIX)
    assert segs is None and why == reason


def test_transition_count_after_prefix():
    assert transition_count_after_prefix(good_revision(), PREFIX) == 1
    assert transition_count_after_prefix(PREFIX + " " + FIX, PREFIX) == 0
    two = good_revision() + " " + TRANSITION_PHRASES[3]
    assert transition_count_after_prefix(two, PREFIX) == 2
    # a phrase inside the prefix does not count
    p = "Hold on, I need to revisit what I just did. 2 + 2 = 5."
    assert transition_count_after_prefix(p + " " + T + " 2 + 2 = 4. The answer is: 4", p) == 1


def test_segments_from_teacher_keeps_the_original_prefix():
    teacher = "  " + PREFIX.replace("\n", " ") + "\n\n" + T + "  " + FIX + "\n"
    segs, why = segments_from_teacher(teacher, PREFIX)
    assert why is None
    assert segs[0] == {"text": PREFIX, "author": "model", "loss": True}
    assert segs[1]["author"] == "template" and segs[1]["text"].strip() == T
    assert segs[2]["author"] == "teacher" and segs[2]["text"].strip() == FIX
    assert segments_text(segs[1:]) == teacher[teacher.index("\n\n" + T):].rstrip()


def test_mentions_forbidden():
    assert mentions_forbidden("Unlike the Previous  Attempt, ...") == ["Previous  Attempt"]
    assert mentions_forbidden("the ground-truth answer and the groundtruth") == ["ground-truth", "groundtruth"]
    assert mentions_forbidden("By the answer key and the given solution") == ["answer key", "given solution"]
    assert mentions_forbidden("The students attempt the test; the solution is 5.") == []
    assert mentions_forbidden("") == [] and mentions_forbidden(None) == []
    assert mentions_forbidden("custom words here", ("custom words",)) == ["custom words"]
    assert len(FORBIDDEN_PHRASES) >= 10


@pytest.mark.parametrize("smoothed,reason", [
    ("The pens cost 3 * 4 = 12 dollars. Then the pencils cost 5 * 2 = 10 dollars. Wait, let me double-check: "
     "in total 12 + 10 = 22 dollars.\nThe answer is: 22", None),
    ("", "empty"),
    ("The pens cost 12 and the pencils 10, so 22 in total.", "no_final_answer"),
    ("The pens cost 3 * 4 = 12 dollars, pencils 5 * 2 = 10, total 12 + 10 = 22.\nThe answer is: 23", "answer_changed"),
    ("Pens and pencils cost 22 dollars in total.\nThe answer is: 22", "numbers_changed"),
    ("**Pens**: 3 * 4 = 12. Pencils: 5 * 2 = 10. Total: 12 + 10 = 22.\nThe answer is: 22", "markdown"),
    ("- Pens: 3 * 4 = 12\n- Pencils: 5 * 2 = 10\nTotal 12 + 10 = 22\nThe answer is: 22", "markdown"),
])
def test_smoothing_drop_reason(smoothed, reason):
    original = ("The pens cost 3 * 4 = 12 dollars.\nThe pencils cost 5 * 2 = 10 dollars.\n"
                "In total 12 + 10 = 22 dollars.\nThe answer is: 22")
    assert smoothing_drop_reason(original, smoothed) == reason


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=120), st.text(max_size=60))
def test_fuzz_checks_never_raise(text, prefix):
    r = revision_drop_reason(text, prefix)
    assert r is None or r in DROP_REASONS
    e = prefix_end(text, prefix)
    if e is not None:
        assert "".join(text[:e].split()) == "".join(prefix.split())
