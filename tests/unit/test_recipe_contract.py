"""The recipe contract on the scripted fake engine, in process: registered tables, checked chains, roles sharing
engines, versions as inputs."""
from __future__ import annotations

import json
import os

import pytest

from pipelines.build import build, plan_build
from pipelines.chain import check_chain
from pipelines.config import validate_recipe
from schemas.registry import Method, StageSpec, register_method
from schemas.errors import ConfigError, InputError
from stages.base import MapStage, StageContext
from stages.generate import GenerateStage
from stages.verify import VerifyStage
from tests.check_stage import CheckStage
from tests.conftest import catalog, with_extra_stage, write_gsm8k_style


def _two_role_method():
    return register_method(Method("test_two_roles", "generate, verify, teacher check",
                                  (StageSpec("generate", GenerateStage), StageSpec("verify", VerifyStage),
                                   StageSpec("check", CheckStage)), roles=("student", "teacher")))


def test_two_role_recipe_writes_three_tables_with_lineage(tmp_path, data_root, methods_restored):
    _two_role_method()
    f = write_gsm8k_style(tmp_path / "t.jsonl", 4)
    cfg = validate_recipe({"dataset": "two", "method": "test_two_roles", "tasks": {"kind": "jsonl", "path": str(f)},
                           "engines": {"student": {"kind": "fake", "fake_script": "mixed"},
                                       "teacher": {"kind": "fake", "fake_script": "echo_answer"}},
                           "generate": {"n": 2}, "execution": {"runner": "local", "shard_size": 2},
                           "storage": {"root": str(data_root)}})
    m = build(cfg, progress=False).manifest
    assert {t: e.rows for t, e in m.tables.items()} == {"problems": 4, "attempts": 8, "test_checks": 8, "errors": 0}
    assert len(m.engines) == 2 and sorted(r for e in m.engines.values() for r in e["roles"]) == ["student", "teacher"]
    assert all(e["starts"] == 1 for e in m.engines.values())
    cat = catalog(data_root)
    checks = cat.read_table(m, "test_checks").to_pylist()
    atts = {a["attempt_id"]: a for a in cat.read_table(m, "attempts").to_pylist()}
    for c in checks:
        a = atts[c["attempt_id"]]
        assert c["parent_ids"] == [a["attempt_id"]] and a["parent_ids"] == [a["problem_id"]]
        assert c["judge_model"] == "fake:echo_answer" and c["run_id"] == m.run_id
    from pipelines.sql import connect, fetch
    _, rows = fetch(connect(cat), "SELECT count(*) FROM two.test_checks c JOIN two.attempts a USING (attempt_id) "
                                  "JOIN two.problems p ON p.problem_id = a.problem_id")
    assert rows == [(8,)]


def test_roles_with_the_same_settings_share_one_engine(tmp_path, data_root, methods_restored):
    _two_role_method()
    f = write_gsm8k_style(tmp_path / "t.jsonl", 4)
    same = {"kind": "fake", "fake_script": "mixed"}
    cfg = validate_recipe({"dataset": "two", "method": "test_two_roles", "tasks": {"kind": "jsonl", "path": str(f)},
                           "engines": {"student": same, "teacher": same}, "generate": {"n": 2},
                           "execution": {"runner": "local", "shard_size": 2}, "storage": {"root": str(data_root)}})
    m = build(cfg, progress=False).manifest
    (eng,) = m.engines.values()
    assert eng["roles"] == ["student", "teacher"] and eng["starts"] == 1


class _Stub(MapStage):
    kind = "stub"
    table = "attempts"

    def process(self, rows, tables, stats, shard):
        return rows


def _stub(name, reads=None, writes=None):
    st = _Stub(name=name, context=StageContext())
    st.reads = reads or {}
    st.writes = writes or ()
    return st


def test_chain_check_names_stage_table_and_column():
    gen = _stub("gen", {"problems": ("question",)}, ("attempts",))
    with pytest.raises(ConfigError, match="stage 'judge' .* reads table 'test_checks', which no earlier stage"):
        check_chain([gen, _stub("judge", {"test_checks": ("check_id",)})], ["problems"])
    with pytest.raises(ConfigError, match="stage 'gen' .* needs column 'questoin' of table 'problems', which "
                                          "Problem does not have"):
        check_chain([_stub("gen", {"problems": ("questoin",)}, ("attempts",))], ["problems"])
    # reading what only a later stage writes is a cycle in a linear recipe
    with pytest.raises(ConfigError, match="stage 'a' .* reads table 'test_checks', which only the later stage 'b'"):
        check_chain([_stub("a", {"test_checks": ()}, ("attempts",)), _stub("b", {}, ("test_checks",))],
                    ["problems"])
    with pytest.raises(ConfigError, match="writes unknown table 'nope'"):
        check_chain([_stub("a", {}, ("nope",))], ["problems"])
    check_chain([gen, _stub("v", {"attempts": ("completion",)}, ("attempts",))], ["problems"])


def test_a_recipe_with_a_broken_chain_fails_before_anything_is_written(fake_recipe, data_root, methods_restored):
    class ReadsChecks(_Stub):
        kind = "reads_checks"
        reads = {"test_checks": ("says_correct",)}
    with_extra_stage("broken", ReadsChecks, after="generate")
    with pytest.raises(ConfigError, match="stage 'broken'.*test_checks"):
        build(fake_recipe(n=2, method="sv_broken"), progress=False)
    assert not os.path.exists(data_root / "staging")


def test_a_published_version_feeds_a_recipe_with_a_where_clause(fake_recipe, data_root, methods_restored):
    first = build(fake_recipe(n=4, n_samples=2, shard_size=2), progress=False).manifest
    # the wrong attempts of fake@1 (odd samples) feed a recipe that checks them with a teacher
    register_method(Method("test_check_only", "teacher check of given attempts",
                           (StageSpec("check", CheckStage),), roles=("teacher",)))
    cfg = validate_recipe({"dataset": "checked", "method": "test_check_only",
                           "tasks": {"kind": "version", "ref": "fake@1", "table": "attempts",
                                     "where": "is_correct = false AND drop_reason IS NULL"},
                           "engines": {"teacher": {"kind": "fake"}},
                           "execution": {"runner": "local", "shard_size": 3}, "storage": {"root": str(data_root)}})
    m = build(cfg, progress=False).manifest
    assert m.parents == ["fake@1"] and m.inputs["ref"] == "fake@1" and m.inputs["rows"] == 4
    assert m.tables["attempts"].rows == 4 and m.tables["problems"].rows == 4 and m.tables["test_checks"].rows == 4
    cat = catalog(data_root)
    old = {a["attempt_id"] for a in cat.read_table(first, "attempts").to_pylist() if a["is_correct"] is False}
    assert {c["attempt_id"] for c in cat.read_table(m, "test_checks").to_pylist()} == old
    from pipelines.sql import connect, fetch
    _, rows = fetch(connect(cat), "SELECT count(*) FROM checked.test_checks c JOIN fake_v1.attempts a "
                                  "USING (attempt_id) WHERE NOT a.is_correct")
    assert rows == [(4,)]
    _, rows = fetch(connect(cat), "SELECT parents FROM errata_versions WHERE dataset = 'checked'")
    assert json.loads(rows[0][0]) == ["fake@1"]
    for where, msg in (("is_corect = false", "tasks.where: .*is_corect"), ("1=1; DROP TABLE x", "read-only"),
                       ("is_correct = false AND sample_index > 99", "no problems")):
        bad = cfg.model_copy(deep=True)
        bad.tasks.where = where
        with pytest.raises((ConfigError, InputError), match=msg):
            plan_build(bad, log=lambda s: None)


@pytest.mark.parametrize("stage_by_stage,expected", [(False, [2, 2]), (True, [1, 1])])
def test_lemmas_two_engines_split_the_device_only_when_they_run_together(stage_by_stage, expected):
    """LEMMA with a distinct teacher: streaming runs generate (student) and judge (teacher) in one segment, so both
    engines are up at once and each gets half the memory budget; stage by stage (Prefect) the student's engine
    stops after generate, before the teacher's starts, so each gets all of it."""
    from pipelines.plan import check_recipe
    from pipelines.session import engine_sharing
    from pipelines.config import load_recipe
    cfg = load_recipe("lemma", ["engines.teacher.seed=1"])
    assert sorted(engine_sharing(check_recipe(cfg), cfg, stage_by_stage).values()) == expected
    same = load_recipe("lemma")        # one engine for both roles: alone either way
    assert list(engine_sharing(check_recipe(same), same, stage_by_stage).values()) == [1]
