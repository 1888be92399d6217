"""SQL over versions and TRL-shaped exports, on a version built with the scripted fake engine."""
import json

import pyarrow.parquet as pq
import pytest

from flows.cli import main
from pipelines.build import build
from pipelines.catalog import Catalog
from pipelines.export import export
from pipelines.methods.sample_verify.exports import dpo_attempt_rows, dpo_row, sft_attempt_rows
from pipelines.files import Root
from pipelines.sql import SQLError, connect, fetch
from schemas.errors import ConfigError, StorageError


@pytest.fixture
def two_versions(fake_recipe, data_root):
    cfg = fake_recipe(n=4, n_samples=2, shard_size=2)
    build(cfg, progress=False)
    build(fake_recipe(n=3, n_samples=2, shard_size=2), progress=False)
    return Catalog(Root(str(data_root)))


def test_latest_and_older_versions_are_addressable(two_versions):
    con = connect(two_versions)
    assert fetch(con, "SELECT count(*) FROM fake.problems")[1] == [(3,)]
    assert fetch(con, "SELECT count(*) FROM fake_v1.problems")[1] == [(4,)]
    assert fetch(con, "SELECT count(*) FROM fake_v2.attempts")[1] == [(6,)]
    cols, rows = fetch(con, "SELECT dataset, version, latest FROM errata_versions ORDER BY version")
    assert rows == [("fake", 1, False), ("fake", 2, True)]


def test_sql_is_read_only_and_offline(two_versions, tmp_path):
    con = connect(two_versions)
    for q in ["CREATE TABLE x AS SELECT 1", "COPY (SELECT 1) TO 'x.csv'", "INSTALL delta",
              "ATTACH ':memory:' AS z", "SET threads=1"]:
        with pytest.raises(SQLError, match="read-only"):
            fetch(con, q)
    (tmp_path / "secret.csv").write_text("a\n1\n")
    with pytest.raises(SQLError):
        fetch(con, f"SELECT * FROM read_csv('{tmp_path}/secret.csv')")


def test_export_row_joins_back_to_problem_and_attempt(two_versions, tmp_path):
    out = tmp_path / "sft"
    r = export(two_versions.root, "fake@1", "sft", str(out), jsonl=True)
    assert r.rows == 4 and r.export == "sft_attempts"  # mixed script: sample 0 of each problem is correct
    t = pq.read_table(out / "train-00000-of-00001.parquet")
    assert t.column_names[:1] == ["messages"]
    row = t.to_pylist()[0]
    assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
    # an export under the data root joins back to its attempt and problem in `errata sql`
    under = two_versions.root.path("exports", "sft")
    export(two_versions.root, "fake@1", "sft", under)
    cols, got = fetch(connect(two_versions), f"""
        SELECT p.question, a.is_correct, e.messages[2].content = a.completion AS same
        FROM read_parquet('{under}/*.parquet') e
        JOIN fake_v1.attempts a ON a.attempt_id = e.attempt_id
        JOIN fake_v1.problems p ON p.problem_id = a.problem_id""")
    assert len(got) == 4 and all(ok and same for _, ok, same in got)
    import datasets
    assert datasets.load_dataset(str(out), split="train").num_rows == 4  # the card picks the Parquet
    lines = (out / "train-00000-of-00001.jsonl").read_text().splitlines()
    assert len(lines) == 4 and json.loads(lines[0])["messages"][0]["role"] == "user"


def test_dpo_pairs_correct_with_incorrect_of_same_problem(two_versions, tmp_path):
    r = export(two_versions.root, "fake", "dpo", str(tmp_path / "dpo"))
    rows = pq.read_table(tmp_path / "dpo" / "train-00000-of-00001.parquet").to_pylist()
    assert r.rows == 3 and len(rows) == 3
    for row in rows:
        assert set(["prompt", "chosen", "rejected"]) <= set(row)
        assert row["chosen"][0]["role"] == "assistant" and row["chosen"] != row["rejected"]
        assert row["margin"] == 1.0 and row["source_version"] == "fake@2"


def test_converters_are_pure_and_skip_dropped():
    base = dict(problem_id="p", prompt="q", reward=None)
    a = [dict(base, attempt_id="a0", sample_index=0, completion="right", is_correct=True, drop_reason=None),
         dict(base, attempt_id="a1", sample_index=1, completion="wrong", is_correct=False, drop_reason=None),
         dict(base, attempt_id="a2", sample_index=2, completion="dup", is_correct=True, drop_reason="duplicate"),
         dict(base, attempt_id="a3", sample_index=3, completion="?", is_correct=None, drop_reason="no_answer")]
    assert [r["attempt_id"] for r in sft_attempt_rows({"attempts": a}, "x@1", {})] == ["a0"]
    assert [(r["chosen_id"], r["rejected_id"]) for r in dpo_attempt_rows({"attempts": a}, "x@1", {})] == \
        [("a0", "a1")]
    with pytest.raises(ValueError):
        dpo_row(a[0], dict(a[1], problem_id="other"), "x@1")


def test_cli_versions_show_sql_export(two_versions, tmp_path, capsys):
    assert main(["versions"]) == 0
    assert "fake@2" in capsys.readouterr().out
    assert main(["show", "fake@1"]) == 0
    assert '"version": 1' in capsys.readouterr().out
    att = two_versions.read_table(two_versions.resolve("fake@1"), "attempts").to_pylist()[0]
    assert main(["show", "fake@1", "--id", att["attempt_id"]]) == 0
    assert att["completion"].splitlines()[0] in capsys.readouterr().out
    assert main(["sql", "SELECT count(*) AS n FROM fake.attempts", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip()) == {"n": 6}
    assert main(["sql", "DROP TABLE fake.attempts"]) == 2
    assert "read-only" in capsys.readouterr().err
    assert main(["show", "fake@9"]) == 2
    assert "no version 9" in capsys.readouterr().err
    assert main(["export", "fake", "--format", "dpo", "--out", str(tmp_path / "d")]) == 0


def test_empty_export_is_a_clear_error(fake_recipe, data_root, tmp_path, capsys):
    build(fake_recipe(n=2, n_samples=2, script="wrong"), progress=False)
    assert main(["export", "fake", "--format", "sft", "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert "nothing to export" in err and "sft_attempts" in err and "4 attempts" in err


def test_export_registry_errors(two_versions, tmp_path):
    with pytest.raises(ConfigError, match="unknown export format 'csv'.*known: .*dpo"):
        export(two_versions.root, "fake", "csv", str(tmp_path / "x"))
    from pipelines.methods.sample_verify.exports import SFT_SCHEMA
    from schemas.registry import _EXPORTS, ExportSpec, register_export
    register_export(ExportSpec("needs_revisions", ("attempts", "revisions"), "test", SFT_SCHEMA,
                               lambda t, s, o: []))
    try:
        with pytest.raises(StorageError, match="reads table 'revisions', which fake@2 does not have"):
            export(two_versions.root, "fake", "needs_revisions", str(tmp_path / "y"))
    finally:
        _EXPORTS.pop("needs_revisions")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_version_tables_load_with_datasets_even_with_empty_shards(two_versions):
    import datasets
    m = two_versions.resolve("fake@1")
    for table in ("attempts", "errors", "problems"):
        files = two_versions.table_files(m, table)
        if m.tables[table].rows:
            assert datasets.load_dataset("parquet", data_files=files, split="train").num_rows == m.tables[table].rows
        else:  # empty shard files have no row group: DuckDB and pyarrow read them as 0 rows
            assert two_versions.read_table(m, table).num_rows == 0
