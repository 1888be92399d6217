"""stages.steps: step splitting with offsets, on targeted cases and on real GSM8K / MATH-500 / ProcessBench text."""
import json
import re
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stages.steps import (SplitSolution, Step, is_final_answer_line, join_steps, number_steps, prefix_through,
                          protected_spans, split_solution, split_steps, strip_step_marker)

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
needs_data = pytest.mark.skipif(not (DATA / "gsm8k_train.jsonl").exists(), reason="shared data not present")


def _jsonl(name):
    with open(DATA / name, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _unescaped_dollars(t: str) -> int:
    return len(re.findall(r"(?<!\\)\$", t))


def check_invariants(split: SplitSolution) -> None:
    """What every split must satisfy: steps are the exact, stripped, ordered source slices; only whitespace lies
    between them; no boundary falls inside a protected span; prefixes are exact prefixes of the source."""
    src = split.source
    pos = 0
    for i, s in enumerate(split.steps, 1):
        assert s.index == i
        assert s.text == src[s.start:s.end]
        assert s.text and s.text == s.text.strip()
        assert not src[pos:s.start].strip(), f"non-whitespace dropped between steps: {src[pos:s.start]!r}"
        pos = s.end
    assert not src[pos:].strip()
    spans = protected_spans(src)
    for a, b in zip(split.steps, split.steps[1:]):
        for x, y in spans:
            assert not (x < a.end < y or x < b.start < y), f"split inside protected {src[x:y]!r}"
    for k in range(len(split.steps) + 1):
        p = prefix_through(split, k)
        assert src.startswith(p)
        if k:
            assert p.endswith(split.steps[k - 1].text)
    assert "".join(src.split()) == "".join("".join(s.text.split()) for s in split.steps)


# --------------------------------------------------------------------------------------------- targeted cases

def test_sentences_keep_abbreviations_decimals_money_and_times():
    text = ("Mr. Smith buys 3.5 kg of apples for $1,200.50 at 3:30 p.m. on Monday, e.g. Gala apples. "
            "Dr. Lee pays i.e. half vs. a third. Then the total is 7.25 dollars! Is that right? The answer is: 7.25")
    assert split_steps(text) == [
        "Mr. Smith buys 3.5 kg of apples for $1,200.50 at 3:30 p.m. on Monday, e.g. Gala apples.",
        "Dr. Lee pays i.e. half vs. a third.",
        "Then the total is 7.25 dollars!",
        "Is that right?",
        "The answer is: 7.25"]
    assert split_solution(text).mode == "sentences"


def test_sentence_end_at_a_time_abbreviation_before_a_capital():
    assert split_steps("She leaves at 5 p.m. Sam arrives at 6 a.m. on Tuesday.") == [
        "She leaves at 5 p.m.", "Sam arrives at 6 a.m. on Tuesday."]


def test_latex_inline_and_display_survive():
    text = (r"We have $x = 3.5. Y$ and \(a. B\) here. Then $$y = 1. Z = 2$$ follows. "
            r"Next \[ q = 4. R \] is shown. Also \begin{align} a &= 1. \\ B &= 2. \end{align} Finally $\frac{1}{2}$.")
    steps = split_steps(text)
    assert steps == [r"We have $x = 3.5. Y$ and \(a. B\) here.", r"Then $$y = 1. Z = 2$$ follows.",
                     r"Next \[ q = 4. R \] is shown.",
                     r"Also \begin{align} a &= 1. \\ B &= 2. \end{align} Finally $\frac{1}{2}$."]


def test_period_just_inside_a_closing_dollar_ends_a_sentence():
    text = r"We have that $r = \sqrt{0^2 + 3^2} = 3.$  Also, the angle is $\frac{\pi}{2}.$ Therefore it works."
    assert split_steps(text) == [r"We have that $r = \sqrt{0^2 + 3^2} = 3.$", r"Also, the angle is $\frac{\pi}{2}.$",
                                 "Therefore it works."]


def test_money_signs_are_not_math():
    text = "He pays $5 for tea and $6 for cake. Then he pays $3.5 * 4000 = $14,000. Finally he has $2 left."
    assert split_steps(text) == ["He pays $5 for tea and $6 for cake.", "Then he pays $3.5 * 4000 = $14,000.",
                                 "Finally he has $2 left."]
    assert protected_spans("costs $5 and $6 now") == []
    assert protected_spans("is $5$ here") == [(3, 6)]


def test_dollar_written_after_amounts_across_lines():
    text = "Monday: <<6=6>>6$\nTuesday:6(2)=12$\nTotal:6+12=<<6+12=18>>18$\n#### 18"
    assert split_steps(text) == ["Monday: <<6=6>>6$", "Tuesday:6(2)=12$", "Total:6+12=<<6+12=18>>18$", "#### 18"]


def test_gsm8k_lines_with_calculator_notes():
    text = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
            "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72")
    s = split_solution(text)
    assert s.mode == "lines"
    assert s.texts == ["Natalia sold 48/2 = <<48/2=24>>24 clips in May.",
                       "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.", "#### 72"]


@pytest.mark.parametrize("text,expected", [
    ("Step 1: Sam has 5.\nStep 2: He gets 3 more, so 8.\nThe answer is: 8",
     ["Step 1: Sam has 5.", "Step 2: He gets 3 more, so 8.", "The answer is: 8"]),
    ("**Step 1**: compute $\\frac{1}{2}$.\n\n**Step 2:** So x = 3.\nMore about step 2.",
     ["**Step 1**: compute $\\frac{1}{2}$.", "**Step 2:** So x = 3.\nMore about step 2."]),
    ("### Step 1. Find a\na = 2\n### Step 2. Find b\nb = 3",
     ["### Step 1. Find a\na = 2", "### Step 2. Find b\nb = 3"]),
    ("Let's solve.\n1. First $x=1$.\n2. Then y. 3.5 is big.\n3) done",
     ["Let's solve.", "1. First $x=1$.", "2. Then y. 3.5 is big.", "3) done"]),
    ("(1) a is 2.\n(2) b is 3.", ["(1) a is 2.", "(2) b is 3."]),
    ("Step 1: a = 2. Step 2: b = 3. The answer is 3", ["Step 1: a = 2.", "Step 2: b = 3.", "The answer is 3"]),
    ("Step 1: a = 2.\nStep 2: b = 3.\n\nSo the total is 5.\n\nThe answer is: 5",
     ["Step 1: a = 2.", "Step 2: b = 3.", "So the total is 5.", "The answer is: 5"]),
])
def test_numbered_steps(text, expected):
    s = split_solution(text)
    assert s.mode == "numbered"
    assert s.texts == expected
    check_invariants(s)


def test_numbers_out_of_sequence_are_not_markers():
    # "3.5" and "2016." at a line start are not step markers; no "1." means no numbered mode
    s = split_solution("2016. That year was good.\n3.5 kg were sold.")
    assert s.mode == "lines"
    assert s.texts == ["2016. That year was good.", "3.5 kg were sold."]


def test_paragraphs_and_display_math_paragraphs_join():
    text = "First we find x.\nIt is 2.\n\n$$x = 2$$\n\nThen y is 3.\n\nThe answer is: 3"
    s = split_solution(text)
    assert s.mode == "paragraphs"
    assert s.texts == ["First we find x.\nIt is 2.\n\n$$x = 2$$", "Then y is 3.", "The answer is: 3"]


def test_final_answer_line_is_its_own_step():
    s = split_solution("First we find x.\nIt is 2.\n\nThen y is 3.\nThe answer is: 3")
    assert s.texts == ["First we find x.\nIt is 2.", "Then y is 3.", "The answer is: 3"]
    s = split_solution("x is 2 so y is 3 The answer is: 3")
    assert s.texts == ["x is 2 so y is 3", "The answer is: 3"]
    # "so the answer is" is not cut off its sentence
    assert split_steps("x is 2. So the answer is 2.") == ["x is 2.", "So the answer is 2."]
    assert split_steps("x is 2, so the answer is 2.") == ["x is 2, so the answer is 2."]


@pytest.mark.parametrize("line,ok", [("The answer is: 5", True), ("#### 72", True), ("Final answer: x", True),
                                     ("**Answer:** 5", True), ("\\boxed{5}", True), ("So the answer is 5", True),
                                     ("Answer the question", False), ("The answers vary", False),
                                     ("He has 5", False)])
def test_is_final_answer_line(line, ok):
    assert is_final_answer_line(line) is ok


def test_display_math_lines_join_the_sentence_before():
    text = "We count the terms in the sum\n\\[\\sum_{j=1}^n j,\\]where $n$ is fixed.\nThus it is $n(n+1)/2$."
    s = split_solution(text)
    assert s.texts == ["We count the terms in the sum\n\\[\\sum_{j=1}^n j,\\]where $n$ is fixed.",
                       "Thus it is $n(n+1)/2$."]


def test_lowercase_continuation_lines_join_unless_the_line_ended():
    s = split_solution("Then the second year was 2*x,\nand the third was 4*x.\ntherefore, it is 7*x.\nx=5")
    assert s.texts == ["Then the second year was 2*x,\nand the third was 4*x.", "therefore, it is 7*x.", "x=5"]


def test_prefix_is_verbatim_with_odd_spacing():
    text = "  Step 1:  a = 2.\n\n\n   Step 2:\tb = 3.  \n  The answer is:   3  "
    s = split_solution(text)
    assert s.texts == ["Step 1:  a = 2.", "Step 2:\tb = 3.", "The answer is:   3"]
    assert prefix_through(s, 1) == "  Step 1:  a = 2."
    assert prefix_through(s, 2) == "  Step 1:  a = 2.\n\n\n   Step 2:\tb = 3."
    assert join_steps(s) == text.rstrip()
    assert join_steps(s, 1) == prefix_through(s, 1)
    assert prefix_through(s, 0) == ""
    with pytest.raises(ValueError):
        prefix_through(s, 4)
    with pytest.raises(TypeError):
        prefix_through(["a", "b"], 1)


def test_number_steps_shows_bodies_without_markers():
    s = split_solution("Let's go.\nStep 1: a = 2.\nStep 2: b = 3.")
    assert number_steps(s) == "Step 1: Let's go.\nStep 2: a = 2.\nStep 3: b = 3."
    assert number_steps(["x is 1", "**Step 7.** y is 2"]) == "Step 1: x is 1\nStep 2: y is 2"
    assert number_steps([]) == ""
    assert s.steps[1].body == "a = 2."
    assert strip_step_marker("3) done") == "done"
    assert strip_step_marker("3.5 kg") == "3.5 kg"
    assert strip_step_marker("Step 1:") == "Step 1:"  # nothing after the marker: keep it


def test_empty_and_whitespace():
    for t in ("", "   \n ", None):
        s = split_solution(t)
        assert s.mode == "empty" and s.steps == () and len(s) == 0


def test_unclosed_math_does_not_swallow_the_text():
    s = split_solution("Let $x = 2. Then y is 3. So z is 4.")
    assert len(s) == 3
    check_invariants(s)
    s = split_solution("We have \\begin{align} x = 1. Then y. \n\nNext part.")
    check_invariants(s)
    assert s.texts[-1] == "Next part."


# --------------------------------------------------------------------------------------------- real data

@needs_data
def test_gsm8k_gold_solutions_split_per_line():
    rows = _jsonl("gsm8k_train.jsonl") + _jsonl("gsm8k_test.jsonl")
    same, counts = 0, Counter()
    for r in rows:
        s = split_solution(r["answer"])
        check_invariants(s)
        lines = [ln.strip() for ln in r["answer"].split("\n") if ln.strip()]
        same += s.texts == lines
        counts[s.mode] += 1
        assert s.steps[-1].text.startswith("####")          # the answer line is the last step, alone
        assert 2 <= len(s) <= len(lines)
    assert same / len(rows) > 0.99, same / len(rows)
    assert counts["lines"] / len(rows) > 0.99


@needs_data
def test_gsm8k_as_one_paragraph_splits_per_sentence_at_the_line_boundaries():
    """Joining the gold lines with spaces makes a one-paragraph text; the sentence splitter must find every line
    boundary again (lines that end with '.'), and may only add splits inside a line at a sentence end."""
    rows = _jsonl("gsm8k_train.jsonl") + _jsonl("gsm8k_test.jsonl")
    tried, missed = 0, 0
    for r in rows:
        lines = [ln.strip() for ln in r["answer"].split("\n") if ln.strip()]
        if not all(ln.endswith(".") and not ln[:1].islower() for ln in lines[:-1]):
            continue
        if any(ln[:1].islower() for ln in lines[1:]):
            continue
        tried += 1
        text = " ".join(lines)
        s = split_solution(text)
        check_invariants(s)
        assert s.mode == "sentences"
        bounds, pos = set(), 0
        for ln in lines[:-1]:
            pos += len(ln) + 1
            bounds.add(pos)
        starts = {x.start for x in s.steps}
        missed += bool(bounds - starts)
        for x in s.steps[1:]:   # every split point is after a sentence end or before the answer
            before = text[:x.start].rstrip()
            assert re.search(r"[.!?][\"')\]]*\$?$", before) or x.text.startswith("####"), before[-40:]
    assert tried > 3500
    assert missed / tried < 0.005, (missed, tried)


@needs_data
def test_math500_solutions_never_split_inside_math():
    rows = _jsonl("math500_test.jsonl")
    counts, sizes = Counter(), Counter()
    for r in rows:
        s = split_solution(r["solution"])
        check_invariants(s)
        counts[s.mode] += 1
        sizes[len(s)] += 1
        for x in s.steps:
            t = x.text
            assert _unescaped_dollars(t) % 2 == 0, t
            assert t.count("\\begin{") == t.count("\\end{"), t
            assert t.count("\\[") == t.count("\\]") and t.count("\\(") == t.count("\\)"), t
            assert t.count("[asy]") == t.count("[/asy]"), t
        if s.mode == "sentences":
            for x in s.steps[:-1]:
                assert re.search(r"[.!?][\"')\]]*(?:\$\$|\$|\\\)|\\\])?[\"')\]]*$", x.text), x.text[-60:]
        if s.mode == "paragraphs":
            for a, b in zip(s.steps, s.steps[1:]):
                assert "\n\n" in r["solution"][a.end:b.start].replace(" ", "").replace("\t", "")
    assert set(counts) <= {"sentences", "paragraphs", "lines", "numbered"}
    assert counts["sentences"] > 300 and counts["paragraphs"] > 100
    mean = sum(k * v for k, v in sizes.items()) / len(rows)
    assert 2 <= mean <= 5, mean
    assert max(sizes) <= 20


@needs_data
def test_processbench_paragraph_steps_are_recovered_exactly():
    rows = _jsonl("processbench_gsm8k.jsonl")
    exact = 0
    for r in rows:
        text = "\n\n".join(r["steps"])
        s = split_solution(text)
        check_invariants(s)
        exact += s.texts == [x.strip() for x in r["steps"]]
    assert exact / len(rows) > 0.98, exact


# --------------------------------------------------------------------------------------------- fuzz

_PIECES = ["Mr. Smith", "has 3.5 apples.", "He pays $1,200.50.", "e.g. pears", "i.e. two", "vs. Dr. Lee",
           "$x = 1. Y$", "$$a. B$$", "\\(c. D\\)", "\\[e. F\\]", "\\begin{align} g. \\\\ H \\end{align}",
           "Step 1:", "Step 2:", "1.", "2)", "The answer is: 5", "#### 7", "<<2*3=6>>6", "So", "then", "\n",
           "\n\n", " ", ".", "?", "!", "$", "\\", "{", "}", "It is 12:30 p.m.", "x=", "and", "Total:", "[asy]",
           "[/asy]", "**", "***Step 3***", "(1)", "\t"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=30), st.text(max_size=40))
def test_fuzz_invariants_hold_for_any_text(pieces, noise):
    text = " ".join(pieces) + noise
    s = split_solution(text)
    check_invariants(s)
    number_steps(s)  # never raises
    assert s.mode in {"numbered", "paragraphs", "lines", "sentences", "empty"}
    assert isinstance(s.steps, tuple) and all(isinstance(x, Step) for x in s.steps)


def test_windows_line_endings():
    s = split_solution("First we find x.\r\nIt is 2.\r\n\r\nThen y is 3.\r\n\r\nThe answer is: 3")
    assert s.mode == "paragraphs"
    assert s.texts == ["First we find x.\r\nIt is 2.", "Then y is 3.", "The answer is: 3"]
    check_invariants(s)
    s = split_solution("Sam has 5 apples.\r\nHe eats 2, so 5 - 2 = 3.\r\n#### 3")
    assert s.texts == ["Sam has 5 apples.", "He eats 2, so 5 - 2 = 3.", "#### 3"]
