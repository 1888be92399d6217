"""One step numbering: an attempt's `steps`, the numbered steps a judge is shown (kept on the judgement as `steps`)
and every `first_error_step` are `split_solution`'s split, numbered from 1. The SQL of docs/methods/lemma.md, from
`judgements.first_error_step` to the step's text, returns the step the judge named, on a lemma build.

The student here writes solutions whose first step runs over two lines, so one step per line (the old split of
attempts) and the judge's split disagree, and the judge quotes the step it names: a join that counts the wrong
steps, or from 0, returns another text.
"""
from __future__ import annotations

import json
import re

import pytest

from pipelines.build import build
from pipelines.sql import connect, fetch
from stages.engines.base import GenerationRequest
from stages.engines.fake_engine import register_script, request_text, script_lemma
from stages.steps import number_steps, split_solution, strip_step_marker
from tests.helpers import doc_sql
from tests.unit.test_lemma_build import lemma_recipe, tables

DOC = "docs/methods/lemma.md"
NAMED = 2                          # the step the scripted judge names (the last one when fewer were shown)
JUDGE_PROMPT = "Find the first step of the student's solution that is wrong"
judge_saw: dict[str, str] = {}     # request id (the judged row's id) -> the numbered steps in the judge's prompt


def student(req: GenerationRequest, i: int) -> str:
    answer = "0" if i % 2 == 0 else "1"
    return ("Step 1: Add the first two amounts:\n3 + 4 = 7.\n"
            "Step 2: Double it: 7 * 2 = 14.\n"
            "Step 3: Take one away: 14 - 1 = 13.\n"
            f"The answer is: {answer}")


def teacher(req: GenerationRequest, i: int) -> str:
    """The `lemma` script, but the judge records what it was shown and quotes the step it names."""
    text = request_text(req)
    if JUDGE_PROMPT not in text:
        return script_lemma(req, i)
    shown = text.split("Student's solution, numbered:\n", 1)[1].split("\n\n" + JUDGE_PROMPT, 1)[0]
    judge_saw[req.request_id] = shown
    bodies = re.split(r"(?m)^Step \d+: ", shown)[1:]
    n = min(NAMED, len(bodies))
    return (f"Verdict: incorrect\nFirst wrong step: {n}\nError type: calculation_error\n"
            f"Reason: {json.dumps(bodies[n - 1].strip())} is off.")


register_script("numbering_student", student)
register_script("numbering_teacher", teacher)


def quoted_step(raw_text: str) -> str:
    return json.loads(re.search(r"^Reason: (\".*\") is off\.$", raw_text, re.M).group(1))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    judge_saw.clear()
    root = tmp_path_factory.mktemp("data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ERRATA_DATA", str(root))     # the storage root the env names wins over the recipe's
        yield root, build_lemma(root)


def build_lemma(root):
    cfg = lemma_recipe(root, {"kind": "builtin", "count": 3, "seed": 0, "max_steps": 3}, dataset="lemma",
                       engines={"student": {"kind": "fake", "fake_script": "numbering_student"},
                                "teacher": {"kind": "fake", "fake_script": "numbering_teacher"}},
                       injections={"source": "rules"})
    m = build(cfg, progress=False).manifest
    return tables(root, m)


def test_the_student_text_splits_differently_by_line():
    """The test's premise: one step per line would name another step than the judge's split."""
    text = student(None, 1)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    steps = split_solution(text).texts
    assert len(steps) == 4 and len(lines) == 5
    assert steps[NAMED - 1] == "Step 2: Double it: 7 * 2 = 14." != lines[NAMED - 1]


def test_attempt_steps_and_judge_steps_are_one_split(built):
    _, t = built
    attempts = {a["attempt_id"]: a for a in t["attempts"]}
    injections = {i["injection_id"]: i for i in t["injections"]}
    assert attempts and injections
    for a in attempts.values():
        split = split_solution(a["completion"])
        assert [s["idx"] for s in a["steps"]] == list(range(1, len(split) + 1))
        assert [s["text"] for s in a["steps"]] == split.texts
    judged = [j for j in t["judgements"] if j["target_table"] in ("attempts", "injections")]
    assert {j["target_table"] for j in judged} == {"attempts", "injections"}
    for j in judged:
        text = (attempts[j["target_id"]]["completion"] if j["target_table"] == "attempts"
                else injections[j["target_id"]]["solution"])
        assert [s["idx"] for s in j["steps"]] == list(range(1, len(j["steps"]) + 1))
        assert [s["text"] for s in j["steps"]] == split_solution(text).texts
        # exactly what the judge was shown, numbered from 1
        assert number_steps([s["text"] for s in j["steps"]]) == judge_saw[j["target_id"]]
        if j["target_table"] == "attempts":
            assert [(s["idx"], s["text"]) for s in j["steps"]] == \
                [(s["idx"], s["text"]) for s in attempts[j["target_id"]]["steps"]]
    # rules injections' exact step and the revisions' step count the same split
    for i in injections.values():
        if i["source"] == "rules":
            assert 1 <= i["first_error_step"] <= len(split_solution(i["solution"]))
    by_judgement = {j["judgement_id"]: j for j in t["judgements"]}
    revs = [r for r in t["revisions"] if r["judgement_id"]]
    assert revs
    for r in revs:
        j = by_judgement[r["judgement_id"]]
        assert r["first_error_step"] == j["first_error_step"]
        text = attempts[r["attempt_id"]]["completion"] if r["attempt_id"] else injections[r["injection_id"]]["solution"]
        assert r["erroneous_prefix"] == split_solution(text).prefix_through(r["first_error_step"])
        assert r["erroneous_prefix"].endswith(j["steps"][r["first_error_step"] - 1]["text"])


def test_docs_join_via_the_attempt_returns_the_named_step(built):
    root, t = built
    attempts = {a["attempt_id"]: a for a in t["attempts"]}
    located = {j["judgement_id"]: j for j in t["judgements"]
               if j["target_table"] == "attempts" and j["verdict"] == "located"}
    assert located
    cols, rows = fetch(connect(str(root)), doc_sql(DOC, "first-error-step-via-attempt"))
    got = {r["judgement_id"]: r for r in (dict(zip(cols, row)) for row in rows)}
    assert set(got) == set(located)
    for jid, r in got.items():
        j, a = located[jid], attempts[located[jid]["target_id"]]
        n = j["first_error_step"]
        assert r["first_error_step"] == n == NAMED
        named = split_solution(a["completion"]).texts[n - 1]
        assert r["first_wrong_step"] == r["same_step"] == named == "Step 2: Double it: 7 * 2 = 14."
        # the judge's own words: the step it quoted, as numbered in its prompt
        assert strip_step_marker(named).strip() == quoted_step(j["raw_text"])
        assert f"Step {n}: {quoted_step(j['raw_text'])}" in judge_saw[a["attempt_id"]].splitlines()


def test_docs_join_via_the_judgement_returns_the_named_step(built):
    root, t = built
    texts = {**{a["attempt_id"]: a["completion"] for a in t["attempts"]},
             **{i["injection_id"]: i["solution"] for i in t["injections"]}}
    located = {j["judgement_id"]: j for j in t["judgements"] if j["verdict"] == "located"}
    cols, rows = fetch(connect(str(root)), doc_sql(DOC, "first-error-step-via-judgement"))
    got = {r["judgement_id"]: r for r in (dict(zip(cols, row)) for row in rows)}
    assert set(got) == set(located) and {r["target_table"] for r in got.values()} == {"attempts", "injections"}
    for jid, r in got.items():
        j = located[jid]
        split = split_solution(texts[j["target_id"]])
        assert r["steps_shown"] == len(split)
        assert r["first_wrong_step"] == split.texts[j["first_error_step"] - 1]
        assert strip_step_marker(r["first_wrong_step"]).strip() == quoted_step(j["raw_text"])
