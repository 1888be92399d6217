"""The `lemma` method built locally on the scripted fake engine (`lemma` script: a faithful fake teacher).

Invariants are checked on the published tables, not on fixtures: kept revisions are 100% verified correct and
start with their erroneous prefix verbatim followed by exactly one transition phrase; kept injections are 100%
verified wrong; rules injections carry the first step whose value differs from gold; every drop has a reason.
"""
from __future__ import annotations

from collections import Counter

import pytest

from pipelines.build import build
from pipelines.catalog import Catalog
from pipelines.config import validate_recipe
from pipelines.methods.lemma.revision_checks import FORBIDDEN_PHRASES
from pipelines.methods.lemma.summary import judge_accuracy, lemma_yield, type_histograms
from pipelines.methods.lemma.taxonomy import TRANSITION_PHRASES, check_transition_after
from tests.conftest import write_gsm8k_style


def lemma_recipe(data_root, tasks, **over):
    d = {"dataset": "lm", "method": "lemma", "tasks": tasks,
         "engines": {"student": {"kind": "fake", "fake_script": "lemma"},
                     "teacher": {"kind": "fake", "fake_script": "lemma"}},
         "generate": {"n": 2, "max_tokens": 64},
         # the teacher script's own text (garbled judges, free-form injections) is what these tests read
         "judge": {"constrain": "off"}, "judge_injections": {"constrain": "off"}, "injections": {"constrain": "off"},
         "execution": {"runner": "local", "shard_size": 3, "shards_in_flight": 1},
         "storage": {"root": str(data_root)}}
    for k, v in over.items():
        d[k] = {**d.get(k, {}), **v} if isinstance(v, dict) else v
    return validate_recipe(d)


def tables(data_root, m):
    cat = Catalog(str(data_root))
    return {t: cat.read_table(m, t).to_pylist() for t in m.tables}


def assert_revision_invariants(revs):
    kept = [r for r in revs if r["drop_reason"] is None]
    for r in kept:
        assert r["is_correct"] is True and r["verifier"] == "math_verify", r
    kept = [r for r in kept if not r["smoothed_from"]]      # smoothed variants rewrite the prefix
    for r in kept:
        assert r["text"].startswith(r["erroneous_prefix"]) and r["erroneous_prefix"].strip()
        assert r["segments"][0]["text"] == r["erroneous_prefix"] and r["segments"][0]["author"] == "model"
        assert "".join(s["text"] for s in r["segments"]) == r["text"]
        chk = check_transition_after(r["text"], len(r["erroneous_prefix"]), TRANSITION_PHRASES)
        assert chk.ok and chk.count == 1 and chk.match.phrase == r["transition"], (chk, r["text"])
    return kept


def test_rules_source_publishes_verified_revisions(data_root):
    cfg = lemma_recipe(data_root, {"kind": "builtin", "count": 6, "seed": 0, "max_steps": 3},
                       injections={"source": "rules"})
    m = build(cfg, progress=False).manifest
    t = tables(data_root, m)
    assert set(t) >= {"problems", "attempts", "judgements", "injections", "revisions", "error_type_weights"}
    inj = t["injections"]
    assert inj and all(i["source"] == "rules" for i in inj)
    probs = {p["problem_id"]: p for p in t["problems"]}
    for i in inj:          # 100% verified wrong; recorded step = first step whose value differs from gold
        assert i["drop_reason"] is None and i["is_correct"] is False, i
        assert i["final_answer"] != probs[i["problem_id"]]["reference_answer"]
        assert 1 <= i["first_error_step"] and i["first_error_source"] == "rules"
    revs = t["revisions"]
    rules_revs = [r for r in revs if r["model"] == "rules:arithmetic"]
    assert len(rules_revs) == len(inj)
    kept = assert_revision_invariants(revs)
    assert {r["revision_id"] for r in rules_revs} <= {r["revision_id"] for r in kept}, \
        "every rules revision verifies correct"
    for r in rules_revs:
        assert r["injection_id"] in {i["injection_id"] for i in inj} and r["judgement_id"] is None
        assert [s["author"] for s in r["segments"]] == ["model", "template", "rules"]
    # the judge measured on the rules labels: counted in the manifest
    acc = judge_accuracy(m.stages["judge_injections"])
    assert acc["labelled"] == len(inj) and 0 <= acc["exact"] <= acc["within_1"] <= 1
    assert 0 < acc["random_exact"] <= acc["random_within_1"] <= 1        # the chance baseline beside it
    # no LLM injection was asked for
    assert m.stages["injections"]["counts"].get("rules_revisions") == len(inj)
    assert not any(k.startswith("llm_") for k in m.stages["injections"]["counts"])
    assert "lemma_fix_continue" in m.prompt_templates and "lemma_fresh_restart" in m.prompt_templates


def test_llm_source_judges_injects_and_revises(data_root, tmp_path):
    f = write_gsm8k_style(tmp_path / "tasks.jsonl", 6)
    lines = f.read_text().splitlines()
    lines[1] = lines[1].replace("[gold=", "[judge=correct] [gold=")
    lines[2] = lines[2].replace("[gold=", "[judge=garbage] [gold=")
    lines[3] = lines[3].replace("[gold=", "[revise=forbidden] [gold=")
    lines[4] = lines[4].replace("[gold=", "[revise=noprefix] [gold=")
    f.write_text("\n".join(lines) + "\n")
    cfg = lemma_recipe(data_root, {"kind": "jsonl", "path": str(f)},
                       injections={"source": "llm", "samples_per_problem": 2},
                       type_weights={"mode": "explicit", "weights": {"calculation_error": 1.0}})
    m = build(cfg, progress=False).manifest
    t = tables(data_root, m)
    # judgements: one per wrong attempt (the odd samples), verdicts recorded as such
    wrong = [a for a in t["attempts"] if a["is_correct"] is False]
    jatt = [j for j in t["judgements"] if j["target_table"] == "attempts"]
    assert len(jatt) == len(wrong) == 6
    assert sorted(j["verdict"] for j in jatt).count("says_correct") == 1
    unparsed = [j for j in jatt if j["verdict"] == "unparsed"]
    assert len(unparsed) == 1 and not unparsed[0]["parse_ok"] and unparsed[0]["first_error_step"] is None
    assert unparsed[0]["raw_text"] == "I cannot tell."
    c = m.stages["judge"]["counts"]
    assert c["located"] == 4 and c["parse_ok"] == 5
    # weights: explicit, one type
    w = {r["error_type"]: r["weight"] for r in t["error_type_weights"]}
    assert w["calculation_error"] == 1.0 and sum(w.values()) == pytest.approx(1.0)
    # injections: llm, verified wrong, each located by the judge
    inj = [i for i in t["injections"] if i["drop_reason"] is None]
    assert len(inj) == 12 and all(i["is_correct"] is False and i["error_type"] == "calculation_error" for i in inj)
    jinj = {j["target_id"] for j in t["judgements"] if j["target_table"] == "injections"}
    assert {i["injection_id"] for i in inj} <= jinj
    revs = t["revisions"]
    drops = {r["drop_reason"] for r in revs}
    assert {"judge_unparsed", "judge_says_correct", "mentions_forbidden", "prefix_changed"} <= drops
    kept = assert_revision_invariants(revs)
    assert {r["strategy"] for r in kept} == {"fix_continue", "fresh_restart"}
    assert {r["error_source"] for r in kept} == {"self", "injected"}
    restart = [r for r in kept if r["strategy"] == "fresh_restart" and r["error_source"] == "self"]
    # model-aware: every problem has a correct sample (sample 0), so restarts anchor on it
    assert restart and all(r["restart_reference"] == "student_sample" and r["restart_attempt_id"] for r in restart)
    attempts = {a["attempt_id"]: a for a in t["attempts"]}
    for r in restart:
        ref = attempts[r["restart_attempt_id"]]
        assert ref["is_correct"] and ref["problem_id"] == r["problem_id"]
    for r in kept:
        assert not any(p in r["text"].lower() for p in FORBIDDEN_PHRASES)
    st = m.stages["filter_revisions"]
    assert st["dropped_mentions_forbidden"] >= 1 and st["dropped_prefix_changed"] >= 1
    # both strategies of every unparsed judgement (the wrong attempt and the 2 injections of that problem)
    n_unparsed = sum(j["verdict"] == "unparsed" for j in t["judgements"])
    assert n_unparsed == 3 and m.stages["revise"]["dropped_judge_unparsed"] == 2 * n_unparsed


def test_lemma_recipe_defaults_validate():
    from pipelines.config import load_recipe
    cfg = load_recipe("lemma")
    assert cfg.method == "lemma" and cfg.injections.source == "both"
    assert cfg.engines["student"] == cfg.engines["teacher"]      # one engine for both roles
    with pytest.raises(Exception, match="13"):
        load_recipe("lemma", ["revise.transitions=['a','b']"])


# --- exports ---------------------------------------------------------------------------------------------------
def test_sft_and_dpo_exports_of_revisions(data_root, tmp_path):
    import pyarrow.parquet as pq

    from pipelines.export import export
    from schemas.errors import ConfigError
    f = write_gsm8k_style(tmp_path / "tasks.jsonl", 4)
    cfg = lemma_recipe(data_root, {"kind": "jsonl", "path": str(f)}, injections={"source": "llm"})
    m = build(cfg, progress=False).manifest
    t = tables(data_root, m)
    kept = {r["revision_id"]: r for r in t["revisions"] if r["drop_reason"] is None}
    assert kept and all(r["is_correct"] for r in kept.values())

    r = export(str(data_root), m.ref, "sft", str(tmp_path / "sft"))
    assert r.export == "sft_revisions" and r.rows == len(kept)
    rows = pq.read_table(r.files[0]).to_pylist()
    q = {p["problem_id"]: p["question"] for p in t["problems"]}
    for row in rows:
        rev = kept[row["revision_id"]]
        assert row["messages"][0] == {"role": "user", "content": q[row["problem_id"]], "loss": False}
        assert row["messages"][1]["content"] == rev["text"] and row["messages"][1]["loss"] is True
        assert all(s["loss"] for s in row["segments"])          # LEMMA: full loss
        assert row["judgement_id"] == rev["judgement_id"] and row["source_version"] == m.ref
    masked = pq.read_table(export(str(data_root), m.ref, "sft", str(tmp_path / "sftm"),
                                  options={"mask_errors": "true"}).files[0]).to_pylist()
    for row in masked:
        assert [s["loss"] for s in row["segments"]] == [s["author"] != "model" for s in row["segments"]]
        assert row["segments"][0]["author"] == "model"
    with pytest.raises(ConfigError, match="mask_errors"):
        export(str(data_root), m.ref, "sft", str(tmp_path / "bad"), options={"mask_errors": "maybe"})

    d = export(str(data_root), m.ref, "dpo", str(tmp_path / "dpo"))
    assert d.export == "dpo_revisions"
    pairs = pq.read_table(d.files[0]).to_pylist()
    att = {a["attempt_id"]: a for a in t["attempts"]}
    inj = {i["injection_id"]: i for i in t["injections"]}
    assert {p["pair_source"] for p in pairs} == {"revision_vs_self_error", "revision_vs_injected_error"}
    assert len(pairs) == len(kept)
    for p in pairs:
        rev = kept[p["chosen_id"]]
        assert p["chosen"][0]["content"] == rev["text"]
        bad = att.get(p["rejected_id"]) or inj[p["rejected_id"]]
        assert bad["is_correct"] is False and bad["problem_id"] == p["problem_id"] == rev["problem_id"]
        assert p["rejected"][0]["content"] == (bad.get("completion") or bad.get("solution"))
    clean = pq.read_table(export(str(data_root), m.ref, "dpo", str(tmp_path / "dpoc"),
                                 options={"clean_pairs": "true"}).files[0]).to_pylist()
    extra = [p for p in clean if p["pair_source"] == "correct_attempt_vs_wrong_attempt"]
    assert len(extra) == 4 and all(att[p["chosen_id"]]["is_correct"] and not att[p["rejected_id"]]["is_correct"]
                                   for p in extra)


# --- type weights ------------------------------------------------------------------------------------------------
def test_type_weights_measured_uniform_explicit():
    from stages.base import StageStats
    from pipelines.methods.lemma.type_weights_stages import TypeWeightsConfig, TypeWeightsStage
    js = ([{"target_table": "attempts", "verdict": "located", "error_type": "calculation_error"}] * 3
          + [{"target_table": "attempts", "verdict": "located", "error_type": "missing_step"}]
          + [{"target_table": "attempts", "verdict": "unparsed", "error_type": "missing_step"}] * 5      # not located
          + [{"target_table": "injections", "verdict": "located", "error_type": "counting_error"}] * 5)  # not student

    def weights(**cfg):
        st = StageStats()
        rows = TypeWeightsStage(TypeWeightsConfig(**cfg)).summarize({"judgements": js}, st)["error_type_weights"]
        return {r["error_type"]: r["weight"] for r in rows}, {r["error_type"]: r["count"] for r in rows}, st

    w, n, st = weights(mode="measured", prior=0.0)
    assert w["calculation_error"] == pytest.approx(0.75) and w["missing_step"] == pytest.approx(0.25)
    assert w["counting_error"] == 0 and n["calculation_error"] == 3 and st.counts["measured_missing_step"] == 1
    w, _, _ = weights(mode="measured", prior=1.0)
    assert w["calculation_error"] == pytest.approx(4 / 10) and w["counting_error"] == pytest.approx(1 / 10)
    w, _, _ = weights(mode="uniform")
    assert len(w) == 6 and all(v == pytest.approx(1 / 6) for v in w.values())
    w, _, _ = weights(mode="explicit", weights={"counting_error": 3, "missing_step": 1})
    assert w["counting_error"] == pytest.approx(0.75) and w["calculation_error"] == 0
    with pytest.raises(ValueError, match="explicit"):
        weights(mode="explicit", weights={})
    with pytest.raises(ValueError, match="unknown error type"):
        TypeWeightsConfig(types=["not_a_type"])
    w, _, st = weights(mode="measured", prior=0.0, types=["counting_error"])   # nothing measured: uniform, said so
    assert w == {"counting_error": 1.0} and st.counts["fallback_uniform"] == 1


def test_docs_audit_join_runs(data_root, tmp_path):
    """docs/methods/lemma.md's join (revision -> judgement -> attempt/injection -> problem) runs on a real build."""
    from pipelines.sql import connect, fetch
    from tests.helpers import doc_sql
    sql = doc_sql("docs/methods/lemma.md", "audit-revision")
    f = write_gsm8k_style(tmp_path / "tasks.jsonl", 3)
    cfg = lemma_recipe(data_root, {"kind": "jsonl", "path": str(f)}, dataset="lemma")
    m = build(cfg, progress=False).manifest
    cols, rows = fetch(connect(str(data_root)), sql)
    kept = [r for r in tables(data_root, m)["revisions"] if r["drop_reason"] is None]
    assert len(rows) == len(kept) > 0
    d = [dict(zip(cols, r)) for r in rows]
    assert all(x["question"] and x["first_error_step"] for x in d)
    assert all((x["wrong_attempt"] is None) != (x["injected_solution"] is None) for x in d)


def test_smoothing_pass_keeps_the_answer(data_root):
    cfg = lemma_recipe(data_root, {"kind": "builtin", "count": 3, "seed": 0, "max_steps": 3},
                       injections={"source": "rules"}, smooth={"enabled": True})
    m = build(cfg, progress=False).manifest
    revs = tables(data_root, m)["revisions"]
    originals = {r["revision_id"]: r for r in revs if not r["smoothed_from"]}
    smoothed = [r for r in revs if r["smoothed_from"]]
    kept_orig = [r for r in originals.values() if r["drop_reason"] is None]
    assert kept_orig and len(smoothed) == len(kept_orig)
    for r in smoothed:
        o = originals[r["smoothed_from"]]
        assert r["drop_reason"] is None and r["is_correct"] is True and r["final_answer"] == o["final_answer"]
        assert r["text"].endswith(o["text"].strip()) and r["strategy"] == o["strategy"]
    assert m.stages["smooth"]["counts"]["check_ok"] == len(smoothed)
    assert m.stages["verify_smoothed"]["counts"]["already_verified"] == len(revs) - len(smoothed) - sum(
        1 for r in revs if r["drop_reason"] and not r["smoothed_from"])
    assert lemma_yield(m.stages)["smoothed_kept"] == len(smoothed)


def test_build_summary_prints_the_yield(data_root, capsys):
    from flows.cli import print_build_summary
    cfg = lemma_recipe(data_root, {"kind": "builtin", "count": 3, "seed": 0, "max_steps": 3},
                       injections={"source": "rules"})
    r = build(cfg, progress=False)
    capsys.readouterr()
    print_build_summary(r)
    text = capsys.readouterr().out
    y = lemma_yield(r.manifest.stages)
    assert f"yield: wrong_attempts {y['wrong_attempts']} -> judged {y['judged']}" in text
    assert f"kept {y['kept']}" in text and "judge on rules labels: " in text and "labelled, exact" in text
    # the same figures are stored in the manifest, with the kept injections' error types beside the measured ones
    assert r.manifest.summary["yield"] == " -> ".join(f"{k} {v}" for k, v in y.items())
    kept = Counter(i["error_type"] for i in tables(data_root, r.manifest)["injections"]
                   if i["drop_reason"] is None and i["source"] == "rules")
    assert kept and type_histograms(r.manifest.stages)["kept_rules_injections"] == dict(sorted(kept.items()))
    line = r.manifest.summary["error types, kept rules injections"]
    assert line == ", ".join(f"{t} {n}" for t, n in sorted(kept.items()))
    assert f"error types, kept rules injections: {line}" in text
    # rows a stage passed over are on its line: the judge's rules judgements are not revised by the teacher
    skipped = r.manifest.stages["revise"]["counts"]["skipped_rules_injection"]
    assert skipped > 0 and f"skipped_rules_injection={skipped}" in text


def test_sft_tokenized_labels_follow_the_segments(data_root, tmp_path, monkeypatch):
    """Pre-tokenized revisions with SmolLM2's tokenizer: with mask_errors every token of the erroneous prefix has
    label -100 and the transition / fix / continuation tokens keep their ids; without it the whole assistant turn is
    labelled; the question never is. The decoded labelled tokens are exactly the loss-true segments' text."""
    import pyarrow.parquet as pq

    from pipelines.chat_tokens import IGNORE
    from pipelines.export import export
    from stages.agents.tokens import load_tokenizer
    from stages.engines.model_prep import embedded_model_dir
    from tests.conftest import MODELS_DIR
    if not embedded_model_dir(MODELS_DIR).is_dir():
        pytest.skip("the embedded model is not prepared (make model)")
    monkeypatch.setenv("ERRATA_MODELS", str(MODELS_DIR))
    tok = load_tokenizer(str(embedded_model_dir(MODELS_DIR)))
    cfg = lemma_recipe(data_root, {"kind": "builtin", "count": 3, "seed": 0, "max_steps": 3},
                       injections={"source": "rules"})
    m = build(cfg, progress=False).manifest
    kept = {r["revision_id"]: r for r in tables(data_root, m)["revisions"] if r["drop_reason"] is None}
    assert kept
    for mask in (True, False):
        r = export(str(data_root), m.ref, "sft-tokenized", str(tmp_path / f"tok{mask}"),
                   options={"tokenizer": "embedded", "mask_errors": str(mask).lower()})
        assert r.export == "sft_tokenized_revisions" and r.rows == len(kept)
        for row in pq.read_table(r.files[0]).to_pylist():
            rev = kept[row["revision_id"]]
            ids, labels = row["input_ids"], row["labels"]
            assert row["completion_mask"] == [int(x != IGNORE) for x in labels]
            learned = tok.decode([i for i, x in zip(ids, labels) if x != IGNORE])
            want = "".join(s["text"] for s in rev["segments"] if not (mask and s["author"] == "model"))
            assert learned.strip().removesuffix("<|im_end|>").strip() == want.strip()
            prefix = rev["segments"][0]
            assert prefix["author"] == "model" and (prefix["text"].strip() in learned) is not mask
            assert all(x == IGNORE or x == i for i, x in zip(ids, labels))


def test_segment_loss_places_flags_and_refuses_mismatched_segments():
    from pipelines.chat_tokens import segment_loss
    from schemas.errors import ConfigError
    loss = segment_loss("ab cd", [{"text": "ab", "loss": False}, {"text": " cd", "loss": True}])
    assert [loss(i) for i in range(7)] == [False, False, True, True, True, True, True]   # past the end: last one
    with pytest.raises(ConfigError, match="segments"):
        segment_loss("ab cd", [{"text": "ab", "loss": False}])
