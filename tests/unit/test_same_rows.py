"""Every built-in recipe, built on the scripted fake engine, publishes the same rows as the reference snapshot:
the same ids and counts per table (a table that was split counts as the union of its parts).

The snapshot (tests/unit/fixtures/builtin_recipe_rows.json) was written before the method packages were reshaped;
a change of layout must not change the data. A deliberate change of what a method produces rewrites it:

    .venv/bin/python -m tests.unit.test_same_rows --write
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import pytest

FIXTURE = Path(__file__).parent / "fixtures" / "builtin_recipe_rows.json"

# recipe -> (fake script per role, extra overrides). The agent scripts are registered by their test modules.
RECIPES = {
    "demo": ({"student": "mixed"}, ["tasks.count=8"]),
    "self_correct": ({"student": "reviewer"}, ["tasks.count=8"]),
    "lemma": ({"student": "lemma", "teacher": "lemma"}, ["tasks.count=4"]),
    "agent_demo": ({"policy": "planner"}, ["tasks.count=4"]),
    "agent_r": ({"policy": "agent_r"}, ["tasks.count=3"]),
    "critique": ({"actor": "critique", "critic": "critique"}, ["tasks.count=4"]),
    "step": ({"agent": "planner", "teacher": "step_teacher"}, ["tasks.count=3"]),
}

# a table of the snapshot that is now stored as several tables: old name -> its parts
SPLIT: dict[str, tuple[str, ...]] = {"revisions": ("revisions", "revision_trajectories")}   # LEMMA | Agent-R


def _register_agent_scripts() -> None:
    import tests.unit.test_agent_r  # noqa: F401  (registers the 'agent_r' script)
    import tests.unit.test_rollout  # noqa: F401  (registers the 'planner' script)
    import tests.unit.critique_fakes  # noqa: F401  (registers the 'critique' script)
    import tests.unit.test_step  # noqa: F401  (registers the 'step_teacher' script)


def build_rows(recipe: str, root: str) -> dict[str, dict]:
    """table -> {count, ids_sha256} of the version `recipe` publishes on the fake engine."""
    from pipelines.build import build
    from pipelines.catalog import Catalog
    from pipelines.config import load_recipe
    from schemas.registry import id_column

    scripts, extra = RECIPES[recipe]
    sets = [f"storage.root={root}", "execution.runner=local", *extra]
    for role, script in scripts.items():
        sets += [f"engines.{role}.kind=fake", f"engines.{role}.fake_script={script}"]
    manifest = build(load_recipe(recipe, sets), progress=False, log=lambda *a, **k: None).manifest
    cat = Catalog(root)
    out = {}
    for table in sorted(manifest.tables):
        rows = cat.read_table(manifest, table).to_pylist()
        col = id_column(table)
        ids = sorted(str(r[col]) for r in rows)
        out[table] = {"count": len(rows), "ids": ids}
    return out


def summarize(tables: dict[str, dict]) -> dict[str, dict]:
    return {t: {"count": v["count"], "ids_sha256": hashlib.sha256("\n".join(v["ids"]).encode()).hexdigest()}
            for t, v in tables.items()}


def merge_split(tables: dict[str, dict]) -> dict[str, dict]:
    """Tables as the snapshot names them: the parts of a split table joined again."""
    out = {t: v for t, v in tables.items() if not any(t in parts for parts in SPLIT.values())}
    for old, parts in SPLIT.items():
        have = [tables[p] for p in parts if p in tables]
        if have:
            out[old] = {"count": sum(h["count"] for h in have), "ids": sorted(i for h in have for i in h["ids"])}
    return out


@pytest.fixture(scope="module")
def snapshot() -> dict:
    return json.loads(FIXTURE.read_text())


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_publishes_the_rows_of_the_snapshot(recipe, snapshot, tmp_path, monkeypatch):
    from tests.conftest import MODELS_DIR
    monkeypatch.setenv("ERRATA_MODELS", str(MODELS_DIR))
    monkeypatch.delenv("ERRATA_DATA", raising=False)
    _register_agent_scripts()
    got = summarize(merge_split(build_rows(recipe, str(tmp_path / "data"))))
    want = snapshot[recipe]
    assert sorted(got) == sorted(want), f"{recipe}: tables differ"
    for table in want:
        assert got[table]["count"] == want[table]["count"], f"{recipe}.{table}: row count differs"
        assert got[table]["ids_sha256"] == want[table]["ids_sha256"], f"{recipe}.{table}: row ids differ"


def write_snapshot() -> None:
    from tests.conftest import MODELS_DIR
    os.environ["ERRATA_MODELS"] = str(MODELS_DIR)
    os.environ.pop("ERRATA_DATA", None)
    _register_agent_scripts()
    snap = {}
    for recipe in sorted(RECIPES):
        with tempfile.TemporaryDirectory() as d:
            snap[recipe] = summarize(merge_split(build_rows(recipe, os.path.join(d, "data"))))
    FIXTURE.write_text(json.dumps(snap, indent=1, sort_keys=True) + "\n")
    print(f"wrote {FIXTURE}")


if __name__ == "__main__" and "--write" in sys.argv:
    write_snapshot()
