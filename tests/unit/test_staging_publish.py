"""Staging (per-stage Parquet checkpoints), publishing and the catalogue, on plain files."""
import multiprocessing as mp
import os

import pytest

from pipelines.catalog import MANIFEST, Catalog
from pipelines.files import Root
from pipelines.publish import publish
from pipelines.staging import Staging, table_from_rows
from schemas.errors import StorageError, VersionNotFound

FIELDS = dict(run_id="run-x", method="m", recipe={}, recipe_hash="h", code_version="c")


def _problems(sid, n=3):
    return [{"problem_id": f"p{sid}-{i}", "question": "q", "reference_answer": "1"} for i in range(n)]


def _staged(root, key="k", shards=2, stages=("gen",)):
    st = Staging(Root(str(root)), "ds", key)
    st.open({})
    for sid in range(shards):
        st.write_inputs(sid, {"problems": _problems(sid)})
        for name in stages:
            att = [{"attempt_id": f"a{sid}-{i}", "problem_id": f"p{sid}-{i}", "completion": name}
                   for i in range(3)]
            err = [{"error_id": f"e{sid}", "row_id": f"p{sid}-0", "table": "problems", "stage": name,
                    "reason": "x"}] if sid == 0 else []
            st.write_stage(sid, name, {"attempts": table_from_rows(att, "attempts")},
                           table_from_rows(err, "errors") if err else None, {"in": 3, "out": 3})
    return st


def test_latest_writer_wins_and_inputs_are_read_when_nothing_wrote_a_table(tmp_path):
    st = _staged(tmp_path, stages=("gen", "verify"))
    assert st.latest_writer(0, "attempts", ["gen", "verify"]) == "verify"
    assert st.latest_writer(0, "attempts", ["gen"]) == "gen"
    assert st.latest_writer(0, "problems", ["gen", "verify"]) == "input"
    assert st.latest_writer(0, "revisions", ["gen"]) is None
    assert st.read_table(1, "attempts", ["gen", "verify"]).column("completion").to_pylist() == ["verify"] * 3
    assert st.last_done(0, ["gen", "verify", "filter"]) == 1 and st.last_done(0, ["filter"]) == -1
    m = st.marker(0, "gen")
    assert m["tables"]["attempts"]["rows"] == 3 and m["tables"]["errors"]["rows"] == 1 and m["stats"]["in"] == 3


def test_publish_makes_an_immutable_version_with_checksums(tmp_path):
    st = _staged(tmp_path, stages=("gen", "verify"))
    cat = Catalog(Root(str(tmp_path)))
    m = publish(st, cat, [0, 1], ["gen", "verify"], ["problems", "attempts"], FIELDS)
    assert (m.dataset, m.version) == ("ds", 1)
    assert m.tables["problems"].rows == 6 and len(m.tables["problems"].files) == 2
    assert m.tables["attempts"].rows == 6
    assert set(cat.read_table(m, "attempts").column("completion").to_pylist()) == {"verify"}  # the latest
    assert m.tables["errors"].rows == 2    # one per stage of shard 0
    assert sorted(f.path for f in m.tables["errors"].files) == ["errors/part-s00000-gen.parquet",
                                                                "errors/part-s00000-verify.parquet"]
    assert cat.verify_version(m) == []
    assert not os.path.exists(st.dir), "staging is removed after publication"
    vdir = cat.version_dir("ds", 1)
    assert os.path.exists(f"{vdir}/{MANIFEST}") and not any(
        f.endswith(".json") for f in os.listdir(f"{vdir}/problems"))
    p = f"{vdir}/{m.tables['problems'].files[0].path}"     # a damaged file is detected
    os.chmod(p, 0o644)
    with open(p, "ab") as f:
        f.write(b"x")
    assert cat.verify_version(m) and "checksum" in cat.verify_version(m)[0]


def test_show_verify_rehashes_a_version_and_names_a_damaged_file(tmp_path, capsys):
    from flows.cli import main
    cat = Catalog(Root(str(tmp_path)))
    m = publish(_staged(tmp_path, stages=("gen",)), cat, [0, 1], ["gen"], ["problems", "attempts"], FIELDS)
    assert main(["--data", str(tmp_path), "show", "ds@1", "--verify"]) == 0
    assert "ds@1: 5 files, every checksum matches" in capsys.readouterr().out
    p = f"{cat.version_dir('ds', 1)}/{m.tables['attempts'].files[1].path}"
    os.chmod(p, 0o644)
    with open(p, "ab") as f:
        f.write(b"x")
    assert main(["--data", str(tmp_path), "show", "ds@1", "--verify"]) == 1
    out = capsys.readouterr()
    assert "1 problem(s)" in out.out and "checksum mismatch" in out.err and "attempts/part-s00001" in out.err


def test_a_table_without_rows_still_has_a_file_and_a_schema(tmp_path):
    st = Staging(Root(str(tmp_path)), "ds", "k")
    st.open({})
    st.write_inputs(0, {"problems": _problems(0)})
    st.write_stage(0, "gen", {"attempts": table_from_rows([], "attempts")}, None, {})
    cat = Catalog(Root(str(tmp_path)))
    m = publish(st, cat, [0], ["gen"], ["problems", "attempts"], FIELDS)
    assert m.tables["errors"].rows == 0 and [f.path for f in m.tables["errors"].files] == ["errors/part-empty.parquet"]
    assert "error_id" in cat.read_table(m, "errors").column_names and cat.verify_version(m) == []


def test_publish_refuses_unfinished_shards(tmp_path):
    st = _staged(tmp_path, stages=("gen",))
    with pytest.raises(StorageError, match=r"shards \[0, 1\]"):
        publish(st, Catalog(Root(str(tmp_path))), [0, 1], ["gen", "verify"], ["attempts"], FIELDS)


def test_version_without_manifest_is_invisible(tmp_path):
    cat = Catalog(Root(str(tmp_path)))
    os.makedirs(cat.version_dir("ds", 1) + "/problems")
    assert cat.versions("ds") == [] and cat.datasets() == []
    with pytest.raises(VersionNotFound):
        cat.manifest("ds")
    m = publish(_staged(tmp_path), cat, [0, 1], ["gen"], ["problems", "attempts"], FIELDS)
    assert m.version == 2, "a claimed number is never reused"


def test_crash_after_claim_resumes_into_the_same_version(tmp_path, monkeypatch):
    st = _staged(tmp_path)
    cat = Catalog(st.root)
    real = st.root.write_json_atomic

    def boom(path, data):
        if path.endswith(MANIFEST):
            raise OSError("disk gone")
        return real(path, data)
    monkeypatch.setattr(st.root, "write_json_atomic", boom)
    with pytest.raises(OSError):
        publish(st, cat, [0, 1], ["gen"], ["problems", "attempts"], FIELDS)
    assert cat.versions("ds") == []
    assert st.done(0, "gen"), "staging survives a failed publish"
    monkeypatch.setattr(st.root, "write_json_atomic", real)
    m = publish(st, cat, [0, 1], ["gen"], ["problems", "attempts"], FIELDS)
    assert m.version == 1 and cat.versions("ds") == [1]


def _claim(root, q):
    q.put(Catalog(Root(root)).claim_version("ds"))


def test_concurrent_claims_get_distinct_numbers(tmp_path):
    q = mp.get_context("fork").Queue()
    procs = [mp.get_context("fork").Process(target=_claim, args=(str(tmp_path), q)) for _ in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert sorted(q.get() for _ in procs) == [1, 2, 3, 4, 5, 6]


def test_resume_reads_build_record(tmp_path):
    st = Staging(Root(str(tmp_path)), "ds", "k")
    rec, resumed = st.open({"a": 1})
    rec2, resumed2 = st.open({"a": 1})
    assert not resumed and resumed2 and rec["run_id"] == rec2["run_id"] and rec2["resumes"] == 1


def test_staging_pickles_as_names_only(tmp_path):
    import pickle
    st = Staging(Root(str(tmp_path)), "ds", "k")
    clone = pickle.loads(pickle.dumps(st))
    assert (clone.dir, clone.dataset, clone.build_key) == (st.dir, "ds", "k")
