"""pipelines.methods.lemma.judge_reply: the judge output format, robust parsing, parse rates, and a fuzz test."""
import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.methods.lemma.judge_reply import (UNPARSED_REASONS, VERDICTS, JudgeResult, format_judgement, parse_judgement,
                                parse_rates)
from pipelines.methods.lemma.taxonomy import ERROR_LABELS


def located(raw, n=5):
    r = parse_judgement(raw, n)
    assert r.verdict == "located", (raw, r)
    return r


def test_the_prompted_format():
    raw = "Verdict: incorrect\nFirst wrong step: 3\nError type: calculation_error\nReason: 4 * 7 is 28, not 24."
    r = located(raw)
    assert (r.first_error_step, r.error_type, r.type_parse_ok, r.parse_ok) == (3, "calculation_error", True, True)
    assert r.raw_text == raw and r.reason is None and r.n_steps == 5
    r = parse_judgement("Verdict: correct", 5)
    assert (r.verdict, r.first_error_step, r.error_type, r.type_parse_ok) == ("says_correct", None, None, False)
    assert r.parse_ok


def test_format_judgement_round_trips():
    for step in range(1, 6):
        for lab in ERROR_LABELS:
            r = parse_judgement(format_judgement(step, lab, "because"), 5)
            assert (r.verdict, r.first_error_step, r.error_type) == ("located", step, lab)
    assert parse_judgement(format_judgement(None), 5).verdict == "says_correct"


@pytest.mark.parametrize("raw,step", [
    ("The solution is incorrect, the first wrong step is step 3, so the wrong type is 'calculation_error'.", 3),
    ("**First wrong step:** 2\n**Error type:** `operator_error`", 2),
    ("## Verdict: Incorrect\n- First Wrong Step: Step 4\n- Error Type: Missing Step", 4),
    ("Step 3 is wrong because 5 * 6 is 30.", 3),
    ("Step 2 is correct. Step 4 is incorrect, and step 5 is also wrong.", 4),
    ("The first error occurs in step 2, where the student adds instead of multiplying.", 2),
    ("I think the first mistake is in Step #1.", 1),
    ("the third step is wrong", 3),
    ("The first incorrect step is the second step.", 2),
    ("First wrong step: five\nError type: counting error", 5),
    ("Step 3 contains an error: 12 - 5 = 6.", 3),
    ("The error is in step 2.", 2),
    ("Verdict: incorrect\nFirst wrong step = step 1\nError type = question misinterpretation", 1),
    ("FIRST WRONG STEP: 3\nERROR TYPE: CALCULATION_ERROR", 3),
    ("Step 3 (the subtraction) is wrong.", 3),
    ("The final answer is correct but step 2 is wrong.", 2),
    ("First wrong step:   3   \n", 3),
    ("Verdict: incorrect\r\nFirst wrong step: 2\r\nError type: operator_error", 2),
])
def test_free_text_variants(raw, step):
    assert located(raw).first_error_step == step


@pytest.mark.parametrize("raw,label", [
    ("First wrong step: 2\nError type: question_misinterpretation", "question_understanding_error"),
    ("First wrong step: 2\nError type: The step has a calculation error (28 vs 24).", "calculation_error"),
    ("The first wrong step is step 2, so the wrong type is 'referencing_previous_step_value_error'.",
     "referencing_previous_step_value_error"),
    ("Step 2 is wrong. This is a missing step.", "missing_step"),
    ("Step 2 is wrong: an operator error.", "operator_error"),
    ("First wrong step: 2\nError type: something odd", None),
    ("First wrong step: 2\nError type: calculation_error or operator_error", None),
])
def test_error_type(raw, label):
    r = located(raw)
    assert r.error_type == label and r.type_parse_ok == (label is not None)


@pytest.mark.parametrize("raw", [
    "Verdict: correct\nAll steps check out.", "The solution is correct.", "All steps are correct.",
    "First wrong step: none", "First wrong step: N/A\nVerdict: correct", "There are no errors in this solution.",
    "**Verdict:** Correct", "No wrong step."])
def test_says_correct(raw):
    r = parse_judgement(raw, 4)
    assert r.verdict == "says_correct" and r.first_error_step is None and r.error_type is None


@pytest.mark.parametrize("raw,reason", [
    ("", "empty"), ("   \n", "empty"), (None, "empty"),
    ("I am not sure what to say about this.", "no_verdict"),
    ("Verdict: incorrect\nThe reasoning has a problem somewhere.", "no_step_number"),
    ("First wrong step: somewhere in the middle", "no_step_number"),
    ("First wrong step: 9\nError type: calculation_error", "step_out_of_range"),
    ("First wrong step: 0", "step_out_of_range"),
    ("Verdict: correct\nFirst wrong step: 2", "contradictory"),
    ("The solution is correct. Step 2 is wrong.", "contradictory"),
    ("Verdict: incorrect\nFirst wrong step: none", "contradictory"),
    ("The first wrong step is step 2. No wait, the first wrong step is step 3.", "ambiguous"),
])
def test_unparsed_is_never_located(raw, reason):
    r = parse_judgement(raw, 5)
    assert r.verdict == "unparsed" and r.reason == reason
    assert r.first_error_step is None and r.error_type is None and not r.type_parse_ok and not r.parse_ok


def test_correct_up_to_a_step_is_not_a_correct_verdict():
    r = parse_judgement("The solution is correct up to step 2, but step 3 is wrong.", 5)
    assert (r.verdict, r.first_error_step) == ("located", 3)


def test_a_parse_keeps_raw_text_and_parse_ok():
    r = parse_judgement("Step 2 is wrong", 3)
    assert r.raw_text == "Step 2 is wrong" and r.parse_ok is True and r.first_error_step == 2


def test_parse_rates():
    raws = [format_judgement(2, "calculation_error"), format_judgement(3, None), "Verdict: correct", "", "gibberish",
            "First wrong step: 99"]
    rates = parse_rates(parse_judgement(r, 5) for r in raws)
    assert (rates.n, rates.located, rates.says_correct, rates.unparsed, rates.type_parse_ok) == (6, 2, 1, 3, 1)
    assert rates.parse_ok_rate == pytest.approx(3 / 6)
    assert rates.located_rate == pytest.approx(2 / 6)
    assert rates.type_parse_ok_rate == pytest.approx(1 / 2)
    assert rates.unparsed_reasons == {"empty": 1, "no_verdict": 1, "step_out_of_range": 1}
    d = rates.to_dict()
    assert d["parse_ok_rate"] == pytest.approx(0.5) and d["n"] == 6
    empty = parse_rates([])
    assert empty.n == 0 and empty.parse_ok_rate == 0.0 and empty.type_parse_ok_rate == 0.0


# --------------------------------------------------------------------------------------------- seeded messy outputs

_STEP_FORMS = ["First wrong step: {n}", "**First wrong step:** {n}", "first wrong step - Step {n}",
               "The first wrong step is step {n}.", "Step {n} is wrong.", "The first error occurs in step {n}.",
               "FIRST INCORRECT STEP: #{n}", "I believe step {n} is incorrect", "The mistake is in Step {n}."]
_TYPE_FORMS = ["Error type: {t}", "**Error type:** `{t}`", "so the wrong type is '{t}'.", "Error Type - {t}"]
_NOISE = ["", "Let me look at each step.", "Step 1 looks fine.", "Reason: the numbers do not match.",
          "The computation 3 * 4 = 12 is right.", "\n", "### Analysis", "> quoted line"]


def test_seeded_messy_outputs_are_recovered():
    rng = random.Random(1234)
    for _ in range(2000):
        n_steps = rng.randint(2, 9)
        truth = rng.randint(2, n_steps)
        label = rng.choice(ERROR_LABELS)
        t_label = label if rng.random() < 0.5 else label.replace("_", " ").title()
        parts = [rng.choice(_NOISE), rng.choice(_STEP_FORMS).format(n=truth), rng.choice(_NOISE),
                 rng.choice(_TYPE_FORMS).format(t=t_label)]
        if rng.random() < 0.5:
            parts.insert(0, "Verdict: incorrect")
        raw = rng.choice(["\n", " ", "\n\n"]).join(parts)
        if rng.random() < 0.3:
            raw = raw.upper() if rng.random() < 0.5 else raw.lower()
        r = parse_judgement(raw, n_steps)
        assert (r.verdict, r.first_error_step, r.error_type) == ("located", truth, label), raw


# --------------------------------------------------------------------------------------------- fuzz

_FRAGMENTS = ["Step", "step", "first", "wrong", "incorrect", "correct", "is", "the", "error", "mistake", "in",
              "Verdict:", "First wrong step:", "Error type:", "none", "N/A", "not", "**", "#", "`", "\n", ":",
              "three", "third", "0", "1", "2", "3", "7", "12", "-1", "999999", "calculation_error",
              "question_misinterpretation", "missing step", "all steps are correct", "up to", "The solution is",
              "so the wrong type is", "(", ")", ".", ",", "é", "\u00a0", "\t"]


def _numbers_written(raw: str) -> set:
    words = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
             "ten": 10, "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5}
    nums = {int(x) for x in re.findall(r"\d+", raw)}
    low = raw.lower()
    nums |= {v for w, v in words.items() if re.search(rf"\b{w}\b", low)}
    return nums


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from(_FRAGMENTS), max_size=25), st.text(max_size=30), st.integers(1, 12),
       st.sampled_from([" ", "", "\n"]))
def test_fuzz_parser_never_raises_and_never_invents_a_step(frags, noise, n_steps, sep):
    raw = sep.join(frags) + noise
    r = parse_judgement(raw, n_steps)
    assert isinstance(r, JudgeResult) and r.raw_text == raw
    assert r.verdict in VERDICTS
    if r.verdict == "located":
        assert 1 <= r.first_error_step <= n_steps
        assert r.first_error_step in _numbers_written(raw)
    else:
        assert r.first_error_step is None and r.error_type is None and not r.type_parse_ok
    if r.verdict == "unparsed":
        assert r.reason in UNPARSED_REASONS
    assert r.error_type is None or r.error_type in ERROR_LABELS
    assert r.type_parse_ok == (r.error_type is not None)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=300), st.integers(1, 20))
def test_fuzz_arbitrary_text(raw, n_steps):
    r = parse_judgement(raw, n_steps)
    assert r.verdict in VERDICTS
    if r.verdict == "located":
        assert r.first_error_step in _numbers_written(raw)



def test_the_random_step_baseline_beside_the_judges_accuracy():
    """A judge naming one of the n steps shown at random hits the exact step 1/n of the time, and within one step
    (the step and its neighbours that exist)/n; judge_accuracy divides what was counted by the labelled rows."""
    from pipelines.methods.lemma.judge_stages import JudgeInjectionsStage
    from pipelines.methods.lemma.summary import judge_accuracy
    from stages.base import StageStats
    from stages.engines.config import EngineConfig
    from tests.helpers import context
    st = JudgeInjectionsStage(name="judge_injections",
                              context=context(teacher=EngineConfig(kind="fake", fake_script="lemma")))
    stats = StageStats()
    four = [{"idx": i, "text": f"s{i}"} for i in range(1, 5)]
    st.after({"source": "rules", "first_error_step": 1}, {"first_error_step": 1, "steps": four}, stats)   # 1/4, 2/4
    st.after({"source": "rules", "first_error_step": 3}, {"first_error_step": 4, "steps": four}, stats)   # 1/4, 3/4
    acc = judge_accuracy(stats.as_dict())
    assert acc["labelled"] == 2 and acc["exact"] == 0.5 and acc["within_1"] == 1.0
    assert acc["random_exact"] == 0.25 and acc["random_within_1"] == 0.625
