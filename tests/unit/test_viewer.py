"""The dataset card written at publish time, `errata diff`, and `errata view`'s pages and refusals, on real
versions built on the scripted fake engine (LEMMA with rules injections, Agent-R on the craft env). Figures are
checked against the tables read back with pyarrow, not against constants. The browser test is
tests/unit/test_viewer_browser.py."""
from __future__ import annotations

import re
from collections import Counter
from markupsafe import escape

import pytest
import yaml
from fastapi.testclient import TestClient

from flows.cli import main
from pipelines.card import CARD, PLOTS
from pipelines.catalog import Catalog
from pipelines.diff import diff_versions
from pipelines.viewer.app import create_app
from pipelines.viewer.data import ViewerData
from tests.viewer_data import build_viewer_root


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return build_viewer_root(tmp_path_factory.mktemp("viewer") / "data")


@pytest.fixture(scope="module")
def client(root):
    return TestClient(create_app(str(root)), base_url="http://127.0.0.1:8765", client=("127.0.0.1", 50000))


def table(root, ref, name):
    cat = Catalog(str(root))
    return cat.read_table(cat.resolve(ref), name).to_pylist()


def card_parts(root, ref):
    cat = Catalog(str(root))
    m = cat.resolve(ref)
    vdir = cat.version_dir(m.dataset, m.version)
    text = open(f"{vdir}/{CARD}").read()
    head, body = text[4:].split("\n---\n", 1)
    return m, vdir, yaml.safe_load(head), body


# ---- the dataset card ------------------------------------------------------------------------------------------
def test_card_is_written_at_publish_with_configs_for_every_table_and_real_plots(root):
    for ref in ("lm@1", "lm@2", "ar@1"):
        m, vdir, head, body = card_parts(root, ref)
        assert {c["config_name"] for c in head["configs"]} == set(m.tables)
        for c in head["configs"]:
            assert c["data_files"][0]["path"] == f"{c['config_name']}/*.parquet"
        assert head["license"] and "text-generation" in head["task_categories"] and m.method in head["tags"]
        assert m.code_version in body and m.recipe_hash in body and m.run_id in body
        for name in re.findall(rf"\]\({PLOTS}/([^)]+)\)", body):
            with open(f"{vdir}/{PLOTS}/{name}", "rb") as f:
                assert f.read(8) == b"\x89PNG\r\n\x1a\n", name
        assert "stages.png" in body


def test_card_figures_match_the_tables(root):
    m, _, _, body = card_parts(root, "lm@1")
    for stage, s in m.stages.items():      # rows and yield per stage, from the manifest's stage stats
        assert re.search(rf"\| {stage} \| {s['in']} \| {s['out']} \|", body), stage
    revs = table(root, "lm@1", "revisions")
    types = Counter(r["error_type"] for r in revs if r["error_type"])
    for t, n in types.items():
        assert f"| revisions | {t} | {n} |" in body
    kept = [r for r in revs if r["drop_reason"] is None]
    ok = sum(r["is_correct"] is True for r in kept)
    bad = sum(r["is_correct"] is False for r in kept)
    assert f"| revisions | {ok} | {bad} |" in body
    # the masked fraction of Agent-R's trajectories, counted here in words from the messages' loss flags
    _, _, _, ar = card_parts(root, "ar@1")
    words = Counter()
    for r in table(root, "ar@1", "revision_trajectories"):
        if r["drop_reason"] is None:
            for msg in r["messages"]:
                words[msg["loss"]] += len(msg["content"].split())
    frac = words[False] / (words[False] + words[True])
    assert words[True] and words[False]
    assert f"| revision_trajectories | messages | {words[True]} | {words[False]} | {frac:.1%} |" in ar


def test_export_copies_the_card(root):
    out = root / "exports" / "lm-sft"
    card = (out / "README.md").read_text()
    assert card.startswith("---\nconfigs:") and "## Source dataset card (lm@1)" in card
    src = (out / "source_card" / CARD).read_text()
    _, vdir, _, _ = card_parts(root, "lm@1")
    assert src == open(f"{vdir}/{CARD}").read()
    for name in re.findall(r"\]\(source_card/plots/([^)]+)\)", card):
        assert (out / "source_card" / "plots" / name).stat().st_size > 0


# ---- diff ------------------------------------------------------------------------------------------------------
def test_diff_counts_ids_and_text(root, capsys):
    d = diff_versions(Catalog(str(root)), "lm@1", "lm@2")
    for t in ("problems", "attempts", "revisions"):
        a = {r[f"{t[:-1] if t != 'problems' else 'problem'}_id"] for r in table(root, "lm@1", t)}
        b = {r[f"{t[:-1] if t != 'problems' else 'problem'}_id"] for r in table(root, "lm@2", t)}
        assert d["tables"][t] == {"a": len(a), "b": len(b)}
        assert d["rows"][t]["added"] == len(b - a) and d["rows"][t]["removed"] == len(a - b)
        assert set(d["rows"][t]["added_examples"]) <= b - a
    assert d["stages"]["generate"]["b"]["out"] == Catalog(str(root)).resolve("lm@2").stages["generate"]["out"]
    assert main(["--data", str(root), "diff", "lm@1", "lm@2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("diff lm@1 -> lm@2") and "rows by id (added / removed / changed):" in out
    assert re.search(rf"problems\s+{d['tables']['problems']['a']} ->\s+{d['tables']['problems']['b']}", out)


def test_diff_of_a_version_with_itself_changes_nothing(root):
    d = diff_versions(Catalog(str(root)), "ar@1", "ar@1")
    assert d["rows"] and all(r["added"] == r["removed"] == r["changed"] == 0 for r in d["rows"].values())


# ---- pages and filters -----------------------------------------------------------------------------------------
def test_keyset_pages_cover_every_row_once(root):
    data = ViewerData(str(root))
    m = data.manifest("lm", 2)
    seen, after = [], None
    while True:
        pg = data.page(m, "revisions", after=after, limit=7)
        seen += [r["revision_id"] for r in pg.rows]
        assert pg.total == m.tables["revisions"].rows
        if pg.next_after is None:
            break
        after = pg.next_after
    ids = [r["revision_id"] for r in table(root, "lm@2", "revisions")]
    assert seen == sorted(ids)
    # offset pages in file order: the rows as the version's files hold them
    seen, offset = [], 0
    while True:
        pg = data.page(m, "revisions", order="file", offset=offset, limit=7)
        seen += [r["revision_id"] for r in pg.rows]
        if pg.next_after is None:
            break
        offset = int(pg.next_after)
    assert seen == ids


def test_filters_match_python_counts(root):
    data = ViewerData(str(root))
    m = data.manifest("lm", 1)
    revs = table(root, "lm@1", "revisions")
    judg = table(root, "lm@1", "judgements")
    et = revs[0]["error_type"]
    assert data.page(m, "revisions", {"error_type": et}).total == sum(r["error_type"] == et for r in revs)
    assert data.page(m, "revisions", {"strategy": "fresh_restart"}).total == sum(
        r["strategy"] == "fresh_restart" for r in revs)
    assert data.page(m, "revisions", {"correct": "true"}).total == sum(r["is_correct"] is True for r in revs)
    assert data.page(m, "judgements", {"verdict": judg[0]["verdict"]}).total == sum(
        j["verdict"] == judg[0]["verdict"] for j in judg)
    assert data.page(m, "revisions", {"drop_reason": "(none)", "method": "lemma"}).total == sum(
        r["drop_reason"] is None for r in revs)
    word = "reconsider"
    assert data.page(m, "revisions", {"q": word}).total == sum(word in r["text"].lower() for r in revs) > 0
    assert data.page(m, "revisions", {"where": "len(segments) = 3"}).total == sum(
        len(r["segments"]) == 3 for r in revs)
    ar = data.manifest("ar", 1)     # no plain text column: the messages are searched
    trajs = table(root, "ar@1", "revision_trajectories")
    assert data.page(ar, "revision_trajectories", {"q": "Crafted"}).total == sum(
        any("crafted" in x["content"].lower() for x in r["messages"]) for r in trajs) > 0
    errors = ViewerData(str(root))
    assert "stage" in errors.filter_options(m, "errors") or m.tables["errors"].rows == 0


def test_index_version_table_and_plot_pages(root, client):
    r = client.get("/")
    assert r.status_code == 200 and "lm@2" in r.text and "ar@1" in r.text
    r = client.get("/d/lm/1/")
    assert r.status_code == 200 and "Rows and yield per stage" in r.text and 'src="plots/stages.png"' in r.text
    assert client.get("/d/lm/1/plots/stages.png").content[:4] == b"\x89PNG"
    r = client.get("/d/lm/1/t/revisions", params={"strategy": "fix_continue"})
    n = sum(x["strategy"] == "fix_continue" for x in table(root, "lm@1", "revisions"))
    assert r.status_code == 200 and f"{n} row(s) match" in r.text
    assert client.get("/d/lm/9/").status_code == 404


def test_lemma_revision_page_shows_the_first_error_the_loss_mask_and_lineage(root, client):
    revs = [r for r in table(root, "lm@1", "revisions") if r["judgement_id"] and r["drop_reason"] is None]
    rev = revs[0]
    judgement = next(j for j in table(root, "lm@1", "judgements") if j["judgement_id"] == rev["judgement_id"])
    html = client.get(f"/d/lm/1/t/revisions/r/{rev['revision_id']}").text
    step = re.search(r'<div class="step first-error" data-idx="(\d+)">', html)
    assert step and int(step.group(1)) == judgement["first_error_step"] == rev["first_error_step"]
    assert judgement["error_type"] in html and escape(judgement["raw_text"].splitlines()[0]) in html
    spans = re.findall(r'data-loss="(true|false)" data-author="(\w+)"', html)
    assert [(s["loss"], s["author"]) for s in rev["segments"]] == [(x == "true", a) for x, a in spans]
    assert 'id="splice"' in html and escape(rev["transition"]) in html
    assert f"/t/judgements/r/{rev['judgement_id']}" in html and f"/t/problems/r/{rev['problem_id']}" in html
    assert "exports/lm-sft/train-00000-of-00001.parquet" in html     # its row in the SFT export


def test_attempt_page_puts_each_judgement_verdict_beside_its_step(root, client):
    j = next(j for j in table(root, "lm@1", "judgements") if j["target_table"] == "attempts"
             and j["first_error_step"])
    html = client.get(f"/d/lm/1/t/attempts/r/{j['target_id']}").text
    block = html[html.index(f'data-idx="{j["first_error_step"]}"'):]
    block = block[:block.index("</div>\n</div>") if "</div>\n</div>" in block else len(block)]
    assert f"judgements {j['judgement_id']}" in block and j["verdict"] in block


def test_agent_r_splice_page_shows_masked_turns_the_splice_and_the_tree(root, client):
    rows = [r for r in table(root, "ar@1", "revision_trajectories") if r["kind"] == "revision"]
    rev = rows[0]
    html = client.get(f"/d/ar/1/t/revision_trajectories/r/{rev['revision_id']}").text
    flags = re.findall(r'class="msg seg [^"]*" data-loss="(true|false)" data-i="(\d+)"', html)
    assert [(m["loss"]) for m in rev["messages"]] == [x == "true" for x, _ in flags]
    assert 'id="splice"' in html and escape(rev["revision_signal"]) in html
    assert 'id="tree"' in html and rev["good_leaf_id"] in html and rev["bad_leaf_id"] in html
    assert "first error (judged)" in html


# ---- refusals --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["1=1; DROP VIEW lm.revisions", "1=1; COPY (SELECT 1) TO '/tmp/x.csv'",
                                   "1=1; CREATE TABLE t AS SELECT 1"])
def test_a_write_through_the_where_box_is_refused(client, where):
    r = client.get("/d/lm/1/t/revisions", params={"where": where})
    assert r.status_code == 400 and "read-only" in r.text


def test_a_file_outside_the_data_root_is_refused(client, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("do not show")
    r = client.get("/d/lm/1/t/revisions", params={"where": f"(SELECT content FROM read_text('{secret}')) <> ''"})
    assert r.status_code == 400 and "do not show" not in r.text
    assert "Permission Error" in r.text and "Cannot access file" in r.text
    r = client.get("/d/lm/1/plots/..%2Fmanifest.json")
    assert r.status_code in (400, 404) and '"run_id"' not in r.text


def test_another_host_is_refused_when_bound_to_localhost(root):
    app = create_app(str(root))
    far = TestClient(app, base_url="http://127.0.0.1:8765", client=("10.1.2.3", 40000))
    r = far.get("/")
    assert r.status_code == 403 and "10.1.2.3" in r.text
    rebinding = TestClient(app, base_url="http://attacker.example:8765", client=("127.0.0.1", 40000))
    assert rebinding.get("/").status_code == 403
    assert TestClient(app, base_url="http://localhost:8765", client=("127.0.0.1", 1)).get("/").status_code == 200
    open_app = create_app(str(root), local_only=False)     # bound to another address on purpose
    assert TestClient(open_app, base_url="http://10.0.0.1", client=("10.1.2.3", 1)).get("/").status_code == 200


def test_view_warns_when_bound_beyond_localhost(root, monkeypatch, capsys):
    import uvicorn
    ran = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, log_level: ran.update(host=host, port=port))
    assert main(["--data", str(root), "view", "lm@2", "--port", "8799"]) == 0
    out = capsys.readouterr()
    assert ran == {"host": "127.0.0.1", "port": 8799} and "http://127.0.0.1:8799/d/lm/2/" in out.out
    assert "warning" not in out.err
    assert main(["--data", str(root), "view", "--host", "0.0.0.0"]) == 0
    assert "warning: serving on 0.0.0.0" in capsys.readouterr().err


# ---- a method the viewer has never heard of ---------------------------------------------------------------------
def test_an_unknown_methods_critique_labels_appear_beside_each_step(tmp_path):
    """A version whose tables no code registers (as a new method's would look): paths with steps, critiques with
    per-step labels naming the path. The viewer finds the id and parent columns, marks the first wrong step and puts
    every label beside its step."""
    import pyarrow as pa

    from pipelines.card import write_card
    from pipelines.files import Root
    from schemas.manifest import FileEntry, Manifest, TableEntry
    root = Root(str(tmp_path / "data"))
    vdir = root.path("datasets", "crit", "v0001")
    steps = [{"idx": i, "text": f"Step {i}: {t}"} for i, t in enumerate(["2 + 2 = 4", "4 * 3 = 13", "13 - 1 = 12"], 1)]
    tables = {
        "proof_paths": [{"path_id": "pa-1", "problem_id": "p-1", "steps": steps, "first_error_step": 2, "text": "..."}],
        "proof_critiques": [{"critique_id": "c-1", "path_id": "pa-1", "first_wrong_step": 2, "final_verdict": False,
                       "raw_text": "Step 2 is wrong: 4 * 3 = 12.",
                       "step_labels": [{"idx": 1, "verdict": "correct", "explanation": "fine"},
                                       {"idx": 2, "verdict": "wrong", "explanation": "4 * 3 is 12"},
                                       {"idx": 3, "verdict": "wrong", "explanation": "follows the error"}]}],
        # a STeP-like episode: verdicts on its own steps, a message whose thought keeps loss and action does not
        "episodes": [{"episode_id": "e-1", "problem_id": "p-1",
                      "steps": [{"idx": 1, "raw_text": "Action: look", "verdict": "ok"},
                                {"idx": 2, "raw_text": "Action: eat key", "verdict": "error"}],
                      "messages": [{"role": "user", "content": "Go.", "loss": False},
                                   {"role": "assistant", "content": "Thought: hm\nAction: eat key", "loss": False}],
                      "segments": [{"text": "Go.", "author": "env", "loss": False, "message": 0},
                                   {"text": "Thought: hm\n", "author": "model", "loss": True, "message": 1},
                                   {"text": "Action: eat key", "author": "model", "loss": False, "message": 1}]}]}
    entries = {}
    for name, rows in tables.items():
        f = root.write_parquet(f"{vdir}/{name}/part-s00000.parquet", pa.Table.from_pylist(rows))
        entries[name] = TableEntry(rows=len(rows), files=[FileEntry(path=f"{name}/part-s00000.parquet", rows=len(rows),
                                                                    bytes=f["bytes"], sha256=f["sha256"])])
    m = Manifest(dataset="crit", version=1, created_at="2026-01-01T00:00:00+00:00", run_id="r", method="critique_x",
                 recipe={}, recipe_hash="h", code_version="c", tables=entries)
    write_card(root, vdir, m)
    root.write_json_atomic(f"{vdir}/manifest.json", m.model_dump(mode="json"))
    client = TestClient(create_app(root.root), base_url="http://127.0.0.1", client=("127.0.0.1", 1))
    html = client.get("/d/crit/1/t/proof_paths/r/pa-1").text
    assert re.search(r'<div class="step first-error" data-idx="2">', html)
    for label in tables["proof_critiques"][0]["step_labels"]:
        block = html[html.index(f'data-idx="{label["idx"]}"'):]
        block = block[:block.index('<div class="step', 10)] if '<div class="step' in block[10:] else block
        assert f"critiques c-1: <b>{label['verdict']}</b>" in block and label["explanation"] in block
    assert "/t/proof_critiques/r/c-1" in html                      # lineage: the critique names the path
    html = client.get("/d/crit/1/t/proof_critiques/r/c-1").text    # the critique's own page: the path's steps, labelled
    assert "its proof_paths row pa-1" in html and "this row: <b>wrong</b>" in html
    html = client.get("/d/crit/1/t/episodes/r/e-1").text
    assert re.search(r'<div class="step first-error" data-idx="2">', html)
    assert re.findall(r'class="seg part (loss-on|loss-off)"', html) == ["loss-off", "loss-on", "loss-off"]
    card = open(f"{vdir}/README.md").read()
    assert "config_name: proof_critiques" in card and "| proof_critiques | 1 |" in card
