import json
import multiprocessing as mp
import os

import pyarrow as pa
import pytest

from pipelines.storage import MANIFEST, Store
from schemas.errors import VersionNotFound
from schemas.rows import Problem, to_table

FIELDS = dict(run_id="run-x", method="m", recipe={}, recipe_hash="h", code_version="c")


def _shard(store, key, sid, n=3):
    rows = [{"problem_id": f"p{sid}-{i}", "question": "q", "reference_answer": "1"} for i in range(n)]
    return store.write_shard("ds", key, sid, {"problems": to_table(rows, Problem)}, {"gen": {"in": n, "out": n}})


def test_publish_makes_an_immutable_version_with_checksums(tmp_path):
    store = Store(str(tmp_path))
    store.open_build("ds", "k1", {})
    shards = [_shard(store, "k1", i) for i in range(2)]
    m = store.publish("ds", "k1", shards, FIELDS)
    assert (m.dataset, m.version) == ("ds", 1)
    assert m.tables["problems"].rows == 6 and len(m.tables["problems"].files) == 2
    assert store.verify_version(m) == []
    assert store.read_table(m, "problems").num_rows == 6
    assert not os.path.exists(store.staging_dir("ds", "k1")), "staging is removed after publication"
    # the manifest is outside the Parquet globs
    vdir = store.version_dir("ds", 1)
    assert os.path.exists(f"{vdir}/{MANIFEST}") and not any(
        f.endswith(".json") for f in os.listdir(f"{vdir}/problems"))
    # a damaged file is detected
    p = f"{vdir}/{m.tables['problems'].files[0].path}"
    os.chmod(p, 0o644)
    with open(p, "ab") as f:
        f.write(b"x")
    assert store.verify_version(m) and "checksum" in store.verify_version(m)[0]


def test_version_without_manifest_is_invisible(tmp_path):
    store = Store(str(tmp_path))
    os.makedirs(store.version_dir("ds", 1) + "/problems")
    assert store.versions("ds") == [] and store.datasets() == []
    with pytest.raises(VersionNotFound):
        store.manifest("ds")
    store.open_build("ds", "k", {})
    m = store.publish("ds", "k", [_shard(store, "k", 0)], FIELDS)
    assert m.version == 2, "a claimed number is never reused"


def test_crash_after_claim_resumes_into_the_same_version(tmp_path, monkeypatch):
    store = Store(str(tmp_path))
    store.open_build("ds", "k", {})
    shards = [_shard(store, "k", 0)]
    real = store.write_json_atomic

    def boom(path, data):
        if path.endswith(MANIFEST):
            raise OSError("disk gone")
        return real(path, data)
    monkeypatch.setattr(store, "write_json_atomic", boom)
    with pytest.raises(OSError):
        store.publish("ds", "k", shards, FIELDS)
    assert store.versions("ds") == []
    assert store.shard_done("ds", "k", 0), "staging survives a failed publish"
    monkeypatch.setattr(store, "write_json_atomic", real)
    m = store.publish("ds", "k", shards, FIELDS)
    assert m.version == 1 and store.versions("ds") == [1]


def _claim(root, q):
    q.put(Store(root)._claim_version("ds"))


def test_concurrent_claims_get_distinct_numbers(tmp_path):
    q = mp.get_context("fork").Queue()
    procs = [mp.get_context("fork").Process(target=_claim, args=(str(tmp_path), q)) for _ in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    got = sorted(q.get() for _ in procs)
    assert got == [1, 2, 3, 4, 5, 6]


def test_resume_reads_build_record(tmp_path):
    store = Store(str(tmp_path))
    rec, resumed = store.open_build("ds", "k", {"a": 1})
    rec2, resumed2 = store.open_build("ds", "k", {"a": 1})
    assert not resumed and resumed2 and rec["run_id"] == rec2["run_id"]
