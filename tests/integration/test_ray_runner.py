"""The Ray Data runner gives the same rows as the in-process runner (scripted fake engine, real local Ray)."""
import pytest

from pipelines.build import build
from pipelines.storage import Store

pytestmark = pytest.mark.integration

SAME = ("attempt_id", "problem_id", "sample_index", "completion", "final_answer", "is_correct", "drop_reason")


def test_ray_and_local_runners_agree(fake_recipe, data_root):
    local = build(fake_recipe(n=6, n_samples=3, shard_size=2, runner="local"), progress=False).manifest
    on_ray = build(fake_recipe(n=6, n_samples=3, shard_size=2, runner="ray"), progress=False).manifest
    store = Store(str(data_root))
    rows = {}
    for m in (local, on_ray):
        t = store.read_table(m, "attempts").to_pylist()
        rows[m.version] = sorted(tuple(r[c] for c in SAME) for r in t)
    assert len(rows[1]) == 18 and rows[1] == rows[2]
    strip = lambda s: {k: {c: v for c, v in d.items() if c != "seconds"} for k, d in s.items()}
    assert strip(local.stages) == strip(on_ray.stages)
    assert {t: e.rows for t, e in local.tables.items()} == {t: e.rows for t, e in on_ray.tables.items()}
