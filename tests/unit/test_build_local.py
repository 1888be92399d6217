"""The build spine on the scripted fake engine, in process: problems -> attempts -> version, resume, errors."""
import os

import pytest

import pipelines.build as build_mod
from pipelines.build import build, plan_build, run_build
from pipelines.storage import Store
from schemas.errors import InputError
from stages.base import Stage


def test_build_publishes_counts_and_lineage(fake_recipe, data_root):
    cfg = fake_recipe(n=6, n_samples=2, shard_size=4)
    r = build(cfg, progress=False)
    m = r.manifest
    assert (m.dataset, m.version) == ("fake", 1)
    assert m.tables["problems"].rows == 6
    assert m.tables["attempts"].rows == 12 and m.tables["errors"].rows == 0
    assert m.stages["generate"]["in"] == 6 and m.stages["generate"]["out"] == 12
    assert m.stages["verify"]["in"] == 12 and m.stages["filter"]["out"] <= 12
    assert m.shards == {"total": 2, "resumed": 0}
    assert m.recipe_hash == cfg.config_hash() and m.code_version
    store = Store(str(data_root))
    att = store.read_table(m, "attempts").to_pylist()
    # mixed script: even samples right, odd samples wrong
    assert {a["sample_index"]: a["is_correct"] for a in att} == {0: True, 1: False}
    probs = {p["problem_id"] for p in store.read_table(m, "problems").to_pylist()}
    for a in att:
        assert a["run_id"] == m.run_id and a["method"] == "sample_verify" and a["created_at"] is not None
        assert a["parent_ids"] == [a["problem_id"]] and a["problem_id"] in probs
    assert len({a["attempt_id"] for a in att}) == 12
    # a second build is a new version; the first is untouched
    m2 = build(cfg, progress=False).manifest
    assert m2.version == 2 and store.verify_version(m) == []


class Crash(Stage):
    """Raises on one shard, like a process dying mid-build."""
    name = "crash"

    def __init__(self, on_shard_of: str):
        self.on = on_shard_of

    def process(self, rows):
        if any(r.get("problem_id") == self.on for r in rows):
            raise RuntimeError("simulated crash")
        return super().process(rows)

    def process_live(self, rows, stats):
        return rows


def test_crash_publishes_nothing_and_rerun_resumes(fake_recipe, data_root, monkeypatch):
    cfg = fake_recipe(n=6, n_samples=2, shard_size=2)
    plan = plan_build(cfg, log=lambda s: None)
    third = plan.shards[2][1][0]["problem_id"]
    real = build_mod.make_stages
    monkeypatch.setattr(build_mod, "make_stages", lambda *a, **k: real(*a, **k) + [Crash(third)])
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_build(plan, progress=False)
    store = Store(str(data_root))
    assert store.versions("fake") == []
    assert [store.shard_done("fake", plan.build_key, i) for i in range(3)] == [True, True, False]
    monkeypatch.setattr(build_mod, "make_stages", real)
    logs = []
    plan2 = plan_build(cfg, log=logs.append)
    assert plan2.resumed and plan2.run_id == plan.run_id and len(plan2.pending) == 1
    r = run_build(plan2, progress=False)
    assert r.manifest.shards == {"total": 3, "resumed": 2} and r.resumed_shards == 2
    att = store.read_table(r.manifest, "attempts").to_pylist()
    assert len(att) == 12 and len({a["attempt_id"] for a in att}) == 12
    assert any("resuming" in s for s in logs)


def test_failed_rows_become_error_records(fake_recipe, data_root, tmp_path):
    cfg = fake_recipe(n=4, n_samples=2, shard_size=4)
    p = tmp_path / "tasks.jsonl"
    lines = p.read_text().splitlines()
    lines[1] = lines[1].replace("[gold=", "[fail=prompt_too_long] [gold=")
    p.write_text("\n".join(lines) + "\n")
    m = build(cfg, progress=False).manifest
    assert m.tables["errors"].rows == 1 and m.tables["attempts"].rows == 6
    assert m.stages["generate"]["errors"] == 1
    err = Store(str(data_root)).read_table(m, "errors").to_pylist()[0]
    assert err["stage"] == "generate" and err["reason"] == "prompt_too_long" and err["problem_id"]
    assert "plus" in err["raw_input"]


def test_bad_input_fails_before_anything_is_written(fake_recipe, data_root, tmp_path):
    cfg = fake_recipe(n=4)
    p = tmp_path / "tasks.jsonl"
    lines = p.read_text().splitlines()
    lines[2] = '{"question": "broken'
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError) as e:
        build(cfg, progress=False)
    assert "tasks.jsonl" in str(e.value) and ":3" in str(e.value)
    assert not os.path.exists(data_root / "datasets") and not os.path.exists(data_root / "staging")


def test_ray_runner_gives_the_engine_stage_the_engine_resources(fake_recipe):
    from pipelines.runner import RayRunner
    cfg = fake_recipe(n=2)
    stages = build_mod.make_stages(cfg, "run-x", "/tmp/models")
    r = RayRunner(engine_actors=2, engine_cpus=1.0, engine_gpus=1.0, cpu_stage_concurrency=1)
    got = {s.name: r.resources(s) for s in stages}
    assert got["generate"] == {"actors": 2, "num_cpus": 1.0, "num_gpus": 1.0}
    assert got["verify"] == got["filter"] == {"actors": 1, "num_cpus": 0.25, "num_gpus": 0}


def _stage_by_stage(plan):
    for name in build_mod.stage_names(plan.config):
        build_mod.run_stage(plan, name, progress=False, log=lambda s: None)
    return build_mod.publish(plan, build_mod.write_shards(plan))


def _rows(store, m, table, key):
    rows = store.read_table(m, table).to_pylist()
    for r in rows:
        r.pop("created_at", None), r.pop("run_id", None)
    return sorted(rows, key=lambda r: r[key])


def test_stage_by_stage_gives_the_same_version_as_streaming(fake_recipe, data_root, tmp_path):
    lines = (tmp_path / "tasks.jsonl")
    cfg = fake_recipe(n=6, n_samples=2, shard_size=4)
    text = lines.read_text().splitlines()
    text[3] = text[3].replace("[gold=", "[fail=prompt_too_long] [gold=")
    lines.write_text("\n".join(text) + "\n")
    store = Store(str(data_root))
    streamed = build(cfg, progress=False).manifest
    plan = plan_build(cfg, log=lambda s: None)
    staged = _stage_by_stage(plan)
    assert (streamed.version, staged.version) == (1, 2)
    for table, key in (("problems", "problem_id"), ("attempts", "attempt_id"), ("errors", "error_id")):
        assert _rows(store, streamed, table, key) == _rows(store, staged, table, key), table
    assert staged.tables["errors"].rows == 1
    for name in ("generate", "verify", "filter"):
        a, b = dict(streamed.stages[name]), dict(staged.stages[name])
        a.pop("seconds"), b.pop("seconds")
        assert a == b, name
    assert not os.path.exists(store.staging_dir("fake", plan.build_key))  # checkpoints went with staging


def test_stage_by_stage_checkpoints_skip_finished_shards(fake_recipe, data_root, monkeypatch):
    import pipelines.runner as runner
    cfg = fake_recipe(n=6, n_samples=2, shard_size=2)
    plan = plan_build(cfg, log=lambda s: None)
    store = plan.store
    real = runner.run_stages_on_shard
    calls = []

    def crash_on_third(stages, rows):
        calls.append(stages[0].name)
        if stages[0].name == "verify" and calls.count("verify") == 3:
            raise RuntimeError("killed")
        return real(stages, rows)
    monkeypatch.setattr(runner, "run_stages_on_shard", crash_on_third)
    build_mod.run_stage(plan, "generate", progress=False, log=lambda s: None)
    with pytest.raises(RuntimeError, match="killed"):
        build_mod.run_stage(plan, "verify", progress=False, log=lambda s: None)
    names = build_mod.stage_names(cfg)
    assert [store.last_checkpoint("fake", plan.build_key, s, names) for s in range(3)] == [1, 1, 0]
    # the previous stage's checkpoint is replaced, not kept beside the new one
    assert not os.path.exists(store.checkpoint_path("fake", plan.build_key, 0, "generate"))
    with pytest.raises(Exception, match="not been through every stage"):
        build_mod.write_shards(plan)

    logs = []
    plan2 = plan_build(cfg, log=lambda s: None)
    out = build_mod.run_stage(plan2, "generate", progress=False, log=logs.append)
    assert (out["shards_run"], out["shards_skipped"]) == (0, 3)
    out = build_mod.run_stage(plan2, "verify", progress=False, log=logs.append)
    assert (out["shards_run"], out["shards_skipped"]) == (1, 2) and out["stats"]["in"] == 4
    build_mod.run_stage(plan2, "filter", progress=False, log=logs.append)
    assert calls == ["generate"] * 3 + ["verify"] * 4 + ["filter"] * 3
    m = build_mod.publish(plan2, build_mod.write_shards(plan2))
    assert m.tables["attempts"].rows == 12 == len(set(store.read_table(m, "attempts").column("attempt_id").to_pylist()))
    assert m.stages["verify"]["in"] == 12 and m.stages["generate"]["out"] == 12
    assert any("generate: 0 shard(s) run, 3 already done" in s for s in logs)
