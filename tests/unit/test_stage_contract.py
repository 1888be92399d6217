"""The stage contract holds stages to what they declare: one result per row, only declared columns, only declared
tables (a second table through `emit`, no `run()` override), and the chain check finds a needed column that no
earlier stage fills (LEMMA without `verify`)."""
from __future__ import annotations

import pytest

from pipelines.plan import make_stages
from pipelines.chain import check_chain
from pipelines.config import load_recipe
from schemas.errors import ConfigError, StageError
from schemas.registry import get_method
from stages.base import ExpandStage, FilterStage, GlobalStage, MapStage, Stage

PROBLEMS = [{"problem_id": f"p{i}", "question": f"q{i}", "reference_answer": str(i)} for i in range(3)]


class ShortExpand(ExpandStage):
    kind = "short_expand"
    source, target = "problems", "attempts"
    fills = {"attempts": ("problem_id",)}

    def expand(self, rows, tables, stats, shard):
        return [[{"attempt_id": f"a-{r['problem_id']}", "problem_id": r["problem_id"]}] for r in rows[:-1]]


class LongMap(MapStage):
    kind = "long_map"
    table = "problems"
    fills = {"problems": ()}

    def process(self, rows, tables, stats, shard):
        return rows + rows[:1]


class ShortFilter(FilterStage):
    kind = "short_filter"
    table = "problems"

    def drop_reasons(self, rows, tables):
        return [None] * (len(rows) - 1)


class SetsAnUndeclaredColumn(MapStage):
    kind = "sets_undeclared"
    table = "problems"
    fills = {"problems": ("split",)}

    def process(self, rows, tables, stats, shard):
        return [dict(r, split="test", question="changed") for r in rows]


class TwoTables(ExpandStage):
    """problems -> attempts, and one judgement per problem emitted into a second table."""
    kind = "two_tables"
    source, target = "problems", "attempts"
    writes = ("attempts", "judgements")
    fills = {"attempts": ("problem_id",), "judgements": ("problem_id", "target_id", "target_table", "verdict")}

    def expand(self, rows, tables, stats, shard):
        self.emit("judgements", [{"judgement_id": f"j-{r['problem_id']}", "problem_id": r["problem_id"],
                                  "target_table": "problems", "target_id": r["problem_id"], "verdict": "ok"}
                                 for r in rows])
        return [[{"attempt_id": f"a-{r['problem_id']}", "problem_id": r["problem_id"]}] for r in rows]


class EmitsAnUndeclaredTable(MapStage):
    kind = "emits_undeclared"
    table = "problems"
    fills = {"problems": ()}

    def process(self, rows, tables, stats, shard):
        self.emit("judgements", [{"judgement_id": "j-1"}])
        return rows


@pytest.mark.parametrize("stage, what", [
    (ShortExpand, "returned 2 results for 3 rows of 'problems'"),
    (LongMap, "returned 4 results for 3 rows of 'problems'"),
    (ShortFilter, "returned 2 results for 3 rows of 'problems'"),
])
def test_a_stage_returning_more_or_fewer_results_than_rows_is_an_error_naming_it(stage, what):
    with pytest.raises(StageError, match=f"stage 'step' \\({stage.kind}\\) {what}"):
        stage(name="step").run({"problems": [dict(p) for p in PROBLEMS]})


def test_a_stage_setting_a_column_it_does_not_declare_is_an_error():
    with pytest.raises(StageError, match=r"stage 'step' \(sets_undeclared\) changes problems.question, which it "
                                         r"does not declare in `fills` \(split\)"):
        SetsAnUndeclaredColumn(name="step").run({"problems": [dict(p) for p in PROBLEMS]})


def test_a_stage_writes_a_second_table_by_emitting_without_overriding_run():
    res = TwoTables(name="step").run({"problems": [dict(p) for p in PROBLEMS]})
    assert [r["attempt_id"] for r in res.tables["attempts"]] == ["a-p0", "a-p1", "a-p2"]
    assert [r["judgement_id"] for r in res.tables["judgements"]] == ["j-p0", "j-p1", "j-p2"]
    assert res.stats.rows_in == 3 and res.stats.rows_out == 3


def test_emitting_a_table_the_stage_does_not_write_is_an_error():
    with pytest.raises(StageError, match="emits rows of 'judgements', which is not one of the other tables"):
        EmitsAnUndeclaredTable(name="step").run({"problems": [dict(p) for p in PROBLEMS]})
    with pytest.raises(StageError, match="emit\\(\\) is for the per-batch step"):
        TwoTables(name="step").emit("judgements", [])


def builtin_methods() -> dict:
    from pipelines.methods import BUILTIN
    return {name: get_method(name) for name in BUILTIN}


def builtin_stage_classes() -> set[type]:
    return {s.stage for m in builtin_methods().values() for s in m.stages}


def test_every_builtin_stage_declares_the_columns_it_fills_and_none_overrides_run():
    shapes = (MapStage, ExpandStage, FilterStage, GlobalStage)
    for cls in builtin_stage_classes():
        assert issubclass(cls, shapes), f"{cls.__name__} is not one of the stage shapes"
        overrides = [c.__name__ for c in cls.__mro__ if "run" in c.__dict__ and c not in (*shapes, Stage)]
        assert not overrides, f"{cls.__name__} overrides run() in {overrides}"
    for name, m in builtin_methods().items():
        for st in make_stages(m, load_recipe_for(name)):
            missing = [t for t in st.writes if t not in st.fills]
            assert not missing, f"{name}.{st.name} writes {missing} without declaring the columns it fills"


def load_recipe_for(method: str):
    from pipelines.config import builtin_recipes, read_yaml_mapping
    for recipe, path in builtin_recipes().items():
        if read_yaml_mapping(path, "").get("method", "sample_verify") == method:
            return load_recipe(recipe)
    raise AssertionError(f"no built-in recipe of method {method}")


def test_lemma_without_verify_fails_the_chain_check_naming_the_column():
    cfg = load_recipe("lemma")
    stages = [s for s in make_stages(get_method("lemma"), cfg) if s.name != "verify"]
    with pytest.raises(ConfigError, match=r"stage 'filter' \(filter\) needs column 'answer_parse_ok' of table "
                                          r"'attempts', which no earlier stage fills \(filled by 'generate': "):
        check_chain(stages, ["problems"], list(cfg.engines))
    check_chain(make_stages(get_method("lemma"), cfg), ["problems"], list(cfg.engines))    # with verify: fine


def test_every_builtin_recipe_passes_the_column_check():
    from pipelines.plan import check_recipe
    from pipelines.config import builtin_recipes
    from pipelines.methods import BUILTIN
    from tests.conftest import REPO
    for recipe, path in builtin_recipes().items():
        if path.is_relative_to(REPO / "pipelines" / "methods"):
            check_recipe(load_recipe(recipe))
    assert len([p for p in builtin_recipes().values() if p.is_relative_to(REPO / "pipelines")]) >= len(BUILTIN)
