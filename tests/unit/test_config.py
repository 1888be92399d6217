import pytest

from pipelines.config import load_recipe, recipe_names, validate_recipe
from schemas.errors import ConfigError


def test_demo_recipe_loads_with_overrides():
    c = load_recipe("demo", ["generate.n=2", "limit=8", "engines.student.kind=fake", "execution.shard_size=3"])
    assert c.dataset == "demo" and c.generate.n == 2 and c.limit == 8 and c.method == "sample_verify"
    assert c.engines["student"].kind == "fake" and c.execution.shard_size == 3
    assert type(c).__name__ == "Recipe_sample_verify" and c.stage_sections == ("generate", "verify", "filter",
                                                                               "dedup")


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="unknown key 'generate.temprature'"):
        load_recipe("demo", ["generate.temprature=0.5"])
    with pytest.raises(ConfigError, match="unknown key 'sampling'"):
        load_recipe("demo", ["sampling.n=4"])


def test_bad_value_is_named():
    with pytest.raises(ConfigError, match="generate.n"):
        load_recipe("demo", ["generate.n=0"])
    with pytest.raises(ConfigError, match="engines.student.kind"):
        load_recipe("demo", ["engines.student.kind=gpt"])
    with pytest.raises(ConfigError, match="engines.student.dtype: unknown dtype 'int3'"):
        load_recipe("demo", ["engines.student.dtype=int3"])


def test_roles_get_default_engines_and_unknown_roles_are_named():
    c = validate_recipe({"dataset": "x"})
    assert list(c.engines) == ["student"] and c.engines["student"].model == "embedded"
    with pytest.raises(ConfigError, match="engines: teachr not a role of method 'sample_verify'"):
        validate_recipe({"dataset": "x", "engines": {"teachr": {"kind": "fake"}}})
    # a stage may name another role; it then needs (and gets) an engine of its own
    c = validate_recipe({"dataset": "x", "generate": {"role": "teacher"}, "engines": {"teacher": {"kind": "fake"}}})
    assert set(c.engines) == {"student", "teacher"} and c.engines["teacher"].kind == "fake"


def test_engine_roles_take_any_role_key_then_engine_fields():
    c = load_recipe("demo", ["engines.student.model=/models/x", "engines.student.max_model_len=4096"])
    assert c.engines["student"].model == "/models/x" and c.engines["student"].max_model_len == 4096
    with pytest.raises(ConfigError, match="unknown key 'engines.student.modle'"):
        load_recipe("demo", ["engines.student.modle=x"])


def test_unknown_method_lists_known():
    with pytest.raises(ConfigError, match="unknown method 'lemon'.*sample_verify"):
        validate_recipe({"dataset": "x", "method": "lemon"})
    with pytest.raises(ConfigError, match="unknown method"):
        load_recipe("demo", ["method=lemon"])


def test_unknown_recipe_lists_known():
    with pytest.raises(ConfigError, match="demo"):
        load_recipe("nope")
    assert "demo" in recipe_names()


def test_config_hash_ignores_how_and_where_it_runs():
    a = load_recipe("demo")
    b = load_recipe("demo", ["execution.runner=local", "execution.shards_in_flight=8", "storage.root=/x"])
    c = load_recipe("demo", ["generate.n=5"])
    assert a.config_hash() == b.config_hash() != c.config_hash()


def test_a_tasks_path_over_builtin_reads_that_file():
    """`--set tasks.path=FILE` on a recipe whose tasks are builtin reads FILE (kind from its suffix); a path of
    another kind is an error naming the field, never silently ignored; an explicit kind is kept."""
    from pipelines.config import load_recipe
    assert load_recipe("lemma", ["tasks.path=gsm8k_train.jsonl"]).tasks.kind == "jsonl"
    assert load_recipe("demo", ["tasks.path=t.parquet"]).tasks.kind == "parquet"
    assert load_recipe("demo", ["tasks.kind=hf", "tasks.path=some/dir"]).tasks.kind == "hf"
    with pytest.raises(ConfigError, match="tasks: path 't.csv' is set but kind is builtin"):
        load_recipe("demo", ["tasks.path=t.csv"])
