"""The `critique` method on the scripted fake engine (tests/unit/critique_fakes.py): the closed-loop invariants on
the published tables, the critique format's constraint and parser, the exports in TRL's columns, and the
ProcessBench scoring of `errata eval critique` on critiques with known answers."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import tests.unit.critique_fakes  # noqa: F401  (registers the 'critique' fake script)
from pipelines.build import build
from pipelines.catalog import Catalog
from pipelines.config import load_recipe
from pipelines.export import export
from pipelines.methods.critique.critique_format import CritiqueFormat, format_critique, parse_critique
from pipelines.methods.critique.evaluation import load_processbench, processbench_scores, run_eval
from pipelines.methods.critique.exports import stepwise_labels
from pipelines.methods.critique.refine_stages import count_numerals, shortcut_barrier
from pipelines.methods.critique.summary import critique_yield, first_error_scores
from schemas.errors import InputError

PROCESSBENCH = Path(__file__).resolve().parents[3] / "shared" / "data" / "processbench_gsm8k.jsonl"


def recipe(data_root, *sets):
    return load_recipe("critique", [f"storage.root={data_root}", "execution.runner=local",
                                    "engines.actor.kind=fake", "engines.actor.fake_script=critique",
                                    "engines.critic.kind=fake", "engines.critic.fake_script=critique",
                                    "tasks.count=4", *sets])


def tables(root, m):
    cat = Catalog(str(root))
    return {t: cat.read_table(m, t).to_pylist() for t in m.tables}


# --- format --------------------------------------------------------------------------------------------------
def test_format_constraint_and_parser_agree():
    fmt = CritiqueFormat()
    text = format_critique([("correct", "3 * 4 = 12"), ("wrong", "12 + 5 is 17")], False, "carries the sum")
    assert re.fullmatch(fmt.constraint(n_steps=2, max_tokens=256).regex, text)
    r = fmt.parse(text, 2)
    assert r.parse_ok and r.first_wrong_step == 2 and r.final_correct is False and r.consistent
    assert r.verdicts[1] == ("wrong", "12 + 5 is 17")
    # a constrained critique for 3 steps does not match the 2-step regex (the step count is held)
    assert not re.fullmatch(fmt.constraint(n_steps=3, max_tokens=256).regex, text)


@pytest.mark.parametrize("text,n,reason", [
    ("", 2, "empty"),
    ("Step 1: looks fine. Step 2: fine.", 2, "no_final_verdict"),
    (format_critique([("correct", "a")], True), 2, "step_count_mismatch"),
    ("Step 2:\nCorrectness of the step: Correct\nExplanation: a\nStep 1:\nCorrectness of the step: Wrong\n"
     "Explanation: b\nCorrectness of the final answer: Wrong\nExplanation: c", 2, "step_order"),
    (format_critique([("correct", "a")], True) + "\nCorrectness of the final answer: Wrong", 1,
     "several_final_verdicts"),
])
def test_unparsed_is_never_a_verdict(text, n, reason):
    r = parse_critique(text, n)
    assert not r.parse_ok and r.reason == reason
    assert r.first_wrong_step is None and r.final_correct is None and r.consistent is None


def test_free_text_variants_parse():
    text = ("**Step 1:** Step sentence: 2 + 2 = 4\n**Correctness of the step:** Correct\nExplanation: fine\n"
            "**Step 2:** Step sentence: 4 * 3 = 13\n**Correctness of the step:** Incorrect\nExplanation: 12\n"
            "**Correctness of the final answer:** Wrong\nExplanation: off by one")
    r = parse_critique(text, 2)
    assert r.parse_ok and r.first_wrong_step == 2 and r.final_correct is False


def test_barrier_and_stepwise_labels():
    assert count_numerals("3 * 4 = 12, then 1,200 and 2.5") == 5
    assert shortcut_barrier("1 + 2 = 3\n3 * 4 = 12", "1 + 1 = 2") == 1
    assert stepwise_labels(4, 2) == [True, False, False, False]
    assert stepwise_labels(3, None) == [True, True, True]
    assert stepwise_labels(3, 1) == [False, False, False]


# --- scoring on critiques with known answers -------------------------------------------------------------------
def test_processbench_scores_known_answers():
    items = [{"label": 2, "predicted": 2, "parse_ok": True, "n_steps": 3},      # erroneous, exact
             {"label": 2, "predicted": 3, "parse_ok": True, "n_steps": 3},      # erroneous, within 1
             {"label": 1, "predicted": None, "parse_ok": False, "n_steps": 3},  # unparsed: a miss
             {"label": 1, "predicted": None, "parse_ok": True, "n_steps": 3},   # says no error: a miss
             {"label": None, "predicted": None, "parse_ok": True, "n_steps": 4},  # correct, right
             {"label": None, "predicted": None, "parse_ok": False, "n_steps": 4},  # unparsed: not "no error"
             {"label": None, "predicted": 1, "parse_ok": True, "n_steps": 4}]     # false alarm
    s = processbench_scores(items)
    assert (s["erroneous"], s["correct"]) == (4, 3)
    assert s["acc_erroneous"] == 0.25 and s["acc_correct"] == round(1 / 3, 4)
    assert s["f1"] == round(2 * 0.25 * (1 / 3) / (0.25 + 1 / 3), 4)
    assert s["within_1_erroneous"] == 0.5 and s["parse_rate"] == round(5 / 7, 4)
    assert s["random_acc_erroneous"] == 0.25 and s["random_acc_correct"] == 0.2
    assert s["random_f1"] == round(2 * 0.25 * 0.2 / 0.45, 4)


def test_processbench_loader_names_file_line_field(tmp_path):
    if PROCESSBENCH.exists():
        t = load_processbench(str(PROCESSBENCH), limit=5)
        assert len(t["paths"]) == 5 and all(p["first_error_known"] for p in t["paths"])
        first = json.loads(PROCESSBENCH.read_text().splitlines()[0])
        want = None if first["label"] < 0 else first["label"] + 1
        assert t["paths"][0]["first_error_step"] == want and len(t["paths"][0]["steps"]) == len(first["steps"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"problem": "q", "steps": ["a", "b"], "label": 0}) + "\n"
                   + json.dumps({"problem": "q", "steps": ["a", "b"], "label": 2}) + "\n")
    with pytest.raises(InputError) as e:
        load_processbench(str(bad))
    assert "bad.jsonl:2" in str(e.value) and "label" in str(e.value)


# --- the build -------------------------------------------------------------------------------------------------
def check_invariants(t, reserved=1):
    paths = {p["path_id"]: p for p in t["paths"]}
    crit = t["critiques"]
    kept = [c for c in crit if c["drop_reason"] is None]
    for c in kept:          # no kept critique disagrees with verified correctness
        assert c["parse_ok"] and c["agrees"] is True and c["final_verdict"] == paths[c["path_id"]]["is_correct"]
    for c in crit:          # an unparsed critique is dropped with its reason, never a verdict
        if not c["parse_ok"]:
            assert c["drop_reason"] == "unparsed" and c["final_verdict"] is None and c["first_wrong_step"] is None
    refs = t["refinements"]
    kept_refs = [r for r in refs if r["drop_reason"] is None]
    for r in kept_refs:     # verified correct, past the barrier
        assert r["is_correct"] is True and r["verifier"] == "math_verify"
        assert r["passes_barrier"] and r["numerals"] >= r["barrier"]
    per = {}
    for r in kept_refs:
        per[r["critique_id"]] = per.get(r["critique_id"], 0) + 1
    assert all(v <= reserved for v in per.values())
    for c in kept:          # a kept critique of a wrong path led to a kept refinement
        if paths[c["path_id"]]["is_correct"] is False:
            assert per.get(c["critique_id"], 0) >= 1 and c["refinements_kept"] >= 1
    assert all(r["drop_reason"] for r in refs if r not in kept_refs)
    agree = {c["critique_id"]: c["agrees"] for c in crit}
    for r in refs:          # a refinement is made only from a parsed critique of a wrong path
        assert paths[r["path_id"]]["is_correct"] is False and agree[r["critique_id"]] is not None
        if agree[r["critique_id"]] is False:
            assert r["drop_reason"] == "verdict_disagrees"
    return kept, kept_refs


def test_build_closed_loop_invariants_and_yield(data_root):
    m = build(recipe(data_root), progress=False, log=lambda *a: None).manifest
    t = tables(data_root, m)
    assert {"paths", "critiques", "refinements"} <= set(t)
    sources = {p["source"] for p in t["paths"]}
    assert sources == {"actor", "injected", "reference"}
    for p in t["paths"]:
        if p["source"] == "injected":
            assert p["first_error_known"] and p["first_error_step"] >= 1 and p["origin"] == "rules:arithmetic"
        if p["source"] == "reference":
            assert p["first_error_known"] and p["first_error_step"] is None
        if p["drop_reason"] is None:
            assert p["is_correct"] is not None
    kept, kept_refs = check_invariants(t)
    reasons = {c["drop_reason"] for c in t["critiques"]}
    assert "refinement_wrong" in reasons          # critique sample 1 names no answer
    assert {r["drop_reason"] for r in t["refinements"]} >= {"shortcut"}   # refine sample 1 copies the answer
    assert kept and kept_refs
    # the fake critic names step 2: exact only where the injection is at step 2
    labelled = [c for c in t["critiques"] if c["first_error_known"]]
    exact = sum(bool(c["first_error_exact"]) for c in labelled)
    scores = first_error_scores(m.stages["critique"])
    assert scores["erroneous"] + scores["correct"] == len(labelled)
    assert scores["acc_correct"] == 1.0           # references: the fake critic says all Correct
    want_e = sum(1 for c in labelled if c["true_first_error_step"] is not None and c["first_error_exact"])
    assert scores["acc_erroneous"] == round(want_e / scores["erroneous"], 4)
    assert exact == want_e + scores["correct"]
    y = critique_yield(m.stages)
    assert y["paths"] == len(t["paths"]) and y["critiques"] == len(t["critiques"])
    assert y["critiques_kept"] == len(kept) and y["refinements_kept"] == len(kept_refs)
    assert "yield" in m.summary and "critic on labelled paths" in m.summary


def test_unparsed_critiques_counted_and_dropped(data_root, monkeypatch):
    import stages.arithmetic as ar
    real = ar.builtin_problems

    def garbled(*a, **k):       # every reference solution carries the garble marker
        ps = real(*a, **k)
        return [dict(p, reference_solution=p["reference_solution"].replace(" dollars.", " dollars [garble].", 1))
                for p in ps]
    monkeypatch.setattr("stages.tasks.builtin_problems", garbled)
    m = build(recipe(data_root, "critique.constrain=off", "paths.sources=[reference]"), progress=False,
              log=lambda *a: None).manifest
    t = tables(data_root, m)
    garbled_paths = {p["path_id"] for p in t["paths"] if "[garble]" in p["text"] and p["drop_reason"] is None}
    assert garbled_paths
    bad = [c for c in t["critiques"] if c["path_id"] in garbled_paths]
    assert bad and all(not c["parse_ok"] and c["drop_reason"] == "unparsed" for c in bad)
    assert m.stages["critique"]["counts"]["parsed"] - m.stages["critique"]["counts"].get("parse_ok", 0) == len(bad)
    assert m.stages["filter_critiques"]["dropped_unparsed"] == len(bad)
    check_invariants(t)


def test_exports_trl_columns_and_stepwise_monotone(data_root, tmp_path):
    m = build(recipe(data_root), progress=False, log=lambda *a: None).manifest
    t = tables(data_root, m)
    import datasets
    out = {}
    for fmt in ("critic-sft", "critic-dpo", "actor-sft", "stepwise"):
        r = export(str(data_root), m.ref, fmt, str(tmp_path / fmt))
        assert r.rows > 0, fmt
        out[fmt] = datasets.load_dataset("parquet", data_files=str(tmp_path / fmt / "*.parquet"))["train"]
    assert {"prompt", "completion"} <= set(out["critic-sft"].column_names)
    assert {"prompt", "chosen", "rejected"} <= set(out["critic-dpo"].column_names)
    assert {"prompt", "completions", "labels"} <= set(out["stepwise"].column_names)
    crit = {c["critique_id"]: c for c in t["critiques"]}
    for row in out["critic-sft"]:
        assert "Reference answer" not in row["prompt"][0]["content"]
        assert crit[row["critique_id"]]["drop_reason"] is None
    for row in out["critic-dpo"]:
        assert crit[row["chosen_id"]]["path_id"] == crit[row["rejected_id"]]["path_id"] == row["path_id"]
        assert crit[row["chosen_id"]]["drop_reason"] is None
        assert crit[row["rejected_id"]]["drop_reason"] in ("refinement_wrong", "shortcut")
    for row in out["stepwise"]:
        labels = row["labels"]
        assert len(labels) == len(row["completions"])
        assert all(not b for b in labels[labels.index(False):]) if False in labels else True   # monotone
        fw = crit[row["critique_id"]]["first_wrong_step"]
        assert labels == stepwise_labels(len(labels), fw)
        assert (False in labels) == (fw is not None)
    refs = {r["refinement_id"]: r for r in t["refinements"]}
    for row in out["actor-sft"]:
        assert refs[row["refinement_id"]]["drop_reason"] is None and refs[row["refinement_id"]]["is_correct"]
    extra = export(str(data_root), m.ref, "actor-sft", str(tmp_path / "a2"), options={"include_correct": "true"})
    assert extra.rows >= len(out["actor-sft"])
    # TRL's own dataset checks where it has them: the stepwise and preference columns
    from trl.data_utils import is_conversational
    assert is_conversational(out["critic-sft"][0]) and is_conversational(out["critic-dpo"][0])


def test_lemma_version_feeds_injected_paths(data_root):
    lemma = load_recipe("lemma", [f"storage.root={data_root}", "execution.runner=local", "tasks.count=3",
                                  "engines.student.kind=fake", "engines.student.fake_script=lemma",
                                  "engines.teacher.kind=fake", "engines.teacher.fake_script=lemma",
                                  "injections.source=rules", "judge.constrain=off",
                                  "judge_injections.constrain=off"])
    lm = build(lemma, progress=False, log=lambda *a: None).manifest
    m = build(recipe(data_root, "tasks.kind=version", f"tasks.ref={lm.ref}", "tasks.table=injections",
                     "tasks.where=drop_reason IS NULL", "paths.injected_from=input",
                     "paths.sources=[injected]"), progress=False, log=lambda *a: None).manifest
    assert m.parents == [lm.ref]
    t = tables(data_root, m)
    inj = {i["injection_id"]: i for i in Catalog(str(data_root)).read_table(lm, "injections").to_pylist()}
    assert t["paths"] and all(p["source"] == "injected" for p in t["paths"])
    for p in t["paths"]:
        assert p["injection_id"] in inj and p["first_error_step"] == inj[p["injection_id"]]["first_error_step"]
        assert p["text"] == inj[p["injection_id"]]["solution"]
    check_invariants(t)


def test_eval_on_version_publishes_scores(data_root):
    m = build(recipe(data_root), progress=False, log=lambda *a: None).manifest
    res = run_eval(version=m.ref, dataset="ce", root=str(data_root),
                   overrides=["engines.critic.kind=fake", "engines.critic.fake_script=critique",
                              "execution.runner=local", "critique.show_reference=true"], log=lambda *a: None)
    em = res.manifest
    assert em.parents == [m.ref] and em.method == "critique_eval"
    t = tables(data_root, em)
    scores = {s["subset"]: s for s in t["critic_scores"]}
    labelled = [c for c in t["critiques"] if c["first_error_known"]]
    items = [{"label": c["true_first_error_step"], "predicted": c["first_wrong_step"], "parse_ok": c["parse_ok"],
              "n_steps": len(c["step_labels"]) or 1} for c in labelled]
    want = processbench_scores(items)
    assert scores["all"]["acc_erroneous"] == want["acc_erroneous"]
    assert scores["all"]["acc_correct"] == want["acc_correct"] == 1.0
    assert em.summary["scores"]["f1"] == scores["all"]["f1"]
    assert em.summary["scores"]["random_f1"] == scores["all"]["random_f1"]
    from pipelines.sql import connect, fetch
    cols, rows = fetch(connect(str(data_root)), "SELECT subset, f1 FROM ce.critic_scores ORDER BY subset")
    assert [r[0] for r in rows] == sorted(scores)


def test_docs_sql_runs_on_a_build(data_root):
    """docs/methods/critique.md's audit join and critic comparison run on real versions."""
    from pipelines.sql import connect, fetch
    from tests.helpers import doc_sql
    m = build(recipe(data_root), progress=False, log=lambda *a: None).manifest
    kept = [c for c in tables(data_root, m)["critiques"] if c["drop_reason"] is None]
    cols, rows = fetch(connect(str(data_root)), doc_sql("docs/methods/critique.md", "audit-critique"))
    d = [dict(zip(cols, r)) for r in rows]
    assert len(d) == len(kept) > 0 and all(x["question"] and x["solution"] for x in d)
    assert all(x["refinement"] for x in d if x["source"] != "reference" and x["final_verdict"] is False)
    run_eval(version=m.ref, root=str(data_root), overrides=["engines.critic.kind=fake", "execution.runner=local",
                                                            "engines.critic.fake_script=critique"],
             log=lambda *a: None)
    cols, rows = fetch(connect(str(data_root)), doc_sql("docs/methods/critique.md", "compare-critics"))
    assert rows and {r[cols.index("subset")] for r in rows} >= {"all"}


def test_cli_eval_critique_publishes_and_rejects_bad_input(tmp_path, capsys):
    from flows.cli import main
    root = tmp_path / "data"
    good = tmp_path / "pb.jsonl"
    good.write_text(json.dumps({"id": "a", "problem": "What is 2 + 3?", "steps": ["2 + 3 = 5.", "The answer is 5."],
                                "label": -1, "final_answer_correct": True}) + "\n"
                    + json.dumps({"id": "b", "problem": "What is 2 * 3?", "steps": ["2 * 3 = 5.", "So 5."],
                                  "label": 0, "final_answer_correct": False}) + "\n")
    rc = main(["--data", str(root), "eval", "critique", "--data", str(good), "--no-progress", "--runner", "local",
               "--set", "engines.critic.kind=fake", "--set", "engines.critic.fake_script=critique"])
    assert rc == 0
    m = Catalog(str(root)).resolve("critique_eval")
    t = tables(root, m)
    assert [p["first_error_step"] for p in sorted(t["paths"], key=lambda p: p["origin"])] == [None, 1]
    s = {r["subset"]: r for r in t["critic_scores"]}["all"]
    # the fake critic (no reference shown) calls both wrong from step min(2, n) = 2: a false alarm, and a miss by one
    assert (s["acc_erroneous"], s["acc_correct"], s["within_1_erroneous"]) == (0.0, 0.0, 1.0)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"problem": "q", "steps": "not a list", "label": 0}) + "\n")
    rc = main(["--data", str(root), "eval", "critique", "--data", str(bad), "--no-progress",
               "--set", "engines.critic.kind=fake"])
    err = capsys.readouterr()
    assert rc == 2 and "bad.jsonl:1" in err.out + err.err and "steps" in err.out + err.err


@pytest.mark.parametrize("reserved,want", [(1, [None, "over_reserved", "shortcut", "refinement_wrong",
                                                 "verdict_disagrees"]),
                                            (2, [None, None, "shortcut", "refinement_wrong", "verdict_disagrees"])])
def test_refinement_filter_reserved_and_barrier(reserved, want):
    from pipelines.methods.critique.refine_stages import RefinementFilter, RefinementFilterConfig
    from tests.helpers import run_stage
    full = "1 + 2 = 3\n3 * 4 = 12\nThe answer is: 12"
    rows = [{"refinement_id": f"r{i}", "critique_id": "c2" if i == 4 else "c1", "path_id": "pa", "problem_id": "p",
             "sample_index": i, "text": text, "finish_reason": "stop", "answer_parse_ok": True, "is_correct": ok,
             "drop_reason": None}
            for i, (text, ok) in enumerate([(full, True), (full, True), ("The answer is: 12", True),
                                            (full.replace("12", "13"), False), (full, True)])]
    st = RefinementFilter(RefinementFilterConfig(reserved_per_critique=reserved))
    res = run_stage(st, {"refinements": rows, "critiques": [{"critique_id": "c1", "agrees": True},
                                                            {"critique_id": "c2", "agrees": False}],
                         "paths": [{"path_id": "pa", "text": "1 + 2 = 4\n4 * 4 = 16\nThe answer is: 16"}],
                         "problems": [{"problem_id": "p", "reference_solution": "1 + 2 = 3\n3 * 4 = 12\n#### 12"}]})
    out = res.tables["refinements"]
    assert [r["drop_reason"] for r in out] == want
    assert all(r["barrier"] == 5 for r in out) and out[2]["numerals"] == 1 and not out[2]["passes_barrier"]
