import pytest

from pipelines.config import load_recipe, recipe_names
from schemas.errors import ConfigError


def test_demo_recipe_loads_with_overrides():
    c = load_recipe("demo", ["sampling.n=2", "limit=8", "engine.kind=fake", "execution.shard_size=3"])
    assert c.dataset == "demo" and c.sampling.n == 2 and c.limit == 8
    assert c.engine.kind == "fake" and c.execution.shard_size == 3


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="unknown key 'sampling.temprature'"):
        load_recipe("demo", ["sampling.temprature=0.5"])


def test_bad_value_is_named():
    with pytest.raises(ConfigError, match="sampling.n"):
        load_recipe("demo", ["sampling.n=0"])
    with pytest.raises(ConfigError, match="engine.kind"):
        load_recipe("demo", ["engine.kind=gpt"])


def test_unknown_recipe_lists_known():
    with pytest.raises(ConfigError, match="demo"):
        load_recipe("nope")
    assert "demo" in recipe_names()


def test_hash_ignores_where_and_how_it_runs():
    a = load_recipe("demo", ["execution.runner=local", "storage.root=/x"])
    b = load_recipe("demo", [])
    c = load_recipe("demo", ["sampling.n=3"])
    assert a.config_hash() == b.config_hash() != c.config_hash()
