"""pipelines.methods.lemma.injection_reply: splitting an injected solution from its explanation, and the injection filter."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.methods.lemma.injection_reply import injection_drop_reason, parse_injection, same_answer


def test_parse_injection_well_formed():
    raw = ("Sam buys 3 pens at $4 each, so 3 * 4 = 10 dollars.\nHe pays 10 + 5 = 15 dollars.\nThe answer is: 15\n"
           "<explanation>Step 1 multiplies 3 by 4 as 10 (calculation_error).</explanation>")
    p = parse_injection(raw)
    assert p.parse_ok and p.reason is None
    assert p.solution.endswith("The answer is: 15") and "<explanation>" not in p.solution
    assert p.final_answer == "15"
    assert p.explanation == "Step 1 multiplies 3 by 4 as 10 (calculation_error)."
    assert p.raw_text == raw
    assert injection_drop_reason(p, "17") is None
    assert injection_drop_reason(p, "15.0") == "answer_equals_reference"


@pytest.mark.parametrize("raw,reason", [
    ("", "empty"), (None, "empty"),
    ("<explanation>only this</explanation>", "no_solution"),
    ("He has 5 apples, so 5 + 3 = 9.\n<explanation>wrong sum</explanation>", "no_final_answer"),
    ("He has 5 + 3 = 9 apples.\nThe answer is: 9", "no_explanation"),
    ("He has 5 + 3 = 9 apples.\nThe answer is: 9\n<explanation>  </explanation>", "no_explanation"),
])
def test_parse_injection_failures(raw, reason):
    p = parse_injection(raw)
    assert not p.parse_ok and p.reason == reason
    assert injection_drop_reason(p, "8") == reason


def test_parse_injection_tolerates_labels_unclosed_tags_and_stray_notes():
    raw = ("**Solution:** He has 5 + 3 = 9 apples.\nThe answer is: 9\nNote: I made it wrong on purpose.\n"
           "< Explanation >Adds 5 and 3 as 9")
    p = parse_injection(raw)
    assert p.parse_ok
    assert p.solution == "He has 5 + 3 = 9 apples.\nThe answer is: 9"
    assert p.explanation == "Adds 5 and 3 as 9"
    p = parse_injection("[Solution]\nHe has 9.\nThe answer is: 9\n\nExplanation: the sum is off by one.")
    assert p.parse_ok and p.solution == "He has 9.\nThe answer is: 9" and p.explanation == "the sum is off by one."


def test_same_answer():
    assert same_answer("1,000", "1000") and same_answer("72.0", "72") and same_answer("$5", "5")
    assert not same_answer("71", "72")
    assert same_answer("\\frac{1}{2}", "\\frac{1}{2} ") and not same_answer("x", "y")


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=200))
def test_fuzz_parse_injection_never_raises(raw):
    p = parse_injection(raw)
    assert p.parse_ok == (p.reason is None)
    if p.parse_ok:
        assert p.solution and p.explanation and p.final_answer
