"""The LEMMA prompt templates: their fields, their agreement with the parsers and the taxonomy, their size."""
import json
import re
from pathlib import Path

import pytest

from pipelines.methods.lemma.judge_reply import format_judgement, parse_judgement
from pipelines.methods.lemma.injection_reply import parse_injection
from pipelines.methods.lemma.revision_checks import revision_drop_reason, smoothing_drop_reason
from pipelines.methods.lemma.taxonomy import ERROR_LABELS, TRANSITION_PHRASES, definition, format_label_list
from stages.prompts import load_template, template_names
from stages.steps import number_steps, prefix_through, split_solution

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
needs_data = pytest.mark.skipif(not (DATA / "gsm8k_test.jsonl").exists(), reason="shared data not present")

FIELDS = {
    "lemma_judge": {"question", "reference_solution", "numbered_steps"},
    "lemma_inject": {"question", "reference_solution", "error_type", "error_definition"},
    "lemma_fix_continue": {"question", "reference_solution", "prefix", "transition"},
    "lemma_fresh_restart": {"question", "correct_solution", "prefix", "transition"},
    "lemma_smooth": {"question", "revision"},
}


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_templates_exist_with_their_fields(name):
    assert name in template_names()
    t = load_template(name)
    assert set(t.fields) == FIELDS[name]
    rendered = t.render(**{f: f"<{f}>" for f in t.fields})
    assert all(f"<{f}>" in rendered for f in t.fields) and "{" not in rendered and "}" not in rendered
    assert re.fullmatch(r"[0-9a-f]{8}", t.version)


def test_judge_prompt_lists_the_taxonomy_exactly():
    text = load_template("lemma_judge").text
    assert format_label_list() in text                    # the same 12 definitions, in the same order
    assert all(f"- {lab}: " in text for lab in ERROR_LABELS)


def test_judge_prompt_format_is_what_the_parser_reads():
    text = load_template("lemma_judge").text
    block = text[text.index("Verdict: incorrect"):text.index("If every step")].strip()
    filled = (block.replace("<the step number>", "3").replace("<one label from the list>", "operator_error")
              .replace("<one sentence>", "it adds instead of multiplying."))
    r = parse_judgement(filled, 4)
    assert (r.verdict, r.first_error_step, r.error_type) == ("located", 3, "operator_error")
    assert parse_judgement(text[text.index("answer only:") + len("answer only:"):], 4).verdict == "says_correct"
    for line in format_judgement(2, "missing_step", "x").splitlines():
        assert line.split(":")[0] + ":" in text


def test_the_judge_prompt_itself_is_not_a_verdict():
    """A model that echoes the prompt must not be read as locating a step (the example holds placeholders)."""
    t = load_template("lemma_judge")
    echoed = t.render(question="q", reference_solution="r", numbered_steps="Step 1: a\nStep 2: b")
    assert parse_judgement(echoed, 2).verdict != "located"


def test_inject_prompt_output_shape_is_what_the_parser_reads():
    text = load_template("lemma_inject").text
    assert "The answer is: <" in text and "<explanation>" in text and "</explanation>" in text
    sample = "He has 3 * 4 = 13 apples.\nThe answer is: 13\n<explanation>Step 1: 3 * 4 is 12.</explanation>"
    assert parse_injection(sample).parse_ok


def test_revision_prompts_name_the_checks():
    for name in ("lemma_fix_continue", "lemma_fresh_restart"):
        text = load_template(name).text
        assert "copied exactly" in text and "{transition}" in text and "The answer is:" in text
        assert "Do not mention an earlier attempt, a reference, a correct solution" in text
    smooth = load_template("lemma_smooth").text
    assert "no lists, no bold" in smooth and "The answer is:" in smooth
    # a revision that follows the fix & continue prompt passes the checks
    prefix = "The pens cost 3 * 4 = 13 dollars."
    out = prefix + "\n" + TRANSITION_PHRASES[2] + " 3 * 4 is 12. The pens cost 3 * 4 = 12 dollars.\nThe answer is: 12"
    assert revision_drop_reason(out, prefix) is None
    assert smoothing_drop_reason(out, out.replace("\n", " So, ", 1)) is None


@needs_data
def test_prompts_fit_a_2048_token_context_with_room_to_answer():
    """Rendered with a 95th-percentile GSM8K test problem and a 5-step ProcessBench solution. SmolLM2's tokenizer
    measured 3.3-3.9 characters a token on these prompts (judge: 1160 tokens), so 3.2 is a safe bound; 512 tokens
    are left for the answer."""
    rows = [json.loads(x) for x in (DATA / "gsm8k_test.jsonl").read_text().splitlines() if x.strip()]
    rows.sort(key=lambda r: len(r["question"]) + len(r["answer"]))
    r = rows[int(len(rows) * 0.95)]
    student = json.loads((DATA / "processbench_gsm8k.jsonl").read_text().splitlines()[0])["steps"]
    split = split_solution("\n\n".join(student))
    values = {"question": r["question"], "reference_solution": r["answer"], "numbered_steps": number_steps(split),
              "error_type": "calculation_error", "error_definition": definition("calculation_error"),
              "prefix": prefix_through(split, 3), "transition": TRANSITION_PHRASES[0], "correct_solution": r["answer"],
              "revision": "\n\n".join(student)}
    for name in FIELDS:
        t = load_template(name)
        text = t.render(**{f: values[f] for f in t.fields})
        assert len(text) / 3.2 + 512 <= 2048, (name, len(text))
