"""The Ray Data runner gives the same rows as the in-process runner (scripted fake engine, real local Ray)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.build import build
from pipelines.catalog import Catalog

pytestmark = pytest.mark.integration

SAME = ("attempt_id", "problem_id", "sample_index", "completion", "final_answer", "is_correct", "drop_reason")
TIMES = ("seconds", "t_start", "t_end", "wall_seconds", "tokens_per_s")


def strip(stages):
    return {k: {c: v for c, v in d.items() if c not in TIMES} for k, d in stages.items()}


def test_ray_and_local_runners_agree(fake_recipe, data_root):
    """In process, on Ray with CPU stages fused into the LLM stage's actor (the default on a local Ray), and on Ray
    with one actor pool per stage: the same rows and counts."""
    local = build(fake_recipe(n=6, n_samples=3, shard_size=2, runner="local"), progress=False).manifest
    fused = build(fake_recipe(n=6, n_samples=3, shard_size=2, runner="ray", shards_in_flight=2),
                  progress=False).manifest
    unfused = build(fake_recipe(n=6, n_samples=3, shard_size=2, runner="ray", execution={"fuse_stages": False}),
                    progress=False).manifest
    store = Catalog(str(data_root))
    rows = {}
    for m in (local, fused, unfused):
        t = store.read_table(m, "attempts").to_pylist()
        rows[m.version] = sorted(tuple(r[c] for c in SAME) for r in t)
    assert len(rows[1]) == 18 and rows[1] == rows[2] == rows[3]
    assert strip(local.stages) == strip(fused.stages) == strip(unfused.stages)
    assert {t: e.rows for t, e in local.tables.items()} == {t: e.rows for t, e in fused.tables.items()}
    assert {t: e.rows for t, e in local.tables.items()} == {t: e.rows for t, e in unfused.tables.items()}
    assert not fused.recipe["execution"]["fuse_stages"] and unfused.recipe["execution"]["fuse_stages"] is False


def test_stage_by_stage_on_ray_matches_local(fake_recipe, data_root):
    """The Prefect flow's path (one Ray Data run per stage, checkpoints between) on real local Ray: Ray and the
    engine actor are started once for the whole build and are gone after it."""
    import ray

    from pipelines.execute import run_stage
    from pipelines.plan import plan_build, stage_names
    from pipelines.publish import publish_plan
    from pipelines.session import BuildSession
    local = build(fake_recipe(n=6, n_samples=3, shard_size=2, runner="local"), progress=False).manifest
    cfg = fake_recipe(n=6, n_samples=3, shard_size=2, runner="ray")
    plan = plan_build(cfg, log=lambda s: None)
    with BuildSession(plan, progress=False) as session:
        out = [run_stage(session, name, log=lambda s: None) for name in stage_names(cfg)]
        assert ray.is_initialized() and session.engines.running() == []   # no LLM stage left: engine stopped
        engines = session.describe_engines()
    assert not ray.is_initialized()
    staged = publish_plan(plan, engines)
    assert [o["shards_run"] for o in out] == [3, 3, 3, 3]
    assert [e["starts"] for e in staged.engines.values()] == [1]
    store = Catalog(str(data_root))
    rows = [sorted(tuple(r[c] for c in SAME) for r in store.read_table(m, "attempts").to_pylist())
            for m in (local, staged)]
    assert len(rows[0]) == 18 and rows[0] == rows[1]
    assert strip(local.stages) == strip(staged.stages)


def test_early_start_hands_ray_and_the_engine_to_the_build_or_stops_them(fake_recipe, data_root):
    """The Prefect path starts Ray and the first LLM stage's engine before the flow (early_start): the build's
    session takes both over (one engine start, Ray shut down by the session); without a build they are stopped."""
    import ray

    import pipelines.session as ps
    from pipelines.build import run_build
    from pipelines.plan import plan_build
    cfg = fake_recipe(n=4, n_samples=2, shard_size=2, runner="ray")
    with ps.early_start(cfg):
        early = ps._EARLY[cfg.config_hash()]
        assert ray.is_initialized() and early.engines.running() == [cfg.engines["student"].key()]
        result = run_build(plan_build(cfg, log=lambda s: None), progress=False, log=lambda s: None)
        assert cfg.config_hash() not in ps._EARLY and not ray.is_initialized()    # taken over, then shut down
    assert [e["starts"] for e in result.manifest.engines.values()] == [1]
    assert result.manifest.tables["attempts"].rows == 8
    with ps.early_start(cfg):      # published: a new build of the same recipe; no session opens in the block
        early = ps._EARLY[cfg.config_hash()]
        name = early.engines.refs().role_actors["student"][0]
        assert ray.get(ray.get_actor(name, namespace="errata").start.remote())["starts"] == 1
    assert not ray.is_initialized() and ps._EARLY == {}     # not taken over: stopped with Ray at the block's end
    with ps.early_start(fake_recipe(n=4, n_samples=2, shard_size=2, runner="local")):
        assert ps._EARLY and not ray.is_initialized()     # in process: the engine starts early, Ray not at all
    assert ps._EARLY == {}


def test_build_on_a_ray_cluster_by_address(fake_recipe, data_root):
    """`--ray-address`: a real head node (`ray start --head --block`), the build connects to it; then the head's
    process group alone is stopped (other Ray instances on the machine are left alone)."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import tempfile
    import time
    from pathlib import Path

    import ray as ray_mod

    from flows.cli import main
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # Ray's socket paths must stay under 107 bytes
    env = dict(os.environ, RAY_AUTH_MODE="token")
    head = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
                             f"--port={port}", "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats",
                             f"--temp-dir={temp}"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    os.environ["RAY_AUTH_MODE"] = "token"
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        cfg = fake_recipe(n=4, n_samples=2, shard_size=2, runner="ray")
        code = main(["build", "demo", "--no-prefect", "--no-progress", "--ray-address", f"127.0.0.1:{port}",
                     "--set", "tasks.kind=jsonl", "--set", f"tasks.path={cfg.tasks.path}", "--set",
                     "engines.student.kind=fake", "--set", "generate.n=2"])
        assert code == 0
        m = Catalog(str(data_root)).manifest("demo")
        assert m.tables["attempts"].rows == 8 and m.recipe["execution"]["ray_address"] == f"127.0.0.1:{port}"
    finally:
        os.environ.pop("RAY_AUTH_MODE", None)
        ray_mod.shutdown()
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=30)


def test_start_ray_quiets_ray_data_in_the_run_log(data_root):
    """errata shows its own progress; Ray Data's bars, per-task memory polling and its high-memory warnings (a
    dozen multi-line warnings in a 1,024-sequence build's log, about memory Ray 'requests') are off."""
    import ray

    from pipelines.runner import start_ray
    started = start_ray(None, 2)
    try:
        ctx = ray.data.DataContext.get_current()
        assert ctx.enable_progress_bars is False and ctx.memory_usage_poll_interval_s is None
        assert ctx.issue_detectors_config.high_memory_detector_config.detection_time_interval_s == -1
    finally:
        if started:
            ray.shutdown()


def test_ray_workers_keep_the_users_engine_environment(data_root, monkeypatch):
    """errata's defaults for Ray's workers (VLLM_CPU_NUM_OF_RESERVED_CPU=0 and the rest) give way to what the user
    set: a worker, where the engine runs, sees the user's value, as an in-process engine does."""
    import ray

    from pipelines.runner import start_ray
    monkeypatch.setenv("VLLM_CPU_NUM_OF_RESERVED_CPU", "1")
    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    started = start_ray(None, 2)
    try:
        seen = ray.get(ray.remote(lambda: {k: os.environ.get(k) for k in (
            "VLLM_CPU_NUM_OF_RESERVED_CPU", "TOKENIZERS_PARALLELISM", "HF_HUB_OFFLINE")}).remote())
        assert seen["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "1"        # the user's, not errata's "0"
        assert seen["TOKENIZERS_PARALLELISM"] == "false"          # errata's default where the user set nothing
        assert seen["HF_HUB_OFFLINE"] == os.environ.get("HF_HUB_OFFLINE", "1")
    finally:
        if started:
            ray.shutdown()


def test_engine_actor_killed_mid_use_is_restarted_and_the_call_resubmitted(data_root):
    """kill -9 of the process holding an engine: Ray restarts the actor, the client resubmits, nothing is lost."""
    import os
    import signal

    import ray

    from pipelines.engines import RayEngines
    from pipelines.runner import start_ray
    from stages.engines.base import GenerationRequest, SamplingParams
    from stages.engines.config import EngineConfig
    started = start_ray(None, 2)
    try:
        engines = RayEngines({"student": EngineConfig(kind="fake", fake_script="echo_answer")}, "unused", "t-kill")
        engines.start(["student"])
        client = engines.refs().client("student")
        reqs = [GenerationRequest(prompt=f"q {i} [gold={i}]", sampling=SamplingParams(n=2), request_id=str(i))
                for i in range(5)]
        first = client.generate(reqs, tag="generate", shard=0)
        pid = ray.get(engines.actors[engines.role_keys["student"]][0].pid.remote())
        os.kill(pid, signal.SIGKILL)
        again = client.generate(reqs, tag="generate", shard=1)       # resubmitted once the actor is back
        assert [r.completions[0].text for r in again] == [r.completions[0].text for r in first]
        new_pid = ray.get(engines.actors[engines.role_keys["student"]][0].pid.remote())
        assert new_pid != pid
        d = engines.describe()
        assert list(d.values())[0]["starts"] == 1      # the restarted actor started its engine again, once
        engines.stop()
        assert engines.running() == []
    finally:
        if started:
            ray.shutdown()


def test_one_engine_actor_per_distinct_model_on_ray(tmp_path, data_root):
    """Three LLM roles, two with the same settings: two engine actors, each started once, in a streaming build."""
    from pipelines.config import validate_recipe
    from schemas.registry import Method, StageSpec, register_method
    from stages.generate import GenerateStage
    from tests.conftest import write_gsm8k_style
    from tests.check_stage import CheckStage
    register_method(Method("test_three_llm", "generate twice and check",
                           (StageSpec("generate", GenerateStage), StageSpec("generate2", GenerateStage),
                            StageSpec("check", CheckStage)), roles=("student", "teacher", "twin")))
    f = write_gsm8k_style(tmp_path / "t.jsonl", 4)
    same = {"kind": "fake", "fake_script": "mixed"}
    cfg = validate_recipe({"dataset": "three", "method": "test_three_llm", "tasks": {"kind": "jsonl", "path": str(f)},
                           "engines": {"student": same, "twin": same, "teacher": {"kind": "fake"}},
                           "generate": {"n": 2}, "generate2": {"n": 1, "role": "twin"},
                           "execution": {"runner": "ray", "shard_size": 2}, "storage": {"root": str(data_root)}})
    m = build(cfg, progress=False).manifest
    assert sorted(tuple(e["roles"]) for e in m.engines.values()) == [("student", "twin"), ("teacher",)]
    assert all(e["starts"] == 1 for e in m.engines.values())
    assert m.stages["generate2"]["out"] == 4 and m.stages["check"]["in"] == 4


@pytest.mark.parametrize("mode", ["no-prefect", "prefect"])
def test_an_engine_that_cannot_start_fails_the_build_with_its_own_error(tmp_path, mode):
    """The engine starts beside the stage's workers (in a thread); its start failure is the build's error, one line,
    not the Ray or Prefect wrapper of the stage that waited on it, and nothing is published."""
    exe = str(Path(sys.executable).parent / "errata")
    env = dict(os.environ, ERRATA_DATA=str(tmp_path / "data"))
    args = [exe, "build", "demo", "--no-progress", "--set", "engines.student.kind=openai", "--set", "tasks.count=4"]
    r = subprocess.run(args + (["--no-prefect"] if mode == "no-prefect" else []), env=env, capture_output=True,
                       text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 2, out[-2000:]
    assert "error: engine.kind=openai needs engine.base_url" in out
    assert "ray::EngineHost" not in out and "Traceback" not in out
    assert Catalog(str(tmp_path / "data")).versions("demo") == []
