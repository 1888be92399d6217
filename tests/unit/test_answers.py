"""stages.answers: final-answer extraction from completions and gold solutions (pure functions)."""
import pickle

import pytest

from stages.answers import ExtractedAnswer, clean_answer, extract_answer, last_boxed, reference_answer_from_solution


@pytest.mark.parametrize("text, answer, method", [
    # "The answer is" wins, last occurrence, cleaned
    ("Step 1: 3 * 5 = 15.\nThe answer is: 20", "20", "answer_is"),
    ("The answer is 20", "20", "answer_is"),
    ("the answer is 3. Wait, no.\nThe answer is 4.", "4", "answer_is"),
    ("The final answer is $18.", "18", "answer_is"),
    ("The answer is \\$18", "18", "answer_is"),
    ("The answer is 18 dollars.", "18", "answer_is"),
    ("The answer is 7 apples per box", "7", "answer_is"),
    ("The answer is 25%.", "25", "answer_is"),
    ("The answer is: 1,000.", "1000", "answer_is"),
    ("The answer is 1,234,567", "1234567", "answer_is"),
    ("The answer is -12.", "-12", "answer_is"),
    ("The answer is 2.5 meters.", "2.5", "answer_is"),
    ("The answer is 3/4", "3/4", "answer_is"),
    ("The answer is **42**", "42", "answer_is"),
    ("**Final Answer:** $\\frac{3}{4}$", "\\frac{3}{4}", "answer_is"),
    ("Answer: 12", "12", "answer_is"),
    ("The answer is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}", "answer_is"),
    ("The answer is $(3, \\frac{\\pi}{2})$.", "(3, \\frac{\\pi}{2})", "answer_is"),
    ("The answer is Evelyn.", "Evelyn", "answer_is"),
    # boxed (balanced braces, last one)
    ("so x = \\boxed{5} or maybe \\boxed{\\frac{a}{b^{2}}}", "\\frac{a}{b^{2}}", "boxed"),
    ("$\\boxed{\\sqrt{2}}$ done", "\\sqrt{2}", "boxed"),
    ("\\boxed{1,000}", "1000", "boxed"),
    ("\\fbox{7}", "7", "boxed"),
    # GSM8K style
    ("He has 3 + 4 = 7 apples.\n#### 7", "7", "hashes"),
    ("blah\n#### 1,234\n", "1234", "hashes"),
    ("#### -5", "-5", "hashes"),
    # last number
    ("We get 5-3 = 2 apples", "2", "last_number"),
    ("5 - 3 = 2", "2", "last_number"),
    ("The temperature is -4 degrees", "-4", "last_number"),
    ("x = -3", "-3", "last_number"),
    ("It costs 1,500 dollars.", "1500", "last_number"),
    ("He has 2.50 now.", "2.50", "last_number"),
    ("the ratio is 3/4", "3/4", "last_number"),
    ("first 10, then 20.", "20", "last_number"),
])
def test_extract_answer(text, answer, method):
    got = extract_answer(text)
    assert got == answer
    assert isinstance(got, str) and isinstance(got, ExtractedAnswer)
    assert got.method == method


@pytest.mark.parametrize("text", [None, "", "   ", "I do not know.", "The answer is", "\\boxed{"])
def test_no_answer(text):
    assert extract_answer(text) is None


def test_answer_is_beats_boxed_and_number():
    t = "\\boxed{3}\n#### 4\nThe answer is 5\nand 6"
    assert extract_answer(t) == "5"


def test_boxed_beats_hashes_and_number():
    assert extract_answer("#### 4\n\\boxed{3} then 9").method == "boxed"


def test_unbalanced_boxed_falls_back():
    got = extract_answer("\\boxed{\\frac{1}{2} so 7")
    assert got == "7" and got.method == "last_number"


def test_extracted_answer_pickles():
    a = extract_answer("The answer is 9")
    b = pickle.loads(pickle.dumps(a))
    assert b == "9" and b.method == "answer_is"
    assert "answer_is" in repr(a)


def test_last_boxed_nested_and_escaped():
    assert last_boxed("\\boxed{\\{1, 2\\}}") == "\\{1, 2\\}"
    assert last_boxed("\\boxed{a{b{c}}d}") == "a{b{c}}d"
    assert last_boxed("no box") is None
    assert last_boxed("") is None


def test_clean_answer():
    assert clean_answer(" $5$. ") == "5"
    assert clean_answer("\\(x^2\\)") == "x^2"
    assert clean_answer("12 cookies.") == "12"
    assert clean_answer("5 and $6") == "5 and $6"  # not one delimited expression: left alone


@pytest.mark.parametrize("solution, answer", [
    ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72", "72"),
    ("lots\n#### 1,000", "1000"),
    ("#### -3", "-3"),
    ("#### 0.5", "0.5"),
    ("So the answer is $\\boxed{\\frac{14}{3}}$.", "\\frac{14}{3}"),
    ("Hence $\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}.$", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("first \\boxed{1} then \\boxed{\\text{Evelyn}}", "\\text{Evelyn}"),
])
def test_reference_answer_from_solution(solution, answer):
    assert reference_answer_from_solution(solution) == answer


@pytest.mark.parametrize("solution", [None, "", "He has 5 apples.", "#### ", "\\boxed{"])
def test_reference_answer_none(solution):
    assert reference_answer_from_solution(solution) is None
