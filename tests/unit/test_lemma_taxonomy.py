"""pipelines.methods.lemma.taxonomy: labels, definitions, the label-drift mapping, transition phrases."""
import pytest

from pipelines.methods.lemma.taxonomy import (ERROR_LABELS, ERROR_TYPES, INJECTION_TYPES, LABEL_ALIASES, RULES_INJECTABLE,
                                   TRANSITION_PHRASES, canonical_label, check_transition_after, choose_transition,
                                   definition, find_transitions, format_label_list, lemma_injector_name)

LEMMA_CLASSIFIER_LABELS = {  # the 12 names in LEMMA's few-shot classifier prompt
    "calculation_error", "counting_error", "question_understanding_error", "referencing_context_value_error",
    "referencing_previous_step_value_error", "unit_conversion_error", "operator_error", "missing_step",
    "confusing_formula_error", "confusing_concept_error", "adding_irrelevant_information", "nonsense_output_error"}
LEMMA_INJECTOR_TYPES = {"calculation_error", "missing_step", "confusing_concept_error", "question_misinterpretation",
                        "confusing_formula_error", "counting_error"}


def test_twelve_labels_with_one_line_definitions():
    assert len(ERROR_LABELS) == 12 and set(ERROR_LABELS) == LEMMA_CLASSIFIER_LABELS
    for lab in ERROR_LABELS:
        d = ERROR_TYPES[lab].definition
        assert d and "\n" not in d and d.endswith(".") and len(d) < 140
    assert len({ERROR_TYPES[lab].definition for lab in ERROR_LABELS}) == 12


def test_injection_types_are_lemmas_six_in_our_spelling():
    assert len(INJECTION_TYPES) == 6
    assert {lemma_injector_name(t) for t in INJECTION_TYPES} == LEMMA_INJECTOR_TYPES
    assert {canonical_label(t) for t in LEMMA_INJECTOR_TYPES} == set(INJECTION_TYPES)
    assert set(INJECTION_TYPES) <= set(ERROR_LABELS)
    assert set(RULES_INJECTABLE) <= set(ERROR_LABELS)


def test_label_drift_maps_both_ways():
    assert canonical_label("question_misinterpretation") == "question_understanding_error"
    assert canonical_label("question_understanding_error") == "question_understanding_error"
    assert lemma_injector_name("question_understanding_error") == "question_misinterpretation"
    assert lemma_injector_name("calculation_error") == "calculation_error"
    assert definition("question_misinterpretation") == ERROR_TYPES["question_understanding_error"].definition


@pytest.mark.parametrize("raw,label", [
    ("Calculation Error", "calculation_error"), ("'operator_error'", "operator_error"),
    ("**missing-step**", "missing_step"), ("`counting`", "counting_error"),
    ("unit conversion", "unit_conversion_error"), ("nonsense output", "nonsense_output_error"),
    ("arithmetic error", "calculation_error"), ("Confusing concept error.", "confusing_concept_error"),
    ("[adding irrelevant information]", "adding_irrelevant_information"),
    ("none", None), ("", None), (None, None), ("wrong", None), ("error", None),
    ("calculation_errors_everywhere", None)])
def test_canonical_label(raw, label):
    assert canonical_label(raw) == label


def test_aliases_point_at_labels():
    assert all(v in ERROR_TYPES for v in LABEL_ALIASES.values())
    assert not set(LABEL_ALIASES) & set(ERROR_LABELS)
    with pytest.raises(KeyError):
        definition("not_a_label")


def test_format_label_list_has_every_label_once():
    text = format_label_list()
    assert text.count("\n") == 11
    for lab in ERROR_LABELS:
        assert f"- {lab}: " in text


def test_transition_phrases_are_many_distinct_and_none_contains_another():
    assert len(TRANSITION_PHRASES) >= 16
    norm = [" ".join(p.lower().split()) for p in TRANSITION_PHRASES]
    assert len(set(norm)) == len(norm)
    for a in norm:
        assert a[-1] in ".:!?"
        for b in norm:
            assert a == b or a not in b, (a, b)


def test_every_phrase_is_found_once_whatever_the_case_and_spacing():
    for p in TRANSITION_PHRASES:
        messy = "  ".join(p.upper().split())
        text = f"Step 2: 3 * 4 = 13.\n{messy} 3 * 4 = 12."
        found = find_transitions(text)
        assert len(found) == 1 and found[0].phrase == p
        assert text[found[0].start:found[0].end] == messy


def test_check_transition_after_prefix():
    prefix = "Step 1: 2 + 2 = 5."
    one = prefix + "\n" + TRANSITION_PHRASES[0] + " 2 + 2 = 4."
    assert check_transition_after(one, len(prefix)).ok
    assert check_transition_after(one, len(prefix)).match.phrase == TRANSITION_PHRASES[0]
    none = prefix + " 2 + 2 = 4."
    assert check_transition_after(none, len(prefix)).reason == "no_transition"
    two = one + " " + TRANSITION_PHRASES[3]
    r = check_transition_after(two, len(prefix))
    assert r.reason == "several_transitions" and r.count == 2
    late = prefix + " So far so good. " + TRANSITION_PHRASES[1]
    assert check_transition_after(late, len(prefix)).reason == "transition_not_after_prefix"
    # a phrase inside the prefix itself is not counted
    p2 = "Wait, I should reconsider that step. 2 + 2 = 5."
    t2 = p2 + " " + TRANSITION_PHRASES[2] + " It is 4."
    assert check_transition_after(t2, len(p2)).ok
    # a custom list
    assert check_transition_after(prefix + " Oops. 4.", len(prefix), phrases=("Oops.",)).ok


def test_choose_transition_is_deterministic_and_spread():
    assert choose_transition("row-1") == choose_transition("row-1")
    picks = {choose_transition(f"row-{i}") for i in range(400)}
    assert len(picks) == len(TRANSITION_PHRASES)
    assert choose_transition("x", ("only one.",)) == "only one."
    with pytest.raises(ValueError):
        choose_transition("x", ())
