"""The demo recipe end to end as a user runs it: real vLLM CPU engine with the embedded model, real Ray, real
Prefect, real DuckDB; then SQL, SFT and DPO export, and loading both with `datasets`."""
import json
import os

import pytest

from tests.conftest import MODELS_DIR, errata

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def demo_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo") / "data"
    env = dict(os.environ, ERRATA_DATA=str(root), ERRATA_MODELS=str(MODELS_DIR))
    return root, env


@pytest.fixture(scope="module")
def demo_build(demo_env):
    root, env = demo_env
    # one-operation warm-ups and 8 samples each: SmolLM2-135M gets ~9% of those right, so both exports have rows
    p = errata("build", "demo", "--limit", "8", "--set", "generate.n=8", "--set", "tasks.max_steps=1",
               "--set", "execution.shard_size=4", "--no-progress", env=env)
    return root, env, p.stdout


def test_build_publishes_a_version_with_counts(demo_build):
    root, env, out = demo_build
    assert "published demo@1" in out
    assert "problems=8" in out
    man = json.loads((root / "datasets" / "demo" / "v0001" / "manifest.json").read_text())
    assert man["tables"]["problems"]["rows"] == 8
    att, err = man["tables"]["attempts"]["rows"], man["tables"]["errors"]["rows"]
    assert att + err >= 8 and att > 0
    gen = man["stages"]["generate"]
    assert gen["in"] == 8 and gen["out"] + gen["errors"] * 8 == 64
    assert man["tokens"]["completion"] > 0
    assert man["models"]["generate"]["engine"] == "vllm"
    (eng,) = man["engines"].values()
    assert eng["starts"] == 1 and eng["dtype"] in ("float32", "bfloat16") and eng["dtype_reason"]
    assert "example: errata sql" in out


def test_sql_over_the_version(demo_build):
    root, env, _ = demo_build
    p = errata("sql", "SELECT count(*) AS n, count(DISTINCT problem_id) AS problems FROM demo.attempts",
               "--json", env=env)
    row = json.loads(p.stdout.strip().splitlines()[-1])
    man = json.loads((root / "datasets" / "demo" / "v0001" / "manifest.json").read_text())
    assert row["n"] == man["tables"]["attempts"]["rows"] and 1 <= row["problems"] <= 8


def test_export_sft_and_dpo_load_with_datasets(demo_build, tmp_path):
    import datasets
    root, env, _ = demo_build
    q = ("SELECT count(*) FILTER (WHERE is_correct) AS sft, "
         "(SELECT count(*) FROM (SELECT problem_id FROM demo.attempts WHERE drop_reason IS NULL "
         " AND is_correct IS NOT NULL GROUP BY problem_id HAVING bool_or(is_correct) AND bool_or(NOT is_correct))) AS dpo "
         "FROM demo.attempts WHERE drop_reason IS NULL")
    want = json.loads(errata("sql", q, "--json", env=env).stdout.strip().splitlines()[-1])
    assert want["sft"] > 0 and want["dpo"] > 0, f"the model got nothing right or nothing wrong: {want}"
    for fmt, cols in (("sft", {"messages"}), ("dpo", {"prompt", "chosen", "rejected"})):
        out = tmp_path / fmt
        errata("export", "demo", "--format", fmt, "--out", str(out), "--jsonl", env=env)
        ds = datasets.load_dataset("parquet", data_files=str(out / "*.parquet"), split="train")
        assert cols <= set(ds.column_names)
        assert len(ds) == want[fmt], (fmt, len(ds), want)
        js = datasets.load_dataset("json", data_files=str(out / "*.jsonl"), split="train")
        assert len(js) == len(ds)
