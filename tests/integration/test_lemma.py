"""`errata build lemma` end to end on the real embedded model (student and teacher: one engine). The 135M model
fails often, so these check the machinery and the invariants on real output, not the yield; the `source: rules`
build must produce exportable revisions (the rules revisions need no model to be right)."""
import json

import pyarrow.parquet as pq
import pytest

from pipelines.methods.lemma.revision_checks import mentions_forbidden
from pipelines.methods.lemma.summary import judge_accuracy
from pipelines.methods.lemma.taxonomy import TRANSITION_PHRASES, check_transition_after
from tests.conftest import cli_env, errata, version_tables

pytestmark = pytest.mark.integration

SMALL = ["--set", "tasks.count=3", "--set", "tasks.max_steps=2", "--set", "generate.n=2",
         "--set", "generate.max_tokens=96", "--set", "judge.max_tokens=48", "--set", "injections.samples_per_problem=1",
         "--set", "injections.max_tokens=96", "--set", "judge_injections.max_tokens=48",
         "--set", "revise.max_tokens=160", "--set", "execution.shard_size=3", "--no-progress", "--no-prefect"]




def _check_invariants(m, t):
    probs = {p["problem_id"]: p for p in t["problems"]}
    for i in t["injections"]:
        if i["drop_reason"] is None:
            assert i["is_correct"] is False, i                      # kept injections: 100% verified wrong
    for r in t["revisions"]:
        if r["drop_reason"] is None:                                 # kept revisions: 100% verified correct
            assert r["is_correct"] is True and r["problem_id"] in probs
            if r["smoothed_from"]:
                continue
            assert r["text"].startswith(r["erroneous_prefix"]) and r["segments"][0]["text"] == r["erroneous_prefix"]
            chk = check_transition_after(r["text"], len(r["erroneous_prefix"]), TRANSITION_PHRASES)
            assert chk.ok and chk.count == 1, r["text"]
            assert not mentions_forbidden(r["text"][len(r["erroneous_prefix"]):])
        else:
            assert r["drop_reason"]
    for j in t["judgements"]:
        assert j["verdict"] in ("located", "says_correct", "unparsed") and j["raw_text"] is not None
        assert (j["verdict"] == "located") == (j["first_error_step"] is not None)
        assert j["parse_ok"] == (j["verdict"] != "unparsed")
    st = m.stages
    assert st["judge"]["in"] >= 0 and st["revise"]["errors"] == 0
    (eng,) = m.engines.values()
    assert sorted(eng["roles"]) == ["student", "teacher"] and eng["starts"] == 1


def test_build_lemma_end_to_end(tmp_path):
    root = tmp_path / "data"
    errata("build", "lemma", *SMALL, env=cli_env(root))
    m, t = version_tables(root, "lemma")
    assert m.method == "lemma" and len(t["problems"]) == 3 and len(t["attempts"]) == 6
    _check_invariants(m, t)
    wrong = sum(a["is_correct"] is False and a["drop_reason"] is None for a in t["attempts"])
    assert m.stages["judge"]["out"] == wrong
    assert any(i["source"] == "rules" for i in t["injections"])     # recipe default: source both
    acc = judge_accuracy(m.stages["judge_injections"])
    assert acc["labelled"] >= 1 and acc["exact"] is not None
    assert len(t["error_type_weights"]) == 6


def test_build_lemma_rules_source_exports(tmp_path):
    root = tmp_path / "data"
    env = cli_env(root)
    errata("build", "lemma", *SMALL, "--set", "injections.source=rules", "--set", "revise.strategies=[fix_continue]",
           env=env)
    m, t = version_tables(root, "lemma")
    _check_invariants(m, t)
    kept = [r for r in t["revisions"] if r["drop_reason"] is None]
    assert any(r["model"] == "rules:arithmetic" for r in kept)
    out = tmp_path / "sft"
    errata("export", "lemma", "--format", "sft", "--out", str(out), "--mask-errors", env=env)
    rows = pq.read_table(next(out.glob("*.parquet"))).to_pylist()
    assert len(rows) == len(kept)
    for row in rows:
        assert row["segments"][0]["author"] == "model" and row["segments"][0]["loss"] is False
    dpo = tmp_path / "dpo"
    errata("export", "lemma", "--format", "dpo", "--out", str(dpo), env=env)
    pairs = pq.read_table(next(dpo.glob("*.parquet"))).to_pylist()
    assert pairs and all(p["pair_source"].startswith("revision_vs_") for p in pairs)
    assert json.loads((root / "datasets" / "lemma" / "v0001" / "manifest.json").read_text())["method"] == "lemma"
