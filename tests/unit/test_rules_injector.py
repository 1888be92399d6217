"""pipelines.methods.lemma.rules_injector: mechanical errors with exact first-error steps and fix & continue revisions."""
import re
from collections import Counter
from fractions import Fraction

import pytest

from stages.answers import extract_answer
from stages.arithmetic import builtin_problems
from stages.gold_steps import apply_ops, gold_steps
from pipelines.methods.lemma.revision_checks import revision_drop_reason
from pipelines.methods.lemma.rules_injector import SUPPORTED_TYPES, UNSUPPORTED_TYPES, candidate_mutations, inject_error
from pipelines.methods.lemma.taxonomy import ERROR_LABELS, TRANSITION_PHRASES, check_transition_after, find_transitions
from stages.steps import number_steps, split_solution

_EXPR = re.compile(r"(?<!\d)(\d+(?: [-+*/] \d+)+) = (\d+)(?!\d)")


@pytest.fixture(scope="module")
def problems():
    rows = builtin_problems(300, seed=0) + builtin_problems(300, seed=1)
    assert len(rows) >= 500
    return rows


@pytest.fixture(scope="module")
def injections(problems):
    out = []
    for row in problems:
        for t in SUPPORTED_TYPES:
            res = inject_error(row, t, seed=0)
            if res.ok:
                out.append((row, res.injection))
    return out


def _line_values(lines):
    """(written result, whether its own arithmetic holds) for each calculation line."""
    out = []
    for ln in lines:
        (expr, res), = _EXPR.findall(ln)
        toks = expr.split(" ")
        out.append((int(res), apply_ops(toks[1::2], [int(t) for t in toks[0::2]]) == Fraction(int(res))))
    return out


def test_types_are_taxonomy_labels():
    assert set(SUPPORTED_TYPES) <= set(ERROR_LABELS)
    assert set(UNSUPPORTED_TYPES) <= set(ERROR_LABELS) and not set(UNSUPPORTED_TYPES) & set(SUPPORTED_TYPES)


def test_every_type_is_made_often(problems, injections):
    made = Counter(inj.error_type for _, inj in injections)
    for t in SUPPORTED_TYPES:
        assert made[t] > (40 if t == "counting_error" else 300), made   # counting needs the ages template
    assert sum(made.values()) > 2000


def test_injected_answers_always_differ_from_gold(injections):
    for row, inj in injections:
        assert inj.final_answer != row["reference_answer"] and int(inj.final_answer) != int(row["reference_answer"])
        assert extract_answer(inj.solution) == inj.final_answer
        assert inj.solution.endswith(f"\nThe answer is: {inj.final_answer}")
        assert inj.gold_answer == row["reference_answer"]


def test_recorded_step_is_the_first_whose_value_differs(injections):
    """Recomputed from the texts alone: the erroneous lines' written values against the gold lines' values."""
    for row, inj in injections:
        gold_lines = row["reference_solution"].split("\n")[:-1]
        err_lines = inj.solution.split("\n")[:-1]
        gold_vals = [v for v, _ in _line_values(gold_lines)]
        err = _line_values(err_lines)
        if inj.error_type == "missing_step":
            assert len(err_lines) == len(gold_lines) - 1
            aligned = gold_vals[:inj.injected_at - 1] + gold_vals[inj.injected_at:]
        else:
            assert len(err_lines) == len(gold_lines)
            aligned = gold_vals
        diffs = [i for i, ((v, _), g) in enumerate(zip(err, aligned), 1) if v != g]
        expected = diffs[0] if diffs else len(err_lines) + 1      # else the early-stopping answer line
        assert inj.first_error_step == expected, (inj.solution, row["reference_solution"])
        if inj.error_type != "missing_step":
            assert inj.first_error_step == inj.injected_at
        # the error propagates: every line's arithmetic holds except a miscalculated one
        for i, (_, holds) in enumerate(err, 1):
            assert holds == (not (inj.error_type == "calculation_error" and i == inj.injected_at)), err_lines[i - 1]
        # the first wrong step is within what a judge would be shown
        split = split_solution(inj.solution)
        assert split.mode == "lines" and split.texts == inj.solution.split("\n")
        assert 1 <= inj.first_error_step <= len(split)
        assert f"Step {inj.first_error_step}: " in number_steps(split)


def test_revision_is_prefix_then_one_transition_then_gold(injections):
    for row, inj in injections:
        err_lines = inj.solution.split("\n")
        assert inj.erroneous_prefix == "\n".join(err_lines[:inj.first_error_step])
        assert inj.revision_text.startswith(inj.erroneous_prefix)
        assert inj.solution.startswith(inj.erroneous_prefix)
        check = check_transition_after(inj.revision_text, len(inj.erroneous_prefix))
        assert check.ok and check.match.phrase == inj.transition and inj.transition in TRANSITION_PHRASES
        assert len(find_transitions(inj.revision_text)) == 1
        ans = extract_answer(inj.revision_text)
        assert ans == row["reference_answer"] and ans.method == "answer_is"
        assert inj.revision_text.endswith(f"The answer is: {row['reference_answer']}")
        assert revision_drop_reason(inj.revision_text, inj.erroneous_prefix) is None
        segs = inj.segments
        assert [s["author"] for s in segs] == ["model", "template", "rules"]
        assert all(s["loss"] is True for s in segs)
        assert segs[0]["text"] == inj.erroneous_prefix
        assert "".join(s["text"] for s in segs) == inj.revision_text
        # the continuation writes out the gold step that was wrong (or skipped), then reaches the gold answer
        gold_lines = row["reference_solution"].split("\n")[:-1]
        assert gold_lines[inj.injected_at - 1] in segs[2]["text"]
        assert inj.error_type.split("_")[0] in inj.explanation


def test_deterministic_and_seeded(problems):
    row = problems[3]
    a = inject_error(row, "calculation_error", seed=5, sample=0).injection
    assert a == inject_error(row, "calculation_error", seed=5, sample=0).injection
    variants = {inject_error(row, "calculation_error", seed=5, sample=k).injection.solution for k in range(20)}
    assert len(variants) > 1
    drawn = Counter(inject_error(r, None, seed=1).injection.error_type for r in problems[:300])
    assert set(drawn) == set(SUPPORTED_TYPES)


def test_only_question_numbers_sit_outside_the_changed_expression(injections):
    for row, inj in injections[:500]:
        for ln in inj.solution.split("\n")[:-1]:
            outside = _EXPR.sub("", ln)
            for n in re.findall(r"\d+", outside):
                assert n in row["question"], (ln, row["question"])


def test_reasons_when_no_injection():
    one_step = next(r for r in builtin_problems(200, seed=0) if len(gold_steps(r)) == 1)
    assert inject_error(one_step, "missing_step").reason == "no_candidate"
    assert inject_error(one_step, "referencing_previous_step_value_error").reason == "no_candidate"
    shopping = next(r for r in builtin_problems(200, seed=0) if "buys" in r["question"])
    assert inject_error(shopping, "counting_error").reason == "no_candidate"
    assert inject_error(shopping, "unit_conversion_error").reason == "unsupported_type"
    assert inject_error(shopping, "confusing_concept_error").reason == "unsupported_type"
    bad = {"problem_id": "x", "question": "q", "reference_solution": "no numbers here\n#### 1", "reference_answer": "1"}
    assert inject_error(bad).reason == "no_gold_steps"
    assert not inject_error(bad).ok


def test_rows_read_back_without_gold_steps_json_still_inject(problems):
    for row in problems[:100]:
        bare = {k: v for k, v in row.items() if k != "gold_steps_json"}
        res = inject_error(bare, "calculation_error")
        assert res.ok and res.injection.final_answer != row["reference_answer"]


def test_candidates_are_listed_per_type():
    row = builtin_problems(1, seed=0)[0]          # the discount problem: 100 * 25 / 100 = 25, ...
    steps = gold_steps(row)
    assert {m.at for m in candidate_mutations(steps, row["question"], "operator_error")} == {1, 2, 3}
    assert candidate_mutations(steps, row["question"], "counting_error") == []
    ctx = candidate_mutations(steps, row["question"], "referencing_context_value_error")
    assert ctx and all(m.value in (100, 25, 2) for m in ctx)
